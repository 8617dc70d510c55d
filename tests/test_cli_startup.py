"""Start-up: the CLI imports a subcommand's module only when it runs, and light commands no heavy library.

These check which modules are imported (sys.modules in a fresh interpreter), not how long it takes:
the CPU figures are printed by bench/startup.py.
"""
from __future__ import annotations

import json
import subprocess
import sys

import click
import pytest

from robot.cli import COMMANDS, main

HEAVY = ("numpy", "uproot", "awkward", "dash", "plotly", "pandaclient", "rucio")
DATABASE = ("sqlalchemy", "alembic", "pydantic", "rich", "apscheduler")


def imported_after(code: str) -> set[str]:
    """Top-level packages of HEAVY + DATABASE in sys.modules after running `code` in a new interpreter."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    return set(json.loads(done.stdout.strip().splitlines()[-1])) & set(HEAVY + DATABASE)


def test_importing_the_cli_imports_no_heavy_module():
    assert imported_after("import robot.cli") == set()


def test_help_imports_no_subcommand():
    code = ("from click.testing import CliRunner\nfrom robot.cli import main\n"
            "assert CliRunner().invoke(main, ['--help']).exit_code == 0")
    assert imported_after(code) == set()


@pytest.mark.parametrize("module", sorted({module for module, _, _ in COMMANDS.values()} - {"robot.cli.dashboard_cmd"}))
def test_no_command_module_imports_the_heavy_libraries(module):
    """Dash, plotly, numpy, uproot, panda-client and rucio are imported only by the commands that use them."""
    assert imported_after(f"import {module}") & set(HEAVY) == set()


@pytest.mark.parametrize("module", ["robot.cli.tickets_cmd", "robot.cli.blacklist_cmd"])
def test_reading_commands_import_no_mail_or_http_client(module):
    """`why`, `tickets list` and `blacklist list` only read the database: IMAP, mail parsing for import and
    requests (GOCDB, GGUS) come with the commands that fetch."""
    probe = f"import {module}\nimport json, sys\nprint(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    assert set(json.loads(done.stdout.strip().splitlines()[-1])) & {"requests", "imapclient", "urllib3"} == set()


def test_configuration_files_are_parsed_with_libyaml():
    """The pure-Python YAML parser spent ~0.1 s of CPU on the commented robot.yaml at every command."""
    import yaml

    from robot import yamlconfig

    assert yaml.__with_libyaml__ and yamlconfig._SAFE_LOADER is yaml.CSafeLoader


def test_opening_a_database_does_not_import_alembic():
    assert "alembic" not in imported_after("from robot.storage.database import make_engine, make_sessionmaker\n"
                                           "from robot.cli.schema import current_revision, head_revision")


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_the_help_list_says_what_each_command_says_of_itself(name):
    command = main.get_command(click.Context(main), name)
    assert command is not None and command.name == name
    assert command.help is not None and command.help.split("\n\n")[0].strip() == COMMANDS[name][2]
