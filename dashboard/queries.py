"""What the dashboard's pages show: pure reads from a session, returned as frozen rows.

Nothing here reads the clock (`now` is given) or changes the database. Counts and rates over a
window come from the job rollup (dashboard.rollup_queries), exact to the second; the job table is
read only for per-job details (recent jobs, distributions), limited to the window and sampled.
Statuses follow the exclusion engine's rules: a silence, then a person's override, then the
robot's own state and the status at the backend.
"""
from __future__ import annotations

import math
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Iterable, Sequence

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from blacklist.engine import INCIDENT_REPEAT
from dashboard.rollup_queries import bucket_sums, total_sums
from robot.loop import BACKEND_SETTING, LAST_STEP_SETTING
from robot.metrics import wilson_interval
from robot.rollup import DAY, HOUR, SIX_HOURS, WEEK, at, epoch, floor_to
from robot.downtimes import describe, windows_by_site
from robot.storage.models import (Cloud, Episode, Event, Job, Override, Queue, QueueTransition, Setting, Silence,
                                  Site, Template, Test, TestQueue, Ticket, TicketLink, TicketMention)
from robot.tickets.store import CENTRAL_EVENTS
from robot.vocabulary import plain_reason, queue_state

# The heatmap's cells: the window cut at whole multiples of the largest of these steps (seconds, Unix
# time) that gives it at least HEATMAP_CELLS cells; from an hour on, each is one period the rollup stores.
CELL_STEPS = (60, 120, 300, 600, 900, 1800, HOUR, 3 * HOUR, SIX_HOURS, DAY, WEEK)
HEATMAP_CELLS = 24
SERIES_POINTS = 48  # at least, in a queue page's failure rate over time
FEW_QUEUES = 500  # statuses of at most this many queues read their transitions alone
SAMPLE = 2000  # newest finished jobs behind a queue page's distributions
RECENT_JOBS = 50
QUEUE_TRANSITIONS = 200
QUEUE_TICKETS = 50
CENTRAL_CURRENT = INCIDENT_REPEAT + timedelta(minutes=15)  # the engine repeats a lasting incident hourly
UNREACHABLE_EVENTS = ("backend_unreachable", "catalogue_unreachable", "topology_unreachable", "kill_failed")
ACTUATION_EVENTS = ("actuation_failed", "status_mismatch")
ACTUATION_CURRENT = timedelta(hours=1)
RECENT_EVENTS = timedelta(minutes=15)  # without a heartbeat, unreachable events this recent are current
OVERVIEW_SUMS = ("jobs", "failed", "events", "wall_seconds", "cpu_seconds", "payload_events",
                 "payload_seconds", "failed_site", "failed_user", "failed_central", "failed_unknown", "last_end")
CLASS_SUMS = {"site": "failed_site", "user": "failed_user", "central": "failed_central", "unknown": "failed_unknown"}
SPLIT = {"queue wait": "time_queue", "stage-in": "time_stagein", "payload": "time_payload",
         "stage-out": "time_stageout"}


# -- rows --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Filters:
    start: datetime
    end: datetime
    clouds: tuple[str, ...] = ()
    sites: tuple[str, ...] = ()
    templates: tuple[str, ...] = ()
    queues: tuple[str, ...] = ()


@dataclass(frozen=True)
class QueueSummary:
    cloud: str
    site: str
    queue: str
    status: str  # online | pending | excluded | silenced | downtime (its site announced an outage)
    status_reason: str  # the last transition's reason
    jobs: int
    failed: int
    failure_rate: float | None
    events_per_second: float | None  # events / wall seconds of the completed jobs (HammerCloud's eventrate)
    last_end: datetime | None
    ci_low: float | None = None  # Wilson 95 % interval of the failure rate
    ci_high: float | None = None
    events_per_payload_second: float | None = None
    cpu_efficiency: float | None = None  # percent
    error_classes: dict[str, int] = field(default_factory=dict)
    detail: str = ""  # the silence or the person's override behind the status, if any


@dataclass(frozen=True)
class Heatmap:
    queues: list[str]
    starts: list[datetime]
    success: list[list[float | None]]
    jobs: list[list[int]]


