"""PanDA's job and queue vocabulary, shared by every backend and the storage layer."""
from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    """PanDA job states (`jobStatus`)."""

    DEFINED = "defined"
    ACTIVATED = "activated"
    SENT = "sent"
    STARTING = "starting"
    RUNNING = "running"
    HOLDING = "holding"
    FINISHED = "finished"
    FAILED = "failed"
    CANCELLED = "cancelled"


QUEUED_STATES = frozenset({JobStatus.DEFINED, JobStatus.ACTIVATED})
RUNNING_STATES = frozenset({JobStatus.SENT, JobStatus.STARTING, JobStatus.RUNNING, JobStatus.HOLDING})
FINAL_STATES = frozenset({JobStatus.FINISHED, JobStatus.FAILED, JobStatus.CANCELLED})


class QueueStatus(StrEnum):
    """PanDA queue states as CRIC holds them."""

    ONLINE = "online"
    BROKEROFF = "brokeroff"
    TEST = "test"
    OFFLINE = "offline"


class Outcome(StrEnum):
    """What the robot concludes from a job: the unit the metrics count."""

    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"  # killed on purpose: not a verdict on the queue
    UNKNOWN = "unknown"  # the backend could not tell us: never counted as a failure
