"""Our default policy: a sequential test on the failures that point at the site, judged against the grid.

Which failures count (see blacklist/differential.py): a failure whose code failed at
`spread_sites` (or `spread_fraction`) or more other sites within `spread_window` of it points at
a shared cause (a central service, a broken release, a user wave) and counts neither way,
whatever its class (a data management outage reports the site-class 1099 everywhere); any
other failure is evidence against this site, weighed by its class as below, so that a site fault
reporting unknown- or user-class codes, or only crashes (1203), is seen; a central-class one
only adds to a case that site-class failures opened. Without other sites to
compare with (fewer than `spread_sites` other sites completed the template in the window) the
error table decides alone: only site-class failures count.

The evidence is weighed with Page's CUSUM of log-likelihood ratios, "broken" (a failure
probability p_broken) against "healthy", in time order over the window, for several
alternatives at once; the queue is excluded when any of them reaches log((1-beta)/alpha)
(Wald's bound):
- any counted site-class failure, against a healthy queue's rate p_healthy:
    S <- max(0, S + log(p_b / p_h)) per counted site-class failure; a user-class failure adds as
    much to a case already open (a site fault that reports user codes part of the time) but never
    opens one: user errors at a few queues only look the same as a site's, and a user wave on a few
    queues is not the sites' fault; a central-class failure likewise (a central outage shows at the
    first queues tested, or probed, before the other sites have run a job since);
- for each code c, "this queue fails with c", against c's rate at the other sites, never below
  p_healthy * code_share (the share of a healthy queue's failures one code takes) for a
  site-class code, nor below p_healthy for an unknown-class one (user- and central-class codes
  have no alternative of their own):
    S_c <- max(0, S_c + log(p_b / max(rate_c, floor))) per failure with c;
  a broken service repeats one code while random failures scatter, a code that is common
  everywhere weighs little, and an unknown-class code (a crash, 1203) needs one failure more
  than a site-class one to make the case against the site;
- for all of them a completed job adds log((1-p_b)/(1-p_h)), and an hour of the queue's users' jobs
  that do not fail with the code (blacklist/userjobs.py) adds its own share of that, at most one
  failure's weight.
A queue where nothing has started for `stall_after` while a test job waited that long is stalled (a
stuck queue shows no errors, only silence): every test job waiting there then counts as a site
failure in proportion to how long it has waited while nothing started, `stall_after` of waiting
weighing one failure. So the probe jobs a stall sends add to the case from their first minutes
(at a queue that starts jobs they start within minutes, and that ends the stall), instead of each
having to wait `stall_after` of its own before it counts.
One counted failure makes the queue PENDING: probe jobs go out at once so that the verdict comes
in minutes. A suspicion that finds no confirmation (every S back to 0, or max_pending elapsed)
is cleared.
Re-inclusion waits until the fault's signature is gone, not for a lucky streak: enough completed
jobs in a row since the last failure pointing at the site that a queue still failing as often as it
did while the fault was seen (and at least as often as `weak_fault`) would show such a streak with
probability below `relapse_risk`; at least `include_successes`, as many again for each other
exclusion within `flap_window` (hysteresis against flapping). While excluded, a failure with one of
the site's codes behind the exclusion (its signature, `QueueView.excluded_for`) points at the site
whether or not it counts now (other sites failing with it as well do not make it gone here), and
only jobs that started after the last such failure make the streak (a job that passed the broken
step before it says nothing about the fault's end).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from blacklist.differential import Code, Spread, code_of
from blacklist.model import END_TIME, Action, Decision, QueueView, Result, evidence_of
from blacklist.settings import SequentialSettings
from robot.durations import format_duration

NAME = "default"
ANY = "any"  # the alternative "broken, whatever the code"
# Classes whose failures add to a case that site-class failures opened but never open one: a user
# wave on a few queues looks like a site's fault, and a central outage shows at one queue before the
# others have been tested again (a sparse cadence, or probes at the first queue that saw it).
SECONDARY = ("user", "central")
HEALTHY = "healthy"  # the reason of a KEEP with every CUSUM at 0
USERS = "users' jobs"  # the template of an hour of users' own jobs counted as evidence (blacklist/userjobs.py)


@dataclass(frozen=True)
class Weights:
    failure: float  # a counted failure, in the "any code" alternative
    repeat: float  # a counted failure of a code rare at the other sites, in that code's alternative
    success: float
    exclude_at: float

    @classmethod
    def of(cls, s: SequentialSettings) -> "Weights":
        # Settings are frozen; the loop asks once per queue and step, so they are looked up by
        # identity (hashing a settings model costs more than the weights; it is held, so its id is its own).
        kept = _WEIGHTS.get(id(s))
        if kept is None or kept[0] is not s:
            kept = _WEIGHTS[id(s)] = (s, cls(failure=math.log(s.p_broken / s.p_healthy),
                                             repeat=math.log(s.p_broken / (s.p_healthy * s.code_share)),
                                             success=math.log((1 - s.p_broken) / (1 - s.p_healthy)),
                                             exclude_at=math.log((1 - s.beta) / s.alpha)))
        return kept[1]

    def of_code(self, settings: SequentialSettings, rate: float, site_class: bool = True) -> float:
        """The weight of a failure with a code that fails at `rate` at the other sites: never more
        than a site-class code rare everywhere (`repeat`), nor than one failure in the "any code"
        alternative for a code the error table puts on someone else."""
        most = self.repeat if site_class else self.failure
        return min(most, math.log(settings.p_broken / rate)) if rate > 0 else most


_WEIGHTS: dict[int, tuple[SequentialSettings, Weights]] = {}


@dataclass(frozen=True)
class Counted:
    """A result that speaks about the site, with the weight its failure carries for its own code."""

    result: Result
    code_weight: float = 0.0  # in its code's alternative (0: none, a user-class failure)
    klass: str = "site"  # the error table's class: site, user, central, or other (unknown, none)
    any_weight: float | None = None  # in the "any code" alternative (None: one test job's failure)
    # Evidence against "broken" that is not one completed test job (an hour of users' jobs that
    # completed: blacklist/userjobs.py): the step, at most 0, per alternative; `against_codes` for
    # the codes it does not name, of those users' jobs could report (PanDA's codes, not a stall).
    against: dict[Code, float] | None = None
    against_codes: float = 0.0

    def step_against(self, key: Code) -> float:
        if self.against is None:
            return 0.0
        if key in self.against:
            return self.against[key]
        return self.against_codes if isinstance(key, int) and key >= 0 else 0.0


def counted(view: QueueView, results: list[Result], settings: SequentialSettings,
            grid: Spread | None) -> list[Counted]:
    """Completed jobs, and the failures that point at this site (see the module's docstring)."""
    weights = Weights.of(settings)
    out = []
    for result in results:
        if not result.failed:
            out.append(Counted(result))
        elif grid is None or not grid.comparable(result, view.site):
            if result.error_class == "site":
                out.append(Counted(result, weights.repeat))
        elif not grid.widespread(result, view.site):
            klass = result.error_class if result.error_class in ("site", "user", "central") else "other"
            rate = grid.baseline(code_of(result), view.site)
            code_weight = 0.0 if klass in SECONDARY else weights.of_code(settings, rate, klass == "site")
            out.append(Counted(result, code_weight, klass))
    return out


def settles(results: tuple[Result, ...], weights: Weights) -> bool:
    """Whether every CUSUM of `cusum` over the counted test jobs among `results`, or among any of the
    newest of them (a later window), ends at 0 whatever the grid says (an answer without comparing).

    Each statistic is max(0, S + step), which only rises with each step, and over the newest results
    alone it is at most what it is over all of them. So the CUSUM of the largest step any failure can
    take in any alternative (see `counted`; a user- or central-class one only while a case is open)
    bounds them all: when it ends at 0, so does each."""
    bound, failure = 0.0, weights.failure
    largest = max(weights.repeat, failure)
    for result in sorted(results, key=END_TIME):
        if not result.failed:
            bound = max(0.0, bound + weights.success)
        elif result.error_class == "site":
            bound += largest
        elif result.error_class not in SECONDARY:
            bound += failure  # its own code's alternative alone, never more than one failure (`of_code`)
        elif bound > 0:
            bound += failure  # to a case already open, in "any code"
    return bound == 0.0


def cusum(items: list[Counted], weights: Weights) -> tuple[float, list[Result]]:
    """The highest CUSUM statistic over the alternatives, in time order, and the failures behind it
    (those since that statistic last was 0)."""
    scores: dict[Code, float] = {}
    behind: dict[Code, list[Result]] = {}
    for item in sorted(items, key=lambda c: c.result.end_time):
        result = item.result
        steps: dict[Code, float] = {key: weights.success if item.against is None else item.step_against(key)
                                    for key in scores}
        if result.failed:
            steps = {code_of(result): item.code_weight} if item.code_weight else {}
            if item.klass == "site" or (item.klass in SECONDARY and scores.get(ANY, 0.0) > 0):
                steps[ANY] = weights.failure if item.any_weight is None else item.any_weight
        for key, step in steps.items():
            scores[key] = max(0.0, scores.get(key, 0.0) + step)
            if scores[key] == 0.0:
                behind[key] = []
            elif result.failed:
                behind.setdefault(key, []).append(result)
    if not scores:
        return 0.0, []
    key = max(scores, key=lambda k: (scores[k], k == ANY))
    return scores[key], behind.get(key, [])


def stalled(view: QueueView, settings: SequentialSettings, now: datetime) -> list[Counted]:
    """The jobs waiting at a stalled queue (nothing started for `stall_after` while one of them waited
    that long), each as a site failure weighed by its wait while nothing started, in `stall_after`s."""
    if view.last_start is not None and now - view.last_start < settings.stall_after:
        return []
    waits = [now - (since if view.last_start is None else max(since, view.last_start)) for since in view.waiting_since]
    if not any(wait >= settings.stall_after for wait in waits):
        return []
    weights = Weights.of(settings)
    stall = Result(0, "", now, True, "site", "STALLED", -1)
    return [Counted(stall, weights.repeat * share, any_weight=weights.failure * share)
            for wait in waits if (share := wait / settings.stall_after) > 0]


@dataclass(frozen=True)
class Cadence:
    """How the loop tests the queue: extra jobs in flight per template, and a gap between jobs."""

    extra_jobs: int = 0
    gap: timedelta = timedelta(0)
    reason: str = ""

    @functools.cached_property
    def applied(self) -> tuple[int, int]:
        """As the loop stores it: extra jobs, and the gap in whole seconds."""
        return self.extra_jobs, int(self.gap.total_seconds())


def decide(view: QueueView, settings: SequentialSettings, now: datetime, recent_exclusions: int = 0,
           grid: Spread | None = None, users: list[Counted] | None = None) -> Decision:
    """`users`: hours of users' own jobs pointing at the site (blacklist/userjobs.py), weighed with the
    test jobs; they never exclude alone: a test job's failure must be behind an exclusion."""
    if (view.robot_state == "online" and not users and not view.waiting_since
            and not any(r.failed for r in view.results)):
        return Decision(view.name, Action.KEEP, HEALTHY, policy=NAME)  # no failure, no wait: every CUSUM is 0
    weights = Weights.of(settings)
    start = now - settings.window
    if view.last_robot_inclusion and view.last_robot_inclusion > start:
        start = view.last_robot_inclusion  # a re-included queue starts with a clean slate
    recent = [r for r in view.results if r.end_time >= start]
    stalls = stalled(view, settings, now)
    users = [u for u in users or () if u.result.end_time >= start]
    if stalls:  # users' jobs that still end started before the queue stalled: they do not speak against it
        users = [u for u in users if u.against is None]
    if (view.robot_state == "online" and not stalls and not any(u.result.failed for u in users)
            and not any(r.failed for r in recent)):
        return Decision(view.name, Action.KEEP, HEALTHY, policy=NAME)  # nothing to weigh: every CUSUM is 0
    if view.robot_state == "online" and not stalls and not users and settles(view.results, weights):
        return Decision(view.name, Action.KEEP, HEALTHY, policy=NAME)  # every CUSUM ends at 0, whatever the grid says
    window = counted(view, recent, settings, grid) + stalls
    if view.robot_state == "excluded":
        return _reinclusion(view, relapses(view, recent, window), settings, recent_exclusions)
    score, failures = cusum(window + users, weights)
    tested = [r for r in failures if r.template != USERS]
    evidence = {"cusum": round(score, 2), "exclude_at": round(weights.exclude_at, 2),
                "jobs": evidence_of(tested)}
    if score >= weights.exclude_at and tested:
        codes = sorted({_named(r, stalls, settings) for r in failures})
        hours = len(failures) - len(tested)
        also = f" and {hours} hour(s) of users' jobs" if hours else ""
        return Decision(view.name, Action.EXCLUDE,
                        f"{len(tested)} failures{also} pointing at the site ({', '.join(codes)}) outweigh the "
                        f"completed jobs: CUSUM {score:.1f} >= {weights.exclude_at:.1f}", evidence=evidence,
                        policy=NAME)
    if view.robot_state == "pending":
        if score == 0.0:
            return Decision(view.name, Action.CLEAR, "probe jobs completed: the suspicion is cleared",
                            evidence=evidence, policy=NAME)
        if view.state_since and now - view.state_since >= settings.max_pending:
            return Decision(view.name, Action.CLEAR, f"no verdict within {format_duration(settings.max_pending)}: suspicion dropped",
                            evidence=evidence, policy=NAME)
        return Decision(view.name, Action.KEEP, f"in doubt (CUSUM {score:.1f}): waiting for probe jobs",
                        evidence=evidence, policy=NAME)
    if failures:  # a failure pointing at the site, not yet outweighed by completed jobs
        last = failures[-1]
        if last.template == USERS:
            what = f"{last.error_name} in users' jobs"
        elif any(last is c.result for c in stalls):
            what = f"{_named(last, stalls, settings)},"
        else:
            what = f"{last.error_name} (job {last.panda_id})"
        return Decision(view.name, Action.PEND, f"{what} points at the site: sending probe jobs", evidence=evidence,
                        policy=NAME)
    return Decision(view.name, Action.KEEP, HEALTHY if score == 0 else f"CUSUM {score:.1f}", policy=NAME)


def _named(result: Result, stalls: list[Counted], settings: SequentialSettings) -> str:
    """A counted failure's error, in words; a stall with its jobs and how long they waited."""
    if not any(result is c.result for c in stalls):
        return f"{result.error_name}"
    waited = settings.stall_after * sum(c.code_weight for c in stalls) / Weights.of(settings).repeat
    return (f"{result.error_name}: {len(stalls)} test job(s) waiting where nothing started, "
            f"{format_duration(timedelta(minutes=round(waited / timedelta(minutes=1))))} in all")


def streak_needed(window: list[Counted], settings: SequentialSettings, recent_exclusions: int,
                  signature: frozenset[Code] = frozenset()) -> int:
    """Completed jobs in a row after the last failure pointing at the site before the fault counts as gone.

    A queue still failing at a share f of its jobs shows n good jobs in a row with probability
    (1-f)^n; n keeps that below `relapse_risk` for the fault as it was seen (f: the share of its
    failures from the first to the last one in the window, shrunk towards p_broken by one
    pseudo-result; its failures are those with a code of its `signature` where it has one in the
    window, so that a noise failure hours later does not pass for a weaker fault) and for any
    fault at least as strong as `weak_fault` (a short run of failures must not pass for a total
    outage). At least `include_successes`, as many again for each other exclusion within
    `flap_window`.
    """
    ordered = sorted(window, key=lambda c: c.result.end_time)
    failed = [i for i, c in enumerate(ordered) if c.result.failed]
    named = [i for i in failed if code_of(ordered[i].result) in signature]
    failed = named or failed
    floor = settings.include_successes * (1 + recent_exclusions)
    if not failed:
        return floor
    seen = (len(failed) + settings.p_broken) / (failed[-1] - failed[0] + 2)
    share = min(seen, settings.weak_fault)
    return max(floor, math.ceil(math.log(settings.relapse_risk) / math.log(1 - share)))


def relapses(view: QueueView, recent: list[Result], window: list[Counted]) -> list[Counted]:
    """What an excluded queue's re-inclusion weighs: its completed jobs, the counted failures of
    site and unknown class (a user- or central-class one alone never makes a case), and every
    failure with a code of the exclusion's signature, counted now or not (other sites failing with
    it too does not make it gone here)."""
    signature = view.excluded_for
    out = [c for c in window if not c.result.failed or c.klass not in SECONDARY or code_of(c.result) in signature]
    if signature:
        kept = {id(c.result) for c in window}
        out += [Counted(r) for r in recent if r.failed and id(r) not in kept and code_of(r) in signature]
    return out


def _reinclusion(view: QueueView, window: list[Counted], settings: SequentialSettings,
                 recent_exclusions: int) -> Decision:
    need = streak_needed(window, settings, recent_exclusions, view.excluded_for)
    newest_first = sorted((c.result for c in window), key=END_TIME, reverse=True)
    last_failure = next((r for r in newest_first if r.failed), None)
    streak = []
    for result in newest_first:
        if result.failed:
            break
        if last_failure is None or (result.start_time or result.end_time) >= last_failure.end_time:
            streak.append(result)
    if len(streak) >= need:
        return Decision(view.name, Action.INCLUDE,
                        f"{len(streak)} test jobs completed in a row since the last failure pointing at the site "
                        f"({need} needed)", evidence={"jobs": evidence_of(streak[:need])}, policy=NAME)
    last = newest_first[0] if newest_first else None
    if last and last.failed and (view.state_since is None or last.end_time >= view.state_since):
        return Decision(view.name, Action.KEEP, f"still failing: {last.error_name} (job {last.panda_id})",
                        evidence={"jobs": evidence_of([last])}, policy=NAME)
    return Decision(view.name, Action.NEEDS_JOBS, f"needs jobs: {len(streak)} of {need} good jobs in a row",
                    policy=NAME)


def cadence(view: QueueView, settings: SequentialSettings, now: datetime) -> Cadence:
    """Probes when in doubt; slow tests on long-stable queues and on queues known to be broken.

    The probes of a doubt go out once: `probes` jobs per template, and more only while the newest
    result fails; once they are back and good the doubt is waited out at the stable pace (a few
    more completed jobs clear a single failure), not with every template's probes in flight again.
    A queue is stable `stable_after` after the robot last put it back online; a doubt it cleared
    does not unsettle it (the probes settled it)."""
    if view.robot_state == "pending":
        since = sorted((r for r in view.results if view.state_since is None or r.end_time >= view.state_since),
                       key=END_TIME, reverse=True)
        templates = len({r.template for r in view.results}) or 1
        if len(since) < settings.probes * templates or (since and since[0].failed):
            return Cadence(extra_jobs=settings.probes, reason="in doubt: probe jobs")
        return Cadence(gap=settings.stable_gap, reason="in doubt: the probes completed, waiting out the doubt")
    if view.robot_state == "excluded":
        newest = sorted(view.results, key=END_TIME, reverse=True)[:2]
        if len(newest) == 2 and not any(r.failed for r in newest):
            return Cadence(extra_jobs=settings.probes, reason="recovering: confirm quickly")
        return Cadence(gap=settings.broken_gap, reason="excluded and failing: test slowly")
    if view.last_robot_inclusion is None or now - view.last_robot_inclusion >= settings.stable_after:
        return _stable(settings)
    return Cadence()


def _stable(settings: SequentialSettings) -> Cadence:
    """A stable queue's cadence, made once per settings (frozen; most queues are stable at every step,
    so they are looked up by identity, as in Weights.of)."""
    kept = _STABLE.get(id(settings))
    if kept is None or kept[0] is not settings:
        kept = _STABLE[id(settings)] = (settings, Cadence(gap=settings.stable_gap, reason=f"stable for {settings.stable_after}"))
    return kept[1]


_STABLE: dict[int, tuple[SequentialSettings, Cadence]] = {}
