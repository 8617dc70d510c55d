"""Import tickets into the database (incremental and idempotent) and judge them.

Re-importing the same archive adds nothing; a thread with new messages is updated (and a reply
re-opens it). What a ticket names is extracted again whenever it changes; PanDA job IDs are
resolved to their queue by asking the backend.
"""
from __future__ import annotations

import bisect
import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, Iterable, Sequence

from sqlalchemy import delete, insert, select
from sqlalchemy.orm import Session

from robot.backends.base import BackendUnavailable, JobReport
from robot.storage.models import (Cloud, Episode, Event, Job, Queue, Site, Ticket, TicketLink, TicketMention,
                                  TicketMessage)
from robot.tickets.episodes import refresh_episodes
from robot.tickets.extract import TopologyIndex, extract
from robot.tickets.threads import Thread
from robot.tickets.verdict import LEAD, CentralIncident, EpisodeRef, Figures, Named, judge

log = logging.getLogger(__name__)

CENTRAL_EVENTS = ("mass_failure", "cloud_failure", "central_errors", "central_failures")
JobLookup = Callable[[Sequence[int]], dict[int, JobReport | None]]


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
                  error_table: Any, lookup_jobs: JobLookup | None = None) -> tuple[ImportSummary, list[int]]:
    """Upsert tickets and their messages; returns the summary and the ids of changed tickets.

    Bulk work: one query for the known tickets and messages, bulk inserts, and one lookup for all
    the PanDA jobs the changed tickets name.
    """
    summary = ImportSummary()
    known_ids = set(session.scalars(select(TicketMessage.message_id)))
    tickets = {t.key: t for t in session.scalars(select(Ticket).where(Ticket.source == source))}
    changed: list[tuple[Ticket, Thread]] = []
    new_messages: list[tuple[Ticket, Any]] = []
    for item in threads:
        summary.threads += 1
        ticket = tickets.get(item.key)
        fresh = [m for m in item.messages if m.message_id not in known_ids]
        if ticket is not None and not fresh and ticket.state == item.state:
            continue
        if ticket is None:
            first = item.messages[0]
            ticket = Ticket(source=source, key=item.key, subject=item.subject[:2000], state=item.state,
                            labels=list(item.labels), requester=first.sender[:256], first_message_at=first.date,
                            last_message_at=item.messages[-1].date, messages=0)
            session.add(ticket)
            tickets[item.key] = ticket
            summary.new_tickets += 1
        else:
            summary.updated_tickets += 1
        new_messages += [(ticket, m) for m in fresh]
        known_ids.update(m.message_id for m in fresh)
        summary.new_messages += len(fresh)
        ticket.state, ticket.labels = item.state, sorted(set(ticket.labels) | set(item.labels))
        ticket.last_message_at = max(ticket.last_message_at, item.messages[-1].date)
        ticket.messages += len(fresh)
        changed.append((ticket, item))
    session.flush()  # ticket ids
    if new_messages:
        session.execute(insert(TicketMessage), [
            {"ticket_id": t.id, "message_id": m.message_id[:512], "date": m.date, "sender": m.sender[:256],
             "subject": m.subject[:2000], "body": m.body} for t, m in new_messages])
    _store_mentions(session, changed, index, error_table, lookup_jobs)
    return summary, [t.id for t, _ in changed]


def _store_mentions(session: Session, changed: list[tuple[Ticket, Thread]], index: TopologyIndex,
                    error_table: Any, lookup_jobs: JobLookup | None) -> None:
    """What each changed ticket names, extracted again from all its messages."""
    if not changed:
        return
    ids = [t.id for t, _ in changed]
    for chunk in range(0, len(ids), 500):
        session.execute(delete(TicketMention).where(TicketMention.ticket_id.in_(ids[chunk:chunk + 500])))
    found = {t.id: extract(item.subject, "\n".join(m.body for m in item.messages), index, error_table)
             for t, item in changed}
    jobs = sorted({int(m.value) for ms in found.values() for m in ms if m.kind == "panda_id" and m.value.isdigit()})
    where = _job_queues(session, jobs, lookup_jobs)
    places = queue_places(session)
    rows = []
    for ticket_id, mentions in found.items():
        for mention in mentions:
            queue, site, cloud = mention.queue, mention.site, mention.cloud
            if mention.kind == "panda_id" and mention.value.isdigit() and int(mention.value) in where:
                queue = where[int(mention.value)]
                site, cloud = places.get(queue, (None, None))
            rows.append({"ticket_id": ticket_id, "kind": mention.kind, "value": mention.value[:256], "queue": queue,
                         "site": site, "cloud": cloud, "complaint": mention.complaint,
                         "code": getattr(mention, "code", None), "snippet": mention.snippet[:300]})
    if rows:
        session.execute(insert(TicketMention), rows)


