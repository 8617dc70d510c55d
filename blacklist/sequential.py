"""Our default policy: a sequential test on the failures a site can be blamed for.

Only site-class failures count against a queue; completed jobs count for it; user, central and
unknown failures count neither way (a broken user release or a central outage is not the site's
fault). The evidence is weighed with Page's CUSUM of log-likelihood ratios between "healthy"
(site-failure probability p_healthy) and "broken" (p_broken), in time order over the window:
  S <- max(0, S + log(p_b/p_h))            for a site-class failure
  S <- max(0, S + log((1-p_b)/(1-p_h)))    for a completed job
A site failure with the same error code as the one before it in the same excursion weighs more,
log(p_b / (p_h * code_share)): random failures of healthy sites scatter over many codes, a broken
service repeats one. A queue where nothing has started for `stall_after` while test jobs wait
counts each such job as a site failure (a stuck queue shows no errors, only silence).
The queue is excluded when S reaches log((1-beta)/alpha) (Wald's bound); one failure's worth of S
makes it PENDING: probe jobs go out at once so that the verdict comes in minutes, not hours.
A suspicion that finds no confirmation (S back to 0, or max_pending elapsed) is cleared.
After an exclusion the queue comes back after `include_successes` completed jobs in a row and no
site failure since the last of them; each other exclusion within `flap_window` asks for as many
again (hysteresis against flapping).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from blacklist.model import END_TIME, Action, Decision, QueueView, Result, evidence_of
from blacklist.settings import SequentialSettings
from robot.durations import format_duration

NAME = "default"


@dataclass(frozen=True)
class Weights:
    failure: float
    repeat: float  # a failure repeating the previous failure's error code
    success: float
    exclude_at: float

    @classmethod
    def of(cls, s: SequentialSettings) -> "Weights":
        return cls(failure=math.log(s.p_broken / s.p_healthy),
                   repeat=math.log(s.p_broken / (s.p_healthy * s.code_share)),
                   success=math.log((1 - s.p_broken) / (1 - s.p_healthy)),
                   exclude_at=math.log((1 - s.beta) / s.alpha))


def counted(results: tuple[Result, ...] | list[Result]) -> list[Result]:
    """The results that speak about the site: completed jobs and site-class failures."""
    return [r for r in results if not r.failed or r.error_class == "site"]


def cusum(results: list[Result], weights: Weights) -> tuple[float, list[Result]]:
    """The CUSUM statistic over results in time order, and the site failures since it last was 0."""
    score, since_zero = 0.0, []
    for result in sorted(results, key=END_TIME):
        if not result.failed:
            step = weights.success
        elif since_zero and since_zero[-1].error_code == result.error_code:
            step = weights.repeat
        else:
            step = weights.failure
        score = max(0.0, score + step)
        if score == 0.0:
            since_zero = []
        elif result.failed:
            since_zero.append(result)
    return score, since_zero


def stalled(view: QueueView, settings: SequentialSettings, now: datetime) -> list[Result]:
    """Jobs waiting longer than `stall_after` at a queue where nothing started meanwhile, as failures."""
    if view.last_start is not None and now - view.last_start < settings.stall_after:
        return []
    return [Result(0, "", now, True, "site", "STALLED", -1)
            for since in view.waiting_since if now - since >= settings.stall_after]


@dataclass(frozen=True)
class Cadence:
    """How the loop tests the queue: extra jobs in flight per template, and a gap between jobs."""

    extra_jobs: int = 0
    gap: timedelta = timedelta(0)
    reason: str = ""


def decide(view: QueueView, settings: SequentialSettings, now: datetime,
           recent_exclusions: int = 0) -> Decision:
    weights = Weights.of(settings)
    start = now - settings.window
    if view.last_robot_inclusion and view.last_robot_inclusion > start:
        start = view.last_robot_inclusion  # a re-included queue starts with a clean slate
    window = counted(tuple(r for r in view.results if r.end_time >= start)) + stalled(view, settings, now)
    if view.robot_state == "excluded":
        return _reinclusion(view, window, settings, recent_exclusions)
    score, failures = cusum(window, weights)
    evidence = {"cusum": round(score, 2), "exclude_at": round(weights.exclude_at, 2),
                "jobs": evidence_of(failures)}
    if score >= weights.exclude_at:
        codes = sorted({f"{r.error_name}" for r in failures})
        return Decision(view.name, Action.EXCLUDE,
                        f"{len(failures)} site-class failures ({', '.join(codes)}) outweigh the completed jobs: "
                        f"CUSUM {score:.1f} >= {weights.exclude_at:.1f}", evidence=evidence, policy=NAME)
    if view.robot_state == "pending":
        if score == 0.0:
            return Decision(view.name, Action.CLEAR, "probe jobs completed: the suspicion is cleared",
                            evidence=evidence, policy=NAME)
        if view.state_since and now - view.state_since >= settings.max_pending:
            return Decision(view.name, Action.CLEAR, f"no verdict within {format_duration(settings.max_pending)}: suspicion dropped",
                            evidence=evidence, policy=NAME)
        return Decision(view.name, Action.KEEP, f"in doubt (CUSUM {score:.1f}): waiting for probe jobs",
                        evidence=evidence, policy=NAME)
    if failures:  # a site failure not yet outweighed by completed jobs
        return Decision(view.name, Action.PEND, f"site-class failure {failures[-1].error_name} "
                        f"(job {failures[-1].panda_id}): sending probe jobs", evidence=evidence, policy=NAME)
    return Decision(view.name, Action.KEEP, "healthy" if score == 0 else f"CUSUM {score:.1f}", policy=NAME)


def _reinclusion(view: QueueView, window: list[Result], settings: SequentialSettings,
                 recent_exclusions: int) -> Decision:
    since = view.state_since
    fresh = sorted((r for r in window if since is None or r.end_time >= since), key=END_TIME,
                   reverse=True)
    need = settings.include_successes * (1 + recent_exclusions)
    streak = []
    for result in fresh:
        if result.failed:
            break
        streak.append(result)
    if len(streak) >= need:
        return Decision(view.name, Action.INCLUDE, f"{len(streak)} test jobs completed in a row since the exclusion",
                        evidence={"jobs": evidence_of(streak[:need])}, policy=NAME)
    if fresh and fresh[0].failed:
        return Decision(view.name, Action.KEEP, f"still failing: {fresh[0].error_name} (job {fresh[0].panda_id})",
                        evidence={"jobs": evidence_of(fresh[:1])}, policy=NAME)
    return Decision(view.name, Action.NEEDS_JOBS, f"needs jobs: {len(streak)} of {need} good jobs in a row",
                    policy=NAME)


def cadence(view: QueueView, settings: SequentialSettings, now: datetime) -> Cadence:
    """More tests when in doubt, fewer on long-stable queues and on queues known to be broken."""
    if view.robot_state == "pending":
        return Cadence(extra_jobs=settings.probes, reason="in doubt: probe jobs")
    if view.robot_state == "excluded":
        newest = sorted(view.results, key=END_TIME, reverse=True)[:2]
        if len(newest) == 2 and not any(r.failed for r in newest):
            return Cadence(extra_jobs=1, reason="recovering: confirm quickly")
        return Cadence(gap=settings.stable_gap, reason="excluded and failing: test slowly")
    site_failures = [r for r in view.results if r.failed and r.error_class == "site"]
    last_failure = max((r.end_time for r in site_failures), default=None)
    settled = view.state_since is None or now - view.state_since >= settings.stable_after
    if settled and (last_failure is None or now - last_failure >= settings.stable_after):
        return Cadence(gap=settings.stable_gap, reason=f"stable for {settings.stable_after}")
    return Cadence()
