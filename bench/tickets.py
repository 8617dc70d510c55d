"""Benchmark: import and link 100,000 generated support messages (target: under 60 s, under 1 GB).

The messages are written as an mbox file in the support desk's style (threads of 1-6 messages,
queue and site names of the default grid, PanDA links, error texts, a share of HTML-only mail),
then imported with `healthrobot`'s own pipeline: parse, thread, extract, store, link, judge.

    python bench/tickets.py [--messages 100000]
"""
from __future__ import annotations

import argparse
import logging
import random
import resource
import tempfile
import time
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from pathlib import Path

from robot.classify import load_table
from robot.config import RobotConfig
from robot.storage.database import make_engine, make_sessionmaker, upgrade
from robot.sync import sync_topology
from robot.tickets.ingest import import_source
from robot.tickets.store import judge_tickets
from robot.topology import EndpointInfo, QueueInfo, SiteInfo, Topology

SITES = [("MWT2", "US"), ("FZK-LCG2", "DE"), ("BNL-ATLAS", "US"), ("IN2P3-CC", "FR"), ("RAL-LCG2", "UK"),
         ("GRIF", "FR"), ("AGLT2", "US"), ("DESY-HH", "DE"), ("LRZ-LMU", "DE"), ("UKI-NORTHGRID-MAN-HEP", "UK")]
PROBLEMS = ["Get error: Copy command returned error code 256 from {rse}", "No space left on device",
            "CVMFS is not alive on some nodes", "my code crashes with ZeroDivisionError",
            "Put error: Copy command returned error code 256", "jobs stuck in activated for hours",
            "Segmentation fault in my analysis", "runs fine at {other} but not here"]


def topology() -> Topology:
    queues = [QueueInfo(f"ANALY_{site.split('-')[0]}_{i}", site, cloud, (f"{site}_DATADISK",))
              for site, cloud in SITES for i in range(1, 4)]
    return Topology(sites=tuple(SiteInfo(s, c) for s, c in SITES),
                    endpoints=tuple(EndpointInfo(f"{s}_DATADISK", s) for s, _ in SITES), queues=tuple(queues))


def write_archive(path: Path, messages: int, now: datetime, topo: Topology) -> int:
    rng = random.Random(1)
    names = [q.name for q in topo.queues]
    written, thread = 0, 0
    with path.open("w", encoding="utf-8") as out:
        while written < messages:
            thread += 1
            queue = rng.choice(names)
            site = next(q.site for q in topo.queues if q.name == queue)
            subject = f"Jobs fail at {queue} (task {31_000_000 + thread})"
            root = f"<t{thread}.0@users.example.org>"
            start = now - timedelta(days=3) + timedelta(seconds=rng.randrange(3 * 86400))
            for k in range(min(rng.randint(1, 6), messages - written)):
                problem = rng.choice(PROBLEMS).format(rse=f"{site}_DATADISK", other=rng.choice(names))
                msgid = f"<t{thread}.{k}@users.example.org>"
                body = (f"Hello,\nmy jobs at {queue} fail: {problem}.\n"
                        f"See https://bigpanda.cern.ch/job?pandaid={6_400_000_000 + rng.randrange(10**8)}\nThanks\n")
                html = rng.random() < 0.1
                out.write(f"From user{thread}@users.example.org {format_datetime(start).replace(',', '')}\n")
                out.write(f"From: user{thread}@users.example.org\nTo: atlas-support@example.org\n")
                out.write(f"Subject: {'Re: ' if k else ''}{subject}\nMessage-ID: {msgid}\n")
                out.write(f"Date: {format_datetime(start + timedelta(hours=k))}\n")
                if k:
                    out.write(f"In-Reply-To: {root}\nReferences: {root}\n")
                out.write("X-Gmail-Labels: Status/ACTIVE,Category/Site Problem\n")
                if html:
                    out.write("MIME-Version: 1.0\nContent-Type: text/html; charset=utf-8\n\n")
                    out.write("<html><body><p>" + body.replace("\n", "<br>") + "</p></body></html>\n\n")
                else:
                    out.write("Content-Type: text/plain; charset=utf-8\n\n" + body + "\n")
                written += 1
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    now = datetime(2026, 11, 22, tzinfo=timezone.utc)
    with tempfile.TemporaryDirectory() as folder:
        topo = topology()
        began = time.perf_counter()
        archive = Path(folder) / "support.mbox"
        count = write_archive(archive, args.messages, now, topo)
        print(f"wrote {count} messages ({archive.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - began:.1f} s")
        config = RobotConfig.model_validate({"data_dir": folder})
        engine = make_engine(config.database_url)
        upgrade(engine)
        sessions = make_sessionmaker(engine)
        with sessions() as session:
            sync_topology(session, topo, now)
            session.commit()
        began, cpu = time.perf_counter(), time.process_time()
        with sessions() as session:
            summary, changed = import_source(session, str(archive), config, load_table(), now)
            imported = time.perf_counter() - began
            judged = judge_tickets(session, now, changed)
            session.commit()
        wall, cpu = time.perf_counter() - began, time.process_time() - cpu
        print(f"imported {summary.new_messages} messages into {summary.new_tickets} tickets in {imported:.1f} s; "
              f"linked and judged {judged} tickets; total {wall:.1f} s wall, {cpu:.1f} s CPU")
        print(f"peak memory {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
