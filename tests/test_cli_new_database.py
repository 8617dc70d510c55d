"""Every command on a new or outdated database: one line saying what to run, never a traceback or an empty file."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from robot.cli import main
from robot.storage.database import head_revision, make_engine, upgrade

REPO = Path(__file__).resolve().parent.parent

READ_COMMANDS = [
    ["status"], ["status", "--json"], ["status", "--level", "site"], ["jobs", "list"], ["jobs", "list", "--json"],
    ["blacklist", "list"], ["blacklist", "history"], ["blacklist", "mode"], ["stress", "list"], ["stress", "show", "1"],
    ["stress", "watch", "1"], ["stress", "report", "1"], ["tickets", "list"], ["why", "ANALY_X"], ["why", "19"],
    ["users", "list"], ["policy", "replay"], ["db", "rollup"], ["run", "--once"], ["dashboard"],
]


@pytest.fixture
def fresh(tmp_path):
    """A configuration whose data folder does not exist yet."""
    config = tmp_path / "robot.yaml"
    config.write_text(f"data_dir: {tmp_path / 'data'}\n")
    return config


def _run(config: Path, args: list[str]):
    return CliRunner().invoke(main, ["--config", str(config), *args])


@pytest.mark.parametrize("args", READ_COMMANDS, ids=" ".join)
def test_a_command_on_a_new_database_says_what_to_run_and_creates_nothing(fresh, args):
    result = _run(fresh, args)
    assert result.exit_code == 1, result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), result.exception
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("Error: no robot database at ") and "db upgrade`" in lines[0]
    assert not (fresh.parent / "data").exists()  # no empty database file, not even its folder


@pytest.fixture(scope="module")
def outdated(tmp_path_factory):
    """A database at revision 0004, made once and copied for each test."""
    path = tmp_path_factory.mktemp("outdated") / "healthrobot.db"
    engine = make_engine(f"sqlite:///{path}")
    upgrade(engine, "0004")
    engine.dispose()
    return path


@pytest.mark.parametrize("args", READ_COMMANDS, ids=" ".join)
def test_a_command_on_an_outdated_database_says_to_upgrade(fresh, outdated, args):
    (fresh.parent / "data").mkdir()
    shutil.copy(outdated, fresh.parent / "data" / "healthrobot.db")
    result = _run(fresh, args)
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert f"has schema revision 0004, this robot needs {head_revision()}: run `" in lines[0]
    assert lines[0].endswith("db upgrade`")


def test_reading_commands_work_on_a_new_database_once_upgraded(fresh):
    assert _run(fresh, ["db", "upgrade"]).exit_code == 0
    for args in (["status"], ["jobs", "list"], ["blacklist", "list"], ["blacklist", "history"], ["blacklist", "mode"],
                 ["stress", "list"], ["tickets", "list"], ["users", "list"], ["policy", "replay"], ["db", "rollup"]):
        result = _run(fresh, args)
        assert result.exit_code == 0, (args, result.output)
    assert json.loads(_run(fresh, ["status", "--json"]).output)["health"] == []


@pytest.mark.parametrize("args, said", [
    (["status"], "no queues yet: the robot has not run on this database; start it with `"),
    (["jobs", "list"], "no test jobs yet: the robot has not run on this database; start it with `"),
    (["tickets", "list"], "no tickets yet: import a mail archive with `"),
    (["stress", "list"], "no stress tests yet: ask for one with `"),
])
def test_an_empty_listing_says_how_to_fill_it_instead_of_an_empty_table(fresh, args, said):
    assert _run(fresh, ["db", "upgrade"]).exit_code == 0
    result = _run(fresh, args)
    assert result.exit_code == 0 and result.output.startswith(said) and len(result.output.splitlines()) == 1
    assert "┏" not in result.output


def test_writing_commands_create_the_schema_of_a_new_database(fresh, tmp_path):
    result = CliRunner().invoke(main, ["--config", str(fresh), "users", "add", "alice", "--password-stdin"],
                                input="correct horse battery\n")
    assert result.exit_code == 0, result.output
    assert "created the robot's database" in result.output and "user alice added" in result.output
    assert _run(fresh, ["users", "list"]).output.startswith("alice")


def test_a_real_process_on_a_new_database_prints_one_line_to_stderr(fresh):
    """As a user types it: exit 1, one line on stderr naming the command to paste, nothing on stdout."""
    env = {k: v for k, v in os.environ.items() if k != "HEALTHROBOT_CONFIG"}
    done = subprocess.run([sys.executable, "-m", "robot.cli", "--config", str(fresh), "status"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    command = done.stderr.split("`")[1]
    assert command.endswith(f"--config {fresh} db upgrade")
    assert not (fresh.parent / "data").exists()
    # the command it names runs as printed, from where the user is
    created = subprocess.run(command, shell=True, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert created.returncode == 0, created.stderr
    assert "-> " + head_revision() in created.stdout


def test_the_quick_schema_check_agrees_with_alembic(tmp_path):
    from robot.cli import schema
    from robot.storage import database

    assert schema.head_revision() == database.head_revision()
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    assert schema.current_revision(engine) is None
    upgrade(engine, "0003")
    assert schema.current_revision(engine) == database.current_revision(engine) == "0003"


@pytest.mark.parametrize("args", [*READ_COMMANDS, ["db", "upgrade"], ["tickets", "import", "imap"]], ids=" ".join)
def test_a_database_server_that_cannot_be_reached_is_one_line_naming_it(tmp_path, args):
    """A PostgreSQL URL whose server does not answer (a unix socket nobody listens on): no traceback, no password."""
    config = tmp_path / "robot.yaml"
    config.write_text(f"data_dir: {tmp_path / 'data'}\n"
                      f"database:\n  url: postgresql+psycopg://robot:s3cretpw@/robot?host={tmp_path / 'nosocket'}\n")
    result = _run(config, args)
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("Error: cannot use the database postgresql+psycopg://robot:***@/robot"), lines[0]
    assert f"(database.url in {config})" in lines[0] and "s3cretpw" not in result.output


def test_a_data_folder_that_cannot_be_made_is_one_line_naming_it(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    config = tmp_path / "robot.yaml"
    config.write_text(f"data_dir: {blocker / 'data'}\n")
    result = CliRunner().invoke(main, ["--config", str(config), "users", "add", "alice", "--password-stdin"],
                                input="long enough\n")
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert result.output.strip().splitlines() == [
        f"Error: cannot make the database's folder {blocker / 'data'}: Not a directory (data_dir or database.url in {config})"]


@pytest.mark.parametrize("args", [["tickets", "import", "imap"], ["tickets", "import", "ggus"],
                                  ["tickets", "import", "README.md"], ["history", "import", "README.md"]], ids=" ".join)
def test_a_writing_command_that_fails_on_a_new_database_leaves_nothing_behind(fresh, args, monkeypatch):
    monkeypatch.chdir(REPO)
    fresh.write_text(fresh.read_text() + f"backend:\n  embedded:\n    grid: {REPO / 'configs' / 'grid.yaml'}\n")
    result = _run(fresh, args)
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert not (fresh.parent / "data").exists()  # neither the database nor its folder


def test_a_writing_command_that_wrote_keeps_the_database_it_created(fresh, tmp_path):
    mbox = tmp_path / "support.mbox"
    assert _run(fresh, ["tickets", "sample", str(mbox)]).exit_code == 0
    result = _run(fresh, ["tickets", "import", str(mbox)])
    assert result.exit_code == 0, result.output
    assert result.output.rstrip().endswith(f"created the robot's database: {fresh.parent / 'data' / 'healthrobot.db'}")
    assert _run(fresh, ["tickets", "list"]).exit_code == 0


def test_a_missing_grid_file_is_one_line_naming_it(fresh, tmp_path):
    jobs = tmp_path / "jobs.json"
    jobs.write_text('{"jobs": []}')
    result = _run(fresh, ["history", "import", str(jobs)])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.exception
    assert result.output.strip().splitlines() == [
        f"Error: invalid configuration {fresh.parent / 'grid.yaml'}: cannot read: No such file or directory"]


@pytest.mark.parametrize("args", [["grid", "list"], ["grid", "faults"], ["grid", "downtime", "list"],
                                  ["grid", "heal", "ANALY_FZK"]], ids=" ".join)
def test_reading_the_embedded_grid_before_it_ran_makes_no_state(fresh, args):
    fresh.write_text(fresh.read_text() + f"backend:\n  embedded:\n    grid: {REPO / 'configs' / 'grid.yaml'}\n")
    result = _run(fresh, args)
    assert result.exit_code == 0, result.output
    assert not (fresh.parent / "data").exists()  # no grid.sqlite, not even its folder
