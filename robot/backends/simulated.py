"""The simulated grid: virtual time, job outcomes and durations sampled from a scenario.

It answers the same Backend calls as the embedded grid and PanDA, but nothing runs: when a job is
submitted its whole life is drawn at once (queue wait, start, end, outcome) from the queue's fault
profile at the time it would start, and `status(now)` reports where that life is at `now`. The draws
for the k-th job of a queue come from a random stream keyed by (seed, queue, k), so two policies
run on the same scenario and seed meet the same luck job for job ("common random numbers").
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Annotated, Any, Literal, Sequence

from pydantic import Field, ValidationError, model_validator

from robot.backends.base import InputFile, JobReport, JobRequest
from robot.catalogue import DatasetInfo
from robot.clock import Clock
from robot.yamlconfig import (ConfigError, Duration, PositiveInt, Strict, describe_validation_error,
                              load_yaml_model)
from robot.jobstates import FINAL_STATES, JobStatus, QueueStatus
from robot.topology import EndpointInfo, QueueInfo, SiteInfo, Topology

Probability = Annotated[float, Field(ge=0, le=1)]

# Error a failing job reports, by fault mode: (pilot error code, diagnostic)
FAULT_ERRORS: dict[str, tuple[int, str]] = {
    "stagein": (1099, "Get error: Copy command returned error code 256"),
    "stagein_timeout": (1151, "Get error: Copy command timed out"),
    "missing_input": (1331, "Get error: No such file or directory"),
    "no_local_space": (1098, "Get error: No space left on device"),
    "storage_full": (1333, "Put error: No space left on device"),
    "stageout": (1137, "Put error: Copy command returned error code 256"),
    "container": (1306, "Singularity failed to start the container"),
    "cvmfs": (1377, "CVMFS is not alive"),
    "crash": (1203, "Payload was killed by signal 11 (SIGSEGV)"),
}
SITE_NOISE_CODES = (1099, 1137, 1306, 1377, 1151)
USER_CODE = (1305, "Payload failed with exit code 1: Traceback (most recent call last) ...")


class JobShape(Strict):
    duration: Duration = timedelta(minutes=40)  # median healthy wall time
    duration_spread: Annotated[float, Field(ge=0, le=2)] = 0.3  # lognormal sigma
    queue_wait: Duration = timedelta(minutes=10)  # mean of an exponential
    fail_after: Duration = timedelta(minutes=3)  # mean time from start to a failure at stage-in or setup
    events: PositiveInt = 20000


class Noise(Strict):
    """Failures of healthy queues."""

    site: Probability = 0.01
    user: Probability = 0.03
    unknown: Probability = 0.005


class QueueSet(Strict):
    count: PositiveInt = 20
    clouds: list[str] = ["DE", "US", "FR", "UK"]
    per_site: PositiveInt = 2


class FaultSpec(Strict):
    queues: list[str] | PositiveInt = 1  # names, or how many queues picked at random from the seed
    onset: Duration
    duration: Duration
    mode: Literal["stagein", "stagein_timeout", "missing_input", "no_local_space", "storage_full", "stageout",
                  "container", "cvmfs", "crash", "stuck", "slow"] = "stagein"
    probability: Probability = 1.0
    slowdown: Annotated[float, Field(ge=1)] = 4.0


class OutageSpec(Strict):
    """A central service fails: every queue (or a cloud's) sees central-class errors."""

    onset: Duration
    duration: Duration
    code: int = 1324  # SERVICENOTAVAILABLE
    diag: str = "service is not available at the moment"
    probability: Probability = 0.8
    clouds: list[str] = []  # empty: all


class WaveSpec(Strict):
    """A bad release of user code or of the test payload: user-class failures everywhere."""

    onset: Duration
    duration: Duration
    probability: Probability = 0.5


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

    @model_validator(mode="after")
    def _known_queues(self) -> "Scenario":
        names = set(queue_names(self.queues))
        for i, fault in enumerate(self.faults):
            if isinstance(fault.queues, list):
                unknown = [q for q in fault.queues if q not in names]
                if unknown:
                    raise ValueError(f"faults[{i}].queues: unknown queue(s) {unknown}; queues are named like "
                                     f"{sorted(names)[0]}")
            elif fault.queues > len(names):
                raise ValueError(f"faults[{i}].queues: {fault.queues} queues asked, the scenario has {len(names)}")
        return self


def load_scenario(path: Path | str) -> Scenario:
    return load_yaml_model(path, Scenario)


_KEY_PART = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)((?:\[\d+\])*)")


