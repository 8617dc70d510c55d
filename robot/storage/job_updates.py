"""Jobs recorded and updated by id in bulk, with Core statements: the loop's polling and submission, and replay."""
from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from operator import itemgetter
from typing import Any

from sqlalchemy import Connection, String, bindparam, func, insert, literal_column, select, update
from sqlalchemy.orm import Session

from robot.storage.driver_rows import append, bound
from robot.storage.driver_select import DriverSelect
from robot.storage.models import Job

JOB = Job.__table__
# What the model gives a job for the columns a new row leaves out (the driver's own insert applies none)
DEFAULTS = {column.name: column.default.arg for column in JOB.columns
            if column.default is not None and column.default.is_scalar}
NAMED = (select(JOB.c.job_name, JOB.c.id)  # the ids of the jobs named in `names` (a JSON list), on SQLite
         .where(JOB.c.job_name.in_(select(literal_column("value")).select_from(func.json_each(bindparam("names", type_=String))))))


def record_jobs(session: Session, rows: list[dict[str, Any]]) -> dict[str, int]:
    """Insert new jobs (the same columns in each row; the model's defaults for the others); their ids by job name.

    On SQLite one executemany of the driver (robot.storage.driver_rows), not SQLAlchemy's handling of each row's
    parameters, and the ids known from the last one inserted; elsewhere an INSERT ... RETURNING."""
    if not rows:
        return {}
    if session.get_bind().dialect.name != "sqlite":
        return dict(session.execute(insert(JOB).returning(JOB.c.job_name, JOB.c.id), rows).all())
    given = list(rows[0])
    columns = [*given, *(name for name in DEFAULTS if name not in rows[0])]
    defaults = tuple(DEFAULTS[name] for name in columns[len(given):])
    append(session, JOB, columns, [(*(row[name] for name in given), *defaults) for row in rows])
    # One executemany in this transaction, which holds SQLite's single write lock: each row took the id after the
    # largest, so they hold the ids up to the last inserted, in order. Checked at both ends (SQLite picks ids at
    # random only once the largest possible one is taken): a read of two rows, not of all of them by name.
    ends = dict(ENDS.rows(session.connection(), {"count": len(rows)})[0])  # id -> name, of the first and the last
    first = min(ends, default=0)
    if ends == {first: rows[0]["job_name"], first + len(rows) - 1: rows[-1]["job_name"]}:
        return {row["job_name"]: job_id for job_id, row in enumerate(rows, first)}
    return dict(session.execute(NAMED, {"names": json.dumps([row["job_name"] for row in rows])}).all())
ENDS = DriverSelect(select(JOB.c.id, JOB.c.job_name).where(JOB.c.id.in_(  # on SQLite: the rows at both ends of the
    [func.last_insert_rowid(), func.last_insert_rowid() - bindparam("count") + 1])))  # last insert, by the driver
# An UPDATE of jobs by id whose SET clause is the columns of its parameters (one executemany per set).
UPDATE_JOB_BY_ID = update(JOB).where(JOB.c.id == bindparam("_id"))


def update_jobs(session: Session, changes: Iterable[dict[str, Any]]) -> None:
    """Bulk update by primary key (one executemany per set of columns touched); each job at most once."""
    groups: dict[frozenset[str], list[dict[str, Any]]] = defaultdict(list)
    for change in changes:
        groups[frozenset(change)].append(change)
    sqlite = session.get_bind().dialect.name == "sqlite"
    for columns, group in groups.items():
        names = sorted(columns - {"id"})
        if sqlite:
            _update_on_sqlite(session.connection(), names, group)
        else:
            session.execute(UPDATE_JOB_BY_ID, [{"_id": change["id"], **{name: change[name] for name in names}}
                                               for change in group])


def _update_on_sqlite(connection: Connection, names: list[str], rows: list[dict[str, Any]]) -> None:
    """One executemany of the driver (robot.storage.driver_rows), without SQLAlchemy's handling of each
    row's parameters (a quarter of the loop's cost of storing 600 status changes at 1,000 queues)."""
    dialect = connection.dialect
    quote = dialect.identifier_preparer.quote
    values = itemgetter(*names, "id")  # a row's values in the statement's order, as one tuple
    connection.exec_driver_sql(
        f"UPDATE {JOB.name} SET {', '.join(f'{quote(name)} = ?' for name in names)} WHERE id = ?",
        bound(dialect, JOB, [*names, "id"], [values(row) for row in rows]))
