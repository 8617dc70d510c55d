"""Benchmark: CPU time of one steady `run_once` (targets: 0.1 s at 1,000 queues x 3 templates, 1 s at 10,000).

The backend does no work (it accepts every job at once and answers status from reports it built
once), so the figure is the robot's own cost: planning, bookkeeping in SQLite, batched polling,
the rollup and the exclusion engine (dry-run). Steady steps are measured twice: with every job
still running, and with a share of the jobs finishing each step (their results stored and their
successors submitted), as in production. The default policy waits `stable_gap` after a job ends
before it sends the next to a stable queue, so in production a step sends the successors of the
jobs that ended a gap ago, about as many as it sees end: here a job is reported to have ended one
gap ago, so that its successor goes out in the same step and the jobs in flight stay constant.
CPU time of this process (SQLite runs in it), median of the steps, so that other work on a busy
machine does not count. `--profile N` prints the N costliest functions of the finishing steps
(cProfile, CPU time).

    python bench/loop.py [--queues 1000] [--templates 3] [--steps 5] [--finishing 0.1] [--profile 30] [--parts]
"""
from __future__ import annotations

import argparse
import cProfile
import inspect
import itertools
import io
import os
import pstats
import resource
import statistics
import tempfile
import time
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Sequence

from sqlalchemy.orm import Session

from blacklist.engine import ExclusionEngine
from robot import rollup
from blacklist.policies import Policy
from blacklist.settings import BlacklistSettings
from robot.backends.base import InputFile, JobReport, JobRequest
from robot.catalogue import DatasetInfo
from robot.classify import load_table
from robot.config import RobotConfig
from robot.jobstates import JobStatus, QueueStatus
from robot import loop
from robot.loop import Robot, settle
from robot.workers import Workers
from robot.storage.database import make_engine, make_sessionmaker, upgrade
from robot.topology import EndpointInfo, QueueInfo, SiteInfo, Topology