@dataclass(frozen=True)
class Incident:
    time: datetime
    kind: str
    subject: str
    message: str
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SeriesPoint:
    start: datetime
    jobs: int
    failed: int
    rate: float | None
    low: float | None
    high: float | None


@dataclass(frozen=True)
class ErrorCount:
    code: str
    message: str
    count: int
    error_class: str = ""


@dataclass(frozen=True)
class JobRow:
    panda_id: int | None
    template: str
    status: str
    creation_time: datetime | None
    start_time: datetime | None
    end_time: datetime | None
    error_code: str
    error_diag: str
    error_class: str = ""


@dataclass(frozen=True)
class TransitionRow:
    time: datetime
    queue: str
    site: str
    cloud: str
    old: str
    new: str
    reason: str
    evidence: dict[str, Any]
    actor: str
    policy: str | None
    applied: bool
    kind: str = "status"
    read_back: str | None = None


@dataclass(frozen=True)
class EpisodeRow:
    queue: str
    start: datetime
    end: datetime | None
    kind: str  # exclusion | metrics
    summary: str
    score: float = 0.0
    link_reason: str = ""


@dataclass(frozen=True)
class TicketRow:
    id: int
    source: str
    subject: str
    state: str
    opened: datetime
    updated: datetime
    verdict: str | None
    verdict_reason: str | None
    queues: list[str]
    episodes: list[EpisodeRow]
    site_problem: bool | None = None  # is the problem the site: yes (site), no (not_site, central), unknown
    sites: list[str] = field(default_factory=list)
    requester: str = ""
    messages: int = 0


@dataclass(frozen=True)
class QueuePage:
    queue: str
    site: str
    cloud: str
    status: str
    status_reason: str
    failure_series: list[SeriesPoint]
    events_per_second: list[float]
    time_split: dict[str, float]
    error_classes: dict[str, int]
    top_errors: list[ErrorCount]
    recent_jobs: list[JobRow]
    transitions: list[TransitionRow]
    tickets: list[TicketRow]
    detail: str = ""
    jobs: int = 0
    failed: int = 0
    sampled_jobs: int = 0  # finished jobs behind the distributions (the newest SAMPLE in the window)


@dataclass(frozen=True)
class StressRow:
    id: int
    template: str
    queues: list[str]
    state: str
    requested_by: str
    approved_by: str | None
    created: datetime
    start: datetime
    end: datetime
    jobs: int  # ended (completed + failed)
    failed: int
    in_flight: int = 0
    max_jobs: int | None = None
    concurrency: int | None = None
    outcome: str | None = None
    comment: str = ""


@dataclass(frozen=True)
class StressDetail(StressRow):
    report: dict[str, Any] | None = None
    stop_reasons: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class _Place:
    id: int
    name: str
    site: str
    cloud: str
    status: str
    robot_state: str


# -- filters and statuses ------------------------------------------------------------------------
def filter_options(session: Session) -> dict[str, list[str]]:
    live = select(Queue.name, Site.name, Cloud.name).join(Site, Site.id == Queue.site_id) \
        .join(Cloud, Cloud.id == Site.cloud_id).where(Queue.retired_at.is_(None))
    rows = session.execute(live).all()
    return {"clouds": sorted({c for _, _, c in rows}), "sites": sorted({s for _, s, _ in rows}),
            "templates": sorted(session.scalars(select(Template.name))), "queues": sorted(q for q, _, _ in rows)}


def _places(session: Session, f: Filters | None, live: bool = True) -> list[_Place]:
    query = (select(Queue.id, Queue.name, Site.name, Cloud.name, Queue.status, Queue.robot_state)
             .join(Site, Site.id == Queue.site_id).join(Cloud, Cloud.id == Site.cloud_id))
    if live:
        query = query.where(Queue.retired_at.is_(None))
    if f is not None:
        for chosen, column in ((f.clouds, Cloud.name), (f.sites, Site.name), (f.queues, Queue.name)):
            if chosen:
                query = query.where(column.in_(chosen))
    places = [_Place(*row) for row in session.execute(query)]
    return sorted(places, key=lambda p: (p.cloud, p.site, p.name))


