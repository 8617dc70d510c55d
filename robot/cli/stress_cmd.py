"""`healthrobot stress ...`: request, approve, cancel and read stress tests.

Who asks, approves or cancels is the person at the keyboard: the operating system's user name, never
a name typed on the command line (the dashboard uses its sign-in). On the embedded grid the
shipped configuration makes that user an operator (`stress.local_user_is_operator`).
"""
from __future__ import annotations

import json
import time
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import click

from robot.cli import Context, os_user, pass_context
from robot.cli.params import DURATION

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from robot.config import RobotConfig
    from robot.stress import StressRequestError

STALE_AFTER_INTERVALS = 3  # as /health: the loop is late when its last step is older than this many intervals


def _fail(exc: StressRequestError) -> None:
    raise click.ClickException("request refused:\n  " + "\n  ".join(exc.problems))


def local_config(ctx: Context) -> RobotConfig:
    """The configuration as it applies to the OS user at the keyboard (an operator if so configured)."""
    from robot.stress import with_local_operator

    return with_local_operator(ctx.config, os_user())


@click.group("stress")
def stress_group() -> None:
    """Stress tests: many concurrent jobs on a queue, on request."""


@stress_group.command("request")
@click.option("--queue", "queues", multiple=True, required=True, help="Queue to load (repeatable).")
@click.option("--template", required=True, help="A stress template.")
@click.option("--jobs", type=int, required=True, help="Jobs to run per queue (retries come on top).")
@click.option("--concurrency", type=int, required=True, help="Jobs in flight at once per queue.")
@click.option("--duration", type=DURATION, help="Stop sending after this long (default: the configured cap).")
@click.option("--start", type=click.DateTime(["%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M"]), help="Start time, UTC (default: now).")
@click.option("--allow-excluded", is_flag=True, help="Run even on queues that are excluded.")
@click.option("--comment", default="", help="What changed at the site, what to look for.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_context
def stress_request(ctx: Context, queues: tuple[str, ...], template: str, jobs: int, concurrency: int,
                   duration: timedelta | None, start: datetime | None, allow_excluded: bool,
                   comment: str, as_json: bool) -> None:
    """Ask for a stress test as the OS user; approved at once for an operator or the site's admin."""
    from robot.clock import SystemClock, as_utc
    from robot.stress import StressRequest, StressRequestError, request_stress_test

    request = StressRequest(queues=queues, template=template, jobs=jobs, concurrency=concurrency,
                            requested_by=os_user(), duration=duration, start=as_utc(start) if start else None,
                            allow_excluded=allow_excluded, comment=comment)
    with ctx.session() as session:
        try:
            test = request_stress_test(session, request, local_config(ctx), SystemClock().now())
        except StressRequestError as exc:
            _fail(exc)
        session.commit()
        result = {"id": test.id, "state": test.state, "approved_by": test.approved_by,
                  "start": test.start_time.isoformat(), "end": test.end_time.isoformat()}
    if as_json:
        click.echo(json.dumps(result))
    else:
        how = (f"approved by {result['approved_by']}" if result["approved_by"]
               else f"waiting for an operator's approval: `{ctx.command('stress', 'approve', str(result['id']))}`")
        click.echo(f"stress test {result['id']}: {result['state']} ({how}); runs from {result['start'][:16].replace('T', ' ')} "
                   f"to {result['end'][:16].replace('T', ' ')} UTC at the robot's next steps")


def _rows(session: Session, test_id: int | None = None) -> list[dict[str, Any]]:
    from sqlalchemy import select

    from robot.storage.models import Queue, Template, Test, TestQueue

    query = select(Test, Template.name).join(Template, Template.id == Test.template_id).where(
        Test.category == "stress").order_by(Test.id.desc())
    if test_id is not None:
        query = query.where(Test.id == test_id)
    rows = []
    for test, template in session.execute(query):
        queues = [{"queue": q, "stopped": p.stop_reason} for p, q in session.execute(
            select(TestQueue, Queue.name).join(Queue, Queue.id == TestQueue.queue_id).where(TestQueue.test_id == test.id))]
        rows.append({"id": test.id, "template": template, "state": test.state, "queues": queues,
                     "jobs": test.max_jobs, "concurrency": test.concurrency, "requested_by": test.requested_by,
                     "approved_by": test.approved_by, "start": test.start_time.isoformat(),
                     "end": test.end_time.isoformat(), "outcome": test.outcome, "comment": test.comment})
    return rows


@stress_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_context
def stress_list(ctx: Context, as_json: bool) -> None:
    """Every stress test, newest first."""
    with ctx.session() as session:
        rows = _rows(session)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo(f"no stress tests yet: ask for one with `{ctx.command('stress', 'request', '--help')}`")
        return
    from rich.table import Table

    from robot.cli.render import make_console

    table = Table(header_style="bold")
    for column in ("ID", "State", "Template", "Queues", "Jobs x conc.", "Requested by", "Start (UTC)", "Outcome"):
        table.add_column(column)
    for r in rows:
        table.add_row(str(r["id"]), r["state"], r["template"], ", ".join(q["queue"] for q in r["queues"]),
                      f"{r['jobs']} x {r['concurrency']}", r["requested_by"], r["start"][:16], r["outcome"] or "")
    make_console().print(table)


@stress_group.command("show")
@click.argument("test_id", type=int)
@pass_context
def stress_show(ctx: Context, test_id: int) -> None:
    """One stress test in full (JSON)."""
    with ctx.session() as session:
        rows = _rows(session, test_id)
    if not rows:
        raise click.ClickException(f"no stress test {test_id}")
    click.echo(json.dumps(rows[0], indent=2))


@stress_group.command("approve")
@click.argument("test_id", type=int)
@pass_context
def stress_approve(ctx: Context, test_id: int) -> None:
    """Approve a waiting request as the OS user (operators only)."""
    from robot.clock import SystemClock
    from robot.stress import StressRequestError, approve

    with ctx.session() as session:
        try:
            test = approve(session, test_id, os_user(), local_config(ctx), SystemClock().now())
        except StressRequestError as exc:
            _fail(exc)
        session.commit()
        click.echo(f"stress test {test.id}: {test.state}, approved by {test.approved_by}")


@stress_group.command("cancel")
@click.argument("test_id", type=int)
@pass_context
def stress_cancel(ctx: Context, test_id: int) -> None:
    """Cancel as the OS user: nothing more is sent and the jobs in flight are killed at the robot's next step."""
    from robot.clock import SystemClock
    from robot.stress import StressRequestError, cancel

    with ctx.session() as session:
        try:
            test = cancel(session, test_id, os_user(), SystemClock().now())
        except StressRequestError as exc:
            _fail(exc)
        session.commit()
        click.echo(f"stress test {test.id}: {test.outcome}")


@stress_group.command("watch")
@click.argument("test_id", type=int)
@click.option("--interval", type=DURATION, default="2s", show_default=True, help="Refresh period.")
@pass_context
def stress_watch(ctx: Context, test_id: int, interval: timedelta) -> None:
    """Follow a stress test until it ends: a progress bar on a terminal, else a line at each change."""
    from robot.cli.render import make_console
    from robot.stress import OPEN_STATES

    first = _progress(ctx, test_id)  # an unknown test is said before anything is drawn
    console = make_console(stderr=True)
    if console.is_terminal:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console) as progress:
            task = progress.add_task(f"stress test {test_id}", total=None)
            now = first
            while True:
                progress.update(task, total=now["total"], completed=now["ended"],
                                description="; ".join(filter(None, (now["line"], now["stale"]))))
                if now["state"] not in OPEN_STATES:
                    break
                time.sleep(interval.total_seconds())
                now = _progress(ctx, test_id)
    else:
        now, said = first, None
        while True:
            if now["change"] != said:
                click.echo(f"{now['line']}, {now['ended']}/{now['total']} jobs ended"
                           + (f"; {now['stale']}" if now["stale"] else ""))
                said = now["change"]
            if now["state"] not in OPEN_STATES:
                break
            time.sleep(interval.total_seconds())
            now = _progress(ctx, test_id)
    click.echo(f"stress test {test_id}: {now['state']} ({now['outcome'] or ''})")


