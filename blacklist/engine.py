"""The exclusion engine as a loop step: read the stored facts, decide, guard, act, record.

Decisions come from pure functions (policies, safety); this module only gathers their input from
the database and turns their output into transition rows and backend calls. Every decision that
changes something is one stored transition (old, new, reason, evidence, actor, time), applied or
dry-run alike.
"""
from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from blacklist.model import END_TIME, Action, Decision, QueueView, Result
from blacklist.policies import Policy
from blacklist.safety import Incident, guard, hands_off
from robot.backends.base import Backend, BackendUnavailable
from robot.downtimes import LOOK_BACK as OUTAGE_REACH  # the longest a job's life reaches back (stored that long)
from robot.downtimes import Downtime, describe, windows_by_site
from robot.userjobs import HOUR, stored_hours
from robot.jobstates import QueueStatus
from robot.storage.models import (Cloud, Event, Job, Override, Queue, QueueTransition, Setting, Silence, Site,
                                  Template, Test)

log = logging.getLogger(__name__)

MODE_SETTING = "blacklist.mode"
INCIDENT_REPEAT = timedelta(hours=1)
OUTSIDE = "outside the robot"  # the actor of a status change someone made at the grid (CRIC, PanDA)
STATE_AFTER = {Action.EXCLUDE: "excluded", Action.INCLUDE: "online", Action.PEND: "pending",
               Action.CLEAR: "online"}  # the robot's state for a queue after each action that changes it


def changed_outside(robot_set: str | None, observed: str) -> bool:
    """The robot holds an exclusion and last set the queue to `robot_set` (applied): a different status
    seen now was set by someone else, a person's decision the robot must leave alone."""
    return robot_set is not None and observed != robot_set


@dataclass
class EvaluationSummary:
    mode: str
    decisions: list[Decision] = field(default_factory=list)
    incidents: list[Incident] = field(default_factory=list)

    def changes(self) -> list[Decision]:
        return [d for d in self.decisions if d.action in (Action.EXCLUDE, Action.INCLUDE, Action.PEND, Action.CLEAR)]


def effective_mode(session: Session, configured: str) -> str:
    """The exclusion mode: an operator's runtime switch, else the configuration."""
    stored = session.get(Setting, MODE_SETTING)
    return stored.value if stored else configured


