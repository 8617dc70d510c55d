"""Central incidents from the failures themselves: a wave of central-class failures at many queues.

A user tarball that cannot be fetched, an expired robot proxy or a Rucio outage fails test jobs at
many queues at once with central-class errors. The exclusion engine raises an incident only when
such failures would exclude queues; shifters need the incident whatever the policy, with its start
and end, to answer tickets written during it (and not those written long after).

`central_waves` is pure; `CentralIncidents` is the loop-step evaluator that stores what it finds as
one `central_failures` event per wave (its time is the wave's last failure, `details` hold the start,
the end, the queues hit and the top errors) and extends that event while the wave lasts.
"""
from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Iterable

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from robot.storage.models import Event, Job, Queue

KIND = "central_failures"
WINDOW = timedelta(minutes=30)  # central failures this close together count as one wave
MIN_QUEUES = 3  # a wave hits at least this many queues within WINDOW ...
MIN_SHARE = 0.15  # ... and this share of the queues that reported results in that WINDOW
LOOKBACK = timedelta(hours=6)  # each step re-reads this much (a longer wave keeps its stored start)


@dataclass(frozen=True)
class Ending:
    """A final test result: where, when, and whether it failed with a central-class error."""

    queue: str
    end: datetime
    central: bool
    error: str | None = None


@dataclass(frozen=True)
class Wave:
    start: datetime
    end: datetime
    queues: tuple[str, ...]
    failures: int
    errors: dict[str, int] = field(default_factory=dict)

    @property
    def message(self) -> str:
        top = ", ".join(f"{e} x{n}" for e, n in sorted(self.errors.items(), key=lambda i: -i[1])[:3])
        return (f"central-class failures at {len(self.queues)} queues ({self.failures} test jobs: {top}): "
                "a central problem, not the sites")


def central_waves(endings: Iterable[Ending], min_queues: int = MIN_QUEUES, share: float = MIN_SHARE,
                  window: timedelta = WINDOW) -> list[Wave]:
    """Waves of central-class failures.

    A moment is hot when, in the `window` before it, central-class failures hit `min_queues` queues
    or more and at least `share` of the queues that reported any result. The central failures of hot
    windows make the waves; two of them more than `window` apart belong to different waves.
    """
    ordered = sorted(endings, key=lambda e: e.end)
    reporting: deque[Ending] = deque()  # every result in the trailing window
    central: deque[int] = deque()  # indices of the central failures in the trailing window
    members: set[int] = set()
    for i, ending in enumerate(ordered):
        reporting.append(ending)
        while reporting[0].end < ending.end - window:
            reporting.popleft()
        if not ending.central:
            continue
        central.append(i)
        while ordered[central[0]].end < ending.end - window:
            central.popleft()
        hit = {ordered[j].queue for j in central}
        if len(hit) >= min_queues and len(hit) >= share * len({e.queue for e in reporting}):
            members.update(central)
    waves: list[Wave] = []
    group: list[Ending] = []
    for i in sorted(members):
        if group and ordered[i].end - group[-1].end > window:
            waves.append(_wave(group))
            group = []
        group.append(ordered[i])
    if group:
        waves.append(_wave(group))
    return waves


def _wave(members: list[Ending]) -> Wave:
    return Wave(members[0].end, members[-1].end, tuple(sorted({e.queue for e in members})), len(members),
                dict(Counter(e.error or "?" for e in members)))


class CentralIncidents:
    """Loop-step evaluator: record waves of central-class failures as `central_failures` events."""

    def __init__(self) -> None:
        self._seen_until: datetime | None = None  # central failures before this were looked at already

    def __call__(self, session: Session, now: datetime) -> list[Wave]:
        since = now - LOOKBACK
        final = (Job.outcome.in_(["completed", "failed"]), Job.end_time >= since, Job.end_time <= now)
        central = (Job.outcome == "failed", Job.error_class == "central")
        if self._seen_until is not None and not session.scalar(select(func.count()).select_from(Job).where(
                Job.status_changed_at >= self._seen_until, *central)):
            self._seen_until = now  # the usual step: no new central failure, one query on what changed
            return []
        self._seen_until = now
        hit = session.scalar(select(func.count(func.distinct(Job.queue_id))).where(*final, *central))
        if not hit or hit < MIN_QUEUES:
            return []
        endings = [Ending(q, end, outcome == "failed" and klass == "central", name)
                   for q, end, outcome, klass, name in session.execute(
                       select(Queue.name, Job.end_time, Job.outcome, Job.error_class, Job.error_name)
                       .join(Queue, Queue.id == Job.queue_id).where(*final))]
        waves = central_waves(endings)
        if waves:
            record(session, waves)
        return waves


def record(session: Session, waves: list[Wave]) -> None:
    """Store each wave, extending the stored event it overlaps (or follows within WINDOW).

    Each step sees only the last LOOKBACK of a wave: the stored start, queues and counts are kept.
    """
    earliest = min(w.start for w in waves) - WINDOW
    stored = list(session.scalars(select(Event).where(Event.kind == KIND, Event.time >= earliest)))
    for wave in waves:
        event = next((e for e in stored if _start(e) <= wave.end and e.time >= wave.start - WINDOW), None)
        if event is None:
            event = Event(time=wave.end, kind=KIND, subject="central", message="", details={})
            session.add(event)
            stored.append(event)
            merged = wave
        else:
            before = event.details or {}
            bigger = wave.failures >= before.get("failures", 0)
            merged = Wave(min(_start(event), wave.start), max(event.time, wave.end),
                          tuple(sorted(set(before.get("queues", [])) | set(wave.queues))),
                          max(wave.failures, before.get("failures", 0)),
                          wave.errors if bigger else before.get("errors", {}))
        event.time, event.message = merged.end, merged.message
        event.details = {"start": merged.start.isoformat(), "end": merged.end.isoformat(),
                         "queues": list(merged.queues), "failures": merged.failures, "errors": merged.errors}


def _start(event: Event) -> datetime:
    start = (event.details or {}).get("start")
    return datetime.fromisoformat(start) if start else event.time
