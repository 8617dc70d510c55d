"""Users' own jobs as evidence for the default policy, weighted for what they are.

Users' jobs fail for their own reasons (their code, their memory, their arguments) far more often
than for the site's, so only a part of what they say is heard, by the same differential principle
as the test jobs (blacklist/differential.py):
- per queue, hour and code c, k of the queue's n users' jobs that ended failed with c; it is
  compared with c's rate in the users' jobs of the other queues in the policy window (never below
  `floor`): a code failing everywhere is a shared cause, not this site's, and a code failing at
  one queue far above that rate points at the site, whatever its class (a site fault that shows
  only as an unknown-class crash, 1203, is seen);
- user-class codes say nothing here: one user's broken task, brokered to a few queues, fails
  there far above the others' rate exactly as a site would, and nothing in hourly counts tells
  the two apart (the test jobs, whose payload is known to work, can);
- a central-class code, as in the test jobs, adds to a case that other evidence opened but never
  opens one; an unknown-class code weighs in its own code's alternative only (with the test
  jobs' failures of the same code), a site-class one also in "broken, whatever the code";
- the same code failing in the same hour at as many other sites as make a test job's failure
  widespread (`differential.widespread_at`: `spread_sites`, or `spread_fraction` of the other
  sites if more; two failures above `floor` are enough there: a shared cause starts somewhere) is
  a shared cause too and counts for no site; the test jobs' failures of that code in that hour count neither way
  either (`without_shared`);
- the hour weighs `weight` times the log-likelihood ratio of "the queue fails with c at the rate
  seen" against "at the other queues' rate" (n times the Kullback-Leibler divergence), and never
  more than one test job's failure pointing at the site (`Weights.failure`); hours with fewer
  than `min_failures` such failures, a rate not above the baseline, or a log-likelihood ratio
  below Wald's bound (the hour is not conclusive on its own: the users' jobs' own noise at every
  queue and hour, e.g. users' jobs reaching their wall time, 1213, would keep opening cases and
  sending probes) weigh nothing.

A stable queue whose users' jobs keep ending (`watched_jobs` within the last 60 minutes, the hour
before this one counted for the part of it that is still within them) is tested less often
(`watched_gap` between a template's jobs instead of the stable gap): its users' jobs stand watch,
and the first hour of them that points at the site sends probe jobs at once. A queue whose users'
jobs stop ending (a stuck queue starts nothing) is no longer watched and is tested at the stable
pace again.

The hours enter the sequential test (blacklist/sequential.py) as failures pointing at the site
with that weight, at the hour's end (now, for the hour still going on): they open a case (probe
jobs go out at once) and add to it, but never exclude a queue alone: at least one test job's
failure pointing at the site must be behind an exclusion.

Users' jobs that complete speak for the queue the same way, at the same time: a fault that made
the test jobs fail with c at p_broken would make the queue's users' jobs fail with c too. Each
hour weighs, in c's alternative, `weight` times the log-likelihood ratio of its count of c under
p_broken against c's rate at the other queues (in "broken, whatever the code", of its site-class
failures against the other queues' site-class rate), when that is below 0, and never more than one
test job's failure the other way; a code shared in that hour weighs nothing, and a stalled queue
hears none of it (its users' jobs that still end started before it stalled). So two random
failures of one code at a flaky but healthy queue, whose users' jobs in this hour show nothing of
it, send probes but do not exclude it; a real fault's first minutes, when a fifth or more of the
users' jobs ending fail with its code (those started before it still complete), do not weigh
against it. Users' jobs stop reaching an excluded queue (brokerage is off), so they are no
evidence for re-inclusion.
"""
from __future__ import annotations

import functools
import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Iterable

from blacklist.model import QueueView, Result
from blacklist.sequential import ANY, USERS, Counted, Weights
from blacklist.settings import SequentialSettings, UserJobsSettings
from robot.userjobs import HOUR, StoredHour, hour_of


