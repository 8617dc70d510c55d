"""Stress tests: requests and approval, execution in the loop, safety stop, cancel, report."""
from __future__ import annotations

import json
import time
from datetime import timedelta

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from robot.cli import main
from robot.clock import SystemClock
from robot.config import RobotConfig, load_config
from robot.services import build
from robot.storage import models
from robot.storage.database import upgrade
from robot.stress import QueueFacts, StressRequest, StressRequestError, StressSupervisor, check, request_stress_test
from robot.stress import approve, cancel
from robot.stress_report import build_report
from tests.fakes import T0, ScriptedGrid, make_robot, templates

QUEUES = {"ANALY_A": ("SITE-A", "DE"), "ANALY_B": ("SITE-B", "US"), "ANALY_X": ("SITE-X", "FR")}
STRESS = {"name": "STRESS", "category": "stress", "payload": "zmumu", "input_dataset": "mc23.*",
          "events_per_job": 10000}
CONFIG = {"stress": {"max_jobs": 100, "max_concurrency": 10, "max_duration": "6h", "operators": ["olga"],
                     "site_admins": {"SITE-A": ["anna"]}, "safety": {"min_jobs": 20}}}



@pytest.fixture
def grid(clock):
    return ScriptedGrid(clock, QUEUES)


@pytest.fixture
def robot(tmp_path, grid, clock):
    robot = make_robot(tmp_path, grid, templates({"name": "AFT", "queues": ["ANALY_X"]}, STRESS), **{})
    robot.config = RobotConfig.model_validate({**robot.config.model_dump(exclude={"base_dir"}), **CONFIG})
    robot.evaluators.append(StressSupervisor(robot.config, grid, report=build_report))
    robot.run_once(clock.now())
    return robot


def ask(robot, clock, **kw):
    request = StressRequest(**{"queues": ("ANALY_A",), "template": "STRESS", "jobs": 20, "concurrency": 5,
                               "requested_by": "anna", **kw})
    with robot.sessions() as session:
        test = request_stress_test(session, request, robot.config, clock.now())
        session.commit()
        return test.id


def test_check_names_every_problem_with_its_field():
    config = RobotConfig.model_validate({"templates": [STRESS, {**STRESS, "name": "AFT", "category": "functional"}],
                                         **CONFIG})
    facts = {"ANALY_A": QueueFacts("SITE-A", False), "ANALY_OFF": QueueFacts("SITE-O", True)}
    request = StressRequest(queues=("ANALY_A", "ANALY_NOPE", "ANALY_OFF"), template="AFT", jobs=500, concurrency=0,
                            requested_by="anna", duration=timedelta(days=2), start=T0 - timedelta(hours=1))
    problems = check(request, config, facts, T0)
    assert any(p.startswith("queue: unknown queue 'ANALY_NOPE'") for p in problems)
    assert any(p.startswith("queue: ANALY_OFF is excluded") for p in problems)
    assert any(p.startswith("template: AFT is a functional template") for p in problems)
    assert any(p.startswith("jobs: must be between 1 and 100") for p in problems)
    assert any(p.startswith("concurrency: must be between 1 and 10") for p in problems)
    assert any(p.startswith("duration: ") for p in problems) and any(p.startswith("start: ") for p in problems)
    ok = StressRequest(queues=("ANALY_OFF",), template="STRESS", jobs=5, concurrency=2, requested_by="x",
                       allow_excluded=True)
    assert check(ok, config, facts, T0) == []


def test_approval_by_role(robot, clock):
    assert ask(robot, clock) and True
    with robot.sessions() as session:
        tests = {t.requested_by: t for t in session.scalars(select(models.Test).where(models.Test.category == "stress"))}
    assert tests["anna"].state == "scheduled" and tests["anna"].approved_by == "anna (site admin)"
    waiting = ask(robot, clock, requested_by="anna", queues=("ANALY_B",))  # not her site
    with robot.sessions() as session:
        assert session.get(models.Test, waiting).state == "unapproved"
        with pytest.raises(StressRequestError, match="not an operator"):
            approve(session, waiting, "anna", robot.config, clock.now())
        assert approve(session, waiting, "olga", robot.config, clock.now()).state == "scheduled"
        with pytest.raises(StressRequestError, match="unknown queue"):
            request_stress_test(session, StressRequest(("ANALY_Z",), "STRESS", 1, 1, "olga"), robot.config, clock.now())


