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
from heapq import heappop, heappush
from typing import Iterable, Sequence

from sqlalchemy import bindparam, func, select, update
from sqlalchemy.orm import Session

from blacklist.model import END_TIME, Action, Decision, QueueView, Result, failed_codes
from blacklist.policies import Policy
from blacklist.safety import Incident, guard, hands_off
from robot.backends.base import Backend, BackendUnavailable
from robot.downtimes import LOOK_BACK as OUTAGE_REACH  # the longest a job's life reaches back (stored that long)
from robot.downtimes import Downtime, describe, windows_by_site
from robot.userjobs import HourMirror, StoredHour, hour_of
from robot.userjobs import outside_downtimes as users_outside_downtimes
from robot.jobstates import QueueStatus
from robot.storage.driver_select import DriverSelect
from robot.storage.models import (Cloud, Event, Job, Override, Queue, QueueTransition, Setting, Silence, Site,
                                  Template, Test)

log = logging.getLogger(__name__)
# Core tables for the reads of every step: rows, not ORM entities to build and track.
JOB, QUEUE, SITE, CLOUD, TEST, TEMPLATE, TRANSITION = (Job.__table__, Queue.__table__, Site.__table__, Cloud.__table__,
                                                       Test.__table__, Template.__table__, QueueTransition.__table__)

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
    session.flush()  # the session's changes, as the ORM's select would see them (the engine asks at every step)
    rows = STORED_MODE.rows(session.connection())[0]
    stored = rows[0][0] if rows else None
    return configured if stored is None else stored


STORED_MODE = DriverSelect(select(Setting.__table__.c.value).where(Setting.__table__.c.name == MODE_SETTING))


