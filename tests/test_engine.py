"""The exclusion engine inside the loop: transitions, dry-run and enforce, read-back, people, switches."""
from __future__ import annotations

import json
from pathlib import Path
from datetime import timedelta

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from blacklist.engine import ExclusionEngine, QueueFacts
from blacklist.model import Action, Decision
from blacklist.policies import Policy
from blacklist.safety import hands_off
from blacklist.settings import BlacklistSettings
from robot.backends.base import BackendUnavailable
from robot.cli import main
from robot.clock import ManualClock
from robot.jobstates import JobStatus, QueueStatus
from robot.loop import Robot
from robot.storage.models import Event, Override, Queue, QueueTransition, Setting
from tests.fakes import T0, ScriptedGrid, make_robot, templates

# Every robot these tests build runs on SQLite and on PostgreSQL (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("database_url")

QUEUES = {f"ANALY_{c}{i}": (f"SITE-{c}{i}", c) for c in "ABCD" for i in range(1, 4)}  # 12 queues, 4 clouds



@pytest.fixture
def grid(clock):
    return ScriptedGrid(clock, QUEUES)


def robot_with_engine(tmp_path, grid, mode="enforce", **blacklist) -> Robot:
    """A robot whose scripted grid starts no job by itself: stall detection is off unless asked for."""
    robot = make_robot(tmp_path, grid, templates({"name": "AFT_A"}, {"name": "AFT_B"}))
    blacklist.setdefault("default", {"stall_after": "30d"})
    settings = BlacklistSettings.model_validate({"mode": mode, **blacklist})
    robot.evaluators.append(ExclusionEngine(Policy(settings, ("AFT_A", "AFT_B")), grid))
    return robot


def fail_all(grid, queue, code=1099):
    for pid in grid.in_queue(queue):
        grid.finish(pid, pilot_error_code=code, pilot_error_diag="Get error: copy failed")


def step(robot, clock, minutes=10):
    clock.advance(timedelta(minutes=minutes))
    return robot.run_once(clock.now())


def transitions(robot, kind="status"):
    with robot.sessions() as session:
        return [(t.queue.name, t.old, t.new, t.actor, t.applied, t.read_back) for t in
                session.scalars(select(QueueTransition).where(QueueTransition.kind == kind).order_by(QueueTransition.id))]


def break_queue(robot, grid, clock, queue, rounds=4):
    for _ in range(rounds):
        fail_all(grid, queue)
        step(robot, clock)


def test_broken_queue_is_excluded_with_reason_and_evidence_then_reincluded(tmp_path, clock, grid):
    robot = robot_with_engine(tmp_path, grid)
    robot.run_once(clock.now())
    break_queue(robot, grid, clock, "ANALY_A1")
    assert grid.statuses["ANALY_A1"] is QueueStatus.BROKEROFF
    assert transitions(robot) == [("ANALY_A1", "online", "brokeroff", "healthrobot", True, "brokeroff")]
    with robot.sessions() as session:
        exclusion = session.scalars(select(QueueTransition).where(QueueTransition.kind == "status")).one()
        queue = session.scalars(select(Queue).where(Queue.name == "ANALY_A1")).one()
    assert "STAGEINFAILED" in exclusion.reason and exclusion.policy == "default"
    assert {j["error"] for j in exclusion.evidence["jobs"]} == {"STAGEINFAILED"} and len(exclusion.evidence["jobs"]) >= 2
    assert (queue.status, queue.robot_state) == ("brokeroff", "excluded")
    # the codes behind the exclusion are what its re-inclusion watches for, read from the stored evidence
    engine = robot.evaluators[-1]
    with robot.sessions() as session:
        fresh = QueueFacts(engine.policy)
        for facts in (engine.facts, fresh):
            facts.moves.read(session, clock.now())
            views = facts.load(session, clock.now()).views
            assert views["ANALY_A1"].excluded_for == frozenset({1099})
            assert views["ANALY_A2"].excluded_for == frozenset()
    # the site recovers: test jobs complete and the queue comes back online
    for _ in range(8):
        for pid in grid.in_queue("ANALY_A1"):
            grid.finish(pid)
        step(robot, clock)
    assert grid.statuses["ANALY_A1"] is QueueStatus.ONLINE
    assert transitions(robot)[-1][:3] == ("ANALY_A1", "brokeroff", "online")
    assert all(q == "ANALY_A1" for q, *_ in transitions(robot))  # nobody else touched


