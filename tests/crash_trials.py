"""Crash trials: the robot process is killed with SIGKILL at random points of real steps, restarted,
and what the grid ran is then checked against what the robot knows.

Two paths: `embedded` (the grid inside the robot's process, as `healthrobot run` has it) and `panda`
(the robot's PanDA backend and the unmodified panda-client against `healthrobot grid serve`, a
separate process that lives through the robot's deaths). Each trial starts a robot process
(`python -m tests.crash_trials step ...`) on the same database and grid; that process counts its
"crash points" (before and after every backend call and every database commit) and kills itself
with SIGKILL at the one the trial drew, wherever in a step it falls: between a submission the grid
recorded and the commit of its PanDA ID, in the middle of polling, of a kill, of the lookup of
unconfirmed jobs... After the trials a last robot process runs steps without submitting until
nothing is in flight, and `check` compares:

* orphans: jobs the grid holds that the robot does not know, or knows without their final state;
* limit violations: jobs that made a (template, queue) pair hold more jobs in flight at the grid
  (from creation to end, the grid's own times) than the template's `max_running_jobs`.

Used by tests/test_crash.py (a handful of trials) and bench/crash.py (100 per path). Nothing depends
on the machine's speed: a slow machine only moves where the kills fall.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import yaml

REPO = Path(__file__).resolve().parent.parent
QUEUES = ("ANALY_CRASH_A", "ANALY_CRASH_B")
MAX_RUNNING = 2  # the template's max_running_jobs: the limit checked at the grid
DATASET = {"name": "mc23_13p6TeV.601189.PhPy8EG_Zmumu.deriv.DAOD_PHYS.crash", "files": 1,
           "events_per_file": 400, "seed": 7}
BACKEND_CALLS = ("submit", "status", "kill", "find", "queue_status")
POINTS_PER_TRIAL = 40  # a kill is drawn among the first this many crash points (about three steps)
STEP_PAUSE = 0.2  # seconds between steps: jobs move on the grid meanwhile
SETTLE_TIMEOUT = 300.0  # seconds the last process may take to see every job end (busy machines)
LOOKUP_GRACE = "30s"  # PanDA path: a submission the monitor does not list is lost once this old (the request's timeout)


@dataclass
class Setup:
    """The files of one path's trials: the robot's configuration, its database and the grid's state."""

    path: str
    root: Path
    robot_yaml: Path
    serve_yaml: Path | None = None
    server: subprocess.Popen[str] | None = None
    logs: list[Path] = field(default_factory=list)

    @property
    def database(self) -> Path:
        return self.root / "data" / "healthrobot.db"

    @property
    def grid_db(self) -> Path:
        return self.root / "data" / "grid" / "grid.sqlite"

    def close(self) -> None:
        if self.server is not None and self.server.poll() is None:
            self.server.send_signal(signal.SIGTERM)
            try:
                self.server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait()


@dataclass
class Outcome:
    path: str
    trials: int = 0
    killed: int = 0  # trials whose process reached its drawn crash point
    grid_jobs: int = 0
    orphaned: list[int] = field(default_factory=list)
    not_final: list[int] = field(default_factory=list)  # jobs still running at the grid after settling
    violations: list[str] = field(default_factory=list)
    reconciled: int = 0  # unconfirmed submissions found at the grid and followed
    lost: int = 0  # unconfirmed submissions the grid never received

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "trials": self.trials, "killed": self.killed, "grid_jobs": self.grid_jobs,
                "orphaned": len(self.orphaned), "limit_violations": len(self.violations),
                "not_final": len(self.not_final), "reconciled": self.reconciled, "lost": self.lost}


# -- setting up -----------------------------------------------------------------------------------
def grid_yaml() -> dict[str, Any]:
    sites = {f"SITE-{q}": {"storage": {f"{q}_DATADISK": {}}, "queues": {q: {"slots": 4}}} for q in QUEUES}
    return {"defaults": {"user_failure_rate": 0.0}, "seed": 1, "datasets": [DATASET],
            "clouds": {"XX": {"sites": sites}}, "faults": []}


def robot_yaml(root: Path, backend: dict[str, Any]) -> dict[str, Any]:
    return {
        "data_dir": str(root / "data"),
        "backend": backend,
        "user_jobs": {"read": False},  # users' jobs are not what is tested here
        "templates": [{"name": "CRASH_AFT", "category": "functional", "payload": "zmumu",
                       "input_dataset": "mc23_13p6TeV.601189.*", "events_per_job": 200,
                       "max_running_jobs": MAX_RUNNING, "max_wall_time": "10m", "max_queue_time": "2h"}],
        "blacklist": {"mode": "off"},  # no probes: the limit stays max_running_jobs
    }