class ExclusionEngine:
    """`lag`: results are read again this far back at each step, for jobs other robot processes made
    final but committed after the last read (two loop intervals when several share the database)."""

    def __init__(self, policy: Policy, backend: Backend, lag: timedelta = timedelta(0)):
        self.policy = policy
        self.backend = backend
        self.settings = policy.settings
        self.facts = QueueFacts(policy, lag)
        self.tally = policy.tally()  # the users' jobs' sums, kept as the views are
        self.spread: dict = {}  # each queue's part of the grid's Spread, kept as its results are
        self.quiet: dict = {}  # whether each queue's results alone make it healthy (Policy.quiet), kept as they are
        self.cadences: dict[str, tuple[QueueView, tuple[int, int]]] = {}  # each queue's view and cadence, where lasting
        # each queue's view and the decision it alone made (hands_off, Policy.quiet: pure functions of the view),
        # kept while the view is the same object
        self.settled: dict[str, tuple[QueueView, Decision]] = {}

    def __call__(self, session: Session, now: datetime) -> EvaluationSummary:
        self.facts.moves.read(session, now)
        session.flush()  # what the session holds, as the ORM's reads would see it (the reads below are the driver's)
        open_overrides = OPEN_OVERRIDES.rows(session.connection())[0]
        self._notice_outside_changes(session, now, open_overrides)
        if open_overrides:  # one the step just recorded (an outside change) is applied already
            self._apply_overrides(session, now)
        mode = effective_mode(session, self.settings.mode)
        summary = EvaluationSummary(mode=mode)
        if mode == "off":
            return summary
        facts = self.facts.load(session, now)
        views, ids, flaps = facts.views, facts.ids, facts.flaps
        grid = self.policy.grid(views.values(), self.spread)  # every queue's results, for the differential evidence
        users = self.policy.users(views.values(), self.tally)  # every queue's users' jobs, when the policy hears them
        decisions = []
        policy, quiet, settled = self.policy, self.quiet, self.settled
        for name, view in views.items():
            known = settled.get(name)
            if known is not None and known[0] is view:  # its view alone decided it at the last step
                decisions.append(known[1])
                continue
            why = hands_off(view)
            decision = Decision(name, Action.KEEP, why, policy=policy.name) if why else policy.quiet(view, quiet)
            if decision is not None:
                settled[name] = (view, decision)
            else:
                decision = policy.decide(view, now, flaps.get(name, 0), grid, users)
                if known is not None:
                    del settled[name]
            decisions.append(decision)
        decisions, incidents = guard(decisions, views, self.settings.safety, now)
        incidents += self.policy.incidents(grid, now)
        summary.decisions, summary.incidents = decisions, incidents
        for decision in decisions:
            if decision.action not in STATE_AFTER:
                continue  # nothing to change
            state = self._apply(session, decision, views[decision.queue], ids[decision.queue], mode, now)
            if state is not None:
                views[decision.queue] = replace(views[decision.queue], robot_state=state, state_since=now)
        self._record_incidents(session, incidents, now)
        self._set_cadence(session, views, ids, facts.cadence, now)
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

    def _notice_outside_changes(self, session: Session, now: datetime, open_overrides: Sequence[tuple]) -> None:
        """A queue the robot excluded whose status someone else changed (a person set it `test` at CRIC)
        becomes that person's override: recorded, and the robot leaves the queue alone (it neither lifts
        nor repeats its exclusion) until the override is cleared or the status changes again outside.
        `open_overrides`: the overrides not ended (OPEN_OVERRIDES: queue id, actor, cleared or None), as the step began."""
        excluded = dict(EXCLUDED.rows(session.connection())[0])
        ruled = {queue_id for queue_id, _, _ in open_overrides}
        asked = [queue_id for queue_id in excluded if queue_id not in ruled]
        for queue_id in asked:
            observed = excluded[queue_id]
            robot_set = self.facts.moves.last_set(queue_id)
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
        # One recorded just now holds the status seen now: only those open before the step can end.
        if not any(actor == OUTSIDE and cleared is None for _, actor, cleared in open_overrides):
            return
        for override, observed in session.execute(
            select(Override, Queue.status).join(Queue, Queue.id == Override.queue_id)
            .where(Override.actor == OUTSIDE, Override.ended_at.is_(None), Override.cleared_at.is_(None))
        ).all():
            if observed != override.status:
                override.cleared_at = override.ended_at = now

    def _record_incidents(self, session: Session, incidents: list[Incident], now: datetime) -> None:
        for incident in incidents:
            session.flush()  # one just recorded counts (as the ORM's select would see it)
            recent = RECENT.rows(session.connection(), {"kind": incident.kind, "since": now - INCIDENT_REPEAT})[0][0][0]
            if not recent:
                session.add(Event(time=now, kind=incident.kind, subject="central", message=incident.message,
                                  details={"queues": list(incident.queues), **incident.evidence}))

    def _set_cadence(self, session: Session, views: dict[str, QueueView], ids: dict[str, int],
                     current: dict[str, tuple[int, int]], now: datetime) -> None:
        """Store the cadence the policy asks for each queue where it is not the one stored. A queue's
        cadence that does not depend on the time (Policy.lasting) is kept while its view is the same object."""
        changed = []
        policy, kept = self.policy, self.cadences
        for name, view in views.items():
            known = kept.get(name)
            if known is not None and known[0] is view:
                wanted = known[1]
            else:
                wanted = policy.cadence(view, now).applied
                if view.downtime_ended is not None:  # back from an announced outage: tested at once
                    wanted = (max(wanted[0], 1), 0)
                if policy.lasting(view):
                    kept[name] = (view, wanted)
                elif known is not None:
                    del kept[name]
            if current.get(name) != wanted:
                changed.append({"queue_id": ids[name], "extra_jobs": wanted[0], "job_gap_seconds": wanted[1]})
        if changed:
            session.connection().execute(SET_CADENCE, changed)


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


def _pair_end(pair: tuple[int, Result]) -> datetime:
    """The sort key of (job id, result) pairs."""
    return pair[1].end_time


_AGAIN = object()  # the newest start is to be worked out again


def _set_state(session: Session, queue_id: int, state: str, now: datetime) -> None:
    session.execute(SET_STATE, {"queue_id": queue_id, "state": state, "since": now})


SET_CADENCE = (QUEUE.update().where(QUEUE.c.id == bindparam("queue_id"))
               .values(extra_jobs=bindparam("extra_jobs"), job_gap_seconds=bindparam("job_gap_seconds")))