class Tally:
    """The sums behind a Baseline: per code heard (every class but user) its failures per queue, the
    users' jobs that ended per queue, and per (code, hour) the sites where it was in excess (with how
    many of their queues' hours). Kept from step to step by the engine: a queue's hours are counted
    again only where they changed (an hour read again, one that left the window), and all sums are
    integers, so it holds what counting every hour afresh (a restarted robot) gives."""

    def __init__(self, settings: UserJobsSettings):
        self.settings = settings
        self.failures: dict[int, Counter[str]] = defaultdict(Counter)  # code -> queue -> failures
        self.code_failed: Counter[int] = Counter()  # code -> failures at all queues
        self.ended: Counter[str] = Counter()  # queue -> users' jobs ended
        self.all_ended = 0
        self.site_entries: Counter[int] = Counter()  # code -> hours in which the error table called it the site's
        # queue -> failures with a code the table called the site's in any hour (site_entries not 0), and of all queues
        self.site_failed: Counter[str] = Counter()
        self.all_site_failed = 0
        self.excess: dict[tuple[int, datetime], Counter[str]] = defaultdict(Counter)  # (code, hour) -> site -> hours
        self._counted: dict[str, tuple[str, tuple[StoredHour, ...]]] = {}  # queue -> its site and the hours counted

    def _parts(self, hour: StoredHour) -> tuple[tuple[int, int, bool, bool], ...]:
        """Per code heard in the hour: its failures, whether the table calls it the site's, and whether
        it was in excess (two failures above the floor count here: a shared cause starts somewhere)."""
        _, heard, answers = _HEARD.get(id(hour.codes)) or _kept(hour.codes)
        if not heard:
            return ()
        key = (self._question, hour.ended)
        parts = answers.get(key)
        if parts is None:
            least, floor = self._question[1:]
            parts = answers[key] = tuple((code, jobs, klass == "site", jobs >= least and jobs / hour.ended > floor)
                                         for code, (klass, jobs) in heard.items())
        return parts

    @functools.cached_property
    def _question(self) -> tuple[str, int, float]:
        return "parts", min(2, self.settings.min_failures), self.settings.floor

    def update(self, views: Iterable[QueueView]) -> None:
        """Count the queues' hours as `views` hold them now: a queue's hours that are not the ones
        counted (the same objects) are counted again (the sums do not depend on the order)."""
        seen = set()
        counted, count = self._counted, self._count
        for view in views:
            name, site, hours = view.name, view.site, view.user_jobs
            seen.add(name)
            before, old = counted.get(name, (site, ()))
            if old is hours and before == site:
                continue
            if before == site and len(old) == len(hours) and old[:-1] == hours[:-1]:
                # most often only the hour still going on was read again: it alone is swapped (the others are
                # the same objects, or equal ones, which count the same)
                if old and old[-1] is not hours[-1]:
                    self._swap(name, site, old[-1], hours[-1])
            elif before != site:
                for hour in old:
                    count(name, before, hour, -1)
                for hour in hours:
                    count(name, site, hour, 1)
            else:  # the oldest left the window, or a new hour came
                first = hours[0] if hours else None
                skip = 0 if not old or old[0] is first else next((i for i, was in enumerate(old) if was is first), 0)
                for was in old[:skip]:
                    count(name, site, was, -1)
                for was, now in zip(old[skip:], hours):
                    if was is not now:
                        self._swap(name, site, was, now)
                for was in old[skip + len(hours):]:
                    count(name, site, was, -1)
                for now in hours[len(old) - skip:]:
                    count(name, site, now, 1)
            counted[name] = (site, hours)
        for queue in counted.keys() - seen:  # retired
            site, hours = counted.pop(queue)
            for hour in hours:
                self._count(queue, site, hour, -1)

    def _swap(self, queue: str, site: str, was: StoredHour, now: StoredHour) -> None:
        """Count `now` instead of `was`: most often the same hour read again with more jobs ended and the
        same failures heard (most often none), which changes the jobs ended alone."""
        if was.hour == now.hour and self._parts(was) == self._parts(now):
            self._add_ended(queue, now.ended - was.ended)
        else:
            self._count(queue, site, was, -1)
            self._count(queue, site, now, 1)

    def _add_ended(self, queue: str, ended: int) -> None:
        self.ended[queue] += ended
        self.all_ended += ended

    def _count(self, queue: str, site: str, hour: StoredHour, sign: int) -> None:
        self._add_ended(queue, sign * hour.ended)
        for code, jobs, by_site, in_excess in self._parts(hour):
            jobs *= sign
            per_queue = self.failures[code]
            per_queue[queue] += jobs
            self.code_failed[code] += jobs
            was_site = self.site_entries[code] != 0
            if by_site:
                self.site_entries[code] += sign
            if was_site:
                self.site_failed[queue] += jobs
                self.all_site_failed += jobs
            if was_site != (self.site_entries[code] != 0):  # the code became the site's, or no longer is
                turn = 1 if was_site else -1  # its failures at every queue out of the site-class sums, or in
                for other, failed in per_queue.items():
                    self.site_failed[other] -= turn * failed
                    self.all_site_failed -= turn * failed
            if in_excess:
                key = (code, hour.hour)
                sites = self.excess[key]
                sites[site] += sign
                if not sites[site]:
                    del sites[site]
                    if not sites:
                        del self.excess[key]


