"""The simulated grid: virtual time, job outcomes and durations sampled from a scenario.

It answers the same Backend calls as the embedded grid and PanDA, but nothing runs: when a job is
submitted its whole life is drawn at once (queue wait, start, end, outcome) from the queue's fault
profile at the time it would start, and `status(now)` reports where that life is at `now`. The draws
for the k-th job of a queue come from a random stream keyed by (seed, queue, k), so two policies
run on the same scenario and seed meet the same luck job for job ("common random numbers").
"""
from __future__ import annotations

import bisect
import itertools
import math
import random
import re
from dataclasses import MISSING, dataclass, fields, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Annotated, Any, Literal, Sequence

from pydantic import Field, ValidationError, model_validator

from robot.backends.base import InputFile, JobReport, JobRequest, UserJobHour
from robot.catalogue import DatasetInfo
from robot.clock import Clock
from robot.yamlconfig import (ConfigError, Duration, PositiveInt, Strict, describe_validation_error,
                              load_yaml_model, set_at)
from robot.jobstates import FINAL_STATES, JobStatus, QueueStatus
from robot.downtimes import Downtime
from robot.userjobs import HOUR, hour_of
from robot.topology import EndpointInfo, QueueInfo, SiteInfo, Topology

MICROSECOND = timedelta(microseconds=1)
Probability = Annotated[float, Field(ge=0, le=1)]
Weight = Annotated[float, Field(gt=0)]


class ErrorSpec(Strict):
    """One error a failing job may report: any PanDA pilot error code, with its weight in a mix."""

    code: PositiveInt  # pilotErrorCode; its class comes from the robot's error table, as for real jobs
    weight: Weight = 1.0
    diag: str = ""  # pilotErrorDiag (default: a generic text naming the code)
    exe_code: int = 0  # exeErrorCode too (a payload that exited non-zero), 0: none
    at: Literal["start", "payload", "end"] = "start"  # fails at stage-in/setup, mid-payload, or at the wall time


def _errors(*specs: tuple[int, str, str]) -> list[ErrorSpec]:
    return [ErrorSpec(code=code, diag=diag, at=at) for code, diag, at in specs]  # type: ignore[arg-type]


# What a failing job reports, by fault mode (a shorthand for `codes`)
FAULT_ERRORS: dict[str, list[ErrorSpec]] = {
    "stagein": _errors((1099, "Get error: Copy command returned error code 256", "start")),
    "stagein_timeout": _errors((1151, "Get error: Copy command timed out", "start")),
    "missing_input": _errors((1331, "Get error: No such file or directory", "start")),
    "no_local_space": _errors((1098, "Get error: No space left on device", "start")),
    "storage_full": _errors((1333, "Put error: No space left on device", "end")),
    "stageout": _errors((1137, "Put error: Copy command returned error code 256", "end")),
    "container": _errors((1306, "Singularity failed to start the container", "start")),
    "cvmfs": _errors((1377, "CVMFS is not alive", "start")),
    "crash": _errors((1203, "Payload was killed by signal 11 (SIGSEGV)", "payload")),
}
# Healthy queues' random failures. Real site noise is not spread evenly: stage-in and stage-out
# problems dominate, then timeouts, lost files, containers and the network.
SITE_NOISE = [ErrorSpec(code=1099, weight=30, diag="Get error: Copy command returned error code 256"),
              ErrorSpec(code=1137, weight=20, diag="Put error: Copy command returned error code 256", at="end"),
              ErrorSpec(code=1151, weight=15, diag="Get error: Copy command timed out"),
              ErrorSpec(code=1331, weight=10, diag="Get error: No such file or directory"),
              ErrorSpec(code=1306, weight=10, diag="Singularity failed to start the container"),
              ErrorSpec(code=1327, weight=5, diag="Network is unreachable"),
              ErrorSpec(code=1377, weight=5, diag="CVMFS is not alive"),
              ErrorSpec(code=1171, weight=5, diag="Get error: failed xrdadler32 checksum")]
USER_FAILURE = ErrorSpec(code=1305, exe_code=1, at="payload",
                         diag="Payload failed with exit code 1: Traceback (most recent call last) ...")
USER_NOISE = [USER_FAILURE.model_copy(update={"weight": 4}),
              ErrorSpec(code=1235, at="payload", diag="Payload exceeded maximum allowed memory")]
UNKNOWN_NOISE = [ErrorSpec(code=1213, at="end", diag="Reached maximum wall time"),
                 ErrorSpec(code=1201, at="payload", diag="Job killed by signal 15 (SIGTERM)")]
