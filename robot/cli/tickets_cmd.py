"""`healthrobot tickets import|list` and `healthrobot why`: is the problem the site?"""
from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from sqlalchemy import select

from robot.cli import Context, pass_context
from robot.clock import SystemClock
from robot.userjobs import describe_hour, recent_rows
from robot.storage.models import Episode, Job, Queue, QueueTransition, Site, Ticket, TicketLink, TicketMention
from robot.vocabulary import decision, plain_reason, queue_state, ticket_verdict

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

# Mail parsing, IMAP, GGUS and the judging code are imported by the commands that import or write tickets:
# `why` and `tickets list` only read the database, and start faster without them.


@click.group("tickets")
def tickets_group() -> None:
    """User support tickets: import them, see their verdicts."""


@tickets_group.command("import")
@click.argument("source")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_context
def tickets_import(ctx: Context, source: str, as_json: bool) -> None:
    """Import SOURCE: an mbox file, a Maildir folder, `imap` or `ggus` (configured under tickets.imap / .ggus)."""
    from robot.classify import load_table
    from robot.tickets.ingest import import_source
    from robot.tickets.store import judge_tickets

    config = ctx.config
    table = load_table(config.resolve(config.classification.table) if config.classification.table else None)
    now = SystemClock().now()
    with ctx.session(create=True) as session:
        try:
            summary, changed = import_source(session, source, config, table, now)
        except (FileNotFoundError, ValueError) as exc:
            raise click.ClickException(str(exc)) from exc
        judged = judge_tickets(session, now, changed, table)
        session.commit()
    result = {**summary.as_dict(), "judged": judged}
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(f"{source}: {summary.threads} threads, {summary.new_tickets} new and {summary.updated_tickets} "
               f"updated tickets, {summary.new_messages} new messages, {len(summary.skipped)} skipped")
    for reason in summary.skipped[:20]:
        click.echo(f"  skipped: {reason}")


@tickets_group.command("sample")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Replace FILE if it exists.")
@pass_context
def tickets_sample(ctx: Context, file: Path, force: bool) -> None:
    """Write a sample support archive (mbox, Gmail-export style) to FILE, dated over the last three days."""
    from robot.tickets.sample import THREADS, write_sample_mbox

    if file.exists() and not force:
        raise click.ClickException(f"{file} exists: pass --force to replace it")
    try:
        count = write_sample_mbox(file, SystemClock().now())
    except OSError as exc:
        raise click.ClickException(f"{file}: cannot be written: {exc.strerror or exc}") from exc
    click.echo(f"wrote {count} messages in {len(THREADS)} threads to {file}; import them with: "
               f"{ctx.command('tickets', 'import', shlex.quote(str(file)))}")


