"""Stored tickets on both databases: what the bulk writes store reads back as it was imported."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

from sqlalchemy import select

from robot.classify import load_table
from robot.history import import_history
from robot.storage.database import make_engine, make_sessionmaker, upgrade
from robot.storage.models import Episode, Queue, Ticket, TicketLink, TicketMention, TicketMessage
from robot.sync import sync_topology
from robot.tickets.extract import TopologyIndex
from robot.tickets.mail import Message
from robot.tickets.store import judge_tickets, store_threads
from robot.tickets.threads import thread
from robot.topology import EndpointInfo, QueueInfo, SiteInfo, Topology

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=timezone.utc)
TOPOLOGY = Topology(sites=(SiteInfo("SITE-A", "DE"), SiteInfo("SITE-B", "US")),
                    endpoints=(EndpointInfo("SITE-A_DATADISK", "SITE-A"),),
                    queues=(QueueInfo("ANALY_A", "SITE-A", "DE", ("SITE-A_DATADISK",)),
                            QueueInfo("ANALY_B", "SITE-B", "US", ())))
BROKEN_JOB = 7_000_000_001


def mail(number: int, date: datetime, body: str, sender: str = "user@uni.example.org",
         labels: tuple[str, ...] = ("Status/ACTIVE",)) -> Message:
    return Message(source="test", message_id=f"m{number}@uni.example.org",
                   in_reply_to="m1@uni.example.org" if number > 1 else None,
                   references=("m1@uni.example.org",) if number > 1 else (), thread_hint=None,
                   subject=("Re: " if number > 1 else "") + "Jobs fail at ANALY_A", sender=sender, date=date,
                   labels=labels, body=body, truncated=False)


def history(path, since: datetime) -> None:
    """ANALY_A fails with site errors (stage-in) every 20 minutes from `since`; ANALY_B passes."""
    jobs, stamp = [], "%Y-%m-%d %H:%M:%S"
    for n in range(18):
        end = since + timedelta(minutes=20 * n)
        for queue, pandaid, failed in (("ANALY_A", BROKEN_JOB + 2 * n, True), ("ANALY_B", BROKEN_JOB + 2 * n + 1, False)):
            jobs.append({"pandaid": pandaid, "computingsite": queue, "jobstatus": "failed" if failed else "finished",
                         "creationtime": (end - timedelta(minutes=30)).strftime(stamp),
                         "starttime": (end - timedelta(minutes=20)).strftime(stamp), "endtime": end.strftime(stamp),
                         "piloterrorcode": 1099 if failed else 0,
                         "piloterrordiag": "Get error: Staging input file failed" if failed else "NULL",
                         "exeerrorcode": 0, "nevents": 0 if failed else 1000})
    path.write_text(json.dumps({"jobs": jobs}), encoding="utf-8")


def test_imported_tickets_messages_mentions_and_links_read_back_as_stored(database_url, tmp_path):
    engine = make_engine(database_url)  # SQLite, then PostgreSQL
    upgrade(engine)
    sessions = make_sessionmaker(engine)
    written = NOW - timedelta(hours=2)
    with sessions() as session:
        sync_topology(session, TOPOLOGY, NOW)
        history(tmp_path / "jobs.json", written - timedelta(hours=4))
        import_history(session, tmp_path / "jobs.json", "tests", load_table(), NOW)
        session.commit()
    index = TopologyIndex.from_topology(TOPOLOGY)
    first = [mail(1, written.astimezone(timezone(timedelta(hours=2))),
                  f"My jobs at ANALY_A fail: Get error: Staging input file failed.\n"
                  f"See https://bigpanda.cern.ch/job?pandaid={BROKEN_JOB}\nThey run fine at ANALY_B."),
             mail(2, written + timedelta(hours=1), "We are looking at it.", sender="atlas-support@example.org",
                  labels=("Status/WAITING",))]
    later = mail(3, written + timedelta(hours=3), "Still failing at ANALY_A.")
    with sessions() as session:
        summary, changed = store_threads(session, "mail", thread(first), index, load_table())
        judge_tickets(session, NOW, changed)
        session.commit()
    with sessions() as session:  # a reply comes: the stored ticket is updated, its times compared
        again, changed_again = store_threads(session, "mail", thread([*first, later]), index, load_table())
        judge_tickets(session, NOW, changed_again)
        session.commit()
    assert (summary.new_tickets, summary.new_messages, again.updated_tickets, again.new_messages) == (1, 2, 1, 1)
    assert changed_again == changed

    with sessions() as session:
        ticket = session.scalars(select(Ticket)).one()
        assert (ticket.key, ticket.subject, ticket.requester, ticket.state, ticket.messages) == \
            ("m1@uni.example.org", "Jobs fail at ANALY_A", "user@uni.example.org", "open", 3)
        assert ticket.labels == ["Status/ACTIVE", "Status/WAITING"]
        assert (ticket.first_message_at, ticket.last_message_at) == (written, written + timedelta(hours=3))
        stored = session.execute(select(TicketMessage.message_id, TicketMessage.date, TicketMessage.sender,
                                        TicketMessage.subject, TicketMessage.body).order_by(TicketMessage.date)).all()
        assert [tuple(row) for row in stored] == [(m.message_id, m.date, m.sender, m.subject, m.body)
                                                  for m in [*first, later]]
        assert stored[0].date.tzinfo == timezone.utc
        mentions = {(m.kind, m.value, m.queue, m.site, m.cloud, m.complaint, m.code)
                    for m in session.scalars(select(TicketMention))}
        assert ("queue", "ANALY_A", "ANALY_A", "SITE-A", "DE", True, None) in mentions
        assert ("queue", "ANALY_B", "ANALY_B", "SITE-B", "US", False, None) in mentions
        assert ("error_text", "Get error:", None, None, None, True, 1099) in mentions
        assert ("job_error", str(BROKEN_JOB), "ANALY_A", "SITE-A", "DE", True, 1099) in mentions
        assert ticket.verdict == "site" and ticket.judged_at == NOW
        link = session.execute(select(TicketLink.score, TicketLink.created_at, Queue.name)
                               .join(Episode, Episode.id == TicketLink.episode_id)
                               .join(Queue, Queue.id == Episode.queue_id)).one()
        assert (link.name, link.score, link.created_at) == ("ANALY_A", 1.0, NOW)
