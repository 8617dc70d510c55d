"""The embedded grid's queue statuses, read and set through its state file.

The grid reads and sets them through this class, and so does the robot when the grid runs in
another process (`healthrobot grid serve`) and the robot reaches its jobs through PanDA: PanDA cannot
set a queue's status, so exclusions go to the grid's state, as they would go to CRIC in production.
"""
from __future__ import annotations

from typing import Iterable

from robot.backends.embedded.state import GridState
from robot.clock import Clock
from robot.jobstates import QueueStatus


class GridQueueStatus:
    def __init__(self, state: GridState, queues: Iterable[str], clock: Clock):
        self.state = state
        self.queues = tuple(queues)
        self.clock = clock

    def queue_status(self) -> dict[str, QueueStatus]:
        stored = self.state.queue_statuses()
        return {name: stored.get(name, QueueStatus.ONLINE) for name in self.queues}

    def set_queue_status(self, queue: str, status: QueueStatus, reason: str, actor: str) -> None:
        if queue not in self.queues:
            raise ValueError(f"unknown queue {queue!r}")
        self.state.set_queue_status(queue, status, reason, actor, self.clock.now())
