"""Time is always injected: components receive `now` or a `Clock`, never read the wall clock."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    """The real UTC wall clock; only the outermost layers (CLI, daemon) create one."""

    def now(self) -> datetime:
        return datetime.now(timezone.utc)


class ManualClock:
    """Virtual time for tests and the simulator."""

    def __init__(self, start: datetime):
        self._now = as_utc(start)

    def now(self) -> datetime:
        return self._now

    def advance(self, delta: timedelta | float) -> datetime:
        if not isinstance(delta, timedelta):
            delta = timedelta(seconds=delta)
        self._now += delta
        return self._now

    def set(self, when: datetime) -> None:
        self._now = as_utc(when)


def as_utc(when: datetime) -> datetime:
    """A timezone-aware UTC datetime; naive values (as SQLite returns them) are taken as UTC."""
    if when.tzinfo is None:
        return when.replace(tzinfo=timezone.utc)
    return when.astimezone(timezone.utc)
