"""The loop step's bookkeeping, against a scripted grid in virtual time."""
from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from robot.backends.base import BackendUnavailable
from robot.clock import ManualClock
from robot.jobstates import JobStatus, QueueStatus
from robot.loop import Robot
from robot.storage.models import Event, Job, Queue, QueueTransition
from robot.storage import models
from robot.storage.database import make_engine
from robot.workers import Workers
from tests.fakes import T0, Crash, ScriptedGrid, make_robot, templates

# Every robot these tests build runs on SQLite and on PostgreSQL (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("database_url")

QUEUES = {"ANALY_A": ("SITE-A", "DE"), "ANALY_B": ("SITE-B", "DE"), "ANALY_C": ("SITE-C", "US")}



@pytest.fixture
def grid(clock: ManualClock) -> ScriptedGrid:
    return ScriptedGrid(clock, QUEUES)


def jobs(robot: Robot, **where: object) -> list[Job]:
    with robot.sessions() as session:
        query = select(Job).order_by(Job.id)
        for key, value in where.items():
            query = query.where(getattr(Job, key) == value)
        return list(session.scalars(query))


def step(robot: Robot, clock: ManualClock, seconds: float = 60):
    clock.advance(seconds)
    return robot.run_once(clock.now())


def test_one_job_in_flight_per_template_and_queue_and_resubmit_when_it_ends(tmp_path, clock, grid):
    robot = make_robot(tmp_path, grid, templates({"name": "AFT_1"}, {"name": "AFT_2"}))
    summary = robot.run_once(clock.now())
    assert summary.submitted == 6  # 3 queues x 2 templates, one each
    assert step(robot, clock).submitted == 0  # nothing ended: nothing new
    first = grid.in_queue("ANALY_A")[0]
    grid.finish(first)
    summary = step(robot, clock)
    assert summary.finished == 1 and summary.submitted == 1
    assert len(grid.in_queue("ANALY_A")) == 2
    done = jobs(robot, panda_id=first)[0]
    assert (done.phase, done.outcome, done.n_events) == ("done", "completed", 10_000)


def test_min_queue_depth_keeps_extra_jobs_queued(tmp_path, clock, grid):
    robot = make_robot(tmp_path, grid, templates({"name": "AFT", "max_running_jobs": 2, "min_queue_depth": 1,
                                                  "queues": ["ANALY_A"]}))
    assert robot.run_once(clock.now()).submitted == 2  # 2 in flight, both queued: depth is met
    grid.start(grid.in_queue("ANALY_A")[0])
    assert step(robot, clock).submitted == 0  # 1 running + 1 queued
    grid.start(grid.in_queue("ANALY_A")[1])
    assert step(robot, clock).submitted == 1  # 2 running, none queued: depth asks for one more
    assert step(robot, clock).submitted == 0


def test_without_resubmission_a_queue_gets_its_jobs_once(tmp_path, clock, grid):
    robot = make_robot(tmp_path, grid, templates({"name": "ONCE", "resubmit": False, "max_running_jobs": 2,
                                                  "queues": ["ANALY_B"]}))
    assert robot.run_once(clock.now()).submitted == 2
    for pid in grid.in_queue("ANALY_B"):
        grid.finish(pid)
    assert step(robot, clock).submitted == 0


def test_template_queue_and_cloud_patterns_choose_the_queues(tmp_path, clock, grid):
    robot = make_robot(tmp_path, grid, templates({"name": "US_ONLY", "clouds": ["US"]},
                                                 {"name": "A_ONLY", "queues": ["ANALY_A*"]}))
    robot.run_once(clock.now())
    assert sorted(r.queue for r in grid.requests.values()) == ["ANALY_A", "ANALY_C"]


def test_polling_is_batched_one_call_per_batch(tmp_path, clock, grid):
    robot = make_robot(tmp_path, grid, templates(*({"name": f"T{i}"} for i in range(5))), poll_batch_size=4)
    robot.run_once(clock.now())  # 15 jobs
    grid.calls.clear()
    grid.status_batches.clear()
    step(robot, clock)
    assert grid.calls["status"] == 4 and grid.status_batches == [4, 4, 4, 3]


