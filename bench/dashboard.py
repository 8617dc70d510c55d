"""The dashboards' data queries over a year of history: one million job results, 300 queues.

Fills a fresh SQLite database (through the robot's migrations) with 365 days of functional-test
results for 300 queues at 30 sites in 5 clouds and 3 templates (~5 % failures with real pilot
error codes, broken spells that the robot excluded and re-included, a few central incidents,
tickets linked to episodes, stress tests), builds the job rollup with the backfill the robot
ships (`robot.rollup.rebuild`), then times each page's queries: median of 3 runs, in ms, and
the peak memory Python allocated for each page (a separate, untimed run under tracemalloc).

    .venv/bin/python bench/dashboard.py [--jobs 1000000] [--days 365] [--keep DIR]
"""
from __future__ import annotations

import argparse
import random
import resource
import statistics
import sys
import tempfile
import time
import tracemalloc
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import insert
from sqlalchemy.orm import Session

from dashboard import queries
from dashboard.queries import Filters
from robot import rollup
from robot.loop import BACKEND_SETTING, LAST_STEP_SETTING
from robot.storage.database import make_engine, make_sessionmaker, upgrade
from robot.storage.models import (Cloud, Episode, Event, Job, Queue, QueueTransition, Setting, Site,
                                  Template, Test, TestQueue, Ticket, TicketLink, TicketMention)

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)
CLOUDS = ("CA", "DE", "FR", "UK", "US")
SITES_PER_CLOUD = 6
QUEUES_PER_SITE = 10
TEMPLATES = (("hc_zmumu", "zmumu"), ("hc_ttbar", "ttbar"), ("hc_data_zmumu", "zmumu"))
CHUNK = 50_000
# (source, code, name, class, diag, weight) of failures on a healthy queue
NOISE = [("pilot", 1305, "PAYLOADEXECUTIONFAILURE", "user", "Payload execution failed: exit code 65", 40),
         ("pilot", 1212, "PAYLOADOUTOFMEMORY", "user", "Payload exceeded memory limit (4000 MB)", 10),
         ("pilot", 1099, "STAGEINFAILED", "site", "Failed to stage-in file: gfal-copy error: Connection timed out", 15),
         ("pilot", 1151, "STAGEINTIMEOUT", "site", "Stage-in timed out after 1800 s", 5),
         ("pilot", 1203, "SIGSEGV", "unknown", "Payload died of signal 11", 8),
         ("pilot", 1316, "RUCIOSERVICEUNAVAILABLE", "central", "Rucio server unavailable: 503", 5),
         ("pilot", 1377, "CVMFSISNOTALIVE", "site", "CVMFS is not alive: /cvmfs/atlas.cern.ch", 4),
         ("taskbuffer", 102, "EXPIRED", "site", "job expired in the queue", 3)]
# what breaks a queue for a while
BREAKS = [("pilot", 1099, "STAGEINFAILED", "site", "Failed to stage-in file: No such file or directory"),
          ("pilot", 1377, "CVMFSISNOTALIVE", "site", "CVMFS is not alive: /cvmfs/atlas.cern.ch"),
          ("pilot", 1306, "SINGULARITYGENERALFAILURE", "site", "Singularity: failed to launch container"),
          ("pilot", 1333, "NOREMOTESPACE", "site", "No space left on the storage endpoint")]


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1000:8.1f}"


