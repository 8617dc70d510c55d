"""Stress tests: requests, approval, and their life cycle as a loop step.

A request names queues, a stress template, a number of jobs N, a concurrency C and a duration.
It is checked against the configuration's caps, approved at once for an operator or an admin of
every requested site (else it waits for an operator), and becomes a test whose per-queue rows
keep C jobs in flight until N jobs are done or the duration is over (one retry per failed job by
default). The supervisor below starts it at its start time, applies HammerCloud's safety stop,
kills the jobs of a cancelled test, and closes a finished test with its report.
States (HammerCloud's): unapproved, scheduled, running, completed, error, cancelled.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from robot.backends.base import Backend, BackendUnavailable
from robot.config import RobotConfig
from robot.durations import format_duration
from robot.storage.models import Event, Job, Queue, Site, Template, Test, TestQueue

log = logging.getLogger(__name__)

OPEN_STATES = ("unapproved", "scheduled", "running")


class StressRequestError(ValueError):
    """A request that cannot be accepted: every problem, each naming the field."""

    def __init__(self, problems: list[str]):
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class StressRequest:
    queues: tuple[str, ...]
    template: str
    jobs: int
    concurrency: int
    requested_by: str
    duration: timedelta | None = None
    start: datetime | None = None
    allow_excluded: bool = False
    comment: str = ""


@dataclass(frozen=True)
class QueueFacts:
    site: str
    excluded: bool


def check(request: StressRequest, config: RobotConfig, queues: dict[str, QueueFacts], now: datetime) -> list[str]:
    """Every problem with a request (pure): unknown names, caps, times, excluded queues."""
    caps = config.stress
    problems = []
    if not request.queues:
        problems.append("queue: at least one queue is needed")
    for name in request.queues:
        if name not in queues:
            problems.append(f"queue: unknown queue {name!r}")
        elif queues[name].excluded and not request.allow_excluded:
            problems.append(f"queue: {name} is excluded; a stress test runs there only if the request allows it "
                            "(--allow-excluded)")
    templates = {t.name: t for t in config.templates}
    if request.template not in templates:
        stress = sorted(t.name for t in config.templates if t.category == "stress")
        problems.append(f"template: unknown template {request.template!r} (stress templates: {', '.join(stress)})")
    elif templates[request.template].category != "stress":
        problems.append(f"template: {request.template} is a {templates[request.template].category} template, "
                        "not a stress template")
    if not 1 <= request.jobs <= caps.max_jobs:
        problems.append(f"jobs: must be between 1 and {caps.max_jobs} (got {request.jobs})")
    if not 1 <= request.concurrency <= caps.max_concurrency:
        problems.append(f"concurrency: must be between 1 and {caps.max_concurrency} (got {request.concurrency})")
    if request.duration is not None and not timedelta(0) < request.duration <= caps.max_duration:
        problems.append(f"duration: must be positive and at most {format_duration(caps.max_duration)} "
                        f"(got {format_duration(request.duration)})")
    if request.start is not None and request.start < now - timedelta(minutes=1):
        problems.append(f"start: {request.start:%Y-%m-%d %H:%M} UTC is in the past")
    if not request.requested_by.strip():
        problems.append("requested_by: who asks must be known")
    return problems


def approver(requested_by: str, sites: set[str], config: RobotConfig) -> str | None:
    """Who approves at once: an operator, or an admin of every site requested; else nobody yet."""
    if requested_by in config.stress.operators:
        return f"{requested_by} (operator)"
    if sites and all(requested_by in config.stress.site_admins.get(site, []) for site in sites):
        return f"{requested_by} (site admin)"
    return None


def with_local_operator(config: RobotConfig, user: str) -> RobotConfig:
    """`config` with the OS user `user` among the operators, when `stress.local_user_is_operator` applies.

    It applies on the embedded grid only (`backend.kind: embedded`): on a real grid, operators are named.
    """
    stress = config.stress
    if not stress.local_user_is_operator or config.backend.kind != "embedded" or user in stress.operators:
        return config
    return config.model_copy(update={"stress": stress.model_copy(update={"operators": [*stress.operators, user]})})


def queue_facts(session: Session) -> dict[str, QueueFacts]:
    rows = session.execute(select(Queue.name, Site.name, Queue.status, Queue.robot_state)
                           .join(Site, Site.id == Queue.site_id).where(Queue.retired_at.is_(None)))
    return {q: QueueFacts(site, status != "online" or state == "excluded") for q, site, status, state in rows}


def request_stress_test(session: Session, request: StressRequest, config: RobotConfig, now: datetime) -> Test:
    """Check and store a request; what the CLI and the dashboard call. Raises StressRequestError."""
    facts = queue_facts(session)
    problems = check(request, config, facts, now)
    if problems:
        raise StressRequestError(problems)
    template = session.scalars(select(Template).where(Template.name == request.template)).first()
    if template is None:
        raise StressRequestError([f"template: {request.template} is not stored yet: start the robot once first"])
    start = request.start or now
    approved = approver(request.requested_by, {facts[q].site for q in request.queues}, config)
    test = Test(template=template, category="stress", state="scheduled" if approved else "unapproved",
                start_time=start, end_time=start + (request.duration or config.stress.max_duration), created_at=now,
                requested_by=request.requested_by, max_jobs=request.jobs, concurrency=request.concurrency,
                allow_excluded=request.allow_excluded, approved_by=approved, approved_at=now if approved else None,
                comment=request.comment)
    session.add(test)
    session.flush()
    ids = dict(session.execute(select(Queue.name, Queue.id).where(Queue.name.in_(request.queues))).all())
    for name in request.queues:
        session.add(TestQueue(test_id=test.id, queue_id=ids[name], max_running_jobs=request.concurrency,
                              min_queue_depth=0, resubmit_enabled=True, max_jobs=request.jobs,
                              retries=config.stress.retries))
    session.flush()
    return test


def approve(session: Session, test_id: int, who: str, config: RobotConfig, now: datetime) -> Test:
    test = _stress_test(session, test_id)
    if who not in config.stress.operators:
        raise StressRequestError([f"approved_by: {who} is not an operator (stress.operators)"])
    if test.state != "unapproved":
        raise StressRequestError([f"state: test {test_id} is {test.state}, not waiting for approval"])
    test.state, test.approved_by, test.approved_at = "scheduled", f"{who} (operator)", now
    return test


def cancel(session: Session, test_id: int, who: str, now: datetime) -> Test:
    """Cancel: nothing more is sent, and the supervisor kills the jobs still in flight."""
    test = _stress_test(session, test_id)
    if test.state not in OPEN_STATES:
        raise StressRequestError([f"state: test {test_id} is already {test.state}"])
    test.state, test.outcome = "cancelled", f"cancelled by {who} at {now:%Y-%m-%d %H:%M} UTC"
    return test


def _stress_test(session: Session, test_id: int) -> Test:
    test = session.get(Test, test_id)
    if test is None or test.category != "stress":
        raise StressRequestError([f"id: no stress test {test_id}"])
    return test


class StressSupervisor:
    """A loop step: start due tests, stop unsafe queues, kill cancelled jobs, close finished tests."""

    def __init__(self, config: RobotConfig, backend: Backend, report: Any = None):
        self.config = config
        self.backend = backend
        self.report = report  # callable (session, test, now) -> dict, stored with a finished test

    def __call__(self, session: Session, now: datetime) -> None:
        self._start_due(session, now)
        self._safety_stop(session, now)
        self._kill_cancelled(session, now)
        self._close_finished(session, now)

    def _start_due(self, session: Session, now: datetime) -> None:
        facts = None
        for test in session.scalars(select(Test).where(Test.category == "stress", Test.state == "scheduled",
                                                       Test.start_time <= now)):
            facts = facts or queue_facts(session)
            test.state = "running"
            if test.allow_excluded:
                continue
            for pair, name in session.execute(select(TestQueue, Queue.name).join(Queue, Queue.id == TestQueue.queue_id)
                                              .where(TestQueue.test_id == test.id)):
                if facts[name].excluded:
                    pair.stopped_at, pair.stop_reason = now, f"{name} is excluded: not tested (the request does not allow it)"

    def _safety_stop(self, session: Session, now: datetime) -> None:
        rule = self.config.stress.safety
        rows = session.execute(
            select(TestQueue, Queue.name, func.count(Job.id), func.count(Job.id).filter(Job.outcome == "failed"))
            .join(Test, Test.id == TestQueue.test_id).join(Queue, Queue.id == TestQueue.queue_id)
            .join(Job, (Job.test_id == TestQueue.test_id) & (Job.queue_id == TestQueue.queue_id))
            .where(Test.category == "stress", Test.state == "running", TestQueue.stopped_at.is_(None),
                   Job.outcome.in_(["completed", "failed"]), Job.end_time >= now - rule.window)
            .group_by(TestQueue.id, Queue.name)
        ).all()
        for pair, queue, ended, failed in rows:
            if ended > rule.min_jobs and failed > rule.max_failure_fraction * ended:
                pair.stopped_at = now
                pair.stop_reason = (f"safety stop: {failed} of the {ended} jobs that ended at {queue} in the last "
                                    f"{format_duration(rule.window)} failed (more than {rule.max_failure_fraction:.0%} of more than "
                                    f"{rule.min_jobs})")
                session.add(Event(time=now, kind="stress_safety_stop", subject=queue, message=pair.stop_reason,
                                  details={"test": pair.test_id, "ended": ended, "failed": failed}))
                log.warning("stress test %s: %s", pair.test_id, pair.stop_reason)

    def _kill_cancelled(self, session: Session, now: datetime) -> None:
        ids = session.scalars(
            select(Job.panda_id).join(Test, Test.id == Job.test_id)
            .where(Test.category == "stress", Test.state == "cancelled", Job.phase == "active")
        ).all()
        if ids:
            try:
                self.backend.kill(list(ids))
            except BackendUnavailable as exc:
                session.add(Event(time=now, kind="kill_failed", subject="stress",
                                  message=f"could not kill {len(ids)} job(s) of cancelled tests: {exc}; retried"))

    def _close_finished(self, session: Session, now: datetime) -> None:
        for test in session.scalars(select(Test).where(Test.category == "stress",
                                                       Test.state.in_(["running", "cancelled"]))):
            in_flight = session.scalar(select(func.count()).select_from(Job).where(
                Job.test_id == test.id, Job.phase.in_(["recorded", "active"])))
            if in_flight:
                continue
            if test.state == "cancelled":
                if test.report is None and self.report:
                    test.report = self.report(session, test, now)
                continue
            why = self._finished(session, test, now)
            if why is None:
                continue
            test.state, test.outcome = "completed", why
            if self.report:
                test.report = self.report(session, test, now)
            session.add(Event(time=now, kind="stress_completed", subject=f"test {test.id}", message=why))

    @staticmethod
    def _finished(session: Session, test: Test, now: datetime) -> str | None:
        if now >= test.end_time:
            return f"duration over at {test.end_time:%Y-%m-%d %H:%M} UTC"
        pairs = session.scalars(select(TestQueue).where(TestQueue.test_id == test.id)).all()
        done = dict(session.execute(
            select(Job.queue_id, func.count()).where(Job.test_id == test.id, Job.retry_of.is_(None),
                                                     Job.phase == "done").group_by(Job.queue_id)).all())
        due = pending_retries(session, [test.id])
        open_pairs = [p for p in pairs if p.stopped_at is None
                      and (done.get(p.queue_id, 0) < (p.max_jobs or 0) or due.get((test.id, p.queue_id)))]
        if open_pairs:
            return None
        stopped = [p.stop_reason for p in pairs if p.stopped_at is not None]
        return "; ".join(stopped) if stopped else f"all {test.max_jobs} jobs done at every queue"


def pending_retries(session: Session, test_ids: list[int]) -> dict[tuple[int, int], list[int]]:
    """Per (test, queue): failed jobs that may still be retried (their chain is shorter than the
    pair's `retries`) and have no retry yet, oldest first."""
    if not test_ids:
        return {}
    allowed = {(t, q): n for t, q, n in session.execute(
        select(TestQueue.test_id, TestQueue.queue_id, TestQueue.retries).where(TestQueue.test_id.in_(test_ids)))}
    rows = session.execute(select(Job.id, Job.test_id, Job.queue_id, Job.retry_of, Job.outcome)
                           .where(Job.test_id.in_(test_ids), Job.phase != "lost").order_by(Job.id)).all()
    parent = {job_id: retry_of for job_id, _, _, retry_of, _ in rows}
    retried = {retry_of for *_, retry_of, _ in rows if retry_of is not None}
    due: dict[tuple[int, int], list[int]] = {}
    for job_id, test_id, queue_id, _, outcome in rows:
        if outcome != "failed" or job_id in retried:
            continue
        depth, node = 0, job_id
        while parent.get(node) is not None:
            depth, node = depth + 1, parent[node]
        if depth < allowed.get((test_id, queue_id), 0):
            due.setdefault((test_id, queue_id), []).append(job_id)
    return due
