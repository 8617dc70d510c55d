"""Import tickets into the database (incremental and idempotent) and judge them.

Re-importing the same archive adds nothing; a thread with new messages is updated (and a reply
re-opens it). What a ticket names is extracted again whenever it changes; PanDA job IDs are
resolved to their queue by asking the backend.
"""
from __future__ import annotations

import bisect
import functools
import gc
import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, Iterable, Sequence, TypeVar

from sqlalchemy import bindparam, delete, select, update
from sqlalchemy.orm import Session

from robot.backends.base import BackendUnavailable, JobReport
from robot.classify import classify_report, load_table
from robot.downtimes import describe, windows_by_site
from robot.storage.driver_rows import append
from robot.storage.models import (Cloud, Episode, Event, Job, Queue, Site, StorageEndpoint, Ticket, TicketLink,
                                  TicketMention, TicketMessage, queue_endpoint)
from robot.tickets.episodes import refresh_episodes
from robot.tickets.extract import Mention, TopologyIndex, extract_thread
from robot.tickets.threads import DEFAULT_SUPPORT_ADDRESSES, Thread
from robot.tickets.verdict import (DOWNTIME_MARGIN, INCIDENT_MARGIN, LEAD, PLACE_KINDS, QUIET_LEAD, CentralIncident,
                                   DowntimeRef, EpisodeRef, Figures, Judgement, Named, Places, judge)

log = logging.getLogger(__name__)

CENTRAL_EVENTS = ("mass_failure", "cloud_failure", "central_errors", "central_failures")
JobLookup = Callable[[Sequence[int]], dict[int, JobReport | None]]


Work = TypeVar("Work", bound=Callable[..., Any])


def collector_paused(work: Work) -> Work:
    """Run `work` with the cycle collector paused (as it was after). An import holds a whole archive, its
    threads, mentions and rows until it ends, and the collector's full passes over that growing heap
    were a tenth of the CPU of importing 100,000 messages; what it builds is freed by reference counting
    (plain records, tuples and rows, no reference cycles to look for)."""
    @functools.wraps(work)
    def paused(*args: Any, **kwargs: Any) -> Any:
        if not gc.isenabled():
            return work(*args, **kwargs)
        gc.disable()
        try:
            return work(*args, **kwargs)
        finally:
            gc.enable()
    return paused  # type: ignore[return-value]


@dataclass
class ImportSummary:
    threads: int = 0
    new_tickets: int = 0
    updated_tickets: int = 0
    new_messages: int = 0
    skipped: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def store_threads(session: Session, source: str, threads: Iterable[Thread], index: TopologyIndex,
                  error_table: Any, lookup_jobs: JobLookup | None = None,
                  support_addresses: Iterable[str] = DEFAULT_SUPPORT_ADDRESSES) -> tuple[ImportSummary, list[int]]:
    """Upsert tickets and their messages; returns the summary and the ids of changed tickets.

    Bulk work: one query for the known tickets and messages, bulk inserts, and one lookup for all
    the PanDA jobs the changed tickets name.
    """
    summary = ImportSummary()
    known_ids = set(session.scalars(select(TicketMessage.message_id)))
    tickets = {key: [id_, state, labels, last, count] for id_, key, state, labels, last, count in session.execute(
        select(Ticket.id, Ticket.key, Ticket.state, Ticket.labels, Ticket.last_message_at, Ticket.messages)
        .where(Ticket.source == source))}  # plain rows, changed in place: no ORM objects to build and flush
    changed: list[tuple[str, Thread]] = []
    created: dict[str, tuple[Any, ...]] = {}  # key -> the new ticket's TICKET_FIXED columns
    new_messages: list[tuple[str, Any]] = []
    for item in threads:
        summary.threads += 1
        row = tickets.get(item.key)
        fresh = [m for m in item.messages if m.message_id not in known_ids]
        if row is not None and not fresh and row[1] == item.state:
            continue
        if row is None:
            first = item.messages[0]
            row = tickets[item.key] = [None, item.state, list(item.labels), item.messages[-1].date, 0]
            created[item.key] = (source, item.key, item.subject[:2000], first.sender[:256], first.date)
            summary.new_tickets += 1
        else:
            summary.updated_tickets += 1
        new_messages += [(item.key, m) for m in fresh]
        known_ids.update(m.message_id for m in fresh)
        summary.new_messages += len(fresh)
        row[1:] = [item.state, sorted(set(row[2]) | set(item.labels)), max(row[3], item.messages[-1].date),
                   row[4] + len(fresh)]
        changed.append((item.key, item))
    values = {key: dict(zip(TICKET_CHANGING, tickets[key][1:])) for key, _ in changed}
    if created:
        append(session, Ticket.__table__, (*TICKET_FIXED, *TICKET_CHANGING),
                [(*fixed, *values[key].values()) for key, fixed in created.items()])
        keys = list(created)
        for chunk in range(0, len(keys), 500):  # their ids
            for id_, key in session.execute(select(Ticket.id, Ticket.key).where(
                    Ticket.source == source, Ticket.key.in_(keys[chunk:chunk + 500]))):
                tickets[key][0] = id_
    updated = [{"id_": tickets[key][0], **columns} for key, columns in values.items() if key not in created]
    if updated:
        _update_tickets(session, updated)
    if new_messages:
        append(session, TicketMessage.__table__, ("ticket_id", "message_id", "date", "sender", "subject", "body"),
                [(tickets[key][0], m.message_id[:512], m.date, m.sender[:256], m.subject[:2000], m.body)
                 for key, m in new_messages])
    ids = [(tickets[key][0], item) for key, item in changed]
    _store_mentions(session, ids, index, error_table, lookup_jobs, {a.casefold() for a in support_addresses})
    return summary, [ticket_id for ticket_id, _ in ids]


