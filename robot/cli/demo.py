"""`healthrobot demo`: one command that shows the robot at work on the embedded grid.

It prepares input data, starts the embedded grid and the robot in a fresh folder, and shows a live
table of queue health until `--duration` is over (or Ctrl-C). One queue of the default grid is
scheduled to break during the demo.
"""
from __future__ import annotations

import errno
import json
import logging
import shutil
import signal
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import click
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from robot.cli import Context, pass_context
from robot.cli.params import DURATION
from robot.cli.render import BROKEN, DEGRADED, health_table, make_console
from robot.clock import SystemClock, as_utc
from robot.config import DatabaseConfig, RobotConfig
from robot.durations import format_duration
from robot.metrics import Health, health
from robot.services import Services, build
from robot.storage.database import upgrade
from robot.storage.models import Job, Queue, QueueTransition
from robot.tickets.verdict import HEALTHY_MIN_JOBS
from robot.vocabulary import decision, plain_reason, ticket_verdict

if TYPE_CHECKING:
    from dashboard.app import DashboardServer
    from robot.backends.embedded.grid import EmbeddedGrid
    from robot.backends.embedded.panda_service import PandaServiceHandle
    from robot.backends.embedded.workers import GridWorkers


@click.command("demo")
@click.option("--duration", type=DURATION, default="3m", show_default=True, help="Stop by itself after this long.")
@click.option("--interval", type=DURATION, default="2s", show_default=True, help="Time between loop steps.")
@click.option("--window", type=DURATION, default="1h", show_default=True, help="Health window shown.")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path),
              help="Folder for the demo's database and grid (default: <data_dir>/demo, emptied first).")
@click.option("--keep", is_flag=True, help="Keep what an earlier demo left in the folder.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary at the end (and no live table).")
@click.option("--no-dashboard", is_flag=True, help="Do not start the web dashboard.")
@click.option("--dashboard-port", type=click.IntRange(0, 65535),
              help="Port of the demo's dashboard (default: dashboard.port; 0: any free port).")
@click.option("--via-panda", is_flag=True,
              help="Serve the grid over PanDA's REST API and make the robot use its PanDA backend (panda-client).")
