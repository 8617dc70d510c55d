"""Benchmark: one simulated week of a 200-queue grid, per policy (target: under 10 s of CPU each).

The real loop (`Robot.run_once`) and exclusion engine run every step against the simulated grid,
with an in-memory SQLite database. CPU time is the figure judged (the machine is shared); wall
time is printed beside it.

    python bench/simulate.py [--scenario configs/scenarios/week_200_queues.yaml] [--policy default]
"""
from __future__ import annotations

import argparse
import logging
import resource
import time
from pathlib import Path

from blacklist.simulate import BUILTIN, run, summarize
from robot.backends.simulated import load_scenario

TARGET_CPU_SECONDS = 10.0

SCENARIO = Path(__file__).resolve().parent.parent / "configs" / "scenarios" / "week_200_queues.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", default=str(SCENARIO))
    parser.add_argument("--policy", action="append", choices=sorted(BUILTIN))
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    scenario = load_scenario(args.scenario)
    steps = int(scenario.duration / scenario.step)
    print(f"{scenario.name}: {scenario.queues.count} queues x {len(scenario.templates)} templates, "
          f"{scenario.duration.days} days in {steps} steps of {scenario.step}")
    for policy in args.policy or ["default", "hammercloud+safety"]:
        began, cpu = time.perf_counter(), time.process_time()
        result = run(scenario, BUILTIN[policy], 1, policy)
        wall, cpu = time.perf_counter() - began, time.process_time() - cpu
        summary = summarize([result])
        verdict = "ok" if cpu < TARGET_CPU_SECONDS else "OVER"
        print(f"{policy:18s} cpu {cpu:6.1f} s (target < {TARGET_CPU_SECONDS:.0f} s: {verdict})  wall {wall:6.1f} s  "
              f"({1000 * cpu / steps:.0f} ms cpu/step)  "
              f"jobs {result.jobs}  exclusions detected {len(result.latencies)}/{result.faults}  "
              f"false {result.false_exclusions}  median detection {summary.detection_median_min} min")
    print(f"peak memory {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
