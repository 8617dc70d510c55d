"""Storage: migrations match the models, the schema check, UTC times (on SQLite and PostgreSQL), SQLite in WAL mode."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.exc import StatementError

from robot.storage.database import SchemaOutdated, check_schema, head_revision, make_engine, make_sessionmaker, upgrade
from robot.storage.models import Base, Event


@pytest.fixture
def engine(database_url):
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def sqlite_engine(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'sub' / 'robot.db'}")  # the folder is made
    yield engine
    engine.dispose()


def test_upgrade_creates_every_table_and_matches_the_models(engine):
    upgrade(engine)
    assert set(inspect(engine).get_table_names()) >= set(Base.metadata.tables)
    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert differences == []  # a model changed without a migration would show here


def test_schema_check_refuses_an_outdated_database(engine):
    with pytest.raises(SchemaOutdated, match="healthrobot db upgrade"):
        check_schema(engine)
    upgrade(engine)
    check_schema(engine)
    assert head_revision()


def test_sqlite_runs_in_wal_mode_with_foreign_keys(sqlite_engine):
    with sqlite_engine.connect() as connection:
        assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert connection.execute(text("PRAGMA foreign_keys")).scalar() == 1


def test_times_are_stored_in_utc_and_read_back_aware(engine):
    upgrade(engine)
    sessions = make_sessionmaker(engine)
    paris = timezone(timedelta(hours=1))
    with sessions() as session:
        session.add(Event(time=datetime(2026, 11, 1, 13, 0, tzinfo=paris), kind="k", message="m"))
        session.commit()
    with sessions() as session:
        stored = session.query(Event).one().time
    assert stored == datetime(2026, 11, 1, 12, 0, tzinfo=timezone.utc) and stored.tzinfo is not None
    with engine.connect() as connection:
        assert str(connection.execute(text("SELECT time FROM event")).scalar()).startswith("2026-11-01 12:00:00")


def test_naive_times_are_refused(engine):
    upgrade(engine)
    with make_sessionmaker(engine)() as session:
        session.add(Event(time=datetime(2026, 11, 1, 12, 0), kind="k", message="m"))
        with pytest.raises(StatementError, match="UTC-aware"):
            session.commit()


def test_sqlite_stores_times_as_sqlalchemys_datetime_text(sqlite_engine):
    """The time type's own SQLite conversion writes and reads exactly what SQLAlchemy's DATETIME does, so
    databases written before and after it hold the same text and compare the same in SQL."""
    from sqlalchemy.dialects.sqlite import DATETIME

    upgrade(sqlite_engine)
    sessions = make_sessionmaker(sqlite_engine)
    times = [datetime(2026, 11, 1, 12, 0, tzinfo=timezone.utc),  # no microseconds: still written with six zeros
             datetime(2026, 11, 1, 12, 0, 5, 123, tzinfo=timezone.utc),
             datetime(2026, 11, 1, 13, 0, 5, 999999, tzinfo=timezone(timedelta(hours=1)))]
    with sessions() as session:
        session.add_all([Event(time=when, kind="k", message=str(i)) for i, when in enumerate(times)])
        session.commit()
    dialect = sqlite_engine.dialect
    reference = DATETIME().bind_processor(dialect)
    with sqlite_engine.connect() as connection:
        stored = [text_ for text_, in connection.execute(text("SELECT time FROM event ORDER BY message"))]
    assert stored == [reference(when.astimezone(timezone.utc).replace(tzinfo=None)) for when in times]
    assert stored[0] == "2026-11-01 12:00:00.000000"
    with sessions() as session:
        read = [event.time for event in session.query(Event).order_by(Event.message)]
    assert read == times and all(when.tzinfo is timezone.utc for when in read)
    # text SQLAlchemy did not write (SQL's own CURRENT_TIMESTAMP: no microseconds) is read as its DATETIME reads it, in UTC
    with sqlite_engine.begin() as connection:
        connection.execute(text("INSERT INTO event (time, kind, subject, message, details) VALUES ('2026-11-01 14:00:05', 'k', '', 'z', '{}')"))
    with sessions() as session:
        by_hand = session.query(Event).filter(Event.message == "z").one().time
    assert by_hand == DATETIME().result_processor(dialect, None)("2026-11-01 14:00:05").replace(tzinfo=timezone.utc)
    assert by_hand.tzinfo is timezone.utc