SET_STATE = (QUEUE.update().where(QUEUE.c.id == bindparam("queue_id"))
             .values(robot_state=bindparam("state"), robot_state_since=bindparam("since")))


class ResultCache:
    """The critical templates' final results in the policy window, per queue id, newest first.

    The first read loads the whole window; later reads load only the jobs whose state changed
    since, so a step costs what changed, not the window: only a queue with a new result has its
    results sorted again. It mirrors stored rows and nothing else.
    """

    def __init__(self, policy: Policy, lag: timedelta = timedelta(0)):
        self.policy = policy
        self.lag = lag
        self._by_queue: dict[int, dict[int, Result]] = defaultdict(dict)
        self._ordered: dict[int, tuple[Result, ...]] = {}
        self._ordered_ids: dict[int, tuple[int, ...]] = {}  # the job ids of each ordering, in its order
        self._newest_start: dict[int, datetime | None] = {}
        # (the end of the oldest result of a queue's ordering, queue id) for each ordering made: a heap, so
        # that a step looks only at the queues whose oldest result left the window (and drops the stale)
        self._oldest: list[tuple[datetime, int]] = []
        self._seen_until: datetime | None = None
        columns = (JOB.c.id, JOB.c.queue_id, JOB.c.panda_id, TEMPLATE.c.name, JOB.c.end_time, JOB.c.outcome,
                   JOB.c.error_class, JOB.c.error_name, JOB.c.error_code, JOB.c.start_time, JOB.c.creation_time)
        final = (JOB.c.outcome.in_(["completed", "failed"]), TEMPLATE.c.name.in_(list(policy.templates)))
        joined = (select(*columns).select_from(JOB.join(TEST, TEST.c.id == JOB.c.test_id)
                                               .join(TEMPLATE, TEMPLATE.c.id == TEST.c.template_id)))
        self._window = DriverSelect(joined.where(*final, JOB.c.end_time >= bindparam("start")))
        # Later reads select on the time of the state change alone (its index), the window in Python.
        self._changed = DriverSelect(joined.where(*final, JOB.c.status_changed_at >= bindparam("since")))
        self._stored: dict[int, tuple] = {}  # each kept result's row as the driver gave it (by job id)
        self.changed: set[int] = set()  # the queues whose results changed since the owner last took them

    def read(self, session: Session, now: datetime) -> dict[int, tuple[Result, ...]]:
        start = now - self.policy.window
        if self._seen_until is None:
            rows, convert = self._window.rows(session.connection(), {"start": start})
        else:
            rows, convert = self._changed.rows(session.connection(), {"since": self._seen_until - self.lag})
        changed, stored, replaced = set(), self._stored, set()
        added: dict[int, list[int]] = defaultdict(list)  # queue id -> the job ids new to it, in the order read
        for row in rows:
            if stored.get(row[0]) == row:
                continue  # read again as it was (changed at the last read's time): changes nothing
            job_id, qid, panda_id, template, end, outcome, klass, name, code, started, created = convert(row)
            if end >= start:
                result = Result(panda_id or 0, template, end, outcome == "failed", klass, name, code, started, created)
                results = self._by_queue[qid]
                stored[job_id] = row
                old = results.get(job_id)
                if old != result:
                    results[job_id] = result
                    changed.add(qid)
                    if old is None:
                        added[qid].append(job_id)
                    else:
                        replaced.add(qid)
        self._seen_until = now
        # Results that left the window go at once, so that every step sees exactly the window a
        # restarted robot reads (the oldest of each queue's last ordering says where any are).
        kept: dict[int, int] = {}  # queue id -> how many of its last ordering stay
        oldest, due = self._oldest, set()
        while oldest and oldest[0][0] < start:
            end, qid = heappop(oldest)
            ordered = self._ordered[qid]
            if ordered and ordered[-1].end_time == end:  # else its ordering changed since: another entry holds its oldest
                due.add(qid)
        for qid in due:
            ordered = self._ordered[qid]
            results = self._by_queue[qid]
            if qid in replaced:  # its last ordering is not what it holds now
                gone = [j for j, r in results.items() if r.end_time < start]
            else:  # the oldest of its last ordering, all of them (what it read since is in the window)
                stays = len(ordered) - 1
                while stays and ordered[stays - 1].end_time < start:
                    stays -= 1
                kept[qid] = stays
                gone = self._ordered_ids[qid][stays:]
            for job_id in gone:
                del results[job_id]
                stored.pop(job_id, None)
            changed.add(qid)
        for qid in changed:
            self._order(qid, kept.get(qid), added.get(qid, ()), qid in replaced)
        self.changed |= changed
        return self._ordered

    def _order(self, qid: int, stays: int | None, added: Sequence[int], replaced: bool) -> None:
        """The queue's results newest first, as a stable sort of them in the order they were first read
        gives them: its last ordering without the `stays`.. oldest and with the `added` (read since, in
        that order) each put after those that did not end before it; sorted again if one was `replaced`."""
        results = self._by_queue[qid]
        if replaced or qid not in self._ordered:
            pairs = sorted(results.items(), key=_pair_end, reverse=True)
            self._ordered[qid], self._ordered_ids[qid] = tuple(r for _, r in pairs), tuple(j for j, _ in pairs)
            self._newest_start[qid] = max((r.start_time for r in results.values() if r.start_time), default=None)
            if pairs:
                heappush(self._oldest, (pairs[-1][1].end_time, qid))
            return
        ordered, ids, newest = list(self._ordered[qid]), list(self._ordered_ids[qid]), self._newest_start.get(qid)
        if stays is not None:
            if newest is not None and any(r.start_time == newest for r in ordered[stays:]):
                newest = _AGAIN
            del ordered[stays:], ids[stays:]
        for job_id in added:
            result, at = results[job_id], 0
            while at < len(ordered) and ordered[at].end_time >= result.end_time:
                at += 1
            ordered.insert(at, result)
            ids.insert(at, job_id)
            if newest is not _AGAIN and result.start_time and (newest is None or result.start_time > newest):
                newest = result.start_time
        if newest is _AGAIN:
            newest = max((r.start_time for r in results.values() if r.start_time), default=None)
        self._ordered[qid], self._ordered_ids[qid], self._newest_start[qid] = tuple(ordered), tuple(ids), newest
        if ordered:
            heappush(self._oldest, (ordered[-1].end_time, qid))

    def newest_start(self, queue_id: int) -> datetime | None:
        """When the latest of the queue's results started."""
        return self._newest_start.get(queue_id)


