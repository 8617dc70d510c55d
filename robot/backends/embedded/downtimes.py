"""The embedded grid's announced downtimes, as a downtime source (what GOCDB is for real sites)."""
from __future__ import annotations

from datetime import datetime

from robot.backends.embedded.state import GridState
from robot.downtimes import LOOK_AHEAD, LOOK_BACK, Downtime


class GridDowntimes:
    name = "embedded"

    def __init__(self, state: GridState):
        self.state = state

    def downtimes(self, now: datetime) -> list[Downtime]:
        return [Downtime(key=str(i), site=site, start=start, end=until, description=reason)
                for i, site, start, until, reason, _ in self.state.downtimes()
                if until > now - LOOK_BACK and start < now + LOOK_AHEAD]
