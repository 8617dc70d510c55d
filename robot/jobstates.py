"""PanDA's job and queue vocabulary, shared by every backend and the storage layer."""
from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    """PanDA job states (`jobStatus`)."""

    DEFINED = "defined"  # the server has not set the job up yet
    ASSIGNED = "assigned"  # its input is being transferred to the site
    PENDING = "pending"  # held by the server
    WAITING = "waiting"  # waiting for its input data
    ACTIVATED = "activated"
    SENT = "sent"
    STARTING = "starting"
    RUNNING = "running"
    HOLDING = "holding"
    FINISHED = "finished"
    FAILED = "failed"
    CANCELLED = "cancelled"


# Before `activated` the wait is the server's or the data's; from `activated` on, the site's.
PRE_DISPATCH_STATES = frozenset({JobStatus.DEFINED, JobStatus.ASSIGNED, JobStatus.PENDING, JobStatus.WAITING})
QUEUED_STATES = PRE_DISPATCH_STATES | {JobStatus.ACTIVATED}
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
