"""`healthrobot blacklist ...`: the exclusion list, people's overrides, silences and the mode switch.

People's exclusions and inclusions are stored here and applied by the robot's next step (so they
reach the grid through the same actuator, are read back and recorded like the robot's own).
Who decides is the person at the keyboard, the operating system's user (`os_user`, as for stress
tests), never a name typed on the command line; the dashboard records its signed-in user.
"""
from __future__ import annotations

import json
from datetime import timedelta

import click
from rich.table import Table
from sqlalchemy import or_, select

from blacklist import overrides as people
from blacklist.engine import MODE_SETTING, effective_mode
from robot.cli import Context, os_user, pass_context
from robot.cli.params import DURATION
from robot.cli.queues import require_queue
from robot.cli.render import make_console
from robot.clock import SystemClock
from robot.storage.models import Override, Queue, QueueTransition, Setting, Silence
from robot.vocabulary import decision, plain_reason, queue_state


@click.group("blacklist")
def blacklist_group() -> None:
    """Exclusions: list them, override the robot, silence it, switch it."""


@blacklist_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_context
def blacklist_list(ctx: Context, as_json: bool) -> None:
    """Queues not online or in doubt, with the last reason; active overrides and silences; the mode."""
    now = SystemClock().now()
    with ctx.session() as session:
        queues = session.execute(
            select(Queue.id, Queue.name, Queue.status, Queue.robot_state, Queue.robot_state_since)
            .where(Queue.retired_at.is_(None), or_(Queue.status != "online", Queue.robot_state != "online"))
            .order_by(Queue.name)
        ).all()
        rows = []
        for qid, name, status, state, since in queues:
            last = session.scalars(select(QueueTransition).where(QueueTransition.queue_id == qid)
                                   .order_by(QueueTransition.id.desc()).limit(1)).first()
            rows.append({"queue": name, "status": status, "robot_state": state, "state": queue_state(status, state),
                         "since": since.isoformat() if since else None,
                         "last_reason": last.reason if last else None,
                         "why": plain_reason(last.reason, last.evidence, last.time, last.new) if last else None,
                         "actor": last.actor if last else None, "applied": last.applied if last else None})
        overrides = [{"queue": q, "action": o.action, "status": o.status, "by": o.actor, "reason": o.reason,
                      "until": o.until.isoformat() if o.until else None}
                     for o, q in session.execute(select(Override, Queue.name).join(Queue, Queue.id == Override.queue_id)
                                                 .where(Override.ended_at.is_(None), Override.cleared_at.is_(None)))]
        silences = [{"scope": s.scope, "name": s.name, "by": s.actor, "reason": s.reason, "until": s.until.isoformat()}
                    for s in session.scalars(select(Silence).where(Silence.cleared_at.is_(None), Silence.until > now))]
        mode = effective_mode(session, ctx.config.blacklist.mode)
    if as_json:
        click.echo(json.dumps({"mode": mode, "queues": rows, "overrides": overrides, "silences": silences}, indent=2))
        return
    console = make_console()
    console.print(f"mode: [bold]{mode}[/] (policy {ctx.config.blacklist.policy})")
    table = Table(header_style="bold")
    for column in ("Queue", "State", "Since (UTC)", "By", "Why"):
        table.add_column(column)
    for r in rows:
        table.add_row(r["queue"], r["state"], (r["since"] or "")[:19].replace("T", " "), r["actor"] or "",
                      r["why"] or "")
    console.print(table)
    for o in overrides:
        console.print(f"override: {o['queue']} {o['action']} ({o['status']}) by {o['by']} until {o['until'] or 'cleared'}: {o['reason']}")
    for s in silences:
        console.print(f"silence: {s['scope']} {s['name']} by {s['by']} until {s['until']}: {s['reason']}")


def _override(ctx: Context, queue_name: str, action: str, status: str, reason: str, actor: str,
              duration: timedelta | None) -> None:
    now = SystemClock().now()
    with ctx.session() as session:
        try:
            people.set_override(session, queue_name, action, status, reason, actor, now, duration)
        except people.UnknownName as exc:
            raise click.BadParameter(str(exc), param_hint="QUEUE") from exc
        session.commit()
    until = f" until {(now + duration):%Y-%m-%d %H:%M} UTC" if duration else ""
    click.echo(f"{queue_name}: manual {action} ({status}) by {actor}{until}; applied at the robot's next step")


@blacklist_group.command("exclude")
@click.argument("queue")
@click.option("--reason", required=True, help="Why (recorded and mailed).")
@click.option("--for", "duration", type=DURATION, help="End the exclusion after this long (default: until cleared).")
@click.option("--status", type=click.Choice(["brokeroff", "test", "offline"]), default="brokeroff", show_default=True)
@pass_context
def blacklist_exclude(ctx: Context, queue: str, reason: str, duration: timedelta | None, status: str) -> None:
    """Exclude QUEUE by hand, as the OS user: the robot will not change it while this lasts."""
    _override(ctx, queue, "exclude", status, reason, os_user(), duration)