def _narrowed(f: Filters) -> bool:
    return bool(f.clouds or f.sites or f.queues)


def _template_ids(session: Session, f: Filters) -> list[int] | None:
    if not f.templates:
        return None
    return list(session.scalars(select(Template.id).where(Template.name.in_(f.templates))))


def _statuses(session: Session, places: list[_Place], now: datetime) -> dict[int, tuple[str, str, str]]:
    """Queue id -> (status, last transition's reason, the silence or override behind it)."""
    silences = {(scope, name): f"silenced by {actor} until {until:%Y-%m-%d %H:%M} UTC: {reason}"
                for scope, name, actor, until, reason in session.execute(
                    select(Silence.scope, Silence.name, Silence.actor, Silence.until, Silence.reason)
                    .where(Silence.cleared_at.is_(None), Silence.until > now).order_by(Silence.created_at))}
    overrides = {qid: (action, f"manual {action} by {actor}: {reason}") for qid, action, actor, reason in session.execute(
        select(Override.queue_id, Override.action, Override.actor, Override.reason)
        .where(Override.cleared_at.is_(None), Override.ended_at.is_(None),
               or_(Override.until.is_(None), Override.until > now))
        .order_by(Override.created_at))}
    latest = select(func.max(QueueTransition.id)).group_by(QueueTransition.queue_id)
    if len(places) <= FEW_QUEUES:  # a queue's page, a site: only their last reasons are read and put in words
        latest = latest.where(QueueTransition.queue_id.in_([p.id for p in places]))
    latest = latest.scalar_subquery()
    reasons = {queue_id: plain_reason(reason, evidence, time, new)  # in words a shifter reads
               for queue_id, reason, evidence, time, new in session.execute(
                   select(QueueTransition.queue_id, QueueTransition.reason, QueueTransition.evidence,
                          QueueTransition.time, QueueTransition.new).where(QueueTransition.id.in_(latest)))}
    downtimes = windows_by_site(session, now, now)  # the outages going on now, per site
    found = {}
    for place in places:
        reason = reasons.get(place.id, "")
        silence = next((silences[key] for key in (("queue", place.name), ("site", place.site),
                                                  ("cloud", place.cloud)) if key in silences), None)
        override = overrides.get(place.id)
        down = downtimes.get(place.site)
        if silence:
            found[place.id] = ("silenced", reason, silence)
        elif override:
            found[place.id] = ("excluded" if override[0] == "exclude" else "online", reason, override[1])
        elif down:
            found[place.id] = ("downtime", reason, f"{describe(down[0])}: announced by the site, not judged")
        elif place.status != "online":
            found[place.id] = ("excluded", reason, f"status {place.status} at the backend")
        elif place.robot_state == "excluded":  # decided but not applied (dry-run), or not read back
            found[place.id] = ("excluded", reason, f"{queue_state(place.status, place.robot_state)}: nothing changed at "
                                                   "the backend")
        elif place.robot_state == "pending":
            found[place.id] = ("pending", reason, "")
        else:
            found[place.id] = ("online", reason, "")
    return found


def _ratio(top: float, bottom: float) -> float | None:
    return top / bottom if bottom else None


# -- overview ------------------------------------------------------------------------------------
def overview(session: Session, f: Filters, now: datetime) -> list[QueueSummary]:
    places = _places(session, f)
    statuses = _statuses(session, places, now)
    sums = total_sums(session, f.start, f.end, OVERVIEW_SUMS,
                      [p.id for p in places] if _narrowed(f) else None, _template_ids(session, f))
    found = []
    for place in places:
        s = sums.get(place.id) or dict.fromkeys(OVERVIEW_SUMS, 0) | {"last_end": None}
        jobs, failed = int(s["jobs"]), int(s["failed"])
        low, high = wilson_interval(failed, jobs) if jobs else (None, None)
        status, reason, detail = statuses[place.id]
        found.append(QueueSummary(
            cloud=place.cloud, site=place.site, queue=place.name, status=status, status_reason=reason, jobs=jobs,
            failed=failed, failure_rate=_ratio(failed, jobs), events_per_second=_ratio(s["events"], s["wall_seconds"]),
            last_end=s["last_end"], ci_low=low, ci_high=high,
            events_per_payload_second=_ratio(s["payload_events"], s["payload_seconds"]),
            cpu_efficiency=None if not s["wall_seconds"] else 100.0 * s["cpu_seconds"] / s["wall_seconds"],
            error_classes={k: int(s[c]) for k, c in CLASS_SUMS.items() if s[c]}, detail=detail))
    return found


