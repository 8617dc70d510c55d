"""Rows for one executemany of the SQLite driver, as SQLAlchemy would bind them.

The bulk paths (the loop's job records and updates, the tickets' inserts) skip SQLAlchemy's handling of each
row's parameters, most of their cost, but not its conversion of values: each value goes through its
column type's own bind conversion (times, JSON), so the rows are stored as the models store them."""
from __future__ import annotations

from typing import Any, Sequence

from sqlalchemy import Dialect, Table, insert
from sqlalchemy.orm import Session


def bound(dialect: Dialect, table: Table, columns: Sequence[str],
          rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """`rows` (tuples in `columns` order) with each value converted as its column's type binds it."""
    convert = [(i, process) for i, name in enumerate(columns)
               if (process := table.c[name].type.bind_processor(dialect)) is not None]
    if not convert:
        return rows
    # The same object in a column from row to row (the step's time in every job it changes) is converted once.
    last: dict[int, tuple[Any, Any]] = {i: (_NOTHING, None) for i, _ in convert}
    converted = []
    for row in rows:
        values = list(row)
        for i, process in convert:
            value = values[i]
            seen, as_bound = last[i]
            if value is not seen:
                as_bound = process(value)
                last[i] = (value, as_bound)
            values[i] = as_bound
        converted.append(tuple(values))
    return converted


_NOTHING = object()


def append(session: Session, table: Table, columns: Sequence[str], rows: list[tuple[Any, ...]]) -> None:
    """Insert rows (tuples in `columns` order) in the session's transaction.

    On SQLite with one executemany of the driver (most of the cost of storing many rows is SQLAlchemy's
    handling of each row's parameters). Elsewhere through SQLAlchemy (on PostgreSQL its batched insert,
    and the driver's own adaptation of JSON, which no bind conversion does)."""
    if not rows:
        return
    connection = session.connection()
    dialect = connection.dialect
    if dialect.name != "sqlite":
        connection.execute(insert(table), [dict(zip(columns, row)) for row in rows])
        return
    quote = dialect.identifier_preparer.quote
    connection.exec_driver_sql(f"INSERT INTO {quote(table.name)} ({', '.join(map(quote, columns))}) "
                               f"VALUES ({', '.join('?' * len(columns))})", bound(dialect, table, columns, rows))
