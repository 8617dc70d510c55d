"""`healthrobot db upgrade`, `healthrobot db rollup` and `healthrobot db prune`."""
from __future__ import annotations

from datetime import timedelta

import click

from robot import rollup
from robot.cli import Context, pass_context
from robot.clock import SystemClock
from robot.storage.database import current_revision, head_revision, upgrade


@click.group("db")
def db_group() -> None:
    """Database schema."""


@db_group.command("upgrade")
@pass_context
def db_upgrade(ctx: Context) -> None:
    """Create or migrate the database schema to the current version."""
    before = current_revision(ctx.engine)
    upgrade(ctx.engine)
    click.echo(f"database schema: {before or 'empty'} -> {head_revision()}")


@db_group.command("rollup")
@pass_context
def db_rollup(ctx: Context) -> None:
    """Rebuild the dashboards' job rollup from the job table (idempotent; the robot keeps it up to date)."""
    ctx.require_current_schema()
    with ctx.session() as session:
        count = rollup.rebuild(session, SystemClock().now())
        session.commit()
    click.echo(f"job rollup rebuilt from {count} final jobs")



@db_group.command("prune")
@click.option("--older-than", "older_than", required=True, metavar="DURATION",
              help="delete the jobs that ended longer ago than this, e.g. 400d (moved back to the start of that week)")
@pass_context
def db_prune(ctx: Context, older_than: str) -> None:
    """Delete old jobs; their sums stay in the job rollup, so the pages' long windows stay exact."""
    from robot.durations import parse_duration
    from robot.retention import prune

    try:
        age = parse_duration(older_than)
        if age <= timedelta(0):
            raise ValueError(f"expected a positive duration like 400d, got {older_than!r}")
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--older-than") from None
    ctx.require_current_schema()
    with ctx.session() as session:
        done = prune(session, SystemClock().now(), age)
    click.echo(f"deleted {done.deleted} jobs that ended before {done.cut:%Y-%m-%d %H:%M} UTC; "
               "their sums stay in the job rollup"
               + (f"; and {done.user_hours} hourly counts of users' jobs" if done.user_hours else ""))