def test_a_poll_cut_short_by_the_backend_stores_what_the_batches_before_read(tmp_path, clock, grid):
    robot = make_robot(tmp_path, grid, templates({"name": "AFT"}), poll_batch_size=2)
    robot.run_once(clock.now())  # 3 jobs, polled in batches of 2
    sent = list(grid.jobs)
    for pid in sent:
        grid.start(pid)
        grid.finish(pid)
    status = grid.status

    def second_batch_fails(panda_ids):
        if grid.calls["status"] == 1:
            raise BackendUnavailable("status: connection reset")
        return status(panda_ids)

    grid.status = second_batch_fails
    summary = step(robot, clock)
    assert summary.polled == 2 and summary.finished == 2 and any(e.startswith("status") for e in summary.backend_errors)
    assert sorted(j.phase for j in jobs(robot) if j.panda_id in sent) == ["active", "done", "done"]


def test_job_request_carries_the_test_marker_and_input_data(tmp_path, clock, grid):
    robot = make_robot(tmp_path, grid, templates({"name": "AFT", "events_per_job": 25_000, "queues": ["ANALY_A"]}))
    robot.run_once(clock.now())
    (request,) = grid.requests.values()
    assert request.processing_type == "gangarobot" and request.prod_source_label == "user"
    assert request.dataset == "mc23.test.DAOD_PHYS" and len(request.files) == 3  # 3 x 10k events >= 25k
    assert request.max_events == 25_000 and request.max_wall_seconds == 1800
    stored = jobs(robot)[0]
    assert stored.job_name == request.job_name and stored.dataset == request.dataset and stored.n_files == 3


def test_failure_is_stored_with_panda_fields_and_classified(tmp_path, clock, grid):
    robot = make_robot(tmp_path, grid, templates({"name": "AFT", "queues": ["ANALY_A"]}))
    robot.run_once(clock.now())
    (pid,) = grid.in_queue("ANALY_A")
    grid.finish(pid, pilot_error_code=1099, pilot_error_diag="Get error: Copy command returned error code 256")
    step(robot, clock)
    job = jobs(robot, panda_id=pid)[0]
    assert (job.outcome, job.error_source, job.error_code, job.error_name, job.error_class) == (
        "failed", "pilot", 1099, "STAGEINFAILED", "site")
    assert job.pilot_error_diag.startswith("Get error") and job.time_stagein == 5.0


def test_user_and_central_errors_are_classified_as_such(tmp_path, clock, grid):
    robot = make_robot(tmp_path, grid, templates({"name": "AFT", "max_running_jobs": 3, "queues": ["ANALY_A"]}))
    robot.run_once(clock.now())
    a, b, c = grid.in_queue("ANALY_A")
    grid.finish(a, exe_error_code=1, exe_error_diag="Traceback: ZeroDivisionError")
    grid.finish(b, pilot_error_code=1163, pilot_error_diag="Could not establish context")
    grid.finish(c, pilot_error_code=4242)  # not in the table
    step(robot, clock)
    assert [(j.error_class, j.error_name) for j in jobs(robot, phase="done")] == [
        ("user", "EXEERROR"), ("central", "NOPROXY"), ("unknown", "PILOT_4242")]


def test_crash_between_recording_and_submitting_resumes_without_double_submission(tmp_path, clock, grid):
    robot = make_robot(tmp_path, grid, templates({"name": "AFT"}))
    robot.run_once(clock.now())
    running = grid.in_queue("ANALY_A")[0]
    grid.finish(grid.in_queue("ANALY_B")[0])  # one slot frees up
    grid.crash_on_submit = True
    with pytest.raises(Crash):
        step(robot, clock)
    recorded = jobs(robot, phase="recorded")
    assert len(recorded) == 1  # written before it was sent
    # a new robot process on the same database
    grid.crash_on_submit = False
    restarted = Robot(robot.config, robot.sessions, grid, grid, grid, robot.error_table)
    summary = step(restarted, clock)
    assert summary.lost == 1 and summary.submitted == 1
    assert jobs(restarted, job_name=recorded[0].job_name)[0].phase == "lost"
    assert len(grid.in_queue("ANALY_B")) == 1  # exactly one successor, not two
    assert len(grid.in_queue("ANALY_A")) == 1 and grid.in_queue("ANALY_A")[0] == running  # not resubmitted
    with restarted.sessions() as session:
        event = session.scalars(select(Event).where(Event.kind == "submission_unconfirmed")).one()
    assert recorded[0].job_name in event.details["lost"]