class ExclusionEngine:
    """`lag`: results are read again this far back at each step, for jobs other robot processes made
    final but committed after the last read (two loop intervals when several share the database)."""

    def __init__(self, policy: Policy, backend: Backend, lag: timedelta = timedelta(0)):
        self.policy = policy
        self.backend = backend
        self.settings = policy.settings
        self.results = ResultCache(policy, lag)

    def __call__(self, session: Session, now: datetime) -> EvaluationSummary:
        self._notice_outside_changes(session, now)
        self._apply_overrides(session, now)
        mode = effective_mode(session, self.settings.mode)
        summary = EvaluationSummary(mode=mode)
        if mode == "off":
            return summary
        views, ids, flaps = load_views(session, now, self.policy, self.results.read(session, now))
        grid = self.policy.grid(views.values())  # every queue's results, for the differential evidence
        users = self.policy.users(views.values())  # every queue's users' jobs, when the policy hears them
        decisions = []
        for view in views.values():
            why = hands_off(view)
            decisions.append(Decision(view.name, Action.KEEP, why, policy=self.policy.name) if why
                             else self.policy.decide(view, now, flaps.get(view.name, 0), grid, users))
        decisions, incidents = guard(decisions, views, self.settings.safety, now)
        incidents += self.policy.incidents(grid, now)
        summary.decisions, summary.incidents = decisions, incidents
        for decision in decisions:
            state = self._apply(session, decision, views[decision.queue], ids[decision.queue], mode, now)
            if state is not None:
                views[decision.queue] = replace(views[decision.queue], robot_state=state, state_since=now)
        self._record_incidents(session, incidents, now)
        self._set_cadence(session, views, ids, now)
        return summary

    # -- acting ----------------------------------------------------------------------------------
    def _apply(self, session: Session, decision: Decision, view: QueueView, queue_id: int, mode: str,
               now: datetime) -> str | None:
        """Carry out one decision; returns the robot's new state for the queue, if it changed."""
        state = STATE_AFTER.get(decision.action)
        if state is None:
            return None
        actor = self.settings.actor
        if not decision.changes_status:
            session.add(QueueTransition(queue_id=queue_id, time=now, kind="state", old=view.robot_state, new=state,
                                        reason=decision.reason, evidence=decision.evidence, actor=actor,
                                        policy=decision.policy, applied=True))
            _set_state(session, queue_id, state, now)
            return state
        target = self.settings.exclude_to if decision.action is Action.EXCLUDE else QueueStatus.ONLINE.value
        if mode == "enforce":
            if not self._set_status(session, queue_id, view.name, view.status, target, decision.reason,
                                    decision.evidence, actor, decision.policy, now):
                return None  # the backend could not be reached: the decision is taken again next step
        else:
            old = "online" if view.robot_state != "excluded" else self.settings.exclude_to
            session.add(QueueTransition(queue_id=queue_id, time=now, kind="status", old=old, new=target,
                                        reason=decision.reason, evidence=decision.evidence, actor=actor,
                                        policy=decision.policy, applied=False))
        _set_state(session, queue_id, state, now)
        log.warning("%s %s %s (%s): %s", mode, decision.action.value, view.name, target, decision.reason)
        return state

    def _set_status(self, session: Session, queue_id: int, queue: str, old: str, target: str, reason: str,
                    evidence: dict, actor: str, policy: str | None, now: datetime) -> bool:
        """Set a queue's status at the backend, read it back, and record the transition."""
        try:
            self.backend.set_queue_status(queue, QueueStatus(target), reason, actor)
            read_back = self.backend.queue_status().get(queue)
        except BackendUnavailable as exc:
            session.add(Event(time=now, kind="actuation_failed", subject=queue,
                              message=f"could not set {target}: {exc}", details={"reason": reason}))
            return False
        seen = read_back.value if read_back else None
        if seen != target:
            session.add(Event(time=now, kind="status_mismatch", subject=queue,
                              message=f"set {target} but read back {seen}", details={"reason": reason}))
        session.execute(update(Queue).where(Queue.id == queue_id).values(status=seen or target, status_read_at=now))
        session.add(QueueTransition(queue_id=queue_id, time=now, kind="status", old=old, new=target, reason=reason,
                                    evidence=evidence, actor=actor, policy=policy, applied=True, read_back=seen))
        return True

    def _apply_overrides(self, session: Session, now: datetime) -> None:
        """People's exclusions and inclusions: set when they start, and an exclusion lifted when it ends.

        They are applied whatever the mode: the switch and dry-run concern automatic decisions only.
        """
        rows = session.execute(
            select(Override, Queue.name, Queue.status).join(Queue, Queue.id == Override.queue_id)
            .where(Override.ended_at.is_(None)).order_by(Override.created_at)
        ).all()
        for override, queue, status in rows:
            active = override.cleared_at is None and (override.until is None or override.until > now)
            person = f"person:{override.actor}"
            evidence = {"override": override.id, "until": override.until.isoformat() if override.until else None}
            if active and override.applied_at is None:
                reason = f"manual {override.action} by {override.actor}: {override.reason}"
                if self._set_status(session, override.queue_id, queue, status, override.status, reason, evidence,
                                    person, None, now):
                    override.applied_at = now
                    _set_state(session, override.queue_id, "online", now)
            elif not active:
                if override.action == "exclude" and override.applied_at is not None:
                    reason = f"manual exclusion by {override.actor} ended: back online"
                    if not self._set_status(session, override.queue_id, queue, status, QueueStatus.ONLINE.value,
                                            reason, evidence, person, None, now):
                        continue
                override.ended_at = now

    def _notice_outside_changes(self, session: Session, now: datetime) -> None:
        """A queue the robot excluded whose status someone else changed (a person set it `test` at CRIC)
        becomes that person's override: recorded, and the robot leaves the queue alone (it neither lifts
        nor repeats its exclusion) until the override is cleared or the status changes again outside."""
        excluded = dict(session.execute(select(Queue.id, Queue.status).where(
            Queue.robot_state == "excluded", Queue.retired_at.is_(None))).all())
        ruled = set(session.scalars(select(Override.queue_id).where(Override.ended_at.is_(None))))
        asked = [queue_id for queue_id in excluded if queue_id not in ruled]
        # The robot's last status change of each, in one query (not one per excluded queue).
        newest = (select(func.max(QueueTransition.id)).where(
            QueueTransition.queue_id.in_(asked), QueueTransition.kind == "status",
            QueueTransition.actor == self.settings.actor).group_by(QueueTransition.queue_id))
        last_set = {queue_id: new if applied else None for queue_id, new, applied in session.execute(
            select(QueueTransition.queue_id, QueueTransition.new, QueueTransition.applied)
            .where(QueueTransition.id.in_(newest)))} if asked else {}
        for queue_id in asked:
            observed = excluded[queue_id]
            robot_set = last_set.get(queue_id)
            if not changed_outside(robot_set, observed):
                continue
            reason = (f"status set to {observed} outside the robot after its exclusion to {robot_set}:"
                      " a person's decision, left alone until cleared")
            session.add(Override(queue_id=queue_id, action="include" if observed == "online" else "exclude",
                                 status=observed, actor=OUTSIDE, reason=reason, created_at=now, applied_at=now))
            session.add(QueueTransition(queue_id=queue_id, time=now, kind="state", old="excluded", new="online",
                                        reason=reason, evidence={"robot_set": robot_set, "observed": observed},
                                        actor=f"person:{OUTSIDE}", applied=True))
            _set_state(session, queue_id, "online", now)
            log.warning("%s", reason)
        # An outside decision ends when the status changes again outside (e.g. back online by the person).
        for override, observed in session.execute(
            select(Override, Queue.status).join(Queue, Queue.id == Override.queue_id)
            .where(Override.actor == OUTSIDE, Override.ended_at.is_(None), Override.cleared_at.is_(None))
        ).all():
            if observed != override.status:
                override.cleared_at = override.ended_at = now

    def _record_incidents(self, session: Session, incidents: list[Incident], now: datetime) -> None:
        for incident in incidents:
            recent = session.scalar(select(func.count()).select_from(Event).where(
                Event.kind == incident.kind, Event.time > now - INCIDENT_REPEAT))
            if not recent:
                session.add(Event(time=now, kind=incident.kind, subject="central", message=incident.message,
                                  details={"queues": list(incident.queues), **incident.evidence}))

    def _set_cadence(self, session: Session, views: dict[str, QueueView], ids: dict[str, int], now: datetime) -> None:
        current = {qid: (extra, gap) for qid, extra, gap in
                   session.execute(select(Queue.id, Queue.extra_jobs, Queue.job_gap_seconds))}
        changed = []
        for name, view in views.items():
            cadence = self.policy.cadence(view, now)
            wanted = (cadence.extra_jobs, int(cadence.gap.total_seconds()))
            if view.downtime_ended is not None:  # back from an announced outage: tested at once
                wanted = (max(wanted[0], 1), 0)
            if current.get(ids[name]) != wanted:
                changed.append({"id": ids[name], "extra_jobs": wanted[0], "job_gap_seconds": wanted[1]})
        if changed:
            session.execute(update(Queue), changed)