def with_values(scenario: Scenario, changes: dict[str, Any], where: str) -> Scenario:
    """The scenario with some values replaced, each named by its key path (`noise.user`, `faults[0].duration`)."""
    raw = scenario.model_dump()
    for key, value in changes.items():
        node: Any = raw
        steps: list[str | int] = []
        for part in key.split("."):
            match = _KEY_PART.fullmatch(part)
            if not match:
                raise ConfigError(where, [f"{key}: not a key path like noise.user or faults[0].duration"])
            steps += [match.group(1), *(int(i) for i in re.findall(r"\d+", match.group(2)))]
        for i, step in enumerate(steps):
            last = i == len(steps) - 1
            found = (step in node) if isinstance(node, dict) and isinstance(step, str) else (
                isinstance(node, list) and isinstance(step, int) and step < len(node))
            if not found:
                raise ConfigError(where, [f"{key}: the scenario has no {_path(steps[:i + 1])}"])
            if last:
                node[step] = value
            else:
                node = node[step]
    try:
        return Scenario.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(where, describe_validation_error(exc)) from exc


def _path(steps: list[str | int]) -> str:
    return "".join(f"[{s}]" if isinstance(s, int) else (f".{s}" if i else s) for i, s in enumerate(steps))


def queue_names(spec: QueueSet) -> list[str]:
    return [f"ANALY_{_site_name(spec, i // spec.per_site)}_{i % spec.per_site + 1}" for i in range(spec.count)]


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

    def active(self, when: datetime) -> bool:
        return self.start <= when < self.end

    @property
    def excludable(self) -> bool:
        """A slow queue still completes its jobs: a throughput matter, not a case for exclusion."""
        return self.mode != "slow"


def place_faults(scenario: Scenario, seed: int) -> list[FaultWindow]:
    names = queue_names(scenario.queues)
    rng = random.Random(f"faults:{seed}:{scenario.name}")
    windows = []
    for fault in scenario.faults:
        queues = fault.queues if isinstance(fault.queues, list) else rng.sample(names, fault.queues)
        start = scenario.start + fault.onset
        windows += [FaultWindow(q, start, start + fault.duration, fault.mode, fault.probability, fault.slowdown)
                    for q in queues]
    return windows


@dataclass
class _Job:
    report: JobReport  # what the job reports now (activated until it starts)
    start: datetime
    end: datetime
    final: JobReport  # what the job reports once it has ended
    started: bool = False


