"""Benchmark: `policy replay` over an imported history (no target set: issue 16 asks for the figure).

Writes a monitor export with bench/history.py's generator (N records over D days at Q queues, site-class
stage-in bursts at a few queues), imports it into a fresh SQLite database under the template `history`,
then replays the default policy over those D days in 10-minute steps, as `healthrobot policy replay
--template history` does, and prints the CPU time of each and the moves the replay made.

    python bench/replay.py [--records 100000] [--queues 100] [--days 7]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from blacklist.policies import Policy
from blacklist.replay import replay
from blacklist.simulate import policy_settings
from history import END, topology, write_export  # bench/history.py, beside this file
from robot.classify import load_table
from robot.history import import_history
from robot.storage.database import make_engine, make_sessionmaker, upgrade
from robot.sync import sync_topology

STEP = timedelta(minutes=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--queues", type=int, default=100)
    parser.add_argument("--days", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        export = Path(folder) / "jobs.json"
        write_export(export, args.records, args.queues, args.days)
        engine = make_engine(f"sqlite:///{Path(folder) / 'robot.db'}")
        upgrade(engine)
        sessions = make_sessionmaker(engine)
        with sessions() as session:
            sync_topology(session, topology(args.queues), END)
            session.commit()
        cpu = time.process_time()
        with sessions() as session:
            summary = import_history(session, export, "history", load_table(), END)
            session.commit()
        print(f"import: {summary.imported:,} imported, {len(summary.problems)} bad, "
              f"{time.process_time() - cpu:.1f} s CPU")
        label, settings = policy_settings("default")
        cpu, wall = time.process_time(), time.perf_counter()
        with sessions() as session:
            moves = replay(session, Policy(settings, ("history",)), END - timedelta(days=args.days), END, STEP)
        print(f"replay of {label} over {args.days} d at {args.queues} queues, {STEP.seconds // 60}-minute steps: "
              f"{time.process_time() - cpu:.1f} s CPU, {time.perf_counter() - wall:.1f} s wall, {len(moves)} moves")
        for move in moves:
            print(f"  {move.time:%Y-%m-%d %H:%M} {move.queue} {move.action}: {move.reason}")
        engine.dispose()


if __name__ == "__main__":
    main()
