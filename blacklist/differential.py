"""Differential evidence: what the other sites' results say about one queue's failures.

A failure code that shows up at one site while the same templates complete elsewhere points at
that site, whatever class the error table gives it (a site fault may report user- or
unknown-class codes, a crashing node only 1203). The same code failing at several other sites
around the same time points at a cause they share (a central service, a broken release, a user
wave), even when the table calls it a site error (1099 when the data management service fails).

`Spread` is built once per step from every queue's stored results (a pure function of them) and
answers, for each failure of each queue:
- whether there is anything to compare with: the template completed at `spread_sites` or more
  other sites in the window (else the error table decides alone);
- whether its code is widespread: it failed at `spread_sites` or more *other* sites within
  `spread_window` of it, and at `spread_fraction` of the other sites if that is more (a large
  grid sees a rare code at a few sites by chance); then it says nothing about this site and does
  not count;
- else how often the code fails at the other sites (its baseline rate, over the policy window),
  which the sequential test weighs the failure against.
"""
from __future__ import annotations

import functools
import math
from bisect import bisect_left, bisect_right
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Iterable

from blacklist.model import QueueView, Result

Code = int | str


def code_of(result: Result) -> Code:
    """The failure's signature: its error code, else its name."""
    return result.error_code if result.error_code is not None else (result.error_name or "")


def widespread_at(sites: int, min_sites: int, fraction: float) -> int:
    """How many *other* sites of a grid of `sites` failing with one code at once make it a shared
    cause: `min_sites`, or `fraction` of the other sites if more (a large grid has several sites
    broken at once by chance, each for its own reason)."""
    return max(min_sites, math.ceil(fraction * (sites - 1)))


@dataclass(frozen=True)
class Part:
    """What one queue's results add to a Spread: how many, the templates that completed, and each
    failure's code and end, in the results' order."""

    jobs: int
    completed: tuple[str, ...]
    failed: tuple[tuple[Code, datetime], ...]

    @classmethod
    def of(cls, results: tuple[Result, ...]) -> "Part":
        completed = dict.fromkeys(r.template for r in results if not r.failed)  # in order, once each
        return cls(len(results), tuple(completed), tuple((code_of(r), r.end_time) for r in results if r.failed))


@dataclass(frozen=True)
class Spread:
    """Where and how often each failure code occurred across the grid in the policy window."""

    window: timedelta  # "at the same time": failures this close count as one event
    min_sites: int  # other sites failing with the code at the same time that make it widespread ...
    fraction: float = 0.0  # ... or this share of the other sites, if more
    times: dict[Code, list[tuple[datetime, str, str]]] = field(default_factory=dict)  # per code, (end, site, queue)
    failures: dict[Code, Counter[str]] = field(default_factory=dict)  # per code, failures per site
    jobs: Counter[str] = field(default_factory=Counter)  # results per site
    completed: dict[str, set[str]] = field(default_factory=dict)  # per template, the sites where a job completed
    # Answers already computed in this step, keyed by what they depend on: every queue asks about
    # the same failures, and a Spread is never changed once built.
    _around: dict[tuple[Code, datetime], set[str]] = field(default_factory=dict, compare=False, repr=False)
    _failed: dict[Code, int] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def of(cls, views: Iterable[QueueView], window: timedelta, min_sites: int, fraction: float = 0.0,
           kept: dict[str, tuple[tuple[Result, ...], "Part"]] | None = None) -> "Spread":
        """`kept`: each queue's part worked out at the last step (see `Part`), kept by the caller: a queue
        whose results are the same tuple as then is not gone through again."""
        times: dict[Code, list[tuple[datetime, str, str]]] = defaultdict(list)
        failures: dict[Code, Counter[str]] = defaultdict(Counter)
        jobs: Counter[str] = Counter()
        completed: dict[str, set[str]] = defaultdict(set)
        for view in views:
            known = kept.get(view.name) if kept is not None else None
            if known is not None and known[0] is view.results:
                part = known[1]
            else:
                part = Part.of(view.results)
                if kept is not None:
                    kept[view.name] = (view.results, part)
            jobs[view.site] += part.jobs
            for template in part.completed:
                completed[template].add(view.site)
            for code, end in part.failed:
                times[code].append((end, view.site, view.name))
                failures[code][view.site] += 1
        for entries in times.values():
            entries.sort()
        return cls(window, min_sites, fraction, dict(times), dict(failures), jobs, dict(completed))

    @functools.cached_property
    def threshold(self) -> int:
        """How many other sites failing with one code at once make it widespread."""
        return widespread_at(len(self.jobs), self.min_sites, self.fraction)

    def comparable(self, result: Result, site: str) -> bool:
        """Whether enough other sites completed the result's template to compare with (else the
        error table has to decide alone)."""
        sites = self.completed.get(result.template, set())
        return len(sites) - (site in sites) >= self.min_sites

    def sites_around(self, code: Code, when: datetime, site: str) -> set[str]:
        """The other sites where `code` failed within `window` of `when`."""
        return self._sites_at(code, when) - {site}

    def _sites_at(self, code: Code, when: datetime) -> set[str]:
        """Every site where `code` failed within `window` of `when`."""
        key = (code, when)
        if key not in self._around:
            entries = self.times.get(code, [])
            lo = bisect_left(entries, (when - self.window,))
            hi = bisect_right(entries, (when + self.window, "\uffff"))
            self._around[key] = {s for _, s, _ in entries[lo:hi]}
        return self._around[key]

    def widespread(self, result: Result, site: str) -> bool:
        sites = self._sites_at(code_of(result), result.end_time)
        return len(sites) - (site in sites) >= self.threshold

    def shared(self, now: datetime) -> dict[Code, list[str]]:
        """The codes failing now at more than `threshold` sites (within `window` before `now`), with
        the queues where they failed: causes the sites share."""
        found = {}
        for code, entries in self.times.items():
            recent = entries[bisect_left(entries, (now - self.window,)):]
            if len({site for _, site, _ in recent}) > self.threshold:
                found[code] = sorted({queue for _, _, queue in recent})
        return found

    def baseline(self, code: Code, site: str) -> float:
        """The share of the other sites' results that failed with `code`."""
        jobs = self._all_jobs - self.jobs[site]
        if jobs <= 0:
            return 0.0
        per_site = self.failures.get(code, Counter())
        if code not in self._failed:
            self._failed[code] = sum(per_site.values())
        return (self._failed[code] - per_site[site]) / jobs

    @functools.cached_property
    def _all_jobs(self) -> int:
        return sum(self.jobs.values())
