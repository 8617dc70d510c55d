"""The embedded grid's worker nodes in pull mode: pilots that take their jobs from the PanDA service.

Each worker is a thread that, like a pilot on a batch slot, asks the PanDA service for a job
(`pilot/acquire_jobs`, going round the grid's queues), runs it with the embedded pilot process
(`python -m robot.backends.embedded.pilot job.json`, the same as local dispatch), reports
`starting`, then `running` every `heartbeat` seconds, then the outcome from the pilot's
result.json (`pilot/update_job`). A `tobekilled` answer kills the pilot; a pilot over its wall time
is killed and reported failed (1213). When no queue has a job the worker waits, longer each
time up to `idle` seconds. `stop()` ends them all: a pilot still running is killed and its job
reported failed with SIGTERM (1201), as a pilot does when its batch slot is taken away.

The workers belong to the grid's "sites": they read the inputs from the grid's storage folders
and write under its state folder, but learn everything about a job from the service, over HTTP.
"""
from __future__ import annotations

import logging
import shutil
import subprocess
import threading
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlparse

import httpx

from robot.backends.embedded.grid import (
    WALL_GRACE_SECONDS,
    EmbeddedGrid,
    keep_logs,
    read_result,
    start_pilot,
    terminate,
)
from robot.backends.embedded.panda_service import format_timing
from robot.backends.job_parameters import BadJobParameters, parse_job_parameters

log = logging.getLogger(__name__)

GENERAL_ERROR = 1008  # pilot3 GENERALERROR: the pilot itself died
SIGTERM_CODE = 1201
REACHED_MAX_TIME = 1213
BAD_TRF_ARGUMENTS = 1349
NO_INJECTION = {"mode": None, "slowdown": 1.0, "payload_fail": None}


def _api(url: str) -> str:
    """Where panda-client would send its calls for PANDA_URL `url`: only scheme and host count."""
    parsed = urlparse(url)
    return f"{parsed.scheme}://{parsed.netloc}/api/v1"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")


