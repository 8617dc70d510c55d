"""`healthrobot grid ...`: look at the embedded grid and break or heal its queues while it runs.

These commands work on the grid's state folder, so they act on a grid running in another process
(the demo or the daemon) at its next dispatch.
"""
from __future__ import annotations

import difflib
import json
import os
import signal
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click
from rich.table import Table

from robot.backends.embedded.config import FaultMode, load_grid_config
from robot.backends.embedded.faults import active_faults
from robot.backends.embedded.state import Fault, GridState
from robot.backends.embedded.storage import GridStorage
from robot.cli import Context, pass_context
from robot.cli.render import make_console
from robot.cli.params import DURATION
from robot.clock import SystemClock
from robot.yamlconfig import ConfigError
from robot.durations import format_duration
from robot.jobstates import QueueStatus
from robot.services import grid_state_dir


def _open(ctx: Context, reading: bool = False) -> tuple[GridStorage, GridState]:
    """The grid's storage and state. `reading`: a grid that never ran is read as empty, and no state file
    (nor its folder) is made for it."""
    config = ctx.config
    # The embedded grid is in use when the robot runs it, or reaches it through PanDA (`grid serve`)
    # and reads its queues from its state folder.
    if config.backend.kind != "embedded" and config.topology.source != "embedded":
        raise click.ClickException(f"the configured backend is {config.backend.kind!r}, not the embedded grid")
    try:
        grid_config = load_grid_config(config.resolve(config.backend.embedded.grid))
    except ConfigError as exc:
        raise click.ClickException(f"invalid grid configuration {exc}") from exc
    state_dir = grid_state_dir(config)
    state_file = state_dir / "grid.sqlite"
    if reading and not state_file.exists():
        state_file = Path(":memory:")
    return GridStorage(grid_config, state_dir), GridState(state_file)


