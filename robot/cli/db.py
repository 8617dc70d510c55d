"""`healthrobot db upgrade`."""
from __future__ import annotations

import click

from robot.cli import Context, pass_context
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


COMMANDS = [db_group]