@dataclass(frozen=True)
class Baseline:
    """What every queue's users' jobs in the window say about each code: worked out from `views` at
    the first question (a step where no queue's users' jobs could point at its site, see
    `inconclusive`, and no queue has a case open asks none), in `tally` if given (the engine's, kept
    between steps; the answers hold until its next update), else afresh."""

    settings: UserJobsSettings
    shared_at: int  # other sites in excess with a code in one hour that make it a shared cause
    views: tuple[QueueView, ...] = field(default=(), compare=False, repr=False)
    tally: Tally | None = field(default=None, compare=False, repr=False)

    @classmethod
    def of(cls, views: Iterable[QueueView], settings: UserJobsSettings, shared_at: int,
           tally: Tally | None = None) -> "Baseline":
        return cls(settings, shared_at, tuple(views), tally)

    @property
    def worked_out(self) -> bool:
        """Whether a question has been answered already (the sums are counted: more cost nothing)."""
        return "_counts" in self.__dict__

    @functools.cached_property
    def _counts(self) -> Tally:
        tally = self.tally if self.tally is not None else Tally(self.settings)
        tally.update(self.views)
        return tally

    def rate(self, code: int, queue: str) -> float:
        """The share of the other queues' users' jobs that failed with `code`, never below `floor`."""
        key = (code, queue)
        rate = self._rates.get(key)
        if rate is None:  # a queue asks once per hour of its own with the code
            counts = self._counts
            jobs = counts.all_ended - counts.ended[queue]
            per_queue = counts.failures.get(code)
            seen = (counts.code_failed[code] - (per_queue[queue] if per_queue else 0)) / jobs if jobs > 0 else 0.0
            rate = self._rates[key] = max(seen, self.settings.floor)
        return rate

    def site_rate(self, queue: str) -> float:
        """The share of the other queues' users' jobs that failed with a site-class code, never below `floor`."""
        rate = self._rates.get(queue)
        if rate is None:  # a queue asks once per hour of its own
            counts = self._counts
            jobs = counts.all_ended - counts.ended[queue]
            failed = counts.all_site_failed - counts.site_failed[queue]
            rate = self._rates[queue] = max(failed / jobs if jobs > 0 else 0.0, self.settings.floor)
        return rate

    @functools.cached_property
    def _rates(self) -> dict[tuple[int, str] | str, float]:
        """The rates answered so far (by code and queue; by queue for the site-class rate)."""
        return {}

    def shared(self, code: int, hour: datetime, site: str) -> bool:
        sites = self._counts.excess.get((code, hour), {})
        return len(sites) - (site in sites) >= self.shared_at


def without_shared(view: QueueView, baseline: Baseline) -> QueueView:
    """The view without the test jobs' failures whose code the users' jobs show as a shared cause in
    that hour: with sparse test jobs the users' jobs see a central cause (a data management outage
    reporting 1099 everywhere) where the test jobs alone cannot; such failures count neither way. An
    excluded queue keeps its failures with a code its exclusion named: while they go on its fault is
    not gone, wherever else the code fails (see sequential.relapses)."""
    kept = tuple(r for r in view.results if not (r.failed and isinstance(r.error_code, int)
                                                  and r.error_code not in view.excluded_for
                                                  and baseline.shared(r.error_code, hour_of(r.end_time), view.site)))
    return view if len(kept) == len(view.results) else replace(view, results=kept)


