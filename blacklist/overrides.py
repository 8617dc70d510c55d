"""People's word on queues: manual exclusions and inclusions (overrides) and silences.

What the CLI (`healthrobot blacklist ...`) and the dashboard both call. The rows are applied by the
robot's next step (the exclusion engine), so a person's change reaches the grid through the same
actuator as the robot's own, is read back and recorded as a transition.
"""
from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from robot.storage.models import Cloud, Override, Queue, Silence, Site

ACTIONS = ("exclude", "include")
EXCLUDE_STATUSES = ("brokeroff", "test", "offline")


class UnknownName(ValueError):
    """A queue, site or cloud the robot does not know."""


def find_queue(session: Session, name: str) -> Queue:
    queue = session.scalars(select(Queue).where(Queue.name == name)).first()
    if queue is None:
        known = session.scalars(select(Queue.name).where(Queue.retired_at.is_(None))).all()
        raise UnknownName(f"unknown queue {name!r} (known: {', '.join(sorted(known)[:20]) or 'none yet'})")
    return queue


def set_override(session: Session, queue_name: str, action: str, status: str, reason: str, actor: str,
                 now: datetime, duration: timedelta | None = None) -> Override:
    """A person excludes (to `status`) or includes (online) a queue; it replaces their older word on it."""
    if action not in ACTIONS:
        raise ValueError(f"action must be one of {', '.join(ACTIONS)}")
    if action == "exclude" and status not in EXCLUDE_STATUSES:
        raise ValueError(f"status of an exclusion must be one of {', '.join(EXCLUDE_STATUSES)}")
    if not reason.strip() or not actor.strip():
        raise ValueError("an override needs who and why")
    queue = find_queue(session, queue_name)
    for previous in active_overrides(session, queue.id):
        previous.cleared_at = now  # the newest word of a person replaces the older one
    override = Override(queue_id=queue.id, action=action, status=status if action == "exclude" else "online",
                        actor=actor, reason=reason, created_at=now, until=now + duration if duration else None)
    session.add(override)
    session.flush()
    return override


def active_overrides(session: Session, queue_id: int) -> list[Override]:
    return list(session.scalars(select(Override).where(Override.queue_id == queue_id, Override.cleared_at.is_(None),
                                                       Override.ended_at.is_(None))))


def clear_overrides(session: Session, queue_name: str, actor: str, now: datetime) -> int:
    """End a person's override of a queue now (an exclusion ends: back online); how many were ended."""
    queue = find_queue(session, queue_name)
    overrides = active_overrides(session, queue.id)
    for override in overrides:
        override.cleared_at = now
        override.reason += f" (cleared by {actor})"
    return len(overrides)


def scope_of(session: Session, name: str) -> str:
    """Whether a name is a queue, a site or a cloud the robot knows."""
    for scope, column in (("queue", Queue.name), ("site", Site.name), ("cloud", Cloud.name)):
        if session.scalar(select(column).where(column == name)):
            return scope
    raise UnknownName(f"{name!r} is neither a queue, a site nor a cloud the robot knows")


def add_silence(session: Session, name: str, duration: timedelta, reason: str, actor: str, now: datetime) -> Silence:
    """No automatic exclusion and no mail for a queue, site or cloud until now + duration."""
    if duration <= timedelta(0):
        raise ValueError("a silence needs a positive duration")
    if not reason.strip() or not actor.strip():
        raise ValueError("a silence needs who and why")
    silence = Silence(scope=scope_of(session, name), name=name, actor=actor, reason=reason, created_at=now,
                      until=now + duration)
    session.add(silence)
    session.flush()
    return silence


def end_silences(session: Session, name: str, actor: str, now: datetime) -> int:
    found = session.scalars(select(Silence).where(Silence.name == name, Silence.cleared_at.is_(None),
                                                  Silence.until > now)).all()
    for silence in found:
        silence.cleared_at = now
        silence.reason += f" (ended by {actor})"
    return len(found)
