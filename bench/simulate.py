"""Benchmark: one simulated week of a 200-queue grid, per policy (target: under 10 s of CPU each).

The real loop (`Robot.run_once`) and exclusion engine run every step against the simulated grid,
with an in-memory SQLite database. CPU time is the figure judged (the machine is shared); wall
time is printed beside it.

    python bench/simulate.py [--scenario configs/scenarios/week_200_queues.yaml] [--policy default]
                             [--days N] [--seed N] [--record FILE] [--parts]

`--record FILE` writes everything each run did (every transition, event, queue row, override, users'
hour and job, without the job's random name, and the scores): two versions of the code that decide
the same write the same file, which `cmp` checks.

`--parts` prints where each run's CPU went, in ms per step: the step's parts (the users' jobs' watch, the
exclusion engine, the submission, the polling, the commits), each with the time of the parts it calls, and
some of those indented below it: the simulated grid's own share of each, and the engine's decisions in two, those
a queue's view alone settles (`Policy.quiet`) and those weighed against the grid and the users' jobs (`Policy.decide`).
"""
from __future__ import annotations

import argparse
import functools
import inspect
import logging
import resource
import time
from collections import defaultdict
from datetime import timedelta
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from blacklist import engine, policies
from blacklist.simulate import BUILTIN, run, summarize
from robot import loop, userjobs
from robot.backends.simulated import SimulatedGrid, load_scenario
from robot.storage.models import Event, Job, Override, Queue, QueueTransition, UserJobHour

TARGET_CPU_SECONDS = 10.0

SCENARIO = Path(__file__).resolve().parent.parent / "configs" / "scenarios" / "week_200_queues.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", default=str(SCENARIO))
    parser.add_argument("--policy", action="append", choices=sorted(BUILTIN))
    parser.add_argument("--days", type=float, help="simulate this many days instead of the scenario's duration")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--record", type=Path, help="write what each run did to this file (see above)")
    parser.add_argument("--parts", action="store_true", help="print where each run's CPU went (see above)")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    scenario = load_scenario(args.scenario)
    if args.days:
        scenario = scenario.model_copy(update={"duration": timedelta(days=args.days)})
    recorded: list[str] = []
    steps = int(scenario.duration / scenario.step)
    print(f"{scenario.name}: {scenario.queues.count} queues x {len(scenario.templates)} templates, "
          f"{scenario.duration.total_seconds() / 86400:g} days in {steps} steps of {scenario.step}")
    parts = Parts() if args.parts else None
    for policy in args.policy or ["default", "hammercloud+safety"]:
        if parts:
            parts.spent.clear()
        began, cpu = time.perf_counter(), time.process_time()
        result = run(scenario, BUILTIN[policy], args.seed, policy,
                     record=(lambda session: recorded.extend([f"== {policy}", *what_it_did(session)])) if args.record else None)
        wall, cpu = time.perf_counter() - began, time.process_time() - cpu
        recorded.append(f"score {result}")
        summary = summarize([result])
        verdict = "ok" if cpu < TARGET_CPU_SECONDS else "OVER"
        print(f"{policy:18s} cpu {cpu:6.1f} s (target < {TARGET_CPU_SECONDS:.0f} s: {verdict})  wall {wall:6.1f} s  "
              f"({1000 * cpu / steps:.0f} ms cpu/step)  "
              f"jobs {result.jobs}  exclusions detected {len(result.latencies)}/{result.faults}  "
              f"false {result.false_exclusions}  median detection {summary.detection_median_min} min")
        if parts:
            print(parts.report(steps))
    print(f"peak memory {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    if args.record:
        args.record.write_text("\n".join(recorded) + "\n")
        print(f"what the runs did: {args.record}")


# The parts `--parts` times: (owner, function, label); a label indented is a part of the one above it.
PARTS = [
    (userjobs.UserJobWatch, "__call__", "users' jobs watch"),
    (SimulatedGrid, "user_job_stats", "  grid: users' counts"),
    (userjobs, "store", "  storing the hours"),
    (engine.ExclusionEngine, "__call__", "exclusion engine"),
    (engine.QueueFacts, "load", "  facts (views)"),
    (engine.UserHours, "read", "    users' hours read"),
    (policies.Policy, "quiet", "  decisions, view alone"),
    (policies.Policy, "decide", "  decisions, weighed"),
    (loop.Robot, "_submit", "submission"),
    (loop.Robot, "_slot_states", "  slot states"),
    (SimulatedGrid, "submit", "  grid: submit"),
    (loop.Robot, "_poll", "polling"),
    (SimulatedGrid, "status", "  grid: status"),
    (loop.Robot, "_commit", "commits"),
    (loop.Robot, "run_once", "step"),
]


class Parts:
    """CPU time per part of the step, each part with the parts it calls (`--parts`)."""

    def __init__(self) -> None:
        self.spent: dict[str, float] = defaultdict(float)
        for owner, name, label in PARTS:
            self._wrap(owner, name, label)

    def _wrap(self, owner: object, name: str, label: str) -> None:
        static = isinstance(inspect.getattr_static(owner, name), staticmethod)
        original = getattr(owner, name)

        @functools.wraps(original)
        def timed(*args: object, **kwargs: object) -> object:
            began = time.process_time()
            try:
                return original(*args, **kwargs)
            finally:
                self.spent[label] += time.process_time() - began

        setattr(owner, name, staticmethod(timed) if static else timed)

    def report(self, steps: int) -> str:
        step = self.spent.get("step", 0.0)
        named = sum(self.spent.get(label, 0.0) for _, _, label in PARTS if not label.startswith(" ") and label != "step")
        lines = [f"  {label:28s} {1000 * self.spent.get(label, 0.0) / steps:6.1f} ms/step"
                 for _, _, label in PARTS if label != "step"]
        return "\n".join([*lines, f"  {'rest of the step':28s} {1000 * (step - named) / steps:6.1f} ms/step"])


def what_it_did(session: Session) -> list[str]:
    """Every row a run stored that decisions made or read, in a stable order (a job without its random name)."""
    jobs = [c for c in Job.__table__.columns if c.name not in ("id", "job_name", "retry_of")]
    queries = {
        "transition": select(Queue.name, *(c for c in QueueTransition.__table__.columns if c.name not in ("id", "queue_id")))
        .join(Queue, Queue.id == QueueTransition.queue_id).order_by(QueueTransition.id),
        "event": select(*(c for c in Event.__table__.columns if c.name != "id")).order_by(Event.id),
        "queue": select(Queue.__table__).order_by(Queue.id),
        "override": select(Override.__table__).order_by(Override.id),
        "users": select(UserJobHour.__table__).order_by(UserJobHour.queue, UserJobHour.hour),
        "job": select(*jobs).order_by(Job.queue_id, Job.test_id, Job.recorded_at, Job.panda_id),
    }
    return [f"{kind} {tuple(row)!r}" for kind, query in queries.items() for row in session.execute(query)]


if __name__ == "__main__":
    main()
