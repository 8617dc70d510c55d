"""The policies behind one interface, chosen by name in the configuration."""
from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from typing import Iterable

from blacklist import hammercloud, sequential, userjobs
from blacklist.differential import Spread, widespread_at
from blacklist.model import Action, Decision, QueueView, Result
from blacklist.safety import Incident
from blacklist.sequential import Cadence
from blacklist.settings import BlacklistSettings


EVER = datetime.min.replace(tzinfo=timezone.utc)  # before any result


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

    def grid(self, views: Iterable[QueueView], kept: dict | None = None) -> Spread | None:
        """What every queue's results say about each failure code, for the differential evidence
        (HammerCloud counts every failure and needs none); `kept`: each queue's part kept from the
        last step (see Spread.of)."""
        if self.name == "hammercloud":
            return None
        s = self.settings.default
        return Spread.of(views, s.spread_window, s.spread_sites, s.spread_fraction, kept)

    def incidents(self, grid: Spread | None, now: datetime) -> list[Incident]:
        """One incident per failure code the sites share now (see Spread.shared): such failures
        count against no site, and operations hear of them."""
        if grid is None:
            return []
        return [Incident("shared_failure", f"error {code} at {len(queues)} queues of more than {grid.threshold} "
                         "sites at once: a shared cause (central service, release, user wave), not the sites",
                         tuple(queues), {"code": code}) for code, queues in grid.shared(now).items()]

    @functools.cached_property  # settings are frozen; asked of every queue at every step
    def hears_users(self) -> bool:
        """Whether users' own jobs are evidence (the default policy, with blacklist.user_jobs.enabled)."""
        return self.name == "default" and self.settings.user_jobs.enabled

    def users(self, views: Iterable[QueueView], tally: userjobs.Tally | None = None) -> userjobs.Baseline | None:
        """Every queue's users' jobs, for comparing one queue's with the others' (None: not heard);
        `tally`: the sums kept from the last step (see userjobs.Tally)."""
        if not self.hears_users:
            return None
        views = tuple(views)
        s = self.settings.default
        shared_at = widespread_at(len({view.site for view in views}), s.spread_sites, s.spread_fraction)
        return userjobs.Baseline.of(views, self.settings.user_jobs, shared_at, tally)

    def tally(self) -> userjobs.Tally:
        """Sums of users' jobs to keep from step to step, for `users`."""
        return userjobs.Tally(self.settings.user_jobs)

    def quiet(self, view: QueueView, kept: dict[str, tuple]) -> Decision | None:
        """The decision `decide` takes when the view alone makes it "nothing to do", whatever the time,
        the queue's recent exclusions, the grid and the other queues' users' jobs say (None: not so).
        Ours: the queue is online, no job of its waits, its test jobs' failures cannot add up to a case
        at this step or a later one (sequential.settles) and, when users' jobs are heard, no hour of
        them can point at its site (userjobs.inconclusive). HammerCloud's: the queue is not excluded
        and the newest job of no critical template failed (every rule needs one that did; a later
        window only drops the oldest). Most queues at most steps.
        `kept`: per queue, the results last weighed and the answer for them, and the users' hours last
        looked at and whether they were inconclusive, kept by the caller from step to step: results that are
        the same tuple are not weighed again (a pure function of them), and of hours that are those last
        looked at but the newest (see `_inconclusive`) only the newest is looked at."""
        if self._hammercloud:
            if view.robot_state == "excluded":
                return None
        elif view.robot_state != "online" or view.waiting_since:
            return None
        known = kept.get(view.name)
        if known is None or known[0] is not view.results:
            known = kept[view.name] = (view.results, self._quiet(view), *(known[2:] if known else ((), True)))
        if known[1] is None:
            return None
        if self.hears_users:
            hours = view.user_jobs
            if hours is not known[2]:
                known = kept[view.name] = (*known[:2], hours, self._inconclusive(hours, known[2], known[3]))
            if not known[3]:
                return None
        return known[1]

    def _inconclusive(self, hours: tuple, before: tuple, was: bool) -> bool:
        """userjobs.inconclusive of a view with these users' hours, knowing it (`was`) of one with the hours
        `before`: where all of `hours` but the newest are hours of `before` in its order, the last of them
        or the one before the last (the newest hour read again as it grew, or a new hour after them, the
        oldest gone), only the newest is looked at; every hour is a pure function of its own fields."""
        settings, exclude_at = self.settings.user_jobs, self._weights.exclude_at
        if was and hours:
            rest, end = len(hours) - 1, len(before)
            if (end - 1 - rest >= 0 and hours[:-1] == before[end - 1 - rest:end - 1]) or (
                    end - rest >= 0 and hours[:-1] == before[end - rest:]):
                return not userjobs.loud(hours[-1], settings, exclude_at)
        return not any(userjobs.loud(hour, settings, exclude_at) for hour in hours)

    def _quiet(self, view: QueueView) -> Decision | None:
        """The decision on the queue's results alone, if they make it (see `quiet`)."""
        results = view.results
        if self._hammercloud:
            if hammercloud.newest_failed(results, self._critical, EVER):
                return None
            return Decision(view.name, Action.KEEP, hammercloud.QUIET, policy=hammercloud.NAME)
        if any(r.failed for r in results) and not sequential.settles(results, self._weights):
            return None
        return Decision(view.name, Action.KEEP, sequential.HEALTHY, policy=sequential.NAME)

    @functools.cached_property
    def _hammercloud(self) -> bool:
        return self.name == "hammercloud"

    @functools.cached_property
    def _critical(self) -> list[str]:
        return list(self.templates)

    @functools.cached_property
    def _weights(self) -> sequential.Weights:
        return sequential.Weights.of(self.settings.default)

    def decide(self, view: QueueView, now: datetime, recent_exclusions: int, grid: Spread | None = None,
               users: userjobs.Baseline | None = None) -> Decision:
        if self._hammercloud:
            return hammercloud.decide(view, self._critical, self.settings.hammercloud, now)
        if users is None:
            return sequential.decide(view, self.settings.default, now, recent_exclusions, grid)
        if view.robot_state == "online" and not users.worked_out and userjobs.inconclusive(
                view, self.settings.user_jobs, self._weights.exclude_at):
            # Its users' jobs can then only speak for the queue, and that (as the shared failures they
            # take out) lowers every CUSUM: if every CUSUM is at 0 without them, it is with them, and the
            # other queues' users' jobs need not be compared (at steps where no other queue has asked).
            plain = sequential.decide(view, self.settings.default, now, recent_exclusions, grid)
            if plain.action is Action.KEEP and plain.reason == sequential.HEALTHY:
                return plain
        return self._heard(view, now, recent_exclusions, grid, users)

    def _heard(self, view: QueueView, now: datetime, recent_exclusions: int, grid: Spread | None,
               users: userjobs.Baseline) -> Decision:
        """The default's decision with the queue's users' jobs weighed against the other queues'."""
        view = userjobs.without_shared(view, users)
        # an excluded queue's re-inclusion weighs no users' jobs (they stop reaching it; sequential.decide):
        # only the hours that point at its site are shown with the decision
        items, shown = userjobs.evidence(view, users, self.settings.default, now, against=view.robot_state != "excluded")
        decision = sequential.decide(view, self.settings.default, now, recent_exclusions, grid, items)
        if shown and decision.evidence:
            decision = replace(decision, evidence={**decision.evidence, "user_jobs": shown})
        return decision

    def cadence(self, view: QueueView, now: datetime) -> Cadence:
        """HammerCloud tests every queue the same way (one job per template in flight, or a fixed gap
        between them); ours adapts (see sequential.cadence)."""
        if self._hammercloud:
            return self._fixed
        cadence = sequential.cadence(view, self.settings.default, now)
        if (self._watching and view.robot_state == "online" and not cadence.extra_jobs
                and cadence.gap == self.settings.default.stable_gap and userjobs.watched(view, now, self.settings.user_jobs)):
            return self._watched
        return cadence

    def lasting(self, view: QueueView) -> bool:
        """Whether `cadence(view, now)` is the same at every `now` (the caller may keep it while the view
        is the same): HammerCloud's always; ours for a queue in doubt or excluded (an online one's
        depends on how long ago it was put back, and on its users' jobs of the last 60 minutes)."""
        return self._hammercloud or view.robot_state in ("pending", "excluded")

    # Made once per policy (settings are frozen): asked of every queue at every step.
    @functools.cached_property
    def _watching(self) -> bool:
        """Whether a stable queue can be watched by its users' jobs (and so tested less often)."""
        return self.hears_users and self.settings.default.stable_gap < self.settings.user_jobs.watched_gap

    @functools.cached_property
    def _fixed(self) -> Cadence:
        job_gap = self.settings.hammercloud.job_gap
        return Cadence(gap=job_gap, reason="HammerCloud's fixed gap" if job_gap else "")

    @functools.cached_property
    def _watched(self) -> Cadence:
        return Cadence(gap=self.settings.user_jobs.watched_gap, reason="stable, and its users' jobs are watched")