def heatmap_edges(start: datetime, end: datetime, cells: int = HEATMAP_CELLS) -> list[datetime]:
    """The edges of a heatmap's cells (or of a series' points): `start`, the whole multiples of the
    step (CELL_STEPS) in between, `end`; the largest step giving at least `cells` cells. Cells of an
    hour or more are stored rollup periods, so a cell costs one row per queue and template whatever
    the window; only the first and the last cell read jobs at their edges."""
    a, b = epoch(start), epoch(end)
    step = max((s for s in CELL_STEPS if (b - a) / s >= cells), default=CELL_STEPS[0])
    inner = range(floor_to(a, step) + step, math.ceil(b / step) * step, step)
    return [start, *(at(t) for t in inner), end]


def success_heatmap(session: Session, f: Filters) -> Heatmap:
    """Success rate per queue and cell (`heatmap_edges`), exact at every window."""
    places = _places(session, f)
    if f.end <= f.start:
        return Heatmap([p.name for p in places], [], [[] for _ in places], [[] for _ in places])
    edges = heatmap_edges(f.start, f.end)
    queue_ids = [p.id for p in places] if _narrowed(f) else None
    sums = bucket_sums(session, edges, ("jobs", "completed"), queue_ids, _template_ids(session, f))
    cells = len(edges) - 1
    success, jobs = [], []
    for place in places:
        found = sums.get(place.id)
        if found is None:
            jobs.append([0] * cells)
            success.append([None] * cells)
            continue
        jobs.append(found["jobs"])  # integers (bucket_sums casts the sums to the columns' type)
        success.append([c / n if n else None for c, n in zip(found["completed"], found["jobs"])])
    return Heatmap([p.name for p in places], edges[:-1], success, jobs)


def active_incidents(session: Session, now: datetime) -> list[Incident]:
    """Central incidents the engine raised within its repeat time, the backend problems of the last
    step (from its heartbeat), and failed or mismatched status changes of the last hour."""
    found = [Incident(t, k, s, m, d) for t, k, s, m, d in session.execute(
        select(Event.time, Event.kind, Event.subject, Event.message, Event.details)
        .where(or_(Event.kind.in_(CENTRAL_EVENTS) & (Event.time > now - CENTRAL_CURRENT),
                   Event.kind.in_(ACTUATION_EVENTS) & (Event.time > now - ACTUATION_CURRENT)),
               Event.time <= now))]
    backend = session.get(Setting, BACKEND_SETTING)
    last_step = session.get(Setting, LAST_STEP_SETTING)
    if backend is None or last_step is None:
        since: datetime | None = now - RECENT_EVENTS
    elif backend.value != "ok":
        since = datetime.fromisoformat(last_step.value)
    else:
        since = None
    if since is not None:
        unreachable = [Incident(t, k, s, m, d) for t, k, s, m, d in session.execute(
            select(Event.time, Event.kind, Event.subject, Event.message, Event.details)
            .where(Event.kind.in_(UNREACHABLE_EVENTS), Event.time >= since, Event.time <= now))]
        if not unreachable and backend is not None and backend.value != "ok":
            unreachable = [Incident(since, "backend_unavailable", "backend", backend.value)]
        found += unreachable
    return sorted(found, key=lambda i: i.time, reverse=True)