def test_probes_go_out_when_a_queue_is_in_doubt(tmp_path, clock, grid):
    robot = robot_with_engine(tmp_path, grid)
    robot.run_once(clock.now())
    grid.finish(grid.in_queue("ANALY_B2")[0], pilot_error_code=1377)
    step(robot, clock)
    probes = BlacklistSettings().default.probes
    assert len(grid.in_queue("ANALY_B2")) == 2 + 2 * probes  # one per template, plus the probes of each
    with robot.sessions() as session:
        assert session.scalars(select(Queue.robot_state).where(Queue.name == "ANALY_B2")).one() == "pending"


def test_dry_run_records_but_changes_nothing(tmp_path, clock, grid):
    robot = robot_with_engine(tmp_path, grid, mode="dry-run")
    robot.run_once(clock.now())
    break_queue(robot, grid, clock, "ANALY_C3")
    assert "ANALY_C3" not in grid.statuses
    assert transitions(robot) == [("ANALY_C3", "online", "brokeroff", "healthrobot", False, None)]
    step(robot, clock)
    assert len(transitions(robot)) == 1  # decided once, not at every step


def test_read_back_mismatch_is_recorded(tmp_path, clock, grid):
    robot = robot_with_engine(tmp_path, grid)
    robot.run_once(clock.now())
    grid.set_queue_status = lambda queue, status, reason, actor: None  # CRIC accepts but does not change it
    break_queue(robot, grid, clock, "ANALY_D1")
    (first, *_) = transitions(robot)
    assert first[:3] == ("ANALY_D1", "online", "brokeroff") and first[5] == "online"
    with robot.sessions() as session:
        mismatch = session.scalars(select(Event).where(Event.kind == "status_mismatch")).first()
    assert mismatch.subject == "ANALY_D1" and "read back online" in mismatch.message


def test_unreachable_actuator_takes_the_decision_again_later(tmp_path, clock, grid):
    robot = robot_with_engine(tmp_path, grid)
    robot.run_once(clock.now())

    def refuse(*_):
        raise BackendUnavailable("CRIC: timeout")

    grid.set_queue_status, original = refuse, grid.set_queue_status
    break_queue(robot, grid, clock, "ANALY_A2")
    assert transitions(robot) == []
    grid.set_queue_status = original
    step(robot, clock)
    assert transitions(robot)[0][:3] == ("ANALY_A2", "online", "brokeroff")


def test_central_errors_do_not_exclude_and_mass_failures_raise_one_incident(tmp_path, clock, grid):
    robot = robot_with_engine(tmp_path, grid)
    robot.run_once(clock.now())
    for _ in range(4):
        for queue in QUEUES:
            fail_all(grid, queue, code=1324)  # SERVICENOTAVAILABLE: central
        step(robot, clock)
    assert transitions(robot) == []
    for _ in range(4):
        for queue in ("ANALY_A1", "ANALY_A2", "ANALY_A3", "ANALY_B1"):
            fail_all(grid, queue)  # site-class, but a third of the grid at once
        step(robot, clock)
    assert transitions(robot) == []
    with robot.sessions() as session:
        incidents = session.scalars(select(Event).where(Event.kind.in_(["mass_failure", "cloud_failure"]))).all()
        shared = session.scalars(select(Event).where(Event.kind == "shared_failure")).all()
    # no queue completed a job to compare with: the error table decides, and the mass guard holds
    # the site-class exclusions; the policy still names the code every queue shared
    assert incidents and set(incidents[0].details["queues"]) >= {"ANALY_A1", "ANALY_A2", "ANALY_A3"}
    assert shared[0].details["code"] == 1324 and set(shared[0].details["queues"]) == set(QUEUES)


