"""Policies side by side in virtual time: the real loop and engine against the simulated grid.

Each (policy, seed) run drives `Robot.run_once(now)` step by step over the scenario, with the
exclusion engine in enforce mode, then scores the stored transitions against the ground truth of
the scenario (which queue was broken when, when the central services failed).
"""
from __future__ import annotations

import gc
import statistics
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Callable

from sqlalchemy import select
from sqlalchemy.orm import Session

from blacklist.engine import ExclusionEngine
from robot.downtimes import DowntimeWatch
from blacklist.policies import Policy
from blacklist.settings import BlacklistSettings, SafetySettings, UserJobsSettings
from robot.backends.simulated import FaultWindow, Scenario, SimulatedGrid
from robot.classify import load_table
from robot.clock import ManualClock
from robot.config import RobotConfig
from robot.loop import Robot
from robot.storage.database import make_engine, make_sessionmaker, upgrade
from robot.storage.models import Queue, QueueTransition
from robot.userjobs import UserJobWatch
from robot.yamlconfig import load_yaml_model

USER_JOBS_REFRESH = timedelta(minutes=10)  # the robot's default (user_jobs.refresh)

# The rows of every comparison:
#   hammercloud         HammerCloud as it runs: its own rules, exemptions and cooldown, no mass-exclusion
#                       guard and no cap (the mass-exclusion recovery it gained later acts after the fact);
#   hammercloud+safety  HammerCloud's rules behind our safety layer (mass guard and exclusion cap), so that
#                       what the default policy gains over it is the policy's own doing;
#   default             our policy, behind the same safety layer, given the test jobs and the users' own
#                       jobs at each queue (blacklist/userjobs.py) as the scenario's `users:` traffic makes
#                       them (none without it: then it is the test jobs alone);
#   default-users       the same without the users' jobs (blacklist.user_jobs.enabled off): the same test
#                       jobs, the same luck.
BUILTIN = {
    "hammercloud": BlacklistSettings(mode="enforce", policy="hammercloud",
                                     safety=SafetySettings(mass_guard=False, max_excluded_fraction=1.0)),
    "hammercloud+safety": BlacklistSettings(mode="enforce", policy="hammercloud"),
    "default": BlacklistSettings(mode="enforce", policy="default"),
    "default-users": BlacklistSettings(mode="enforce", policy="default", user_jobs=UserJobsSettings(enabled=False)),
}
COMPARED = ("hammercloud", "hammercloud+safety", "default")  # the rows shown when no policy is named ...
WITHOUT_USERS = "default-users"  # ... and this one too when a scenario has users' traffic (`users:`)
GIVEN = {  # what each built-in row was given, as the comparison prints it
    "hammercloud": "HammerCloud's rules on the test jobs, no mass guard, no cap",
    "hammercloud+safety": "HammerCloud's rules on the test jobs, behind our safety layer",
    "default": "our policy on the test jobs and the users' own jobs of each queue, behind our safety layer",
    "default-users": "default without the users' own jobs: the test jobs alone",
}


def policy_settings(name_or_path: str) -> tuple[str, BlacklistSettings]:
    """A built-in policy by name, or a YAML file holding a `blacklist:` section's content."""
    if name_or_path in BUILTIN:
        return name_or_path, BUILTIN[name_or_path]
    settings = load_yaml_model(name_or_path, BlacklistSettings)
    return Path(name_or_path).stem, settings.model_copy(update={"mode": "enforce"})


@dataclass
class RunResult:
    policy: str
    seed: int
    latencies: list[float] = field(default_factory=list)  # seconds online while broken, per detected fault
    missed: int = 0
    covered: int = 0  # faults that began and ended while their queue was excluded (nothing to detect)
    faults: int = 0  # faults that call for an exclusion (a slow queue does not)
    false_exclusions: int = 0
    central_exclusions: int = 0
    reinclusion: list[float] = field(default_factory=list)  # seconds from recovery to re-inclusion
    not_reincluded: int = 0  # faults whose queue was excluded at their end and never came back
    premature: int = 0  # re-inclusions while a fault of the queue was still on
    flips: int = 0  # status changes of a queue while one of its faults was on
    lost_queue_hours: float = 0.0  # excluded while healthy
    broken_online_hours: float = 0.0  # online (in user brokerage) while broken
    jobs: int = 0
    queue_days: float = 0.0


