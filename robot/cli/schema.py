"""Before a command touches the database: does it exist, is its schema this code's? One line if not."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from sqlalchemy import Engine, inspect
from sqlalchemy.engine import make_url

from robot.storage.database import current_revision, head_revision, upgrade


class DatabaseProblem(Exception):
    """The database cannot serve the command; the message says what to run."""


def sqlite_file(url: str) -> Path | None:
    """The file of an SQLite URL (None for other databases and SQLite in memory)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def is_new(url: str, engine: Callable[[], Engine]) -> bool:
    """No database yet: no SQLite file (or an empty one), or a server database without any table.

    An SQLite file is looked at before connecting, since connecting would create it.
    """
    file = sqlite_file(url)
    if file is not None:
        return not file.exists() or file.stat().st_size == 0
    return current_revision(engine()) is None and not inspect(engine()).get_table_names()


def ensure_schema(url: str, engine: Callable[[], Engine], create: bool, upgrade_command: str,
                  hint: str = "") -> str | None:
    """Check the database; with `create`, give a new one the schema. Returns what was created, if anything.

    An outdated schema is never migrated here: that is `db upgrade`'s decision, said in the message.
    """
    where = str(sqlite_file(url) or make_url(url).render_as_string(hide_password=True))
    if is_new(url, engine):
        if not create:
            raise DatabaseProblem(f"no robot database at {where} yet: create it with `{upgrade_command}`{hint}")
        upgrade(engine())
        return where
    current, head = current_revision(engine()), head_revision()
    if current != head:
        raise DatabaseProblem(f"the database at {where} has schema revision {current or 'none'}, this robot needs "
                              f"{head}: run `{upgrade_command}`")
    return None
