"""Jobs updated in bulk (robot.storage.job_updates) are stored as SQLAlchemy's own UPDATE stores them."""
from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select, text

from robot.clock import ManualClock
from robot.jobstates import JobStatus, Outcome
from robot.storage.job_updates import UPDATE_JOB_BY_ID, update_jobs
from robot.storage.models import Job
from tests.fakes import T0, ScriptedGrid, make_robot, templates

# Every robot these tests build runs on SQLite and on PostgreSQL (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("database_url")


def test_a_bulk_update_stores_what_sqlalchemys_update_stores(tmp_path, clock: ManualClock):
    grid = ScriptedGrid(clock, {"ANALY_A": ("SITE-A", "DE"), "ANALY_B": ("SITE-B", "US")})
    robot = make_robot(tmp_path, grid, templates({"name": "AFT"}))
    robot.run_once(clock.now())
    with robot.sessions() as session:
        first, second = session.scalars(select(Job.id).order_by(Job.id)).all()
        ended = T0 + timedelta(seconds=1234, microseconds=567_891)
        final = {"phase": "done", "job_status": JobStatus.FAILED.value, "status_changed_at": T0,
                 "start_time": T0 + timedelta(microseconds=1), "end_time": ended, "creation_time": None,
                 "outcome": Outcome.FAILED.value, "pilot_error_code": 1099, "pilot_error_diag": "stage-in ‘failed’",
                 "cpu_consumption_time": 12.25, "max_rss_kb": 2**40, "time_payload": None, "error_class": "site"}
        update_jobs(session, [{"id": first, **final}])
        session.execute(UPDATE_JOB_BY_ID, [{"_id": second, **final}])
        session.commit()
        stored = {row.id: row._mapping for row in session.execute(select(Job.__table__).where(Job.id.in_([first, second])))}
        raw = [tuple(session.execute(text("SELECT start_time, end_time, status_changed_at, max_rss_kb FROM job"
                                          " WHERE id = :id"), {"id": job}).one()) for job in (first, second)]
    assert stored[first]["end_time"] == ended and stored[first]["pilot_error_diag"] == "stage-in ‘failed’"
    assert raw[0] == raw[1]  # the driver's values as stored (on SQLite, the text its times compare by)
    differs = {"id", "job_name", "panda_id", "queue_id"}
    assert ({k: v for k, v in stored[first].items() if k not in differs}
            == {k: v for k, v in stored[second].items() if k not in differs})