def test_a_code_failing_at_many_sites_at_once_excludes_none_of_them(tmp_path, clock, grid):
    # a site-class code (1099) at four sites at once while the others complete their jobs: a
    # shared cause (a data management outage), not four site faults; even without the mass guard
    robot = robot_with_engine(tmp_path, grid, safety={"mass_guard": False, "max_excluded_fraction": 1.0})
    robot.run_once(clock.now())
    failing = ("ANALY_A1", "ANALY_B2", "ANALY_C3", "ANALY_D1")
    for _ in range(4):
        for queue in QUEUES:
            for pid in grid.in_queue(queue):
                grid.finish(pid, **({"pilot_error_code": 1099} if queue in failing else {}))
        step(robot, clock)
    assert transitions(robot) == []
    with robot.sessions() as session:
        (shared,) = session.scalars(select(Event).where(Event.kind == "shared_failure")).all()
    assert shared.details["code"] == 1099 and set(shared.details["queues"]) == set(failing)
    # later, one of them alone fails: its site's fault
    for _ in range(4):
        for queue in QUEUES:
            for pid in grid.in_queue(queue):
                grid.finish(pid, **({"pilot_error_code": 1099} if queue == "ANALY_B2" else {}))
        step(robot, clock, minutes=70)
    assert [t[:3] for t in transitions(robot)] == [("ANALY_B2", "online", "brokeroff")]


def test_hammercloud_policy_excludes_on_user_errors_ours_does_not(tmp_path, clock):
    # user-class errors (the payload's traceback) at one queue, or at several sites at once (a
    # broken release): HammerCloud counts every failure, ours opens no case on user errors alone.
    # The mass guard is off here so that what is compared is the policies' own doing.
    wave = ("ANALY_A1", "ANALY_B1", "ANALY_C1", "ANALY_D1")
    for policy, queues, expected in (("hammercloud", ("ANALY_B1",), {"ANALY_B1"}),
                                     ("default", ("ANALY_B1",), set()),
                                     ("hammercloud", wave, set(wave)),
                                     ("default", wave, set())):
        clock = ManualClock(T0)
        grid = ScriptedGrid(clock, QUEUES)
        robot = robot_with_engine(tmp_path / f"{policy}{len(queues)}", grid, policy=policy,
                                  safety={"mass_guard": False, "max_excluded_fraction": 1.0})
        robot.run_once(clock.now())
        for _ in range(4):
            for queue in QUEUES:
                for pid in grid.in_queue(queue):
                    if queue in queues:
                        grid.finish(pid, exe_error_code=1, exe_error_diag="Traceback")
                    else:
                        grid.finish(pid)
            step(robot, clock)
        assert {q for q, *_ in transitions(robot)} == expected, (policy, queues)


def test_a_persons_exclusion_wins_and_ends_on_time(tmp_path, clock, grid):
    robot = robot_with_engine(tmp_path, grid)
    robot.run_once(clock.now())
    with robot.sessions() as session:
        queue_id = session.scalars(select(Queue.id).where(Queue.name == "ANALY_C1")).one()
        session.add(Override(queue_id=queue_id, action="exclude", status="offline", actor="alice",
                             reason="disk server replaced", created_at=clock.now(), until=clock.now() + timedelta(hours=2)))
        session.commit()
    step(robot, clock)
    assert grid.statuses["ANALY_C1"] is QueueStatus.OFFLINE
    assert transitions(robot)[-1] == ("ANALY_C1", "online", "offline", "person:alice", True, "offline")
    for _ in range(6):  # healthy jobs: the robot would include it, but the person's word wins
        for pid in grid.in_queue("ANALY_C1"):
            grid.finish(pid)
        step(robot, clock)
    assert grid.statuses["ANALY_C1"] is QueueStatus.OFFLINE
    step(robot, clock, 120)
    assert grid.statuses["ANALY_C1"] is QueueStatus.ONLINE
    assert transitions(robot)[-1][:4] == ("ANALY_C1", "offline", "online", "person:alice")


def test_the_robot_only_lifts_its_own_exclusions(tmp_path, clock, grid):
    robot = robot_with_engine(tmp_path, grid)
    robot.run_once(clock.now())
    grid.statuses["ANALY_D2"] = QueueStatus.TEST  # set by someone else at CRIC
    for _ in range(6):
        for pid in grid.in_queue("ANALY_D2"):
            grid.finish(pid)
        step(robot, clock)
    assert grid.statuses["ANALY_D2"] is QueueStatus.TEST
    assert [t for t in transitions(robot) if t[3] == "healthrobot"] == []


