"""Replay a policy over stored history and list where its decisions would have differed.

The stored results are read once; the policy and the safety rules then step through the period
at a fixed interval with a shadow state per queue, exactly as the engine would have, and the
shadow's exclusions and re-inclusions are set against the robot's recorded ones.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from blacklist.model import Action, QueueView, Result
from blacklist.policies import Policy
from blacklist.safety import guard
from robot.storage.models import Cloud, Job, Queue, QueueTransition, Site, Template, Test


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


def replay(session: Session, policy: Policy, since: datetime, until: datetime,
           step: timedelta = timedelta(minutes=10)) -> list[Move]:
    queues = session.execute(
        select(Queue.name, Site.name, Cloud.name, Queue.exempt).join(Site, Site.id == Queue.site_id)
        .join(Cloud, Cloud.id == Site.cloud_id).where(Queue.retired_at.is_(None))
    ).all()
    history: dict[str, list[Result]] = defaultdict(list)
    for queue, panda_id, template, end, outcome, klass, name, code, start in session.execute(
        select(Queue.name, Job.panda_id, Template.name, Job.end_time, Job.outcome, Job.error_class, Job.error_name,
               Job.error_code, Job.start_time)
        .join(Queue, Queue.id == Job.queue_id).join(Test, Test.id == Job.test_id)
        .join(Template, Template.id == Test.template_id)
        .where(Job.phase == "done", Job.outcome.in_(["completed", "failed"]), Template.name.in_(policy.templates),
               Job.end_time >= since - policy.window, Job.end_time <= until)
    ):
        history[queue].append(Result(panda_id or 0, template, end, outcome == "failed", klass, name, code, start))
    shadow = {name: QueueView(name=name, site=site, cloud=cloud, status="online", exempt=exempt, state_since=since)
              for name, site, cloud, exempt in queues}
    exclusions: dict[str, list[datetime]] = defaultdict(list)
    moves: list[Move] = []
    now = since
    while now <= until:
        views = {}
        for name, view in shadow.items():
            results = tuple(sorted((r for r in history[name] if now - policy.window <= r.end_time <= now),
                                   key=lambda r: r.end_time, reverse=True))
            views[name] = replace(view, results=results)
        decisions = [policy.decide(v, now, sum(1 for t in exclusions[v.name] if now - t < policy.flap_window))
                     for v in views.values()]
        decisions, _ = guard(decisions, views, policy.settings.safety, now)
        for decision in decisions:
            view = shadow[decision.queue]
            if decision.action is Action.EXCLUDE:
                shadow[decision.queue] = replace(view, robot_state="excluded", state_since=now, last_robot_exclusion=now)
                exclusions[decision.queue].append(now)
                moves.append(Move(decision.queue, now, "exclude", decision.reason))
            elif decision.action is Action.INCLUDE:
                shadow[decision.queue] = replace(view, robot_state="online", state_since=now, last_robot_inclusion=now)
                moves.append(Move(decision.queue, now, "include", decision.reason))
            elif decision.action in (Action.PEND, Action.CLEAR):
                state = "pending" if decision.action is Action.PEND else "online"
                shadow[decision.queue] = replace(view, robot_state=state, state_since=now)
        now += step
    return moves


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
