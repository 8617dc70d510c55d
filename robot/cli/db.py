"""`healthrobot db upgrade`."""
from __future__ import annotations

import click

from robot.cli import Context, pass_context
from robot.storage.database import current_revision, head_revision, make_engine, upgrade


@click.group("db")
def db_group() -> None:
    """Database schema."""


@db_group.command("upgrade")
@pass_context
def db_upgrade(ctx: Context) -> None:
    """Create or migrate the database schema to the current version."""
    engine = make_engine(ctx.config.database_url)
    before = current_revision(engine)
    upgrade(engine)
    click.echo(f"database schema: {before or 'empty'} -> {head_revision()}")
    engine.dispose()


COMMANDS = [db_group]