def watched(view: QueueView, now: datetime, settings: UserJobsSettings) -> bool:
    """Whether enough of the queue's users' jobs ended within the last 60 minutes for them to stand
    watch between test jobs (a site fault shows in them first): this hour's so far, and the hour
    before's for the share of it still within the 60 minutes (hours are counted whole, so this is
    the best estimate; a queue whose users' jobs stopped ending falls below within the hour)."""
    this_hour, before, hours = _watch_hours(now)
    ended = sum(h.ended if h.hour == this_hour else before * h.ended for h in view.user_jobs if h.hour in hours)
    return ended >= max(1, settings.watched_jobs)


@functools.lru_cache(maxsize=2)  # every queue asks at every step
def _watch_hours(now: datetime) -> tuple[datetime, float, tuple[datetime, datetime]]:
    """The hour going on at `now`, the share of the hour before still within the last 60 minutes, and both hours."""
    this_hour = hour_of(now)
    return this_hour, 1 - (now - this_hour) / HOUR, (this_hour, this_hour - HOUR)


# The error table's classes as the sequential test weighs them (blacklist/sequential.py's `klass`).
KLASS = {"site": "site", "central": "central"}  # any other (unknown, none): "other"


def _heard_codes(hour: StoredHour) -> dict[int, tuple[str, int]]:
    """The hour's failures per code, with the code's class, for every class but user (see the module).

    Worked out once per list of codes (not to be changed by the caller): every step asks it of every
    queue's hours several times, and hours counted alike share their codes (robot.userjobs.read_hours),
    as does an hour read again while it grows with no new failure."""
    return (_HEARD.get(id(hour.codes)) or _kept(hour.codes))[1]


def _kept(codes: tuple[dict, ...]) -> tuple[tuple[dict, ...], dict[int, tuple[str, int]], dict]:
    """What is kept of a stored hour's list of codes: the list itself (held, so that no other object
    takes its id while it is kept), its codes heard, and answers worked out from them (by key, with
    the hour's jobs ended where they depend on them)."""
    if len(_HEARD) >= HEARD_KEPT:
        _HEARD.clear()
    found: dict[int, tuple[str, int]] = {}
    for entry in codes:
        klass = entry.get("class")
        if klass != "user":
            code = int(entry["code"])
            found[code] = (KLASS.get(klass, "other"), found.get(code, ("", 0))[1] + int(entry["jobs"]))
    kept = _HEARD[id(codes)] = (codes, found, {})
    return kept


# id of a list of codes -> what is kept of it; at most HEARD_KEPT lists (a 200-queue grid's 6 h window
# holds about 1,400 hours, many sharing one list)
_HEARD: dict[int, tuple[tuple[dict, ...], dict[int, tuple[str, int]], dict]] = {}
HEARD_KEPT = 10_000


def _llr(k: int, n: int, p0: float) -> float:
    """The log-likelihood ratio of k failures in n jobs at their own rate against a rate p0 below it:
    it only falls as p0 rises towards k/n."""
    seen = k / n
    return k * math.log(seen / p0) + ((n - k) * math.log((1 - seen) / (1 - p0)) if k < n else 0.0)


# Rounding in the log-likelihood ratio is far below this: `inconclusive` never misses a conclusive hour.
MARGIN = 1e-6


def inconclusive(view: QueueView, settings: UserJobsSettings, exclude_at: float) -> bool:
    """Whether no hour of the queue's can point at the site (an item of `evidence`), whatever the
    other queues' users' jobs say: no code in it could be conclusive on its own even against the
    least rate it is compared with (`floor`; the ratio only falls as that rate rises towards the
    hour's own). Its users' jobs can then only speak for the queue."""
    for hour in view.user_jobs:
        if loud(hour, settings, exclude_at):
            return False
    return True