class SimulatedGrid:
    """A Backend, TopologySource and Catalogue in virtual time."""

    name = "simulated"

    def __init__(self, scenario: Scenario, clock: Clock, seed: int):
        self.scenario = scenario
        self.clock = clock
        self.seed = seed
        self.faults = place_faults(scenario, seed)
        names = queue_names(scenario.queues)
        spec = scenario.queues
        self._site_of = {q: _site_name(spec, i // spec.per_site) for i, q in enumerate(names)}
        self._cloud_of = {q: self._site_of[q].split("-")[0] for q in names}
        self._faults_of: dict[str, list[FaultWindow]] = {q: [] for q in names}
        for window in self.faults:
            self._faults_of[window.queue].append(window)
        self._sequence = {q: 0 for q in names}
        self._jobs: dict[int, _Job] = {}
        self._names: dict[str, int] = {}
        self._statuses: dict[str, QueueStatus] = {}
        self.submitted = 0
        self._files = tuple(InputFile(f"sim.{i}.root", f"guid-{i}", "hc_test", "mc23_sim.DAOD_PHYS", 10**8,
                                      scenario.job.events) for i in range(2))

    # -- topology and catalogue --------------------------------------------------------------------
    def topology(self) -> Topology:
        sites = sorted(set(self._site_of.values()))
        return Topology(
            sites=tuple(SiteInfo(s, s.split("-")[0]) for s in sites),
            endpoints=tuple(EndpointInfo(f"{s}_DATADISK", s) for s in sites),
            queues=tuple(QueueInfo(q, s, self._cloud_of[q], (f"{s}_DATADISK",)) for q, s in self._site_of.items()),
        )

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
        found: dict[int, JobReport | None] = {}
        for panda_id in panda_ids:
            job = self._jobs.get(panda_id)
            if job is None:
                found[panda_id] = None
            elif job.report.job_status in FINAL_STATES or now >= job.end:
                if job.report.job_status not in FINAL_STATES:
                    job.report = job.final
                found[panda_id] = job.report
            elif now >= job.start:
                if not job.started:
                    job.report = replace(job.report, job_status=JobStatus.RUNNING, start_time=job.start)
                    job.started = True
                found[panda_id] = job.report
            else:
                found[panda_id] = job.report
        return found

    def find(self, job_names: Sequence[str]) -> dict[str, int | None]:
        return {name: self._names.get(name) for name in job_names}

    def kill(self, panda_ids: Sequence[int]) -> dict[int, bool]:
        now = self.clock.now()
        done = {}
        for panda_id in panda_ids:
            job = self._jobs.get(panda_id)
            if job is None or job.report.job_status in FINAL_STATES or now >= job.end:
                done[panda_id] = False
                continue
            job.report = replace(job.report, job_status=JobStatus.CANCELLED, end_time=now, task_buffer_error_code=100,
                                 task_buffer_error_diag="killed on request")
            done[panda_id] = True
        return done

    def queue_status(self) -> dict[str, QueueStatus]:
        return {q: self._statuses.get(q, QueueStatus.ONLINE) for q in self._site_of}

    def set_queue_status(self, queue: str, status: QueueStatus, reason: str, actor: str) -> None:
        if queue not in self._site_of:
            raise ValueError(f"unknown queue {queue!r}")
        self._statuses[queue] = status

    # -- sampling ----------------------------------------------------------------------------------
    def _draw(self, panda_id: int, queue: str, now: datetime) -> _Job:
        """Draw the whole life of the k-th job of `queue`, in a fixed order of random draws."""
        k = self._sequence[queue]
        self._sequence[queue] = k + 1
        rng = random.Random(f"{self.seed}:{queue}:{k}")
        shape, noise = self.scenario.job, self.scenario.noise
        wait = timedelta(seconds=rng.expovariate(1 / max(1.0, shape.queue_wait.total_seconds())))
        duration = shape.duration * rng.lognormvariate(0, shape.duration_spread)
        fail_after = timedelta(seconds=rng.expovariate(1 / max(1.0, shape.fail_after.total_seconds())))
        u_fault, u_central, u_wave, u_noise = rng.random(), rng.random(), rng.random(), rng.random()
        noise_code = rng.choice(SITE_NOISE_CODES)

        start = now + wait
        fault = next((f for f in self._faults_of[queue] if f.active(start)), None)
        if fault and fault.mode == "stuck":
            start = max(start, fault.end) + wait  # nothing starts until the queue is unblocked
            fault = next((f for f in self._faults_of[queue] if f.active(start)), None)
        report = JobReport(panda_id=panda_id, job_status=JobStatus.ACTIVATED, queue=queue, creation_time=now)
        timing = {"stagein": 60.0, "setup": 30.0, "stageout": 20.0}

        def failed(after: timedelta, **errors: object) -> _Job:
            end = start + after
            final = replace(report, job_status=JobStatus.FAILED, start_time=start, end_time=end,
                            pilot_timing=timing, **errors)  # type: ignore[arg-type]
            return _Job(report, start, end, final)

        if fault and fault.mode not in ("slow",) and u_fault < fault.probability:
            code, diag = FAULT_ERRORS[fault.mode]
            return failed(fail_after if fault.mode != "crash" else duration / 2, pilot_error_code=code,
                          pilot_error_diag=diag)
        outage = next((o for o in self.scenario.central_outages
                       if self._outage_active(o, start, queue)), None)
        if outage and u_central < outage.probability:
            return failed(fail_after, pilot_error_code=outage.code, pilot_error_diag=outage.diag)
        if any(self._window_active(w, start) for w in self.scenario.user_waves) and u_wave < max(
                w.probability for w in self.scenario.user_waves if self._window_active(w, start)):
            return failed(duration / 3, pilot_error_code=USER_CODE[0], pilot_error_diag=USER_CODE[1],
                          exe_error_code=1, exe_error_diag="Traceback")
        if u_noise < noise.site:
            return failed(fail_after, pilot_error_code=noise_code, pilot_error_diag="random site failure")
        if u_noise < noise.site + noise.user:
            return failed(duration / 3, pilot_error_code=USER_CODE[0], pilot_error_diag=USER_CODE[1],
                          exe_error_code=1, exe_error_diag="Traceback")
        if u_noise < noise.site + noise.user + noise.unknown:
            return failed(duration, pilot_error_code=1213, pilot_error_diag="Reached maximum wall time")
        if fault and fault.mode == "slow":
            duration *= fault.slowdown
        end = start + duration
        final = replace(report, job_status=JobStatus.FINISHED, start_time=start, end_time=end, trans_exit_code=0,
                        n_events=shape.events, cpu_consumption_time=duration.total_seconds() * 0.85,
                        pilot_timing={**timing, "payload": duration.total_seconds() - 110})
        return _Job(report, start, end, final)

    def _window_active(self, spec: WaveSpec | OutageSpec, when: datetime) -> bool:
        start = self.scenario.start + spec.onset
        return start <= when < start + spec.duration

    def _outage_active(self, outage: OutageSpec, when: datetime, queue: str) -> bool:
        return self._window_active(outage, when) and (not outage.clouds or self._cloud_of[queue] in outage.clouds)
