"""Benchmark: stress tests at concurrency 1, 4 and 16 on one embedded queue show saturation.

Real payloads run on this machine; the queue's jobs share its 2 cores and the storage endpoint's
read bandwidth, so total events/s rises with concurrency until the machine is full, then stays
flat while each job gets slower and stage-in time grows: the knee a site admin looks for.

    python bench/stress.py [--jobs 12] [--bandwidth 5]
"""
from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import yaml

from robot.clock import SystemClock
from robot.config import load_config
from robot.services import build
from robot.storage import models
from robot.storage.database import upgrade
from robot.stress import StressRequest, request_stress_test
from testjobs.datasets import default_datasets

QUEUE = "ANALY_BENCH"


def write_config(folder: Path, bandwidth: float) -> Path:
    zmumu = default_datasets()[0]
    grid = {"defaults": {"user_failure_rate": 0.0},
            "datasets": [{"name": zmumu.name, "files": zmumu.n_files, "events_per_file": zmumu.events_per_file,
                          "seed": zmumu.seed}],
            "clouds": {"DE": {"sites": {"BENCH-SITE": {"storage": {"BENCH-SITE_DATADISK": {"bandwidth_mb_s": bandwidth}},
                                                         "queues": {QUEUE: {"slots": 16}}}}}}}
    (folder / "grid.yaml").write_text(yaml.safe_dump(grid))
    robot = {"data_dir": str(folder / "data"),
             "backend": {"embedded": {"grid": str(folder / "grid.yaml"), "max_parallel_jobs": 16}},
             "blacklist": {"mode": "off"}, "stress": {"operators": ["bench"]},
             "templates": [{"name": "STRESS", "category": "stress", "payload": "zmumu",
                            "input_dataset": "mc23_*", "events_per_job": 50000, "max_wall_time": "10m"}]}
    (folder / "robot.yaml").write_text(yaml.safe_dump(robot))
    return folder / "robot.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=12)
    parser.add_argument("--bandwidth", type=float, default=5.0, help="endpoint read bandwidth, MB/s")
    parser.add_argument("--concurrency", type=int, action="append")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    with tempfile.TemporaryDirectory() as folder:
        config = load_config(write_config(Path(folder), args.bandwidth))
        clock = SystemClock()
        services = build(config, clock)
        upgrade(services.engine)
        services.grid.storage.prepare()
        services.grid.start(period=0.2)
        services.robot.run_once(clock.now())
        print(f"{args.jobs} jobs of 50,000 events per level, queue with 16 slots, {args.bandwidth:g} MB/s storage, "
              f"2 cores")
        print(f"{'concurrency':>11} {'wall s':>7} {'events/s':>9} {'per job p50':>12} {'stage-in p50 s':>15} "
              f"{'payload p50 s':>14} {'CPU eff %':>9} {'failed':>6}")
        try:
            for concurrency in args.concurrency or [1, 4, 16]:
                with services.sessions() as session:
                    test = request_stress_test(session, StressRequest((QUEUE,), "STRESS", args.jobs, concurrency,
                                                                      "bench"), config, clock.now())
                    session.commit()
                    test_id = test.id
                began = time.monotonic()
                report = None
                while report is None:
                    services.robot.run_once(clock.now())
                    with services.sessions() as session:
                        report = session.get(models.Test, test_id).report
                    time.sleep(0.3)
                s = report["summary"]
                print(f"{concurrency:>11} {time.monotonic() - began:>7.1f} {s['events_per_second']:>9.0f} "
                      f"{s['events_per_second_per_job']['p50']:>12.0f} {s['times']['stagein']['p50']:>15.2f} "
                      f"{s['times']['payload']['p50']:>14.2f} {s['cpu_efficiency']:>9.0f} {s['failed']:>6}")
        finally:
            services.close()


if __name__ == "__main__":
    main()