def test_a_person_who_changes_a_queue_the_robot_excluded_is_left_alone(tmp_path, clock, grid):
    """Finding 7: after the robot's exclusion a person set the queue `test`; the robot set it online."""
    robot = robot_with_engine(tmp_path, grid)
    robot.run_once(clock.now())
    break_queue(robot, grid, clock, "ANALY_A1")
    assert grid.statuses["ANALY_A1"] is QueueStatus.BROKEROFF
    grid.statuses["ANALY_A1"] = QueueStatus.TEST  # a person, at CRIC
    for _ in range(8):  # the site recovers: the robot would lift its own exclusion
        for pid in grid.in_queue("ANALY_A1"):
            grid.finish(pid)
        step(robot, clock)
    assert grid.statuses["ANALY_A1"] is QueueStatus.TEST
    assert [t[:4] for t in transitions(robot) if t[0] == "ANALY_A1"] == [
        ("ANALY_A1", "online", "brokeroff", "healthrobot"), ("ANALY_A1", "brokeroff", "test", "backend")]
    with robot.sessions() as session:
        override = session.scalars(select(Override)).one()
        queue = session.scalars(select(Queue).where(Queue.name == "ANALY_A1")).one()
    assert (override.action, override.status, override.actor) == ("exclude", "test", "outside the robot")
    assert queue.robot_state == "online"  # the robot no longer holds an exclusion there
    assert transitions(robot, kind="state")[-1][3] == "person:outside the robot"
    # the person puts it back online: their decision ends, the robot looks after the queue again
    grid.statuses["ANALY_A1"] = QueueStatus.ONLINE
    step(robot, clock)
    with robot.sessions() as session:
        assert session.scalars(select(Override)).one().ended_at == clock.now()


def test_mode_switch_off_stops_decisions_without_restart(tmp_path, clock, grid):
    robot = robot_with_engine(tmp_path, grid)
    robot.run_once(clock.now())
    with robot.sessions() as session:
        session.add(Setting(name="blacklist.mode", value="off", actor="ops", changed_at=clock.now()))
        session.commit()
    break_queue(robot, grid, clock, "ANALY_B3")
    assert transitions(robot) == [] and "ANALY_B3" not in grid.statuses


def test_blacklist_cli_overrides_silences_and_mode(tmp_path, clock, grid, monkeypatch):
    """People's decisions are recorded as the OS user's (`alice` here), never a name typed on the command line."""
    monkeypatch.setenv("LOGNAME", "alice")
    robot = robot_with_engine(tmp_path, grid)
    robot.run_once(clock.now())
    config = tmp_path / "robot.yaml"
    config.write_text(f"data_dir: {tmp_path}\ndatabase: {{url: '{robot.config.database_url}'}}\n")
    run = lambda *args: CliRunner().invoke(main, ["--config", str(config), "blacklist", *args])  # noqa: E731
    excluded = run("exclude", "ANALY_A3", "--reason", "downtime", "--for", "2h")
    assert excluded.exit_code == 0 and "manual exclude (brokeroff) by alice until " in excluded.output
    assert run("exclude", "ANALY_NOPE", "--reason", "x").exit_code == 2
    assert run("exclude", "ANALY_A3").exit_code == 2  # a reason is required
    assert run("silence", "SITE-B1", "--for", "4h", "--reason", "scheduled downtime").exit_code == 0
    assert "neither a queue" in run("silence", "NOWHERE", "--for", "1h", "--reason", "r").output
    assert "mode: enforce" not in run("mode", "dry-run").output.replace("dry-run", "")
    step(robot, clock)
    listing = json.loads(run("list", "--json").output)
    assert listing["mode"] == "dry-run"
    assert [(o["queue"], o["by"]) for o in listing["overrides"]] == [("ANALY_A3", "alice")]
    assert [(s["scope"], s["name"], s["by"]) for s in listing["silences"]] == [("site", "SITE-B1", "alice")]
    assert [q["queue"] for q in listing["queues"]] == ["ANALY_A3"]
    assert grid.statuses["ANALY_A3"] is QueueStatus.BROKEROFF
    history = json.loads(run("history", "--since", "1000d", "--json").output)
    assert history[0]["actor"] == "person:alice" and "downtime" in history[0]["reason"]
    assert "1 override(s) cleared" in run("clear", "ANALY_A3").output
    step(robot, clock)
    assert grid.statuses["ANALY_A3"] is QueueStatus.ONLINE
    assert "switched by alice at " in run("mode", "enforce").output
    assert "from the configuration" in run("mode", "--reset").output
    assert "1 silence(s) ended" in run("unsilence", "SITE-B1").output