def prepare(root: Path, path: str) -> Setup:
    """Write the configuration (and for `panda` start `healthrobot grid serve`)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "grid.yaml").write_text(yaml.safe_dump(grid_yaml(), sort_keys=False))
    embedded = {"grid": str(root / "grid.yaml"), "max_parallel_jobs": 4}
    setup = Setup(path=path, root=root, robot_yaml=root / "robot.yaml")
    if path == "embedded":
        setup.robot_yaml.write_text(yaml.safe_dump(robot_yaml(root, {"kind": "embedded", "embedded": embedded})))
        return setup
    if path != "panda":
        raise ValueError(f"path must be 'embedded' or 'panda', not {path!r}")
    setup.serve_yaml = root / "serve.yaml"
    setup.serve_yaml.write_text(yaml.safe_dump(robot_yaml(root, {"kind": "embedded", "embedded": embedded})))
    log = root / "grid-serve.log"
    setup.logs.append(log)
    with log.open("w") as err:
        setup.server, urls = start_grid_serve(setup.serve_yaml, err)
    # Unconfirmed submissions are looked up in the monitor the grid serves, by name, and called lost only
    # once LOOKUP_GRACE old: a bulk the robot sent just before it died may still be being stored.
    backend = {"kind": "panda", "embedded": embedded,
               "panda": {"url": urls["PANDA_URL"], "monitor_url": urls["MONITOR_URL"], "auth": "none",
                         "timeout": "30s", "retries": 2, "lookup_grace": LOOKUP_GRACE}}
    setup.robot_yaml.write_text(yaml.safe_dump(robot_yaml(root, backend)))
    return setup


def start_grid_serve(config: Path, stderr: Any) -> tuple[subprocess.Popen[str], dict[str, str]]:
    """`healthrobot grid serve --port 0` on `config`; the process and the PANDA_URL and MONITOR_URL it printed."""
    process = subprocess.Popen(
        [sys.executable, "-m", "robot.cli", "--config", str(config), "grid", "serve", "--port", "0"],
        stdout=subprocess.PIPE, stderr=stderr, text=True, cwd=REPO)
    urls: dict[str, str] = {}
    while "PANDA_URL" not in urls or "MONITOR_URL" not in urls:
        line = process.stdout.readline()  # type: ignore[union-attr]
        if not line and process.poll() is not None:
            raise RuntimeError(f"healthrobot grid serve stopped with exit code {process.returncode}")
        key, _, value = line.strip().partition("=")
        if key in ("PANDA_URL", "MONITOR_URL"):
            urls[key] = value
    return process, urls


# -- the robot process -------------------------------------------------------------------------------
class CrashPoints:
    """Counts crash points; at the drawn one the process kills itself with SIGKILL. The draw is either
    the n-th point of any kind, or the moment the first submission returned (the grid holds the jobs,
    the robot has not stored their PanDA IDs): the window where orphans are born."""

    def __init__(self, crash_at: int | None, after_submit: bool = False):
        self.crash_at = crash_at
        self.after_submit = after_submit
        self.count = 0

    def __call__(self, *_: Any, label: str = "") -> None:
        self.count += 1
        if (self.crash_at is not None and self.count >= self.crash_at) or (
                self.after_submit and label == "after submit"):
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)


def _instrumented(name: str, call: Callable[..., Any], point: CrashPoints) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        point(label=f"before {name}")
        result = call(*args, **kwargs)
        point(label=f"after {name}")
        return result
    return wrapper


def run_robot(config_path: Path, crash_at: int | None, after_submit: bool, settle: bool) -> int:
    """A robot process: real steps until it kills itself at `crash_at`, or (settle) until nothing is
    in flight; it sends nothing new while settling."""
    from sqlalchemy import event, func, select

    from robot.clock import SystemClock
    from robot.config import load_config
    from robot.services import build
    from robot.storage.database import upgrade
    from robot.storage.models import Job

    config = load_config(config_path)
    clock = SystemClock()
    services = build(config, clock)
    upgrade(services.engine)  # the first process makes the schema (`healthrobot db upgrade`)
    robot = services.robot
    if services.grid is not None:
        services.grid.storage.prepare()
    point = CrashPoints(crash_at, after_submit)
    for name in BACKEND_CALLS:
        setattr(robot.backend, name, _instrumented(name, getattr(robot.backend, name), point))
    event.listen(robot.sessions, "before_commit", point)
    event.listen(robot.sessions, "after_commit", point)
    if settle:
        robot._submit = lambda *args, **kwargs: None  # type: ignore[method-assign]
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while time.monotonic() < deadline:
        robot.run_once(clock.now())
        if settle:
            with robot.sessions() as session:
                open_rows = session.scalar(select(func.count()).select_from(Job).where(
                    Job.phase.in_(["recorded", "active"])))
            if not open_rows:
                break
        time.sleep(STEP_PAUSE)
    return 0


def trial(setup: Setup, rng: random.Random, outcome: Outcome) -> None:
    """One robot process, killed at a crash point drawn at random (one trial in three: right after its
    first submission returned)."""
    draw = ["--after-submit"] if rng.random() < 1 / 3 else ["--crash-at", str(rng.randint(1, POINTS_PER_TRIAL))]
    done = _robot_process(setup, draw, f"trial-{outcome.trials + 1}")
    outcome.trials += 1
    outcome.killed += done.returncode == -signal.SIGKILL


def settle(setup: Setup, outcome: Outcome) -> None:
    done = _robot_process(setup, ["--settle"], "settle")
    if done.returncode != 0:
        raise RuntimeError(f"the settling robot failed ({done.returncode}): {setup.logs[-1].read_text()[-3000:]}")


def _robot_process(setup: Setup, args: list[str], name: str) -> subprocess.CompletedProcess[str]:
    log = setup.root / f"{name}.log"
    setup.logs.append(log)
    with log.open("w") as err:
        return subprocess.run([sys.executable, "-m", "tests.crash_trials", "step", str(setup.robot_yaml), *args],
                              stdout=subprocess.PIPE, stderr=err, text=True, cwd=REPO,
                              timeout=SETTLE_TIMEOUT + 120)


# -- checking ----------------------------------------------------------------------------------------
def grid_jobs(setup: Setup) -> dict[int, dict[str, Any]]:
    db = sqlite3.connect(setup.grid_db)
    try:
        return {pid: json.loads(data) for pid, data in db.execute("SELECT panda_id, data FROM jobs")}
    finally:
        db.close()


def robot_jobs(setup: Setup) -> dict[int, tuple[str, str, str | None]]:
    """PanDA ID -> (job name, phase, job status) of the robot's rows that have one."""
    db = sqlite3.connect(setup.database)
    try:
        return {pid: (name, phase, status) for pid, name, phase, status in db.execute(
            "SELECT panda_id, job_name, phase, job_status FROM job WHERE panda_id IS NOT NULL")}
    finally:
        db.close()


