"""Jobs updated in bulk (robot.storage.job_updates) are stored as SQLAlchemy's own UPDATE stores them."""
from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import insert, select, text

from robot.clock import ManualClock
from robot.jobstates import JobStatus, Outcome
from robot.storage.job_updates import UPDATE_JOB_BY_ID, record_jobs, update_jobs
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


def test_jobs_recorded_in_bulk_are_stored_as_sqlalchemys_insert_stores_them(tmp_path, clock: ManualClock):
    """The loop's record of the jobs it is about to send (robot.storage.job_updates.record_jobs): on SQLite
    the driver's own insert, given the model's defaults, and the ids those rows took."""
    grid = ScriptedGrid(clock, {"ANALY_A": ("SITE-A", "DE")})
    robot = make_robot(tmp_path, grid, templates({"name": "AFT"}))
    robot.run_once(clock.now())
    with robot.sessions() as session:
        model = session.execute(select(Job.test_id, Job.queue_id, Job.worker_id)).one()
        recorded_at = T0 + timedelta(seconds=61, microseconds=250_001)
        rows = [{"test_id": model.test_id, "queue_id": model.queue_id, "job_name": f"hc.bulk.{i}",
                 "worker_id": model.worker_id, "phase": "recorded", "dataset": "mc23.‘data’", "n_files": i,
                 "recorded_at": recorded_at, "retry_of": None} for i in range(3)]
        ids = record_jobs(session, rows)
        session.execute(insert(Job.__table__), [{**rows[0], "job_name": "hc.core"}])
        session.commit()
        stored = {row.job_name: row._mapping for row in session.execute(
            select(Job.__table__).where(Job.job_name.in_([*ids, "hc.core"])))}
        raw = {name: tuple(session.execute(text("SELECT recorded_at, cpu_consumption_time, pilot_error_diag FROM job"
                                                " WHERE job_name = :name"), {"name": name}).one())
               for name in ("hc.bulk.0", "hc.core")}
    assert sorted(ids) == ["hc.bulk.0", "hc.bulk.1", "hc.bulk.2"] and len(set(ids.values())) == 3
    assert all(stored[name]["id"] == job_id and stored[name]["n_files"] == int(name[-1]) for name, job_id in ids.items())
    assert raw["hc.bulk.0"] == raw["hc.core"]  # the driver's values as stored
    differs = {"id", "job_name"}
    assert ({k: v for k, v in stored["hc.bulk.0"].items() if k not in differs}
            == {k: v for k, v in stored["hc.core"].items() if k not in differs})
    assert stored["hc.core"]["core_count"] == 1 and stored["hc.core"]["recorded_at"] == recorded_at


def test_jobs_recorded_in_bulk_get_their_own_ids_when_sqlite_picks_them_at_random(tmp_path, clock: ManualClock):
    """Once the largest possible id is taken, SQLite gives new rows ids at random, not the ones after the largest:
    record_jobs then reads each row's id by its name."""
    grid = ScriptedGrid(clock, {"ANALY_A": ("SITE-A", "DE")})
    robot = make_robot(tmp_path, grid, templates({"name": "AFT"}))
    robot.run_once(clock.now())
    with robot.sessions() as session:
        if session.get_bind().dialect.name != "sqlite":
            pytest.skip("PostgreSQL returns the ids of the rows it inserts")
        model = session.execute(select(Job.test_id, Job.queue_id, Job.worker_id)).one()
        rows = [{"test_id": model.test_id, "queue_id": model.queue_id, "job_name": f"hc.random.{i}",
                 "worker_id": model.worker_id, "phase": "recorded", "dataset": "d", "n_files": i,
                 "recorded_at": T0, "retry_of": None} for i in range(20)]
        session.execute(insert(Job.__table__), [{**rows[0], "job_name": "hc.largest", "id": 2**63 - 1}])
        ids = record_jobs(session, rows)
        stored = dict(session.execute(select(Job.job_name, Job.id).where(Job.job_name.like("hc.random.%"))).all())
    assert ids == stored and len(set(ids.values())) == 20
