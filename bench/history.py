"""Benchmark: `history import` of a PanDA monitor export (target: a million records in under a minute).

Writes a monitor-style export (`{"jobs": [...]}`, one record a line, the monitor's field names)
of N jobs over D days at Q queues, with a realistic mix (most finished, site-class stage-in
failures in bursts at a few queues, user-class payload failures, jobs still running, a few bad
records), then times `robot.history.import_history` into a fresh SQLite database: wall and CPU
time (the target is CPU time: the machine is shared), peak memory, and a second import of the same file (idempotent:
nothing added). Then a further export of a tenth as many new jobs over the same days is imported into that database,
now live (it has a rollup and a watermark): the hours its jobs ended in are added at their queues (`rollup.add_bulk`).

    python bench/history.py [--records 1000000] [--queues 1000] [--days 30] [--db postgres]
"""
from __future__ import annotations

import argparse
import os
import json
import random
import resource
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import datetime, timedelta, timezone
from pathlib import Path

from typing import Callable

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from robot.classify import load_table
from robot.history import import_history
from robot.storage.database import make_engine, make_sessionmaker, upgrade
from robot.storage.models import Job
from robot.sync import sync_topology
from robot.topology import EndpointInfo, QueueInfo, SiteInfo, Topology

TARGET_SECONDS = 60.0  # of CPU time, for TARGET_RECORDS
TARGET_MB = 1024
TARGET_RECORDS = 1_000_000
END = datetime(2026, 11, 1, tzinfo=timezone.utc)
FORMAT = "%Y-%m-%d %H:%M:%S"


def topology(queues: int) -> Topology:
    sites = [SiteInfo(f"SITE-{i}", f"CLOUD{i % 10}") for i in range(queues // 4 + 1)]
    return Topology(sites=tuple(sites), endpoints=tuple(EndpointInfo(f"{s.name}_DATADISK", s.name) for s in sites),
                    queues=tuple(QueueInfo(f"ANALY_Q{i:04d}", f"SITE-{i // 4}", f"CLOUD{(i // 4) % 10}",
                                           (f"SITE-{i // 4}_DATADISK",)) for i in range(queues)))


def write_export(path: Path, records: int, queues: int, days: int, seed: int = 1, first_id: int = 1) -> None:
    rng = random.Random(seed)
    span = days * 86400
    broken = {rng.randrange(queues): rng.randrange(span) for _ in range(max(1, queues // 50))}  # queue -> burst start
    with path.open("w", encoding="utf-8") as out:
        out.write('{"selectionsummary": [], "jobs": [\n')
        for pandaid in range(first_id, first_id + records):
            queue = rng.randrange(queues)
            offset = rng.randrange(span)
            end = END - timedelta(seconds=span - offset)
            start = end - timedelta(seconds=rng.randrange(300, 3000))
            created = start - timedelta(seconds=rng.randrange(10, 1800))
            state, pilot, exe, diag = "finished", 0, 0, "NULL"
            burst = broken.get(queue)
            if burst is not None and burst <= offset < burst + 6 * 3600 and rng.random() < 0.8:
                state, pilot, diag = "failed", 1099, "Get error: Staging input file failed"
            elif rng.random() < 0.03:
                state, pilot, exe, diag = "failed", 1305, 65, "payload exited with 65"
            elif rng.random() < 0.01:
                state = "running"
            record = {"pandaid": pandaid, "computingsite": f"ANALY_Q{queue:04d}", "jobstatus": state,
                      "creationtime": created.strftime(FORMAT), "starttime": start.strftime(FORMAT),
                      "endtime": end.strftime(FORMAT) if state != "running" else None,
                      "piloterrorcode": pilot, "piloterrordiag": diag, "exeerrorcode": exe, "exeerrordiag": "NULL",
                      "ddmerrorcode": 0, "taskbuffererrorcode": 0, "jobdispatchererrorcode": 0, "superrorcode": 0,
                      "transexitcode": str(exe), "nevents": 1000 if state == "finished" else 0,
                      "cpuconsumptiontime": rng.randrange(100, 2000), "maxrss": rng.randrange(10**5, 10**6),
                      "actualcorecount": 1, "attemptnr": 1, "pilottiming": "10|20|300|15|5",
                      "produserid": "/DC=ch/CN=someone", "jeditaskid": 1000 + pandaid // 500}
            if pandaid % 100_000 == 0:
                record["endtime"] = "not a time"  # the odd bad record
            out.write(json.dumps(record))
            out.write(",\n" if pandaid < first_id + records - 1 else "\n")
        out.write("]}\n")


def server_cpu(session: Session) -> Callable[[], float]:
    """The CPU seconds so far of the PostgreSQL backend serving this session (it parses the COPY, keeps
    the indexes and runs the rollup's SQL: on SQLite all of that is this process's own CPU time)."""
    if session.get_bind().dialect.name != "postgresql":
        return lambda: 0.0
    stat = Path(f"/proc/{session.execute(text('SELECT pg_backend_pid()')).scalar_one()}/stat")
    ticks = os.sysconf("SC_CLK_TCK")

    def seconds() -> float:
        fields = stat.read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / ticks  # utime and stime
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=TARGET_RECORDS)
    parser.add_argument("--queues", type=int, default=1000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    args = parser.parse_args()
    table = load_table()
    with ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        export, later = folder / "jobs.json", folder / "later.json"
        started = time.perf_counter()
        write_export(export, args.records, args.queues, args.days)
        write_export(later, args.records // 10, args.queues, args.days, seed=2, first_id=args.records + 1)
        print(f"export: {args.records:,} records, {export.stat().st_size / 2**20:.0f} MB (and {args.records // 10:,} "
              f"later ones), written in {time.perf_counter() - started:.1f} s")
        if args.db == "postgres":
            sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
            from tests.pgserver import postgres_server

            server = stack.enter_context(postgres_server())
            server.create_database("bench")
            url = server.url("bench")
        else:
            url = f"sqlite:///{folder / 'robot.db'}"
        engine = make_engine(url)
        upgrade(engine)
        sessions = make_sessionmaker(engine)
        now = datetime.now(timezone.utc)
        with sessions() as session:
            sync_topology(session, topology(args.queues), now)
            session.commit()
        for attempt, path, at in (("first import", export, now), ("same file again", export, now),
                                  ("into the live database", later, now + timedelta(hours=1))):
            with sessions() as session:
                server = server_cpu(session)
                wall, cpu, served = time.perf_counter(), time.process_time(), server()
                summary = import_history(session, path, "history", table, at)
                session.commit()
                wall, cpu, served = time.perf_counter() - wall, time.process_time() - cpu, server() - served
            records = summary.records
            target = TARGET_SECONDS * records / TARGET_RECORDS
            total = cpu + served
            print(f"{attempt}: {total:.1f} s CPU{f' ({cpu:.1f} s here, {served:.1f} s in the server)' if served else ''} "
                  f"(target under {target:.1f} s for {records:,} records; {records / total:,.0f} records per CPU "
                  f"second), {wall:.1f} s wall: {summary.imported:,} imported, {summary.already_known:,} already "
                  f"stored, {summary.not_final:,} not final, {len(summary.problems)} bad")
        with sessions() as session:
            stored = session.scalar(select(func.count(Job.id)))
        size = f"; database {(folder / 'robot.db').stat().st_size / 2**20:.0f} MB" if args.db == "sqlite" else ""
        print(f"stored jobs: {stored:,}{size}; peak memory "
              f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB (target under {TARGET_MB} MB)")
        engine.dispose()


if __name__ == "__main__":
    main()