class RobotMoves:
    """The robot's own status changes (exclusions, re-inclusions), per queue id, read as results are:
    all at the first read, then those since the last one (and `lag` before it)."""

    def __init__(self, actor: str, lag: timedelta = timedelta(0)):
        self.lag = lag
        self._by_queue: dict[int, dict[int, tuple[datetime, str, bool]]] = defaultdict(dict)  # id -> time, new, applied
        self._seen_until: datetime | None = None
        robot = select(TRANSITION.c.id, TRANSITION.c.queue_id, TRANSITION.c.time, TRANSITION.c.new,
                       TRANSITION.c.applied).where(TRANSITION.c.kind == "status", TRANSITION.c.actor == actor)
        self._all, self._since = DriverSelect(robot), DriverSelect(robot.where(TRANSITION.c.time >= bindparam("since")))
        self._evidence = select(TRANSITION.c.id, TRANSITION.c.evidence).where(
            TRANSITION.c.id.in_(bindparam("ids", expanding=True)))
        self._summary: dict[int, tuple[datetime | None, list[datetime], datetime | None]] = {}
        self._excluded_for: dict[int, tuple[int, frozenset[int | str]]] = {}  # id -> last exclusion's id, codes
        self.changed: set[int] = set()  # the queues with moves read since the owner last took them

    def read(self, session: Session, now: datetime) -> None:
        rows, convert = (self._all.rows(session.connection()) if self._seen_until is None
                         else self._since.rows(session.connection(), {"since": self._seen_until - self.lag}))
        changed = set()
        for move_id, qid, when, new, applied in map(convert, rows):
            self._by_queue[qid][move_id] = (when, new, applied)
            changed.add(qid)
        self._seen_until = now
        unread: dict[int, int] = {}  # the last exclusion's id -> queue id, where its evidence is not read yet
        for qid in changed:
            moves = self._by_queue[qid]
            exclusions = [(when, move_id) for move_id, (when, new, _) in moves.items() if new != "online"]
            last = max(exclusions, default=None)  # the latest, and of two at one time the later stored
            self._summary[qid] = (last and last[0], [when for when, _ in exclusions],
                                  max((when for when, new, _ in moves.values() if new == "online"), default=None))
            if last is not None and self._excluded_for.get(qid, (None,))[0] != last[1]:
                unread[last[1]] = qid
        if unread:
            for move_id, evidence in session.execute(self._evidence, {"ids": list(unread)}):
                self._excluded_for[unread[move_id]] = (move_id, failed_codes(evidence))
        self.changed |= changed

    def of(self, queue_id: int, since: datetime) -> tuple[datetime | None, int, datetime | None]:
        """The queue's last exclusion, its exclusions from `since` on, and its last re-inclusion."""
        summary = self._summary.get(queue_id)
        if summary is None:
            return None, 0, None
        excluded, exclusions, included = summary
        return excluded, sum(1 for when in exclusions if when >= since), included

    def queues(self) -> Iterable[int]:
        """The queues the robot ever excluded or re-included (ids)."""
        return self._summary.keys()

    def excluded_for(self, queue_id: int) -> frozenset[int | str]:
        """The codes of the failed jobs behind the queue's last exclusion by the robot."""
        return self._excluded_for.get(queue_id, (None, frozenset()))[1]

    def last_set(self, queue_id: int) -> str | None:
        """The status the robot last set the queue to (None: never, or only in dry-run)."""
        moves = self._by_queue.get(queue_id)
        if not moves:
            return None
        _, new, applied = moves[max(moves)]
        return new if applied else None