def test_crash_after_the_grid_recorded_the_job_attaches_it_instead_of_orphaning_it(tmp_path, clock, grid):
    robot = make_robot(tmp_path, grid, templates({"name": "AFT"}))
    robot.run_once(clock.now())
    grid.finish(grid.in_queue("ANALY_B")[0])  # one slot frees up
    grid.crash_after_submit = True
    with pytest.raises(Crash):
        step(robot, clock)
    (orphan,) = grid.in_queue("ANALY_B")  # the grid runs it; the robot never heard its PanDA ID
    grid.crash_after_submit = False
    restarted = Robot(robot.config, robot.sessions, grid, grid, grid, robot.error_table)
    summary = step(restarted, clock)
    assert (summary.reconciled, summary.lost, summary.submitted) == (1, 0, 0)
    assert grid.in_queue("ANALY_B") == [orphan]  # max_running_jobs 1: no second job
    (row,) = jobs(restarted, panda_id=orphan)
    assert row.phase == "active" and row.job_name == grid.requests[orphan].job_name
    grid.finish(orphan)
    step(restarted, clock)
    assert jobs(restarted, panda_id=orphan)[0].outcome == "completed"  # followed to its end


def test_a_job_not_found_is_lost_only_once_the_backends_lookup_grace_has_passed(tmp_path, clock, grid):
    """PanDA's monitor may list a bulk later than the robot asks (the server still storing it when the robot
    died): a name not found keeps its row unconfirmed and its slot until the submission is lookup_grace old."""
    robot = make_robot(tmp_path, grid, templates({"name": "AFT", "queues": ["ANALY_B"]}))
    grid.crash_on_submit = True
    with pytest.raises(Crash):
        robot.run_once(clock.now())
    grid.crash_on_submit = False
    grid.lookup_grace = timedelta(minutes=5)
    restarted = Robot(robot.config, robot.sessions, grid, grid, grid, robot.error_table)
    for _ in range(4):  # 1 to 4 minutes old
        summary = step(restarted, clock)
        assert (summary.lost, summary.submitted) == (0, 0) and grid.in_queue("ANALY_B") == []
        assert {j.phase for j in jobs(restarted)} == {"recorded"}
    with restarted.sessions() as session:
        event = session.scalars(select(Event).where(Event.kind == "submission_unconfirmed")
                                .order_by(Event.id.desc())).first()
    assert "1 not found yet, asked again (lost only once 0:05:00 old)" in event.message
    summary = step(restarted, clock)  # 5 minutes old
    assert (summary.lost, summary.submitted) == (1, 1) and len(grid.in_queue("ANALY_B")) == 1


def test_unconfirmed_job_keeps_its_slot_while_the_backend_cannot_be_asked(tmp_path, clock, grid):
    robot = make_robot(tmp_path, grid, templates({"name": "AFT", "queues": ["ANALY_B"]}))
    grid.crash_after_submit = True
    with pytest.raises(Crash):
        robot.run_once(clock.now())
    grid.crash_after_submit = False
    grid.find_unreachable = True
    restarted = Robot(robot.config, robot.sessions, grid, grid, grid, robot.error_table)
    for _ in range(3):
        summary = step(restarted, clock)
        assert summary.submitted == 0 and summary.lost == 0 and any("find" in e for e in summary.backend_errors)
    assert len(grid.in_queue("ANALY_B")) == 1 and {j.phase for j in jobs(restarted)} == {"recorded"}
    grid.find_unreachable = False
    summary = step(restarted, clock)
    assert (summary.reconciled, summary.submitted) == (1, 0) and len(grid.in_queue("ANALY_B")) == 1


