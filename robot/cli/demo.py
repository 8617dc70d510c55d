"""`healthrobot demo`: one command that shows the robot at work on the embedded grid.

It prepares input data, starts the embedded grid and the robot in a fresh folder, and shows a live
table of queue health until `--duration` is over (or Ctrl-C). One queue of the default grid is
scheduled to break during the demo.
"""
from __future__ import annotations

import json
import shutil
import time
from datetime import timedelta
from pathlib import Path

import click
from sqlalchemy import select
from rich.console import Group
from rich.live import Live
from rich.text import Text

from robot.cli import Context, pass_context
from robot.cli.params import DURATION
from robot.cli.render import BROKEN, DEGRADED, health_table, make_console
from robot.clock import SystemClock
from robot.config import DatabaseConfig
from robot.durations import format_duration
from robot.metrics import Health, health
from robot.services import build
from robot.storage.database import upgrade
from robot.storage.models import Queue, QueueTransition


@click.command("demo")
@click.option("--duration", type=DURATION, default="3m", show_default=True, help="Stop by itself after this long.")
@click.option("--interval", type=DURATION, default="2s", show_default=True, help="Time between loop steps.")
@click.option("--window", type=DURATION, default="1h", show_default=True, help="Health window shown.")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path),
              help="Folder for the demo's database and grid (default: <data_dir>/demo, emptied first).")
@click.option("--keep", is_flag=True, help="Keep what an earlier demo left in the folder.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary at the end (and no live table).")
@pass_context
def demo(ctx: Context, duration: timedelta, interval: timedelta, window: timedelta, workdir: Path | None,
         keep: bool, as_json: bool) -> None:
    """Run the robot against the embedded grid with a live health table."""
    workdir = (workdir or ctx.config.data_path / "demo").resolve()
    if not keep:
        shutil.rmtree(workdir, ignore_errors=True)
    config = ctx.config.model_copy(update={"data_dir": str(workdir), "database": DatabaseConfig()})
    console = make_console(stderr=as_json)
    clock = SystemClock()
    services = build(config, clock)
    console.print(f"[bold]Queue Health Robot demo[/] in {workdir}")
    console.print("preparing input data (real ROOT files) ...")
    services.grid.storage.prepare()
    upgrade(services.engine)
    queues = services.grid.storage.queue_settings()
    console.print(f"embedded grid: {len(queues)} queues at {len({q.site for q in queues})} sites in "
                  f"{len({q.cloud for q in queues})} clouds, {config.backend.embedded.max_parallel_jobs} jobs at once")
    for fault in services.grid.config.faults:
        when = f"{format_duration(fault.start_after)} in" if fault.start_after is not None else f"at {fault.start}"
        console.print(f"scheduled fault: [red]{fault.queue}[/] {fault.mode.value} {when}, for {format_duration(fault.duration)}")
    console.print(f"break another queue from a second terminal:\n  HEALTHROBOT_DATA_DIR={workdir} "
                  f"healthrobot --config {ctx.config_path} grid break ANALY_FZK --mode cvmfs --for 10m\n")

    services.grid.start(period=0.5)
    started = clock.now()
    deadline = time.monotonic() + duration.total_seconds()
    totals = {"submitted": 0, "finished": 0, "steps": 0}
    live = Live(console=console, auto_refresh=False, transient=False) if console.is_terminal and not as_json else None
    last_print = 0.0
    try:
        if live:
            live.start()
        while True:
            now = clock.now()
            summary = services.robot.run_once(now)
            totals["submitted"] += summary.submitted
            totals["finished"] += summary.finished
            totals["steps"] += 1
            with services.sessions() as session:
                found = health(session, now, window)
            elapsed = now - started
            progress = (f"elapsed {format_duration(elapsed)} of {format_duration(duration)} · "
                        f"{totals['submitted']} jobs submitted · {totals['finished']} finished · "
                        f"{services.grid.running_jobs()} running")
            if live:
                live.update(Group(Text(progress), health_table(found, title="Queue health")), refresh=True)
            elif not as_json and time.monotonic() - last_print >= 15:
                console.print(progress)
                last_print = time.monotonic()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            time.sleep(min(interval.total_seconds(), remaining))
    except KeyboardInterrupt:
        console.print("interrupted")
    finally:
        if live:
            live.stop()
        services.close()
    if not live and not as_json:
        console.print(health_table(found, title="Queue health"))
    verdict = _verdict(found)
    with services.sessions() as session:  # the engine reconnects after close()
        decisions = [{"time": t.time.isoformat(), "queue": name, "old": t.old, "new": t.new, "applied": t.applied,
                      "reason": t.reason}
                     for t, name in session.execute(select(QueueTransition, Queue.name)
                                                    .join(Queue, Queue.id == QueueTransition.queue_id)
                                                    .where(QueueTransition.kind == "status")
                                                    .order_by(QueueTransition.id))]
    if as_json:
        click.echo(json.dumps({"workdir": str(workdir), "started": started.isoformat(),
                               "duration_seconds": (clock.now() - started).total_seconds(), **totals,
                               **verdict, "exclusions": decisions, "health": [h.as_dict() for h in found]}, indent=2))
    else:
        console.print(f"broken queues (failure rate >= {BROKEN:.0%}): {', '.join(verdict['broken']) or 'none'}")
        console.print(f"degraded queues ({DEGRADED:.0%}-{BROKEN:.0%}): {', '.join(verdict['degraded']) or 'none'}")
        for d in decisions:
            mode = "" if d["applied"] else " [dry-run]"
            console.print(f"exclusion engine{mode}: {d['queue']} {d['old']} -> {d['new']}: {d['reason']}")
        console.print(f"see it again: HEALTHROBOT_DATA_DIR={workdir} healthrobot --config {ctx.config_path} status")


def _verdict(found: list[Health]) -> dict[str, list[str]]:
    rated = [h for h in found if h.failure_rate is not None]
    return {"broken": [h.key for h in rated if h.failure_rate >= BROKEN],  # type: ignore[operator]
            "degraded": [h.key for h in rated if DEGRADED <= h.failure_rate < BROKEN]}  # type: ignore[operator]


COMMANDS = [demo]