@pytest.mark.parametrize("command", [("exclude", "ANALY_A3", "--reason", "r"), ("include", "ANALY_A3", "--reason", "r"),
                                     ("clear", "ANALY_A3"), ("silence", "ANALY_A3", "--for", "1h", "--reason", "r"),
                                     ("unsilence", "ANALY_A3"), ("mode", "off")])
def test_nobody_can_type_another_name_for_a_blacklist_decision(tmp_path, command):
    config = tmp_path / "robot.yaml"
    config.write_text(f"data_dir: {tmp_path}\n")
    result = CliRunner().invoke(main, ["--config", str(config), "blacklist", *command, "--by", "olga"])
    assert result.exit_code == 2 and "No such option '--by'" in result.output


def test_a_silence_without_for_says_what_to_pass(tmp_path):
    config = tmp_path / "robot.yaml"
    config.write_text(f"data_dir: {tmp_path}\n")
    result = CliRunner().invoke(main, ["--config", str(config), "blacklist", "silence", "MWT2", "--reason", "r"])
    assert result.exit_code == 2 and "--for 4h" in result.output and "blacklist unsilence MWT2" in result.output
    assert not (tmp_path / "healthrobot.db").exists()  # refused before the database is touched


def run_with_one_queue_waiting(robot, grid, clock, waiting: str, steps: int = 8) -> None:
    """Steps in which every queue's jobs start and finish but `waiting`'s, which stay where they are."""
    robot.run_once(clock.now())
    for _ in range(steps):
        for queue in QUEUES:
            if queue != waiting:
                for pid in grid.in_queue(queue):
                    grid.start(pid)
                    grid.finish(pid)
        step(robot, clock)


def test_a_stuck_queue_is_excluded_while_the_others_run(tmp_path, clock, grid):
    robot = robot_with_engine(tmp_path, grid, default={"stall_after": "45m"})
    run_with_one_queue_waiting(robot, grid, clock, "ANALY_C2")
    assert transitions(robot) == [("ANALY_C2", "online", "brokeroff", "healthrobot", True, "brokeroff")]
    with robot.sessions() as session:
        reason = session.scalars(select(QueueTransition.reason).where(QueueTransition.kind == "status")).one()
    assert "STALLED" in reason


def test_the_probe_jobs_a_stall_sends_count_from_their_first_minutes(tmp_path, clock, grid):
    """A stuck queue's probes that do not start either confirm the stall within minutes: the engine gives
    the policy every job waiting at a stalled queue, not only those that waited `stall_after` themselves."""
    robot = robot_with_engine(tmp_path, grid, default={"stall_after": "45m"})
    robot.run_once(clock.now())
    for minute in range(5, 130, 5):
        for queue in QUEUES:
            waiting = grid.in_queue(queue)
            if queue == "ANALY_C2":  # it starts one of its first two jobs, then nothing
                waiting = waiting[:1] if minute == 5 else []
            for pid in waiting:
                grid.start(pid)
                grid.finish(pid)
        step(robot, clock, minutes=5)
    with robot.sessions() as session:
        moves = session.execute(select(QueueTransition.time, QueueTransition.new).join(Queue)
                                .where(Queue.name == "ANALY_C2").order_by(QueueTransition.id)).all()
    (pended, pending), (excluded, brokeroff) = moves
    assert (pending, brokeroff) == ("pending", "brokeroff")
    # 10 minutes: the probes waited 5. The job that stalled it would weigh enough alone 25 minutes after
    # the doubt; with probes that count once they have waited 45 minutes each, 50
    assert excluded - pended <= timedelta(minutes=15)


def test_jobs_the_server_never_activated_are_no_stall_of_the_site(tmp_path, clock, grid):
    """`defined` (or assigned, pending, waiting) is the server's or the data's wait, not the site's."""
    robot = robot_with_engine(tmp_path, grid, default={"stall_after": "45m"})
    grid.initial_state = JobStatus.DEFINED
    run_with_one_queue_waiting(robot, grid, clock, "ANALY_C2")
    assert transitions(robot) == []