def test_unreachable_backend_produces_unknown_never_failure(tmp_path, clock, grid):
    robot = make_robot(tmp_path, grid, templates({"name": "AFT"}), unknown_after="2h")
    robot.run_once(clock.now())
    grid.unreachable = True
    summary = step(robot, clock)
    assert summary.backend_errors and summary.submitted == 0
    assert all(j.phase == "active" and j.outcome is None for j in jobs(robot))
    grid.unreachable = False
    pid = grid.in_queue("ANALY_A")[0]
    grid.finish(pid)
    step(robot, clock)
    assert jobs(robot, panda_id=pid)[0].outcome == "completed"
    with robot.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Event).where(Event.kind == "backend_unreachable")) >= 1


def test_submission_to_an_unreachable_backend_loses_nothing_and_counts_nothing(tmp_path, clock, grid):
    robot = make_robot(tmp_path, grid, templates({"name": "AFT"}))
    grid.unreachable = True
    summary = robot.run_once(clock.now())
    assert summary.submitted == 0 and "submit" in summary.backend_errors[-1]
    # unconfirmed (the server may have stored them), not counted, slots kept until looked up
    assert {j.phase for j in jobs(robot)} == {"recorded"} and all(j.outcome is None for j in jobs(robot))
    grid.unreachable = False
    summary = step(robot, clock)
    assert (summary.lost, summary.submitted) == (3, 3)


def test_job_the_backend_forgot_becomes_unknown_after_the_grace_time(tmp_path, clock, grid):
    robot = make_robot(tmp_path, grid, templates({"name": "AFT", "queues": ["ANALY_C"]}), unknown_after="1h")
    robot.run_once(clock.now())
    (pid,) = grid.in_queue("ANALY_C")
    del grid.jobs[pid]
    step(robot, clock, 30 * 60)
    assert jobs(robot, panda_id=pid)[0].phase == "active"
    step(robot, clock, 31 * 60)
    job = jobs(robot, panda_id=pid)[0]
    assert (job.outcome, job.error_class) == ("unknown", "unknown")


def test_job_not_started_in_time_is_killed_and_counted_as_site_failure(tmp_path, clock, grid):
    robot = make_robot(tmp_path, grid, templates({"name": "AFT", "queues": ["ANALY_A"], "max_queue_time": "2h"}))
    robot.run_once(clock.now())
    (pid,) = grid.in_queue("ANALY_A")
    step(robot, clock, 60)  # seen activated: the site's wait counts from here
    step(robot, clock, 3600)
    assert grid.killed == []
    step(robot, clock, 3600)
    assert grid.killed == [pid]
    job = jobs(robot, panda_id=pid)[0]
    assert (job.outcome, job.error_class, job.error_name) == ("failed", "site", "NOTSTARTEDINTIME")
    assert len(grid.in_queue("ANALY_A")) == 1  # and a successor went out


def test_job_stuck_before_activation_is_killed_as_a_central_problem_never_the_sites(tmp_path, clock, grid):
    robot = make_robot(tmp_path, grid, templates({"name": "AFT", "queues": ["ANALY_A"], "max_queue_time": "2h"}))
    grid.initial_state = JobStatus.ASSIGNED  # the server is still moving its input
    robot.run_once(clock.now())
    (pid,) = grid.in_queue("ANALY_A", (JobStatus.ASSIGNED,))
    step(robot, clock, 3600)
    assert jobs(robot, panda_id=pid)[0].job_status == "assigned"  # kept, not folded into defined
    step(robot, clock, 3601)
    assert grid.killed == [pid]
    job = jobs(robot, panda_id=pid)[0]
    assert (job.outcome, job.error_class, job.error_name) == ("failed", "central", "NOTACTIVATEDINTIME")


def test_max_queue_time_counts_from_activation(tmp_path, clock, grid):
    robot = make_robot(tmp_path, grid, templates({"name": "AFT", "queues": ["ANALY_A"], "max_queue_time": "2h"}))
    grid.initial_state = JobStatus.DEFINED
    robot.run_once(clock.now())
    (pid,) = grid.in_queue("ANALY_A")
    step(robot, clock, 5400)
    grid.activate(pid)  # activated after 1.5 h at the server
    step(robot, clock, 60)
    step(robot, clock, 3600)  # 2.5 h after submission, 1 h after activation
    assert grid.killed == [] and jobs(robot, panda_id=pid)[0].phase == "active"
    step(robot, clock, 3600)
    assert grid.killed == [pid]
    assert jobs(robot, panda_id=pid)[0].error_name == "NOTSTARTEDINTIME"


