"""`healthrobot dashboard` as a user starts it: a taken port names the option to use, printed commands paste."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from robot.cli import main

REPO = Path(__file__).resolve().parent.parent


def _config(tmp_path: Path, port: int) -> Path:
    config = tmp_path / "robot.yaml"
    config.write_text(f"data_dir: {tmp_path / 'data'}\nbackend:\n  embedded:\n    grid: {REPO / 'configs' / 'grid.yaml'}\n"
                      f"dashboard:\n  port: {port}\n")
    assert CliRunner().invoke(main, ["--config", str(config), "db", "upgrade"]).exit_code == 0
    return config


def test_a_taken_port_is_one_line_naming_the_option_for_a_free_one(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = _config(tmp_path, port)
        result = CliRunner().invoke(main, ["--config", str(config), "dashboard"])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith(f"Error: cannot listen on 127.0.0.1:{port}: ") and "Address already in use" in lines[0]
    assert lines[0].endswith(f"--config {config} dashboard --port 0` (0: any free port)"), lines[0]


def test_the_sign_in_hint_pastes_as_it_is(tmp_path):
    config = _config(tmp_path, 0)
    env = {k: v for k, v in os.environ.items() if k != "HEALTHROBOT_CONFIG"}
    server = subprocess.Popen([sys.executable, "-m", "robot.cli", "--config", str(config), "dashboard"], cwd=REPO,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first, hint = server.stdout.readline(), server.stdout.readline()
    finally:
        server.send_signal(signal.SIGTERM)
        server.communicate(timeout=60)
    assert first.startswith("dashboard at http://127.0.0.1:"), first
    command = hint.split("sign in with a user of the robot: ", 1)[1].strip().replace("NAME", "alice")
    added = subprocess.run(command, shell=True, cwd=REPO, env=env, input="correct horse battery\n",
                           capture_output=True, text=True, timeout=120)
    assert added.returncode == 0 and "user alice added" in added.stdout, (command, added.stderr)