def test_no_stall_is_judged_while_the_backend_cannot_be_read(tmp_path, clock, grid):
    """Stored job states are old news during an outage: waiting jobs may long have started."""
    robot = robot_with_engine(tmp_path, grid, default={"stall_after": "45m"})
    robot.run_once(clock.now())
    for queue in QUEUES:  # jobs start everywhere but at two queues
        if queue not in ("ANALY_A1", "ANALY_C2"):
            for pid in grid.in_queue(queue):
                grid.start(pid)
    step(robot, clock)
    grid.unreachable = True
    for _ in range(8):  # 80 minutes in which nothing can be read
        step(robot, clock)
    with robot.sessions() as session:
        assert session.scalars(select(QueueTransition.reason).where(QueueTransition.actor == "healthrobot")).all() == []
    grid.unreachable = False
    for pid in grid.in_queue("ANALY_A1"):  # they had started meanwhile; ANALY_C2's had not
        grid.start(pid)
    step(robot, clock)
    with robot.sessions() as session:
        reasons = session.execute(select(Queue.name, QueueTransition.reason).join(Queue)
                                  .where(QueueTransition.actor == "healthrobot")).all()
    assert reasons and {name for name, _ in reasons} == {"ANALY_C2"}
    assert all("STALLED" in reason for _, reason in reasons)


def test_a_restarted_engine_reads_the_same_facts_and_decides_the_same(database_url):
    # The engine keeps results, moves, users' hours, their sums and each queue's part of the grid from
    # step to step and reads only what changed; a restarted robot reads them whole. At every step of a simulated run with faults
    # and users' jobs both see the same queues and decide the same.
    from blacklist.simulate import BUILTIN
    from robot.backends.simulated import SimulatedGrid, load_scenario
    from robot.classify import load_table
    from robot.config import RobotConfig
    from robot.storage.database import make_engine, make_sessionmaker, upgrade
    from robot.userjobs import UserJobWatch

    scenario = load_scenario(Path(__file__).resolve().parent.parent / "configs" / "scenarios" / "partial_failures.yaml")
    scenario = scenario.model_copy(update={"duration": timedelta(hours=14), "step": timedelta(minutes=10),
                                           "queues": scenario.queues.model_copy(update={"count": 12})})
    clock = ManualClock(scenario.start)
    grid = SimulatedGrid(scenario, clock, 1)
    config = RobotConfig.model_validate({"data_dir": "/nonexistent", "database": {"url": database_url}, "templates": [
        {"name": t, "category": "functional", "payload": "simulated", "input_dataset": "*", "events_per_job": scenario.job.events,
         "max_wall_time": "1d",
         "max_queue_time": "2h"} for t in scenario.templates]})
    database = make_engine(database_url)
    upgrade(database)
    sessions = make_sessionmaker(database)
    policy = Policy(BUILTIN["default"], tuple(scenario.templates))
    engine = ExclusionEngine(policy, grid)
    watch = UserJobWatch(grid, load_table(), timedelta(minutes=10), policy.window)
    robot = Robot(config, sessions, grid, grid, grid, load_table(), evaluators=[watch, engine], rollup=False,
                  shared=False)
    now, decided, kept_alike = scenario.start, 0, 0
    while now < scenario.start + scenario.duration:
        clock.set(now)
        robot.run_once(now)
        with sessions() as session:
            engine.facts.moves.read(session, now)
            kept = engine.facts.load(session, now)
            fresh_facts = QueueFacts(policy)
            fresh_facts.moves.read(session, now)
            fresh = fresh_facts.load(session, now)
        assert kept.flaps == fresh.flaps
        assert kept.views == fresh.views  # results that left the window go at once, not some steps later
        spread, spread_fresh = policy.grid(kept.views.values(), engine.spread), policy.grid(fresh.views.values())
        assert spread == spread_fresh  # each queue's part kept from the steps before, or worked out afresh
        assert list(spread.times) == list(spread_fresh.times)  # shared causes listed in the same order
        users_kept, users_fresh = policy.users(kept.views.values(), engine.tally), policy.users(fresh.views.values())
        for name, view in kept.views.items():
            decision = policy.decide(fresh.views[name], now, fresh.flaps[name], spread_fresh, users_fresh)
            assert policy.decide(view, now, kept.flaps[name], spread, users_kept) == decision
            assert policy.quiet(view, engine.quiet) in (None, decision)  # its results' answer kept from the steps before
            settled = engine.settled.get(name)
            if settled is not None and settled[0] is view:  # the decision its view alone made, kept while it is the same
                why = hands_off(fresh.views[name])
                assert settled[1] == (Decision(name, Action.KEEP, why, policy=policy.name) if why else decision)
                kept_alike += 1
            decided += 1
        now += scenario.step
    assert decided == 12 * 84
    assert kept_alike > 12 * 84 / 2
