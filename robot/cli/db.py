"""`healthrobot db upgrade` and `healthrobot db rollup`."""
from __future__ import annotations

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

