"""The embedded grid: local sites and queues that run the real test payloads, with faults.

It stands in for PanDA and the sites behind it. Jobs go through PanDA's life cycle (defined,
activated, running, finished / failed / cancelled); each running job is a pilot process (see
`pilot.py`) that stages real ROOT files in from the site's storage folder and runs the real payload.
Concurrency is bounded per queue (slots) and for the machine (`max_parallel_jobs`).
"""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
from collections import Counter
from dataclasses import asdict, fields
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

from robot.backends.base import JobReport, JobRequest
from robot.backends.embedded.config import GridConfig
from robot.backends.embedded.faults import active_faults, is_stuck, plan_injection
from robot.backends.embedded.state import Fault, GridState
from robot.backends.embedded.storage import GridStorage
from robot.clock import Clock, as_utc
from robot.jobstates import JobStatus, QueueStatus

LOST_HEARTBEAT = 100  # jobDispatcherErrorCode: the pilot stopped reporting
KILLED = 100  # taskBufferErrorCode: killed on request
WALL_GRACE_SECONDS = 60
TEST_LABELS = {"prod_test", "test", "install"}


class EmbeddedGrid:
    """A `Backend` whose queues are folders and processes on this machine."""

    name = "embedded"

    def __init__(self, config: GridConfig, state_dir: Path, clock: Clock, max_parallel_jobs: int):
        self.config = config
        self.clock = clock
        self.max_parallel_jobs = max_parallel_jobs
        self.storage = GridStorage(config, state_dir)
        self.state = GridState(state_dir / "grid.sqlite")
        self._workdir = state_dir / "work"
        self._logdir = state_dir / "logs"
        self._queues = {q.name: q for q in self.storage.queue_settings()}
        # One random stream per queue: a queue's outcomes do not depend on what other queues do.
        self._rngs = {name: random.Random(f"{config.seed}:{name}") for name in self._queues}
        self._processes: dict[int, subprocess.Popen[bytes]] = {}
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        now = clock.now()
        self._schedule_config_faults(now)
        self._recover(now)

    # -- Backend interface ----------------------------------------------------------------------
    def submit(self, jobs: Sequence[JobRequest]) -> list[int]:
        now = self.clock.now()
        rows = []
        for job in jobs:
            if job.queue not in self._queues:
                raise ValueError(f"unknown queue {job.queue!r}")
            data = {**_request_dict(job), "job_status": JobStatus.DEFINED.value, "creation_time": now.isoformat()}
            rows.append((job.queue, data))
        with self._lock:
            return self.state.add_jobs(rows)

    def status(self, panda_ids: Sequence[int]) -> dict[int, JobReport | None]:
        self.tick()
        with self._lock:
            found = self.state.jobs(list(panda_ids))
        return {pid: (_report(pid, found[pid]) if pid in found else None) for pid in panda_ids}

    def kill(self, panda_ids: Sequence[int]) -> dict[int, bool]:
        now = self.clock.now()
        done: dict[int, bool] = {}
        with self._lock:
            found = self.state.jobs(list(panda_ids))
            for pid in panda_ids:
                job = found.get(pid)
                if job is None or JobStatus(job["job_status"]) in (JobStatus.FINISHED, JobStatus.FAILED, JobStatus.CANCELLED):
                    done[pid] = False
                    continue
                self._terminate(pid)
                shutil.rmtree(self._workdir / str(pid), ignore_errors=True)
                job.update(job_status=JobStatus.CANCELLED.value, end_time=now.isoformat(),
                           task_buffer_error_code=KILLED, task_buffer_error_diag="killed by the robot on request")
                self.state.save_job(pid, job)
                done[pid] = True
        return done

    def queue_status(self) -> dict[str, QueueStatus]:
        with self._lock:
            stored = self.state.queue_statuses()
        return {name: stored.get(name, QueueStatus.ONLINE) for name in self._queues}

    def set_queue_status(self, queue: str, status: QueueStatus, reason: str, actor: str) -> None:
        if queue not in self._queues:
            raise ValueError(f"unknown queue {queue!r}")
        with self._lock:
            self.state.set_queue_status(queue, status, reason, actor, self.clock.now())

    # -- running --------------------------------------------------------------------------------
    def start(self, period: float = 1.0) -> None:
        """Dispatch and reap in a background thread, like the pilots and PanDA would on their own."""
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, args=(period,), name="embedded-grid", daemon=True)
            self._thread.start()

    def stop(self, kill_running: bool = True) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if kill_running:
            with self._lock:
                for pid in list(self._processes):
                    self._terminate(pid)

    def _run(self, period: float) -> None:
        while not self._stop.wait(period):
            self.tick()

    def tick(self) -> None:
        """One step of the grid: activate, reap finished pilots, dispatch to free slots."""
        with self._lock:
            now = self.clock.now()
            open_jobs = self.state.jobs_in((JobStatus.DEFINED.value, JobStatus.ACTIVATED.value, JobStatus.RUNNING.value))
            for pid, job in open_jobs:
                if job["job_status"] == JobStatus.DEFINED.value:
                    job["job_status"] = JobStatus.ACTIVATED.value
                    self.state.save_job(pid, job)
                elif job["job_status"] == JobStatus.RUNNING.value:
                    self._reap(pid, job, now)
            self._dispatch(open_jobs, now)

    def running_jobs(self) -> int:
        with self._lock:
            return len(self._processes)

    def _dispatch(self, open_jobs: list[tuple[int, dict[str, Any]]], now: datetime) -> None:
        """Start activated jobs where slots are free; `open_jobs` is this tick's view, already reaped."""
        faults = self.state.faults()
        statuses = self.state.queue_statuses()
        running = Counter(j["queue"] for _, j in open_jobs if j["job_status"] == JobStatus.RUNNING.value)
        reading = Counter(self._queues[q].endpoint for q in running.elements())
        activated = [(p, j) for p, j in open_jobs if j["job_status"] == JobStatus.ACTIVATED.value]
        for pid, job in activated:
            if len(self._processes) >= self.max_parallel_jobs:
                return
            queue = self._queues[job["queue"]]
            status = statuses.get(queue.name, QueueStatus.ONLINE)
            if status is QueueStatus.OFFLINE or (status is QueueStatus.TEST and not _is_test_job(job)):
                continue
            active = active_faults(faults, queue.name, now)
            if is_stuck(active) or running[queue.name] >= queue.slots:
                continue
            injection = plan_injection(active, queue.user_failure_rate, self._rngs[queue.name])
            reading[queue.endpoint] += 1
            running[queue.name] += 1
            pilot_job = {
                **{k: job[k] for k in ("job_name", "payload", "max_events", "max_wall_seconds")},
                "panda_id": pid,
                "inputs": self.storage.input_paths(queue.endpoint, job["dataset"], job["files"]),
                "output_dir": str(self.storage.scratch(queue.endpoint)),
                "bandwidth_mb_s": queue.bandwidth_mb_s / reading[queue.endpoint],
                "cpu_speed": queue.cpu_speed,
                "inject": injection.as_dict(),
            }
            self._start_pilot(pid, pilot_job)
            job.update(job_status=JobStatus.RUNNING.value, start_time=now.isoformat(), injection=injection.as_dict())
            self.state.save_job(pid, job)

    def _start_pilot(self, pid: int, pilot_job: dict[str, Any]) -> None:
        workdir = self._workdir / str(pid)
        shutil.rmtree(workdir, ignore_errors=True)
        workdir.mkdir(parents=True)
        (workdir / "job.json").write_text(json.dumps(pilot_job))
        with (workdir / "pilot.log").open("wb") as log:
            self._processes[pid] = subprocess.Popen(
                [sys.executable, "-m", "robot.backends.embedded.pilot", str(workdir / "job.json")],
                cwd=workdir, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )

    def _reap(self, pid: int, job: dict[str, Any], now: datetime) -> None:
        process = self._processes.get(pid)
        if process is None:
            return
        started = as_utc(datetime.fromisoformat(job["start_time"]))
        if process.poll() is None:
            if (now - started).total_seconds() <= job["max_wall_seconds"] + WALL_GRACE_SECONDS:
                return
            self._terminate(pid)
            result = {"job_status": "failed", "pilot_error_code": 1213,
                      "pilot_error_diag": f"Reached maximum wall time ({job['max_wall_seconds']} s): pilot killed"}
        else:
            self._processes.pop(pid)
            result = _read_result(self._workdir / str(pid))
        job.update(result, end_time=now.isoformat())
        if job["job_status"] != JobStatus.FINISHED.value:
            self._keep_logs(pid)
        shutil.rmtree(self._workdir / str(pid), ignore_errors=True)
        self.state.save_job(pid, job)

    def _keep_logs(self, pid: int) -> None:
        self._logdir.mkdir(parents=True, exist_ok=True)
        with (self._logdir / f"{pid}.log").open("wb") as out:
            for name in ("pilot.log", "payload.log"):
                path = self._workdir / str(pid) / name
                if path.exists():
                    out.write(f"==> {name} <==\n".encode() + path.read_bytes()[-65536:])

    def _terminate(self, pid: int) -> None:
        process = self._processes.pop(pid, None)
        if process is not None and process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait()

    def _schedule_config_faults(self, now: datetime) -> None:
        started = self.state.started_at(now)
        for i, fault in enumerate(self.config.faults):
            start = as_utc(fault.start) if fault.start else started + fault.start_after
            self.state.add_fault(
                Fault(queue=fault.queue, mode=fault.mode, start=start, until=start + fault.duration,
                      probability=fault.probability, slowdown=fault.slowdown, actor="grid config"),
                source=f"config:{i}:{fault.queue}:{fault.mode.value}:{start.isoformat()}",
            )

    def _recover(self, now: datetime) -> None:
        """Jobs left running by an earlier grid process lost their pilot: PanDA fails them."""
        for pid, job in self.state.jobs_in((JobStatus.RUNNING.value,)):
            job.update(job_status=JobStatus.FAILED.value, end_time=now.isoformat(),
                       job_dispatcher_error_code=LOST_HEARTBEAT,
                       job_dispatcher_error_diag="lost heartbeat: the pilot stopped reporting (grid restarted)")
            self.state.save_job(pid, job)


def _is_test_job(job: dict[str, Any]) -> bool:
    """PanDA dispatches to a queue in `test` only jobs marked as tests."""
    return job["processing_type"] == "gangarobot" or job["prod_source_label"] in TEST_LABELS


def _request_dict(job: JobRequest) -> dict[str, Any]:
    data = asdict(job)
    data["files"] = [asdict(f) for f in job.files]
    return data


def _read_result(workdir: Path) -> dict[str, Any]:
    try:
        return json.loads((workdir / "result.json").read_text())
    except (OSError, ValueError):
        return {"job_status": "failed", "job_dispatcher_error_code": LOST_HEARTBEAT,
                "job_dispatcher_error_diag": "lost heartbeat: the pilot died without a final update"}


_REPORT_FIELDS = {f.name for f in fields(JobReport)}


def _report(pid: int, job: dict[str, Any]) -> JobReport:
    values = {k: v for k, v in job.items() if k in _REPORT_FIELDS}
    for key in ("creation_time", "start_time", "end_time"):
        if values.get(key):
            values[key] = as_utc(datetime.fromisoformat(values[key]))
    values["job_status"] = JobStatus(values["job_status"])
    return JobReport(panda_id=pid, **values)