def _progress(ctx: Context, test_id: int) -> dict[str, Any]:
    """What `stress watch` shows of a stress test now, and whether a robot is stepping."""
    from sqlalchemy import func, select

    from robot.clock import SystemClock, as_utc
    from robot.durations import format_duration
    from robot.loop import INTERVAL_SETTING, LAST_STEP_SETTING, stepping_interval
    from robot.storage.models import Job, Setting, Test, TestQueue, Worker
    from robot.stress import OPEN_STATES

    with ctx.session() as session:
        test = session.get(Test, test_id)
        if test is None or test.category != "stress":
            raise click.ClickException(f"no stress test {test_id}")
        queues = session.scalar(select(func.count()).select_from(TestQueue).where(TestQueue.test_id == test_id))
        ended = session.scalar(select(func.count()).select_from(Job).where(
            Job.test_id == test_id, Job.retry_of.is_(None), Job.phase == "done"))
        in_flight = session.scalar(select(func.count()).select_from(Job).where(
            Job.test_id == test_id, Job.phase.in_(["recorded", "active"])))
        step = session.get(Setting, LAST_STEP_SETTING)
        stepping = session.get(Setting, INTERVAL_SETTING)
        beats = session.execute(select(func.count(), func.count(Worker.stopped_at), func.max(Worker.stopped_at))).one()
        state, outcome, total = test.state, test.outcome, (test.max_jobs or 0) * (queues or 0)
    line = f"stress test {test_id} {state}, {in_flight} in flight"
    stale = ""
    if state in OPEN_STATES:
        # the interval of the robot that steps (the demo's is not the configuration's), as its last step wrote it
        interval = stepping_interval(stepping.value if stepping else None, ctx.config.loop.interval)
        now = SystemClock().now()
        age = None if step is None else now - as_utc(datetime.fromisoformat(step.value))
        workers, stopped, last_stop = beats
        if age is None:
            stale = f"no robot step has run on this database yet (start one: `{ctx.command('run')}`)"
        elif workers and workers == stopped:  # every robot that stepped here stopped cleanly
            stale = (f"no robot running: the last one stopped {format_duration(now - as_utc(last_stop))} ago "
                     f"(start one: `{ctx.command('run')}`)")
        elif age > STALE_AFTER_INTERVALS * interval:
            stale = f"no robot step for {format_duration(age)} (is `{ctx.command('run')}` or the demo running?)"
    return {"state": state, "outcome": outcome, "total": total, "ended": ended, "line": line, "stale": stale,
            "change": (state, in_flight, ended, bool(stale))}