def _known_queue(storage: GridStorage, queue: str) -> None:
    names = [q.name for q in storage.queue_settings()]
    if queue not in names:
        close = difflib.get_close_matches(queue, names, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; known queues: {', '.join(names)}"
        raise click.BadParameter(f"unknown queue {queue!r}{hint}", param_hint="QUEUE")


@click.group("grid")
def grid_group() -> None:
    """The embedded grid: queues, faults, input data."""


@grid_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_context
def grid_list(ctx: Context, as_json: bool) -> None:
    """Queues with their site, storage, slots, status and active faults."""
    storage, state = _open(ctx, reading=True)
    now = SystemClock().now()
    statuses, faults = state.queue_statuses(), state.faults()
    rows = [{"queue": q.name, "site": q.site, "cloud": q.cloud, "endpoint": q.endpoint, "slots": q.slots,
             "cpu_speed": q.cpu_speed, "status": statuses.get(q.name, QueueStatus.ONLINE).value,
             "faults": [f.mode.value for f in active_faults(faults, q.name, now)]}
            for q in storage.queue_settings()]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table(header_style="bold")
    for column in ("Cloud", "Site", "Queue", "Storage endpoint", "Slots", "CPU speed", "Status", "Active faults"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["cloud"], row["site"], row["queue"], row["endpoint"], str(row["slots"]),
                      f"{row['cpu_speed']:g}", row["status"], f"[red]{', '.join(row['faults'])}[/]")
    make_console().print(table)


@grid_group.command("break")
@click.argument("queue")
@click.option("--mode", type=click.Choice([m.value for m in FaultMode]), required=True, help="What goes wrong.")
@click.option("--for", "duration", type=DURATION, default="30m", show_default=True, help="How long the fault lasts.")
@click.option("--start-in", type=DURATION, default="0s", show_default=True, help="Delay before the fault starts.")
@click.option("--probability", type=click.FloatRange(0, 1), default=1.0, show_default=True,
              help="Share of the queue's jobs the fault hits.")
@click.option("--slowdown", type=click.FloatRange(min=1), default=4.0, show_default=True,
              help="For --mode slow: how many times longer jobs take.")
@click.option("--by", "actor", default="operator", show_default=True, help="Who breaks it (recorded).")
@pass_context
def grid_break(ctx: Context, queue: str, mode: str, duration: timedelta, start_in: timedelta, probability: float,
               slowdown: float, actor: str) -> None:
    """Inject a fault into QUEUE (e.g. --mode stagein --for 30m)."""
    storage, state = _open(ctx)
    _known_queue(storage, queue)
    start = SystemClock().now() + start_in
    state.add_fault(Fault(queue=queue, mode=FaultMode(mode), start=start, until=start + duration,
                          probability=probability, slowdown=slowdown, actor=actor))
    click.echo(f"{queue}: {mode} fault from {start:%H:%M:%S} UTC for {format_duration(duration)}"
               f" (probability {probability:g})")


@grid_group.command("heal")
@click.argument("queue")
@pass_context
def grid_heal(ctx: Context, queue: str) -> None:
    """End every fault on QUEUE now, scheduled ones included."""
    storage, state = _open(ctx, reading=True)
    _known_queue(storage, queue)
    ended = state.heal(queue, SystemClock().now())
    click.echo(f"{queue}: {ended} fault(s) ended" if ended else f"{queue}: no fault to heal")


@grid_group.command("faults")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_context
def grid_faults(ctx: Context, as_json: bool) -> None:
    """Every fault, past, active and scheduled."""
    _, state = _open(ctx, reading=True)
    now = SystemClock().now()
    faults = state.faults()
    rows = [{"queue": f.queue, "mode": f.mode.value, "start": f.start.isoformat(), "until": f.until.isoformat(),
             "probability": f.probability, "actor": f.actor,
             "state": "active" if f.active(now) else ("scheduled" if f.start > now else "ended")} for f in faults]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no faults")
    for row in rows:
        click.echo(f"{row['state']:9} {row['queue']:20} {row['mode']:16} {row['start']} -> {row['until']}"
                   f"  p={row['probability']:g}  by {row['actor']}")


@grid_group.command("prepare")
@pass_context
def grid_prepare(ctx: Context) -> None:
    """Generate the grid's input datasets and lay out the storage endpoints (idempotent)."""
    storage, _ = _open(ctx)
    made = storage.prepare()
    click.echo(f"generated {len(made)} dataset(s)" + "".join(f"\n  {name}" for name in made))


@grid_group.command("register-rucio")
@click.option("--dry-run", is_flag=True, help="Read Rucio and list what would be added; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_context
def grid_register_rucio(ctx: Context, dry_run: bool, as_json: bool) -> None:
    """Register the grid's endpoints, datasets and replicas in the Rucio server of `datasets.rucio` (idempotent)."""
    from rucio.common.exception import RucioException

    from robot.backends.base import BackendUnavailable
    from robot.rucio_catalogue import client_from_settings
    from robot.rucio_register import register_grid

    config = ctx.config
    if config.datasets.rucio is None:
        raise click.ClickException("datasets.rucio (host, account, credentials) is not configured")
    storage, _ = _open(ctx)
    storage.prepare()
    try:
        client = client_from_settings(config.datasets.rucio, config.data_path, resolve=config.resolve)
        done = register_grid(storage, client, config.datasets.rucio.account, dry_run=dry_run)
    except (BackendUnavailable, RucioException, OSError) as exc:
        raise click.ClickException(f"Rucio {config.datasets.rucio.host}: {type(exc).__name__}: {exc}") from exc
    if as_json:
        click.echo(json.dumps({"dry_run": dry_run, "changed": done.changed, **done.as_dict()}, indent=2))
        return
    verb = "would add" if dry_run else "added"
    if not done.changed:
        click.echo("Rucio already holds the grid's data: nothing to add")
        return
    for key, value in done.as_dict().items():
        if value:
            shown = value if isinstance(value, int) else ", ".join(value)
            click.echo(f"{verb} {key}: {shown}")


@grid_group.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. No credential is checked: keep it on loopback.")
@click.option("--port", type=click.IntRange(0, 65535), default=25080, show_default=True,
              help="Port to listen on (0: any free port).")
@pass_context
def grid_serve(ctx: Context, host: str, port: int) -> None:
    """Run the embedded grid behind PanDA's REST API, with its worker nodes, until SIGTERM or Ctrl-C."""
    from robot.backends.embedded.grid import EmbeddedGrid  # noqa: PLC0415 - only when serving
    from robot.backends.embedded.panda_service import serve  # noqa: PLC0415
    from robot.backends.embedded.workers import GridWorkers  # noqa: PLC0415

    storage, state = _open(ctx)  # the same checks as the other grid commands
    state.close()
    config = ctx.config
    grid = EmbeddedGrid(storage.config, grid_state_dir(config), SystemClock(),
                        config.backend.embedded.max_parallel_jobs, dispatch="pull")
    made = grid.storage.prepare()
    if made:
        click.echo(f"generated {len(made)} dataset(s)", err=True)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    try:
        handle = serve(grid, host, port)
    except OSError as exc:
        grid.state.close()
        same_host = ["--host", host] if host != "127.0.0.1" else []
        said = os.strerror(exc.errno) if exc.errno else str(exc)
        raise click.ClickException(f"cannot listen on {host}:{port}: {said}; another port: "
                                   f"`{ctx.command('grid', 'serve', *same_host, '--port', '0')}` "
                                   "(0: any free port, printed in PANDA_URL)") from exc
    grid.start(period=1.0)
    workers = GridWorkers(grid, handle.url).start()
    queues = grid.storage.queue_settings()
    click.echo(f"embedded grid: {len(queues)} queues, {workers.threads} worker(s), served at\n"
               f"PANDA_URL={handle.url}\nPANDA_URL_SSL={handle.url}\nMONITOR_URL={handle.monitor_url}", err=False)
    try:
        while not stop.wait(1.0):
            pass
    finally:
        click.echo("stopping: worker nodes, then the service and the grid", err=True)
        workers.stop()
        handle.close()
        grid.stop()
        grid.state.close()



UTC_TIME = click.DateTime(["%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S"])


@grid_group.group("downtime")
def grid_downtime() -> None:
    """Downtimes the embedded grid's sites announce (as real sites do in GOCDB)."""


@grid_downtime.command("add")
@click.argument("site")
@click.option("--start", type=UTC_TIME, help="Start, UTC (e.g. '2026-11-28 08:00'; default: now).")
@click.option("--end", type=UTC_TIME, help="End, UTC.")
@click.option("--for", "duration", type=DURATION, help="Length instead of --end (e.g. 4h).")
@click.option("--reason", required=True, help="What the site does (shown to shifters).")
@pass_context
def grid_downtime_add(ctx: Context, site: str, start: datetime | None, end: datetime | None,
                      duration: timedelta | None, reason: str) -> None:
    """Announce a downtime of SITE: its queues are not excluded nor blamed while it lasts."""
    from robot.cli import os_user

    storage, state = _open(ctx)
    sites = sorted({q.site for q in storage.queue_settings()})
    if site not in sites:
        close = difflib.get_close_matches(site, sites, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; known sites: {', '.join(sites)}"
        raise click.BadParameter(f"unknown site {site!r}{hint}", param_hint="SITE")
    if (end is None) == (duration is None):
        raise click.UsageError("give the downtime's end: --end '2026-11-28 12:00' or --for 4h")
    begin = start.replace(tzinfo=UTC) if start else SystemClock().now()
    until = end.replace(tzinfo=UTC) if end else begin + duration
    if until <= begin:
        raise click.BadParameter(f"the end ({until:%Y-%m-%d %H:%M}) is not after the start "
                                 f"({begin:%Y-%m-%d %H:%M})", param_hint="--end")
    state.add_downtime(site, begin, until, reason, os_user())
    click.echo(f"{site}: downtime {begin:%Y-%m-%d %H:%M} to {until:%Y-%m-%d %H:%M} UTC ({reason})")


@grid_downtime.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_context
def grid_downtime_list(ctx: Context, as_json: bool) -> None:
    """Every announced downtime, oldest first."""
    _, state = _open(ctx, reading=True)
    rows = state.downtimes()
    if as_json:
        click.echo(json.dumps([{"id": i, "site": site, "start": start.isoformat(), "end": until.isoformat(),
                                "reason": reason, "by": actor} for i, site, start, until, reason, actor in rows],
                              indent=2))
        return
    if not rows:
        click.echo("no downtime announced")
    for i, site, start, until, reason, actor in rows:
        click.echo(f"{i:>4} {site:24} {start:%Y-%m-%d %H:%M} to {until:%Y-%m-%d %H:%M} UTC  {reason} (by {actor})")
