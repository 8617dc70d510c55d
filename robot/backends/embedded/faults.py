"""Which faults hit a job: a pure function of the queue's active faults and a random stream."""
from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime

from robot.backends.embedded.config import FaultMode
from robot.backends.embedded.state import Fault

# Share of random user-like failures that are out-of-memory rather than a crash of the user code.
OOM_SHARE = 0.2


@dataclass(frozen=True)
class Injection:
    """What the pilot is told to make go wrong for one job (nothing, by default)."""

    mode: FaultMode | None = None
    slowdown: float = 1.0
    payload_fail: str | None = None  # the payload's --fail-mode

    def as_dict(self) -> dict[str, object]:
        return {"mode": self.mode.value if self.mode else None, "slowdown": self.slowdown, "payload_fail": self.payload_fail}


def active_faults(faults: list[Fault], queue: str, now: datetime) -> list[Fault]:
    return [f for f in faults if f.queue == queue and f.active(now)]


def is_stuck(active: list[Fault]) -> bool:
    """A stuck queue dispatches nothing while the fault lasts (jobs wait in `activated`)."""
    return any(f.mode is FaultMode.STUCK for f in active)


def is_held(active: list[Fault]) -> bool:
    """The server leaves new jobs `defined` while the fault lasts (as PanDA does with input not ready)."""
    return any(f.mode is FaultMode.NOT_ACTIVATED for f in active)


def plan_injection(active: list[Fault], user_failure_rate: float, rng: random.Random) -> Injection:
    mode, slowdown = None, 1.0
    for fault in active:
        if fault.mode in (FaultMode.STUCK, FaultMode.NOT_ACTIVATED) or rng.random() >= fault.probability:
            continue
        if fault.mode is FaultMode.SLOW:
            slowdown = max(slowdown, fault.slowdown)
        elif mode is None:
            mode = fault.mode
    if mode is FaultMode.CRASH:
        return Injection(slowdown=slowdown, payload_fail="crash")
    if mode is None and rng.random() < user_failure_rate:
        return Injection(slowdown=slowdown, payload_fail="oom" if rng.random() < OOM_SHARE else "user-error")
    return Injection(mode=mode, slowdown=slowdown)
