"""Jobs updated by id in bulk, with Core statements: the loop's polling and submission, and replay."""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from sqlalchemy import bindparam, update
from sqlalchemy.orm import Session

from robot.storage.models import Job

JOB = Job.__table__
# An UPDATE of jobs by id whose SET clause is the columns of its parameters (one executemany per set).
UPDATE_JOB_BY_ID = update(JOB).where(JOB.c.id == bindparam("_id"))


def update_jobs(session: Session, changes: Iterable[dict[str, Any]]) -> None:
    """Bulk update by primary key (one executemany per set of columns touched); each job at most once."""
    groups: dict[frozenset[str], list[dict[str, Any]]] = defaultdict(list)
    for change in changes:
        row = dict(change)
        row["_id"] = row.pop("id")
        groups[frozenset(row)].append(row)
    for group in groups.values():
        session.execute(UPDATE_JOB_BY_ID, group)