TICKET_FIXED = ("source", "key", "subject", "requester", "first_message_at")  # set when a ticket is created
TICKET_CHANGING = ("state", "labels", "last_message_at", "messages")  # set again when new mail comes


def _update_tickets(session: Session, rows: list[dict[str, Any]]) -> None:
    """Set columns of stored tickets (rows: `id_` and the columns), in one executemany; the tickets
    the session holds as objects are expired, so that they read the new values."""
    session.execute(update(Ticket.__table__).where(Ticket.__table__.c.id == bindparam("id_")), rows)
    held = {row["id_"] for row in rows}
    for (cls, ident, _token), obj in list(session.identity_map.items()):
        if cls is Ticket and ident[0] in held:
            session.expire(obj)


@dataclass(frozen=True)
class JobFact:
    """Where a pasted PanDA job ran and how it ended, as the robot or PanDA knows it."""

    queue: str
    status: str  # PanDA's jobStatus
    error_class: str | None = None  # failed jobs: site | user | central | unknown; finished: none
    error: str = ""  # e.g. "pilot 1099 STAGEINFAILED: Get error: ..."
    code: int | None = None

    def snippet(self) -> str:
        """Stored with the job's `job_error` mention: the class first, so that a verdict reads it back."""
        return f"{self.error_class}: {self.status}" + (f", {self.error}" if self.error else "")


def _store_mentions(session: Session, changed: list[tuple[int, Thread]], index: TopologyIndex,
                    error_table: Any, lookup_jobs: JobLookup | None, support: set[str]) -> None:
    """What each changed ticket names, extracted again from all its messages.

    A pasted PanDA job gets a second mention, `job_error`, with how it ended (the class of its error
    leads its snippet); what was already found about a job is reused, not asked again.
    """
    if not changed:
        return
    found = {ticket_id: extract_thread(item.subject, [(m.sender.casefold() in support, m.body) for m in item.messages],
                                       index, error_table) for ticket_id, item in changed}
    jobs = sorted({int(m.value) for ms in found.values() for m in ms if m.kind == "panda_id" and m.value.isdigit()})
    known: dict[int, JobFact] = {}  # what earlier imports found about these jobs, in any ticket
    for chunk in range(0, len(jobs), 500):
        for m in session.scalars(select(TicketMention).where(
                TicketMention.kind == "job_error", TicketMention.value.in_([str(p) for p in jobs[chunk:chunk + 500]]))):
            klass, _, rest = m.snippet.partition(": ")
            status, _, error = rest.partition(", ")
            if m.queue:
                known[int(m.value)] = JobFact(m.queue, status, klass, error, m.code)
    ids = [ticket_id for ticket_id, _ in changed]
    for chunk in range(0, len(ids), 500):
        session.execute(delete(TicketMention).where(TicketMention.ticket_id.in_(ids[chunk:chunk + 500])))
    facts = {pid: known[pid] for pid in jobs if pid in known}
    facts.update(_job_facts(session, [pid for pid in jobs if pid not in facts], lookup_jobs, error_table))
    places = queue_places(session)
    rows = []
    for ticket_id, mentions in found.items():
        for mention in mentions:
            queue, site, cloud = mention.queue, mention.site, mention.cloud
            fact = facts.get(int(mention.value)) if mention.kind == "panda_id" and mention.value.isdigit() else None
            if fact is not None:
                queue = fact.queue
                site, cloud = places.get(queue, (None, None))
            value = mention.value[:256]
            rows.append((ticket_id, mention.kind, value, queue, site, cloud, mention.complaint, mention.code,
                         mention.snippet[:300]))
            if fact is not None and fact.error_class:
                rows.append((ticket_id, "job_error", value, queue, site, cloud, mention.complaint, fact.code,
                             fact.snippet()[:300]))
    append(session, TicketMention.__table__, MENTION_STORED, rows)


