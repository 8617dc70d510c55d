"""Users' own jobs as evidence for the default policy, weighted for what they are.

Users' jobs fail for their own reasons (their code, their memory, their arguments) far more often
than for the site's, so only a part of what they say is heard:
- only site-class codes count (robot.classify's table); a user-class failure says nothing here;
- per queue, hour and site-class code c, k of the queue's n users' jobs that ended failed with c;
  it is compared with c's rate in the users' jobs of the other queues in the policy window
  (never below `floor`): a code failing everywhere is a shared cause, not this site's;
- the same code failing at `spread_sites` (see SequentialSettings) or more other sites in the same
  hour (two failures above `floor` are enough: a shared cause starts somewhere) is a shared cause
  too and counts for no site;
- the hour weighs `weight` times the log-likelihood ratio of "the queue fails with c at the rate
  seen" against "at the other queues' rate" (n times the Kullback-Leibler divergence), and never
  more than one test job's failure pointing at the site (`Weights.failure`); hours with fewer
  than `min_failures` such failures, or a rate not above the baseline, weigh nothing.

A stable queue whose users' jobs keep ending (`watched_jobs` within about the last hour) is tested
less often (`watched_gap` between a template's jobs instead of the stable gap): its users' jobs
stand watch, and the first hour of them that points at the site sends probe jobs at once.

The hours enter the sequential test (blacklist/sequential.py) as failures pointing at the site
with that weight, at the hour's end (now, for the hour still going on): they open a case (probe
jobs go out at once) and add to it, but never exclude a queue alone: at least one test job's
failure pointing at the site must be behind an exclusion.
"""
from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Iterable

from blacklist.model import QueueView, Result
from blacklist.sequential import USERS, Counted, Weights
from blacklist.settings import SequentialSettings, UserJobsSettings
from robot.userjobs import HOUR, StoredHour, hour_of


@dataclass(frozen=True)
class Baseline:
    """Per site-class code, its failures and the users' jobs that ended, per queue, over the window;
    and per (code, hour) the sites where it was in excess."""

    settings: UserJobsSettings
    spread_sites: int
    failures: dict[int, Counter[str]] = field(default_factory=dict)  # code -> queue -> failures
    ended: Counter[str] = field(default_factory=Counter)  # queue -> users' jobs ended
    excess_sites: dict[tuple[int, datetime], set[str]] = field(default_factory=dict)

    @classmethod
    def of(cls, views: Iterable[QueueView], settings: UserJobsSettings, spread_sites: int) -> "Baseline":
        views = list(views)
        failures: dict[int, Counter[str]] = defaultdict(Counter)
        ended: Counter[str] = Counter()
        for view in views:
            for hour in view.user_jobs:
                ended[view.name] += hour.ended
                for code, jobs in _site_codes(hour).items():
                    failures[code][view.name] += jobs
        excess: dict[tuple[int, datetime], set[str]] = defaultdict(set)
        for view in views:  # two failures above the floor count here: a shared cause starts somewhere
            for hour in view.user_jobs:
                for code, jobs in _site_codes(hour).items():
                    if jobs >= min(2, settings.min_failures) and jobs / hour.ended > settings.floor:
                        excess[(code, hour.hour)].add(view.site)
        return cls(settings, spread_sites, dict(failures), ended, dict(excess))

    def rate(self, code: int, queue: str) -> float:
        """The share of the other queues' users' jobs that failed with `code`, never below `floor`."""
        jobs = sum(self.ended.values()) - self.ended[queue]
        per_queue = self.failures.get(code, Counter())
        seen = (sum(per_queue.values()) - per_queue[queue]) / jobs if jobs > 0 else 0.0
        return max(seen, self.settings.floor)

    def shared(self, code: int, hour: datetime, site: str) -> bool:
        return len(self.excess_sites.get((code, hour), set()) - {site}) >= self.spread_sites


def without_shared(view: QueueView, baseline: Baseline) -> QueueView:
    """The view without the test jobs' failures whose code the users' jobs show as a shared cause in
    that hour: with sparse test jobs the users' jobs see a central cause (a data management outage
    reporting 1099 everywhere) where the test jobs alone cannot; such failures count neither way."""
    kept = tuple(r for r in view.results if not (r.failed and isinstance(r.error_code, int)
                                                  and baseline.shared(r.error_code, hour_of(r.end_time), view.site)))
    return view if len(kept) == len(view.results) else replace(view, results=kept)


def watched(view: QueueView, now: datetime, settings: UserJobsSettings) -> bool:
    """Whether enough of the queue's users' jobs ended within about the last hour (this hour and the one
    before) for them to stand watch between test jobs: a site fault shows in them first."""
    since = now.replace(minute=0, second=0, microsecond=0) - HOUR
    return sum(h.ended for h in view.user_jobs if h.hour >= since) >= max(1, settings.watched_jobs)


def _site_codes(hour: StoredHour) -> dict[int, int]:
    found: dict[int, int] = defaultdict(int)
    for entry in hour.codes:
        if entry.get("class") == "site":
            found[int(entry["code"])] += int(entry["jobs"])
    return found


def evidence(view: QueueView, baseline: Baseline, settings: SequentialSettings,
             now: datetime) -> tuple[list[Counted], list[dict[str, Any]]]:
    """The queue's users' hours that point at the site, as weighted failures for the sequential
    test, and what each was given (for the decision's evidence)."""
    cap = Weights.of(settings).failure
    items, shown = [], []
    for hour in view.user_jobs:
        for code, k in sorted(_site_codes(hour).items()):
            n = hour.ended
            p0 = baseline.rate(code, view.name)
            seen = k / n if n else 0.0
            if k < baseline.settings.min_failures or seen <= p0 or baseline.shared(code, hour.hour, view.site):
                continue
            llr = k * math.log(seen / p0) + ((n - k) * math.log((1 - seen) / (1 - p0)) if k < n else 0.0)
            step = min(cap, baseline.settings.weight * llr)
            name = next((e.get("name") for e in hour.codes if int(e["code"]) == code), str(code))
            when = min(hour.hour + HOUR, now)
            items.append(Counted(Result(0, USERS, when, True, "site", name, code), step, "site", any_weight=step))
            shown.append({"hour": hour.hour.isoformat(), "ended": n, "failed": hour.failed, "code": code,
                          "error": name, "failures": k, "baseline": round(p0, 4), "weight": round(step, 2)})
    return items, shown
