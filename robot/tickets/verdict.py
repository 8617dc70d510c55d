"""Is it the site? A verdict per ticket from what it names and what the robot saw meanwhile.

Pure: `judge` takes the ticket's mentions and time span, the episodes of degraded queues, the test
figures of the queues it names (and of the whole grid), and the central incidents, and returns a
verdict with its reason, a confidence, the sentence a shifter would paste into the reply, the
evidence on both sides, and the episodes it links, each with a score.

  site      a site the ticket names (or the site of a named queue, endpoint or job) was in a downtime
            it announced at the ticket's time: "scheduled downtime" is the answer (the first thing a
            shifter checks); else an episode of a named queue (or of a queue of a named site or storage endpoint, or of the
            queue a pasted PanDA job ran at) overlaps the ticket's time; or PanDA says the user's job
            failed with a site-class error;
  central   no such episode, but a central incident was going on when the ticket was written (with
            a short margin), and what the ticket names does not contradict it: the queues it names
            are among those the incident hit, and its errors are not all of another class;
  not_site  the named queues (all the queues of a named site or endpoint, the queue of a named job)
            passed their tests in that window; weaker, for a ticket naming nothing: no queue was
            degraded anywhere in that window;
  unknown   nothing to go on.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from datetime import datetime, timedelta
from typing import Any, Mapping, Sequence

LEAD = timedelta(days=2)  # a user writes after the trouble started: look this far back for episodes
INCIDENT_MARGIN = timedelta(hours=1)  # a central incident explains tickets written this close to it
QUIET_LEAD = timedelta(hours=12)  # "no queue degraded anywhere" is judged over this much before the ticket
DOWNTIME_MARGIN = timedelta(hours=6)  # a downtime explains tickets about failures up to this long after it ended
STRENGTH = {"queue": 1.0, "panda_id": 1.0, "endpoint": 0.8, "site": 0.7, "cloud": 0.3}
LINK_AT = 0.5
HEALTHY_MIN_JOBS = 5
HEALTHY_MAX_FAILURE = 0.2
PLACE_KINDS = ("queue", "site", "endpoint", "panda_id")
ERROR_KINDS = ("error_code", "error_text", "job_error")


@dataclass(frozen=True)
class Named:
    kind: str
    value: str
    queue: str | None = None
    site: str | None = None
    cloud: str | None = None
    complaint: bool = True
    error_class: str | None = None  # errors: site | user | central | unknown | none


@dataclass(frozen=True)
class EpisodeRef:
    id: int
    queue: str
    site: str
    cloud: str
    start: datetime
    end: datetime | None
    source: str
    reason: str  # in plain words (robot.vocabulary.plain_reason), what a shifter reads
    error_classes: dict[str, int] = field(default_factory=dict)
    policy_reason: str = ""  # the policy's own words (e.g. "... CUSUM 7.0 >= 6.2"), secondary detail


@dataclass(frozen=True)
class Figures:
    queue: str
    jobs: int
    failed: int
    site_failed: int


@dataclass(frozen=True)
class CentralIncident:
    start: datetime
    end: datetime
    kind: str
    message: str
    queues: tuple[str, ...] = ()


@dataclass(frozen=True)
class DowntimeRef:
    """An outage a site announced (robot.downtimes), in the words shown to people."""

    site: str
    start: datetime
    end: datetime
    words: str  # e.g. "scheduled downtime 2026-11-28 08:00-12:00 UTC (dCache upgrade)"


@dataclass(frozen=True)
class Places:
    """Which queues a named site or storage endpoint stands for."""

    site_queues: Mapping[str, Sequence[str]] = field(default_factory=dict)
    endpoint_queues: Mapping[str, Sequence[str]] = field(default_factory=dict)  # lower-case endpoint names

    @classmethod
    def from_topology(cls, topology: Any) -> Places:
        """From a robot.topology.Topology: a site's queues, and the queues that read from each endpoint."""
        site_queues: dict[str, list[str]] = {}
        endpoint_queues: dict[str, list[str]] = {}
        for q in topology.queues:
            site_queues.setdefault(q.site, []).append(q.name)
            for endpoint in q.endpoints:
                endpoint_queues.setdefault(endpoint.lower(), []).append(q.name)
        return cls(site_queues, endpoint_queues)

    def site_of(self, named: Named) -> str | None:
        """The site a named place belongs to (a queue's or a job's site, an endpoint's, the site itself)."""
        if named.site:
            return named.site
        return self._queue_sites.get(named.queue)

    @cached_property
    def _queue_sites(self) -> dict[str | None, str]:
        """Queue -> the first site listing it (read once: `site_of` is asked for every place of every ticket)."""
        found: dict[str | None, str] = {}
        for site, queues in self.site_queues.items():
            for queue in queues:
                found.setdefault(queue, site)
        return found

    def queues(self, named: Named) -> list[str]:
        if named.kind in ("queue", "panda_id", "job_error"):
            return [named.queue] if named.queue else []
        if named.kind == "endpoint":
            return list(self.endpoint_queues.get(named.value.lower(), ())) or list(self.site_queues.get(named.site or "", ()))
        if named.kind == "site":
            return list(self.site_queues.get(named.site or "", ()))
        return []


