"""The one interface between the robot and a grid: submit, status in batches, kill, queue status.

Three implementations exist behind it (embedded grid, simulated grid, PanDA); nothing above this
module knows which one runs. Results come back in PanDA's vocabulary so that real and embedded
jobs are stored as the same kind of row.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol, Sequence

from robot.jobstates import JobStatus, QueueStatus


class BackendUnavailable(Exception):
    """The backend could not be reached or answered nonsense: nothing is known, nothing failed."""


@dataclass(frozen=True)
class InputFile:
    lfn: str
    guid: str
    scope: str
    dataset: str
    bytes: int
    events: int
    adler32: str = ""


@dataclass(frozen=True)
class JobRequest:
    """A test job as prun would build it for PanDA."""

    job_name: str  # unique, chosen by the robot before submission
    queue: str
    payload: str
    dataset: str
    files: tuple[InputFile, ...]
    max_events: int
    max_wall_seconds: int
    processing_type: str = "gangarobot"
    prod_source_label: str = "user"


@dataclass(frozen=True)
class JobReport:
    """A job's state and results as PanDA reports them (names follow PanDA's JobSpec)."""

    panda_id: int
    job_status: JobStatus
    queue: str = ""
    creation_time: datetime | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    trans_exit_code: int | None = None
    pilot_error_code: int = 0
    pilot_error_diag: str = ""
    exe_error_code: int = 0
    exe_error_diag: str = ""
    ddm_error_code: int = 0
    ddm_error_diag: str = ""
    task_buffer_error_code: int = 0
    task_buffer_error_diag: str = ""
    job_dispatcher_error_code: int = 0
    job_dispatcher_error_diag: str = ""
    sup_error_code: int = 0
    n_events: int = 0
    cpu_consumption_time: float = 0.0
    max_rss_kb: int = 0
    core_count: int = 1
    attempt_nr: int = 0
    # pilotTiming "getjob|stagein|payload|stageout|setup" in seconds
    pilot_timing: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class UserJobHour:
    """Users' own analysis jobs (prodSourceLabel `user`, not the robot's) that ended at one queue in
    one hour: aggregate counts only, no user, task or job ID."""

    queue: str
    hour: datetime  # the hour's start, UTC
    ended: int  # finished + failed
    failed: int
    # per error that failed jobs reported first, (source, code) -> jobs; sources as robot.classify
    # names them (pilot, ddm, taskbuffer, jobdispatcher, exe, sup; ("none", 0): no code at all)
    errors: dict[tuple[str, int], int] = field(default_factory=dict)


class Backend(Protocol):
    name: str

    def submit(self, jobs: Sequence[JobRequest]) -> list[int]:
        """Submit in bulk; returns one PanDA ID per job, in order. Raises BackendUnavailable."""

    def status(self, panda_ids: Sequence[int]) -> dict[int, JobReport | None]:
        """One call for many jobs; None for an ID the backend does not know."""

    def find(self, job_names: Sequence[str]) -> dict[str, int | None]:
        """The PanDA ID of the job submitted under each name; None only where the backend certainly
        holds no job of that name. Raises BackendUnavailable when it cannot tell (the robot then keeps
        the submission unconfirmed: its slot stays taken). A backend that may store a submission later
        than it answers (PanDA, whose monitor is asked) says how long with an attribute `lookup_grace`
        (a timedelta; none: no delay): a job not found is called lost only once its submission is that old."""

    def kill(self, panda_ids: Sequence[int]) -> dict[int, bool]:
        """Ask the backend to kill; True where it will end `cancelled`, False where the backend
        refused (a job already final, or one it does not know)."""

    def user_job_stats(self, since: datetime, until: datetime) -> list[UserJobHour]:
        """Users' own jobs that ended in [since, until), per queue and hour (an hour cut by `since` or
        `until` counts only its part inside). Raises BackendUnavailable."""

    def queue_status(self) -> dict[str, QueueStatus]:
        """Current status of every queue the backend serves."""

    def set_queue_status(self, queue: str, status: QueueStatus, reason: str, actor: str) -> None:
        """Change a queue's status (exclusion actuators call this)."""


class QueueStatusStore(Protocol):
    """Where queue statuses live and exclusions are applied (CRIC in production, not PanDA)."""

    def queue_status(self) -> dict[str, QueueStatus]: ...

    def set_queue_status(self, queue: str, status: QueueStatus, reason: str, actor: str) -> object: ...
