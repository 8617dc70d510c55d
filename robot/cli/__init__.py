"""`healthrobot`: the command line. Noun-verb subcommands, `--json` where a machine reads the output.

Start-up is kept cheap: a subcommand's module is imported only when that subcommand runs (`COMMANDS`
below), and this module imports neither SQLAlchemy nor the configuration models at import time.
"""
from __future__ import annotations

import getpass
import importlib
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from sqlalchemy import Engine
    from sqlalchemy.orm import Session

    from robot.config import RobotConfig

DEFAULT_CONFIG = "configs/robot.yaml"

# name: (module, attribute, short help shown by `healthrobot --help`; a test keeps it equal to the command's own)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "blacklist": ("robot.cli.blacklist_cmd", "blacklist_group",
                  "Exclusions: list them, override the robot, silence it, switch it."),
    "config": ("robot.cli.config_cmd", "config_group", "Check configuration files."),
    "dashboard": ("robot.cli.dashboard_cmd", "dashboard",
                  "Serve the web dashboard (and /health, /metrics) on the robot's database."),
    "db": ("robot.cli.db", "db_group", "Database schema."),
    "demo": ("robot.cli.demo", "demo",
             "Run the robot against the embedded grid with a live health table (and the web dashboard)."),
    "grid": ("robot.cli.grid", "grid_group", "The embedded grid: queues, faults, input data."),
    "history": ("robot.cli.history_cmd", "history_group",
                "Past jobs from PanDA's monitoring, for `policy replay` and the pages."),
    "jobs": ("robot.cli.jobs", "jobs_group", "Test jobs."),
    "policy": ("robot.cli.policy_cmd", "policy_group",
               "Exclusion policies: compare them in simulation, replay them on history."),
    "run": ("robot.cli.run", "run", "Run the robot: submit, poll, store and evaluate every loop interval until SIGTERM."),
    "status": ("robot.cli.status", "status", "Failure rate, events per second, CPU efficiency and error classes."),
    "stress": ("robot.cli.stress_cmd", "stress_group", "Stress tests: many concurrent jobs on a queue, on request."),
    "tickets": ("robot.cli.tickets_cmd", "tickets_group", "User support tickets: import them, see their verdicts."),
    "users": ("robot.cli.users_cmd", "users_group", "Dashboard sign-in accounts."),
    "why": ("robot.cli.tickets_cmd", "why",
            "Why: a ticket (its id), a queue or a site (its name) or a PanDA job (its ID): is the problem the site?"),
}


def os_user() -> str:
    """The person at the keyboard: the operating system's user name (who asks, approves, cancels)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a user id without a name (some containers)
        return f"uid-{os.getuid()}"


def program() -> str:
    """How to call this program again from the current folder, as a user can paste it.

    `healthrobot` when that name on the PATH is this program, else the path of the script in this
    Python's environment (e.g. `.venv/bin/healthrobot`), relative to the current folder when inside it.
    """
    script = Path(sys.executable).parent / "healthrobot"
    if Path(sys.argv[0]).name == "healthrobot":
        script = Path(sys.argv[0])
    on_path = shutil.which("healthrobot")
    if on_path and script.exists() and Path(on_path).resolve() == script.resolve():
        return "healthrobot"
    if not script.exists():
        return f"{_shown(Path(sys.executable))} -m robot.cli"
    return _shown(script)


def _shown(path: Path) -> str:
    absolute = path.absolute()
    try:
        return str(absolute.relative_to(Path.cwd()))
    except ValueError:
        return str(absolute)


class Context:
    """What every subcommand shares: the configuration file, loaded on first use, and its database."""

    def __init__(self, config_path: str):
        self.config_path = config_path
        self._config: RobotConfig | None = None
        self._engine: Engine | None = None
        self._database_checked = False
        self._created: tuple[str, Path | None, list[Path], dict[str, int]] | None = None  # a database made here

    @property
    def config(self) -> RobotConfig:
        if self._config is None:
            from robot.config import load_config
            from robot.yamlconfig import ConfigError

            try:
                self._config = load_config(self.config_path)
            except ConfigError as exc:
                raise click.ClickException(f"invalid configuration {exc}") from exc
        return self._config

    def command(self, *args: str) -> str:
        """A command line that runs `healthrobot ARGS` with this configuration, ready to paste."""
        config = [] if self.config_path == DEFAULT_CONFIG and "HEALTHROBOT_CONFIG" not in os.environ \
            else ["--config", self.config_path]
        return " ".join([program(), *config, *args])

    @property
    def engine(self) -> Engine:
        """The configured database, opened on first use."""
        if self._engine is None:
            from robot.storage.database import make_engine

            try:
                self._engine = make_engine(self.config.database_url)
            except OSError as exc:  # the SQLite file's folder cannot be made
                raise click.ClickException(f"cannot make the database's folder {exc.filename}: {exc.strerror} "
                                           f"(data_dir or database.url in {self.config_path})") from None
        return self._engine

    def session(self, create: bool = False) -> Session:
        """A session on a database whose schema is current (see `require_database`)."""
        from robot.storage.database import make_sessionmaker

        self.require_database(create)
        return make_sessionmaker(self.engine)()

    def require_database(self, create: bool = False) -> None:
        """Stop with one line saying what to run unless the database exists with this code's schema.

        `create`: a database that does not exist yet (or is empty) gets the schema instead; a reading
        command never creates one, so it leaves no empty database file behind.
        """
        if self._database_checked:
            return
        from robot.cli.schema import DatabaseProblem, ensure_schema, sqlite_file

        file = sqlite_file(self.config.database_url) if create else None
        missing = [] if file is None else [d for d in (file.parent, *file.parent.parents) if not d.exists()]
        try:
            created = ensure_schema(self.config.database_url, lambda: self.engine, create,
                                    upgrade_command=self.command("db", "upgrade"), hint=self.demo_hint())
        except DatabaseProblem as exc:
            raise click.ClickException(str(exc)) from exc
        if created:  # said once the command succeeded; a failed one removes it (discard_unused_database)
            self._created = (created, file, missing, self._row_counts() if file is not None else {})
        self._database_checked = True

    def _row_counts(self) -> dict[str, int]:
        from sqlalchemy import inspect, text

        with self.engine.connect() as connection:
            return {table: connection.execute(text(f'SELECT count(*) FROM "{table}"')).scalar_one()
                    for table in inspect(self.engine).get_table_names()}

    def discard_unused_database(self) -> None:
        """After a failed command: remove the SQLite database it created if nothing was written to it since
        (and the folders made for it), so a command that fails on a new data folder leaves nothing behind."""
        if self._created is None:
            return
        where, file, missing, counts = self._created
        self._created = None
        if file is None or self._row_counts() != counts:
            click.echo(f"created the robot's database: {where}", err=True)
            return
        self.engine.dispose()
        for path in (file, file.with_name(file.name + "-wal"), file.with_name(file.name + "-shm")):
            path.unlink(missing_ok=True)
        for folder in missing:  # deepest first
            try:
                folder.rmdir()
            except OSError:
                break

    def report_created_database(self) -> None:
        if self._created is not None:
            click.echo(f"created the robot's database: {self._created[0]}", err=True)
            self._created = None

    def demo_hint(self) -> str:
        """`, or read the demo's database with HEALTHROBOT_DATA_DIR=...` when a demo left one beside this one."""
        demo = self.config.data_path / "demo"
        if self.config.database.url or not (demo / "healthrobot.db").exists() or \
                demo.resolve() == self.config.data_path.resolve():
            return ""
        return f", or read the demo's database with HEALTHROBOT_DATA_DIR={demo}"

    def require_current_schema(self) -> None:
        """Refuse to go on with a database that is missing or whose schema is not this code's."""
        self.require_database()