@dataclass(frozen=True)
class Judgement:
    verdict: str
    reason: str
    evidence: dict[str, Any]
    links: list[tuple[int, float, str]]  # (episode id, score, why)
    confidence: float = 0.0
    reply: str = ""
    for_site: tuple[str, ...] = ()
    against_site: tuple[str, ...] = ()


def judge(first: datetime, last: datetime, named: list[Named], episodes: list[EpisodeRef],
          figures: Mapping[str, Figures], incidents: list[CentralIncident], places: Places | None = None,
          grid: Figures | None = None, downtimes: Sequence[DowntimeRef] = ()) -> Judgement:
    """`figures`: test results per queue from `first - LEAD` to `last`; `grid`: all queues' results
    from `first - QUIET_LEAD` to `last` (for a ticket that names nothing); `downtimes`: the outages
    sites announced around the ticket's time."""
    places = places or Places()
    complaints = [n for n in named if n.complaint]
    spots = [n for n in complaints if n.kind in PLACE_KINDS]
    said_fine = [n for n in named if not n.complaint and n.kind in PLACE_KINDS]
    errors = [n for n in named if n.kind in ERROR_KINDS and n.error_class]
    job_errors = [n for n in named if n.kind == "job_error"]
    pro: list[str] = []
    con: list[str] = [f"the ticket says {n.value} works or was left out" for n in said_fine]
    pro += [f"PanDA: job {n.value} at {n.queue} failed with a site error" for n in job_errors if n.error_class == "site"]
    con += [f"PanDA: job {n.value} at {n.queue} " + ("finished" if n.error_class == "none" else
                                                     f"failed with a {n.error_class} error")
            for n in job_errors if n.error_class in ("user", "central", "none")]
    pro += [f"the ticket quotes a site error: {n.value}" for n in errors if n.kind != "job_error" and n.error_class == "site"]
    con += [f"the ticket quotes a {n.error_class} error: {n.value}" for n in errors
            if n.kind != "job_error" and n.error_class in ("user", "central")]

    # 0. a downtime the site of something the ticket names announced, going on at the ticket's time
    sites = {site for n in spots if (site := places.site_of(n))}
    announced = [d for d in downtimes if d.site in sites and d.start <= last and d.end >= first - DOWNTIME_MARGIN]
    if announced:
        down = announced[0]
        pro = [f"{down.site}: {down.words}"] + pro
        return _done("site", f"{down.words} at {down.site}: the site announced it",
                     {"downtimes": [f"{d.site} {d.start.isoformat()} to {d.end.isoformat()}" for d in announced]},
                     [], 0.9,
                     f"{down.site} was in a {down.words}: jobs there fail until it ends, this is not your code; "
                     f"please resubmit after {down.end:%Y-%m-%d %H:%M} UTC or avoid the site "
                     f"(--excludedSite={down.site}).", pro, con)

    # 1. an episode of something the ticket names
    links = _links(first, last, complaints, episodes)
    if links:
        best = next(e for e in episodes if e.id == links[0][0])
        since = f"from {best.start:%Y-%m-%d %H:%M} UTC" + (f" to {best.end:%H:%M}" if best.end else ", still going on")
        pro = [f"{best.queue} was degraded {since}: {best.reason}"] + pro
        for queue, f in sorted(figures.items()):
            if queue != best.queue and _healthy(f) and any(queue in places.queues(n) for n in spots):
                con.append(_passed(f))
        confidence = links[0][1] - 0.15 * min(2, len(con))
        until = "" if best.end is None else f" until {best.end:%H:%M} UTC"
        detail = {"policy": f"{best.queue}: {best.policy_reason}"} if best.policy_reason else {}
        return _done("site", f"{best.queue} was degraded {since}: {best.reason}; {links[0][2]}",
                     {"episodes": [link[0] for link in links], **detail}, links, confidence,
                     f"Our test jobs failed at {best.queue} from {best.start:%Y-%m-%d %H:%M} UTC{until} "
                     f"({best.reason}): this is a site problem, not your jobs; we have told the site, please "
                     f"resubmit avoiding it (--excludedSite={best.queue}) or after it is fixed.", pro, con)

    # 2. PanDA says the user's own job failed with a site-class error
    site_jobs = [n for n in job_errors if n.error_class == "site"]
    if site_jobs:
        job = site_jobs[0]
        passed = figures.get(job.queue or "")
        if passed is not None and _healthy(passed):
            con.append(_passed(passed))
        return _done("site", f"PanDA reports job {job.value} failed at {job.queue} with a site error",
                     {"jobs": [n.value for n in site_jobs]}, [], 0.6 - (0.15 if con else 0.0),
                     f"Your job {job.value} failed at {job.queue} with an error of the site's; our own tests "
                     "saw no lasting problem there, so please resubmit and tell us if it happens again.", pro, con)

    # 3. a central incident going on at the time, which what the ticket names does not contradict
    central_errors = [n for n in errors if n.error_class == "central"]
    for incident in incidents:
        during = (incident.start - INCIDENT_MARGIN <= first <= incident.end + INCIDENT_MARGIN
                  or incident.start - INCIDENT_MARGIN <= last <= incident.end + INCIDENT_MARGIN)
        # a ticket written later about an incident: only when it quotes the incident's kind of error
        before = not during and incident.end < first and first - incident.end <= LEAD and central_errors
        if not (during or before):
            continue
        contradiction = _contradicts(incident, spots, errors, places)
        if contradiction:
            con.append(f"a central incident was going on ({incident.message}) but {contradiction}")
            continue
        named_hit = [q for n in spots for q in places.queues(n) if q in incident.queues]
        pro_site = pro
        pro = [f"a central incident from {incident.start:%Y-%m-%d %H:%M} to {incident.end:%H:%M} UTC: {incident.message}"]
        pro += [f"{q} was among the queues it hit" for q in sorted(set(named_hit))]
        pro += [f"the ticket quotes a central error: {n.value}" for n in central_errors]
        if before:
            pro.append(f"the incident ended {_hours(first - incident.end)} before the ticket, whose errors are "
                       "central-class like the incident's")
        confidence = (0.9 if named_hit or central_errors else 0.65) - (0.3 if before else 0.0)
        return _done("central", f"{incident.message} (from {incident.start:%Y-%m-%d %H:%M} to {incident.end:%H:%M} UTC)",
                     {"incidents": [f"{incident.kind} from {incident.start.isoformat()} to {incident.end.isoformat()}"]},
                     [], confidence,
                     f"This was a central problem, not the site and not your code: from {incident.start:%H:%M} to "
                     f"{incident.end:%H:%M} UTC on {incident.start:%Y-%m-%d} our test jobs failed the same way at "
                     f"{len(incident.queues) if incident.queues else 'many'} queues at once; please resubmit the "
                     "failed jobs.", pro_site, pro + con)

    # 4. the places it names passed their tests
    queues = sorted({q for n in spots for q in places.queues(n)})
    tested = [figures[q] for q in queues if q in figures and figures[q].jobs >= HEALTHY_MIN_JOBS]
    if tested and all(_healthy(f) for f in tested):
        con = [_passed(f) for f in tested] + con
        jobs = sum(f.jobs for f in tested)
        confidence = (0.85 if jobs >= 20 else 0.7) - (0.2 if pro else 0.0)
        named_places = ", ".join(sorted({n.value for n in spots})) or "the named queues"
        passed = "; ".join(f"{f.queue} passed {f.jobs - f.failed} of {f.jobs} tests" for f in tested[:4])
        return _done("not_site", f"{passed} in that window; look at the user's code or setup",
                     {"figures": {f.queue: f.__dict__ for f in tested}}, [], confidence,
                     f"Our test jobs ran fine at {named_places} in that time ({passed}), so the site looks "
                     "healthy: the problem is most likely in your job; please send the command you ran and a "
                     "link to a failing job.", pro, con)

    # 5. nothing named, and the grid was healthy: a weaker "not the site"
    if not spots and grid is not None and grid.jobs >= HEALTHY_MIN_JOBS:
        degraded = [e for e in episodes if e.start <= last and (e.end is None or e.end >= first - QUIET_LEAD)]
        if not degraded:
            con.append(f"no queue was degraded anywhere: {grid.jobs - grid.site_failed} of {grid.jobs} tests "
                       f"had no site error at {grid.queue}")
            return _done("not_site", f"no test failed anywhere in that window: {grid.jobs} tests at {grid.queue}, "
                         f"{grid.site_failed} site errors, no queue degraded (the ticket names no queue)",
                         {"grid": grid.__dict__}, [], 0.4 - (0.15 if pro else 0.0),
                         "Our tests saw no site problem anywhere on the grid at that time; please send a link to "
                         "a failing job and the command you ran, so that we can look at it.", pro, con)

    seen = [figures[q] for q in queues if q in figures and figures[q].jobs]
    if not spots:
        reason = "the ticket names no queue, site or job the robot knows"
    elif not seen:
        reason = f"no test results for {', '.join(queues) or 'the named places'} in that window"
    else:
        reason = "; ".join(
            f"only {f.jobs} test result{'s' if f.jobs != 1 else ''} at {f.queue} ({HEALTHY_MIN_JOBS} needed)"
            if f.jobs < HEALTHY_MIN_JOBS else
            f"{f.site_failed} of {f.jobs} tests at {f.queue} failed with site errors, without a degradation episode"
            for f in seen[:4]) + " in that window"
    return _done("unknown", reason, {}, [], 0.0,
                 "We cannot tell yet whether the site is at fault: please send a link to a failing job (its "
                 "PanDA ID) and the command you ran.", pro, con)


