"""`healthrobot stress` as the person at the keyboard: identity from the OS user, clear refusals, `watch` off a terminal."""
from __future__ import annotations

from datetime import timedelta

import pytest
import yaml
from click.testing import CliRunner
from sqlalchemy import update

from robot.cli import main
from robot.clock import ManualClock
from robot.loop import INTERVAL_SETTING
from robot.storage.models import Queue, Setting, Test as StoredTest
from tests.fakes import T0, ScriptedGrid, make_robot, templates

TEMPLATES = templates({"name": "AFT"}, {"name": "STRESS", "category": "stress"})


@pytest.fixture
def world(tmp_path, monkeypatch):
    """A robot database that knows two queues and a stress template; the OS user is `kim`."""
    monkeypatch.setenv("LOGNAME", "kim")
    clock = ManualClock(T0)
    grid = ScriptedGrid(clock, {"ANALY_A": ("SITE-A", "DE"), "ANALY_B": ("SITE-B", "US")})
    robot = make_robot(tmp_path, grid, TEMPLATES)
    robot.run_once(clock.now())  # the last step is at T0, long before the wall clock

    def config(**stress):
        path = tmp_path / "robot.yaml"
        path.write_text(yaml.safe_dump({"data_dir": str(tmp_path), "templates": TEMPLATES, "stress": stress}))
        return path

    config.robot = robot
    return config


def run(config, *args, **kwargs):
    return CliRunner().invoke(main, ["--config", str(config), "stress", *args], **kwargs)


# test 1 is the functional test of AFT: the first stress test is 2
REQUEST = ("request", "--queue", "ANALY_A", "--template", "STRESS", "--jobs", "10", "--concurrency", "2")


def test_the_local_user_is_an_operator_on_the_embedded_grid_when_configured(world):
    result = run(world(local_user_is_operator=True), *REQUEST)
    assert result.exit_code == 0, result.output
    assert "stress test 2: scheduled (approved by kim (operator)); runs from 2026-" in result.output


def test_without_it_the_request_waits_and_says_how_to_approve(world):
    config = world()
    result = run(config, *REQUEST)
    assert result.exit_code == 0, result.output
    assert "waiting for an operator's approval: `" in result.output and "stress approve 2`" in result.output
    refused = run(config, "approve", "2")
    assert refused.exit_code == 1 and "kim is not an operator (stress.operators)" in refused.output
    assert run(world(operators=["kim"]), "approve", "2").output.startswith("stress test 2: scheduled, approved by kim")


@pytest.mark.parametrize("command", [REQUEST, ("approve", "1"), ("cancel", "1")])
def test_nobody_can_type_another_name(world, command):
    result = run(world(local_user_is_operator=True), *command, "--by", "olga")
    assert result.exit_code == 2 and "No such option '--by'" in result.output


def test_a_refusal_for_an_excluded_queue_names_the_option_that_allows_it(world):
    with world.robot.sessions() as session:
        session.execute(update(Queue).where(Queue.name == "ANALY_A").values(robot_state="excluded"))
        session.commit()
    config = world(local_user_is_operator=True)
    refused = run(config, *REQUEST)
    assert refused.exit_code == 1 and "ANALY_A is excluded" in refused.output and "--allow-excluded" in refused.output
    assert run(config, *REQUEST, "--allow-excluded").exit_code == 0


def test_a_duration_over_the_cap_is_written_as_a_person_would(world):
    refused = run(world(local_user_is_operator=True, max_duration="1d"), *REQUEST, "--duration", "2d")
    assert "at most 1d (got 2d)" in refused.output and "day," not in refused.output


def test_watch_an_unknown_test_says_so_before_drawing_anything(world):
    result = run(world(), "watch", "999")
    assert result.exit_code == 1 and result.output.strip() == "Error: no stress test 999"


def test_watch_off_a_terminal_prints_lines_and_says_no_robot_is_stepping(world, monkeypatch):
    config = world(local_user_is_operator=True)
    assert run(config, *REQUEST).exit_code == 0

    def someone_cancels(_seconds):  # while watch waits, the test is cancelled from elsewhere
        with world.robot.sessions() as session:
            session.execute(update(StoredTest).where(StoredTest.id == 2).values(state="cancelled", outcome="cancelled by kim"))
            session.commit()

    monkeypatch.setattr("robot.cli.stress_cmd.time.sleep", someone_cancels)
    result = run(config, "watch", "2")
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert lines[0].startswith("stress test 2 scheduled, 0 in flight, 0/10 jobs ended; no robot step for ")
    assert "or the demo running?" in lines[0]
    assert lines[1] == "stress test 2 cancelled, 0 in flight, 0/10 jobs ended"
    assert lines[2] == "stress test 2: cancelled (cancelled by kim)"


def _watch_once(world, monkeypatch, now):
    """`stress watch 2` off a terminal at the wall-clock time `now`, the test cancelled at its first wait."""
    config = world(local_user_is_operator=True)
    assert run(config, *REQUEST).exit_code == 0

    def someone_cancels(_seconds):
        with world.robot.sessions() as session:
            session.execute(update(StoredTest).where(StoredTest.id == 2).values(state="cancelled"))
            session.commit()

    monkeypatch.setattr("robot.cli.stress_cmd.time.sleep", someone_cancels)
    monkeypatch.setattr("robot.clock.SystemClock.now", lambda self: now)
    result = run(config, "watch", "2")
    assert result.exit_code == 0, result.output
    return result.output.splitlines()[0]


@pytest.mark.parametrize("interval, stale", [(2, True), (60, False)])
def test_watch_judges_staleness_by_the_interval_of_the_robot_that_steps(world, monkeypatch, interval, stale):
    """The demo steps every 2 s while the configuration says 60 s: 20 s without a step is late for it only."""
    with world.robot.sessions() as session:
        session.execute(update(Setting).where(Setting.name == INTERVAL_SETTING).values(value=str(interval)))
        session.commit()
    first = _watch_once(world, monkeypatch, T0 + timedelta(seconds=20))  # the last step was at T0
    if stale:
        assert first.startswith("stress test 2 scheduled, 0 in flight, 0/10 jobs ended; no robot step for 20s (is `")
    else:
        assert first == "stress test 2 scheduled, 0 in flight, 0/10 jobs ended", first


def test_watch_says_at_once_that_no_robot_runs_when_the_last_one_stopped(world, monkeypatch):
    world.robot.workers.stop(T0 + timedelta(seconds=1))  # as the demo and `healthrobot run` do when they end
    first = _watch_once(world, monkeypatch, T0 + timedelta(seconds=5))
    assert first.startswith("stress test 2 scheduled, 0 in flight, 0/10 jobs ended; no robot running: the last one "
                            "stopped 4s ago (start one: `") and first.endswith(" run`)"), first


def test_the_report_of_a_test_without_an_outcome_says_its_state_once(world):
    config = world(local_user_is_operator=True)
    assert run(config, *REQUEST).exit_code == 0
    report = run(config, "report", "2")
    assert report.exit_code == 0, report.output
    first = report.output.splitlines()[0]
    assert first == "stress test 2 STRESS on ANALY_A: scheduled", first