# -- one queue -------------------------------------------------------------------------------------
def queue_page(session: Session, queue: str, f: Filters, now: datetime) -> QueuePage:
    places = _places(session, Filters(f.start, f.end, queues=(queue,)), live=False)
    if not places:
        raise LookupError(f"unknown queue {queue!r}")
    place = places[0]
    status, reason, detail = _statuses(session, places, now)[place.id]
    template_ids = _template_ids(session, f)
    series = _failure_series(session, place.id, f, template_ids)
    totals = total_sums(session, f.start, f.end, ("jobs", "failed", *CLASS_SUMS.values()), [place.id],
                        template_ids).get(place.id, {})
    sample = _finished_jobs(session, place.id, f, template_ids)
    rates = [events / (end - start).total_seconds() for outcome, events, start, end, *_ in sample
             if outcome == "completed" and start and end and end > start]
    split = {}
    for i, label in enumerate(SPLIT):
        values = [row[4 + i] for row in sample if row[4 + i] is not None]
        if values:
            split[label] = float(statistics.median(values))
    return QueuePage(
        queue=place.name, site=place.site, cloud=place.cloud, status=status, status_reason=reason,
        failure_series=series, events_per_second=rates, time_split=split,
        error_classes={k: int(totals[c]) for k, c in CLASS_SUMS.items() if totals.get(c)},
        top_errors=_top_errors(session, place.id, f, template_ids), recent_jobs=_recent_jobs(session, place.id, f),
        transitions=transitions(session, Filters(f.start, f.end, queues=(place.name,)), QUEUE_TRANSITIONS),
        tickets=_queue_tickets(session, place.id, place.name), detail=detail,
        jobs=int(totals.get("jobs", 0)), failed=int(totals.get("failed", 0)), sampled_jobs=len(sample))


def _failure_series(session: Session, queue_id: int, f: Filters, template_ids: list[int] | None) -> list[SeriesPoint]:
    """The failure rate per point, cut as the heatmap's cells (at least SERIES_POINTS)."""
    if f.end <= f.start:
        return []
    edges = heatmap_edges(f.start, f.end, SERIES_POINTS)
    cells = bucket_sums(session, edges, ("jobs", "failed"), [queue_id], template_ids).get(queue_id)
    points = []
    for k, start in enumerate(edges[:-1]):
        jobs, failed = (int(cells["jobs"][k]), int(cells["failed"][k])) if cells else (0, 0)
        low, high = wilson_interval(failed, jobs) if jobs else (None, None)
        points.append(SeriesPoint(start, jobs, failed, _ratio(failed, jobs), low, high))
    return points


def _in_window(query: Any, queue_id: int, f: Filters, template_ids: list[int] | None) -> Any:
    # outcomes are set when a job is done; no test of the phase, whose index SQLite would prefer
    query = query.where(Job.queue_id == queue_id, Job.end_time >= f.start, Job.end_time < f.end)
    if template_ids is not None:
        query = query.join(Test, Test.id == Job.test_id).where(Test.template_id.in_(template_ids))
    return query


def _finished_jobs(session: Session, queue_id: int, f: Filters, template_ids: list[int] | None) -> list[Any]:
    """The newest SAMPLE completed or failed jobs of the window: what the distributions are drawn from."""
    query = select(Job.outcome, Job.n_events, Job.start_time, Job.end_time, *(getattr(Job, c) for c in SPLIT.values()))
    query = _in_window(query, queue_id, f, template_ids).where(Job.outcome.in_(["completed", "failed"]))
    return session.execute(query.order_by(Job.end_time.desc()).limit(SAMPLE)).all()


def _top_errors(session: Session, queue_id: int, f: Filters, template_ids: list[int] | None,
                limit: int = 10) -> list[ErrorCount]:
    query = select(Job.error_name, Job.error_code, Job.error_source, Job.error_class, Job.error_diag)
    query = _in_window(query, queue_id, f, template_ids).where(Job.outcome == "failed")
    counts: Counter[tuple[str, str]] = Counter()
    messages: dict[tuple[str, str], str] = {}
    for name, code, source, klass, diag in session.execute(query.order_by(Job.end_time.desc())):
        key = (name or str(code), klass or "unknown")
        counts[key] += 1
        messages.setdefault(key, f"{source or '?'} {code}: {(diag or '')[:300]}")
    return [ErrorCount(code, messages[(code, klass)], n, klass) for (code, klass), n in counts.most_common(limit)]


