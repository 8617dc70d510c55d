"""`healthrobot`: the command line. Noun-verb subcommands, `--json` where a machine reads the output."""
from __future__ import annotations

import logging
import sys

import click

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from robot.config import RobotConfig, load_config
from robot.storage.database import SchemaOutdated, check_schema, make_engine, make_sessionmaker
from robot.yamlconfig import ConfigError

DEFAULT_CONFIG = "configs/robot.yaml"


class Context:
    """What every subcommand shares: the configuration file, loaded on first use."""

    def __init__(self, config_path: str):
        self.config_path = config_path
        self._config: RobotConfig | None = None
        self._engine: Engine | None = None

    @property
    def config(self) -> RobotConfig:
        if self._config is None:
            try:
                self._config = load_config(self.config_path)
            except ConfigError as exc:
                raise click.ClickException(f"invalid configuration {exc}") from exc
        return self._config

    @property
    def engine(self) -> Engine:
        """The configured database, opened on first use."""
        if self._engine is None:
            self._engine = make_engine(self.config.database_url)
        return self._engine

    def session(self) -> Session:
        return make_sessionmaker(self.engine)()

    def require_current_schema(self) -> None:
        """Refuse to go on with a database whose schema is not this code's (the message says what to run)."""
        try:
            check_schema(self.engine)
        except SchemaOutdated as exc:
            raise click.ClickException(str(exc)) from exc


pass_context = click.make_pass_decorator(Context)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--config", "config_path", envvar="HEALTHROBOT_CONFIG", default=DEFAULT_CONFIG, show_default=True,
              type=click.Path(dir_okay=False), help="Robot configuration file (env HEALTHROBOT_CONFIG).")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.pass_context
def main(ctx: click.Context, config_path: str, verbose: int) -> None:
    """Queue Health Robot: functional and stress tests for grid analysis queues."""
    level = {0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if not verbose:
        logging.getLogger("alembic").setLevel(logging.WARNING)
    ctx.obj = Context(config_path)


def _register() -> None:
    from robot.cli import (blacklist_cmd, config_cmd, db, demo, grid, jobs, policy_cmd, run, status, stress_cmd,
                           tickets_cmd)

    for module in (blacklist_cmd, config_cmd, db, demo, grid, jobs, policy_cmd, run, status, stress_cmd, tickets_cmd):
        for command in module.COMMANDS:
            main.add_command(command)
    from robot.cli.dashboard_cmd import dashboard  # the web dashboard (Dash is imported only when it is served)
    main.add_command(dashboard)
    from robot.cli.users_cmd import users_group  # dashboard sign-in accounts
    main.add_command(users_group)


_register()