@pass_context
def demo(ctx: Context, duration: timedelta, interval: timedelta, window: timedelta, workdir: Path | None,
         keep: bool, as_json: bool, no_dashboard: bool, dashboard_port: int | None, via_panda: bool = False) -> None:
    """Run the robot against the embedded grid with a live health table (and the web dashboard)."""
    workdir = (workdir or ctx.config.data_path / "demo").resolve()
    if not keep:
        shutil.rmtree(workdir, ignore_errors=True)
    # The robot's own interval is the demo's: its heartbeat (robot/workers.py) and `stress watch` go by it.
    # A stable queue's tests are spaced by `stable_gap` (1h) to save test jobs in production; in a run of
    # minutes that would leave the healthy queues idle after their first jobs, so the demo tests back to back.
    paced = ctx.config.blacklist.default.stable_gap
    blacklist = ctx.config.blacklist.model_copy(update={
        "default": ctx.config.blacklist.default.model_copy(update={"stable_gap": timedelta(0)}),
        "user_jobs": ctx.config.blacklist.user_jobs.model_copy(update={"watched_gap": timedelta(0)})})
    config = ctx.config.model_copy(update={"data_dir": str(workdir), "database": DatabaseConfig(), "blacklist": blacklist,
                                           "loop": ctx.config.loop.model_copy(update={"interval": interval})})
    console = make_console(stderr=as_json)
    clock = SystemClock()
    services, panda = _build(config, clock, via_panda)
    console.print(f"[bold]Queue Health Robot demo[/] in {workdir}")
    console.print("preparing input data (real ROOT files) ...")
    services.grid.storage.prepare()
    upgrade(services.engine)
    queues = services.grid.storage.queue_settings()
    console.print(f"embedded grid: {len(queues)} queues at {len({q.site for q in queues})} sites in "
                  f"{len({q.cloud for q in queues})} clouds, {config.backend.embedded.max_parallel_jobs} jobs at once")
    if paced:
        console.print(f"healthy queues are tested back to back (blacklist.default.stable_gap 0s instead of "
                      f"{format_duration(paced)}, so that minutes show them)", markup=False)
    for fault in services.grid.config.faults:
        when = f"{format_duration(fault.start_after)} in" if fault.start_after is not None else f"at {fault.start}"
        console.print(f"scheduled fault: [red]{fault.queue}[/] {fault.mode.value} {when}, for {format_duration(fault.duration)}")
    again = f"HEALTHROBOT_DATA_DIR={workdir} {ctx.command()}"  # every command on the demo's database
    console.print(f"break another queue from a second terminal:\n  {again} grid break ANALY_FZK --mode cvmfs --for 10m",
                  markup=False, soft_wrap=True)
    log_file = workdir / "demo.log"
    console.print(f"log of the robot and the web server: {log_file}\n", markup=False, soft_wrap=True)

    faulted = [f.queue for f in services.grid.config.faults]

    def waiting() -> str | None:
        """What the demo's tickets still wait for (None: nothing): they are written after what they are about."""
        if not faulted:
            return None
        with services.sessions() as session:
            return ticket_plan(session, faulted[0], faulted).missing()

    with _logs_to(log_file), _stop_on_sigterm():
        totals, started, live = _run(services, panda, config, clock, console, duration, interval, window,
                                     as_json, not no_dashboard, dashboard_port, waiting)
    with services.sessions() as session:  # the state at the end, however the loop ended (the engine reconnects)
        found = health(session, clock.now(), window)
    if not live and not as_json:
        console.print(health_table(found, title="Queue health"))
    verdict = _verdict(found)
    tickets = _demo_tickets(config, services, faulted, started, workdir, clock)
    with services.sessions() as session:
        decisions = [{"time": t.time.isoformat(), "queue": name, "old": t.old, "new": t.new, "applied": t.applied,
                      "actor": t.actor, "decision": decision(t.old, t.new, t.applied), "reason": t.reason,
                      "why": plain_reason(t.reason, t.evidence, t.time, t.new)}
                     for t, name in session.execute(select(QueueTransition, Queue.name)
                                                    .join(Queue, Queue.id == QueueTransition.queue_id)
                                                    .where(QueueTransition.kind == "status")
                                                    .order_by(QueueTransition.id))]
    if as_json:
        click.echo(json.dumps({"workdir": str(workdir), "started": started.isoformat(),
                               "duration_seconds": (clock.now() - started).total_seconds(), **totals,
                               **verdict, "exclusions": decisions, "tickets": tickets,
                               "health": [h.as_dict() for h in found]}, indent=2))
    else:
        console.print(f"broken queues (failure rate >= {BROKEN:.0%}): {', '.join(verdict['broken']) or 'none'}")
        console.print(f"degraded queues ({DEGRADED:.0%}-{BROKEN:.0%}): {', '.join(verdict['degraded']) or 'none'}")
        for d in decisions:
            console.print(f"{d['queue']}: {d['actor']}: {d['decision']}: {d['why']}", markup=False)
        for ticket in tickets:
            console.print(f"demo ticket {ticket['id']} ({ticket['subject']}): {ticket_verdict(ticket['verdict'])}: "
                          f"{ticket['reason']}; see why: {again} why ticket:{ticket['id']}", markup=False, soft_wrap=True)
        console.print(f"see it again: {again} status", markup=False, soft_wrap=True)


def _run(services: Services, panda: "_ViaPanda | None", config: RobotConfig, clock: SystemClock, console: Console,
         duration: timedelta, interval: timedelta, window: timedelta, as_json: bool, dashboard: bool,
         dashboard_port: int | None, waiting: Callable[[], str | None]) -> tuple[dict[str, int], datetime, bool]:
    """The demo's loop, with the dashboard and the grid around it; stops after `duration`, Ctrl-C or SIGTERM.

    When `duration` is over while `waiting()` still names something the demo's tickets need (on a slow
    machine), it goes on until that is there, for at most `duration` more; Ctrl-C stops it at once."""
    server = _start_dashboard(config, services, clock, dashboard_port, console) if dashboard else None
    services.grid.start(period=0.5)
    if panda is not None:
        panda.start(console)
    started = clock.now()
    deadline = time.monotonic() + duration.total_seconds()
    totals = {"submitted": 0, "finished": 0, "steps": 0}
    live = Live(console=console, auto_refresh=False, transient=False) if console.is_terminal and not as_json else None
    last_print = 0.0
    told = False
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
                missing = waiting() if remaining > -duration.total_seconds() else None
                if missing is None:
                    break
                if not told:
                    told = True
                    console.print(f"{missing}: going on for up to {format_duration(duration)} more (Ctrl-C stops now)",
                                  markup=False)
                remaining = interval.total_seconds()
            time.sleep(min(interval.total_seconds(), remaining))
    except KeyboardInterrupt:
        console.print("interrupted")
    finally:
        if live:
            live.stop()
        if server is not None:
            server.stop()
        if panda is not None:
            panda.close()
        if services.robot.workers is not None:  # a clean stop: `stress watch` says at once that no robot runs
            services.robot.workers.stop(clock.now())
        services.close()
    return totals, started, live is not None


