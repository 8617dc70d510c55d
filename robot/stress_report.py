"""A stress test's report: throughput, failures and where time went, beside the queue's baseline.

`summarize_jobs` is pure arithmetic over job records; `build_report` gathers them. The report is
stored with the test as JSON, plot data included (time series, per-job values), so pages draw it
without recomputing.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from robot.storage.models import Job, Queue, Template, Test, TestQueue

BASELINE = timedelta(days=7)
TIME_BINS = 40
STEPS = ("time_queue", "time_stagein", "time_setup", "time_payload", "time_stageout")


@dataclass(frozen=True)
class JobRecord:
    queue: str
    outcome: str | None
    start: datetime | None
    end: datetime | None
    n_events: int = 0
    cpu: float = 0.0
    error_class: str | None = None
    error: str | None = None
    diag: str | None = None
    retry: bool = False
    times: tuple[float | None, ...] = (None,) * len(STEPS)


def quantiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p10": None, "p50": None, "p90": None, "n": 0}
    ordered = sorted(values)

    def at(q: float) -> float:
        position = q * (len(ordered) - 1)
        low = int(position)
        high = min(low + 1, len(ordered) - 1)
        return ordered[low] + (ordered[high] - ordered[low]) * (position - low)

    return {"p10": at(0.1), "p50": at(0.5), "p90": at(0.9), "n": len(ordered)}


def summarize_jobs(jobs: Iterable[JobRecord]) -> dict[str, Any]:
    jobs = list(jobs)
    ended = [j for j in jobs if j.outcome in ("completed", "failed")]
    done = [j for j in ended if j.outcome == "completed" and j.start and j.end and j.end > j.start]
    failed = [j for j in ended if j.outcome == "failed"]
    rates = [j.n_events / (j.end - j.start).total_seconds() for j in done]  # type: ignore[operator]
    wall = sum((j.end - j.start).total_seconds() for j in done)  # type: ignore[operator]
    spans = [j for j in jobs if j.start and j.end]
    first = min((j.start for j in spans), default=None)
    last = max((j.end for j in spans), default=None)
    events = sum(j.n_events for j in done)
    span = (last - first).total_seconds() if first and last and last > first else 0.0
    return {
        "jobs": len(jobs), "ended": len(ended), "completed": len(done), "failed": len(failed),
        "cancelled": sum(1 for j in jobs if j.outcome == "cancelled"), "retries": sum(1 for j in jobs if j.retry),
        "failure_rate": len(failed) / len(ended) if ended else None,
        "error_classes": dict(Counter(j.error_class or "unknown" for j in failed)),
        "top_errors": Counter(f"{j.error}: {(j.diag or '')[:120]}" for j in failed).most_common(5),
        "events": events,
        "events_per_second": events / span if span else None,
        "events_per_second_per_job": quantiles(rates),
        "cpu_efficiency": 100.0 * sum(j.cpu for j in done) / wall if wall else None,
        "times": {name.removeprefix("time_"): quantiles([j.times[i] for j in ended if j.times[i] is not None])
                  for i, name in enumerate(STEPS)},
        "first_start": first.isoformat() if first else None,
        "last_end": last.isoformat() if last else None,
    }


def series(jobs: list[JobRecord], bins: int = TIME_BINS) -> dict[str, list[Any]]:
    """Events per second and jobs running over time: each job's events spread over its run."""
    spans = [j for j in jobs if j.start and j.end and j.end > j.start]
    if not spans:
        return {"time": [], "events_per_second": [], "running": []}
    first, last = min(j.start for j in spans), max(j.end for j in spans)  # type: ignore[type-var]
    width = max((last - first).total_seconds() / bins, 1.0)
    rate, running = [0.0] * bins, [0.0] * bins
    for job in spans:
        length = (job.end - job.start).total_seconds()  # type: ignore[operator]
        for b in range(bins):
            lo = first + timedelta(seconds=b * width)
            overlap = (min(job.end, lo + timedelta(seconds=width)) - max(job.start, lo)).total_seconds()  # type: ignore[type-var]
            if overlap > 0:
                running[b] += overlap / width
                if job.outcome == "completed":
                    rate[b] += job.n_events * overlap / length / width
    return {"time": [(first + timedelta(seconds=b * width)).isoformat() for b in range(bins)],
            "events_per_second": rate, "running": running}


def _records(session: Session, *where: Any) -> list[JobRecord]:
    rows = session.execute(
        select(Queue.name, Job.outcome, Job.start_time, Job.end_time, Job.n_events, Job.cpu_consumption_time,
               Job.error_class, Job.error_name, Job.error_diag, Job.retry_of, *(getattr(Job, s) for s in STEPS))
        .join(Queue, Queue.id == Job.queue_id).where(*where)
    ).all()
    return [JobRecord(r[0], r[1], r[2], r[3], r[4] or 0, r[5] or 0.0, r[6], r[7], r[8], r[9] is not None,
                      tuple(r[10:])) for r in rows]


def build_report(session: Session, test: Test, now: datetime, compare: Test | None = None) -> dict[str, Any]:
    jobs = _records(session, Job.test_id == test.id, Job.phase != "lost")
    queues = sorted({name for name, in session.execute(
        select(Queue.name).join(TestQueue, TestQueue.queue_id == Queue.id).where(TestQueue.test_id == test.id))})
    stops = {name: reason for name, reason in session.execute(
        select(Queue.name, TestQueue.stop_reason).join(Queue, Queue.id == TestQueue.queue_id)
        .where(TestQueue.test_id == test.id, TestQueue.stop_reason.is_not(None)))}
    baseline_jobs = _records(
        session, Queue.name.in_(queues), Job.phase == "done", Job.end_time >= test.start_time - BASELINE,
        Job.end_time < test.start_time,
        Job.test_id.in_(select(Test.id).where(Test.category == "functional")))
    report = {
        "test": test.id, "template": session.scalar(select(Template.name).where(Template.id == test.template_id)),
        "queues": queues, "state": test.state, "outcome": test.outcome, "requested_by": test.requested_by,
        "approved_by": test.approved_by, "jobs_requested": test.max_jobs, "concurrency": test.concurrency,
        "start": test.start_time.isoformat(), "end": test.end_time.isoformat(), "made_at": now.isoformat(),
        "stops": stops,
        "summary": summarize_jobs(jobs),
        "per_queue": {q: summarize_jobs(j for j in jobs if j.queue == q) for q in queues} if len(queues) > 1 else {},
        "baseline": summarize_jobs(baseline_jobs),
        "plots": {**series(jobs),
                  "per_job_events_per_second": [j.n_events / (j.end - j.start).total_seconds() for j in jobs
                                                if j.outcome == "completed" and j.start and j.end and j.end > j.start],
                  "times": {name.removeprefix("time_"): [j.times[i] for j in jobs if j.times[i] is not None]
                            for i, name in enumerate(STEPS)}},
    }
    if compare is not None:
        other = compare.report or build_report(session, compare, now)
        report["compare"] = {"test": compare.id, "summary": other["summary"]}
    return report
