"""Rows for one executemany of the SQLite driver, as SQLAlchemy would bind them.

The bulk paths (the loop's job updates, the tickets' inserts) skip SQLAlchemy's handling of each
row's parameters, most of their cost, but not its conversion of values: each value goes through its
column type's own bind conversion (times, JSON), so the rows are stored as the models store them."""
from __future__ import annotations

from typing import Any, Sequence

from sqlalchemy import Dialect, Table


def bound(dialect: Dialect, table: Table, columns: Sequence[str],
          rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """`rows` (tuples in `columns` order) with each value converted as its column's type binds it."""
    convert = [(i, process) for i, name in enumerate(columns)
               if (process := table.c[name].type.bind_processor(dialect)) is not None]
    if not convert:
        return rows
    converted = []
    for row in rows:
        values = list(row)
        for i, process in convert:
            values[i] = process(values[i])
        converted.append(tuple(values))
    return converted