def test_a_job_the_backend_will_not_kill_is_recorded_as_it_really_ended(tmp_path, clock, grid):
    robot = make_robot(tmp_path, grid, templates({"name": "AFT", "queues": ["ANALY_A"], "max_queue_time": "1h"}))
    robot.run_once(clock.now())
    (pid,) = grid.in_queue("ANALY_A")
    step(robot, clock, 60)
    grid.before_kill = lambda: grid.finish(pid)  # it ends between the poll and the kill
    summary = step(robot, clock, 3600)
    assert grid.killed == [] and summary.timed_out == 0
    job = jobs(robot, panda_id=pid)[0]
    assert (job.phase, job.outcome, job.job_status, job.error_class) == ("done", "completed", "finished", None)
    with robot.sessions() as session:
        assert session.scalars(select(Event.kind).where(Event.kind == "kill_refused")).all() == ["kill_refused"]


def test_kills_go_in_batches_and_one_that_fails_is_recorded_and_retried(tmp_path, clock, grid):
    robot = make_robot(tmp_path, grid, templates({"name": "AFT", "queues": ["ANALY_A"], "max_queue_time": "1h",
                                                  "max_running_jobs": 5}), poll_batch_size=2)
    robot.run_once(clock.now())
    waiting = grid.in_queue("ANALY_A")
    assert len(waiting) == 5
    step(robot, clock, 60)
    grid.kill_unreachable = True
    summary = step(robot, clock, 3600)
    assert summary.timed_out == 0 and any(e.startswith("kill") for e in summary.backend_errors)
    assert {j.phase for j in jobs(robot) if j.panda_id in waiting} == {"active"}
    with robot.sessions() as session:
        assert any("kill failed" in e.message for e in session.scalars(
            select(Event).where(Event.kind == "backend_unreachable")))
    grid.kill_unreachable = False
    grid.calls["kill"] = 0
    summary = step(robot, clock)
    assert summary.timed_out == 5 and grid.calls["kill"] == 3 and sorted(grid.killed) == sorted(waiting)


def test_no_input_data_means_no_job_and_one_event(tmp_path, clock):
    grid = ScriptedGrid(clock, QUEUES, datasets={"SITE-A_DATADISK": ["mc23.test.DAOD_PHYS"]})
    robot = make_robot(tmp_path, grid, templates({"name": "AFT"}))
    robot.run_once(clock.now())
    step(robot, clock)
    assert sorted(r.queue for r in grid.requests.values()) == ["ANALY_A"]
    with robot.sessions() as session:
        events = session.scalars(select(Event).where(Event.kind == "no_input_data")).all()
    assert sorted(e.subject for e in events) == ["ANALY_B", "ANALY_C"]  # warned once each, not every step


def test_offline_queue_gets_no_jobs_and_status_changes_are_recorded(tmp_path, clock, grid):
    robot = make_robot(tmp_path, grid, templates({"name": "AFT"}))
    grid.statuses["ANALY_B"] = QueueStatus.OFFLINE
    robot.run_once(clock.now())
    assert "ANALY_B" not in {r.queue for r in grid.requests.values()}
    grid.statuses["ANALY_B"] = QueueStatus.BROKEROFF
    step(robot, clock)
    assert "ANALY_B" in {r.queue for r in grid.requests.values()}  # brokeroff still takes test jobs
    with robot.sessions() as session:
        moves = [(t.queue.name, t.old, t.new, t.actor) for t in session.scalars(select(QueueTransition).order_by(QueueTransition.id))]
    assert moves == [("ANALY_B", "online", "offline", "backend"), ("ANALY_B", "offline", "brokeroff", "backend")]


def test_functional_test_is_renewed_after_its_lifetime(tmp_path, clock, grid):
    robot = make_robot(tmp_path, grid, templates({"name": "AFT", "lifetime": "1h"}))
    robot.run_once(clock.now())
    step(robot, clock, 3601)
    with robot.sessions() as session:
        states = session.execute(select(models.Test.id, models.Test.state).order_by(models.Test.id)).all()
    assert [s for _, s in states] == ["completed", "running"]
    assert len(grid.requests) == 6  # the new test started its own jobs
    old_test_job = min(grid.requests)
    grid.finish(old_test_job)
    assert step(robot, clock).submitted == 0  # the old test's job is stored, not replaced
    assert jobs(robot, panda_id=old_test_job)[0].outcome == "completed"