def loud(hour: StoredHour, settings: UserJobsSettings, exclude_at: float) -> bool:
    """Whether the hour can point at the site (see `inconclusive`): a pure function of the hour."""
    _, heard, answers = _HEARD.get(id(hour.codes)) or _kept(hour.codes)
    if not heard:
        return False  # most hours: no failure of a class that is heard
    n = hour.ended
    question = ("loud", settings.min_failures, settings.floor, exclude_at, n)
    found = answers.get(question)
    if found is None:
        least, floor = settings.min_failures, settings.floor
        found = answers[question] = any(k >= least and n and k / n > floor and _llr(k, n, floor) >= exclude_at - MARGIN
                                        for _, k in heard.values())
    return found


def evidence(view: QueueView, baseline: Baseline, settings: SequentialSettings,
             now: datetime, against: bool = True) -> tuple[list[Counted], list[dict[str, Any]]]:
    """The queue's users' hours that point at the site, as weighted failures for the sequential
    test, and what each was given (for the decision's evidence); with `against`, also the hours that
    speak for the queue (see `_against`), where there is anything to speak against."""
    weights = Weights.of(settings)
    items, shown = [], []
    for hour in view.user_jobs:
        enough = [(code, counts) for code, counts in _heard_codes(hour).items()
                  if counts[1] >= baseline.settings.min_failures]
        for code, (klass, k) in sorted(enough) if enough else ():
            n = hour.ended
            p0 = baseline.rate(code, view.name)
            seen = k / n if n else 0.0
            if seen <= p0 or baseline.shared(code, hour.hour, view.site):
                continue
            llr = _llr(k, n, p0)
            if llr < weights.exclude_at:
                continue  # not conclusive on its own: at every queue and hour, weak ones would keep sending probes
            step = min(weights.failure, baseline.settings.weight * llr)
            name = next((e.get("name") for e in hour.codes if int(e["code"]) == code), str(code))
            when = min(hour.hour + HOUR, now)
            # as a test job's failure of its class: central-class only adds to "any code" once a case is open
            items.append(Counted(Result(0, USERS, when, True, klass, name, code), 0.0 if klass == "central" else step,
                                 klass, any_weight=step))
            shown.append({"hour": hour.hour.isoformat(), "ended": n, "failed": hour.failed, "code": code,
                          "error": name, "class": klass, "failures": k, "baseline": round(p0, 4), "weight": round(step, 2)})
    if against and (items or view.robot_state != "online" or any(r.failed for r in view.results)):  # else nothing to speak against
        items += [_against(view, hour, baseline, settings, min(hour.hour + HOUR, now)) for hour in view.user_jobs
                  if hour.ended]
    return items, shown


def _against(view: QueueView, hour: StoredHour, baseline: Baseline, settings: SequentialSettings,
             when: datetime) -> Counted:
    """The hour's users' jobs as evidence against "broken", per alternative of the sequential test
    (see the module): weight times the log-likelihood ratio of the hour's count of the code (of
    site-class codes, for "any code") under p_broken against the other queues' rate, when that is
    below 0, and never beyond one test job's failure the other way."""
    n, cap, weight = hour.ended, Weights.of(settings).failure, baseline.settings.weight

    def step(k: int, p0: float) -> float:
        if p0 >= settings.p_broken:
            return 0.0  # a code this common elsewhere: no alternative to weigh against
        llr = k * math.log(settings.p_broken / p0) + (n - k) * math.log((1 - settings.p_broken) / (1 - p0))
        return max(-cap, min(0.0, weight * llr))

    heard = {code: klass_k for code, klass_k in _heard_codes(hour).items()
             if not baseline.shared(code, hour.hour, view.site)}
    against: dict = {code: step(k, baseline.rate(code, view.name)) for code, (klass, k) in heard.items()
                     if klass in ("site", "other")}
    against.update({code: 0.0 for code in _heard_codes(hour).keys() - heard.keys()})  # a shared cause: neither way
    against[ANY] = step(sum(k for klass, k in heard.values() if klass == "site"), baseline.site_rate(view.name))
    return Counted(Result(0, USERS, when, False), klass="", against=against,
                   against_codes=step(0, baseline.settings.floor))
