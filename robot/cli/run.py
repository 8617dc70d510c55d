"""`healthrobot run`: the daemon. APScheduler calls `run_once(now)` every `loop.interval`."""
from __future__ import annotations

import json
import logging
import signal
from datetime import timezone
from types import FrameType

import click
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.blocking import BlockingScheduler

from robot.cli import Context, pass_context
from robot.clock import SystemClock
from robot.loop import settle
from robot.services import build
from robot.workers import AnotherRobotRunning

log = logging.getLogger("robot.daemon")


@click.command("run")
@click.option("--once", is_flag=True, help="Take a single step, print its summary as JSON, and exit.")
@pass_context
def run(ctx: Context, once: bool) -> None:
    """Run the robot: submit, poll, store and evaluate every loop interval until SIGTERM."""
    ctx.require_database()
    clock = SystemClock()
    services = build(ctx.config, clock)
    try:
        services.robot.workers.register(clock.now())
    except AnotherRobotRunning as exc:
        services.close()
        raise click.ClickException(str(exc)) from exc
    if services.grid is not None:  # the embedded grid runs in this process
        services.grid.storage.prepare()
        services.grid.start()
    try:
        if once:
            click.echo(json.dumps(services.robot.run_once(clock.now()).as_dict()))
            return
        _serve(services.robot.run_once, clock, ctx.config.loop.interval.total_seconds())
    finally:
        services.robot.workers.stop(clock.now())  # the other processes take its queues at once
        services.close()
        log.warning("stopped cleanly")


def _serve(step, clock: SystemClock, interval: float) -> None:  # type: ignore[no-untyped-def]
    scheduler = BlockingScheduler(executors={"default": ThreadPoolExecutor(1)}, timezone=timezone.utc)

    settled = False

    def one_step() -> None:
        nonlocal settled
        summary = step(clock.now())
        log.info("step: %s", summary.as_dict())
        if not settled:
            settle()
            settled = True

    def stop(signum: int, _frame: FrameType | None) -> None:
        log.warning("received %s: finishing the current step and stopping", signal.Signals(signum).name)
        scheduler.shutdown(wait=True)

    scheduler.add_job(one_step, "interval", seconds=interval, next_run_time=clock.now(), max_instances=1,
                      coalesce=True, id="run_once")
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.warning("robot running: one step every %.0f s", interval)
    scheduler.start()

