"""A scripted grid for the loop's tests: a Backend, TopologySource and Catalogue whose jobs only
move when a test moves them, so every bookkeeping rule can be checked exactly."""
from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

from robot.backends.base import BackendUnavailable, InputFile, JobReport, JobRequest, UserJobHour
from robot.catalogue import DatasetInfo
from robot.classify import load_table
from robot.clock import ManualClock
from robot.config import RobotConfig
from robot.jobstates import JobStatus, QueueStatus
from robot.loop import Robot
from robot.storage.database import make_engine, make_sessionmaker, upgrade
from robot.topology import EndpointInfo, QueueInfo, SiteInfo, Topology

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=timezone.utc)


class Crash(Exception):
    """Stands for the robot process dying in the middle of a step."""


class ScriptedGrid:
    name = "scripted"

    def __init__(self, clock: ManualClock, queues: dict[str, tuple[str, str]], datasets: dict[str, list[str]] | None = None):
        """queues: name -> (site, cloud); datasets: endpoint -> dataset names (default: one per endpoint)."""
        self.clock = clock
        self.queues = dict(queues)
        self.datasets = datasets
        self.jobs: dict[int, JobReport] = {}
        self.requests: dict[int, JobRequest] = {}
        self.statuses: dict[str, QueueStatus] = {}
        self.calls: Counter[str] = Counter()
        self.status_batches: list[int] = []
        self.unreachable = False
        self.crash_on_submit = False  # the robot dies before the grid records the jobs
        self.crash_after_submit = False  # the grid records the jobs, the robot dies before it hears back
        self.find_unreachable = False  # name look-ups fail (the rest answers)
        self.killed: list[int] = []
        self.initial_state = JobStatus.ACTIVATED  # where a submitted job waits (DEFINED: the server's wait)
        self.before_kill: Any = None  # called at each kill, before it acts (a job may end meanwhile)
        self.kill_unreachable = False  # kills fail (the rest answers)
        self._ids = itertools.count(1000)
        self.user_hours: list[UserJobHour] = []  # users' own jobs the grid counted (as PanDA would)

    # topology and catalogue
    def topology(self) -> Topology:
        sites = {site: cloud for site, cloud in self.queues.values()}
        return Topology(
            sites=tuple(SiteInfo(s, c) for s, c in sites.items()),
            endpoints=tuple(EndpointInfo(f"{s}_DATADISK", s) for s in sites),
            queues=tuple(QueueInfo(q, s, c, (f"{s}_DATADISK",)) for q, (s, c) in self.queues.items()),
        )

    def complete_datasets(self, endpoint: str, pattern: str) -> list[DatasetInfo]:
        names = self.datasets.get(endpoint, []) if self.datasets is not None else ["mc23.test.DAOD_PHYS"]
        return [DatasetInfo("hc_test", n, tuple(InputFile(f"{n}.{i}.root", f"g{i}", "hc_test", n, 10**6, 10_000)
                                                for i in range(3))) for n in names]

    # backend
    def _check(self, call: str) -> None:
        self.calls[call] += 1
        if self.unreachable:
            raise BackendUnavailable(f"{call}: connection refused")

    def submit(self, jobs: Sequence[JobRequest]) -> list[int]:
        self._check("submit")
        if self.crash_on_submit:
            raise Crash("robot killed while submitting")
        ids = []
        for job in jobs:
            pid = next(self._ids)
            self.jobs[pid] = JobReport(panda_id=pid, job_status=self.initial_state, queue=job.queue,
                                       creation_time=self.clock.now())
            self.requests[pid] = job
            ids.append(pid)
        if self.crash_after_submit:
            raise Crash("robot killed after the grid recorded the jobs")
        return ids

    def find(self, job_names: Sequence[str]) -> dict[str, int | None]:
        self._check("find")
        if self.find_unreachable:
            raise BackendUnavailable("find: connection refused")
        by_name = {job.job_name: pid for pid, job in self.requests.items()}
        return {name: by_name.get(name) for name in job_names}

    def status(self, panda_ids: Sequence[int]) -> dict[int, JobReport | None]:
        self._check("status")
        self.status_batches.append(len(panda_ids))
        return {pid: self.jobs.get(pid) for pid in panda_ids}

    def kill(self, panda_ids: Sequence[int]) -> dict[int, bool]:
        """As PanDA answers: False for a job already final or unknown."""
        self._check("kill")
        if self.kill_unreachable:
            raise BackendUnavailable("kill: connection refused")
        if self.before_kill:
            self.before_kill()
        answers = {}
        for pid in panda_ids:
            job = self.jobs.get(pid)
            answers[pid] = job is not None and job.job_status not in (JobStatus.FINISHED, JobStatus.FAILED,
                                                                       JobStatus.CANCELLED)
            if answers[pid]:
                self.killed.append(pid)
                self.jobs[pid] = replace(job, job_status=JobStatus.CANCELLED, task_buffer_error_code=100)
        return answers

    def activate(self, pid: int) -> None:
        self.jobs[pid] = replace(self.jobs[pid], job_status=JobStatus.ACTIVATED)

    def queue_status(self) -> dict[str, QueueStatus]:
        self._check("queue_status")
        return {q: self.statuses.get(q, QueueStatus.ONLINE) for q in self.queues}

    def set_queue_status(self, queue: str, status: QueueStatus, reason: str, actor: str) -> None:
        self.statuses[queue] = status

    def user_job_stats(self, since: datetime, until: datetime) -> list[UserJobHour]:
        self._check("user_job_stats")
        return [h for h in self.user_hours if since <= h.hour < until]

    # moving jobs, as the test says
    def in_queue(self, queue: str, states: tuple[JobStatus, ...] = (JobStatus.DEFINED, JobStatus.ACTIVATED,
                                                                    JobStatus.RUNNING)) -> list[int]:
        return [pid for pid, job in self.jobs.items() if job.queue == queue and job.job_status in states]

    def start(self, pid: int) -> None:
        self.jobs[pid] = replace(self.jobs[pid], job_status=JobStatus.RUNNING, start_time=self.clock.now())

    def finish(self, pid: int, events: int = 10_000, wall: float = 100.0, **errors: Any) -> None:
        """End a job: finished, or failed when error codes are given (e.g. pilot_error_code=1099)."""
        job = self.jobs[pid]
        start = job.start_time or self.clock.now() - timedelta(seconds=wall)
        status = JobStatus.FAILED if any(errors.values()) else JobStatus.FINISHED
        self.jobs[pid] = replace(job, job_status=status, start_time=start, end_time=start + timedelta(seconds=wall),
                                 n_events=events if status is JobStatus.FINISHED else 0,
                                 trans_exit_code=0 if status is JobStatus.FINISHED else None,
                                 cpu_consumption_time=wall * 0.8,
                                 pilot_timing={"stagein": 5.0, "setup": 2.0, "payload": wall - 10, "stageout": 3.0},
                                 **errors)


def templates(*specs: dict[str, Any]) -> list[dict[str, Any]]:
    base = {"category": "functional", "payload": "zmumu", "input_dataset": "mc23.*", "events_per_job": 20000}
    return [{**base, **spec} for spec in specs]


# Set by the `database_url` fixture (tests/conftest.py) for the test it serves: a robot folder's database
# URL; None: SQLite in the folder.
database_for: Callable[[Path], str] | None = None


def make_robot(tmp_path: Path, grid: ScriptedGrid, template_specs: list[dict[str, Any]], **loop: Any) -> Robot:
    config = RobotConfig.model_validate({"data_dir": str(tmp_path), "templates": template_specs, "loop": loop,
                                         "database": {"url": database_for(tmp_path) if database_for else None}})
    engine = make_engine(config.database_url)
    upgrade(engine)
    return Robot(config, make_sessionmaker(engine), grid, grid, grid, load_table())
