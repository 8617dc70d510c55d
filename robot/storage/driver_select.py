"""A Core select run through the SQLite driver, its rows converted only when asked.

The exclusion engine issues the same few selects at every step, and most of their rows are what they
were at the last one. SQLAlchemy's handling of a select (its execution context, a `Row` per row, each
value converted by its column's type) costs more than SQLite's own work on these small tables; the
driver's rows are plain tuples of stored values that compare cheaply with the last step's, so that only
a row that changed needs converting (by the function `DriverSelect.rows` returns with them, or at once
by `DriverSelect.converted`: each column type's own result conversion, the values SQLAlchemy would give).

Elsewhere (PostgreSQL) the select is run by SQLAlchemy, whose rows are already converted."""
from __future__ import annotations

import weakref
from typing import Any, Callable, Mapping

from sqlalchemy import Connection, Select

Converter = Callable[[tuple], tuple]


class DriverSelect:
    """One select; `rows` runs it in the session's transaction."""

    def __init__(self, statement: Select):
        self.statement = statement
        # per dialect (its JSON decoder may be the engine's own), forgotten with the engine
        self._prepared: weakref.WeakKeyDictionary[Any, tuple[str, list[tuple[str | None, Any]], Converter]] = (
            weakref.WeakKeyDictionary())
        self._last: weakref.WeakKeyDictionary[Any, dict[tuple, tuple]] = weakref.WeakKeyDictionary()  # `converted`

    def rows(self, connection: Connection, params: Mapping[str, Any] | None = None) -> tuple[list[tuple], Converter]:
        """The rows as the driver gives them, and the function that converts one as SQLAlchemy would."""
        dialect = connection.dialect
        if dialect.name != "sqlite":
            return [tuple(row) for row in connection.execute(self.statement, params or {})], _as_is
        prepared = self._prepared.get(dialect)
        if prepared is None:
            prepared = self._prepared[dialect] = self._prepare(dialect, params or {})
        sql, binds, convert = prepared
        values = [value if name is None else (value(params[name]) if value else params[name]) for name, value in binds]
        return connection.connection.driver_connection.execute(sql, values).fetchall(), convert

    def converted(self, connection: Connection, params: Mapping[str, Any] | None = None) -> list[tuple]:
        """The rows converted, a row as the driver gave it at the last call not converted again (for selects
        whose stored values are hashable: no JSON)."""
        rows, convert = self.rows(connection, params)
        if convert is _as_is:
            return rows
        last = self._last.get(connection.dialect, {})
        kept = self._last[connection.dialect] = {}
        for row in rows:
            value = last.get(row)
            kept[row] = convert(row) if value is None else value
        return [kept[row] for row in rows]

    def _prepare(self, dialect: Any, params: Mapping[str, Any]) -> tuple[str, list[tuple[str | None, Any]], Converter]:
        """The SQL with its lists (IN) expanded (they are fixed), each place bound either a fixed value (name
        None) or a parameter of the call with its type's bind conversion, and the rows' conversion."""
        compiled = self.statement.compile(dialect=dialect)
        if any(bind.expanding and bind.key in params for bind in compiled.binds.values()):
            raise TypeError("a list (IN) of a select run by the driver is fixed, not a parameter of the call")
        expanded = compiled.construct_expanded_state(dict(params))
        binds: list[tuple[str | None, Any]] = []
        for name in expanded.positiontup or ():
            if name in params:
                binds.append((name, compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect)))
            else:
                value = expanded.parameters[name]
                if not isinstance(value, (str, int)):
                    raise TypeError(f"{name}: a fixed value of a select run by the driver must be text or a number")
                binds.append((None, value))
        processors = [(i, process) for i, column in enumerate(self.statement.selected_columns)
                      if (process := column.type.dialect_impl(dialect).result_processor(dialect, None)) is not None]

        def convert(row: tuple) -> tuple:
            if not processors:
                return row
            values = list(row)
            for i, process in processors:
                values[i] = process(values[i])
            return tuple(values)

        return expanded.statement, binds, convert


def _as_is(row: tuple) -> tuple:
    return row