def outside_downtimes(results: list[Result], downtimes: list[Downtime]) -> list[Result]:
    """Results that count: not those of jobs that lived at the site (waited, ran or ended) while it was in
    an announced outage: a job that waited or started inside one and failed after its end is the outage's."""
    if not downtimes:
        return results
    return [r for r in results if not any(d.start <= r.end_time and r.began < d.end for d in downtimes)]


def waits_after(waiting: list[datetime] | tuple[datetime, ...], downtimes: list[Downtime]) -> tuple[datetime, ...]:
    """When each waiting job started to wait at a working site: a wait inside an outage starts at its end."""
    if not downtimes:
        return tuple(waiting)
    return tuple(max([since, *(d.end for d in downtimes if d.covers(since))]) for since in waiting)


def _set_state(session: Session, queue_id: int, state: str, now: datetime) -> None:
    session.execute(update(Queue).where(Queue.id == queue_id).values(robot_state=state, robot_state_since=now)
                    .execution_options(synchronize_session=False))


class ResultCache:
    """The critical templates' final results in the policy window, per queue id.

    The first read loads the whole window; later reads load only the jobs whose state changed
    since, so a step costs what changed, not the window. It mirrors stored rows and nothing else.
    """

    def __init__(self, policy: Policy, lag: timedelta = timedelta(0)):
        self.policy = policy
        self.lag = lag
        self._by_queue: dict[int, dict[int, Result]] = defaultdict(dict)
        self._seen_until: datetime | None = None
        self._pruned_at: datetime | None = None

    def read(self, session: Session, now: datetime) -> dict[int, list[Result]]:
        start = now - self.policy.window
        query = (select(Job.id, Job.queue_id, Job.panda_id, Template.name, Job.end_time, Job.outcome, Job.error_class,
                        Job.error_name, Job.error_code, Job.start_time, Job.creation_time)
                 .join(Test, Test.id == Job.test_id).join(Template, Template.id == Test.template_id)
                 .where(Job.outcome.in_(["completed", "failed"]), Job.end_time >= start,  # outcome: final
                        Template.name.in_(self.policy.templates)))
        if self._seen_until is not None:
            query = query.where(Job.status_changed_at >= self._seen_until - self.lag)
        for job_id, qid, panda_id, template, end, outcome, klass, name, code, started, created in (
                session.execute(query)):
            self._by_queue[qid][job_id] = Result(panda_id or 0, template, end, outcome == "failed", klass, name, code,
                                                 started, created)
        self._seen_until = now
        if self._pruned_at is None or now - self._pruned_at >= self.policy.window / 12:
            self._pruned_at = now
            for results in self._by_queue.values():
                for job_id in [j for j, r in results.items() if r.end_time < start]:
                    del results[job_id]
        return {qid: list(results.values()) for qid, results in self._by_queue.items()}


