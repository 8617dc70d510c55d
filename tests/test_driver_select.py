"""The engine's selects run through the driver give, once converted, the rows SQLAlchemy gives (both databases)."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import bindparam, select

from blacklist import engine
from robot import downtimes, userjobs
from robot.storage.database import make_engine, make_sessionmaker, upgrade
from robot.storage.driver_select import DriverSelect
from robot.storage.models import (Cloud, Downtime, Event, Job, Override, Queue, QueueTransition, Silence, Site,
                                  Template, UserJobHour)
from robot.storage.models import Test as StoredTest

NOW = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)


def fill(session) -> None:
    cloud = Cloud(name="DE")
    site = Site(name="SITE-A", cloud=cloud)
    session.add_all([cloud, site])
    queues = [Queue(name="ANALY_A", site=site, exempt=True, status="brokeroff", robot_state="excluded",
                    robot_state_since=NOW - timedelta(hours=2), extra_jobs=2, job_gap_seconds=600),
              Queue(name="ANALY_B", site=site), Queue(name="ANALY_GONE", site=site, retired_at=NOW)]
    session.add_all(queues)
    template = Template(name="t", category="functional", active=True, payload="p", input_dataset="d",
                        events_per_job=10, processing_type="test")
    test = StoredTest(template=template, category="functional", state="running", start_time=NOW - timedelta(days=1),
                end_time=NOW + timedelta(days=1), created_at=NOW - timedelta(days=1))
    session.add_all([template, test])
    session.flush()
    a, b = queues[0].id, queues[1].id
    session.add_all([
        Override(queue_id=a, action="exclude", status="test", actor="ops", reason="r", created_at=NOW - timedelta(hours=1),
                 until=NOW + timedelta(hours=1)),
        Override(queue_id=b, action="include", status="online", actor="ops", reason="r", created_at=NOW),
        Silence(scope="site", name="SITE-A", actor="ops", reason="r", created_at=NOW, until=NOW + timedelta(hours=3)),
        Event(time=NOW, kind="backend_unreachable", subject="grid", message="m"),
        Downtime(source="gocdb", key="1@SITE-A", site="SITE-A", start=NOW - timedelta(hours=1), end=NOW + timedelta(hours=1),
                 classification="scheduled", severity="outage", description="upgrade", seen_at=NOW),
        QueueTransition(queue_id=a, time=NOW - timedelta(hours=2), kind="status", old="online", new="brokeroff",
                        reason="r", evidence={"jobs": []}, actor="healthrobot", applied=True),
        UserJobHour(queue="ANALY_A", hour=NOW, source="simulated", ended=10, failed=2, failed_site=2,
                    codes=[{"source": "pilot", "code": 1099, "name": "STAGEINFAILED", "class": "site", "jobs": 2}],
                    read_at=NOW),
    ])
    for i, (queue, phase, status, outcome) in enumerate([(a, "active", "activated", None), (a, "active", "running", None),
                                                         (b, "done", "failed", "failed"), (b, "done", "finished", "completed")]):
        session.add(Job(test_id=test.id, queue_id=queue, job_name=f"j{i}", panda_id=100 + i, phase=phase, job_status=status,
                        dataset="d", n_files=1, recorded_at=NOW - timedelta(hours=3), creation_time=NOW - timedelta(hours=3),
                        status_changed_at=NOW - timedelta(minutes=i), start_time=NOW - timedelta(hours=2, minutes=i)
                        if status != "activated" else None, end_time=NOW - timedelta(minutes=i) if outcome else None,
                        outcome=outcome, error_class="site" if outcome == "failed" else None, error_code=1099 if outcome
                        == "failed" else None))
    session.flush()


def test_the_engines_selects_convert_as_sqlalchemy_does(database_url):
    database = make_engine(database_url)
    upgrade(database)
    with make_sessionmaker(database)() as session:
        fill(session)
        connection = session.connection()
        since = {"since": NOW - timedelta(days=1)}
        changed = DriverSelect(select(Job.__table__.c.id, Job.__table__.c.outcome)
                               .where(Job.__table__.c.outcome.in_(["completed", "failed"]),
                                      Job.__table__.c.status_changed_at >= bindparam("since")))
        selects = [(engine.QUEUE_ROWS, {}), (engine.MANUAL, {"now": NOW}), (engine.SILENCED, {"now": NOW}),
                   (engine.UNREACHABLE, {"now": NOW}), (engine.WAITING, {}), (engine.LAST_START, {}),
                   (downtimes.WINDOWS, {"since": NOW - timedelta(days=2), "until": NOW}), (changed, since),
                   (userjobs.HOURS_SINCE, {"first": NOW - timedelta(hours=6), "until": NOW + timedelta(hours=1),
                                           "since": NOW})]
        for query, params in selects:
            rows, convert = query.rows(connection, params)
            expected = [tuple(row) for row in session.execute(query.statement, params)]
            assert rows and [convert(row) for row in rows] == expected
            assert [tuple(map(type, convert(row))) for row in rows] == [tuple(map(type, row)) for row in expected]
        assert sorted(v for _, v in changed.rows(connection, since)[0]) == ["completed", "failed"]  # the list, fixed


def test_a_list_parameter_is_refused(database_url):
    database = make_engine(database_url)
    upgrade(database)
    query = DriverSelect(select(Queue.__table__.c.id).where(Queue.__table__.c.name.in_(bindparam("names", expanding=True))))
    with make_sessionmaker(database)() as session:
        if session.connection().dialect.name != "sqlite":
            pytest.skip("SQLAlchemy runs the select elsewhere")
        with pytest.raises(TypeError, match="fixed"):
            query.rows(session.connection(), {"names": ["ANALY_A"]})