@blacklist_group.command("include")
@click.argument("queue")
@click.option("--reason", required=True, help="Why (recorded).")
@click.option("--for", "duration", type=DURATION, help="Keep the robot from excluding it for this long.")
@pass_context
def blacklist_include(ctx: Context, queue: str, reason: str, duration: timedelta | None) -> None:
    """Set QUEUE online by hand, as the OS user; the robot does not exclude it while this lasts."""
    _override(ctx, queue, "include", "online", reason, os_user(), duration)


@blacklist_group.command("clear")
@click.argument("queue")
@pass_context
def blacklist_clear(ctx: Context, queue: str) -> None:
    """End a person's override of QUEUE now, as the OS user (an exclusion ends: the queue goes back online)."""
    now = SystemClock().now()
    with ctx.session() as session:
        try:
            cleared = people.clear_overrides(session, queue, os_user(), now)
        except people.UnknownName as exc:
            raise click.BadParameter(str(exc), param_hint="QUEUE") from exc
        session.commit()
    click.echo(f"{queue}: {cleared} override(s) cleared" if cleared else f"{queue}: no override to clear")


@blacklist_group.command("silence")
@click.argument("name")
@click.option("--for", "duration", type=DURATION, help="How long, e.g. 4h or 2d (required: a silence always ends).")
@click.option("--reason", required=True, help="Why (e.g. scheduled downtime).")
@pass_context
def blacklist_silence(ctx: Context, name: str, duration: timedelta | None, reason: str) -> None:
    """No automatic exclusion and no mail for NAME (a queue, a site or a cloud) for a while, as the OS user."""
    if duration is None:
        raise click.UsageError("say how long the silence lasts with --for, e.g. `--for 4h` or `--for 2d` (a silence "
                               f"always ends; `{ctx.command('blacklist', 'unsilence', name)}` ends it sooner)")
    actor = os_user()
    now = SystemClock().now()
    with ctx.session() as session:
        try:
            scope = people.add_silence(session, name, duration, reason, actor, now).scope
        except people.UnknownName as exc:
            raise click.BadParameter(str(exc), param_hint="NAME") from exc
        session.commit()
    click.echo(f"{scope} {name} silenced by {actor} until {(now + duration):%Y-%m-%d %H:%M} UTC")


@blacklist_group.command("unsilence")
@click.argument("name")
@pass_context
def blacklist_unsilence(ctx: Context, name: str) -> None:
    """End the silences of NAME now, as the OS user."""
    now = SystemClock().now()
    with ctx.session() as session:
        ended = people.end_silences(session, name, os_user(), now)
        session.commit()
    click.echo(f"{name}: {ended} silence(s) ended")


@blacklist_group.command("mode")
@click.argument("mode", required=False, type=click.Choice(["off", "dry-run", "enforce"]))
@click.option("--reset", is_flag=True, help="Forget the switch: the configuration's mode applies again.")
@pass_context
def blacklist_mode(ctx: Context, mode: str | None, reset: bool) -> None:
    """Show or switch (as the OS user) the automatic exclusion mode (off, dry-run, enforce) without a restart."""
    with ctx.session() as session:
        if reset or mode:
            actor = os_user()
            stored = session.get(Setting, MODE_SETTING)
            if reset:
                if stored:
                    session.delete(stored)
            else:
                session.merge(Setting(name=MODE_SETTING, value=mode, actor=actor, changed_at=SystemClock().now()))
            session.commit()
        current = effective_mode(session, ctx.config.blacklist.mode)
        stored = session.get(Setting, MODE_SETTING)
    source = f"switched by {stored.actor} at {stored.changed_at:%Y-%m-%d %H:%M} UTC" if stored else "from the configuration"
    click.echo(f"mode: {current} ({source})")


@blacklist_group.command("history")
@click.option("--queue", help="Only this queue.")
@click.option("--since", type=DURATION, default="7d", show_default=True, help="How far back.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON with the evidence.")
@pass_context
def blacklist_history(ctx: Context, queue: str | None, since: timedelta, as_json: bool) -> None:
    """Every transition with actor, reason and evidence, newest first."""
    now = SystemClock().now()
    with ctx.session() as session:
        query = (select(QueueTransition, Queue.name).join(Queue, Queue.id == QueueTransition.queue_id)
                 .where(QueueTransition.time >= now - since).order_by(QueueTransition.id.desc()))
        if queue:
            require_queue(session, queue)
            query = query.where(Queue.name == queue)
        rows = [{"time": t.time.isoformat(), "queue": name, "kind": t.kind, "old": t.old, "new": t.new,
                 "actor": t.actor, "policy": t.policy, "applied": t.applied, "read_back": t.read_back,
                 "decision": decision(t.old, t.new, t.applied, t.kind), "reason": t.reason,
                 "why": plain_reason(t.reason, t.evidence, t.time, t.new), "evidence": t.evidence}
                for t, name in session.execute(query)]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        click.echo(f"{r['time'][:19].replace('T', ' ')} {r['queue']:20} {r['actor']}: {r['decision']}: {r['why']}")
        if r["reason"] != r["why"]:
            click.echo(f"{'':41}policy: {r['reason']}")