def load_views(session: Session, now: datetime, policy: Policy,
               results: dict[int, list[Result]]) -> tuple[dict[str, QueueView], dict[str, int], dict[str, int]]:
    """Every live queue's facts: status, the robot's state, overrides, silences, recent results."""
    actor = policy.settings.actor
    rows = session.execute(
        select(Queue.id, Queue.name, Queue.status, Queue.robot_state, Queue.robot_state_since, Queue.exempt,
               Site.name, Cloud.name)
        .join(Site, Site.id == Queue.site_id).join(Cloud, Cloud.id == Site.cloud_id)
        .where(Queue.retired_at.is_(None))
    ).all()
    robot_moves = session.execute(
        select(QueueTransition.queue_id,
               func.max(QueueTransition.time).filter(QueueTransition.new != "online"),
               func.count().filter(QueueTransition.new != "online", QueueTransition.time >= now - policy.flap_window),
               func.max(QueueTransition.time).filter(QueueTransition.new == "online"))
        .where(QueueTransition.kind == "status", QueueTransition.actor == actor)
        .group_by(QueueTransition.queue_id)
    ).all()
    last_moves = {qid: (excluded, count, included) for qid, excluded, count, included in robot_moves}
    manual = dict(session.execute(
        select(Override.queue_id, Override.action).where(
            Override.cleared_at.is_(None), (Override.until.is_(None)) | (Override.until > now))
        .order_by(Override.created_at)
    ).all())
    silences = session.execute(select(Silence.scope, Silence.name).where(Silence.cleared_at.is_(None),
                                                                         Silence.until > now)).all()
    silenced = {(scope, name) for scope, name in silences}
    waiting: dict[int, list[datetime]] = defaultdict(list)
    stall_after = policy.settings.default.stall_after
    # A stall is judged only on job states read in this step: while the backend cannot be reached,
    # the stored states are old news, and jobs that "wait" may long have started.
    statuses_fresh = session.scalar(select(func.count()).select_from(Event).where(
        Event.kind == "backend_unreachable", Event.time == now)) == 0
    # Only jobs waiting at the site (activated; since activation) long enough to matter: before
    # activation the wait is the server's or the data's.
    for qid, activated in session.execute(
        select(Job.queue_id, Job.status_changed_at).where(Job.phase == "active", Job.job_status == "activated",
                                                          Job.status_changed_at <= now - stall_after)
    ) if statuses_fresh else ():
        waiting[qid].append(activated)
    last_start: dict[int, datetime] = dict(session.execute(
        select(Job.queue_id, func.max(Job.start_time)).where(Job.phase == "active", Job.start_time.is_not(None))
        .group_by(Job.queue_id)
    ).all())
    for qid, items in results.items():
        newest = max((r.start_time for r in items if r.start_time), default=None)
        if newest and (qid not in last_start or newest > last_start[qid]):
            last_start[qid] = newest
    views, ids, flaps = {}, {}, {}
    # Outages before the window too: a job that waited or ran in one may end inside the window.
    downtimes = windows_by_site(session, now - policy.window - OUTAGE_REACH, now)
    users = stored_hours(session, now - policy.window, now) if policy.hears_users else {}
    for qid, name, status, state, since, exempt, site, cloud in rows:
        when, count, included = last_moves.get(qid, (None, 0, None))
        excused = downtimes.get(site, [])
        ordered = tuple(sorted(outside_downtimes(results.get(qid, []), excused), key=END_TIME, reverse=True))
        active = next((d for d in excused if d.covers(now)), None)
        ended = max((d.end for d in excused if now - policy.window < d.end <= now), default=None)
        if ended is not None and any(r.end_time >= ended for r in ordered):
            ended = None  # tested since it ended
        views[name] = QueueView(
            name=name, site=site, cloud=cloud, status=status, robot_state=state,
            excluded_by_robot=state == "excluded", manual=manual.get(qid),
            silenced=bool({("queue", name), ("site", site), ("cloud", cloud)} & silenced),
            exempt=exempt, last_robot_exclusion=when, last_robot_inclusion=included, state_since=since,
            results=ordered, waiting_since=waits_after(waiting.get(qid, ()), excused),
            last_start=last_start.get(qid), downtime=describe(active) if active else None, downtime_ended=ended,
            user_jobs=tuple(h for h in users.get(name, ()) if not any(d.start < h.hour + HOUR and h.hour < d.end
                                                                      for d in excused)))
        ids[name] = qid
        flaps[name] = max(0, count - 1) if state == "excluded" else count
    return views, ids, flaps