def _recent_jobs(session: Session, queue_id: int, f: Filters) -> list[JobRow]:
    """Jobs in flight first, then the newest that ended in the window."""
    columns = (Job.panda_id, Template.name, Job.phase, Job.job_status, Job.outcome, Job.creation_time,
               Job.start_time, Job.end_time, Job.error_name, Job.error_code, Job.error_diag, Job.error_class)
    base = select(*columns).join(Test, Test.id == Job.test_id).join(Template, Template.id == Test.template_id)
    flying = session.execute(base.where(Job.queue_id == queue_id, Job.phase.in_(["recorded", "active"]))
                             .order_by(Job.id.desc()).limit(RECENT_JOBS)).all()
    ended = session.execute(base.where(Job.queue_id == queue_id, Job.end_time >= f.start, Job.end_time < f.end,
                                       Job.outcome.is_not(None)).order_by(Job.end_time.desc()).limit(RECENT_JOBS)).all()
    found = []
    for pid, template, phase, job_status, outcome, created, started, ended_at, name, code, diag, klass in \
            [*flying, *ended][:RECENT_JOBS]:
        found.append(JobRow(pid, template, outcome if phase == "done" else (job_status or phase), created, started,
                            ended_at, f"{name} ({code})" if name else "", diag or "", klass or ""))
    return found


# -- exclusion history, tickets, stress tests ----------------------------------------------------------
def transitions(session: Session, f: Filters, limit: int = 500) -> list[TransitionRow]:
    query = (select(QueueTransition, Queue.name, Site.name, Cloud.name).join(Queue, Queue.id == QueueTransition.queue_id)
             .join(Site, Site.id == Queue.site_id).join(Cloud, Cloud.id == Site.cloud_id)
             .where(QueueTransition.time >= f.start, QueueTransition.time < f.end))
    for chosen, column in ((f.clouds, Cloud.name), (f.sites, Site.name), (f.queues, Queue.name)):
        if chosen:
            query = query.where(column.in_(chosen))
    rows = session.execute(query.order_by(QueueTransition.time.desc(), QueueTransition.id.desc()).limit(limit))
    return [TransitionRow(t.time, q, s, c, t.old, t.new, t.reason, t.evidence or {}, t.actor, t.policy, t.applied,
                          t.kind, t.read_back) for t, q, s, c in rows]


def tickets(session: Session, limit: int = 500) -> list[TicketRow]:
    """Newest first, with the verdict (is the problem the site?) and the degraded episodes it was linked to."""
    found = session.execute(select(*TICKET_COLUMNS).order_by(Ticket.last_message_at.desc(), Ticket.id.desc())
                            .limit(limit)).all()
    return _ticket_rows(session, found)


def ticket(session: Session, ticket_id: int) -> TicketRow:
    """One ticket, as `tickets` shows it; LookupError if there is none with that id."""
    found = session.execute(select(*TICKET_COLUMNS).where(Ticket.id == ticket_id)).all()
    if not found:
        raise LookupError(f"no ticket {ticket_id}")
    return _ticket_rows(session, found)[0]


TICKET_COLUMNS = (Ticket.id, Ticket.source, Ticket.subject, Ticket.state, Ticket.first_message_at,
                  Ticket.last_message_at, Ticket.verdict, Ticket.verdict_reason, Ticket.requester, Ticket.messages)