class NullGrid:
    """Backend, topology and catalogue that answer instantly and never change anything."""

    name = "null"

    def __init__(self, queues: int, ended_ago: timedelta):
        self._ids = itertools.count(1)
        self.finishing = 0.0  # share of the polled jobs reported finished
        self.now = datetime(2026, 11, 1, tzinfo=timezone.utc)  # the step's time: finished jobs ended `ended_ago` before it
        self.ended_ago = ended_ago
        self._running: dict[int, JobReport] = {}  # built once: a real backend's parsing is not the robot's cost
        sites = [SiteInfo(f"SITE-{i}", f"CLOUD{i % 10}") for i in range(queues // 4 + 1)]
        self._topology = Topology(
            sites=tuple(sites),
            endpoints=tuple(EndpointInfo(f"{s.name}_DATADISK", s.name) for s in sites),
            queues=tuple(QueueInfo(f"ANALY_Q{i:04d}", f"SITE-{i // 4}", f"CLOUD{(i // 4) % 10}",
                                   (f"SITE-{i // 4}_DATADISK",)) for i in range(queues)),
        )
        files = tuple(InputFile(f"f{i}.root", f"guid-{i}", "hc_test", "mc23.bench.DAOD_PHYS", 10**6, 10**4)
                      for i in range(4))
        self._dataset = [DatasetInfo("hc_test", "mc23.bench.DAOD_PHYS", files)]

    def topology(self) -> Topology:
        return self._topology

    def complete_datasets(self, endpoint: str, pattern: str) -> list[DatasetInfo]:
        return self._dataset

    def submit(self, jobs: Sequence[JobRequest]) -> list[int]:
        return [next(self._ids) for _ in jobs]

    def status(self, panda_ids: Sequence[int]) -> dict[int, JobReport | None]:
        cut = int(len(panda_ids) * self.finishing)
        found: dict[int, JobReport | None] = {}
        for pid in panda_ids[:cut]:
            found[pid] = self._finished(pid)
            self._running.pop(pid, None)  # never asked again: kept, it would only grow the heap the collector scans
        for pid in panda_ids[cut:]:
            report = self._running.get(pid)
            if report is None:
                report = self._running[pid] = JobReport(panda_id=pid, job_status=JobStatus.RUNNING)
            found[pid] = report
        return found

    def find(self, job_names: Sequence[str]) -> dict[str, int | None]:
        return {name: None for name in job_names}

    def _finished(self, pid: int) -> JobReport:
        start = self.now - self.ended_ago - timedelta(seconds=300)
        return JobReport(panda_id=pid, job_status=JobStatus.FINISHED, creation_time=start, start_time=start,
                         end_time=start + timedelta(seconds=300), trans_exit_code=0, n_events=20000,
                         cpu_consumption_time=250.0,
                         pilot_timing={"getjob": 1, "stagein": 20, "setup": 10, "payload": 260, "stageout": 5})

    def kill(self, panda_ids: Sequence[int]) -> dict[int, bool]:
        return {pid: True for pid in panda_ids}

    def queue_status(self) -> dict[str, QueueStatus]:
        return {}

    def set_queue_status(self, queue: str, status: QueueStatus, reason: str, actor: str) -> None:
        pass


class Parts:
    """CPU time of a step split by part (`--parts`): each part's own time, without the parts it calls."""

    def __init__(self) -> None:
        self.steps: list[dict[str, float]] = []
        self._stack = ["other"]
        self._mark = 0.0

    def wrap(self, owner: object, name: str, label: str) -> None:
        original = getattr(owner, name)

        def timed(*args: object, **kwargs: object) -> object:
            self._switch(lambda: self._stack.append(label))
            try:
                return original(*args, **kwargs)
            finally:
                self._switch(self._stack.pop)

        setattr(owner, name, staticmethod(timed) if isinstance(inspect.getattr_static(owner, name), staticmethod)
                else timed)

    def _switch(self, change) -> None:  # type: ignore[no-untyped-def]
        now = time.process_time()
        if self.steps:
            self.steps[-1][self._stack[-1]] += now - self._mark
        change()
        self._mark = time.process_time()

    def start(self) -> None:
        self.steps.append(defaultdict(float))
        self._mark = time.process_time()

    def stop(self) -> None:
        self._switch(lambda: None)

    def report(self, count: int) -> str:
        measured = self.steps[-count:]
        labels = sorted({label for step in measured for label in step},
                        key=lambda label: -statistics.median(step.get(label, 0.0) for step in measured))
        return "\n".join(f"  {label:28s} {1000 * statistics.median(step.get(label, 0.0) for step in measured):6.1f} ms"
                         for label in labels)


def measure_parts(parts: Parts, robot: Robot, grid: "NullGrid") -> None:
    """Time the step's parts (the parts' own CPU, median of the finishing steps)."""
    for name in ("_reconcile_unconfirmed", "_read_queue_status", "_poll", "_time_out_waiting_jobs", "_submit",
                 "_slot_states", "_submission_context"):
        parts.wrap(Robot, name, name.strip("_"))
    parts.wrap(Workers, "step", "workers (beat, lease)")
    parts.wrap(rollup, "update", "rollup update")
    parts.wrap(loop, "update_jobs", "update_jobs")
    parts.wrap(loop, "_heartbeat", "heartbeat")
    parts.wrap(Session, "commit", "commits")
    parts.wrap(ExclusionEngine, "__call__", "exclusion engine")
    for name in ("submit", "status", "find", "complete_datasets", "queue_status"):
        parts.wrap(grid, name, "bench's fake backend")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queues", type=int, default=1000)
    parser.add_argument("--templates", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--finishing", type=float, default=0.1, help="share of jobs ending per step")
    parser.add_argument("--without-exclusion", action="store_true", help="leave the exclusion engine out")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="print the N costliest functions (cumulative CPU time) of the finishing steps")
    parser.add_argument("--parts", action="store_true",
                        help="print the CPU time of each part of the finishing steps (its own, median)")
    args = parser.parse_args()
    templates = [{"name": f"AFT_{i}", "category": "functional", "payload": "zmumu",
                  "input_dataset": "mc23.*", "events_per_job": 20000} for i in range(args.templates)]
    with tempfile.TemporaryDirectory() as folder:
        config = RobotConfig.model_validate({"data_dir": folder, "templates": templates})
        engine = make_engine(f"sqlite:///{Path(folder) / 'bench.db'}")
        upgrade(engine)
        settings = BlacklistSettings(mode="dry-run")
        grid = NullGrid(args.queues, ended_ago=settings.default.stable_gap + timedelta(minutes=1))
        policy = Policy(settings, tuple(t["name"] for t in templates))
        engines = [] if args.without_exclusion else [ExclusionEngine(policy, grid)]
        robot = Robot(config, make_sessionmaker(engine), grid, grid, grid, load_table(), evaluators=engines)
        now = datetime(2026, 11, 1, tzinfo=timezone.utc)
        print(f"{args.queues} queues x {args.templates} templates = {args.queues * args.templates} jobs in flight, "
              f"exclusion engine {'off' if args.without_exclusion else 'on (dry-run)'}")
        steps = [("first step (topology, tests, submit all)", 0.0)]
        steps += [(f"steady, all running {i + 1}", 0.0) for i in range(args.steps)]
        steps += [(f"steady, {args.finishing:.0%} finishing {i + 1}", args.finishing) for i in range(args.steps)]
        finishing_cpu, finishing_kernel = [], []  # CPU time, and its part in the kernel (system time)
        profile = cProfile.Profile(time.process_time)
        parts = Parts()
        if args.parts:
            measure_parts(parts, robot, grid)
        for label, finishing in steps:
            grid.finishing, grid.now = finishing, now
            profiled = bool(args.profile and finishing)
            cpu, wall, kernel = time.process_time(), time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF).ru_stime
            if profiled:
                profile.enable()
            parts.start()
            summary = robot.run_once(now)
            parts.stop()
            if profiled:
                profile.disable()
            cpu, wall, kernel = time.process_time() - cpu, time.perf_counter() - wall, resource.getrusage(resource.RUSAGE_SELF).ru_stime - kernel
            if finishing and label.startswith("steady"):
                finishing_cpu.append(cpu)
                finishing_kernel.append(kernel)
            print(f"{label:42s} cpu {cpu:6.3f} s (system {kernel:5.3f})  wall {wall:6.3f} s  polled {summary.polled:5d}  "
                  f"finished {summary.finished:4d}  submitted {summary.submitted:5d}")
            now += timedelta(minutes=1)
            if label.startswith("first"):
                settle()  # as `healthrobot run` does after its first step
        engine.dispose()
    if args.parts:
        print(f"parts of the steps with {args.finishing:.0%} finishing (CPU, median of {len(finishing_cpu)}):")
        print(parts.report(len(finishing_cpu)))
    if args.profile:
        out = io.StringIO()
        pstats.Stats(profile, stream=out).sort_stats("cumulative").print_stats(args.profile)
        print(out.getvalue())
    target = 0.1 * max(1.0, args.queues * args.templates / 3000)
    median = statistics.median(finishing_cpu) if finishing_cpu else 0.0
    kernel = statistics.median(finishing_kernel) if finishing_kernel else 0.0
    print(f"steady step with {args.finishing:.0%} finishing: median {median:.3f} s CPU, {kernel:.3f} s of it in the kernel "
          f"(target < {target:.2f} s at {args.queues} queues: {'ok' if median < target else 'OVER'}); "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