def _job_facts(session: Session, panda_ids: list[int], lookup_jobs: JobLookup | None,
               error_table: Any) -> dict[int, JobFact]:
    """Where pasted PanDA jobs ran and how they ended: the robot's own test jobs first, then the backend
    (one batched call; a backend that cannot be reached leaves them unresolved)."""
    if not panda_ids:
        return {}
    found: dict[int, JobFact] = {}
    for chunk in range(0, len(panda_ids), 500):
        for pid, queue, status, outcome, klass, name, code, diag in session.execute(
                select(Job.panda_id, Queue.name, Job.job_status, Job.outcome, Job.error_class, Job.error_name,
                       Job.error_code, Job.error_diag).join(Queue, Queue.id == Job.queue_id)
                .where(Job.panda_id.in_(panda_ids[chunk:chunk + 500]))):
            failed = outcome == "failed"
            found[pid] = JobFact(queue, str(status), (klass or "unknown") if failed else
                                 "none" if outcome == "completed" else None,
                                 f"{name}: {diag or ''}".strip(": ") if failed else "", code if failed else None)
    missing = [p for p in panda_ids if p not in found]
    if missing and lookup_jobs is not None:
        try:
            reports = lookup_jobs(missing)
        except BackendUnavailable as exc:
            log.warning("PanDA jobs %s could not be looked up: %s", missing[:5], exc)
            reports = {}
        for panda_id, report in reports.items():
            if report is not None and report.queue:
                found[panda_id] = _fact(report, error_table)
    return found


def _fact(report: JobReport, error_table: Any) -> JobFact:
    status = report.job_status.value
    if status == "finished":
        return JobFact(report.queue, status, "none")
    if status not in ("failed", "cancelled", "closed"):
        return JobFact(report.queue, status)
    verdict = classify_report(error_table or {}, report)
    return JobFact(report.queue, status, verdict.klass, f"{verdict.source} {verdict.code} {verdict.name}: "
                   f"{verdict.diag}".strip(": "), verdict.code or None)


