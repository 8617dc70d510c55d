"""Before a command touches the database: does it exist, is its schema this code's? One line if not."""
from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import Engine, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations" / "versions"
_REVISION = re.compile(r"^(down_revision|revision)\s*(?::[^=]*)?=\s*['\"]?([^'\"\s]+)['\"]?", re.M)


class DatabaseProblem(Exception):
    """The database cannot serve the command; the message says what to run."""


def sqlite_file(url: str) -> Path | None:
    """The file of an SQLite URL (None for other databases and SQLite in memory)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def head_revision() -> str:
    """The newest migration, read from the migration files' `revision` / `down_revision` lines.

    The same answer as alembic's (a test checks it), without importing alembic and every migration:
    reading commands start faster.
    """
    revisions, parents = set(), set()
    for path in MIGRATIONS.glob("*.py"):
        found = dict((key, value) for key, value in _REVISION.findall(path.read_text(encoding="utf-8")))
        if "revision" in found:
            revisions.add(found["revision"])
            parents.add(found.get("down_revision"))
    heads = sorted(revisions - parents)
    if len(heads) != 1:
        raise DatabaseProblem(f"the migrations in {MIGRATIONS} have {len(heads)} heads: {', '.join(heads)}")
    return heads[0]


def current_revision(engine: Engine) -> str | None:
    """The database's revision, as alembic stores it (None when it has none)."""
    with engine.connect() as connection:
        try:
            return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
        except DBAPIError:  # no such table
            return None


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
        from robot.storage.database import upgrade  # alembic is imported only to migrate

        upgrade(engine())
        return where
    current, head = current_revision(engine()), head_revision()
    if current != head:
        raise DatabaseProblem(f"the database at {where} has schema revision {current or 'none'}, this robot needs "
                              f"{head}: run `{upgrade_command}`")
    return None