@tickets_group.command("list")
@click.option("--queue", help="Only tickets that name this queue.")
@click.option("--open", "only_open", is_flag=True, help="Only open and waiting tickets.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_context
def tickets_list(ctx: Context, queue: str | None, only_open: bool, as_json: bool) -> None:
    """Tickets with their verdicts, newest first."""
    with ctx.session() as session:
        query = select(Ticket).order_by(Ticket.last_message_at.desc())
        if only_open:
            query = query.where(Ticket.state != "closed")
        if queue:
            query = query.where(Ticket.id.in_(select(TicketMention.ticket_id).where(TicketMention.queue == queue)))
        rows = [_ticket_row(session, t) for t in session.scalars(query)]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows and not queue and not only_open:
        click.echo(f"no tickets yet: import a mail archive with `{ctx.command('tickets', 'import', 'FILE')}` "
                   f"(`{ctx.command('tickets', 'sample', 'support.mbox')}` writes one to try)")
        return
    from rich.table import Table

    from robot.cli.render import make_console

    table = Table(header_style="bold")
    for column in ("ID", "State", "Last (UTC)", "Subject", "Verdict", "Sure", "Why"):
        table.add_column(column)
    for r in rows:  # plain text cells: a ticket's content is never markup
        confidence = (r["evidence"] or {}).get("confidence")
        table.add_row(str(r["id"]), r["state"], r["last_message_at"][:16], r["subject"][:60], ticket_verdict(r["verdict"]),
                      f"{confidence:.0%}" if confidence is not None else "-", (r["verdict_reason"] or "")[:100])
    make_console().print(table, markup=False)


def _ticket_row(session: Session, ticket: Ticket) -> dict[str, Any]:
    mentions = session.scalars(select(TicketMention).where(TicketMention.ticket_id == ticket.id)).all()
    links = session.execute(select(TicketLink, Episode, Queue.name).join(Episode, Episode.id == TicketLink.episode_id)
                            .join(Queue, Queue.id == Episode.queue_id).where(TicketLink.ticket_id == ticket.id)).all()
    return {"id": ticket.id, "source": ticket.source, "key": ticket.key, "subject": ticket.subject,
            "state": ticket.state, "labels": ticket.labels, "messages": ticket.messages,
            "first_message_at": ticket.first_message_at.isoformat(), "last_message_at": ticket.last_message_at.isoformat(),
            "verdict": ticket.verdict, "verdict_reason": ticket.verdict_reason, "evidence": ticket.verdict_evidence,
            "mentions": [{"kind": m.kind, "value": m.value, "queue": m.queue, "site": m.site, "complaint": m.complaint}
                         for m in mentions],
            "links": [{"queue": q, "score": link.score, "why": link.reason, "episode": e.reason,
                       "start": e.start.isoformat(), "end": e.end.isoformat() if e.end else None}
                      for link, e, q in links]}


@click.command("why")
@click.argument("target")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_context
def why(ctx: Context, target: str, as_json: bool) -> None:
    """Why: a ticket (its id), a queue or a site (its name) or a PanDA job (its ID): is the problem the site?

    A number that is both a ticket and a PanDA job means the ticket (said so); `ticket:19` or `job:19` choose.
    """
    with ctx.session() as session:
        answer = _why(session, target)
    if answer is None:
        raise click.ClickException(f"{target!r} is no ticket id, queue, site or PanDA job ID the robot knows")
    if as_json:
        click.echo(json.dumps(answer, indent=2))
        return
    if answer.get("note"):
        click.echo(answer["note"])
    click.echo(answer["answer"])
    for line in answer.get("details", []):
        click.echo(f"  {line}")


def _why(session: Session, target: str) -> dict[str, Any] | None:
    kind, _, value = target.partition(":") if ":" in target else ("", "", target)
    if not kind and value[:1] == "T" and value[1:].isdigit():
        kind, value = "ticket", value[1:]
    if kind == "ticket":
        return _why_ticket(session, int(value)) if value.isdigit() else None
    if kind == "job":
        return _why_job(session, value) if value.isdigit() else None
    if kind == "queue":
        return _why_queue(session, value)
    if kind == "site":
        return _why_site(session, value)
    if kind:
        return None
    if value.isdigit():
        ticket = _why_ticket(session, int(value)) if len(value) < 7 else None
        job = _why_job(session, value)
        if ticket is not None and job is not None:
            ticket["note"] = (f"{value} is both ticket {value} and PanDA job {value}: this is the ticket "
                              f"(`why job:{value}` for the job)")
        return ticket or job
    return _why_queue(session, value) or _why_site(session, value)


def _why_ticket(session: Session, ticket_id: int) -> dict[str, Any] | None:
    ticket = session.get(Ticket, ticket_id)
    if ticket is None:
        return None
    row = _ticket_row(session, ticket)
    evidence = row["evidence"] or {}
    details = []
    if "confidence" in evidence:
        details.append(f"confidence: {evidence['confidence']:.0%}")
    details += [f"points at the site: {line}" for line in evidence.get("for_site", [])]
    details += [f"points away from the site: {line}" for line in evidence.get("against_site", [])]
    details += [f"linked: {link['queue']} ({link['score']:.2f}) {link['why']}: {link['episode']}"
                for link in row["links"]]
    if evidence.get("policy"):
        details.append(f"policy: {evidence['policy']}")
    details += [f"names {m['kind']} {m['value']}" + ("" if m["complaint"] else " (said to work)")
                for m in row["mentions"] if m["kind"] != "job_error"]
    if evidence.get("reply"):
        details.append(f"reply: {evidence['reply']}")
    return {"kind": "ticket", **row, "confidence": evidence.get("confidence"), "reply": evidence.get("reply"),
            "answer": f"ticket {ticket.id} ({ticket.subject}): "
                      f"{ticket_verdict(ticket.verdict)}: {ticket.verdict_reason or ''}",
            "details": details}


def _last_change(session: Session, queue_id: int) -> dict[str, Any] | None:
    """The queue's last transition in the robot's vocabulary, with its reason in plain words."""
    last = session.scalars(select(QueueTransition).where(QueueTransition.queue_id == queue_id)
                           .order_by(QueueTransition.id.desc()).limit(1)).first()
    if last is None:
        return None
    return {"time": last.time.isoformat(), "actor": last.actor, "decision": decision(last.old, last.new, last.applied,
                                                                                      last.kind),
            "why": plain_reason(last.reason, last.evidence, last.time, last.new), "reason": last.reason}


def _why_queue(session: Session, name: str) -> dict[str, Any] | None:
    queue = session.scalars(select(Queue).where(Queue.name == name)).first()
    if queue is None:
        return None
    last = _last_change(session, queue.id)
    episodes = session.scalars(select(Episode).where(Episode.queue_id == queue.id)
                               .order_by(Episode.start.desc()).limit(5)).all()
    tickets = session.scalars(select(Ticket).where(Ticket.state != "closed", Ticket.id.in_(
        select(TicketMention.ticket_id).where(TicketMention.queue == queue.name)))).all()
    details = []
    if last:
        details.append(f"last change {last['time'][:16].replace('T', ' ')} UTC by {last['actor']}: "
                       f"{last['decision']}: {last['why']}")
        if last["why"] != last["reason"]:
            details.append(f"policy: {last['reason']}")
    details += [(f"episode {e.start:%Y-%m-%d %H:%M}-{e.end:%H:%M}" if e.end else f"episode since {e.start:%Y-%m-%d %H:%M}")
                + f": {e.reason}" for e in episodes]
    details += [f"open ticket {t.id}: {t.subject} ({ticket_verdict(t.verdict)})" for t in tickets]
    from robot.downtimes import announced_downtimes

    now = SystemClock().now()
    announced = announced_downtimes(session, queue.site.name, now)
    details = [f"{queue.site.name}: {line}" for line in announced] + details
    users = recent_rows(session, queue.name, now)
    details += [describe_hour(row) for row in users[:3]]
    return {"kind": "queue", "queue": queue.name, "status": queue.status, "robot_state": queue.robot_state,
            "state": queue_state(queue.status, queue.robot_state), "last_change": last, "downtimes": announced,
            "user_jobs": users,
            "answer": f"{queue.name}: {queue_state(queue.status, queue.robot_state)}"
                      + (f": {last['why']}" if last and queue.robot_state != "online" else ""),
            "details": details, "tickets": [t.id for t in tickets]}


def _why_site(session: Session, name: str) -> dict[str, Any] | None:
    """A site: each of its queues in the robot's words, and the open tickets that name the site or its queues."""
    site = session.scalars(select(Site).where(Site.name == name)).first()
    if site is None:
        return None
    queues = session.scalars(select(Queue).where(Queue.site_id == site.id, Queue.retired_at.is_(None))
                             .order_by(Queue.name)).all()
    rows = [{"queue": q.name, "state": queue_state(q.status, q.robot_state), "last_change": _last_change(session, q.id),
             "robot_state": q.robot_state} for q in queues]
    names = [q.name for q in queues]
    tickets = session.scalars(select(Ticket).where(Ticket.state != "closed", Ticket.id.in_(
        select(TicketMention.ticket_id).where((TicketMention.site == name) | TicketMention.queue.in_(names))))).all()
    troubled = [r for r in rows if r["robot_state"] != "online"]
    summary = (f"{len(troubled)} of its {len(rows)} queues not online for the robot" if troubled
               else f"all {len(rows)} queues online for the robot")
    details = [f"{r['queue']}: {r['state']}" + (f": {r['last_change']['why']}" if r["last_change"]
                                                and r["robot_state"] != "online" else "") for r in rows]
    details += [f"open ticket {t.id}: {t.subject} ({ticket_verdict(t.verdict)})" for t in tickets]
    from robot.downtimes import announced_downtimes

    announced = announced_downtimes(session, name, SystemClock().now())
    details = announced + details
    return {"kind": "site", "site": name, "downtimes": announced, "queues": rows, "tickets": [t.id for t in tickets],
            "answer": f"site {name}: {summary}", "details": details}


def _why_job(session: Session, target: str) -> dict[str, Any] | None:
    job = session.execute(select(Job, Queue.name).join(Queue, Queue.id == Job.queue_id)
                          .where(Job.panda_id == int(target))).first()
    tickets = session.scalars(select(Ticket).where(Ticket.id.in_(select(TicketMention.ticket_id).where(
        TicketMention.kind == "panda_id", TicketMention.value == target)))).all()
    if job is None and not tickets:
        return None
    details = [f"ticket {t.id}: {t.subject}: {ticket_verdict(t.verdict)}: {t.verdict_reason}" for t in tickets]
    if job is not None:
        found, name = job
        answer = (f"PanDA job {target} (a robot test job) at {name}: {found.outcome or found.job_status}"
                  + (f", {found.error_class} error {found.error_name}: {found.error_diag}" if found.error_name else ""))
    else:
        answer = f"PanDA job {target} is named in {len(tickets)} ticket(s)"
    return {"kind": "job", "panda_id": int(target), "answer": answer, "details": details}
