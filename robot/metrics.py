"""Health figures per queue, site or cloud over a time window.

The arithmetic is pure (`summarize`, `wilson_interval`); `health` is the one query that feeds it.
HammerCloud's per-job figures: eventrate = nEvents / wallclock (start to end), events_athena =
nEvents / payload time, percent_cpu = 100 x cpuConsumptionTime / wallclock.
"""
from __future__ import annotations

import math
import statistics
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any, Iterable, Literal

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from robot.clock import as_utc
from robot.jobstates import JobStatus, Outcome
from robot.storage.models import Cloud, Job, Queue, Site

Level = Literal["queue", "site", "cloud"]
COUNTED = (Outcome.COMPLETED.value, Outcome.FAILED.value)


@dataclass(frozen=True)
class JobResult:
    """The fields of a finished job that the metrics read."""

    outcome: str
    n_events: int = 0
    wall: float | None = None  # seconds from start to end
    payload: float | None = None
    stagein: float | None = None
    queue_wait: float | None = None
    cpu: float = 0.0
    error_class: str | None = None
    error_name: str | None = None


@dataclass
class Health:
    key: str
    level: str
    completed: int = 0
    failed: int = 0
    unknown: int = 0
    failure_rate: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    events_per_second: float | None = None  # median over completed jobs of nEvents / wall time
    events_per_payload_second: float | None = None  # median of nEvents / payload time
    cpu_efficiency: float | None = None  # percent: total CPU time / total wall time of completed jobs
    stagein_median: float | None = None
    queue_wait_median: float | None = None
    error_classes: dict[str, int] = field(default_factory=dict)
    top_errors: list[tuple[str, int]] = field(default_factory=list)
    status: str | None = None
    robot_state: str | None = None  # the exclusion engine's view: online, pending, excluded
    waiting: int = 0  # test jobs in flight that wait for the site (activated), now
    longest_wait: float | None = None  # seconds since the oldest of them was submitted
    cloud: str | None = None
    site: str | None = None

    @property
    def total(self) -> int:
        return self.completed + self.failed

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"total": self.total}


def wilson_interval(failures: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a failure probability (95 % by default)."""
    if total <= 0:
        return (0.0, 1.0)
    p = failures / total
    denominator = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denominator
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


def summarize(key: str, level: str, results: Iterable[JobResult]) -> Health:
    health = Health(key=key, level=level)
    rates, payload_rates, stageins, waits = [], [], [], []
    cpu_total = wall_total = 0.0
    classes: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    for result in results:
        if result.outcome == Outcome.UNKNOWN.value:
            health.unknown += 1
            continue
        if result.outcome == Outcome.FAILED.value:
            health.failed += 1
            classes[result.error_class or "unknown"] += 1
            errors[result.error_name or "?"] += 1
        elif result.outcome == Outcome.COMPLETED.value:
            health.completed += 1
            if result.wall:
                rates.append(result.n_events / result.wall)
                cpu_total += result.cpu
                wall_total += result.wall
            if result.payload:
                payload_rates.append(result.n_events / result.payload)
        if result.stagein is not None:
            stageins.append(result.stagein)
        if result.queue_wait is not None:
            waits.append(result.queue_wait)
    if health.total:
        health.failure_rate = health.failed / health.total
        health.ci_low, health.ci_high = wilson_interval(health.failed, health.total)
    health.events_per_second = _median(rates)
    health.events_per_payload_second = _median(payload_rates)
    health.cpu_efficiency = 100.0 * cpu_total / wall_total if wall_total else None
    health.stagein_median = _median(stageins)
    health.queue_wait_median = _median(waits)
    health.error_classes = dict(classes)
    health.top_errors = errors.most_common(3)
    return health


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def health(session: Session, now: datetime, window: timedelta, level: Level = "queue") -> list[Health]:
    """Health of every live queue (or its site / cloud) from the jobs that ended in the window."""
    queues = session.execute(
        select(Queue.id, Queue.name, Queue.status, Site.name, Cloud.name, Queue.robot_state)
        .join(Site, Site.id == Queue.site_id).join(Cloud, Cloud.id == Site.cloud_id)
        .where(Queue.retired_at.is_(None))
    ).all()
    key_of = {qid: {"queue": q, "site": s, "cloud": c}[level] for qid, q, _, s, c, _ in queues}
    grouped: dict[str, list[JobResult]] = defaultdict(list)
    rows = session.execute(
        select(Job.queue_id, Job.outcome, Job.n_events, Job.start_time, Job.end_time, Job.time_payload,
               Job.time_stagein, Job.time_queue, Job.cpu_consumption_time, Job.error_class, Job.error_name)
        .where(Job.phase == "done", Job.end_time >= now - window, Job.end_time <= now,
               Job.outcome.in_([*COUNTED, Outcome.UNKNOWN.value]))
    )
    for qid, outcome, n_events, start, end, payload, stagein, wait, cpu, klass, name in rows:
        if qid not in key_of:
            continue
        wall = (end - start).total_seconds() if start and end else None
        grouped[key_of[qid]].append(JobResult(outcome, n_events or 0, wall, payload, stagein, wait, cpu or 0.0, klass, name))
    waiting = session.execute(
        select(Job.queue_id, func.count(), func.min(func.coalesce(Job.submitted_at, Job.recorded_at)))
        .where(Job.phase == "active", Job.job_status == JobStatus.ACTIVATED.value).group_by(Job.queue_id)
    ).all()
    waiting_at = {qid: (count, oldest) for qid, count, oldest in waiting}
    found: dict[str, Health] = {}
    for qid, _queue, status, site, cloud, robot_state in queues:
        key = key_of[qid]
        if key not in found:
            found[key] = summarize(key, level, grouped.get(key, []))
            found[key].cloud = cloud
            found[key].site = site if level != "cloud" else None
        if level == "queue":
            found[key].status, found[key].robot_state = status, robot_state
        if qid in waiting_at:
            count, oldest = waiting_at[qid]
            age = max(0.0, (now - as_utc(oldest)).total_seconds()) if oldest else None
            found[key].waiting += count
            if age is not None and (found[key].longest_wait is None or age > found[key].longest_wait):
                found[key].longest_wait = age
    return sorted(found.values(), key=lambda h: (h.cloud or "", h.site or "", h.key))
