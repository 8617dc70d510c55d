"""`healthrobot status`: health per queue, site or cloud from the stored results."""
from __future__ import annotations

import json
from datetime import timedelta

import click

from robot.cli import Context, pass_context
from robot.cli.render import health_table, make_console
from robot.clock import SystemClock
from robot.cli.params import DURATION
from robot.durations import format_duration
from robot.metrics import health


@click.command("status")
@click.option("--level", type=click.Choice(["queue", "site", "cloud"]), default="queue", show_default=True)
@click.option("--window", default="3h", show_default=True, type=DURATION, help="Jobs that ended within this time.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_context
def status(ctx: Context, level: str, window: timedelta, as_json: bool) -> None:
    """Failure rate, events per second, CPU efficiency and error classes."""
    now = SystemClock().now()
    with ctx.session() as session:
        found = health(session, now, window, level)  # type: ignore[arg-type]
    if as_json:
        click.echo(json.dumps({"now": now.isoformat(), "window_seconds": window.total_seconds(), "level": level,
                               "health": [h.as_dict() for h in found]}, indent=2))
    elif not found:  # a database the robot never stepped on: say how to fill it rather than draw an empty table
        click.echo(f"no queues yet: the robot has not run on this database; start it with `{ctx.command('run')}`"
                   f"{ctx.demo_hint()}")
    else:
        make_console().print(health_table(found, title=f"Health over the last {format_duration(window)}"))

