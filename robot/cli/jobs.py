"""`healthrobot jobs list`: recent test jobs with their PanDA IDs and errors."""
from __future__ import annotations

import json

import click
from rich.table import Table
from sqlalchemy import select

from robot.cli import Context, pass_context
from robot.cli.queues import require_queue
from robot.cli.render import make_console
from robot.storage.models import Job, Queue, Template, Test


@click.group("jobs")
def jobs_group() -> None:
    """Test jobs."""


@jobs_group.command("list")
@click.option("--queue", help="Only this queue.")
@click.option("--outcome", type=click.Choice(["completed", "failed", "cancelled", "unknown", "in-flight"]))
@click.option("--limit", type=click.IntRange(1, 10000), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_context
def jobs_list(ctx: Context, queue: str | None, outcome: str | None, limit: int, as_json: bool) -> None:
    """The newest jobs first."""
    query = (select(Job, Queue.name, Template.name).join(Queue, Queue.id == Job.queue_id)
             .join(Test, Test.id == Job.test_id).join(Template, Template.id == Test.template_id)
             .order_by(Job.id.desc()).limit(limit))
    if queue:
        query = query.where(Queue.name == queue)
    if outcome == "in-flight":
        query = query.where(Job.phase.in_(["recorded", "active"]))
    elif outcome:
        query = query.where(Job.outcome == outcome)
    with ctx.session() as session:
        if queue:
            require_queue(session, queue)
        rows = [{"panda_id": job.panda_id, "queue": qname, "template": tname, "job_status": job.job_status,
                 "outcome": job.outcome, "error_class": job.error_class, "error": job.error_name,
                 "diag": job.error_diag, "n_events": job.n_events,
                 "end_time": job.end_time.isoformat() if job.end_time else None}
                for job, qname, tname in session.execute(query)]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows and not queue and not outcome:
        click.echo(f"no test jobs yet: the robot has not run on this database; start it with `{ctx.command('run')}`"
                   f"{ctx.demo_hint()}")
        return
    table = Table(header_style="bold")
    for column in ("PanDA ID", "Queue", "Template", "Status", "Outcome", "Class", "Error", "Events", "Ended (UTC)"):
        table.add_column(column)
    for r in rows:
        table.add_row(str(r["panda_id"] or "-"), r["queue"], r["template"], r["job_status"] or "-", r["outcome"] or "-",
                      r["error_class"] or "", r["error"] or "", str(r["n_events"]), (r["end_time"] or "")[:19])
    make_console().print(table)