def test_queue_removed_from_topology_is_retired_and_new_queue_joins(tmp_path, clock, grid):
    robot = make_robot(tmp_path, grid, templates({"name": "AFT"}))
    robot.run_once(clock.now())
    del grid.queues["ANALY_C"]
    grid.queues["ANALY_D"] = ("SITE-D", "FR")
    for pid in list(grid.jobs):
        grid.finish(pid)
    step(robot, clock, 3601)  # the topology is refreshed hourly
    with robot.sessions() as session:
        retired = session.scalars(select(Queue.name).where(Queue.retired_at.is_not(None))).all()
        pairs = session.scalar(select(func.count()).select_from(models.TestQueue))
    assert retired == ["ANALY_C"] and pairs == 4
    assert sorted(r.queue for r in grid.requests.values()).count("ANALY_C") == 1
    assert "ANALY_D" in {r.queue for r in grid.requests.values()}


def test_run_once_uses_only_the_given_time(tmp_path, clock, grid):
    robot = make_robot(tmp_path, grid, templates({"name": "AFT", "queues": ["ANALY_A"]}))
    robot.run_once(T0)
    job = jobs(robot)[0]
    assert job.recorded_at == T0 and job.submitted_at == T0
    later = T0 + timedelta(days=3)
    (pid,) = grid.in_queue("ANALY_A")
    grid.finish(pid)
    robot.run_once(later)
    assert jobs(robot, panda_id=pid)[0].status_changed_at == later


def test_unreachable_topology_keeps_the_stored_one_and_retries(tmp_path, clock, grid):
    robot = make_robot(tmp_path, grid, templates({"name": "AFT"}))
    robot.run_once(clock.now())

    def refuse():
        raise BackendUnavailable("CRIC: 503 Service Unavailable")

    grid.topology, original = refuse, grid.topology
    for pid in list(grid.jobs):
        grid.finish(pid)
    summary = step(robot, clock, 3601)
    assert summary.submitted == 3  # tests go on with the stored queues
    with robot.sessions() as session:
        assert session.scalars(select(Event.kind)).all() == ["topology_unreachable"]
        assert session.scalar(select(func.count()).select_from(Queue).where(Queue.retired_at.is_not(None))) == 0
    grid.topology = original
    del grid.queues["ANALY_C"]
    step(robot, clock)  # retried at the very next step, not an hour later
    with robot.sessions() as session:
        assert session.scalars(select(Queue.name).where(Queue.retired_at.is_not(None))).all() == ["ANALY_C"]


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)  # SQLite lets one robot process run
def test_a_second_robot_leaves_the_first_ones_unconfirmed_jobs_alone_until_it_is_dead(tmp_path, clock, grid):
    """Finding 8: a second robot on the same database marked the first one's in-flight rows lost."""
    first = make_robot(tmp_path, grid, templates({"name": "AFT"}))
    first.workers = Workers(first.sessions, first.config.loop.interval, ("host-a", 1))
    second = Robot(first.config, first.sessions, grid, grid, grid, first.error_table)
    second.workers = Workers(first.sessions, first.config.loop.interval, ("host-b", 2))
    grid.crash_on_submit = True  # the first records its jobs and is still sending them
    with pytest.raises(Crash):
        first.run_once(clock.now())
    grid.crash_on_submit = False
    recorded = len(jobs(first, phase="recorded"))
    assert recorded == len(grid.queues) > 1  # one per queue
    for _ in range(2):  # the first is alive (it beats), whatever queues the second owns
        clock.advance(timedelta(seconds=30))
        first.workers.step(clock.now())
        summary = second.run_once(clock.now())
        assert summary.lost == 0 and summary.submitted == 0
        assert len(jobs(first, phase="recorded")) == recorded
    # the first one dies: after two intervals without a beat its rows are settled, its queues served
    clock.advance(2 * first.config.loop.interval + timedelta(seconds=1))
    summary = second.run_once(clock.now())
    assert summary.lost == recorded and summary.submitted == recorded
    assert not jobs(first, phase="recorded") and len(jobs(first, phase="active")) == recorded