pass_context = click.make_pass_decorator(Context)


def _database_unusable(exc: BaseException, context: Context | None) -> str | None:
    """One line for a database the driver could not reach or open (server down, wrong host, unwritable file).

    None for any other error. SQLAlchemy is looked at only when it raised the error (it is not imported
    at start-up); the URL is shown with its password hidden, and the password is blanked in the driver's text.
    """
    exc_module = sys.modules.get("sqlalchemy.exc")
    if exc_module is None or not isinstance(exc, exc_module.OperationalError) or context is None \
            or context._config is None:
        return None
    from sqlalchemy.engine import make_url

    url = make_url(context._config.database_url)
    said = str(exc.orig or exc).strip().splitlines()[0] if str(exc.orig or exc).strip() else type(exc).__name__
    if url.password and len(str(url.password)) >= 4:  # drivers do not echo it; a 1-3 letter one is any word's part
        said = said.replace(str(url.password), "***")
    return (f"cannot use the database {url.render_as_string(hide_password=True)}: {said} "
            f"(database.url in {context.config_path})")


class LazyGroup(click.Group):
    """Imports a subcommand's module only when that subcommand is used."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*COMMANDS, *self.commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            module, attribute, _ = COMMANDS[cmd_name]
            self.add_command(getattr(importlib.import_module(module), attribute), cmd_name)
        return self.commands.get(cmd_name)

    def invoke(self, ctx: click.Context):
        """Run the subcommand; a database that cannot be reached or opened is one line, not a traceback."""
        try:
            result = super().invoke(ctx)
            if isinstance(ctx.obj, Context):
                ctx.obj.report_created_database()
            return result
        except Exception as exc:  # noqa: BLE001 - only the database's OperationalError is turned into a line
            if isinstance(ctx.obj, Context) and not (isinstance(exc, click.exceptions.Exit) and exc.exit_code == 0):
                try:
                    ctx.obj.discard_unused_database()
                except Exception:  # noqa: BLE001 - the command's own error is the one to show
                    logging.getLogger(__name__).debug("could not look at the new database", exc_info=True)
            config_error = sys.modules.get("robot.yamlconfig")
            if config_error is not None and isinstance(exc, config_error.ConfigError):  # e.g. the grid's file
                raise click.ClickException(f"invalid configuration {exc}") from None
            line = _database_unusable(exc, ctx.obj)
            if line is None:
                raise
            logging.getLogger(__name__).debug("database error", exc_info=True)
            raise click.ClickException(line) from None

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list from `COMMANDS`, without importing every subcommand."""
        limit = formatter.width - 6 - max(len(name) for name in COMMANDS)
        rows = [(name, click.Command(name, help=text).get_short_help_str(limit))
                for name, (_, _, text) in sorted(COMMANDS.items())]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
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
