"""`healthrobot config check FILE`."""
from __future__ import annotations

import json

import click

from robot.backends.embedded.config import load_grid_config
from robot.classify import load_table
from robot.config import RobotConfig, load_config
from robot.yamlconfig import ConfigError


@click.group("config")
def config_group() -> None:
    """Check configuration files."""


@config_group.command("check")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def check(file: str, as_json: bool) -> None:
    """Validate FILE and the files it names (grid, error-code table); exit 1 on any problem."""
    try:
        config = load_config(file)
        grid = load_grid_config(config.resolve(config.backend.embedded.grid)) if config.backend.kind == "embedded" else None
        if config.classification.table:
            load_table(config.resolve(config.classification.table))
    except ConfigError as exc:
        if as_json:
            click.echo(json.dumps({"ok": False, "file": exc.path, "problems": exc.problems}))
        else:
            click.echo(f"invalid: {exc.path}", err=True)
            for problem in exc.problems:
                click.echo(f"  {problem}", err=True)
        raise SystemExit(1) from exc
    summary = {
        "ok": True, "file": file, "database": config.shown_database_url, "backend": config.backend.kind,
        "templates": [t.name for t in config.templates],
        "queues": sum(len(s.queues) for c in grid.clouds.values() for s in c.sites.values()) if grid else None,
        "notes": notes(config),
    }
    if as_json:
        click.echo(json.dumps(summary))
    else:
        click.echo(f"ok: {file}: {len(config.templates)} templates, backend {config.backend.kind}"
                   + (f" with {summary['queues']} queues" if grid else ""))
        for note in summary["notes"]:
            click.echo(f"note: {note}")


def notes(config: RobotConfig) -> list[str]:
    """What a valid configuration leaves out that operators usually want, in one line each."""
    found = []
    if config.backend.kind == "panda" and not config.backend.panda.monitor_url:
        found.append("backend.panda.monitor_url is not set: a submission whose reply was lost stays unconfirmed "
                     "and keeps its slot (panda-server cannot find a job by name), and users' own jobs are not "
                     "read; set it to PanDA's monitor, e.g. https://bigpanda.cern.ch")
    return found