class UserHours:
    """The stored hours of users' jobs in the policy window, per queue, oldest first, read as results
    are: all at the first read, then the rows stored since (the watch stores an hour again each time
    it reads it, while the hour grows); a row read again as it was keeps its hour."""

    def __init__(self, window: timedelta, lag: timedelta = timedelta(0)):
        self.window = window
        self.lag = lag
        self._by_queue: dict[str, dict[tuple[datetime, str], StoredHour]] = defaultdict(dict)
        self._ordered: dict[str, tuple[StoredHour, ...]] = {}
        self._rows: dict[tuple, tuple[tuple, StoredHour]] = {}  # each kept hour's row as the driver gave it
        self._mirror = HourMirror()  # the rows stored since the last read: most often just written by this process
        self._seen_until: datetime | None = None
        self._first: datetime | None = None
        self.changed: set[str] = set()  # the queues whose hours changed since the owner last took them

    def read(self, session: Session, now: datetime) -> dict[str, tuple[StoredHour, ...]]:
        first = hour_of(now - self.window)
        changed, grown, kept = set(), set(), self._rows
        rows, convert = self._mirror.rows(session, first, now,
                                          None if self._seen_until is None else self._seen_until - self.lag)
        for row in rows:
            at = (row[1], row[2], row[0])  # queue, hour, source
            known = kept.get(at)
            if known is not None and known[0] == row:
                continue
            source, hour = convert(row)
            kept[at] = (row, hour)
            hours, key = self._by_queue[hour.queue], (hour.hour, source)
            if key not in hours:
                grown.add(hour.queue)
            hours[key] = hour  # an hour read again keeps its place
            changed.add(hour.queue)
        for queue in grown:  # each queue's hours are kept in order
            self._by_queue[queue] = dict(sorted(self._by_queue[queue].items()))  # keys unique
        self._seen_until = now
        if first != self._first:
            self._first = first
            for queue, hours in self._by_queue.items():
                old = [key for key in hours if key[0] < first]
                for key in old:
                    del hours[key]
                if old:
                    changed.add(queue)
            self._rows = {at: known for at, known in kept.items() if known[1].hour >= first}
        for queue in changed:
            self._ordered[queue] = tuple(self._by_queue[queue].values())
        self.changed |= changed
        return self._ordered