def _done(verdict: str, reason: str, evidence: dict[str, Any], links: list[tuple[int, float, str]],
          confidence: float, reply: str, pro: list[str], con: list[str]) -> Judgement:
    confidence = round(max(0.05 if verdict != "unknown" else 0.0, min(1.0, confidence)), 2)
    pro, con = list(dict.fromkeys(pro)), list(dict.fromkeys(con))
    evidence = {**evidence, "confidence": confidence, "reply": reply, "for_site": pro[:10], "against_site": con[:10]}
    return Judgement(verdict, reason, evidence, links, confidence, reply, tuple(pro[:10]), tuple(con[:10]))


def _hours(span: timedelta) -> str:
    return f"{span.total_seconds() / 3600:.0f} h"


def _healthy(f: Figures) -> bool:
    return f.jobs >= HEALTHY_MIN_JOBS and f.site_failed / f.jobs < HEALTHY_MAX_FAILURE


def _passed(f: Figures) -> str:
    return f"{f.queue} passed {f.jobs - f.failed} of {f.jobs} tests"


def _links(first: datetime, last: datetime, complaints: list[Named],
           episodes: list[EpisodeRef]) -> list[tuple[int, float, str]]:
    start = first - LEAD
    # what an episode must share with a complaint to match it (`_match`): most episodes share nothing
    queues = {n.queue for n in complaints if n.kind in ("queue", "panda_id")}
    sites = {n.site for n in complaints if n.kind in ("site", "endpoint")}
    clouds = {n.cloud for n in complaints if n.kind == "cloud"}
    links = []
    for episode in episodes:
        if episode.queue not in queues and episode.site not in sites and episode.cloud not in clouds:
            continue
        if episode.start > last or (episode.end is not None and episode.end < start):
            continue
        strength, why = _match(episode, complaints)
        if strength:
            during = episode.start <= first and (episode.end is None or episode.end >= first)
            score = strength * (1.0 if during else 0.8)
            links.append((episode.id, round(score, 2), why + ("" if during else " (near the ticket's time)")))
    links = [link for link in links if link[1] >= LINK_AT]
    links.sort(key=lambda link: -link[1])
    return links


def _contradicts(incident: CentralIncident, spots: list[Named], errors: list[Named], places: Places) -> str | None:
    """Why the ticket does not look like the incident, if it does not."""
    if incident.queues and spots:
        named = {q for n in spots for q in places.queues(n)}
        if named and not named & set(incident.queues):
            return f"it names {', '.join(sorted({n.value for n in spots}))}, which the incident did not hit"
    classes = {n.error_class for n in errors if n.error_class in ("site", "user", "central")}
    if classes and "central" not in classes:
        return f"its errors are {' and '.join(sorted(classes))}-class"
    return None


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