def fill(session: Session, n_jobs: int, days: int, seed: int = 7) -> dict[str, Any]:
    rng = random.Random(seed)
    t0 = time.perf_counter()
    first = NOW - timedelta(days=days)
    session.execute(insert(Cloud), [{"id": i + 1, "name": c} for i, c in enumerate(CLOUDS)])
    sites, queues = [], []
    for c, cloud in enumerate(CLOUDS):
        for s in range(SITES_PER_CLOUD):
            site_id = len(sites) + 1
            sites.append({"id": site_id, "name": f"{cloud}-SITE{s:02d}", "cloud_id": c + 1, "contacts": []})
            for q in range(QUEUES_PER_SITE):
                queues.append({"id": len(queues) + 1, "name": f"ANALY_{cloud}_SITE{s:02d}_{q}", "site_id": site_id,
                               "status": "online", "robot_state": "online"})
    session.execute(insert(Site), sites)
    session.execute(insert(Queue), queues)
    templates = [{"id": i + 1, "name": name, "category": "functional", "active": True, "payload": payload,
                  "input_dataset": "mc23_13p6TeV.*", "events_per_job": 20000, "processing_type": "gangarobot",
                  "settings": {}} for i, (name, payload) in enumerate(TEMPLATES)]
    templates.append({"id": 4, "name": "stress_zmumu", "category": "stress", "active": True, "payload": "zmumu",
                      "input_dataset": "mc23_13p6TeV.*", "events_per_job": 20000, "processing_type": "gangarobot",
                      "settings": {}})
    session.execute(insert(Template), templates)
    tests = []  # one functional test per template and day, as the robot renews them
    for day in range(days + 1):
        for t in range(len(TEMPLATES)):
            start = first + timedelta(days=day)
            tests.append({"id": len(tests) + 1, "template_id": t + 1, "category": "functional", "state": "running",
                          "start_time": start, "end_time": start + timedelta(days=1), "created_at": start,
                          "requested_by": "robot"})
    session.execute(insert(Test), tests)

    # broken spells: ~2 per queue over the year, 2 to 30 hours each
    spells: dict[int, list[tuple[float, float, tuple]]] = {}
    transitions, episodes = [], []
    span = days * 86400.0
    for queue in queues:
        for _ in range(rng.choice((0, 1, 2, 2, 3))):
            start = rng.uniform(0, span - 3 * 86400)
            length = rng.uniform(2, 30) * 3600
            cause = rng.choice(BREAKS)
            spells.setdefault(queue["id"], []).append((start, start + length, cause))
            excluded_at = first + timedelta(seconds=start + 1800)
            back_at = first + timedelta(seconds=start + length + 3600)
            reason = f"site failures: {cause[2]} x5 in the last 6h (CUSUM above Wald's bound)"
            transitions += [
                {"queue_id": queue["id"], "time": excluded_at - timedelta(minutes=20), "kind": "state", "old": "online",
                 "new": "pending", "reason": f"first site failure ({cause[2]}): probing", "evidence": {},
                 "actor": "healthrobot", "policy": "default", "applied": True},
                {"queue_id": queue["id"], "time": excluded_at, "kind": "status", "old": "online", "new": "brokeroff",
                 "reason": reason, "evidence": {"jobs": [], "error": cause[2]}, "actor": "healthrobot",
                 "policy": "default", "applied": True, "read_back": "brokeroff"},
                {"queue_id": queue["id"], "time": back_at, "kind": "status", "old": "brokeroff", "new": "online",
                 "reason": "3 completed jobs in a row: re-included", "evidence": {}, "actor": "healthrobot",
                 "policy": "default", "applied": True, "read_back": "online"}]
            episodes.append({"queue_id": queue["id"], "start": first + timedelta(seconds=start), "end": back_at,
                             "source": "exclusion", "reason": reason, "error_classes": {"site": 5}, "evidence": {}})
    session.execute(insert(QueueTransition), transitions)
    session.execute(insert(Episode), episodes)
    # the last spell of a few queues is still going on
    for queue_id in rng.sample(range(1, len(queues) + 1), 12):
        session.add(QueueTransition(queue_id=queue_id, time=NOW - timedelta(hours=2), kind="status", old="online",
                                    new="brokeroff", reason="site failures: STAGEINFAILED x6", evidence={},
                                    actor="healthrobot", policy="default", applied=True, read_back="brokeroff"))
        session.get(Queue, queue_id).robot_state = "excluded"
        session.get(Queue, queue_id).status = "brokeroff"

    noise_weights = [w for *_, w in NOISE]
    jobs_done = 0
    panda = 6_000_000_000
    times = sorted(rng.uniform(0, span) for _ in range(n_jobs))
    while jobs_done < n_jobs:
        rows = []
        for i in range(jobs_done, min(jobs_done + CHUNK, n_jobs)):
            offset = times[i]
            queue_id = rng.randint(1, len(queues))
            template = rng.randint(1, len(TEMPLATES))
            end = first + timedelta(seconds=offset)
            wall = rng.uniform(300, 2400)
            start = end - timedelta(seconds=wall)
            wait = rng.expovariate(1 / 300)
            created = start - timedelta(seconds=wait)
            day = min(int(offset // 86400), days)
            broken = next((c for a, b, c in spells.get(queue_id, ()) if a <= offset < b), None)
            failed = (rng.random() < 0.8) if broken else (rng.random() < 0.04)
            row = {"test_id": day * len(TEMPLATES) + template, "queue_id": queue_id, "job_name": f"hc.{i}",
                   "panda_id": panda + i, "phase": "done", "dataset": "mc23_13p6TeV.601189.Zmumu.DAOD_PHYS",
                   "n_files": 2, "recorded_at": created, "submitted_at": created, "status_changed_at": end,
                   "creation_time": created, "start_time": start, "end_time": end, "time_queue": wait,
                   "time_stagein": rng.uniform(2, 60), "time_setup": rng.uniform(5, 30),
                   "cpu_consumption_time": wall * rng.uniform(0.5, 0.9), "max_rss_kb": 2_000_000, "core_count": 1,
                   "attempt_nr": 1}
            if failed:
                source, code, name, klass, diag = broken or rng.choices(NOISE, noise_weights)[0][:5]
                row.update(job_status="failed", outcome="failed", error_source=source, error_code=code,
                           error_name=name, error_class=klass, error_diag=diag, n_events=0,
                           time_payload=rng.uniform(10, 300), time_stageout=None,
                           **({"pilot_error_code": code, "pilot_error_diag": diag} if source == "pilot"
                              else {"task_buffer_error_code": code, "task_buffer_error_diag": diag}))
            else:
                events = 20000
                payload = wall - 120
                row.update(job_status="finished", outcome="completed", trans_exit_code=0, n_events=events,
                           time_payload=payload, time_stageout=rng.uniform(2, 20), error_source=None,
                           error_code=None, error_name=None, error_class=None, error_diag=None)
            rows.append(row)
        session.execute(insert(Job), rows)
        jobs_done += len(rows)
    # jobs in flight now: one per queue and template
    session.execute(insert(Job), [
        {"test_id": days * len(TEMPLATES) + t, "queue_id": q, "job_name": f"hc.flying.{q}.{t}",
         "panda_id": panda + n_jobs + q * 10 + t, "phase": "active", "job_status": "running", "dataset": "d",
         "n_files": 2, "recorded_at": NOW - timedelta(minutes=20), "submitted_at": NOW - timedelta(minutes=20),
         "status_changed_at": NOW - timedelta(minutes=5), "creation_time": NOW - timedelta(minutes=20),
         "start_time": NOW - timedelta(minutes=5)} for q in range(1, len(queues) + 1) for t in (1, 2, 3)])

    # stress tests: 12, each on 1-3 queues, 200 jobs per queue
    for s in range(12):
        when = NOW - timedelta(days=rng.uniform(1, days - 1))
        chosen = rng.sample(range(1, len(queues) + 1), rng.randint(1, 3))
        test = Test(template_id=4, category="stress", state="completed", start_time=when,
                    end_time=when + timedelta(hours=2), created_at=when - timedelta(hours=1),
                    requested_by=f"admin{s}", max_jobs=200, concurrency=20, approved_by="ops (operator)",
                    approved_at=when - timedelta(minutes=30), comment="new dCache pool", outcome="all 200 jobs done",
                    report={"summary": {"jobs": 200 * len(chosen)}})
        session.add(test)
        session.flush()
        session.execute(insert(TestQueue), [{"test_id": test.id, "queue_id": q, "max_running_jobs": 20,
                                             "min_queue_depth": 0, "resubmit_enabled": True, "max_jobs": 200,
                                             "retries": 1} for q in chosen])
        session.execute(insert(Job), [
            {"test_id": test.id, "queue_id": q, "job_name": f"stress.{test.id}.{q}.{k}", "panda_id": None,
             "phase": "done", "job_status": "finished", "outcome": "completed" if k % 25 else "failed",
             "error_class": None if k % 25 else "site", "error_name": None if k % 25 else "STAGEINFAILED",
             "dataset": "d", "n_files": 2, "recorded_at": when, "status_changed_at": when + timedelta(minutes=k // 2),
             "start_time": when + timedelta(minutes=k // 3), "end_time": when + timedelta(minutes=k // 2 + 10),
             "n_events": 20000} for q in chosen for k in range(200)])

    # central incidents, backend trouble, the heartbeat
    events = [{"time": first + timedelta(seconds=rng.uniform(0, span)), "kind": kind, "subject": "central",
               "message": f"{kind}: exclusions held", "details": {}}
              for kind in ("mass_failure", "cloud_failure", "central_errors") for _ in range(20)]
    events += [{"time": first + timedelta(seconds=rng.uniform(0, span)), "kind": "backend_unreachable",
                "subject": "panda", "message": "job status could not be read: 503", "details": {}} for _ in range(200)]
    events.append({"time": NOW - timedelta(minutes=30), "kind": "mass_failure", "subject": "central",
                   "message": "40 of 300 queues failing at once: a central problem, not the sites; exclusions held",
                   "details": {}})
    session.execute(insert(Event), events)
    session.add_all([Setting(name=LAST_STEP_SETTING, value=NOW.isoformat(), actor="robot", changed_at=NOW),
                     Setting(name=BACKEND_SETTING, value="ok", actor="robot", changed_at=NOW)])

    # tickets: 3000 over the year, most naming a queue, some linked to its episode
    session.flush()
    stored_episodes = session.query(Episode.id, Episode.queue_id, Episode.start).all()
    names = {q["id"]: q["name"] for q in queues}
    site_of = {q["id"]: sites[q["site_id"] - 1]["name"] for q in queues}
    tickets, mentions, links = [], [], []
    for k in range(3000):
        opened = first + timedelta(seconds=rng.uniform(0, span))
        queue_id = rng.randint(1, len(queues))
        verdict = rng.choice(("site", "not_site", "not_site", "central", "unknown"))
        tickets.append({"id": k + 1, "source": "mail", "key": f"<thread{k}@example.org>",
                        "subject": f"jobs failing at {names[queue_id]}", "state": rng.choice(("open", "closed")),
                        "labels": [], "requester": f"user{k % 97}@example.org", "first_message_at": opened,
                        "last_message_at": opened + timedelta(hours=rng.uniform(0, 48)), "messages": 2,
                        "verdict": verdict, "verdict_reason": f"{verdict}: see the episodes", "judged_at": opened})
        mentions.append({"ticket_id": k + 1, "kind": "queue", "value": names[queue_id], "queue": names[queue_id],
                         "site": site_of[queue_id], "cloud": None, "complaint": True, "snippet": ""})
        if verdict == "site":
            episode = rng.choice(stored_episodes)
            links.append({"ticket_id": k + 1, "episode_id": episode.id, "score": 1.0,
                          "reason": "the ticket names the queue", "created_at": opened})
    session.execute(insert(Ticket), tickets)
    session.execute(insert(TicketMention), mentions)
    session.execute(insert(TicketLink), links)
    session.commit()
    filled = time.perf_counter() - t0
    t1 = time.perf_counter()
    rolled = rollup.rebuild(session, NOW)
    session.commit()
    return {"fill": filled, "rollup": time.perf_counter() - t1, "rolled": rolled, "queues": len(queues),
            "transitions": len(transitions) + 12, "tickets": len(tickets), "busy_queue": names[1]}


def pages(queue: str) -> list[tuple[str, Callable[[Session], Any]]]:
    week = Filters(NOW - timedelta(days=7), NOW)
    year = Filters(NOW - timedelta(days=365), NOW)
    found = []
    for label, f in (("7d", week), ("365d", year)):
        found.append((f"overview {label} (overview+heatmap+incidents+options)", lambda s, f=f: (
            queries.filter_options(s), queries.overview(s, f, NOW), queries.success_heatmap(s, f),
            queries.active_incidents(s, NOW))))
    for label, f in (("7d", week), ("365d", year)):
        found.append((f"  overview {label}: overview()", lambda s, f=f: queries.overview(s, f, NOW)))
        found.append((f"  overview {label}: success_heatmap()", lambda s, f=f: queries.success_heatmap(s, f)))
    found.append(("  incidents()", lambda s: queries.active_incidents(s, NOW)))
    found.append(("  filter_options()", lambda s: queries.filter_options(s)))
    found.append(("overview 365d, one cloud + one template", lambda s: (
        queries.overview(s, Filters(year.start, year.end, clouds=("DE",), templates=("hc_ttbar",)), NOW),
        queries.success_heatmap(s, Filters(year.start, year.end, clouds=("DE",), templates=("hc_ttbar",))))))
    found.append(("queue page 7d", lambda s: queries.queue_page(s, queue, week, NOW)))
    found.append(("queue page 365d", lambda s: queries.queue_page(s, queue, year, NOW)))
    found.append(("exclusions page 7d: transitions()", lambda s: queries.transitions(s, week)))
    found.append(("exclusions page 365d: transitions()", lambda s: queries.transitions(s, year)))
    found.append(("tickets page: tickets()", lambda s: queries.tickets(s)))
    found.append(("stress page: stress_tests() + stress_test()", lambda s: (
        queries.stress_tests(s), queries.stress_test(s, queries.stress_tests(s)[0].id))))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--keep", help="folder for the database (kept); default a temporary one")
    args = parser.parse_args()
    folder = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-dashboard-"))
    folder.mkdir(parents=True, exist_ok=True)
    engine = make_engine(f"sqlite:///{folder / 'bench.db'}")
    upgrade(engine)
    sessions = make_sessionmaker(engine)
    with sessions() as session:
        facts = fill(session, args.jobs, args.days)
    size = (folder / "bench.db").stat().st_size + sum(p.stat().st_size for p in folder.glob("bench.db-*"))
    print(f"filled {args.jobs:,} jobs over {args.days} days, {facts['queues']} queues, {facts['transitions']:,} "
          f"transitions, {facts['tickets']:,} tickets in {facts['fill']:.1f} s; rollup backfill "
          f"({facts['rolled']:,} final jobs) in {facts['rollup']:.1f} s; database {size / 2**20:.0f} MB")
    print(f"\n{'page':58} {'median ms':>10} {'min ms':>8} {'peak MB':>8}")
    over = []
    for label, call in pages(facts["busy_queue"]):
        timings = []
        for _ in range(args.runs):
            with sessions() as session:
                t = time.perf_counter()
                call(session)
                timings.append(time.perf_counter() - t)
        with sessions() as session:
            tracemalloc.start()
            call(session)
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        median = statistics.median(timings)
        if median > 0.3 and not label.startswith("  "):
            over.append(label)
        print(f"{label:58} {fmt_ms(median):>10} {fmt_ms(min(timings)):>8} {peak / 2**20:8.1f}")
    print(f"\npeak resident memory of the whole run (fill included): "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    print("every page under 300 ms" if not over else f"over 300 ms: {', '.join(over)}")
    engine.dispose()


if __name__ == "__main__":
    main()