CENTRAL_FAILURE = ErrorSpec(code=1324, diag="service is not available at the moment")


# What users' own jobs report when they fail for reasons of their own: their code (1305 with an exe
# code), memory, loops, bad arguments, wall time (a mixed class). Users' own bugs, not the sites'.
USER_JOB_CODES = [ErrorSpec(code=1305, weight=6, exe_code=1, at="payload", diag="Payload failed with exit code 1"),
                  ErrorSpec(code=1235, weight=2, at="payload", diag="Payload exceeded maximum allowed memory"),
                  ErrorSpec(code=1150, weight=1, at="payload", diag="Looping job killed by the pilot"),
                  ErrorSpec(code=1349, weight=1, at="start", diag="Bad transformation arguments"),
                  ErrorSpec(code=1213, weight=1, at="end", diag="Reached maximum wall time")]


class UserTraffic(Strict):
    """Users' own analysis jobs at every queue, which PanDA counts (`Backend.user_job_stats`).

    Their failures: their own (`failure`, reporting `codes`: user bugs, not the site's), the
    site's random noise (`noise.site` and its codes, as for test jobs), and every fault, central
    outage and user wave of the scenario that is on when they end, with its own probability. A job
    that would have started (`job.duration` before its end) at a stuck queue never ends."""

    jobs_per_hour: Annotated[float, Field(ge=0)] = 0.0  # per queue (0: no user traffic)
    failure: Probability = 0.1  # share failing for their own reasons
    codes: list[ErrorSpec] = Field(default_factory=lambda: list(USER_JOB_CODES), min_length=1)


class JobShape(Strict):
    duration: Duration = timedelta(minutes=40)  # median healthy wall time
    duration_spread: Annotated[float, Field(ge=0, le=2)] = 0.3  # lognormal sigma
    queue_wait: Duration = timedelta(minutes=10)  # mean of an exponential
    fail_after: Duration = timedelta(minutes=3)  # mean time from start to a failure at stage-in or setup
    events: PositiveInt = 20000


class Noise(Strict):
    """Failures of healthy queues: a probability per job and a mix of codes for each class."""

    site: Probability = 0.01
    user: Probability = 0.03
    unknown: Probability = 0.005
    site_codes: list[ErrorSpec] = Field(default_factory=lambda: list(SITE_NOISE), min_length=1)
    user_codes: list[ErrorSpec] = Field(default_factory=lambda: list(USER_NOISE), min_length=1)
    unknown_codes: list[ErrorSpec] = Field(default_factory=lambda: list(UNKNOWN_NOISE), min_length=1)
    # Queues are not equally flaky: each queue's site and unknown noise is multiplied by a factor
    # drawn once per (seed, queue) from a lognormal of this sigma, with median 1 (0: every queue alike).
    spread: Annotated[float, Field(ge=0, le=2)] = 0.0


class QueueSet(Strict):
    count: PositiveInt = 20
    clouds: list[str] = ["DE", "US", "FR", "UK"]
    per_site: PositiveInt = 2


Mode = Literal["stagein", "stagein_timeout", "missing_input", "no_local_space", "storage_full", "stageout",
               "container", "cvmfs", "crash", "stuck", "slow"]


class FaultSpec(Strict):
    """A site problem. Where: `queues` (names, or how many picked at random per seed) or `sites`
    (names, or how many picked at random): every queue of a picked site is hit at once, as when they
    share its storage. What: `mode` (a shorthand) or `codes` (a mix of any codes, of any class)."""

    queues: list[str] | PositiveInt | None = None  # default: 1 queue at random
    sites: list[str] | PositiveInt | None = None
    onset: Duration
    duration: Duration
    mode: Mode = "stagein"
    codes: list[ErrorSpec] | None = Field(default=None, min_length=1)  # instead of the mode's single error
    probability: Probability = 1.0  # share of the jobs that fail (stuck, slow: every job)
    slowdown: Annotated[float, Field(ge=1)] = 4.0  # slow: jobs run this much longer (events/s drops)
    # The site announced this outage as a downtime (as in GOCDB): not the robot's to exclude or blame.
    announced: bool = False

    @model_validator(mode="after")
    def _one_place(self) -> "FaultSpec":
        if self.queues is not None and self.sites is not None:
            raise ValueError("give queues or sites, not both")
        if self.codes is not None and self.mode in ("stuck", "slow"):
            raise ValueError(f"mode {self.mode} fails no job: codes do not apply")
        return self

    @property
    def errors(self) -> list[ErrorSpec]:
        return self.codes or FAULT_ERRORS.get(self.mode, [])