def reconciliations(setup: Setup) -> tuple[int, int]:
    """Unconfirmed submissions the robot's processes found at the grid, and those they marked lost
    (from the events each lookup recorded: the processes that did it were often killed later)."""
    db = sqlite3.connect(setup.database)
    try:
        found = lost = 0
        for (details,) in db.execute("SELECT details FROM event WHERE kind = 'submission_unconfirmed'"):
            details = json.loads(details) if isinstance(details, str) else details
            found += len(details.get("found", {}))
            lost += len(details.get("lost", []))
        return found, lost
    finally:
        db.close()


def check(setup: Setup, outcome: Outcome) -> None:
    final = {"finished", "failed", "cancelled"}
    ran = grid_jobs(setup)
    known = robot_jobs(setup)
    outcome.grid_jobs = len(ran)
    outcome.reconciled, outcome.lost = reconciliations(setup)
    for pid, job in sorted(ran.items()):
        if job["job_status"] not in final:
            outcome.not_final.append(pid)
        row = known.get(pid)
        if row is None or row[0] != job["job_name"] or row[1] != "done" or row[2] != job["job_status"]:
            outcome.orphaned.append(pid)
    outcome.violations = limit_violations(ran)


def limit_violations(ran: dict[int, dict[str, Any]]) -> list[str]:
    """Jobs created while their (template, queue) pair already had `MAX_RUNNING` jobs open at the grid."""
    by_pair: dict[tuple[str, str], list[tuple[datetime, int, int]]] = defaultdict(list)
    for pid, job in ran.items():
        test_id = job["job_name"].split(".")[1]  # hc.<test>.<queue>.<random>
        created = datetime.fromisoformat(job["creation_time"])
        by_pair[(test_id, job["queue"])].append((created, 1, pid))
        if job.get("end_time"):
            by_pair[(test_id, job["queue"])].append((datetime.fromisoformat(job["end_time"]), -1, pid))
    found = []
    for pair, moves in by_pair.items():
        open_jobs = 0
        for when, delta, pid in sorted(moves, key=lambda m: (m[0], m[1])):  # an end before a start at a tie
            open_jobs += delta
            if delta > 0 and open_jobs > MAX_RUNNING:
                found.append(f"job {pid} made {open_jobs} in flight for test {pair[0]} at {pair[1]} at {when}")
    return found


def run_trials(root: Path, path: str, trials: int, seed: int = 1) -> Outcome:
    """`trials` killed robot processes on one database and grid, a settling one, and the check."""
    setup = prepare(root, path)
    outcome = Outcome(path=path)
    rng = random.Random(f"{seed}:{path}")
    try:
        for _ in range(trials):
            trial(setup, rng, outcome)
        settle(setup, outcome)
    finally:
        setup.close()
    check(setup, outcome)
    return outcome


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.crash_trials")
    sub = parser.add_subparsers(dest="command", required=True)
    step = sub.add_parser("step", help="one robot process (what a trial starts)")
    step.add_argument("config", type=Path)
    step.add_argument("--crash-at", type=int, help="kill at the N-th crash point")
    step.add_argument("--after-submit", action="store_true", help="kill when the first submission returned")
    step.add_argument("--settle", action="store_true", help="send nothing, run until nothing is in flight")
    args = parser.parse_args(argv)
    return run_robot(args.config, args.crash_at, args.after_submit, args.settle)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