def run(scenario: Scenario, settings: BlacklistSettings, seed: int, label: str,
        record: Callable[[Session], None] | None = None) -> RunResult:
    """`record`: called with a session on the run's database before it is dropped (to keep what the run did)."""
    clock = ManualClock(scenario.start)
    grid = SimulatedGrid(scenario, clock, seed)
    templates = [{"name": t, "category": "functional", "payload": "simulated", "input_dataset": "*",
                  "events_per_job": scenario.job.events, "max_wall_time": "1d", "max_queue_time": "2h"}
                 for t in scenario.templates]
    config = RobotConfig.model_validate({"data_dir": "/nonexistent", "database": {"url": "sqlite://"},
                                         "templates": templates})
    engine = make_engine("sqlite://")
    upgrade(engine)
    sessions = make_sessionmaker(engine)
    policy = Policy(settings, tuple(scenario.templates))
    table = load_table()
    announced = [DowntimeWatch(grid, timedelta(0))] if any(f.announced for f in scenario.faults) else []
    # users' jobs are read as the robot reads them (every USER_JOBS_REFRESH), only by a policy that hears them
    users = [UserJobWatch(grid, table, USER_JOBS_REFRESH, policy.window)] if policy.hears_users else []
    robot = Robot(config, sessions, grid, grid, grid, table,
                  evaluators=[*announced, *users, ExclusionEngine(policy, grid)], rollup=False, shared=False)
    end = scenario.start + scenario.duration
    now = scenario.start
    # As in the settled daemon (robot.loop.settle): the youngest generation is collected every 10,000
    # allocations, not 700, so a step's short-lived rows are not promoted into the full passes that walk
    # the run's growing state (the simulated jobs, the users' jobs drawn): 1.3 of 9.3 s of CPU in the
    # default's first simulated day at 200 queues, 0.2 s with it.
    collecting = gc.get_threshold()
    gc.set_threshold(10_000, 10, 10)
    try:
        while now < end:
            clock.set(now)
            robot.run_once(now)
            now += scenario.step
    finally:
        gc.set_threshold(*collecting)
    with sessions() as session:
        transitions = session.execute(
            select(Queue.name, QueueTransition.time, QueueTransition.new)
            .join(Queue, Queue.id == QueueTransition.queue_id)
            .where(QueueTransition.kind == "status", QueueTransition.actor == settings.actor)
            .order_by(QueueTransition.time)
        ).all()
        if record is not None:
            record(session)
    engine.dispose()
    result = score(scenario, grid.faults, [(q, t, new) for q, t, new in transitions], end)
    result.policy, result.seed, result.jobs = label, seed, grid.submitted
    return result


def score(scenario: Scenario, faults: list[FaultWindow], transitions: list[tuple[str, datetime, str]],
          end: datetime) -> RunResult:
    """Compare the robot's status changes with the truth, every change counted, not only the first.

    Detection latency is the time a broken queue spent online before it was excluded: from the fault's
    start, or, if the queue was still excluded for an earlier fault then, from when it was put back
    while this one was on. A fault that began and ended while its queue was excluded is `covered`
    (there was nothing to detect), not missed. A re-inclusion is measured from the end of the last
    fault of the queue it followed: one put back after a run of faults is counted once, for the last.
    """
    faults = [f for f in faults if f.excludable]
    result = RunResult(policy="", seed=0, faults=len(faults))
    result.queue_days = scenario.queues.count * scenario.duration.total_seconds() / 86400
    outages = [(scenario.start + o.onset, scenario.start + o.onset + o.duration + timedelta(hours=1))
               for o in scenario.central_outages]
    by_queue: dict[str, list[tuple[datetime, str]]] = {}
    for queue, when, new in transitions:
        by_queue.setdefault(queue, []).append((when, new))
    for fault in faults:
        events = by_queue.get(fault.queue, [])
        result.flips += sum(1 for t, _ in events if fault.start <= t < fault.end)
        result.broken_online_hours += (fault.end - fault.start).total_seconds() / 3600 - _excluded_hours(
            events, fault.start, fault.end)
        exposed = fault.start if _online_before(events, fault.start) else next(
            (t for t, new in events if new == "online" and fault.start <= t < fault.end), None)
        if exposed is None:
            result.covered += 1
        else:
            excluded = next((t for t, new in events if new != "online" and exposed <= t <= fault.end), None)
            if excluded is None:
                result.missed += 1
            else:
                result.latencies.append((excluded - exposed).total_seconds())
        if _online_before(events, fault.end):
            continue  # online when the fault ended: no re-inclusion to measure
        back = next((t for t, new in events if new == "online" and t >= fault.end), None)
        if any(f.queue == fault.queue and fault.end <= f.start < (back or end) for f in faults):
            continue  # broken again before it came back: the later fault's re-inclusion
        if back is None:
            result.not_reincluded += 1
        else:
            result.reinclusion.append((back - fault.end).total_seconds())
    for queue, events in by_queue.items():
        windows = [f for f in faults if f.queue == queue]
        for when, new in events:
            if new == "online":
                result.premature += any(f.start <= when < f.end for f in windows)
            elif not any(f.start <= when <= f.end for f in windows):
                result.false_exclusions += 1
                if any(a <= when <= b for a, b in outages):
                    result.central_exclusions += 1
        result.lost_queue_hours += _healthy_excluded_hours(events, windows, end)
    return result