class OutageSpec(Strict):
    """A central service fails: queues everywhere (or in some clouds) see its errors at once. Usually
    central-class codes, but a storage or data-management outage reports site-class ones (1099)."""

    onset: Duration
    duration: Duration
    codes: list[ErrorSpec] = Field(default_factory=lambda: [CENTRAL_FAILURE], min_length=1)
    probability: Probability = 0.8
    clouds: list[str] = []  # empty: all
    share: Annotated[float, Field(gt=0, le=1)] = 1.0  # of those queues, this share (picked per seed) is hit


class WaveSpec(Strict):
    """A bad release of user code or of the test payload: user-class failures, everywhere or at some
    queues (names, or how many picked at random per seed)."""

    onset: Duration
    duration: Duration
    probability: Probability = 0.5
    queues: list[str] | PositiveInt | None = None  # default: every queue
    codes: list[ErrorSpec] = Field(default_factory=lambda: [USER_FAILURE], min_length=1)


class Scenario(Strict):
    name: str
    description: str = ""
    duration: Duration
    step: Duration = timedelta(minutes=5)
    start: datetime = datetime(2026, 1, 5, tzinfo=timezone.utc)
    queues: QueueSet = QueueSet()
    templates: list[str] = ["AFT_A", "AFT_B", "AFT_C"]
    job: JobShape = JobShape()
    noise: Noise = Noise()
    faults: list[FaultSpec] = []
    central_outages: list[OutageSpec] = []
    user_waves: list[WaveSpec] = []
    users: UserTraffic = UserTraffic()

    @model_validator(mode="after")
    def _known_places(self) -> "Scenario":
        names = queue_names(self.queues)
        sites = sorted(set(site_of(self.queues).values()))
        clouds = set(self.queues.clouds)
        problems = []
        for i, fault in enumerate(self.faults):
            problems += _check_place(f"faults[{i}].queues", fault.queues, names, "queue")
            problems += _check_place(f"faults[{i}].sites", fault.sites, sites, "site")
        for i, wave in enumerate(self.user_waves):
            problems += _check_place(f"user_waves[{i}].queues", wave.queues, names, "queue")
        for i, outage in enumerate(self.central_outages):
            unknown = [c for c in outage.clouds if c not in clouds]
            if unknown:
                problems.append(f"central_outages[{i}].clouds: unknown cloud(s) {unknown}; the scenario has "
                                f"{sorted(clouds)}")
        if problems:
            raise ValueError("; ".join(problems))
        return self


def _check_place(where: str, value: list[str] | int | None, known: list[str], what: str) -> list[str]:
    if isinstance(value, list):
        unknown = [q for q in value if q not in known]
        if unknown:
            return [f"{where}: unknown {what}(s) {unknown}; they are named like {known[0]}"]
    elif value is not None and value > len(known):
        return [f"{where}: {value} {what}s asked, the scenario has {len(known)}"]
    return []


def load_scenario(path: Path | str) -> Scenario:
    return load_yaml_model(path, Scenario)


_KEY_PART = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)((?:\[\d+\])*)")


def with_values(scenario: Scenario, changes: dict[str, Any], where: str) -> Scenario:
    """The scenario with some values replaced, each named by its key path (`noise.user`, `faults[0].duration`)."""
    raw = scenario.model_dump()
    for key, value in changes.items():
        steps: list[str | int] = []
        for part in key.split("."):
            match = _KEY_PART.fullmatch(part)
            if not match:
                raise ConfigError(where, [f"{key}: not a key path like noise.user or faults[0].duration"])
            steps += [match.group(1), *(int(i) for i in re.findall(r"\d+", match.group(2)))]
        missing = set_at(raw, steps, value)
        if missing is not None:
            raise ConfigError(where, [f"{key}: the scenario has no {_path(steps[:missing + 1])}"])
    try:
        return Scenario.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(where, describe_validation_error(exc)) from exc


def _path(steps: list[str | int]) -> str:
    return "".join(f"[{s}]" if isinstance(s, int) else (f".{s}" if i else s) for i, s in enumerate(steps))


def queue_names(spec: QueueSet) -> list[str]:
    return [f"ANALY_{_site_name(spec, i // spec.per_site)}_{i % spec.per_site + 1}" for i in range(spec.count)]


