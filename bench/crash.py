"""Benchmark: crash safety. Robot processes are killed with SIGKILL at random points of real steps
(one trial in three right after a submission returned), restarted on the same database and grid,
for the embedded grid and for the PanDA path (`healthrobot grid serve` and the unmodified
panda-client); then every job the grid ran must be known to the robot with its final state, and no
template may ever have had more jobs in flight at a queue than its limit (tests/crash_trials.py).

    python bench/crash.py [--trials 100] [--path embedded --path panda] [--seed 1]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.crash_trials import run_trials  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=100, help="killed robot processes per path")
    parser.add_argument("--path", action="append", choices=["embedded", "panda"], help="default: both")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    failed = False
    print(f"{'path':<9} {'trials':>6} {'killed':>6} {'grid jobs':>9} {'found after crash':>17} "
          f"{'orphaned (target 0)':>19} {'limit violations (target 0)':>27} {'seconds':>7}")
    for path in args.path or ["embedded", "panda"]:
        began = time.monotonic()
        with tempfile.TemporaryDirectory(prefix=f"crash-{path}-") as folder:
            outcome = run_trials(Path(folder), path, args.trials, args.seed)
        print(f"{path:<9} {outcome.trials:>6} {outcome.killed:>6} {outcome.grid_jobs:>9} {outcome.reconciled:>17} "
              f"{len(outcome.orphaned):>19} {len(outcome.violations):>27} {time.monotonic() - began:>7.0f}",
              flush=True)
        for line in outcome.violations[:5]:
            print(f"  {line}")
        if outcome.orphaned:
            print(f"  orphaned PanDA IDs: {outcome.orphaned[:20]}")
        failed |= bool(outcome.orphaned or outcome.violations or outcome.not_final)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