def _online_before(events: list[tuple[datetime, str]], when: datetime) -> bool:
    """Whether the queue was online just before `when` (every queue starts online)."""
    last = [new for t, new in events if t < when]
    return not last or last[-1] == "online"


def _excluded_intervals(events: list[tuple[datetime, str]], end: datetime) -> list[tuple[datetime, datetime]]:
    intervals, since = [], None
    for when, new in events + [(end, "online")]:
        if new != "online" and since is None:
            since = when
        elif new == "online" and since is not None:
            intervals.append((since, when))
            since = None
    return intervals


def _excluded_hours(events: list[tuple[datetime, str]], start: datetime, stop: datetime) -> float:
    """Hours of [start, stop) the queue spent excluded."""
    return sum(max(0.0, (min(b, stop) - max(a, start)).total_seconds())
               for a, b in _excluded_intervals(events, stop)) / 3600


def _healthy_excluded_hours(events: list[tuple[datetime, str]], faults: list[FaultWindow], end: datetime) -> float:
    """Hours the queue spent excluded while no fault was active on it (user brokerage lost)."""
    return sum(_outside(a, b, faults) for a, b in _excluded_intervals(events, end)) / 3600


def _outside(start: datetime, stop: datetime, faults: list[FaultWindow]) -> float:
    total = (stop - start).total_seconds()
    for fault in faults:
        overlap = (min(stop, fault.end) - max(start, fault.start)).total_seconds()
        total -= max(0.0, overlap)
    return max(0.0, total)


@dataclass(frozen=True)
class Summary:
    policy: str
    runs: int
    faults: int
    detection_median_min: float | None
    detection_p95_min: float | None
    missed: int
    covered: int
    false_per_100_queue_days: float
    false_exclusions: int
    central_exclusions: int
    reinclusion_median_min: float | None
    not_reincluded: int
    premature_reinclusions: int
    flips_per_fault: float | None
    lost_queue_hours: float
    broken_online_hours: float
    jobs: float

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def summarize(runs: list[RunResult]) -> Summary:
    latencies = [x / 60 for r in runs for x in r.latencies]
    back = [x / 60 for r in runs for x in r.reinclusion]
    queue_days = sum(r.queue_days for r in runs)
    faults = sum(r.faults for r in runs)
    return Summary(
        policy=runs[0].policy, runs=len(runs), faults=faults,
        detection_median_min=statistics.median(latencies) if latencies else None,
        detection_p95_min=_p95(latencies), missed=sum(r.missed for r in runs),
        covered=sum(r.covered for r in runs),
        false_per_100_queue_days=100 * sum(r.false_exclusions for r in runs) / queue_days if queue_days else 0.0,
        false_exclusions=sum(r.false_exclusions for r in runs),
        central_exclusions=sum(r.central_exclusions for r in runs),
        reinclusion_median_min=statistics.median(back) if back else None,
        not_reincluded=sum(r.not_reincluded for r in runs),
        premature_reinclusions=sum(r.premature for r in runs),
        flips_per_fault=sum(r.flips for r in runs) / faults if faults else None,
        lost_queue_hours=sum(r.lost_queue_hours for r in runs) / len(runs),
        broken_online_hours=sum(r.broken_online_hours for r in runs) / len(runs),
        jobs=sum(r.jobs for r in runs) / len(runs),
    )


def _p95(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]
