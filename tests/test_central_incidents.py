"""Central incidents recorded from the failures themselves (robot/incidents.py), whatever the policy."""
from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select

from blacklist.engine import ExclusionEngine
from blacklist.policies import Policy
from blacklist.settings import BlacklistSettings
from robot.clock import ManualClock
from robot.incidents import KIND, CentralIncidents, Ending, central_waves
from robot.storage.models import Event
from tests.fakes import T0, ScriptedGrid, make_robot, templates

QUEUES = {f"ANALY_Q{i}": (f"SITE{i}", "US" if i < 5 else "DE") for i in range(10)}


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def test_a_wave_at_many_queues_has_a_start_and_an_end():
    endings = [Ending(q, at(m), False) for q in QUEUES for m in range(0, 300, 10)]
    endings += [Ending(f"ANALY_Q{i}", at(60 + 7 * i + k * 10), True, "NOUSERTARBALL") for i in range(6) for k in range(6)]
    (wave,) = central_waves(endings)
    assert wave.start == at(60) and wave.end == at(60 + 35 + 50)
    assert wave.queues == tuple(f"ANALY_Q{i}" for i in range(6)) and wave.errors == {"NOUSERTARBALL": 36}


def test_scattered_central_failures_or_one_queue_are_no_wave():
    endings = [Ending(q, at(m), False) for q in QUEUES for m in range(0, 600, 10)]
    scattered = [Ending(f"ANALY_Q{i}", at(90 * i), True, "NOPROXY") for i in range(6)]  # one every 90 minutes
    one_queue = [Ending("ANALY_Q1", at(m), True, "NOPROXY") for m in range(0, 120, 5)]
    assert central_waves(endings + scattered) == []
    assert central_waves(endings + one_queue) == []


def test_two_waves_hours_apart_are_two_incidents():
    first = [Ending(f"ANALY_Q{i}", at(i), True, "NOPROXY") for i in range(4)]
    second = [Ending(f"ANALY_Q{i}", at(300 + i), True, "NOUSERTARBALL") for i in range(4, 8)]
    waves = central_waves(first + second)
    assert [(w.start, w.end) for w in waves] == [(at(0), at(3)), (at(304), at(307))]


def test_the_loop_records_a_wave_the_default_policy_would_not_exclude_for(tmp_path):
    """Central-class failures exclude nothing with the default policy, yet the incident is recorded,
    extended while it lasts, and closed when it ends."""
    clock = ManualClock(T0)
    grid = ScriptedGrid(clock, QUEUES)
    robot = make_robot(tmp_path, grid, templates({"name": "AFT"}))
    # every queue tested back to back, so that each step sees the wave (at the production pace, a stable
    # queue gets one test per stable_gap, 1 h, and the wave's edges would be known to the hour only)
    policy = Policy(BlacklistSettings.model_validate({"mode": "enforce", "default": {"stable_gap": "0s"}}), ("AFT",))
    robot.evaluators += [ExclusionEngine(policy, grid), CentralIncidents()]
    robot.run_once(clock.now())
    for step in range(16):  # 8 h in steps of 30 min; jobs ending from 2 h to 3.5 h cannot fetch their tarball
        for queue in QUEUES:
            for pid in grid.in_queue(queue):
                if 4 <= step < 8 and queue != "ANALY_Q9":
                    grid.finish(pid, wall=600, pilot_error_code=1246, pilot_error_diag="user tarball not found")
                else:
                    grid.finish(pid, wall=600)
        clock.advance(timedelta(minutes=30))
        robot.run_once(clock.now())
    with robot.sessions() as session:
        events = session.scalars(select(Event).where(Event.kind.in_([KIND, "mass_failure", "central_errors"]))).all()
        transitions = session.execute(select(Event.kind)).scalars().all()
    assert [e.kind for e in events] == [KIND], transitions
    details = events[0].details
    assert details["start"] == (T0 + timedelta(hours=2)).isoformat()
    assert details["end"] == (T0 + timedelta(hours=3, minutes=30)).isoformat() == events[0].time.isoformat()
    assert len(details["queues"]) == 9 and details["errors"] == {"NOUSERTARBALL": details["failures"]}
    assert "9 queues" in events[0].message