def site_of(spec: QueueSet) -> dict[str, str]:
    return {q: _site_name(spec, i // spec.per_site) for i, q in enumerate(queue_names(spec))}


def _site_name(spec: QueueSet, index: int) -> str:
    return f"{spec.clouds[index % len(spec.clouds)]}-SITE{index:03d}"


@dataclass(frozen=True)
class FaultWindow:
    """A fault placed on one queue in absolute time: the ground truth the simulator scores against."""

    queue: str
    start: datetime
    end: datetime
    mode: str
    probability: float
    slowdown: float = 4.0
    errors: tuple[ErrorSpec, ...] = ()  # what its failing jobs report
    announced: bool = False  # a downtime the site announced

    def active(self, when: datetime) -> bool:
        return self.start <= when < self.end

    @property
    def excludable(self) -> bool:
        """A slow queue still completes its jobs: a throughput matter, not a case for exclusion; and
        an outage the site announced is not the robot's to exclude."""
        return self.mode != "slow" and not self.announced


def place_faults(scenario: Scenario, seed: int) -> list[FaultWindow]:
    names = queue_names(scenario.queues)
    sites = site_of(scenario.queues)
    rng = random.Random(f"faults:{seed}:{scenario.name}")
    windows = []
    for fault in scenario.faults:
        if fault.sites is not None:
            picked = fault.sites if isinstance(fault.sites, list) else rng.sample(sorted(set(sites.values())),
                                                                                   fault.sites)
            queues = [q for q in names if sites[q] in picked]
        else:
            queues = _pick(fault.queues if fault.queues is not None else 1, names, rng)
        start = scenario.start + fault.onset
        windows += [FaultWindow(q, start, start + fault.duration, fault.mode, fault.probability, fault.slowdown,
                                tuple(fault.errors), fault.announced) for q in queues]
    return windows


def _pick(spec: list[str] | int, names: list[str], rng: random.Random) -> list[str]:
    return spec if isinstance(spec, list) else rng.sample(names, spec)


@dataclass(frozen=True)
class _UserHour:
    """The users' jobs that end at one queue in one hour: each one's end (microseconds into the hour), sorted,
    and the failed ones' (end, error) in the order drawn, the order their errors are counted in."""

    hour: datetime
    ends: list[int]
    failed: list[tuple[int, tuple[str, int]]]

    def between(self, start: int, stop: int) -> tuple[int, int, dict[tuple[str, int], int]]:
        """Jobs ended, failed and per error, of those ending in [start, stop) microseconds into the hour."""
        ended = bisect.bisect_left(self.ends, stop) - bisect.bisect_left(self.ends, start)
        errors: dict[tuple[str, int], int] = {}
        for end, error in self.failed:
            if start <= end < stop:
                errors[error] = errors.get(error, 0) + 1
        return ended, sum(errors.values()), errors

    @property
    def counts(self) -> tuple[int, int, dict[tuple[str, int], int]]:
        errors: dict[tuple[str, int], int] = {}
        for _, error in self.failed:
            errors[error] = errors.get(error, 0) + 1
        return len(self.ends), len(self.failed), errors


def microseconds(seconds: float) -> int:
    """`timedelta(seconds=seconds)` in whole microseconds, as it rounds them (the fraction of a second times
    a million, half to even), without making the timedelta: the users' jobs draw a million of them a week."""
    whole = int(seconds)
    return whole * 1_000_000 + round((seconds - whole) * 1e6)


class _Job:
    """A submitted job's drawn life, and what it reports now (`report`, as last asked: None while it waits and has
    not been asked, then activated until it starts; made only when asked)."""

    __slots__ = ("panda_id", "queue", "created", "start", "end", "final", "report", "started")

    def __init__(self, panda_id: int, queue: str, created: datetime, start: datetime, end: datetime,
                 final: JobReport):
        self.panda_id, self.queue, self.created, self.start, self.end = panda_id, queue, created, start, end
        self.final = final  # what the job reports once it has ended
        self.report: JobReport | None = None
        self.started = False

    def waiting(self) -> JobReport:
        """What it reports while it waits at the queue, as submitted."""
        return _report(panda_id=self.panda_id, job_status=JobStatus.ACTIVATED, queue=self.queue,
                       creation_time=self.created)


_REPORT_DEFAULTS = {f.name: f.default for f in fields(JobReport) if f.default is not MISSING}
_REPORT_FACTORIES = {f.name: f.default_factory for f in fields(JobReport) if f.default_factory is not MISSING}


def _report(**values: Any) -> JobReport:
    """`JobReport(**values)`, the same object, without its constructor: a frozen dataclass sets each of its 24
    fields through object.__setattr__ (about 5 us a report, 2 us here). For the reports a job gives while it
    waits and runs, which its next replaces: its attributes do not share their names with other reports' as
    the constructor's do, and take 1 kB, not 0.4 (the final report, kept while the grid lives, is constructed)."""
    report = object.__new__(JobReport)
    attributes = report.__dict__
    attributes.update(_REPORT_DEFAULTS)
    for name, factory in _REPORT_FACTORIES.items():
        attributes[name] = factory()
    attributes.update(values)
    return report


class SimulatedGrid:
    """A Backend, TopologySource and Catalogue in virtual time."""

    name = "simulated"

    def __init__(self, scenario: Scenario, clock: Clock, seed: int):
        self.scenario = scenario
        self.clock = clock
        self.seed = seed
        self.faults = place_faults(scenario, seed)
        names = queue_names(scenario.queues)
        self._site_of = site_of(scenario.queues)
        self._cloud_of = {q: self._site_of[q].split("-")[0] for q in names}
        self._faults_of: dict[str, list[FaultWindow]] = {q: [] for q in names}
        for window in self.faults:
            self._faults_of[window.queue].append(window)
        self._sequence = {q: 0 for q in names}
        # who a central outage or a user wave hits, and how flaky each healthy queue is, fixed per seed
        rng = random.Random(f"places:{seed}:{scenario.name}")
        self._outage_queues = [self._outage_place(o, names, rng) for o in scenario.central_outages]
        self._wave_queues = [set(_pick(w.queues, names, rng)) if w.queues is not None else set(names)
                             for w in scenario.user_waves]
        spread = scenario.noise.spread
        self._flakiness = {q: random.Random(f"noise:{seed}:{q}").lognormvariate(0, spread) if spread else 1.0
                           for q in names}
        self._jobs: dict[int, _Job] = {}
        # users' traffic: every hour drawn, as the answer for the whole hour; and each queue's last hour read
        # in part, job by job
        self._user_counts: dict[tuple[str, datetime], UserJobHour] = {}
        self._user_parts: dict[str, _UserHour] = {}
        # the draw below which a user's job fails with the site's noise, and with the users' own bugs
        self._user_noise_below = {q: (site, site + scenario.users.failure)
                                  for q in names for site in [min(1.0, scenario.noise.site * self._flakiness[q])]}
        # per queue, the central outages and user waves that hit it, each with its window (start, end) in absolute
        # time, in the scenario's order: a draw looks only at its queue's (most queues have none)
        self._outages_of = {q: [(o, *self._window(o)) for o, hit in zip(scenario.central_outages, self._outage_queues)
                                if q in hit] for q in names}
        self._waves_of = {q: [(w, *self._window(w)) for w, hit in zip(scenario.user_waves, self._wave_queues)
                              if q in hit] for q in names}
        # per queue, the draws below which a test job fails with the site's, users' and unknown noise
        noise = scenario.noise
        self._noise_below = {q: (site, site + noise.user, site + noise.user + unknown) for q in names
                             for site, unknown in [(min(1.0, noise.site * self._flakiness[q]),
                                                    min(1.0, noise.unknown * self._flakiness[q]))]}
        shape = scenario.job
        self._wait_rate = 1 / max(1.0, shape.queue_wait.total_seconds())
        self._fail_rate = 1 / max(1.0, shape.fail_after.total_seconds())
        self._mixes: dict[int, tuple[Sequence[ErrorSpec], list[float]]] = {}  # id of a mix of errors -> running weights
        self._names: dict[str, int] = {}
        self._statuses: dict[str, QueueStatus] = {}
        self._topology: Topology | None = None
        self.submitted = 0
        self._files = tuple(InputFile(f"sim.{i}.root", f"guid-{i}", "hc_test", "mc23_sim.DAOD_PHYS", 10**8,
                                      scenario.job.events) for i in range(2))

    # -- topology and catalogue --------------------------------------------------------------------
    def topology(self) -> Topology:
        """The scenario's grid, which never changes: made once, the same object at every read (the loop
        compares each read with the last one)."""
        if self._topology is None:
            sites = sorted(set(self._site_of.values()))
            self._topology = Topology(
                sites=tuple(SiteInfo(s, s.split("-")[0]) for s in sites),
                endpoints=tuple(EndpointInfo(f"{s}_DATADISK", s) for s in sites),
                queues=tuple(QueueInfo(q, s, self._cloud_of[q], (f"{s}_DATADISK",)) for q, s in self._site_of.items()),
            )
        return self._topology

    def complete_datasets(self, endpoint: str, pattern: str) -> list[DatasetInfo]:
        return [DatasetInfo("hc_test", "mc23_sim.DAOD_PHYS", self._files)]

    # -- backend -------------------------------------------------------------------------------------
    def submit(self, jobs: Sequence[JobRequest]) -> list[int]:
        now = self.clock.now()
        ids = []
        for request in jobs:
            panda_id = len(self._jobs) + 1
            self._jobs[panda_id] = self._draw(panda_id, request.queue, now)
            self._names[request.job_name] = panda_id
            ids.append(panda_id)
        self.submitted += len(jobs)
        return ids

    def status(self, panda_ids: Sequence[int]) -> dict[int, JobReport | None]:
        now = self.clock.now()
        jobs = self._jobs
        found: dict[int, JobReport | None] = {}
        for panda_id in panda_ids:
            job = jobs.get(panda_id)
            if job is None:
                found[panda_id] = None
                continue
            report = job.report
            if report is not None and report.job_status in FINAL_STATES:
                pass
            elif now >= job.end:
                report = job.report = job.final
            elif now >= job.start:
                if not job.started:
                    report = job.report = _report(panda_id=panda_id, job_status=JobStatus.RUNNING, queue=job.queue,
                                                  creation_time=job.created, start_time=job.start)
                    job.started = True
            elif report is None:
                report = job.report = job.waiting()
            found[panda_id] = report
        return found

    def find(self, job_names: Sequence[str]) -> dict[str, int | None]:
        return {name: self._names.get(name) for name in job_names}

    def kill(self, panda_ids: Sequence[int]) -> dict[int, bool]:
        now = self.clock.now()
        done = {}
        for panda_id in panda_ids:
            job = self._jobs.get(panda_id)
            if job is None or (job.report is not None and job.report.job_status in FINAL_STATES) or now >= job.end:
                done[panda_id] = False
                continue
            job.report = replace(job.report or job.waiting(), job_status=JobStatus.CANCELLED, end_time=now,
                                 task_buffer_error_code=100, task_buffer_error_diag="killed on request")
            done[panda_id] = True
        return done

    def queue_status(self) -> dict[str, QueueStatus]:
        return {q: self._statuses.get(q, QueueStatus.ONLINE) for q in self._site_of}

    # -- announced downtimes (what GOCDB would list) ------------------------------------------------
    def downtimes(self, now: datetime) -> list[Downtime]:
        found = {(self._site_of[w.queue], w.start, w.end) for w in self.faults if w.announced}
        return [Downtime(key=f"{site}@{start:%Y%m%d%H%M}", site=site, start=start, end=end,
                         description=f"scenario {self.scenario.name}") for site, start, end in sorted(found)]

    def set_queue_status(self, queue: str, status: QueueStatus, reason: str, actor: str) -> None:
        if queue not in self._site_of:
            raise ValueError(f"unknown queue {queue!r}")
        self._statuses[queue] = status

    # -- users' own jobs (what PanDA counts of everyone's analysis jobs) ------------------------------
    def user_job_stats(self, since: datetime, until: datetime) -> list[UserJobHour]:
        """Users' jobs that ended in [since, until), per queue and hour (within the scenario)."""
        if not self.scenario.users.jobs_per_hour:
            return []
        first, end = max(hour_of(since), hour_of(self.scenario.start)), min(until, self.scenario.start + self.scenario.duration)
        hours = []  # each hour, whether it is read whole, and if not the part read (microseconds into the hour)
        while first < end:
            hours.append((first, since <= first and first + HOUR <= until, (since - first) // MICROSECOND,
                          (until - first) // MICROSECOND))
            first += HOUR
        found = []
        whole_hours = self._user_counts
        for queue in self._site_of:
            for hour, whole, start, stop in hours:
                if whole:  # an hour drawn is counted once, and the same answer given again
                    counted = whole_hours.get((queue, hour))
                    if counted is None:
                        self._user_hour(queue, hour)
                        counted = whole_hours[(queue, hour)]
                    if counted.ended:
                        found.append(counted)
                    continue
                counts = self._user_part(queue, hour).between(start, stop)
                if counts[0]:
                    found.append(UserJobHour(queue, hour, *counts))
        return found

    def _user_part(self, queue: str, hour: datetime) -> _UserHour:
        """The users' jobs of an hour read in part: the queue's last such hour is kept (the current one, which
        every read cuts), another is drawn again."""
        kept = self._user_parts.get(queue)
        if kept is None or kept.hour != hour:
            kept = self._user_parts[queue] = self._user_hour(queue, hour)
        return kept

    def _user_hour(self, queue: str, hour: datetime) -> _UserHour:
        """The users' jobs ending at `queue` in `hour`, drawn from the stream of (seed, queue, hour): the same
        jobs at every draw. Its counts are kept (`_user_counts`, as the whole hour's answer), its jobs' ends
        only by the caller."""
        users = self.scenario.users
        rng = random.Random(f"users:{self.seed}:{queue}:{hour:%Y%m%d%H}")
        jobs = _poisson(rng, users.jobs_per_hour)
        quiet = self._quiet(queue, hour, hour + HOUR)  # only noise can fail them: no need to look further
        stuck = [f for f in self._faults_of[queue] if f.mode == "stuck"]
        duration = self.scenario.job.duration
        ends: list[int] = []
        failed: list[tuple[int, tuple[str, int]]] = []
        draws = iter(rng.random, None)  # per job, in this order: where in the hour it ends, then the five below
        for _, u_end, u_fault, u_central, u_wave, u_noise, u_code in zip(range(jobs), *[draws] * 6):
            end = microseconds(u_end * 3600)
            if stuck and any(f.active(hour + timedelta(microseconds=end) - duration) for f in stuck):
                continue  # a stuck queue starts nothing: its users' jobs stop ending once the running ones end
            errors = (self._user_noise(queue, u_noise) if quiet
                      else self._user_failure(queue, hour + timedelta(microseconds=end), u_fault, u_central, u_wave,
                                              u_noise))
            ends.append(end)
            if errors:
                failed.append((end, ("pilot", self._pick(errors, u_code).code)))
        ends.sort()
        drawn = _UserHour(hour, ends, failed)
        self._user_counts[(queue, hour)] = UserJobHour(queue, hour, *drawn.counts)
        return drawn

    def _user_failure(self, queue: str, when: datetime, u_fault: float, u_central: float, u_wave: float,
                      u_noise: float) -> Sequence[ErrorSpec] | None:
        """What a user's job ending at `when` fails with (None: it completes): the site's fault first."""
        fault = next((f for f in self._faults_of[queue] if f.active(when) and f.errors), None)
        if fault and u_fault < fault.probability:
            return fault.errors
        outage = _active(self._outages_of[queue], when)
        if outage and u_central < outage.probability:
            return outage.codes
        wave = _strongest(self._waves_of[queue], when)
        if wave and u_wave < wave.probability:
            return wave.codes
        return self._user_noise(queue, u_noise)

    def _user_noise(self, queue: str, u_noise: float) -> Sequence[ErrorSpec] | None:
        """What a user's job fails with when no fault, outage or wave is on: the site's noise, the users' own bugs."""
        site, own = self._user_noise_below[queue]
        if u_noise < site:
            return self.scenario.noise.site_codes
        if u_noise < own:
            return self.scenario.users.codes
        return None

    # -- sampling ----------------------------------------------------------------------------------
    def _outage_place(self, outage: OutageSpec, names: list[str], rng: random.Random) -> set[str]:
        eligible = [q for q in names if not outage.clouds or self._cloud_of[q] in outage.clouds]
        return set(eligible if outage.share >= 1 else rng.sample(eligible, max(1, round(outage.share * len(eligible)))))

    def _draw(self, panda_id: int, queue: str, now: datetime) -> _Job:
        """Draw the whole life of the k-th job of `queue`, in a fixed order of random draws."""
        k = self._sequence[queue]
        self._sequence[queue] = k + 1
        rng = random.Random(f"{self.seed}:{queue}:{k}")
        shape = self.scenario.job
        wait = timedelta(seconds=rng.expovariate(self._wait_rate))
        duration = shape.duration * rng.lognormvariate(0, shape.duration_spread)
        fail_after = timedelta(seconds=rng.expovariate(self._fail_rate))
        u_fault, u_central, u_wave, u_noise, u_code = rng.random(), rng.random(), rng.random(), rng.random(), rng.random()

        start = now + wait
        faults = self._faults_of[queue]
        fault = next((f for f in faults if f.active(start)), None) if faults else None
        if fault and fault.mode == "stuck":
            start = max(start, fault.end) + wait  # nothing starts until the queue is unblocked
            fault = next((f for f in faults if f.active(start)), None)
        errors: Sequence[ErrorSpec] | None = None
        if fault and fault.errors and u_fault < fault.probability:
            errors = fault.errors
        elif (outage := _active(self._outages_of[queue], start)) and u_central < outage.probability:
            errors = outage.codes
        elif (wave := _strongest(self._waves_of[queue], start)) and u_wave < wave.probability:
            errors = wave.codes
        else:
            noise = self.scenario.noise
            site, user, unknown = self._noise_below[queue]
            if u_noise < site:
                errors = noise.site_codes
            elif u_noise < user:
                errors = noise.user_codes
            elif u_noise < unknown:
                errors = noise.unknown_codes
        timing = {"stagein": 60.0, "setup": 30.0, "stageout": 20.0}
        if errors is not None:
            error = self._pick(errors, u_code)
            end = start + (fail_after if error.at == "start" else duration / 2 if error.at == "payload" else duration)
            final = JobReport(panda_id=panda_id, job_status=JobStatus.FAILED, queue=queue, creation_time=now,
                              start_time=start, end_time=end, pilot_timing=timing, pilot_error_code=error.code,
                              pilot_error_diag=error.diag or f"pilot error {error.code}", exe_error_code=error.exe_code,
                              exe_error_diag="Traceback (most recent call last) ..." if error.exe_code else "")
            return _Job(panda_id, queue, now, start, end, final)
        if fault and fault.mode == "slow":
            duration *= fault.slowdown
        end = start + duration
        final = JobReport(panda_id=panda_id, job_status=JobStatus.FINISHED, queue=queue, creation_time=now,
                          start_time=start, end_time=end, trans_exit_code=0, n_events=shape.events,
                          cpu_consumption_time=duration.total_seconds() * 0.85,
                          pilot_timing={**timing, "payload": duration.total_seconds() - 110})
        return _Job(panda_id, queue, now, start, end, final)

    def _quiet(self, queue: str, start: datetime, end: datetime) -> bool:
        """Whether no failing fault, central outage or user wave hits `queue` at any time in [start, end)."""
        scenario = self.scenario
        return (not any(f.errors and f.start < end and start < f.end for f in self._faults_of[queue])
                and not any(queue in hit and scenario.start + o.onset < end and start < scenario.start + o.onset + o.duration
                            for o, hit in zip(scenario.central_outages, self._outage_queues))
                and not any(queue in hit and scenario.start + w.onset < end and start < scenario.start + w.onset + w.duration
                            for w, hit in zip(scenario.user_waves, self._wave_queues)))

    def _pick(self, errors: Sequence[ErrorSpec], u: float) -> ErrorSpec:
        """The error of a weighted mix that the uniform draw `u` in [0, 1) falls on: the first whose running
        weight is above u times the total (each mix's running weights are summed once)."""
        mix = self._mixes.get(id(errors))
        if mix is None:  # kept with the mix: its id stays its own
            mix = self._mixes[id(errors)] = (errors, list(itertools.accumulate(e.weight for e in errors)))
        running = mix[1]
        return errors[min(bisect.bisect_right(running, u * running[-1]), len(errors) - 1)]

    def _window(self, spec: WaveSpec | OutageSpec) -> tuple[datetime, datetime]:
        start = self.scenario.start + spec.onset
        return start, start + spec.duration


def _active(windows: list[tuple[OutageSpec, datetime, datetime]], when: datetime) -> OutageSpec | None:
    """The first of a queue's central outages on at `when`."""
    return next((spec for spec, start, end in windows if start <= when < end), None) if windows else None


def _strongest(windows: list[tuple[WaveSpec, datetime, datetime]], when: datetime) -> WaveSpec | None:
    """The most probable of a queue's user waves on at `when` (the first of equals)."""
    if not windows:
        return None
    return max((spec for spec, start, end in windows if start <= when < end), key=lambda w: w.probability, default=None)


def _poisson(rng: random.Random, mean: float) -> int:
    """A Poisson draw (Knuth's method; a normal approximation for large means)."""
    if mean > 50:
        return max(0, round(rng.gauss(mean, mean ** 0.5)))
    limit, k, product = math.exp(-mean), 0, rng.random()
    while product > limit:
        k += 1
        product *= rng.random()
    return k