@collector_paused
def judge_tickets(session: Session, now: datetime, ticket_ids: Iterable[int] | None = None,
                  error_table: Any = None) -> int:
    """Refresh the episodes, then link and judge the given tickets (default: every open one)."""
    table = error_table if error_table is not None else load_table()
    query = select(Ticket.id, Ticket.first_message_at, Ticket.last_message_at)  # plain rows: no ORM objects
    tickets: list[Any] = []
    if ticket_ids is not None:
        ids = list(ticket_ids)
        for chunk in range(0, len(ids), 500):
            tickets += session.execute(query.where(Ticket.id.in_(ids[chunk:chunk + 500]))).all()
    else:
        tickets = session.execute(query.where(Ticket.state != "closed")).all()
    if not tickets:
        return 0
    since = min(t.first_message_at for t in tickets) - LEAD
    refresh_episodes(session, since, now)
    places = queue_places(session)
    where = _places(session, places)
    episodes = [EpisodeRef(e.id, name, *places[name], e.start, e.end, e.source, e.reason, e.error_classes,
                           (e.evidence or {}).get("policy_reason", ""))
                for e, name in session.execute(select(Episode, Queue.name).join(Queue, Queue.id == Episode.queue_id))]
    incidents = central_incidents(session, since - INCIDENT_MARGIN)
    downtimes = [DowntimeRef(d.site, d.start, d.end, describe(d)) for found in
                 windows_by_site(session, since - DOWNTIME_MARGIN, now).values() for d in found]
    named: dict[int, list[Named]] = {}
    wanted = {t.id for t in tickets}
    for ticket_id, kind, value, queue, site, cloud, complaint, code, snippet in session.connection().execute(
            select(*MENTION_COLUMNS).where(TicketMention.ticket_id.in_(
                select(Ticket.id).where(Ticket.last_message_at >= since)))).all():  # Core rows: no ORM loading
        if ticket_id in wanted:
            named.setdefault(ticket_id, []).append(Named(kind, value, queue, site, cloud, complaint,
                                                         _error_class(kind, code, snippet, table)))
    results = TestResults(session, since - QUIET_LEAD, now)
    ids = [t.id for t in tickets]
    for chunk in range(0, len(ids), 500):
        session.execute(delete(TicketLink).where(TicketLink.ticket_id.in_(ids[chunk:chunk + 500])))
    links, verdicts = [], []
    for ticket in tickets:
        result = judge_ticket(ticket.first_message_at, ticket.last_message_at, named.get(ticket.id, []), episodes,
                              results, incidents, where, downtimes)
        verdicts.append({"id_": ticket.id, "verdict": result.verdict, "verdict_reason": result.reason,
                         "verdict_evidence": result.evidence, "judged_at": now})
        links += [(ticket.id, e, score, why, now) for e, score, why in result.links]
    _update_tickets(session, verdicts)
    append(session, TicketLink.__table__, ("ticket_id", "episode_id", "score", "reason", "created_at"), links)
    return len(tickets)


def judge_ticket(first: datetime, last: datetime, named: list[Named], episodes: list[EpisodeRef],
                 results: TestResults, incidents: list[CentralIncident], places: Places,
                 downtimes: Sequence[DowntimeRef] = ()) -> Judgement:
    """One ticket's verdict: the test figures of the places it names, and of the whole grid, then `judge`."""
    queues = {q for n in named if n.complaint for q in places.queues(n)}
    figures = results.figures(queues, first - LEAD, last)
    # the whole grid's figures are only read for a ticket that names no place (`judge`, step 5)
    names_a_place = any(n.complaint and n.kind in PLACE_KINDS for n in named)
    grid = None if names_a_place else results.totals(first - QUIET_LEAD, last)
    return judge(first, last, named, episodes, figures, incidents, places, grid, downtimes)


def named_from(mention: Mention) -> Named:
    """A freshly extracted mention as the verdict reads it (stored ones are read by judge_tickets)."""
    return Named(mention.kind, mention.value, mention.queue, mention.site, mention.cloud, mention.complaint,
                 mention.error_class.klass if mention.error_class is not None else None)


def central_incidents(session: Session, since: datetime) -> list[CentralIncident]:
    """The central incidents the robot recorded: waves of central failures (with their start and end)
    and the exclusion engine's mass events (at one time)."""
    found = []
    for time, kind, message, details in session.execute(
            select(Event.time, Event.kind, Event.message, Event.details)
            .where(Event.kind.in_(CENTRAL_EVENTS), Event.time >= since).order_by(Event.time)):
        details = details or {}
        start = datetime.fromisoformat(details["start"]) if details.get("start") else time
        end = datetime.fromisoformat(details["end"]) if details.get("end") else time
        found.append(CentralIncident(start, end, kind, message, tuple(details.get("queues", ()))))
    return found


MENTION_STORED = ("ticket_id", "kind", "value", "queue", "site", "cloud", "complaint", "code", "snippet")
MENTION_COLUMNS = tuple(getattr(TicketMention, name) for name in MENTION_STORED)


def _error_class(kind: str, code: int | None, snippet: str, table: Any) -> str | None:
    """The class of an error a stored mention quotes (from the error table), or of a pasted job's error."""
    if kind == "job_error":
        klass = snippet.partition(": ")[0]
        return klass if klass in ("site", "user", "central", "unknown", "none") else None
    if code is not None and kind in ("error_code", "error_text"):
        known = table.get(("pilot", code))
        return known.klass if known is not None else None
    return None


