"""The embedded grid: local sites and queues that run the real test payloads, with faults.

It stands in for PanDA and the sites behind it. Jobs go through PanDA's life cycle (defined,
activated, running, finished / failed / cancelled); each running job is a pilot process (see
`pilot.py`) that stages real ROOT files in from the site's storage folder and runs the real payload.
Concurrency is bounded per queue (slots) and for the machine (`max_parallel_jobs`).

Two ways to dispatch: `local` (the default) starts the pilots itself at each tick; `pull` leaves
activated jobs waiting for the grid's workers, which take them over PanDA's pilot protocol
(`acquire_jobs`, then `update_job`: sent -> starting -> running -> holding -> finished | failed;
see `panda_service.py` and `workers.py`). The same rules decide what may start in both.
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
from typing import Any, Callable, Iterator, Literal, Sequence

from robot.backends.base import JobReport, JobRequest, UserJobHour
from robot.backends.embedded.config import GridConfig
from robot.backends.embedded.faults import Injection, active_faults, is_held, is_stuck, plan_injection
from robot.backends.embedded.state import Fault, GridState
from robot.backends.embedded.status import GridQueueStatus
from robot.backends.embedded.storage import GridStorage
from robot.backends.embedded.userjobs import user_hours, user_jobs
from robot.clock import Clock, as_utc
from robot.jobstates import JobStatus, QueueStatus

LOST_HEARTBEAT = 100  # jobDispatcherErrorCode: the pilot stopped reporting
KILLED = 100  # taskBufferErrorCode: killed on request
WALL_GRACE_SECONDS = 60
TEST_LABELS = {"prod_test", "test", "install"}
# Pull mode: a job whose pilot has not reported for this long is failed (lost heartbeat).
HEARTBEAT_TIMEOUT_SECONDS = 600
IN_FLIGHT = (JobStatus.SENT.value, JobStatus.STARTING.value, JobStatus.RUNNING.value)
OPEN = (JobStatus.DEFINED.value, JobStatus.ACTIVATED.value, *IN_FLIGHT, JobStatus.HOLDING.value)
FINAL = (JobStatus.FINISHED.value, JobStatus.FAILED.value, JobStatus.CANCELLED.value)
# pilot update_job StatusCodes (PanDA's jobdispatcher Protocol)
SC_SUCCESS = 0
SC_FAILED = 30
# What a pilot may report, from which state (a final report leaves the job `holding` until the
# grid's next tick stores the outcome, as PanDA's adder does).
PILOT_STATES = ("starting", "running", "holding", "finished", "failed")
_UPDATABLE = {JobStatus.SENT.value, JobStatus.STARTING.value, JobStatus.RUNNING.value, JobStatus.HOLDING.value}
# Fields a pilot's update may set on a job (the grid's snake_case names).
PILOT_FIELDS = ("trans_exit_code", "pilot_error_code", "pilot_error_diag", "exe_error_code", "exe_error_diag",
                "n_events", "cpu_consumption_time", "max_rss_kb", "core_count", "pilot_timing", "node")


class EmbeddedGrid:
    """A `Backend` whose queues are folders and processes on this machine."""

    name = "embedded"

    def __init__(self, config: GridConfig, state_dir: Path, clock: Clock, max_parallel_jobs: int,
                 dispatch: Literal["local", "pull"] = "local"):
        if dispatch not in ("local", "pull"):
            raise ValueError(f"dispatch must be 'local' or 'pull', not {dispatch!r}")
        self.config = config
        self.clock = clock
        self.max_parallel_jobs = max_parallel_jobs
        self.dispatch = dispatch
        self.state_dir = state_dir
        self.storage = GridStorage(config, state_dir)
        self.state = GridState(state_dir / "grid.sqlite")
        self._workdir = state_dir / "work"
        self._logdir = state_dir / "logs"
        self._queues = {q.name: q for q in self.storage.queue_settings()}
        self._statuses = GridQueueStatus(self.state, self._queues, clock)
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
    def submit(self, jobs: Sequence[JobRequest], extras: Sequence[dict[str, Any]] | None = None) -> list[int]:
        """Store the jobs `defined`, all or none. `extras`: per job, more keys kept in its row
        (the PanDA service keeps what the client sent that the grid has no use for)."""
        now = self.clock.now()
        rows = []
        for i, job in enumerate(jobs):
            if job.queue not in self._queues:
                raise ValueError(f"unknown queue {job.queue!r}")
            data = {**(extras[i] if extras else {}), **_request_dict(job),
                    "job_status": JobStatus.DEFINED.value, "creation_time": now.isoformat()}
            rows.append((job.queue, data))
        with self._lock:
            return self.state.add_jobs(rows)

    def status(self, panda_ids: Sequence[int]) -> dict[int, JobReport | None]:
        found = self.job_rows(panda_ids)
        return {pid: (_report(pid, found[pid]) if pid in found else None) for pid in panda_ids}

    def job_rows(self, panda_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
        """The stored rows of the jobs the grid knows (after a tick), for the PanDA service."""
        self.tick()
        with self._lock:
            return self.state.jobs(list(panda_ids))

    def find(self, job_names: Sequence[str]) -> dict[str, int | None]:
        """Jobs are stored whole or not at all, so a name not found was certainly never submitted."""
        with self._lock:
            found = self.state.ids_by_name(list(dict.fromkeys(job_names)))
        return {name: found.get(name) for name in job_names}

    def find_like(self, patterns: Sequence[str]) -> list[int]:
        """The jobs whose name matches one of these patterns as PanDA's monitor matches a `jobname`
        (case-insensitive, `*` any text), for the monitor's job list of the PanDA service."""
        like = [p.replace("!", "!!").replace("_", "!_").replace("*", "%") for p in patterns if p]
        with self._lock:
            return self.state.ids_like(like)

    def kill(self, panda_ids: Sequence[int]) -> dict[int, bool]:
        now = self.clock.now()
        done: dict[int, bool] = {}
        with self._lock:
            found = self.state.jobs(list(panda_ids))
            for pid in panda_ids:
                job = found.get(pid)
                if job is None or job["job_status"] in FINAL:
                    done[pid] = False
                    continue
                if pid in self._processes:  # a pull-mode job's worker hears `tobekilled` at its next update
                    self._terminate(pid)
                    shutil.rmtree(self._workdir / str(pid), ignore_errors=True)
                job.pop("final", None)
                job.update(job_status=JobStatus.CANCELLED.value, end_time=now.isoformat(),
                           task_buffer_error_code=KILLED, task_buffer_error_diag="killed by the robot on request")
                self.state.save_job(pid, job)
                done[pid] = True
        return done

    def queue_status(self) -> dict[str, QueueStatus]:
        with self._lock:
            return self._statuses.queue_status()

    def set_queue_status(self, queue: str, status: QueueStatus, reason: str, actor: str) -> None:
        with self._lock:
            self._statuses.set_queue_status(queue, status, reason, actor)

    def user_job_stats(self, since: datetime, until: datetime) -> list[UserJobHour]:
        """The background users' jobs that ended (robot/backends/embedded/userjobs.py)."""
        return user_hours(*self._users(since, until))

    def user_job_ends(self, since: datetime, until: datetime) -> list[tuple[str, datetime, int]]:
        """The same jobs one by one, (queue, end, pilot error code or 0): what the PanDA service's monitor lists."""
        return user_jobs(*self._users(since, until))

    def _users(self, since: datetime, until: datetime) -> tuple[Any, ...]:
        defaults = self.config.defaults
        with self._lock:
            now = self.clock.now()
            faults, started = self.state.faults(), self.state.started_at(now)
        return (sorted(self._queues), faults, self.config.seed, defaults.user_jobs_per_hour,
                defaults.user_job_failure_rate, since, until, started, now)

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
        """One step of the grid: activate, reap finished pilots, dispatch to free slots.

        In pull mode nothing is started here: workers take activated jobs with `acquire_jobs`; the
        tick stores the outcome of jobs left `holding` by a pilot's final update and fails jobs
        whose pilot stopped reporting."""
        with self._lock:
            now = self.clock.now()
            open_jobs = self.state.jobs_in(OPEN)
            faults = self.state.faults()
            for pid, job in open_jobs:
                if job["job_status"] == JobStatus.DEFINED.value:
                    if not is_held(active_faults(faults, job["queue"], now)):
                        job["job_status"] = JobStatus.ACTIVATED.value
                        self.state.save_job(pid, job)
                elif job["job_status"] == JobStatus.RUNNING.value and self.dispatch == "local":
                    self._reap(pid, job, now)
                elif job["job_status"] == JobStatus.HOLDING.value and "final" in job:
                    job["job_status"] = job.pop("final")
                    self.state.save_job(pid, job)
                elif job["job_status"] in (*IN_FLIGHT, JobStatus.HOLDING.value) and self.dispatch == "pull":
                    self._check_heartbeat(pid, job, now)
            if self.dispatch == "local":
                for pid, job, pilot_job, injection in self._dispatchable(open_jobs, now, lambda: len(self._processes)):
                    self._start_pilot(pid, pilot_job)
                    job.update(job_status=JobStatus.RUNNING.value, start_time=now.isoformat(),
                               injection=injection.as_dict())
                    self.state.save_job(pid, job)

    def running_jobs(self) -> int:
        """Jobs with a pilot at work: processes here (local), jobs sent to workers (pull)."""
        with self._lock:
            if self.dispatch == "local":
                return len(self._processes)
            return len(self.state.jobs_in(IN_FLIGHT))

    def _dispatchable(self, open_jobs: list[tuple[int, dict[str, Any]]], now: datetime, busy: Callable[[], int],
                      queue: str | None = None
                      ) -> Iterator[tuple[int, dict[str, Any], dict[str, Any], Injection]]:
        """Activated jobs that may start now, in order, with their pilot job and injected faults.

        The rules of both dispatch modes: never on an offline queue, only test jobs on a queue in
        `test`, nothing on a stuck queue, at most `slots` jobs in flight per queue and
        `max_parallel_jobs` (`busy()` counts them) for the grid. `open_jobs` is this tick's view,
        already reaped; the caller starts each job before asking for the next one.
        """
        faults = self.state.faults()
        statuses = self.state.queue_statuses()
        running = Counter(j["queue"] for _, j in open_jobs if j["job_status"] in IN_FLIGHT)
        reading = Counter(self._queues[q].endpoint for q in running.elements())
        activated = [(p, j) for p, j in open_jobs if j["job_status"] == JobStatus.ACTIVATED.value]
        for pid, job in activated:
            if busy() >= self.max_parallel_jobs:
                return
            if queue is not None and job["queue"] != queue:
                continue
            settings = self._queues[job["queue"]]
            status = statuses.get(settings.name, QueueStatus.ONLINE)
            if status is QueueStatus.OFFLINE or (status is QueueStatus.TEST and not _is_test_job(job)):
                continue
            active = active_faults(faults, settings.name, now)
            if is_stuck(active) or running[settings.name] >= settings.slots:
                continue
            injection = plan_injection(active, settings.user_failure_rate, self._rngs[settings.name])
            reading[settings.endpoint] += 1
            running[settings.name] += 1
            pilot_job = {
                **{k: job[k] for k in ("job_name", "payload", "max_events", "max_wall_seconds")},
                "panda_id": pid,
                "inputs": self.storage.input_paths(settings.endpoint, job["dataset"], job["files"]),
                "output_dir": str(self.storage.scratch(settings.endpoint)),
                "bandwidth_mb_s": settings.bandwidth_mb_s / reading[settings.endpoint],
                "cpu_speed": settings.cpu_speed,
                "inject": injection.as_dict(),
                "cannot_run": job.get("cannot_run"),  # what PanDA accepted but a pilot here cannot run
            }
            yield pid, job, pilot_job, injection

    def _start_pilot(self, pid: int, pilot_job: dict[str, Any]) -> None:
        self._processes[pid] = start_pilot(self._workdir / str(pid), pilot_job)

    # -- pull mode: the pilot protocol -------------------------------------------------------------
    def acquire_jobs(self, queue: str, n_jobs: int = 1, node: str = "") -> list[tuple[int, dict[str, Any], dict[str, Any]]]:
        """Up to `n_jobs` activated jobs of `queue` that may start now (the rules of local dispatch),
        marked `sent`; each as (PanDA ID, its row, the pilot job). Pull mode only."""
        if self.dispatch != "pull":
            raise RuntimeError("acquire_jobs: this grid dispatches its jobs itself (dispatch='local')")
        if queue not in self._queues:
            raise ValueError(f"unknown queue {queue!r}")
        taken: list[tuple[int, dict[str, Any], dict[str, Any]]] = []
        with self._lock:
            self.tick()
            now = self.clock.now()
            open_jobs = self.state.jobs_in(OPEN)
            in_flight = sum(j["job_status"] in IN_FLIGHT for _, j in open_jobs)
            for pid, job, pilot_job, injection in self._dispatchable(open_jobs, now, lambda: in_flight + len(taken),
                                                                     queue=queue):
                job.update(job_status=JobStatus.SENT.value, injection=injection.as_dict(), node=node,
                           heartbeat_time=now.isoformat())
                self.state.save_job(pid, job)
                taken.append((pid, job, pilot_job))
                if len(taken) >= n_jobs:
                    break
        return taken

    def update_job(self, panda_id: int, job_status: str, values: dict[str, Any]) -> tuple[int, str]:
        """A pilot's report on its job; returns (StatusCode, command to the pilot). Pull mode only.

        `values` holds PILOT_FIELDS. A report for a killed job changes nothing and answers
        `tobekilled`; one for a job that is not with a pilot (queued, already done, unknown)
        changes nothing and answers a non-zero StatusCode. `finished` / `failed` leave the job
        `holding` with its outcome stored at the grid's next tick.
        """
        if job_status not in PILOT_STATES:
            return SC_FAILED, f"invalid job status {job_status!r}"
        with self._lock:
            now = self.clock.now()
            job = self.state.jobs([panda_id]).get(panda_id)
            if job is None:
                return SC_FAILED, f"unknown job {panda_id}"
            if job["job_status"] == JobStatus.CANCELLED.value:
                return SC_SUCCESS, "tobekilled"
            if job["job_status"] not in _UPDATABLE or "final" in job:
                return SC_FAILED, f"job {panda_id} is {job.get('final', job['job_status'])}: update refused"
            if job["job_status"] == JobStatus.HOLDING.value and job_status in ("starting", "running"):
                return SC_FAILED, f"job {panda_id} is holding: {job_status} refused"
            job.update({k: v for k, v in values.items() if k in PILOT_FIELDS and v is not None})
            job["heartbeat_time"] = now.isoformat()
            if job_status in ("running", "holding", "finished", "failed") and not job.get("start_time"):
                job["start_time"] = now.isoformat()
            if job_status in ("finished", "failed"):
                job.update(job_status=JobStatus.HOLDING.value, final=job_status, end_time=now.isoformat())
            else:
                job["job_status"] = job_status
            self.state.save_job(panda_id, job)
        return SC_SUCCESS, "NULL"

    def _check_heartbeat(self, pid: int, job: dict[str, Any], now: datetime) -> None:
        last = as_utc(datetime.fromisoformat(job.get("heartbeat_time") or job["creation_time"]))
        if (now - last).total_seconds() > HEARTBEAT_TIMEOUT_SECONDS:
            job.update(job_status=JobStatus.FAILED.value, end_time=now.isoformat(),
                       job_dispatcher_error_code=LOST_HEARTBEAT,
                       job_dispatcher_error_diag=f"lost heartbeat: no pilot update for {HEARTBEAT_TIMEOUT_SECONDS} s")
            self.state.save_job(pid, job)

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
            result = read_result(self._workdir / str(pid))
        job.update(result, end_time=now.isoformat())
        if job["job_status"] != JobStatus.FINISHED.value:
            keep_logs(self._workdir / str(pid), self._logdir / f"{pid}.log")
        shutil.rmtree(self._workdir / str(pid), ignore_errors=True)
        self.state.save_job(pid, job)

    def _terminate(self, pid: int) -> None:
        terminate(self._processes.pop(pid, None))

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
        """Jobs left with a pilot by an earlier grid process lost it: PanDA fails them."""
        for pid, job in self.state.jobs_in(IN_FLIGHT):
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


