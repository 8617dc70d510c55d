"""`make demo` as a newcomer meets it: a real process on the shipped grid, its port taken, its printed commands pasted.

Nothing here depends on the machine's speed: the test waits (with a generous bound) until the demo's
database shows what the README promises, then stops the demo with SIGTERM as a person would with Ctrl-C.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()
BROKEN = "ANALY_MWT2_UCORE"


def _shell(command: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, shell=True, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def _status(workdir: Path, env: dict[str, str]) -> dict[str, dict]:
    done = _shell(f".venv/bin/healthrobot status --json --window 1h", {**env, "HEALTHROBOT_DATA_DIR": str(workdir)})
    if done.returncode != 0:  # the demo has not created its database yet
        return {}
    return {h["key"]: h for h in json.loads(done.stdout)["health"]}


def _shown(health: dict[str, dict]) -> bool:
    """What the README promises: the broken queue stands out with site failures and the robot's decision."""
    broken = health.get(BROKEN)
    if not broken or broken["error_classes"].get("site", 0) < 3 or broken["robot_state"] != "excluded":
        return False
    if broken["failure_rate"] is None or broken["failure_rate"] < 0.5:  # jobs that completed before the fault
        return False
    return all(h["completed"] >= 1 for key, h in health.items() if key != BROKEN)


def _readme_block(heading: str) -> list[str]:
    """The commands of the first `sh` block under a README heading, continuation lines joined."""
    section = README.split(f"## {heading}\n", 1)[1]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    return [line.split("  #")[0].strip() for line in block.replace("\\\n", " ").splitlines() if line.strip()]


@pytest.fixture
def taken_port():
    """A port some other program listens on (found free, then held)."""
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        yield other.getsockname()[1]


@pytest.mark.slow
def test_demo_end_to_end_as_a_newcomer_meets_it(tmp_path, taken_port):
    workdir = tmp_path / "demo"
    env = {k: v for k, v in os.environ.items() if k not in ("HEALTHROBOT_CONFIG", "HEALTHROBOT_DATA_DIR")}
    demo = subprocess.Popen([sys.executable, "-m", "robot.cli", "demo", "--duration", "20m", "--workdir", str(workdir),
                             "--dashboard-port", str(taken_port)], cwd=REPO, env={**env, "PYTHONUNBUFFERED": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []  # read as they come (the dashboard's address), as is its error output
    errors: list[str] = []
    readers = [threading.Thread(target=lambda: lines.extend(demo.stdout), daemon=True),  # type: ignore[arg-type]
               threading.Thread(target=lambda: errors.extend(demo.stderr), daemon=True)]  # type: ignore[arg-type]
    for reader in readers:
        reader.start()
    try:
        deadline = time.monotonic() + 600  # generous: a loaded 2-core machine; it usually takes 1-2 minutes
        url = None
        health: dict[str, dict] = {}
        while time.monotonic() < deadline and demo.poll() is None:
            time.sleep(3)
            found = [m for line in list(lines) if (m := re.search(r"^dashboard: (http://\S+)", line))]
            if found and url is None:
                url = found[0].group(1)
                try:  # a page is loaded; before the first loop step has ended the robot is not yet healthy
                    with urllib.request.urlopen(url + "/health", timeout=30) as answer:
                        assert answer.status == 200
                except urllib.error.HTTPError as answer:
                    assert answer.code == 503, answer
            health = _status(workdir, env)
            if _shown(health):
                break
        assert demo.poll() is None, "".join(errors)
        assert _shown(health), health
    finally:
        demo.send_signal(signal.SIGTERM)  # the demo stops as with Ctrl-C and prints its summary
        demo.wait(timeout=120)
        for reader in readers:
            reader.join(timeout=30)
    out, err = "".join(lines), "".join(errors)
    assert demo.returncode == 0, err
    assert "Traceback" not in out + err

    # port taken: the demo says so and serves on a free port
    assert f"port {taken_port} is taken: the dashboard listens on port " in out and url is not None
    # the web server's request lines went to the demo's log, not to the terminal
    assert "GET /health" not in out + err
    assert "GET /health" in (workdir / "demo.log").read_text()
    # the summary: the broken queue, and the robot's decision in dry-run
    assert f"broken queues (failure rate >= 50%): {BROKEN}" in out
    assert re.search(rf"^{BROKEN}: healthrobot: excluded \(dry-run: would set online -> brokeroff\): "
                     r"\d+ site-class failures? \(STAGEINFAILED\) in the last \d+m, more than a healthy queue", out, re.M), out
    healthy = [h for key, h in health.items() if key != BROKEN]
    assert all(h["error_classes"].get("site", 0) == 0 for h in healthy)
    assert all(h["events_per_second"] and h["events_per_second"] > 1000 for h in healthy)  # real payloads ran

    # every command the demo printed runs as printed, from the repository's root
    again = re.search(r"^see it again: (.+)$", out, re.M).group(1)
    shown = _shell(again, env)
    assert shown.returncode == 0 and BROKEN in shown.stdout, shown.stderr
    breaker = re.search(r"^break another queue from a second terminal:\n  (.+)$", out, re.M).group(1)
    broke = _shell(breaker, env)
    assert broke.returncode == 0 and "ANALY_FZK: cvmfs fault" in broke.stdout, broke.stderr

    # the README's stress example, on the demo's database (its `export` names where that is)
    stress_env = {**env, "HEALTHROBOT_DATA_DIR": str(workdir)}
    commands = _readme_block("Stress tests")
    assert commands[0] == "export HEALTHROBOT_DATA_DIR=$PWD/var/demo"
    for command in commands[1:]:
        if " stress watch " in command:  # it follows the test until it ends: its first line is enough here
            watch = subprocess.Popen(command, shell=True, cwd=REPO, env=stress_env, stdout=subprocess.PIPE, text=True,
                                     start_new_session=True)
            first = watch.stdout.readline()
            os.killpg(watch.pid, signal.SIGTERM)
            watch.communicate(timeout=30)
            assert first.startswith("stress test 3 scheduled, 0 in flight, 0/20 jobs ended"), first
            continue
        done = _shell(command, stress_env)
        assert done.returncode == 0, (command, done.stdout, done.stderr)
        if " stress request " in command:
            assert re.match(r"stress test 3: scheduled \(approved by .+ \(operator\)\)", done.stdout), done.stdout
    shutil.rmtree(workdir / "grid" / "datasets", ignore_errors=True)
