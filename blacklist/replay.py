"""Replay a policy over stored history and list where its decisions would have differed.

The replay runs the exclusion engine itself (`ExclusionEngine`, the code the robot runs), step by
step over the period, on a scratch in-memory database that holds at each step exactly what the
robot's database held then: the queues, the jobs as they stood (waiting, running or ended), and
the people's overrides and silences as they were made and cleared. Its status changes go to a
stand-in backend; its transitions are then set against the robot's recorded ones.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import insert, or_, select, update
from sqlalchemy.orm import Session

from blacklist.engine import ExclusionEngine
from blacklist.policies import Policy
from robot.jobstates import QueueStatus
from robot.storage.database import make_engine, make_sessionmaker, upgrade
from robot.storage.job_updates import update_jobs
from robot.storage.models import (Cloud, Downtime, Job, Override, Queue, QueueTransition, Silence, Site, Template,
                                  Test)


@dataclass(frozen=True)
class Move:
    queue: str
    time: datetime
    action: str  # exclude | include
    reason: str


@dataclass(frozen=True)
class Difference:
    queue: str
    time: datetime
    replayed: str | None  # what the replayed policy did (None: nothing)
    recorded: str | None  # what the robot did (None: nothing)
    reason: str


class _Statuses:
    """The backend the replayed engine acts on: it only remembers the statuses it is given."""

    name = "replay"

    def __init__(self, queues: list[str]):
        self._status = {q: QueueStatus.ONLINE for q in queues}

    def queue_status(self) -> dict[str, QueueStatus]:
        return dict(self._status)

    def set_queue_status(self, queue: str, status: QueueStatus, reason: str, actor: str) -> None:
        self._status[queue] = status


# What a job looked like at each point of its life, as the engine reads it
_WAITING = {"phase": "active", "job_status": "activated", "start_time": None, "end_time": None, "outcome": None,
            "error_class": None, "error_name": None, "error_code": None}
_FINAL_FIELDS = ("phase", "job_status", "start_time", "end_time", "outcome", "error_class", "error_name",
                 "error_code", "error_source", "error_diag")


def replay(session: Session, policy: Policy, since: datetime, until: datetime,
           step: timedelta = timedelta(minutes=10)) -> list[Move]:
    """The moves the engine, running `policy`, would have made from `since` to `until`."""
    settings = policy.settings.model_copy(update={"mode": "enforce"})
    policy = Policy(settings, policy.templates)
    scratch = make_engine("sqlite://")
    upgrade(scratch)
    try:
        with make_sessionmaker(scratch)() as shadow:
            queues = _copy_topology(session, shadow)
            engine = ExclusionEngine(policy, _Statuses(queues))  # type: ignore[arg-type]
            history = _History(session, since - policy.window - settings.default.stall_after, until)
            now = since
            while now <= until:
                history.advance(shadow, now)
                engine(shadow, now)
                shadow.commit()
                now += step
            rows = shadow.execute(
                select(Queue.name, QueueTransition.time, QueueTransition.new, QueueTransition.reason)
                .join(Queue, Queue.id == QueueTransition.queue_id)
                .where(QueueTransition.kind == "status", QueueTransition.actor == settings.actor)
                .order_by(QueueTransition.time, QueueTransition.id)
            ).all()
    finally:
        scratch.dispose()
    return [Move(q, t, "include" if new == "online" else "exclude", reason) for q, t, new, reason in rows]


def _copy_topology(session: Session, shadow: Session) -> list[str]:
    """Clouds, sites, live queues (online, as the replay starts them), templates, tests and announced downtimes."""
    for model in (Cloud, Site, Template, Test, Downtime):
        rows = [dict(row._mapping) for row in session.execute(select(model.__table__))]
        if rows:
            shadow.execute(insert(model.__table__), rows)
    queues = [{"id": q.id, "name": q.name, "site_id": q.site_id, "exempt": q.exempt}
              for q in session.execute(select(Queue.id, Queue.name, Queue.site_id, Queue.exempt)
                                       .where(Queue.retired_at.is_(None)))]
    if queues:
        shadow.execute(insert(Queue), queues)
    shadow.commit()
    return [q["name"] for q in queues]


def _update_in_order(shadow: Session, updates: list[dict[str, Any]]) -> None:
    """Apply the jobs' changes in order, in few statements: a job that changes twice in one step (started,
    then ended) has its second change in a later bulk update."""
    wave: list[dict[str, Any]] = []
    seen: set[int] = set()
    for values in updates:
        if values["id"] in seen:
            update_jobs(shadow, wave)
            wave, seen = [], set()
        wave.append(values)
        seen.add(values["id"])
    update_jobs(shadow, wave)


class _History:
    """The stored jobs, overrides and silences, written to the scratch database as time reaches them."""

    def __init__(self, session: Session, since: datetime, until: datetime):
        columns = [c for c in Job.__table__.columns if c.name != "retry_of"]
        jobs = session.execute(select(*columns).where(
            Job.submitted_at.is_not(None), Job.submitted_at <= until,
            or_(Job.end_time.is_(None), Job.end_time >= since))).all()
        self._events: list[tuple[datetime, int, dict[str, Any]]] = []  # (when, job id, the row's new values)
        self._new: dict[int, dict[str, Any]] = {}
        for job in jobs:
            row = dict(job._mapping)
            self._new[row["id"]] = {**row, **_WAITING, "submitted_at": row["submitted_at"]}
            self._events.append((row["submitted_at"], row["id"], {}))
            if row["start_time"] is not None:
                self._events.append((row["start_time"], row["id"], {"job_status": "running",
                                                                     "start_time": row["start_time"]}))
            # An ended job counts from when the robot saw it end (its poll), as it did for the robot; an
            # imported one (recorded after it ended: `history import`) from its end.
            imported = row["end_time"] is not None and row["recorded_at"] > row["end_time"]
            ended = ((row["end_time"] if imported else row["status_changed_at"] or row["end_time"])
                     if row["phase"] in ("done", "lost") else None)
            if ended is not None:
                self._events.append((ended, row["id"], {k: row[k] for k in _FINAL_FIELDS}))
        self._events.sort(key=lambda e: (e[0], e[1], len(e[2])))
        self._next = 0
        self._overrides = [dict(r._mapping) for r in session.execute(
            select(Override.__table__).where(Override.created_at <= until))]
        self._silences = [dict(r._mapping) for r in session.execute(
            select(Silence.__table__).where(Silence.created_at <= until))]
        self._placed: set[tuple[str, int]] = set()

    def advance(self, shadow: Session, now: datetime) -> None:
        inserts, updates = [], []
        while self._next < len(self._events) and self._events[self._next][0] <= now:
            _, job_id, values = self._events[self._next]
            self._next += 1
            if job_id in self._new:
                inserts.append({**self._new.pop(job_id), "status_changed_at": now})
            else:
                updates.append({"id": job_id, **values, "status_changed_at": now})
        if inserts:
            shadow.execute(insert(Job), inserts)
        _update_in_order(shadow, updates)
        self._people(shadow, Override, self._overrides, now, reset={"applied_at": None, "ended_at": None})
        self._people(shadow, Silence, self._silences, now, reset={})

    def _people(self, shadow: Session, model: Any, rows: list[dict[str, Any]], now: datetime,
                reset: dict[str, Any]) -> None:
        """Overrides and silences appear when made and are cleared when they were cleared."""
        kind = model.__tablename__
        for row in rows:
            if row["created_at"] <= now and (kind, row["id"]) not in self._placed:
                shadow.execute(insert(model.__table__).values(**{**row, **reset, "cleared_at": None}))
                self._placed.add((kind, row["id"]))
            if row["cleared_at"] is not None and row["cleared_at"] <= now and (kind + ":cleared", row["id"]) not in self._placed:
                shadow.execute(update(model.__table__).where(model.__table__.c.id == row["id"])
                               .values(cleared_at=row["cleared_at"]))
                self._placed.add((kind + ":cleared", row["id"]))


def recorded_moves(session: Session, actor: str, since: datetime, until: datetime) -> list[Move]:
    rows = session.execute(
        select(Queue.name, QueueTransition.time, QueueTransition.new, QueueTransition.reason)
        .join(Queue, Queue.id == QueueTransition.queue_id)
        .where(QueueTransition.kind == "status", QueueTransition.actor == actor,
               QueueTransition.time >= since, QueueTransition.time <= until)
        .order_by(QueueTransition.time)
    ).all()
    return [Move(q, t, "include" if new == "online" else "exclude", reason) for q, t, new, reason in rows]


def differences(replayed: list[Move], recorded: list[Move], tolerance: timedelta) -> list[Difference]:
    """Moves of one side with no move of the same kind on the same queue within `tolerance` on the other."""
    found = []
    for mine, theirs, label in ((replayed, recorded, "replayed"), (recorded, replayed, "recorded")):
        for move in mine:
            matched = any(m.queue == move.queue and m.action == move.action and abs(m.time - move.time) <= tolerance
                          for m in theirs)
            if not matched:
                found.append(Difference(move.queue, move.time, move.action if label == "replayed" else None,
                                        move.action if label == "recorded" else None, move.reason))
    return sorted(found, key=lambda d: (d.time, d.queue))
