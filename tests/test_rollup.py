"""The job rollup: kept by the loop as jobs end, counted once, equal to the backfill and to the job table."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from click.testing import CliRunner
from sqlalchemy import inspect, select, update

from robot import rollup
from robot.cli import main
from robot.clock import ManualClock
from robot.rollup import DAY, HOUR, SIX_HOURS, WEEK, Counts
from robot.storage.database import downgrade, make_engine, make_sessionmaker, upgrade
from robot.storage.models import Job, JobRollup, QueueRollup, Setting, Template, Test as StoredTest
from tests.fakes import T0, ScriptedGrid, make_robot, templates

# Every robot these tests build runs on SQLite and on PostgreSQL (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("database_url")

QUEUES = {"ANALY_A": ("SITE-A", "DE"), "ANALY_B": ("SITE-B", "US")}


@pytest.fixture
def grid(clock: ManualClock) -> ScriptedGrid:
    return ScriptedGrid(clock, QUEUES)


def all_rows(session) -> dict[tuple[int, int, int, int], dict]:
    return {(r.span, r.start, r.queue_id, r.template_id): {n: getattr(r, n) for n in (*rollup.SUMS, "last_end")}
            for r in session.scalars(select(JobRollup))}


def queue_rows(session) -> dict[tuple[int, int, int], rollup.Counts]:
    """The queue rollup, checked against the job rollup's rows added up over the templates."""
    found = rollup.stored_queue_counts(session)
    assert found == rollup.queue_counts_from_templates(session)
    return found


def run_jobs(robot, grid, clock) -> None:
    """Three steps of jobs at two queues: completions, a site failure, a user failure."""
    robot.run_once(clock.now())
    a1, b1 = grid.in_queue("ANALY_A")[0], grid.in_queue("ANALY_B")[0]
    grid.start(a1)
    grid.start(b1)
    clock.advance(600)
    grid.finish(a1, events=12_000, wall=400)
    grid.finish(b1, wall=300, pilot_error_code=1099, pilot_error_diag="stage-in failed")
    robot.run_once(clock.now())
    clock.advance(3600)  # the next hour
    a2 = grid.in_queue("ANALY_A")[0]
    grid.start(a2)
    grid.finish(a2, wall=200, pilot_error_code=1305, pilot_error_diag="payload failed")
    robot.run_once(clock.now())