# -- pilot processes (shared by local dispatch and the pull-mode workers) ------------------------------
def start_pilot(workdir: Path, pilot_job: dict[str, Any]) -> subprocess.Popen[bytes]:
    """`python -m robot.backends.embedded.pilot job.json` in a fresh `workdir`, in its own session."""
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    (workdir / "job.json").write_text(json.dumps(pilot_job))
    with (workdir / "pilot.log").open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "robot.backends.embedded.pilot", str(workdir / "job.json")],
            cwd=workdir, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )


def terminate(process: subprocess.Popen[bytes] | None) -> None:
    """Kill a pilot and everything it started (its session)."""
    if process is not None and process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()


def read_result(workdir: Path) -> dict[str, Any]:
    """The pilot's result.json; a pilot that died without one lost its heartbeat."""
    try:
        return json.loads((workdir / "result.json").read_text())
    except (OSError, ValueError):
        return {"job_status": "failed", "job_dispatcher_error_code": LOST_HEARTBEAT,
                "job_dispatcher_error_diag": "lost heartbeat: the pilot died without a final update"}


def keep_logs(workdir: Path, target: Path) -> None:
    """The tails of a failed job's pilot and payload logs, kept after its work folder is removed."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("wb") as out:
        for name in ("pilot.log", "payload.log"):
            path = workdir / name
            if path.exists():
                out.write(f"==> {name} <==\n".encode() + path.read_bytes()[-65536:])


_REPORT_FIELDS = {f.name for f in fields(JobReport)}


def _report(pid: int, job: dict[str, Any]) -> JobReport:
    values = {k: v for k, v in job.items() if k in _REPORT_FIELDS}
    for key in ("creation_time", "start_time", "end_time"):
        if values.get(key):
            values[key] = as_utc(datetime.fromisoformat(values[key]))
    values["job_status"] = JobStatus(values["job_status"])
    return JobReport(panda_id=pid, **values)