# What the engine and QueueFacts read at every step, through the driver (robot.storage.driver_select), their
# rows as the driver gives them where the values are text, numbers, or only asked whether they are NULL.
EXCLUDED = DriverSelect(select(QUEUE.c.id, QUEUE.c.status).where(QUEUE.c.robot_state == "excluded",
                                                                 QUEUE.c.retired_at.is_(None)))
OVERRIDE, SILENCE, EVENT = Override.__table__, Silence.__table__, Event.__table__
OPEN_OVERRIDES = DriverSelect(select(OVERRIDE.c.queue_id, OVERRIDE.c.actor, OVERRIDE.c.cleared_at)
                              .where(OVERRIDE.c.ended_at.is_(None)))
QUEUE_ROWS = DriverSelect(
    select(QUEUE.c.id, QUEUE.c.name, QUEUE.c.status, QUEUE.c.robot_state, QUEUE.c.robot_state_since,
           QUEUE.c.exempt, SITE.c.name, CLOUD.c.name, QUEUE.c.extra_jobs, QUEUE.c.job_gap_seconds)
    .select_from(QUEUE.join(SITE, SITE.c.id == QUEUE.c.site_id).join(CLOUD, CLOUD.c.id == SITE.c.cloud_id))
    .where(QUEUE.c.retired_at.is_(None)))
RECENT = DriverSelect(select(func.count()).select_from(EVENT).where(EVENT.c.kind == bindparam("kind"),
                                                                   EVENT.c.time > bindparam("since")))
MANUAL = DriverSelect(
    select(OVERRIDE.c.queue_id, OVERRIDE.c.action)
    .where(OVERRIDE.c.cleared_at.is_(None), OVERRIDE.c.until.is_(None) | (OVERRIDE.c.until > bindparam("now")))
    .order_by(OVERRIDE.c.created_at))
SILENCED = DriverSelect(select(SILENCE.c.scope, SILENCE.c.name).where(SILENCE.c.cleared_at.is_(None),
                                                                      SILENCE.c.until > bindparam("now")))
UNREACHABLE = DriverSelect(select(func.count()).select_from(EVENT).where(EVENT.c.kind == "backend_unreachable",
                                                                         EVENT.c.time == bindparam("now")))
# Only jobs waiting at the site (activated; since activation): before activation the wait is the
# server's or the data's.
WAITING = DriverSelect(select(JOB.c.queue_id, JOB.c.status_changed_at).where(JOB.c.phase == "active",
                                                                             JOB.c.job_status == "activated"))
LAST_START = DriverSelect(select(JOB.c.queue_id, func.max(JOB.c.start_time))
                          .where(JOB.c.phase == "active", JOB.c.start_time.is_not(None)).group_by(JOB.c.queue_id))


@dataclass
class Views:
    """Every live queue's facts for one step, by name: its view, its id, its recent exclusions (the
    flaps the policy weighs) and the cadence the loop now applies to it (extra jobs, gap in seconds)."""

    views: dict[str, QueueView]
    ids: dict[str, int]
    flaps: dict[str, int]
    cadence: dict[str, tuple[int, int]]