def _places(session: Session, places: dict[str, tuple[str, str]]) -> Places:
    site_queues: dict[str, list[str]] = {}
    for queue, (site, _cloud) in places.items():
        site_queues.setdefault(site, []).append(queue)
    endpoint_queues: dict[str, list[str]] = {}
    for queue, endpoint in session.execute(
            select(Queue.name, StorageEndpoint.name).join(queue_endpoint, queue_endpoint.c.queue_id == Queue.id)
            .join(StorageEndpoint, StorageEndpoint.id == queue_endpoint.c.endpoint_id)):
        endpoint_queues.setdefault(endpoint.lower(), []).append(queue)
    return Places(site_queues, endpoint_queues)


class TestResults:
    """The robot's final test results since a time, per queue in time order, for quick counting.

    Per queue: the end times, and running counts of failures and site failures, so that a window's
    figures are two binary searches and two subtractions, however many results it holds (judging
    100,000 tickets asks for the whole grid's totals once per ticket).
    """

    __test__ = False  # not a pytest class

    def __init__(self, session: Session, since: datetime, until: datetime):
        self._index((queue, end, outcome == "failed", klass == "site") for queue, end, outcome, klass in session.execute(
            select(Queue.name, Job.end_time, Job.outcome, Job.error_class).join(Queue, Queue.id == Job.queue_id)
            .where(Job.outcome.in_(["completed", "failed"]), Job.end_time >= since, Job.end_time <= until)
            .order_by(Job.end_time)))

    @classmethod
    def from_rows(cls, rows: Iterable[tuple[str, datetime, bool, str | None]]) -> TestResults:
        """From (queue, end time, failed, error class) rows, e.g. a history built in memory."""
        results = cls.__new__(cls)
        results._index((queue, end, failed, failed and klass == "site")
                       for queue, end, failed, klass in sorted(rows, key=lambda r: r[1]))
        return results

    def _index(self, rows: Iterable[tuple[str, datetime, bool, bool]]) -> None:
        """(queue, end, failed, site failed) rows in time order: per queue, the end times and the running
        counts of failures and site failures before each."""
        self._by_queue: dict[str, tuple[list[datetime], list[int], list[int]]] = {}
        for queue, end, failed, site_failed in rows:
            found = self._by_queue.get(queue)
            if found is None:
                found = self._by_queue[queue] = ([], [0], [0])
            times, failures, site = found
            times.append(end)
            failures.append(failures[-1] + bool(failed))
            site.append(site[-1] + bool(site_failed))

    def _window(self, queue: str, since: datetime, until: datetime) -> tuple[int, int, int]:
        """(jobs, failed, site failed) of one queue's results that ended in [since, until]."""
        times, failures, site = self._by_queue[queue]
        lo, hi = bisect.bisect_left(times, since), bisect.bisect_right(times, until)
        return hi - lo, failures[hi] - failures[lo], site[hi] - site[lo]

    def figures(self, queues: set[str], since: datetime, until: datetime) -> dict[str, Figures]:
        found = {}
        for queue in queues:
            if queue in self._by_queue:
                jobs, failed, site_failed = self._window(queue, since, until)
                if jobs:
                    found[queue] = Figures(queue, jobs, failed, site_failed)
        return found

    def totals(self, since: datetime, until: datetime) -> Figures:
        """Every queue's results together; `queue` says how many queues reported."""
        jobs = failed = site_failed = queues = 0
        for queue in self._by_queue:
            n, f, s = self._window(queue, since, until)
            if n:
                queues += 1
                jobs, failed, site_failed = jobs + n, failed + f, site_failed + s
        return Figures(f"{queues} queues", jobs, failed, site_failed)


def queue_places(session: Session) -> dict[str, tuple[str, str]]:
    """Queue -> (site, cloud), from the stored topology."""
    return {q: (s, c) for q, s, c in session.execute(
        select(Queue.name, Site.name, Cloud.name).join(Site, Site.id == Queue.site_id)
        .join(Cloud, Cloud.id == Site.cloud_id))}