def step(robot, clock, minutes=5):
    clock.advance(timedelta(minutes=minutes))
    return robot.run_once(clock.now())


def stress_jobs(robot, test_id):
    with robot.sessions() as session:
        return session.scalars(select(models.Job).where(models.Job.test_id == test_id).order_by(models.Job.id)).all()


def test_runs_c_in_flight_until_n_done_retries_once_and_reports(robot, clock, grid):
    test_id = ask(robot, clock, jobs=12, concurrency=4)
    step(robot, clock)
    assert len(grid.in_queue("ANALY_A")) == 4
    failed_once = None
    for round_ in range(10):
        for i, pid in enumerate(grid.in_queue("ANALY_A")):
            grid.start(pid)
            if round_ == 0 and i == 0:
                failed_once = pid
                grid.finish(pid, pilot_error_code=1099, pilot_error_diag="Get error: copy failed")
            else:
                grid.finish(pid, events=10_000, wall=50.0)
        step(robot, clock)
        assert len(grid.in_queue("ANALY_A")) <= 4
    jobs = stress_jobs(robot, test_id)
    first = [j for j in jobs if j.retry_of is None]
    retries = [j for j in jobs if j.retry_of is not None]
    assert len(first) == 12 and len(retries) == 1
    assert retries[0].retry_of == next(j.id for j in jobs if j.panda_id == failed_once)
    with robot.sessions() as session:
        test = session.get(models.Test, test_id)
        assert test.state == "completed" and "all 12 jobs done" in test.outcome
        summary = test.report["summary"]
    assert (summary["completed"], summary["failed"], summary["retries"]) == (12, 1, 1)
    assert summary["events"] == sum(j.n_events for j in jobs if j.outcome == "completed") == 120_000
    assert summary["failure_rate"] == pytest.approx(1 / 13)
    assert summary["error_classes"] == {"site": 1} and "STAGEINFAILED" in summary["top_errors"][0][0]
    assert summary["events_per_second_per_job"]["p50"] == pytest.approx(200.0)
    assert len(test.report["plots"]["per_job_events_per_second"]) == 12
    assert max(test.report["plots"]["running"]) > 0


def test_safety_stop_when_most_recent_jobs_fail(robot, clock, grid):
    test_id = ask(robot, clock, jobs=100, concurrency=10)
    for _ in range(4):
        step(robot, clock)
        for pid in grid.in_queue("ANALY_A"):
            grid.finish(pid, pilot_error_code=1377, pilot_error_diag="CVMFS is not alive")
    step(robot, clock)  # 30 of 30 failed in the last hour: stop
    sent = len(grid.requests)
    step(robot, clock)
    step(robot, clock)
    assert len(grid.requests) == sent  # nothing more sent
    with robot.sessions() as session:
        test = session.get(models.Test, test_id)
        pair = session.scalars(select(models.TestQueue).where(models.TestQueue.test_id == test_id)).one()
        event = session.scalars(select(models.Event).where(models.Event.kind == "stress_safety_stop")).one()
    assert "safety stop" in pair.stop_reason and "more than 70%" in pair.stop_reason
    assert test.state == "completed" and "safety stop" in test.outcome and event.subject == "ANALY_A"


def test_cancel_kills_jobs_in_flight(robot, clock, grid):
    test_id = ask(robot, clock, jobs=50, concurrency=6)
    step(robot, clock)
    in_flight = set(grid.in_queue("ANALY_A"))
    assert len(in_flight) == 6
    with robot.sessions() as session:
        cancel(session, test_id, "anna", clock.now())
        session.commit()
    step(robot, clock)
    assert in_flight <= set(grid.killed)
    step(robot, clock)
    with robot.sessions() as session:
        test = session.get(models.Test, test_id)
    assert test.state == "cancelled" and "cancelled by anna" in test.outcome and test.report["summary"]["cancelled"] == 6
    assert len(grid.requests) - 1 == 6  # and nothing more was sent (1 is the functional job)


