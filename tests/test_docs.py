"""The README documents every command, option and configuration key (Datasette's rule)."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

import click
import pytest
from pydantic import BaseModel

from robot.backends.embedded.config import DefaultsConfig, QueueConfig, ScheduledFault, EndpointConfig
from robot.cli import main
from robot.config import RobotConfig

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()
EXAMPLE = (REPO / "configs" / "robot.yaml").read_text()


def commands(command: click.Command, name: str) -> Iterator[tuple[str, click.Command]]:
    yield name, command
    if isinstance(command, click.Group):
        ctx = click.Context(command)
        for sub_name in command.list_commands(ctx):
            yield from commands(command.get_command(ctx, sub_name), f"{name} {sub_name}")


ALL = [(name, cmd) for name, cmd in commands(main, "healthrobot") if not isinstance(cmd, click.Group)]


@pytest.mark.parametrize("name,command", ALL, ids=[n for n, _ in ALL])
def test_every_command_and_option_is_in_the_readme(name, command):
    assert f"`{name}" in README, f"{name} is not in the README's CLI reference"
    row = next(line for line in README.splitlines() if line.startswith(f"| `{name}"))
    for option in (o for p in command.params for o in p.opts if o.startswith("--") and o != "--help"):
        assert re.search(rf"`{option}[` ]", row), f"{name} {option} is not documented in its README row"


def fields(model: type[BaseModel], prefix: str = "") -> Iterator[str]:
    for key, info in model.model_fields.items():
        if info.exclude:
            continue
        path = f"{prefix}{key}"
        annotation = info.annotation
        inner = getattr(annotation, "__args__", (annotation,))
        nested = [a for a in inner if isinstance(a, type) and issubclass(a, BaseModel)]
        if nested:
            is_list = getattr(annotation, "__origin__", None) is list
            yield from fields(nested[0], f"{path}[]." if is_list else f"{path}.")
        else:
            yield path


@pytest.mark.parametrize("path", list(fields(RobotConfig)))
def test_every_robot_setting_is_in_the_readme_and_the_example(path):
    assert f"| `{path}` |" in README
    assert re.search(rf"^\s*#?\s*-?\s*{re.escape(path.split('.')[-1].removesuffix('[]'))}:", EXAMPLE, re.M), \
        f"{path} is not in configs/robot.yaml"


@pytest.mark.parametrize("model,where", [(DefaultsConfig, "defaults."), (QueueConfig, "queues.<queue>"),
                                         (EndpointConfig, "storage.<endpoint>"), (ScheduledFault, "faults[]")])
def test_every_grid_setting_is_in_the_readme(model, where):
    rows = [line for line in README.splitlines() if line.startswith("| `")]
    row = " ".join(line for line in rows if where in line.split("|")[1])
    for key in model.model_fields:
        assert f"`{key}`" in row or f"`{where}{key}`" in row, f"grid key {key} of {where} is undocumented"


def _sh_lines() -> list[str]:
    """The command lines of the README's `sh` blocks, continuation lines joined."""
    blocks = re.findall(r"^```sh\n(.*?)^```", README, re.M | re.S)
    return [line for block in blocks for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def test_every_readme_command_calls_the_program_where_a_fresh_clone_has_it():
    """`make demo` installs into .venv; a bare `healthrobot` is not on a newcomer's PATH."""
    bare = [line for line in _sh_lines() if re.match(r"^(\w+=\S+ )*healthrobot ", line)]
    assert bare == []


def test_the_readme_stress_example_is_not_on_the_queue_the_demo_says_to_break():
    """Broken while the demo runs, that queue is soon excluded, and a stress request there is refused."""
    demo = (REPO / "robot" / "cli" / "demo.py").read_text()
    broken = re.search(r"grid break (\S+) --mode", demo).group(1)
    requests = [line for line in _sh_lines() if " stress request " in line]
    assert requests and all(f"--queue {broken} " not in line for line in requests), (broken, requests)