class WatchedCatalogue(ScriptedGrid):
    """The grid whose catalogue notes, at each read, what the robot holds in its database meanwhile."""

    def __init__(self, clock, queues):
        super().__init__(clock, queues)
        self.open_transactions = 0
        self.seen: list[tuple[int, int]] = []  # (transactions open, advisory locks held) at each read
        self.locks = None  # PostgreSQL: a connection of its own that reads pg_locks

    def watch(self, engine) -> None:
        from sqlalchemy import event

        event.listen(engine, "begin", lambda conn: setattr(self, "open_transactions", self.open_transactions + 1))
        for end in ("commit", "rollback"):
            event.listen(engine, end, lambda conn: setattr(self, "open_transactions", self.open_transactions - 1))
        if engine.dialect.name == "postgresql":  # an engine of its own: its transactions are not the robot's
            self.locks = make_engine(engine.url.render_as_string(hide_password=False)).connect().execution_options(
                isolation_level="AUTOCOMMIT")

    def complete_datasets(self, endpoint, pattern):
        from sqlalchemy import text

        held = 0 if self.locks is None else self.locks.scalar(text(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 1 AND granted"))
        self.seen.append((self.open_transactions, held))
        return super().complete_datasets(endpoint, pattern)


def test_the_catalogue_is_read_with_no_transaction_open_and_no_lock_held(tmp_path, clock):
    """A slow Rucio must not hold the submission lock (every worker waits on it) nor a transaction."""
    grid = WatchedCatalogue(clock, QUEUES)
    robot = make_robot(tmp_path, grid, templates({"name": "AFT"}))
    grid.watch(robot.sessions.kw["bind"])
    assert robot.run_once(clock.now()).submitted == 3
    grid.finish(grid.in_queue("ANALY_A")[0])
    assert step(robot, clock).submitted == 1
    assert len(grid.seen) >= 2 and set(grid.seen) == {(0, 0)}, grid.seen
    if grid.locks is not None:
        grid.locks.close()
        grid.locks.engine.dispose()


def test_a_pair_resting_after_its_job_gets_the_next_once_the_gap_has_passed(tmp_path, clock, grid):
    """The policy's pause between a pair's jobs (the queue's job_gap_seconds, robot.planning.resting): nothing
    while its latest job ended less than the gap ago, the next job once it ended the gap ago or more, each queue
    at its own gap; probes asked (extra_jobs) do not wait."""
    robot = make_robot(tmp_path, grid, templates({"name": "AFT", "queues": ["ANALY_A", "ANALY_B", "ANALY_C"]}))
    robot.run_once(clock.now())
    with robot.sessions() as session:
        for name, gap in (("ANALY_A", 600), ("ANALY_B", 900), ("ANALY_C", 900)):
            session.execute(update(Queue).where(Queue.name == name).values(job_gap_seconds=gap))
        session.commit()
    for pid in list(grid.jobs):
        grid.finish(pid)
    assert step(robot, clock).submitted == 0  # polled: all three ended 60 s ago
    assert step(robot, clock, 540 - 1e-6).submitted == 0  # A's gap is 1 us away
    assert step(robot, clock, 1e-6).submitted == 1 and len(grid.in_queue("ANALY_A")) == 1  # A's job ended 600 s ago
    with robot.sessions() as session:
        session.execute(update(Queue).where(Queue.name == "ANALY_C").values(extra_jobs=1))
        session.commit()
    assert step(robot, clock).submitted == 2 and len(grid.in_queue("ANALY_C")) == 2  # probes: one job and one more
    assert step(robot, clock, 240).submitted == 1 and len(grid.in_queue("ANALY_B")) == 1  # B's 900 s


def test_the_steps_selects_run_by_the_driver_give_what_sqlalchemy_gives(tmp_path, clock, grid):
    """The loop reads its selects through the SQLite driver (robot.loop._rows): the same rows, of the same types."""
    from robot.loop import (LIVE_QUEUES, QUEUE_GAPS, QUEUES_ENDPOINTS, QUEUES_ENDPOINTS_JSON, TESTS_TEMPLATES,
                            TESTS_TEMPLATES_JSON, _jobs_select, _rows, _slots_select)
    from robot.storage.job_updates import record_jobs
    robot = make_robot(tmp_path, grid, templates({"name": "AFT"}, {"name": "AFT_2", "queues": ["ANALY_A"]}))
    robot.run_once(clock.now())
    with robot.sessions() as session:
        session.execute(update(Queue).where(Queue.name == "ANALY_A").values(job_gap_seconds=600))
        session.commit()
    grid.finish(grid.in_queue("ANALY_A")[0])
    step(robot, clock)  # A's first job ended: its pair rests
    with robot.sessions() as session:
        test_id, queue_id = session.execute(select(Job.test_id, Job.queue_id).join(Queue, Queue.id == Job.queue_id)
                                            .where(Queue.name == "ANALY_B")).first()
        record_jobs(session, [{"test_id": test_id, "queue_id": queue_id, "job_name": "hc.unconfirmed", "worker_id": 0,
                               "phase": "recorded", "dataset": "d", "n_files": 1, "recorded_at": clock.now(),
                               "retry_of": None}])
        later = clock.now() + timedelta(hours=1)
        selects = [(LIVE_QUEUES, {}), (QUEUE_GAPS, {}), (_jobs_select("active", False), {}),
                   (_jobs_select("unconfirmed", False), {}),
                   (_jobs_select("waiting", False), {"submitted_before": later}),
                   (_slots_select(False, False, (600,)), {"now": later, "rests_600": later - timedelta(seconds=600)})]
        for select_, params in selects:
            expected = [tuple(row) for row in session.execute(select_.statement, params)]
            found = _rows(session, select_, params)
            assert found and found == expected and [tuple(map(type, row)) for row in found] == [
                tuple(map(type, row)) for row in expected], select_.statement
        if session.get_bind().dialect.name != "sqlite":  # elsewhere the submission binds its lists as they are
            return
        # the submission's on SQLite, the ids bound as one JSON list: the rows of the same select with the list bound
        queues, tests = sorted(session.scalars(select(Queue.id))), sorted(set(session.scalars(select(Job.test_id))))
        for by_driver, by_list, name, ids in ((QUEUES_ENDPOINTS_JSON, QUEUES_ENDPOINTS, "queues", queues),
                                              (TESTS_TEMPLATES_JSON, TESTS_TEMPLATES, "tests", tests)):
            expected = [tuple(row) for row in session.execute(by_list, {name: ids})]
            assert len(expected) == len(ids) > 1 and _rows(session, by_driver, {name: json.dumps(ids)}) == expected
            assert _rows(session, by_driver, {name: json.dumps(ids[1:])}) == expected[1:]


def test_a_phase_of_the_step_is_committed_when_it_wrote_anything(database_url):
    """`Robot._commit` commits a phase that added an object (not flushed yet) or wrote a row, and on SQLite not one
    that only read (the driver opened no transaction: nothing to commit); on PostgreSQL always. Settings stored
    (the heartbeat's: updated where they exist, inserted where not) are all there after the commit."""
    from robot.loop import _written
    from robot.storage import settings
    from robot.storage.database import make_sessionmaker, upgrade
    from robot.storage.models import Setting

    engine = make_engine(database_url)
    upgrade(engine)
    sessions = make_sessionmaker(engine)
    only_read_is_written = engine.dialect.name != "sqlite"
    with sessions() as session:
        assert not _written(session)  # nothing run
        session.add(Event(time=T0, kind="test", subject="", message="added, not flushed", details={}))
        assert _written(session)
        session.commit()
        session.execute(select(Event.id)).all()
        assert _written(session) is only_read_is_written
        for values in ({"a": "1"}, {"a": "2", "b": "3"}, {"a": "4", "b": "5"}):  # new; one of two new; none new
            settings.store(session, values, "robot", T0)
            assert _written(session)
            session.commit()
            assert dict(session.execute(select(Setting.name, Setting.value)).all()) == values
            session.execute(select(Event.id)).all()
            assert _written(session) is only_read_is_written
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Event)) == 1
    engine.dispose()