@dataclass(frozen=True)
class TicketPlan:
    """When the demo's two tickets can be written: after what each is about has been seen in this run.

    So their verdicts follow from what the demo ran, not from how fast this machine ran it."""

    broken: str
    broken_from: datetime | None  # the robot's first exclusion of the broken queue (dry-run or not)
    healthy: str | None  # the healthy queue the second ticket is about: no site failure, most tests ...
    healthy_from: datetime | None  # ... the end of its HEALTHY_MIN_JOBS-th finished test (None: not yet)
    healthy_jobs: int  # its finished tests so far

    def missing(self) -> str | None:
        """What is not there yet, in words (None: both tickets can be written)."""
        wants = []
        if self.broken_from is None:
            wants.append(f"the robot's exclusion of {self.broken}")
        if self.healthy_from is None:
            wants.append(f"{HEALTHY_MIN_JOBS} finished tests at a healthy queue "
                         f"({self.healthy_jobs} at {self.healthy})" if self.healthy else "a healthy queue")
        return f"the demo's tickets wait for {' and '.join(wants)}" if wants else None


def ticket_plan(session: Session, broken: str, faulted: Collection[str]) -> TicketPlan:
    """The demo tickets' times from the database: the broken queue's first exclusion by the robot, and the
    healthy queue (no fault, no site failure) that reached HEALTHY_MIN_JOBS finished tests first."""
    excluded = session.scalar(
        select(func.min(QueueTransition.time)).join(Queue, Queue.id == QueueTransition.queue_id)
        .where(Queue.name == broken, QueueTransition.kind == "status", QueueTransition.new != "online",
               ~QueueTransition.actor.startswith("person:"), QueueTransition.actor != "backend"))
    ends: dict[str, list[datetime]] = {}
    site_failed: set[str] = set()
    for queue, end, klass, outcome in session.execute(
            select(Queue.name, Job.end_time, Job.error_class, Job.outcome).join(Queue, Queue.id == Job.queue_id)
            .where(Job.outcome.in_(["completed", "failed"]), Queue.name.not_in(list(faulted)))
            .order_by(Job.end_time)):
        ends.setdefault(queue, []).append(as_utc(end))
        if outcome == "failed" and klass == "site":
            site_failed.add(queue)
    healthy = {queue: times for queue, times in ends.items() if queue not in site_failed}
    ready = sorted((times[HEALTHY_MIN_JOBS - 1], queue) for queue, times in healthy.items()
                   if len(times) >= HEALTHY_MIN_JOBS)
    if ready:
        healthy_from, queue = ready[0]
        return TicketPlan(broken, as_utc(excluded) if excluded else None, queue, healthy_from, len(healthy[queue]))
    best = max(sorted(healthy), key=lambda q: len(healthy[q]), default=None)
    return TicketPlan(broken, as_utc(excluded) if excluded else None, best, None, len(healthy.get(best or "", [])))


def _demo_tickets(config: RobotConfig, services: Services, faulted: list[str], started: datetime, workdir: Path,
                  clock: SystemClock) -> list[dict[str, object]]:
    """Support tickets written for this run, about its broken queue and a healthy one, imported and judged.

    Each is dated after what it is about was seen (`ticket_plan`); when the run ended before that (Ctrl-C),
    it is dated inside the run, and its verdict says what was missing."""
    from robot.classify import load_table  # noqa: PLC0415
    from robot.tickets.ingest import import_demo_tickets  # noqa: PLC0415

    if not faulted:
        return []
    with services.sessions() as session:
        plan = ticket_plan(session, faulted[0], faulted)
    if plan.healthy is None:
        return []
    table = load_table(config.resolve(config.classification.table) if config.classification.table else None)
    end = clock.now()
    with services.sessions() as session:
        tickets = import_demo_tickets(session, config, table, workdir / "demo-tickets.mbox", plan.broken,
                                      plan.healthy, plan.broken_from or started, plan.healthy_from or started, end)
        session.commit()
        return [{"id": t.id, "subject": t.subject, "verdict": t.verdict, "reason": t.verdict_reason} for t in tickets]


