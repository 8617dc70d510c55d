"""The command line, in-process (click's runner) and, for the daemon and the demo, as real processes."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from robot.cli import main
from robot.clock import ManualClock
from tests.fakes import T0, ScriptedGrid, make_robot, templates

REPO = Path(__file__).resolve().parent.parent


def invoke(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture
def populated(tmp_path):
    """A robot database with one completed and one failed job, and a config file pointing at it."""
    clock = ManualClock(T0)
    grid = ScriptedGrid(clock, {"ANALY_A": ("SITE-A", "DE"), "ANALY_B": ("SITE-B", "US")})
    robot = make_robot(tmp_path, grid, templates({"name": "AFT"}))
    robot.run_once(clock.now())
    grid.finish(grid.in_queue("ANALY_A")[0])
    grid.finish(grid.in_queue("ANALY_B")[0], pilot_error_code=1377, pilot_error_diag="CVMFS is not alive")
    # status reads the wall clock: put the results in the last hour of real time
    robot.run_once(clock.now())
    config = tmp_path / "robot.yaml"
    config.write_text(f"data_dir: {tmp_path}\n")
    return config


def test_help_everywhere():
    for args in ([], ["grid"], ["grid", "break"], ["status"], ["demo"], ["run"], ["db"], ["config", "check"], ["jobs", "list"]):
        result = invoke(*args, "--help")
        assert result.exit_code == 0 and "Usage:" in result.output


def test_config_check_ok_and_invalid(tmp_path):
    result = invoke("config", "check", str(REPO / "configs" / "robot.yaml"), "--json")
    summary = json.loads(result.output)
    assert result.exit_code == 0 and summary["ok"] and summary["queues"] >= 10
    bad = tmp_path / "bad.yaml"
    bad.write_text("loop:\n  interval: soon\n")
    result = CliRunner().invoke(main, ["config", "check", str(bad)])
    assert result.exit_code == 1
    assert str(bad) in result.output and "loop.interval" in result.output


def test_config_check_notes_a_panda_backend_without_its_monitor(tmp_path):
    """Valid, but unconfirmed submissions could never be found: said in one line, exit 0."""
    panda = "backend:\n  kind: panda\n  panda:\n    url: https://pandaserver.example.org/server/panda\n"
    without, with_monitor = tmp_path / "without.yaml", tmp_path / "with.yaml"
    without.write_text(panda)
    with_monitor.write_text(panda + "    monitor_url: https://bigpanda.example.org\n")
    result = CliRunner().invoke(main, ["config", "check", str(without)])
    assert result.exit_code == 0, result.output
    assert "note: backend.panda.monitor_url is not set: a submission whose reply was lost stays unconfirmed" in result.output
    result = CliRunner().invoke(main, ["config", "check", str(with_monitor), "--json"])
    assert result.exit_code == 0 and json.loads(result.output)["notes"] == [], result.output


def test_a_broken_config_gives_a_clear_error_not_a_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("databse: {}\n")
    result = CliRunner().invoke(main, ["--config", str(bad), "status"])
    assert result.exit_code == 1 and "databse: unknown key" in result.output and "Traceback" not in result.output


def test_status_json_and_table(populated):
    result = invoke("--config", str(populated), "status", "--json", "--window", "1000d")
    report = {h["key"]: h for h in json.loads(result.output)["health"]}
    assert report["ANALY_A"]["completed"] == 1 and report["ANALY_A"]["failure_rate"] == 0.0
    assert report["ANALY_B"]["failed"] == 1 and report["ANALY_B"]["error_classes"] == {"site": 1}
    cloud = {h["key"]: h for h in json.loads(invoke("--config", str(populated), "status", "--json", "--level", "cloud",
                                                    "--window", "1000d").output)["health"]}
    assert set(cloud) == {"DE", "US"}
    table = invoke("--config", str(populated), "status", "--window", "1000d").output
    assert "ANALY_B" in table and "100%" in table
    assert invoke("--config", str(populated), "status", "--window", "soon").exit_code == 2


@pytest.mark.parametrize("level, columns, absent", [("queue", ["Cloud", "Site", "Queue", "Status"], []),
                                                    ("site", ["Cloud", "Site"], ["Queue", "Status"]),
                                                    ("cloud", ["Cloud"], ["Site", "Queue", "Status"])])
def test_the_status_table_has_no_empty_columns_at_site_and_cloud_level(populated, level, columns, absent):
    table = invoke("--config", str(populated), "status", "--level", level, "--window", "1000d").output
    header = next(line for line in table.splitlines() if "Jobs" in line)
    names = [cell.strip() for cell in header.strip("┃ ").split("┃")]
    assert names[:len(columns)] == columns and not set(absent) & set(names), header


def test_jobs_list_filters(populated):
    rows = json.loads(invoke("--config", str(populated), "jobs", "list", "--outcome", "failed", "--json").output)
    assert [(r["queue"], r["error"], r["error_class"]) for r in rows] == [("ANALY_B", "CVMFSISNOTALIVE", "site")]
    rows = json.loads(invoke("--config", str(populated), "jobs", "list", "--queue", "ANALY_A", "--json").output)
    assert {r["outcome"] for r in rows} == {"completed", None}  # the finished one and its successor


@pytest.mark.parametrize("command", [["jobs", "list"], ["blacklist", "history"]])
def test_an_unknown_queue_is_an_error_with_the_closest_names(populated, command):
    result = CliRunner().invoke(main, ["--config", str(populated), *command, "--queue", "ANALY_AA"])
    assert result.exit_code == 1 and result.output == "Error: unknown queue 'ANALY_AA'; did you mean ANALY_A, ANALY_B?\n"
    result = CliRunner().invoke(main, ["--config", str(populated), *command, "--queue", "NOPE"])
    assert result.exit_code == 1 and "unknown queue 'NOPE'; known queues: ANALY_A, ANALY_B" in result.output


def test_db_upgrade_reports_revisions(tmp_path):
    config = tmp_path / "robot.yaml"
    config.write_text(f"data_dir: {tmp_path}\n")
    assert "empty ->" in invoke("--config", str(config), "db", "upgrade").output
    assert "-> " in invoke("--config", str(config), "db", "upgrade").output


def _small_setup(tmp_path: Path, interval: str = "2s") -> Path:
    """The shipped configuration with a small grid (3 queues, small datasets)."""
    grid = tmp_path / "grid.yaml"
    grid.write_text("""
