"""Is it the site? A verdict per ticket from what it names and what the robot saw meanwhile.

Pure: `judge` takes the ticket's mentions and time span, the episodes of degraded queues, the test
figures of the named queues and the central incidents, and returns a verdict with its reason,
its evidence and the episodes it links, each with a score.
  site      an episode of a named queue (or of a queue of a named site, or of the queue a pasted
            PanDA job ran at) overlaps the ticket's time: the site;
  central   no such episode, but a central incident overlaps it;
  not_site  the named queues passed their tests in that window: look at the user's code;
  unknown   nothing named, or no tests there.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

LEAD = timedelta(days=2)  # a user writes after the trouble started: look this far back
STRENGTH = {"queue": 1.0, "panda_id": 1.0, "endpoint": 0.8, "site": 0.7, "cloud": 0.3}
LINK_AT = 0.5
HEALTHY_MIN_JOBS = 5
HEALTHY_MAX_FAILURE = 0.2


@dataclass(frozen=True)
class Named:
    kind: str
    value: str
    queue: str | None = None
    site: str | None = None
    cloud: str | None = None
    complaint: bool = True


@dataclass(frozen=True)
class EpisodeRef:
    id: int
    queue: str
    site: str
    cloud: str
    start: datetime
    end: datetime | None
    source: str
    reason: str
    error_classes: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Figures:
    queue: str
    jobs: int
    failed: int
    site_failed: int


@dataclass(frozen=True)
class CentralIncident:
    time: datetime
    kind: str
    message: str


@dataclass(frozen=True)
class Judgement:
    verdict: str
    reason: str
    evidence: dict[str, Any]
    links: list[tuple[int, float, str]]  # (episode id, score, why)


def judge(first: datetime, last: datetime, named: list[Named], episodes: list[EpisodeRef],
          figures: dict[str, Figures], incidents: list[CentralIncident]) -> Judgement:
    start = first - LEAD
    complaints = [n for n in named if n.complaint]
    links = []
    for episode in episodes:
        if episode.start > last or (episode.end is not None and episode.end < start):
            continue
        strength, why = _match(episode, complaints)
        if strength:
            during = episode.start <= first and (episode.end is None or episode.end >= first)
            score = strength * (1.0 if during else 0.8)
            links.append((episode.id, round(score, 2), why + ("" if during else " (near the ticket's time)")))
    links = [link for link in links if link[1] >= LINK_AT]
    links.sort(key=lambda link: -link[1])
    if links:
        best = next(e for e in episodes if e.id == links[0][0])
        since = f"from {best.start:%Y-%m-%d %H:%M} UTC" + (f" to {best.end:%H:%M}" if best.end else ", still going on")
        return Judgement("site", f"the site: {best.queue} {best.reason} ({since}); {links[0][2]}",
                         {"episodes": [link[0] for link in links]}, links)
    central = [i for i in incidents if start <= i.time <= last]
    if central:
        return Judgement("central", f"a central problem: {central[0].message}",
                         {"incidents": [f"{i.kind} at {i.time.isoformat()}" for i in central[:5]]}, [])
    queues = sorted({n.queue for n in complaints if n.queue})
    tested = [figures[q] for q in queues if q in figures and figures[q].jobs >= HEALTHY_MIN_JOBS]
    if tested and all(f.site_failed / f.jobs < HEALTHY_MAX_FAILURE for f in tested):
        passed = "; ".join(f"{f.queue} passed {f.jobs - f.failed} of {f.jobs} tests" for f in tested)
        return Judgement("not_site", f"not the site: {passed} in that window; look at the user's code or setup",
                         {"figures": {f.queue: f.__dict__ for f in tested}}, [])
    if not complaints:
        return Judgement("unknown", "the ticket names no queue, site or job the robot knows", {}, [])
    return Judgement("unknown", f"no test results for {', '.join(queues) or 'the named sites'} in that window", {}, [])


def _match(episode: EpisodeRef, complaints: list[Named]) -> tuple[float, str]:
    best, why = 0.0, ""
    for named in complaints:
        if named.kind in ("queue", "panda_id") and named.queue == episode.queue:
            strength = STRENGTH[named.kind]
            reason = f"the ticket names {named.value}" if named.kind == "queue" else f"job {named.value} ran at {episode.queue}"
        elif named.kind in ("site", "endpoint") and named.site == episode.site:
            strength, reason = STRENGTH[named.kind], f"the ticket names {named.value} ({episode.site})"
        elif named.kind == "cloud" and named.cloud == episode.cloud:
            strength, reason = STRENGTH["cloud"], f"the ticket names the {named.cloud} cloud"
        else:
            continue
        if strength > best:
            best, why = strength, reason
    return best, why