class QueueFacts:
    """What the policies read of every live queue: status, the robot's state and moves, overrides,
    silences, recent results, waits. Results and moves are kept between steps and read as they
    change (a pure mirror of stored rows: a restart reads them whole and decides the same); a queue
    whose facts did not change keeps its view object.

    Each step reads every fact again; a queue's view is looked at again only where one of its facts
    changed since the last load: its row, results, moves, users' hours, override, waits or last start,
    any silence, or an announced outage of its site (read, or in force, at this load or the last one:
    what it excuses depends on the time)."""

    def __init__(self, policy: Policy, lag: timedelta = timedelta(0)):
        self.policy = policy
        self.results = ResultCache(policy, lag)
        self.moves = RobotMoves(policy.settings.actor, lag)
        self.users = UserHours(policy.window, lag)
        # Each queue's view, with the facts it was made of (QueueFacts._view): most, and those that change most often.
        self._views: dict[int, tuple[tuple, tuple, QueueView]] = {}
        # The facts of the last load, to tell which queues' changed.
        self._raw_rows: list[tuple] = []  # QUEUE_ROWS as the driver gave them
        self._rows: dict[int, tuple[tuple, tuple]] = {}  # queue id -> its row as the driver gave it, converted
        self._ids: dict[str, int] = {}
        self._cadence: dict[str, tuple[int, int]] = {}
        self._manual: dict[int, str] = {}
        self._silenced: set[tuple[str, str]] | None = None
        self._waiting: dict[int, list[datetime]] = {}
        self._last_start: dict[int, datetime] = {}
        self._excusing: set[str] = set()  # the sites with announced outages read

    def load(self, session: Session, now: datetime) -> Views:
        policy = self.policy
        session.flush()  # the step's own changes so far, as the ORM's reads would see them
        connection = session.connection()
        results = self.results.read(session, now)
        users = self.users.read(session, now) if policy.hears_users else {}
        # The queues whose facts changed since the last load (ids): any, or only those a view's results,
        # last start and users' hours come from (`moved`).
        changed, moved = set(self.moves.changed), set(self.results.changed)
        self.results.changed, self.moves.changed = set(), set()
        raw_rows, convert = QUEUE_ROWS.rows(connection)
        if raw_rows != self._raw_rows:
            if [raw[0] for raw in raw_rows] == list(self._rows):  # the same queues in the same order: a few changed
                for raw, was in zip(raw_rows, self._raw_rows):
                    if raw != was:
                        self._rows[raw[0]] = (raw, convert(raw))
                        changed.add(raw[0])
            else:
                known, self._rows = self._rows, {}
                for raw in raw_rows:
                    row = known.get(raw[0])
                    if row is None or row[0] != raw:
                        row = (raw, convert(raw))
                        changed.add(raw[0])
                    self._rows[raw[0]] = row
                self._views = {qid: kept for qid, kept in self._views.items() if qid in self._rows}  # a retired queue's go
            self._raw_rows = raw_rows
            self._ids = {row[1]: qid for qid, (_, row) in self._rows.items()}
            self._cadence = {row[1]: (row[8], row[9]) for _, row in self._rows.values()}
        ids = self._ids
        moved.update(ids[name] for name in self.users.changed if name in ids)
        self.users.changed = set()
        manual = dict(MANUAL.converted(connection, {"now": now}))
        changed.update(_differ(manual, self._manual))
        silenced = set(SILENCED.converted(connection, {"now": now}))
        everything, self._silenced = silenced != self._silenced, silenced
        waiting: dict[int, list[datetime]] = defaultdict(list)
        # A stall is judged only on job states read in this step: while the backend cannot be reached,
        # the stored states are old news, and jobs that "wait" may long have started.
        if UNREACHABLE.rows(connection, {"now": now})[0][0][0] == 0:
            for qid, activated in WAITING.converted(connection):
                waiting[qid].append(activated)
            # Only where a job has waited `stall_after` can the queue be stalled; there every waiting job counts.
            stall_from = now - policy.settings.default.stall_after
            waiting = {qid: times for qid, times in waiting.items() if min(times) <= stall_from}
        changed.update(_differ(waiting, self._waiting))
        last_start: dict[int, datetime] = dict(LAST_START.converted(connection))
        moved.update(_differ(last_start, self._last_start))
        self._manual, self._waiting, self._last_start = manual, waiting, last_start
        # Outages before the window too: a job that waited or ran in one may end inside the window.
        downtimes = windows_by_site(session, now - policy.window - OUTAGE_REACH, now)
        excusing, self._excusing = self._excusing | downtimes.keys(), set(downtimes)
        flap_since = now - policy.flap_window
        found = Views({}, dict(self._ids), dict.fromkeys(self._ids, 0), dict(self._cadence))
        for qid in self.moves.queues():
            row = self._rows.get(qid)
            if row is not None:
                count = self.moves.of(qid, flap_since)[1]
                found.flaps[row[1][1]] = max(0, count - 1) if row[1][3] == "excluded" else count
        views = found.views
        for qid, (_, (_, name, status, state, since, exempt, site, cloud, _, _)) in self._rows.items():
            kept = self._views.get(qid)
            if kept is None or everything or qid in changed or site in excusing:
                when, _, included = self.moves.of(qid, flap_since)
                views[name] = self._view(qid, name, status, state, since, exempt, site, cloud, when, included, now,
                                         results, users, downtimes.get(site, []), manual, waiting, last_start, silenced)
            elif qid in moved:  # most often new results, or the users' hour going on read again
                views[name] = self._moved(qid, kept, (results.get(qid, ()), self._started(qid, last_start),
                                                      users.get(name, ())))
            else:
                views[name] = kept[2]
        return found

    def _view(self, qid: int, name: str, status: str, state: str, since: datetime | None, exempt: bool, site: str,
              cloud: str, when: datetime | None, included: datetime | None, now: datetime,
              results: dict[int, tuple[Result, ...]], users: dict[str, tuple[StoredHour, ...]],
              excused: list[Downtime], manual: dict[int, str], waiting: dict[int, list[datetime]],
              last_start: dict[int, datetime], silenced: set[tuple[str, str]]) -> QueueView:
        """The queue's view from its facts: the one kept if they are all as they were."""
        ordered = results.get(qid, ())
        started = self._started(qid, last_start)
        active = ended = None
        if excused:
            ordered = tuple(outside_downtimes(list(ordered), excused))
            active = next((d for d in excused if d.covers(now)), None)
            ended = max((d.end for d in excused if now - self.policy.window < d.end <= now), default=None)
            if ended is not None and any(r.end_time >= ended for r in ordered):
                ended = None  # tested since it ended
        hours = users.get(name, ())
        excluded_for = self.moves.excluded_for(qid) if state == "excluded" else frozenset()
        waits = waiting.get(qid, ())
        key = (status, state, since, exempt, site, cloud, when, included, excluded_for, manual.get(qid),
               tuple(waits) if waits else (), tuple(excused) if excused else (), active, ended,
               bool(silenced) and (("queue", name) in silenced or ("site", site) in silenced
                                   or ("cloud", cloud) in silenced))
        moving = (ordered, started, hours)  # what changes most often (`_moved`)
        kept = self._views.get(qid)
        if kept is not None and kept[0] == key and kept[1] == moving:
            return kept[2]
        view = QueueView(
            name=name, site=site, cloud=cloud, status=status, robot_state=state,
            excluded_by_robot=state == "excluded", manual=manual.get(qid), silenced=key[-1],
            exempt=exempt, last_robot_exclusion=when, last_robot_inclusion=included, excluded_for=excluded_for,
            state_since=since,
            results=ordered, waiting_since=waits_after(waits, excused),
            last_start=started, downtime=describe(active) if active else None, downtime_ended=ended,
            user_jobs=hours if not excused else tuple(users_outside_downtimes(hours, excused)))
        self._views[qid] = (key, moving, view)
        return view

    def _started(self, qid: int, last_start: dict[int, datetime]) -> datetime | None:
        """When a job last started at the queue: one in flight, or one of its results."""
        newest, started = self.results.newest_start(qid), last_start.get(qid)
        return newest if newest and (started is None or newest > started) else started

    def _moved(self, qid: int, kept: tuple[tuple, tuple, QueueView], moving: tuple) -> QueueView:
        """The view `_view` makes of a queue whose results, last start or users' hours (`moving`) alone
        changed, its site in no announced outage (so they all count as they are): the kept one with them."""
        key, was, view = kept
        if moving == was:
            return view
        ordered, started, hours = moving
        view = _view_of({**vars(view), "results": ordered, "last_start": started, "user_jobs": hours})
        self._views[qid] = (key, moving, view)
        return view


def _view_of(fields: dict) -> QueueView:
    """The view `QueueView(**fields)` makes, for `fields` that are all of a view's (`vars` of another with
    some changed), without running the constructor (a fifth of its cost, for the ~200 views a step
    makes): QueueView is a plain frozen dataclass, with no __post_init__ nor slots (tests/test_engine_facts.py
    holds the two equal)."""
    view = _NEW(QueueView)
    _SET(view, "__dict__", fields)
    return view


_NEW, _SET = object.__new__, object.__setattr__


def _differ(new: dict, old: dict) -> set:
    """The keys whose values differ between two dicts (present in one only included)."""
    if new == old:
        return set()
    return {key for key in new.keys() | old.keys() if new.get(key) != old.get(key)}