defaults: {user_failure_rate: 0}
datasets:
  - {name: mc23_13p6TeV.601189.PhPy8EG_Zmumu.deriv.DAOD_PHYS.e8514_s4162_r14622_p6026, files: 1, events_per_file: 5000, seed: 1}
clouds:
  DE:
    sites:
      FZK-LCG2:
        storage: {FZK-LCG2_DATADISK: {}}
        queues: {ANALY_FZK: {}}
      DESY-HH:
        storage: {DESY-HH_DATADISK: {}}
        queues: {ANALY_DESY-HH: {}}
faults:
  - {queue: ANALY_DESY-HH, mode: cvmfs, start_after: 0s, duration: 1h}
""")
    config = tmp_path / "robot.yaml"
    config.write_text(f"""
data_dir: {tmp_path / 'state'}
backend: {{embedded: {{grid: {grid}, max_parallel_jobs: 2}}}}
loop: {{interval: {interval}}}
templates:
  - {{name: AFT, category: functional, payload: zmumu, input_dataset: "mc23_*", events_per_job: 5000}}
""")
    return config


def _cli(*args: str, **kwargs):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "robot.cli", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


@pytest.mark.slow
def test_daemon_refuses_an_old_schema_then_runs_and_stops_cleanly_on_sigterm(tmp_path):
    config = _small_setup(tmp_path)
    refused = _cli("--config", str(config), "run")
    _, err = refused.communicate(timeout=60)
    assert refused.returncode == 1 and "db upgrade`" in err
    assert invoke("--config", str(config), "db", "upgrade").exit_code == 0
    daemon = _cli("--config", str(config), "-v", "run")
    deadline = time.monotonic() + 90
    rows: list[dict] = []
    while time.monotonic() < deadline and len([r for r in rows if r["outcome"]]) < 2:
        time.sleep(2)
        rows = json.loads(invoke("--config", str(config), "jobs", "list", "--json").output)
    daemon.send_signal(signal.SIGTERM)
    _, err = daemon.communicate(timeout=60)
    assert daemon.returncode == 0, err
    assert "received SIGTERM" in err and "stopped cleanly" in err
    outcomes = {(r["queue"], r["outcome"]) for r in rows if r["outcome"]}
    assert ("ANALY_FZK", "completed") in outcomes or ("ANALY_DESY-HH", "failed") in outcomes
    assert not any(r["queue"] == "ANALY_DESY-HH" and r["outcome"] == "completed" for r in rows)


def test_run_once_prints_a_step_summary(tmp_path):
    config = _small_setup(tmp_path)
    invoke("--config", str(config), "db", "upgrade")
    result = invoke("--config", str(config), "run", "--once")
    summary = json.loads(result.output.strip().splitlines()[-1])
    assert summary["submitted"] == 2 and summary["backend_errors"] == []