def test_excluded_queue_is_not_stressed_unless_allowed(robot, clock, grid):
    with robot.sessions() as session:
        session.execute(models.Queue.__table__.update().where(models.Queue.name == "ANALY_B").values(robot_state="excluded"))
        session.commit()
    with pytest.raises(StressRequestError, match="excluded"):
        ask(robot, clock, queues=("ANALY_B",), requested_by="olga")
    ask(robot, clock, queues=("ANALY_B",), requested_by="olga", allow_excluded=True)
    step(robot, clock)
    assert len(grid.in_queue("ANALY_B")) == 5


def test_a_stress_test_survives_a_robot_restart(robot, clock, grid):
    test_id = ask(robot, clock, jobs=8, concurrency=4)
    step(robot, clock)
    from robot.loop import Robot
    restarted = Robot(robot.config, robot.sessions, grid, grid, grid, robot.error_table,
                      evaluators=[StressSupervisor(robot.config, grid, report=build_report)])
    for _ in range(4):
        for pid in grid.in_queue("ANALY_A"):
            grid.finish(pid)
        clock.advance(timedelta(minutes=5))
        restarted.run_once(clock.now())
    assert len([j for j in stress_jobs(robot, test_id) if j.outcome == "completed"]) == 8
    with robot.sessions() as session:
        assert session.get(models.Test, test_id).state == "completed"


@pytest.mark.slow
def test_stress_test_end_to_end_on_the_embedded_grid(tiny_grid, monkeypatch):
    monkeypatch.setenv("LOGNAME", "olga")  # the OS user at the keyboard asks: an operator
    files = tiny_grid.write_files({"ANALY_TINY": {"slots": 4}}, max_parallel_jobs=4,
                                  templates=[{**STRESS, "input_dataset": "mc23_*", "events_per_job": 2000}],
                                  robot={"stress": {"operators": ["olga"]}})
    config = load_config(files.robot_yaml)
    clock = SystemClock()
    services = build(config, clock)
    upgrade(services.engine)
    services.grid.storage.prepare()
    services.grid.start(period=0.2)
    try:
        services.robot.run_once(clock.now())
        runner = CliRunner()
        result = runner.invoke(main, ["--config", str(files.robot_yaml), "stress", "request", "--queue", "ANALY_TINY",
                                      "--template", "STRESS", "--jobs", "6", "--concurrency", "3", "--json"])
        assert result.exit_code == 0, result.output
        test_id = json.loads(result.output)["id"]
        deadline = time.monotonic() + 90
        state = None
        while time.monotonic() < deadline and state != "completed":
            services.robot.run_once(clock.now())
            with services.sessions() as session:
                state = session.get(models.Test, test_id).state
            time.sleep(0.5)
        assert state == "completed"
        report = json.loads(runner.invoke(main, ["--config", str(files.robot_yaml), "stress", "report",
                                                 str(test_id), "--json"]).output)
        with services.sessions() as session:
            jobs = session.scalars(select(models.Job).where(models.Job.test_id == test_id)).all()
        done = [j for j in jobs if j.outcome == "completed"]
        assert report["summary"]["completed"] == len(done) and len([j for j in jobs if j.retry_of is None]) == 6
        assert report["summary"]["events"] == sum(j.n_events for j in done) > 0
        assert report["summary"]["times"]["payload"]["n"] == len([j for j in jobs if j.time_payload is not None])
        assert report["summary"]["events_per_second"] > 0
        table = runner.invoke(main, ["--config", str(files.robot_yaml), "stress", "report", str(test_id)]).output
        assert "functional baseline" in table and "events/s overall" in table
        watched = runner.invoke(main, ["--config", str(files.robot_yaml), "stress", "watch", str(test_id)])
        assert watched.exit_code == 0 and f"stress test {test_id}: completed" in watched.output
    finally:
        services.close()


def test_a_stress_test_goes_to_a_site_in_announced_downtime(robot, clock, grid):
    """The robot's functional tests stop there, but a site admin may load-test the site before ending it."""
    from robot.downtimes import Downtime, store

    with robot.sessions() as session:
        store(session, "gocdb", [Downtime("1", "SITE-A", T0, T0 + timedelta(hours=4), "storage upgrade")], clock.now())
        session.commit()
    ask(robot, clock)
    step(robot, clock)
    assert len(grid.in_queue("ANALY_A")) == 5
