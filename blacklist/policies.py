"""The policies behind one interface, chosen by name in the configuration."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from blacklist import hammercloud, sequential
from blacklist.model import Decision, QueueView
from blacklist.sequential import Cadence
from blacklist.settings import BlacklistSettings


@dataclass(frozen=True)
class Policy:
    settings: BlacklistSettings
    templates: tuple[str, ...]  # the critical templates

    @property
    def name(self) -> str:
        return self.settings.policy

    @property
    def window(self) -> timedelta:
        return self.settings.hammercloud.window if self.name == "hammercloud" else self.settings.default.window

    @property
    def flap_window(self) -> timedelta:
        return self.settings.default.flap_window

    def decide(self, view: QueueView, now: datetime, recent_exclusions: int) -> Decision:
        if self.name == "hammercloud":
            return hammercloud.decide(view, list(self.templates), self.settings.hammercloud, now)
        return sequential.decide(view, self.settings.default, now, recent_exclusions)

    def cadence(self, view: QueueView, now: datetime) -> Cadence:
        """HammerCloud tests every queue the same way; ours adapts (see sequential.cadence)."""
        if self.name == "hammercloud":
            return Cadence()
        return sequential.cadence(view, self.settings.default, now)