class GridWorkers:
    """`threads` pilots (default: the grid's max_parallel_jobs) pulling jobs from the service at `url`."""

    def __init__(self, grid: EmbeddedGrid, url: str, threads: int | None = None, *, heartbeat: float = 5.0,
                 idle: float = 1.0, node: str = "embedded-wn"):
        self.grid = grid
        self.api = _api(url)
        self.threads = threads or grid.max_parallel_jobs
        self.heartbeat = heartbeat
        self.idle = idle
        self.node = node
        self.queues = [q.name for q in grid.storage.queue_settings()]
        self.stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> GridWorkers:
        self.stopping.clear()
        for index in range(self.threads):
            thread = threading.Thread(target=self._loop, args=(index,), name=f"grid-worker-{index}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self.stopping.set()
        for thread in self._threads:
            thread.join(timeout)
        self._threads.clear()

    def __enter__(self) -> GridWorkers:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    # -- one worker ---------------------------------------------------------------------------------
    def _loop(self, index: int) -> None:
        node = f"{self.node}-{index:02d}"
        wait = self.idle / 8
        turn = index  # workers start their round of the queues at different places
        with httpx.Client(timeout=30) as http:
            while not self.stopping.is_set():
                job = None
                for k in range(len(self.queues)):
                    queue = self.queues[(turn + k) % len(self.queues)]
                    began = time.monotonic()
                    job = self._acquire(http, queue, node)
                    if job is not None:
                        break
                turn += 1
                if job is None:
                    self.stopping.wait(wait)
                    wait = min(wait * 2, self.idle)
                    continue
                wait = self.idle / 8
                try:
                    self._run(http, job, queue, node, getjob=time.monotonic() - began)
                except Exception:  # a worker must outlive a bad job
                    log.exception("grid worker %s: job %s", node, job.get("PandaID"))

    def _acquire(self, http: httpx.Client, queue: str, node: str) -> dict[str, Any] | None:
        try:
            reply = http.post(f"{self.api}/pilot/acquire_jobs", json={
                "site_name": queue, "prod_source_label": "user", "node": node, "n_jobs": 1,
                "computing_element": queue, "job_type": "user", "memory": 2000, "disk_space": 20000})
            body = reply.json() if reply.status_code == 200 else None
        except (httpx.HTTPError, ValueError) as exc:
            log.debug("grid worker %s: acquire_jobs at %s failed: %s", node, queue, exc)
            return None
        if not isinstance(body, dict) or not body.get("success") or not isinstance(body.get("data"), dict):
            return None
        jobs = body["data"].get("jobs") or []
        return jobs[0] if jobs else None

    def _update(self, http: httpx.Client, panda_id: int, status: str, node: str, queue: str, tries: int = 1,
                **fields: Any) -> str | None:
        """pilot/update_job; the command to the pilot ("NULL", "tobekilled"), None when refused or lost."""
        data = {"job_id": panda_id, "job_status": status, "node": node, "site_name": queue,
                **{key: value for key, value in fields.items() if value is not None}}
        for attempt in range(tries):
            try:
                body = http.post(f"{self.api}/pilot/update_job", json=data).json()
            except (httpx.HTTPError, ValueError) as exc:
                log.warning("grid worker %s: update of job %s (%s) failed: %s", node, panda_id, status, exc)
                if attempt + 1 < tries:
                    time.sleep(1)
                continue
            answer = body.get("data") if isinstance(body, dict) else None
            if not isinstance(answer, dict) or answer.get("StatusCode") != 0:
                log.warning("grid worker %s: update of job %s (%s) refused: %s", node, panda_id, status,
                            body.get("message") if isinstance(body, dict) else body)
                return None
            return answer.get("command")
        return None

    def pilot_job(self, job: dict[str, Any]) -> dict[str, Any]:
        """The embedded pilot's job.json from a job in PanDA's pilot format."""
        extra = job.get("embedded") or {}
        cannot_run = extra.get("cannot_run")  # the service already knows a pilot here cannot run it
        params = None if cannot_run else parse_job_parameters(job["jobPars"])
        columns = [str(job[key]).split(",") if job[key] else [] for key in
                   ("inFiles", "fsize", "checksum", "realDatasetsIn", "ddmEndPointIn")]
        inputs = []
        for lfn, size, checksum, dataset, endpoint in zip(*columns):
            inputs += self.grid.storage.input_paths(endpoint, dataset, [
                {"lfn": lfn, "bytes": int(size), "adler32": checksum.removeprefix("ad:")}])
        endpoint_out = str(job.get("ddmEndPointOut") or "").split(",")[0]
        return {
            "job_name": job["jobName"], "payload": params.payload if params else "",
            "max_events": params.max_events if params else 0, "cannot_run": cannot_run,
            "max_wall_seconds": int(job["maxWalltime"]), "panda_id": int(job["PandaID"]), "inputs": inputs,
            "output_dir": str(self.grid.storage.scratch(endpoint_out)),
            "bandwidth_mb_s": float(extra.get("bandwidth_mb_s", self.grid.config.defaults.bandwidth_mb_s)),
            "cpu_speed": float(extra.get("cpu_speed", 1.0)), "inject": extra.get("inject") or NO_INJECTION,
        }

    def _run(self, http: httpx.Client, job: dict[str, Any], queue: str, node: str, getjob: float) -> None:
        panda_id = int(job["PandaID"])
        workdir = self.grid.state_dir / "work" / str(panda_id)
        try:
            pilot_job = self.pilot_job(job)
        except (BadJobParameters, KeyError, ValueError) as exc:
            self._update(http, panda_id, "failed", node, queue, tries=3, pilot_error_code=BAD_TRF_ARGUMENTS,
                         pilot_error_diag=f"cannot run the job as given: {exc}", end_time=_now())
            return
        if self._update(http, panda_id, "starting", node, queue) is None:
            return  # refused: the job is not ours (any more)
        process = start_pilot(workdir, pilot_job)
        began = time.monotonic()
        start_time = _now()
        command = self._update(http, panda_id, "running", node, queue, start_time=start_time, core_count=1)
        result: dict[str, Any] | None = None
        while command != "tobekilled":
            try:
                process.wait(timeout=self.heartbeat)
                break
            except subprocess.TimeoutExpired:
                pass
            if self.stopping.is_set():
                result = {"job_status": "failed", "pilot_error_code": SIGTERM_CODE,
                          "pilot_error_diag": "SIGTERM: the worker node was shut down, the pilot killed"}
                break
            if time.monotonic() - began > pilot_job["max_wall_seconds"] + WALL_GRACE_SECONDS:
                result = {"job_status": "failed", "pilot_error_code": REACHED_MAX_TIME,
                          "pilot_error_diag": f"Reached maximum wall time ({pilot_job['max_wall_seconds']} s): pilot killed"}
                break
            command = self._update(http, panda_id, "running", node, queue)
        terminate(process)
        if command == "tobekilled":
            shutil.rmtree(workdir, ignore_errors=True)
            return
        if result is None:
            result = read_result(workdir)
            if "job_dispatcher_error_code" in result:  # no result.json: the pilot process itself died
                result = {"job_status": "failed", "pilot_error_code": GENERAL_ERROR,
                          "pilot_error_diag": f"the pilot died without a result (exit code {process.returncode})"}
        timing = {**result.get("pilot_timing", {}), "getjob": round(getjob, 3)}
        if result["job_status"] != "finished":
            keep_logs(workdir, self.grid.state_dir / "logs" / f"{panda_id}.log")
        shutil.rmtree(workdir, ignore_errors=True)
        self._update(
            http, panda_id, result["job_status"], node, queue, tries=3,
            trans_exit_code=result.get("trans_exit_code"), pilot_error_code=result.get("pilot_error_code", 0),
            pilot_error_diag=result.get("pilot_error_diag") or None, exe_error_code=result.get("exe_error_code", 0),
            exe_error_diag=result.get("exe_error_diag") or None, n_events=result.get("n_events", 0),
            cpu_consumption_time=result.get("cpu_consumption_time", 0.0), max_rss=result.get("max_rss_kb", 0),
            core_count=1, pilot_timing=format_timing(timing), start_time=start_time, end_time=_now(),
        )
