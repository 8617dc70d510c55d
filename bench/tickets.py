"""Benchmark: import, link and judge 100,000 generated support messages (target: under 20 s CPU, under 1 GB).

The messages are written as an mbox file in the support desk's style (threads of 1-6 messages,
queue and site names of the benchmark's grid, PanDA links, error texts, a share of HTML-only mail),
then imported with `healthrobot`'s own pipeline: parse, thread, extract, store, link, judge. The
robot's own test results around the archive's days (one job per queue every 20 minutes, a few
queues failing with site errors for some hours, a share of user errors) are imported first, as a
PanDA monitor export through `history import`, so that the verdicts have evidence to weigh.

    python bench/tickets.py [--messages 100000] [--verdicts FILE]

`--verdicts FILE` writes every ticket's verdict, reason, evidence and links (JSON, one ticket a
line, by key): two runs on the same archive can be compared with `diff`.
"""
from __future__ import annotations

import argparse
import json
import logging
import random
import resource
import tempfile
import time
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from pathlib import Path

from sqlalchemy import select

from robot.classify import load_table
from robot.config import RobotConfig
from robot.history import import_history
from robot.storage.database import make_engine, make_sessionmaker, upgrade
from robot.storage.models import Episode, Queue, Ticket, TicketLink
from robot.sync import sync_topology
from robot.tickets.ingest import import_source
from robot.tickets.store import judge_tickets
from robot.topology import EndpointInfo, QueueInfo, SiteInfo, Topology

TARGET_CPU = 20.0
TARGET_MB = 1024
TARGET_MESSAGES = 100_000

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


def write_history(path: Path, now: datetime, topo: Topology) -> int:
    """The robot's test results from 6 days before `now` to 6 h after, as a PanDA monitor export."""
    rng = random.Random(2)
    first = now - timedelta(days=6)
    broken = {q.name: [first + timedelta(hours=rng.randrange(6 * 24)) for _ in range(2)]
              for q in rng.sample(topo.queues, 8)}  # queue -> starts of 8-hour site-error bursts
    jobs, pandaid = [], 5_000_000_000
    for queue in topo.queues:
        end = first + timedelta(minutes=rng.randrange(20))
        while end < now + timedelta(hours=6):
            pandaid += 1
            state, pilot, exe, diag = "finished", 0, 0, "NULL"
            if any(start <= end < start + timedelta(hours=8) for start in broken.get(queue.name, ())) \
                    and rng.random() < 0.8:
                state, pilot, diag = "failed", 1099, "Get error: Staging input file failed"
            elif rng.random() < 0.03:
                state, exe, diag = "failed", 65, "payload exited with 65"
                pilot = 1305
            stamp = "%Y-%m-%d %H:%M:%S"
            jobs.append({"pandaid": pandaid, "computingsite": queue.name, "jobstatus": state,
                         "creationtime": (end - timedelta(minutes=30)).strftime(stamp),
                         "starttime": (end - timedelta(minutes=20)).strftime(stamp), "endtime": end.strftime(stamp),
                         "piloterrorcode": pilot, "piloterrordiag": diag, "exeerrorcode": exe,
                         "nevents": 1000 if state == "finished" else 0})
            end += timedelta(minutes=20)
    path.write_text(json.dumps({"jobs": jobs}), encoding="utf-8")
    return len(jobs)


def write_verdicts(session, path: Path) -> None:  # type: ignore[no-untyped-def]
    """Every ticket's verdict, reason, evidence and links, one JSON line per ticket by key (episode
    ids written as queue and start, so that the file compares across runs)."""
    episodes = {i: f"{q} {s.isoformat()}" for i, q, s in session.execute(
        select(Episode.id, Queue.name, Episode.start).join(Queue, Queue.id == Episode.queue_id))}
    links: dict[int, list] = {}
    for ticket_id, episode_id, score, reason in session.execute(
            select(TicketLink.ticket_id, TicketLink.episode_id, TicketLink.score, TicketLink.reason)):
        links.setdefault(ticket_id, []).append([episodes[episode_id], score, reason])
    with path.open("w", encoding="utf-8") as out:
        for ticket in session.scalars(select(Ticket).order_by(Ticket.key)):
            evidence = dict(ticket.verdict_evidence or {})
            if "episodes" in evidence:
                evidence["episodes"] = [episodes[e] for e in evidence["episodes"]]
            out.write(json.dumps({"key": ticket.key, "state": ticket.state, "messages": ticket.messages,
                                  "verdict": ticket.verdict, "reason": ticket.verdict_reason, "evidence": evidence,
                                  "links": sorted(links.get(ticket.id, []))}, sort_keys=True, default=str) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=TARGET_MESSAGES)
    parser.add_argument("--verdicts", type=Path, help="write every ticket's verdict to this file (JSON lines)")
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
        export = Path(folder) / "jobs.json"
        write_history(export, now, topo)
        with sessions() as session:
            results = import_history(session, export, "tests", load_table(), now)
            session.commit()
        print(f"robot history: {results.imported} test jobs at {len(topo.queues)} queues")
        began, cpu = time.perf_counter(), time.process_time()
        with sessions() as session:
            summary, changed = import_source(session, str(archive), config, load_table(), now)
            imported = time.perf_counter() - began
            judged = judge_tickets(session, now, changed)
            session.commit()
        wall, cpu = time.perf_counter() - began, time.process_time() - cpu
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        target = TARGET_CPU * args.messages / TARGET_MESSAGES
        print(f"imported {summary.new_messages} messages into {summary.new_tickets} tickets in {imported:.1f} s wall; "
              f"linked and judged {judged} tickets")
        print(f"total {cpu:.1f} s CPU (target under {target:.1f} s for {args.messages:,} messages), {wall:.1f} s wall; "
              f"peak memory {peak:.0f} MB (target under {TARGET_MB} MB)")
        if args.verdicts:
            with sessions() as session:
                write_verdicts(session, args.verdicts)
            print(f"verdicts written to {args.verdicts}")


if __name__ == "__main__":
    main()
