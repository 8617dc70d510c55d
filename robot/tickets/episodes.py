"""Degradation episodes per queue: from the exclusion transitions and from failure-rate windows.

`from_transitions` and `from_failures` are pure; `refresh_episodes` stores what they find.
An exclusion episode runs from the robot's exclusion (or its first failing job in the evidence)
to the re-inclusion; a metrics episode is a run of windows in which site-class failures were at
least half of at least `min_jobs` ended jobs.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Iterable

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from robot.storage.models import Episode, Job, Queue, QueueTransition, TicketLink
from robot.vocabulary import plain_reason

WINDOW = timedelta(hours=1)


@dataclass(frozen=True)
class EpisodeSpec:
    queue: str
    start: datetime
    end: datetime | None
    source: str
    reason: str
    error_classes: dict[str, int] = field(default_factory=dict)
    evidence: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Move:
    queue: str
    time: datetime
    new: str
    reason: str
    evidence: dict[str, Any]


@dataclass(frozen=True)
class Failure:
    queue: str
    end: datetime
    failed: bool
    error_class: str | None
    error: str | None
    panda_id: int | None


def from_transitions(moves: Iterable[Move]) -> list[EpisodeSpec]:
    """Exclusion to re-inclusion, per queue; the start goes back to the first failing job shown."""
    found: list[EpisodeSpec] = []
    open_: dict[str, Move] = {}
    for move in sorted(moves, key=lambda m: m.time):
        if move.new != "online" and move.queue not in open_:
            open_[move.queue] = move
        elif move.new == "online" and move.queue in open_:
            found.append(_exclusion_episode(open_.pop(move.queue), move.time))
    found += [_exclusion_episode(m, None) for m in open_.values()]
    return found


def _exclusion_episode(move: Move, end: datetime | None) -> EpisodeSpec:
    jobs = move.evidence.get("jobs", []) if isinstance(move.evidence, dict) else []
    times = [datetime.fromisoformat(j["end_time"]) for j in jobs if j.get("end_time")]
    classes = Counter(j.get("error_class") or "unknown" for j in jobs if j.get("failed"))
    # The reason in plain words for shifters and ticket replies; the policy's own words stay in the evidence.
    return EpisodeSpec(move.queue, min([move.time, *times]), end, "exclusion",
                       plain_reason(move.reason, move.evidence, move.time, move.new), dict(classes),
                       {"jobs": jobs[:20], "excluded_at": move.time.isoformat(), "policy_reason": move.reason})


def from_failures(results: Iterable[Failure], min_jobs: int = 3, share: float = 0.5,
                  window: timedelta = WINDOW) -> list[EpisodeSpec]:
    """Runs of windows where site-class failures were at least `share` of at least `min_jobs` jobs."""
    by_queue: dict[str, dict[int, list[Failure]]] = defaultdict(lambda: defaultdict(list))
    for result in results:
        by_queue[result.queue][int(result.end.timestamp() // window.total_seconds())].append(result)
    found = []
    for queue, buckets in by_queue.items():
        bad = sorted(b for b, items in buckets.items()
                     if len(items) >= min_jobs and sum(r.failed and r.error_class == "site" for r in items) >= share * len(items))
        run: list[int] = []
        for bucket in bad + [None]:  # type: ignore[list-item]
            if run and (bucket is None or bucket != run[-1] + 1):
                items = [r for b in run for r in buckets[b]]
                failed = [r for r in items if r.failed]
                classes = Counter(r.error_class or "unknown" for r in failed)
                errors = Counter(r.error or "?" for r in failed).most_common(3)
                start = datetime.fromtimestamp(run[0] * window.total_seconds(), tz=items[0].end.tzinfo)
                found.append(EpisodeSpec(
                    queue, start, start + window * len(run), "metrics",
                    f"{len(failed)} of {len(items)} test jobs failed ({', '.join(f'{e} x{n}' for e, n in errors)})",
                    dict(classes), {"failed_jobs": [r.panda_id for r in failed][:20], "jobs": len(items)}))
                run = []
            if bucket is not None:
                run.append(bucket)
    return found


def refresh_episodes(session: Session, since: datetime, until: datetime) -> list[Episode]:
    """Recompute the episodes that touch [since, until] from the stored transitions and jobs."""
    queues = dict(session.execute(select(Queue.name, Queue.id)).all())
    moves = [Move(q, t.time, t.new, t.reason, t.evidence) for t, q in session.execute(
        select(QueueTransition, Queue.name).join(Queue, Queue.id == QueueTransition.queue_id)
        .where(QueueTransition.kind == "status", ~QueueTransition.actor.startswith("person:"),
               QueueTransition.actor != "backend", QueueTransition.time <= until)
        .order_by(QueueTransition.time))]
    failures = [Failure(q, end, outcome == "failed", klass, name, pid) for q, end, outcome, klass, name, pid in
                session.execute(select(Queue.name, Job.end_time, Job.outcome, Job.error_class, Job.error_name,
                                       Job.panda_id).join(Queue, Queue.id == Job.queue_id)
                                .where(Job.outcome.in_(["completed", "failed"]), Job.end_time >= since,
                                       Job.end_time <= until))]
    specs = [e for e in from_transitions(moves) if e.end is None or e.end >= since] + from_failures(failures)
    stale = select(Episode.id).where((Episode.end.is_(None)) | (Episode.end >= since))
    session.execute(delete(TicketLink).where(TicketLink.episode_id.in_(stale)))
    session.execute(delete(Episode).where(Episode.id.in_(stale)))
    stored = [Episode(queue_id=queues[e.queue], start=e.start, end=e.end, source=e.source, reason=e.reason,
                      error_classes=e.error_classes, evidence=e.evidence) for e in specs if e.queue in queues]
    session.add_all(stored)
    session.flush()
    return stored