def _job_queues(session: Session, panda_ids: list[int], lookup_jobs: JobLookup | None) -> dict[int, str]:
    """Where pasted PanDA jobs ran: the robot's own test jobs first, then the backend."""
    if not panda_ids:
        return {}
    found: dict[int, str] = {}
    for chunk in range(0, len(panda_ids), 500):
        found.update(session.execute(select(Job.panda_id, Queue.name).join(Queue, Queue.id == Job.queue_id)
                                     .where(Job.panda_id.in_(panda_ids[chunk:chunk + 500]))).all())
    missing = [p for p in panda_ids if p not in found]
    if missing and lookup_jobs is not None:
        try:
            for panda_id, report in lookup_jobs(missing).items():
                if report is not None and report.queue:
                    found[panda_id] = report.queue
        except BackendUnavailable as exc:
            log.warning("PanDA jobs %s could not be looked up: %s", missing[:5], exc)
    return found


def judge_tickets(session: Session, now: datetime, ticket_ids: Iterable[int] | None = None) -> int:
    """Refresh the episodes, then link and judge the given tickets (default: every open one)."""
    query = select(Ticket) if ticket_ids is not None else select(Ticket).where(Ticket.state != "closed")
    tickets: list[Ticket] = []
    if ticket_ids is not None:
        ids = list(ticket_ids)
        for chunk in range(0, len(ids), 500):
            tickets += session.scalars(query.where(Ticket.id.in_(ids[chunk:chunk + 500]))).all()
    else:
        tickets = list(session.scalars(query))
    if not tickets:
        return 0
    since = min(t.first_message_at for t in tickets) - LEAD
    refresh_episodes(session, since, now)
    places = queue_places(session)
    episodes = [EpisodeRef(e.id, name, *places[name], e.start, e.end, e.source, e.reason, e.error_classes)
                for e, name in session.execute(select(Episode, Queue.name).join(Queue, Queue.id == Episode.queue_id))]
    incidents = [CentralIncident(t, k, m) for t, k, m in session.execute(
        select(Event.time, Event.kind, Event.message).where(Event.kind.in_(CENTRAL_EVENTS), Event.time >= since))]
    named: dict[int, list[Named]] = {}
    wanted = {t.id for t in tickets}
    for m in session.scalars(select(TicketMention).where(TicketMention.ticket_id.in_(
            select(Ticket.id).where(Ticket.last_message_at >= since)))):
        if m.ticket_id in wanted:
            named.setdefault(m.ticket_id, []).append(Named(m.kind, m.value, m.queue, m.site, m.cloud, m.complaint))
    results = TestResults(session, since, now)
    ids = [t.id for t in tickets]
    for chunk in range(0, len(ids), 500):
        session.execute(delete(TicketLink).where(TicketLink.ticket_id.in_(ids[chunk:chunk + 500])))
    links = []
    for ticket in tickets:
        mentions = named.get(ticket.id, [])
        queues = {n.queue for n in mentions if n.queue and n.complaint}
        figures = results.figures(queues, ticket.first_message_at - LEAD, ticket.last_message_at)
        result = judge(ticket.first_message_at, ticket.last_message_at, mentions, episodes, figures, incidents)
        ticket.verdict, ticket.verdict_reason = result.verdict, result.reason
        ticket.verdict_evidence, ticket.judged_at = result.evidence, now
        links += [{"ticket_id": ticket.id, "episode_id": e, "score": score, "reason": why, "created_at": now}
                  for e, score, why in result.links]
    if links:
        session.execute(insert(TicketLink), links)
    session.flush()
    return len(tickets)


class TestResults:
    """The robot's final test results since a time, per queue in time order, for quick counting."""

    __test__ = False  # not a pytest class

    def __init__(self, session: Session, since: datetime, until: datetime):
        self._by_queue: dict[str, list[tuple[datetime, bool, bool]]] = {}
        for queue, end, outcome, klass in session.execute(
            select(Queue.name, Job.end_time, Job.outcome, Job.error_class).join(Queue, Queue.id == Job.queue_id)
            .where(Job.outcome.in_(["completed", "failed"]), Job.end_time >= since, Job.end_time <= until)
            .order_by(Job.end_time)
        ):
            self._by_queue.setdefault(queue, []).append((end, outcome == "failed", klass == "site"))

    def figures(self, queues: set[str], since: datetime, until: datetime) -> dict[str, Figures]:
        found = {}
        for queue in queues:
            rows = self._by_queue.get(queue, [])
            lo = bisect.bisect_left(rows, (since,))
            hi = bisect.bisect_right(rows, (until, True, True))
            window = rows[lo:hi]
            if window:
                found[queue] = Figures(queue, len(window), sum(r[1] for r in window), sum(r[2] for r in window))
        return found


def queue_places(session: Session) -> dict[str, tuple[str, str]]:
    """Queue -> (site, cloud), from the stored topology."""
    return {q: (s, c) for q, s, c in session.execute(
        select(Queue.name, Site.name, Cloud.name).join(Site, Site.id == Queue.site_id)
        .join(Cloud, Cloud.id == Site.cloud_id))}