def _start_dashboard(config: RobotConfig, services: Services, clock: SystemClock, port: int | None,
                     console: Console) -> "DashboardServer | None":
    """The dashboard on the demo's database, in a thread; viewing is open (it listens on loopback).

    When its port is taken, it listens on a free one and says which.
    """
    try:
        from dashboard.app import DashboardServer, create_app

        settings = config.dashboard.model_copy(update={"anonymous_read": True})
        app = create_app(config.model_copy(update={"dashboard": settings}), services.sessions, clock)
        wanted = settings.port if port is None else port
        try:
            server = DashboardServer(app.server, settings.host, wanted)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE or wanted == 0:
                raise
            server = DashboardServer(app.server, settings.host, 0)
            console.print(f"port {wanted} is taken: the dashboard listens on port {server.server.port} instead")
        server.start()
    except Exception as exc:  # the demo goes on without it
        console.print(f"[yellow]dashboard not started: {exc}[/]")
        return None
    console.print(f"dashboard: [bold]{server.url}[/]  (health: {server.url}/health, metrics: {server.url}/metrics)")
    return server


@contextmanager
def _logs_to(path: Path) -> Iterator[None]:
    """Every log record (the robot's, the web server's request lines) goes to `path`, none to the terminal."""
    root = logging.getLogger()
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    saved = root.handlers[:]
    web = logging.getLogger("werkzeug")
    saved_web = (web.handlers[:], web.level)
    root.handlers[:] = [handler]
    web.handlers[:] = []
    web.setLevel(logging.INFO)  # the request lines, in the file
    try:
        yield
    finally:
        root.handlers[:] = saved
        web.handlers[:], _ = saved_web
        web.setLevel(saved_web[1])
        handler.close()


@contextmanager
def _stop_on_sigterm() -> Iterator[None]:
    """SIGTERM ends the demo as Ctrl-C does: the summary is still printed."""

    def interrupt(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _verdict(found: list[Health]) -> dict[str, list[str]]:
    rated = [h for h in found if h.failure_rate is not None]
    return {"broken": [h.key for h in rated if h.failure_rate >= BROKEN],  # type: ignore[operator]
            "degraded": [h.key for h in rated if DEGRADED <= h.failure_rate < BROKEN]}  # type: ignore[operator]


class _ViaPanda:
    """--via-panda: the grid in pull mode behind its PanDA service, and the grid's worker nodes."""

    def __init__(self, grid: "EmbeddedGrid", handle: "PandaServiceHandle"):
        self.grid = grid
        self.handle = handle
        self.workers: "GridWorkers | None" = None

    def start(self, console: Console) -> None:
        from robot.backends.embedded.workers import GridWorkers  # noqa: PLC0415

        self.workers = GridWorkers(self.grid, self.handle.url).start()
        console.print(f"the robot reaches the grid through PanDA's REST API (panda-client) at "
                      f"PANDA_URL={self.handle.url}")

    def close(self) -> None:
        if self.workers is not None:
            self.workers.stop()
        self.handle.close()


def _build(config: RobotConfig, clock: SystemClock, via_panda: bool) -> tuple[Services, _ViaPanda | None]:
    """The robot's services; with --via-panda its backend is PandaBackend against the served grid."""
    if not via_panda:
        return build(config, clock), None
    from robot.backends.embedded.config import load_grid_config  # noqa: PLC0415
    from robot.backends.embedded.grid import EmbeddedGrid  # noqa: PLC0415
    from robot.backends.embedded.panda_service import serve  # noqa: PLC0415
    from robot.config import PandaConfig  # noqa: PLC0415
    from robot.services import grid_state_dir  # noqa: PLC0415

    grid = EmbeddedGrid(load_grid_config(config.resolve(config.backend.embedded.grid)), grid_state_dir(config),
                        clock, config.backend.embedded.max_parallel_jobs, dispatch="pull")
    handle = serve(grid)
    # The grid itself is the status store: PanDA cannot set a queue's status (CRIC does, in production).
    backend = config.backend.model_copy(update={"kind": "panda", "panda": PandaConfig(url=handle.url, auth="none")})
    try:
        services = build(config.model_copy(update={"backend": backend}), clock, grid=grid)
    except Exception:
        handle.close()
        grid.state.close()
        raise
    return services, _ViaPanda(grid, handle)