def _ticket_rows(session: Session, found: Sequence[Any]) -> list[TicketRow]:
    ids = [t.id for t in found]
    queues: dict[int, set[str]] = defaultdict(set)
    sites: dict[int, set[str]] = defaultdict(set)
    episodes: dict[int, list[EpisodeRow]] = defaultdict(list)
    for chunk in _chunks(ids):
        for ticket_id, queue, site in session.execute(
            select(TicketMention.ticket_id, TicketMention.queue, TicketMention.site)
            .where(TicketMention.ticket_id.in_(chunk), TicketMention.complaint.is_(True))
        ):
            if queue:
                queues[ticket_id].add(queue)
            if site:
                sites[ticket_id].add(site)
        for ticket_id, link, episode, queue in session.execute(
            select(TicketLink.ticket_id, TicketLink, Episode, Queue.name)
            .join(Episode, Episode.id == TicketLink.episode_id).join(Queue, Queue.id == Episode.queue_id)
            .where(TicketLink.ticket_id.in_(chunk)).order_by(TicketLink.score.desc(), Episode.start)
        ):
            episodes[ticket_id].append(EpisodeRow(queue, episode.start, episode.end, episode.source, episode.reason,
                                                  link.score, link.reason))
    answer = {"site": True, "not_site": False, "central": False}
    return [TicketRow(t.id, t.source, t.subject, t.state, t.first_message_at, t.last_message_at, t.verdict,
                      t.verdict_reason, sorted(queues[t.id]), episodes[t.id], answer.get(t.verdict or ""),
                      sorted(sites[t.id]), t.requester, t.messages) for t in found]


def _queue_tickets(session: Session, queue_id: int, name: str) -> list[TicketRow]:
    named = select(TicketMention.ticket_id).where(TicketMention.queue == name)
    linked = select(TicketLink.ticket_id).join(Episode, Episode.id == TicketLink.episode_id) \
        .where(Episode.queue_id == queue_id)
    found = session.execute(select(*TICKET_COLUMNS).where(or_(Ticket.id.in_(named), Ticket.id.in_(linked)))
                            .order_by(Ticket.last_message_at.desc()).limit(QUEUE_TICKETS)).all()
    return _ticket_rows(session, found)


def _chunks(ids: Sequence[int], size: int = 500) -> Iterable[list[int]]:
    for i in range(0, len(ids), size):
        yield list(ids[i:i + size])


def stress_tests(session: Session) -> list[StressRow]:
    """Every stress test, newest first, with its queues and job counts."""
    tests = session.execute(select(Test, Template.name).join(Template, Template.id == Test.template_id)
                            .where(Test.category == "stress").order_by(Test.id.desc())).all()
    return [_stress_row(test, template, facts) for (test, template), facts
            in zip(tests, _stress_facts(session, [t.id for t, _ in tests]))]


def _stress_facts(session: Session, ids: list[int]) -> list[dict[str, Any]]:
    queues: dict[int, list[str]] = defaultdict(list)
    stops: dict[int, dict[str, str]] = defaultdict(dict)
    counts: dict[int, Counter[str]] = defaultdict(Counter)
    for chunk in _chunks(ids):
        for test_id, queue, reason in session.execute(
            select(TestQueue.test_id, Queue.name, TestQueue.stop_reason).join(Queue, Queue.id == TestQueue.queue_id)
            .where(TestQueue.test_id.in_(chunk)).order_by(Queue.name)
        ):
            queues[test_id].append(queue)
            if reason:
                stops[test_id][queue] = reason
        for test_id, outcome, phase, n in session.execute(
            select(Job.test_id, Job.outcome, Job.phase, func.count()).where(Job.test_id.in_(chunk))
            .group_by(Job.test_id, Job.outcome, Job.phase)
        ):
            counts[test_id][outcome or phase] += n
    return [{"queues": queues[i], "stops": stops[i], "counts": counts[i]} for i in ids]


def _stress_row(test: Test, template: str, facts: dict[str, Any]) -> StressRow:
    counts = facts["counts"]
    return StressRow(test.id, template, facts["queues"], test.state, test.requested_by, test.approved_by,
                     test.created_at, test.start_time, test.end_time, counts["completed"] + counts["failed"],
                     counts["failed"], counts["recorded"] + counts["active"], test.max_jobs, test.concurrency,
                     test.outcome, test.comment)


def stress_test(session: Session, test_id: int) -> StressDetail:
    found = session.execute(select(Test, Template.name).join(Template, Template.id == Test.template_id)
                            .where(Test.id == test_id, Test.category == "stress")).first()
    if found is None:
        raise LookupError(f"no stress test {test_id}")
    test, template = found
    facts = _stress_facts(session, [test.id])[0]
    row = _stress_row(test, template, facts)
    return StressDetail(**{k: getattr(row, k) for k in StressRow.__dataclass_fields__},
                        report=test.report, stop_reasons=facts["stops"])