def test_the_loop_rolls_up_final_jobs_by_queue_template_and_hour(tmp_path, clock, grid):
    robot = make_robot(tmp_path, grid, templates({"name": "AFT"}))
    run_jobs(robot, grid, clock)
    with robot.sessions() as session:
        ids = dict(session.execute(select(Job.panda_id, Job.queue_id)).all())
        hours = rollup.stored_counts(session, HOUR)
        days = rollup.stored_counts(session, DAY)
        weeks = rollup.stored_counts(session, WEEK)
    a, b = ids[grid.in_queue("ANALY_A")[0]], ids[grid.in_queue("ANALY_B")[0]]
    first_hour = int((T0 + timedelta(seconds=600)).timestamp()) // HOUR * HOUR
    assert sorted(hours) == [(a, 1, first_hour), (a, 1, first_hour + HOUR), (b, 1, first_hour)]
    done = hours[(a, 1, first_hour)]
    assert (done.jobs, done.completed, done.failed, done.events) == (1, 1, 0, 12_000)
    assert done.wall_seconds == pytest.approx(400) and done.payload_seconds == pytest.approx(390)
    assert done.cpu_seconds == pytest.approx(320) and done.last_end == T0 + timedelta(seconds=400)
    site = hours[(b, 1, first_hour)]
    assert (site.jobs, site.failed, site.failed_site, site.failed_user, site.events) == (1, 1, 1, 0, 0)
    user = hours[(a, 1, first_hour + HOUR)]
    assert (user.failed, user.failed_user, user.failed_site) == (1, 1, 0)
    day = days[(a, 1, int(T0.timestamp()) // DAY * DAY)]
    assert (day.jobs, day.completed, day.failed, day.failed_user, day.events) == (2, 1, 1, 1, 12_000)
    assert sum(w.jobs for w in weeks.values()) == 3


def test_a_job_seen_final_twice_is_counted_once(tmp_path, clock, grid):
    robot = make_robot(tmp_path, grid, templates({"name": "AFT"}))
    run_jobs(robot, grid, clock)
    with robot.sessions() as session:
        before, queues = all_rows(session), queue_rows(session)
        # the same results seen again: a retried step at the same time, then the jobs' state touched again
        rollup.update(session, clock.now())
        rollup.update(session, clock.now())
        session.execute(update(Job).where(Job.phase == "done").values(status_changed_at=clock.now()))
        assert rollup.update(session, clock.now()) == 3
        session.commit()
        assert all_rows(session) == before
    clock.advance(60)
    robot.run_once(clock.now())  # and the loop's next step
    with robot.sessions() as session:
        assert all_rows(session) == before and queue_rows(session) == queues
        assert sum(r["jobs"] for k, r in before.items() if k[0] == HOUR) == 3


def test_jobs_final_in_a_step_that_crashed_before_the_rollup_are_rolled_up_later(tmp_path, clock, grid):
    robot = make_robot(tmp_path, grid, templates({"name": "AFT"}))
    run_jobs(robot, grid, clock)
    with robot.sessions() as session:
        seen = session.get(Setting, rollup.WATERMARK_SETTING).value
        # a job made final (status stored and committed) by a step that died before rolling up
        job = session.scalars(select(Job).where(Job.phase == "active")).first()
        job.phase, job.outcome, job.status_changed_at = "done", "completed", clock.now()
        job.start_time, job.end_time = clock.now() - timedelta(seconds=100), clock.now()
        session.commit()
        assert datetime.fromisoformat(seen) <= clock.now()
    clock.advance(60)
    robot.run_once(clock.now())
    with robot.sessions() as session:
        assert sum(c.jobs for c in rollup.stored_counts(session, HOUR).values()) == 4


def test_the_next_step_does_not_read_again_the_jobs_the_last_one_rolled_up(tmp_path, clock, grid):
    robot = make_robot(tmp_path, grid, templates({"name": "AFT"}))
    run_jobs(robot, grid, clock)  # its last step made one job final, stamped at the watermark
    with robot.sessions() as session:
        before = all_rows(session)
        assert rollup.update(session, clock.now() + timedelta(seconds=60)) == 0
        assert all_rows(session) == before


def test_backfill_equals_the_incremental_rollup_and_is_idempotent(tmp_path, clock, grid):
    robot = make_robot(tmp_path, grid, templates({"name": "AFT"}, {"name": "AFT_2"}))
    run_jobs(robot, grid, clock)
    with robot.sessions() as session:
        incremental, queues = all_rows(session), queue_rows(session)
        assert {k[0] for k in queues} == set(rollup.SPANS) and sum(c.jobs for k, c in queues.items()
                                                                    if k[0] == WEEK) == 3
        assert rollup.rebuild(session, clock.now()) == 3
        assert all_rows(session) == incremental and queue_rows(session) == queues
        rollup.rebuild(session, clock.now())
        assert all_rows(session) == incremental and queue_rows(session) == queues
        session.execute(update(JobRollup).values(jobs=99))  # damaged: the backfill repairs it
        session.execute(update(QueueRollup).values(failed=99))
        rollup.rebuild(session, clock.now())
        assert all_rows(session) == incremental and queue_rows(session) == queues


def template_jobs(robot, grid, queue: str) -> dict[str, int]:
    """The PanDA IDs of a queue's jobs in flight, by template name."""
    with robot.sessions() as session:
        names = dict(session.execute(select(Job.panda_id, Template.name).join(StoredTest, StoredTest.id == Job.test_id)
                                     .join(Template, Template.id == StoredTest.template_id)).all())
    return {names[pid]: pid for pid in grid.in_queue(queue)}


def test_jobs_of_two_templates_ending_at_a_queue_in_one_hour_at_different_steps_are_rolled_up_as_the_backfill(
        tmp_path, clock, grid):
    robot = make_robot(tmp_path, grid, templates({"name": "AFT"}, {"name": "AFT_2"}))
    robot.run_once(clock.now())
    first = template_jobs(robot, grid, "ANALY_A")
    clock.advance(300)
    grid.finish(first["AFT"], wall=200)
    grid.finish(template_jobs(robot, grid, "ANALY_B")["AFT_2"], wall=100, pilot_error_code=1099)
    robot.run_once(clock.now())
    clock.advance(300)  # the same hour: the other template's job at the same queue, then the first's next one
    grid.finish(first["AFT_2"], wall=250, pilot_error_code=1305)
    robot.run_once(clock.now())
    clock.advance(300)
    grid.finish(template_jobs(robot, grid, "ANALY_A")["AFT"], events=5_000, wall=150)
    robot.run_once(clock.now())
    with robot.sessions() as session:
        incremental, queues = all_rows(session), queue_rows(session)
        hours = rollup.stored_counts(session, HOUR)
        assert sorted((c.jobs, c.completed, c.failed_site, c.failed_user) for c in hours.values()) == [
            (1, 0, 0, 1), (1, 0, 1, 0), (2, 2, 0, 0)]
        assert sum(c.jobs for k, c in queues.items() if k[0] == WEEK) == 4
        rollup.rebuild(session, clock.now())
        assert all_rows(session) == incremental and queue_rows(session) == queues


def test_a_step_rewrites_the_rows_of_the_templates_whose_jobs_ended_not_the_other_templates_at_their_queues(
        tmp_path, clock, grid):
    """A step usually ends one job of one template at a queue: the rows of its other templates there are
    neither read nor written again (shown by a row altered behind the robot's back staying as it was)."""
    robot = make_robot(tmp_path, grid, templates({"name": "AFT"}, {"name": "AFT_2"}))
    robot.run_once(clock.now())
    for pid in template_jobs(robot, grid, "ANALY_A").values():
        grid.finish(pid, wall=100)
    clock.advance(300)
    robot.run_once(clock.now())
    with robot.sessions() as session:
        other = session.scalar(select(Template.id).where(Template.name == "AFT_2"))
        altered = (JobRollup.template_id == other) & (JobRollup.span == HOUR)
        session.execute(update(JobRollup).where(altered).values(jobs=99))
        session.commit()
    grid.finish(template_jobs(robot, grid, "ANALY_A")["AFT"], wall=100)
    clock.advance(300)  # the same hour
    robot.run_once(clock.now())
    with robot.sessions() as session:
        assert session.scalar(select(JobRollup.jobs).where(altered)) == 99
        first = session.scalar(select(Template.id).where(Template.name == "AFT"))
        assert session.scalar(select(JobRollup.jobs).where(JobRollup.template_id == first, JobRollup.span == WEEK)) == 2


def test_a_rollup_from_before_the_6_hour_rows_gets_them_at_the_next_step(tmp_path, clock, grid):
    robot = make_robot(tmp_path, grid, templates({"name": "AFT"}, {"name": "AFT_2"}))
    run_jobs(robot, grid, clock)
    with robot.sessions() as session:
        expected, queues = all_rows(session), queue_rows(session)
        six = rollup.stored_counts(session, SIX_HOURS)
        assert sum(c.jobs for c in six.values()) == 3 and rollup.stored_spans(session) == rollup.SPANS
        # as the robot left it before: no 6-hour rows, no record of the spans
        session.execute(JobRollup.__table__.delete().where(JobRollup.span == SIX_HOURS))
        session.execute(QueueRollup.__table__.delete().where(QueueRollup.span == SIX_HOURS))
        session.execute(Setting.__table__.delete().where(Setting.name == rollup.SPANS_SETTING))
        session.commit()
        assert rollup.stored_spans(session) == (HOUR, DAY, WEEK)  # what the pages read meanwhile
    clock.advance(60)
    robot.run_once(clock.now())
    with robot.sessions() as session:
        assert all_rows(session) == expected and rollup.stored_spans(session) == rollup.SPANS
        assert queue_rows(session) == queues


def test_the_migration_fills_the_queue_rollup_from_an_existing_job_rollup(tmp_path, clock, grid):
    """A database whose job rollup was built before the queue rollup existed (revision 0009) gets it
    summed from the job rollup by the upgrade, equal to what the robot keeps."""
    robot = make_robot(tmp_path, grid, templates({"name": "AFT"}, {"name": "AFT_2"}))
    run_jobs(robot, grid, clock)
    with robot.sessions() as session:
        expected = queue_rows(session)
        assert len(expected) >= 2 * len(rollup.SPANS)
    engine = make_engine(robot.config.database_url)
    downgrade(engine, "0009")
    assert "queue_rollup" not in inspect(engine).get_table_names()
    upgrade(engine)
    engine.dispose()
    with robot.sessions() as session:
        assert queue_rows(session) == expected


def test_the_databases_sums_equal_the_python_reference(database_url):
    """The SQL the rollup runs counts exactly as `Counts.add_job` (the metrics' rules) does."""
    engine = make_engine(database_url)
    upgrade(engine)
    sessions = make_sessionmaker(engine)
    from tests.test_dashboard_queries import World  # one world builder for both files
    with sessions() as session:
        world = World(session)
        base = datetime(2026, 3, 1, 0, 0, tzinfo=timezone.utc)
        for k in range(400):
            end = base + timedelta(minutes=17 * k, microseconds=999_999 if k % 7 == 0 else 123 * k)
            outcome = ("completed", "failed", "cancelled", "unknown", "completed")[k % 5]
            world.job(("ANALY_A", "ANALY_B")[k % 2], end, outcome=outcome, template=("T1", "T2")[k % 3 == 0],
                      wall=0 if k % 11 == 0 else 100.5 + k, payload=None if k % 13 == 0 else 50.25,
                      error_class=(None, "site", "user", "central", "weird")[k % 5] if outcome == "failed" else None)
        session.flush()
        rollup.rebuild(session, base)
        stored = rollup.stored_counts(session, HOUR)
        reference = rollup.aggregate(session.execute(rollup._final_jobs()), HOUR)
        assert set(stored) == set(reference)
        for key, counts in reference.items():
            got = stored[key]
            for name in rollup.SUMS:
                assert getattr(got, name) == pytest.approx(getattr(counts, name), abs=1e-6), (key, name)
            assert got.last_end == counts.last_end
        days = rollup.stored_counts(session, DAY)
        total = Counts()
        for counts in days.values():
            total.add(counts)
        assert total.jobs == sum(c.jobs for c in reference.values()) == 240
        assert total.cancelled == total.unknown == 80


def test_counts_follow_the_metrics_rules():
    counts = Counts()
    end = datetime(2026, 1, 1, 12, tzinfo=timezone.utc)
    counts.add_job("completed", end, end - timedelta(seconds=100), 1000, 80.0, 50.0, None)
    counts.add_job("completed", end, None, 500, None, 0.0, None)  # no start: no throughput
    counts.add_job("failed", end, end - timedelta(seconds=10), 0, None, 1.0, "central")
    counts.add_job("failed", end, end, 0, None, 0.0, "gremlins")  # an unknown class counts as unknown
    counts.add_job("cancelled", end, end, 0, None, 0.0, "none")
    counts.add_job("unknown", end, None, 0, None, 0.0, "unknown")
    assert (counts.jobs, counts.completed, counts.failed, counts.cancelled, counts.unknown) == (4, 2, 2, 1, 1)
    assert (counts.failed_central, counts.failed_unknown, counts.failed_site) == (1, 1, 0)
    assert (counts.events, counts.wall_seconds, counts.cpu_seconds) == (1000, 100.0, 50.0)
    assert (counts.payload_events, counts.payload_seconds) == (1000, 80.0)


def test_db_rollup_command_rebuilds(tmp_path, clock, grid):
    robot = make_robot(tmp_path, grid, templates({"name": "AFT"}))
    run_jobs(robot, grid, clock)
    with robot.sessions() as session:
        expected, queues = all_rows(session), queue_rows(session)
        session.execute(JobRollup.__table__.delete())
        session.execute(QueueRollup.__table__.delete())
        session.commit()
    config = tmp_path / "robot.yaml"
    config.write_text(f"data_dir: {tmp_path}\ndatabase: {{url: '{robot.config.database_url}'}}\n")
    result = CliRunner().invoke(main, ["--config", str(config), "db", "rollup"])
    assert result.exit_code == 0, result.output
    assert "rebuilt from 3 final jobs" in result.output
    with robot.sessions() as session:
        assert all_rows(session) == expected and queue_rows(session) == queues