@stress_group.command("report")
@click.argument("test_id", type=int)
@click.option("--compare", "compare_id", type=int, help="An earlier stress test to set beside it.")
@click.option("--json", "as_json", is_flag=True, help="Print the whole report as JSON (plot data included).")
@pass_context
def stress_report(ctx: Context, test_id: int, compare_id: int | None, as_json: bool) -> None:
    """Throughput, failures and time split of a stress test, beside the queue's functional baseline."""
    from robot.clock import SystemClock
    from robot.storage.models import Test
    from robot.stress_report import build_report

    with ctx.session() as session:
        test = session.get(Test, test_id)
        if test is None or test.category != "stress":
            raise click.ClickException(f"no stress test {test_id}")
        compare = session.get(Test, compare_id) if compare_id else None
        if compare_id and (compare is None or compare.category != "stress"):
            raise click.ClickException(f"no stress test {compare_id} to compare with")
        report = (test.report if test.report and compare is None
                  else build_report(session, test, SystemClock().now(), compare))
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    _print_report(report)


def _print_report(report: dict[str, Any]) -> None:
    from rich.table import Table

    from robot.cli.render import make_console

    console = make_console()
    console.print(f"[bold]stress test {report['test']}[/] {report['template']} on {', '.join(report['queues'])}: "
                  f"{report['state']}" + (f" ({report['outcome']})" if report["outcome"] else ""))
    columns = [("this test", report["summary"]), ("functional baseline", report["baseline"])]
    if "compare" in report:
        columns.append((f"test {report['compare']['test']}", report["compare"]["summary"]))
    table = Table(header_style="bold")
    table.add_column("")
    for title, _ in columns:
        table.add_column(title, justify="right")
    lines = [("jobs ended", lambda s: s["ended"]), ("failed", lambda s: s["failed"]),
             ("failure rate", lambda s: _pct(s["failure_rate"])),
             ("events/s overall", lambda s: _num(s["events_per_second"])),
             ("events/s per job p10/p50/p90", lambda s: _q(s["events_per_second_per_job"], "{:.0f}")),
             ("CPU efficiency %", lambda s: _num(s["cpu_efficiency"]))]
    lines += [(f"{step} s p10/p50/p90", lambda s, step=step: _q(s["times"][step], "{:.2f}"))
              for step in ("queue", "stagein", "setup", "payload", "stageout")]
    for label, value in lines:
        table.add_row(label, *(str(value(summary)) for _, summary in columns))
    console.print(table)
    for error, count in report["summary"]["top_errors"]:
        console.print(f"  {count} x {error}")
    for queue, reason in report.get("stops", {}).items():
        console.print(f"  stopped at {queue}: {reason}")


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _q(values: dict[str, Any], fmt: str) -> str:
    if not values.get("n"):
        return "-"
    return "/".join(fmt.format(values[k]) for k in ("p10", "p50", "p90"))

