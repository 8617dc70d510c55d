"""`healthrobot history import FILE`: jobs exported from PanDA's monitoring, as observed jobs."""
from __future__ import annotations

import json
import shlex
from pathlib import Path

import click

from robot.cli import Context, pass_context
from robot.clock import SystemClock

DEFAULT_TEMPLATE = "history"


@click.group("history")
def history_group() -> None:
    """Past jobs from PanDA's monitoring, for `policy replay` and the pages."""


@history_group.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--template", default=DEFAULT_TEMPLATE, show_default=True,
              help="The template the imported jobs are filed under (replay them with `policy replay --template`).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_context
def history_import(ctx: Context, file: Path, template: str, as_json: bool) -> None:
    """Import FILE: PanDA monitor job records (JSON: {"jobs": [...]}, a list, or one per line).

    Final jobs (finished, failed, cancelled, closed) at queues of the configured topology are
    stored as observed jobs; a PanDA ID already stored is skipped, so importing again adds
    nothing. Bad records are reported with their line and field and skipped.
    """
    from robot.classify import load_table
    from robot.history import HistoryFileError, import_history
    from robot.services import topology_source
    from robot.sync import sync_topology

    if ctx.config.templates and template in {t.name for t in ctx.config.templates}:
        raise click.ClickException(f"--template {template}: a configured template of the robot's own jobs; "
                                   "file imported jobs under another name")
    config = ctx.config
    table = load_table(config.resolve(config.classification.table) if config.classification.table else None)
    now = SystemClock().now()
    with ctx.session(create=True) as session:
        sync_topology(session, topology_source(config).topology(), now)
        try:
            summary = import_history(session, file, template, table, now)
        except HistoryFileError as exc:
            raise click.ClickException(f"{file}: {exc}") from exc
        session.commit()
    if as_json:
        click.echo(json.dumps({"file": str(file), "template": template, **summary.as_dict()}, indent=2))
        return
    click.echo(f"{file}: {summary.records} record(s): {summary.imported} imported, {summary.already_known} already "
               f"stored, {summary.not_final} not final, {len(summary.problems)} bad")
    if summary.first_end is not None:
        click.echo(f"jobs ended {summary.first_end:%Y-%m-%d %H:%M} to {summary.last_end:%Y-%m-%d %H:%M} UTC, "
                   f"filed under template {template!r}")
    for problem in summary.problems[:20]:
        click.echo(f"  {file}:{problem}")
    if len(summary.problems) > 20:
        click.echo(f"  ... {len(summary.problems) - 20} more (--json lists the first 50)")
    for queue, count in summary.unknown_queues.most_common(10):
        click.echo(f"  computingsite {queue}: not a queue of the configured topology, {count} record(s) skipped")
    if summary.imported:
        days = max(1, (now - summary.first_end).days + 1)
        replay = ctx.command("policy", "replay", "--template", shlex.quote(template), "--since", f"{days}d")
        click.echo(f"replay it: {replay}")


