"""The dashboards' data queries over a year of history, on SQLite or PostgreSQL (target: 200 ms a page).

Fills a fresh database (through the robot's migrations) with 365 days of functional-test results
for 1,000 queues at 100 sites in 5 clouds and 3 templates: ~4 % failures with real pilot error
codes, broken spells that the robot excluded and re-included, central bursts (many queues failing
at once for an hour or two), tickets linked to episodes, stress tests. The jobs go in through the
databases' bulk paths (executemany of plain tuples on SQLite, COPY on PostgreSQL) with the job
table's indexes dropped and built again afterwards; the job rollup is then built in bulk by the
backfill the robot ships (`robot.rollup.rebuild`). Then each page's queries are timed for every
time range the pages offer (dashboard.pages.common.RANGES) and for a year: median of 5 runs (and
the fastest run's CPU time: other work on a shared machine only adds to it), wall and CPU time of this process (on SQLite all the work is in it; on PostgreSQL the server's share is
not), and the peak memory Python allocated for each page (a separate, untimed run).

    .venv/bin/python bench/dashboard.py [--jobs 1000000] [--db sqlite|postgres] [--keep DIR]
    .venv/bin/python bench/dashboard.py --jobs 10000000 --db postgres      # make bench-10m

`--db postgres` starts a private PostgreSQL cluster (tests/pgserver.py) and removes it at the end.
`--keep DIR` keeps the database in DIR (SQLite's file, or PostgreSQL's cluster in DIR/pg) and reuses it
when it holds the same history, after applying the migrations added since it was filled.
"""
from __future__ import annotations

import argparse
import gc
import os
import random
import resource
import statistics
import sys
import tempfile
import time
import tracemalloc
from contextlib import ExitStack
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import Engine, event, func, inspect, insert, select, text
from sqlalchemy.orm import Session

from dashboard import queries
from dashboard.pages.common import RANGES
from dashboard.queries import Filters
from robot import rollup
from robot.loop import BACKEND_SETTING, LAST_STEP_SETTING
from robot.storage.database import make_engine, make_sessionmaker, upgrade
from robot.storage.models import (Cloud, Episode, Event, Job, Queue, QueueTransition, Setting, Site, Template,
                                  Test, TestQueue, Ticket, TicketLink, TicketMention)

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)  # the history ends here
# The pages are read at a moment within an hour, as a clock gives it: the windows' edges cut hours
AT = NOW - timedelta(minutes=42, seconds=36, microseconds=600_000)
TARGET = 0.200  # seconds per page
REAPED = 0.05  # seconds for the postmaster to reap a query's parallel workers (PostgreSQL)
CLOUDS = ("CA", "DE", "FR", "UK", "US")
SITES_PER_CLOUD = 20
QUEUES_PER_SITE = 10
TEMPLATES = (("hc_zmumu", "zmumu"), ("hc_ttbar", "ttbar"), ("hc_data_zmumu", "zmumu"))
CHUNK = 20_000
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
CENTRAL = ("pilot", 1316, "RUCIOSERVICEUNAVAILABLE", "central", "Rucio server unavailable: 503")
JOB_COLUMNS = ("test_id", "queue_id", "job_name", "panda_id", "phase", "job_status", "dataset", "n_files",
               "recorded_at", "submitted_at", "status_changed_at", "creation_time", "start_time", "end_time",
               "trans_exit_code", "pilot_error_code", "pilot_error_diag", "exe_error_code", "exe_error_diag",
               "ddm_error_code", "ddm_error_diag", "task_buffer_error_code", "task_buffer_error_diag",
               "job_dispatcher_error_code", "job_dispatcher_error_diag", "sup_error_code", "n_events",
               "cpu_consumption_time", "max_rss_kb", "core_count", "attempt_nr", "time_queue", "time_stagein",
               "time_setup", "time_payload", "time_stageout", "outcome", "error_source", "error_code",
               "error_name", "error_class", "error_diag")
DATASET = "mc23_13p6TeV.601189.Zmumu.DAOD_PHYS"
PANDA = 6_000_000_000
EPOCH = datetime(1970, 1, 1)
GENERATOR = 2  # the history `fill` writes: a kept database is reused only if it was filled by the same version
# While filling only (the pages are timed with the robots' own settings): no foreign key look-ups per
# row (the generated rows are consistent; on PostgreSQL the replica role skips the triggers behind
# them), memory for sorts and index builds; on SQLite no sync to disk
BULK_SETTINGS = {"sqlite": ("PRAGMA synchronous=OFF", "PRAGMA foreign_keys=OFF", "PRAGMA cache_size=-524288"),
                 "postgresql": ("SET session_replication_role = replica", "SET maintenance_work_mem = '512MB'",
                                "SET work_mem = '256MB'")}


def stamp(seconds: float) -> str:
    """Unix seconds as the naive UTC text both databases read as a timestamp (as the models store it)."""
    return (EPOCH + timedelta(seconds=seconds)).isoformat(" ", "microseconds")


def fill(engine: Engine, n_jobs: int, days: int, seed: int = 7, clouds: tuple[str, ...] = CLOUDS,
         sites_per_cloud: int = SITES_PER_CLOUD, queues_per_site: int = QUEUES_PER_SITE) -> dict[str, Any]:
    """A year-like history in an empty, migrated database; returns what was written and how fast."""
    rng = random.Random(seed)
    t0 = time.perf_counter()
    first = NOW - timedelta(days=days)
    span = days * 86400.0
    sessions = make_sessionmaker(engine)
    with sessions() as session:
        facts = _fill_context(session, rng, first, days, clouds, sites_per_cloud, queues_per_site)
        _advance_sequences(session, ("cloud", "site", "queue", "template", "test"))
        session.commit()
    with engine.begin() as connection:
        indexes = _drop_indexes(connection)
        write = _writer(connection)
        bursts = _bursts(rng, span, facts["queues"])
        for rows in _job_rows(rng, n_jobs, days, first, facts["spells"], bursts, facts["queues"]):
            write(rows)
        _create_indexes(connection, indexes)
    with sessions() as session:
        _fill_after_jobs(session, rng, first, days, n_jobs, facts)
        session.commit()
    filled = time.perf_counter() - t0
    t1 = time.perf_counter()
    with sessions() as session:
        rolled = rollup.rebuild(session, NOW)
        session.commit()
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.execute(text("VACUUM ANALYZE"))
    else:
        with engine.begin() as connection:
            connection.execute(text("ANALYZE"))
        with engine.connect() as connection:  # the write-ahead log into the database: its size is the database's
            connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    return {"fill": filled, "rollup": time.perf_counter() - t1, "rolled": rolled, "queues": facts["queues"],
            "transitions": facts["transitions"], "tickets": facts["tickets"], "busy_queue": facts["names"][1]}


def _fill_context(session: Session, rng: random.Random, first: datetime, days: int, clouds: tuple[str, ...],
                  sites_per_cloud: int, queues_per_site: int) -> dict[str, Any]:
    session.execute(insert(Cloud), [{"id": i + 1, "name": c} for i, c in enumerate(clouds)])
    sites, queues = [], []
    for c, cloud in enumerate(clouds):
        for s in range(sites_per_cloud):
            site_id = len(sites) + 1
            sites.append({"id": site_id, "name": f"{cloud}-SITE{s:02d}", "cloud_id": c + 1, "contacts": []})
            for q in range(queues_per_site):
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
    if transitions:
        session.execute(insert(QueueTransition), transitions)
    if episodes:
        session.execute(insert(Episode), episodes)
    # the last spell of a few queues is still going on
    for queue_id in rng.sample(range(1, len(queues) + 1), min(12, len(queues))):
        session.add(QueueTransition(queue_id=queue_id, time=NOW - timedelta(hours=2), kind="status", old="online",
                                    new="brokeroff", reason="site failures: STAGEINFAILED x6", evidence={},
                                    actor="healthrobot", policy="default", applied=True, read_back="brokeroff"))
        session.get(Queue, queue_id).robot_state = "excluded"
        session.get(Queue, queue_id).status = "brokeroff"
    return {"spells": spells, "queues": len(queues), "transitions": len(transitions) + min(12, len(queues)),
            "names": {q["id"]: q["name"] for q in queues},
            "sites": {q["id"]: sites[q["site_id"] - 1]["name"] for q in queues}}


def _advance_sequences(session: Session, tables: tuple[str, ...]) -> None:
    """On PostgreSQL, ids given explicitly leave the tables' sequences behind: moved past them."""
    if session.get_bind().dialect.name == "postgresql":
        for table in tables:
            session.execute(text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                                 f"(SELECT max(id) FROM {table}))"))


def _bursts(rng: random.Random, span: float, queues: int) -> list[tuple[float, float, set[int]]]:
    """Central bursts: about one a month, 1-3 hours, a third of the queues failing at once."""
    found = []
    for _ in range(max(1, int(span / (30 * 86400)))):
        start = rng.uniform(0, span - 4 * 3600)
        found.append((start, start + rng.uniform(1, 3) * 3600, set(rng.sample(range(1, queues + 1), queues // 3))))
    return sorted(found, key=lambda b: b[0])


def _job_rows(rng: random.Random, n_jobs: int, days: int, first: datetime, spells: dict[int, list],
              bursts: list[tuple[float, float, set[int]]], queues: int) -> Iterator[list[tuple]]:
    """The finished jobs in end-time order, CHUNK rows at a time, as tuples in JOB_COLUMNS order."""
    noise = [n[:5] for n in NOISE]
    noise_weights = [w for *_, w in NOISE]
    n_templates = len(TEMPLATES)
    base = first.timestamp()
    span = days * 86400.0
    random_, uniform, randint, expovariate = rng.random, rng.uniform, rng.randint, rng.expovariate
    done = 0
    while done < n_jobs:
        count = min(CHUNK, n_jobs - done)
        lo, hi = span * done / n_jobs, span * (done + count) / n_jobs
        offsets = sorted(uniform(lo, hi) for _ in range(count))
        active = [b for b in bursts if b[0] < hi and b[1] > lo]
        rows = []
        for k, offset in enumerate(offsets):
            i = done + k
            queue_id = randint(1, queues)
            template = randint(1, n_templates)
            wall = uniform(300, 2400)
            wait = expovariate(1 / 300)
            end = base + offset
            start = end - wall
            created = stamp(start - wait)
            ended = stamp(end)
            day = min(int(offset // 86400), days)
            broken = None
            for a, b, cause in spells.get(queue_id, ()):
                if a <= offset < b:
                    broken = cause
            if broken is None:
                for a, b, hit in active:
                    if a <= offset < b and queue_id in hit and random_() < 0.6:
                        broken = CENTRAL
            failed = (random_() < 0.8) if broken else (random_() < 0.04)
            if failed:
                source, code, name, klass, diag = broken or rng.choices(noise, noise_weights)[0]
                pilot = source == "pilot"
                rows.append((
                    day * n_templates + template, queue_id, f"hc.{i:09d}", PANDA + i, "done", "failed", DATASET, 2,
                    created, created, ended, created, stamp(start), ended, None,
                    code if pilot else 0, diag if pilot else "", 0, "", 0, "", 0 if pilot else code,
                    "" if pilot else diag, 0, "", 0, 0, wall * uniform(0.1, 0.5), 2_000_000, 1, 1, wait,
                    uniform(2, 60), uniform(5, 30), uniform(10, 300), None, "failed", source, code, name, klass, diag))
            else:
                rows.append((
                    day * n_templates + template, queue_id, f"hc.{i:09d}", PANDA + i, "done", "finished", DATASET, 2,
                    created, created, ended, created, stamp(start), ended, 0,
                    0, "", 0, "", 0, "", 0, "", 0, "", 0, 20000, wall * uniform(0.5, 0.9), 2_000_000, 1, 1, wait,
                    uniform(2, 60), uniform(5, 30), wall - 120, uniform(2, 20), "completed", None, None, None, None,
                    None))
        done += count
        yield rows


def _drop_indexes(connection: Any) -> list[dict[str, Any]]:
    """The job table's secondary indexes, dropped for the bulk load (built again by `_create_indexes`)."""
    found = [i for i in inspect(connection).get_indexes("job")  # not those behind a constraint (job_name)
             if i.get("name") and all(i["column_names"]) and not i.get("duplicates_constraint")]
    for index in found:
        connection.execute(text(f'DROP INDEX "{index["name"]}"'))
    return found


def _create_indexes(connection: Any, indexes: list[dict[str, Any]]) -> None:
    for index in indexes:
        columns = ", ".join(f'"{c}"' for c in index["column_names"])
        unique = "UNIQUE " if index.get("unique") else ""
        connection.execute(text(f'CREATE {unique}INDEX "{index["name"]}" ON job ({columns})'))


def _writer(connection: Any) -> Callable[[list[tuple]], None]:
    """Appends job rows through the database's own bulk path."""
    raw = connection.connection.driver_connection
    columns = ", ".join(JOB_COLUMNS)
    if connection.dialect.name == "postgresql":
        def copy(rows: list[tuple]) -> None:
            with raw.cursor() as cursor, cursor.copy(f"COPY job ({columns}) FROM STDIN") as sink:
                for row in rows:
                    sink.write_row(row)
        return copy
    statement = f"INSERT INTO job ({columns}) VALUES ({', '.join('?' * len(JOB_COLUMNS))})"

    def executemany(rows: list[tuple]) -> None:
        raw.executemany(statement, rows)
    return executemany


def _fill_after_jobs(session: Session, rng: random.Random, first: datetime, days: int, n_jobs: int,
                     facts: dict[str, Any]) -> None:
    queues, names = facts["queues"], facts["names"]
    span = days * 86400.0
    # jobs in flight now: one per queue and template
    session.execute(insert(Job), [
        {"test_id": days * len(TEMPLATES) + t, "queue_id": q, "job_name": f"hc.flying.{q}.{t}",
         "panda_id": PANDA + n_jobs + q * 10 + t, "phase": "active", "job_status": "running", "dataset": "d",
         "n_files": 2, "recorded_at": NOW - timedelta(minutes=20), "submitted_at": NOW - timedelta(minutes=20),
         "status_changed_at": NOW - timedelta(minutes=5), "creation_time": NOW - timedelta(minutes=20),
         "start_time": NOW - timedelta(minutes=5)} for q in range(1, queues + 1) for t in (1, 2, 3)])

    # stress tests: 12, each on 1-3 queues, 200 jobs per queue
    for s in range(12):
        when = NOW - timedelta(days=rng.uniform(1, days - 1))
        chosen = rng.sample(range(1, queues + 1), min(queues, rng.randint(1, 3)))
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
                   "message": f"{queues // 7} of {queues} queues failing at once: a central problem, not the sites; "
                              "exclusions held", "details": {}})
    session.execute(insert(Event), events)
    session.add_all([Setting(name=LAST_STEP_SETTING, value=NOW.isoformat(), actor="robot", changed_at=NOW),
                     Setting(name=BACKEND_SETTING, value="ok", actor="robot", changed_at=NOW)])

    # tickets: 3000 over the year, most naming a queue, some linked to its episode
    session.flush()
    stored_episodes = session.query(Episode.id, Episode.queue_id, Episode.start).all()
    tickets, mentions, links = [], [], []
    for k in range(3000):
        opened = first + timedelta(seconds=rng.uniform(0, span))
        queue_id = rng.randint(1, queues)
        verdict = rng.choice(("site", "not_site", "not_site", "central", "unknown"))
        tickets.append({"id": k + 1, "source": "mail", "key": f"<thread{k}@example.org>",
                        "subject": f"jobs failing at {names[queue_id]}", "state": rng.choice(("open", "closed")),
                        "labels": [], "requester": f"user{k % 97}@example.org", "first_message_at": opened,
                        "last_message_at": opened + timedelta(hours=rng.uniform(0, 48)), "messages": 2,
                        "verdict": verdict, "verdict_reason": f"{verdict}: see the episodes", "judged_at": opened})
        mentions.append({"ticket_id": k + 1, "kind": "queue", "value": names[queue_id], "queue": names[queue_id],
                         "site": facts["sites"][queue_id], "cloud": None, "complaint": True, "snippet": ""})
        if verdict == "site" and stored_episodes:
            episode = rng.choice(stored_episodes)
            links.append({"ticket_id": k + 1, "episode_id": episode.id, "score": 1.0,
                          "reason": "the ticket names the queue", "created_at": opened})
    session.execute(insert(Ticket), tickets)
    _advance_sequences(session, ("ticket",))
    session.execute(insert(TicketMention), mentions)
    if links:
        session.execute(insert(TicketLink), links)
    facts["tickets"] = len(tickets)


def windows() -> list[tuple[str, Filters]]:
    """Every range the pages offer, then a year (what the rollup is for)."""
    return [(label, Filters(AT - span, AT)) for label, span in RANGES.items()] + \
        [("365d", Filters(AT - timedelta(days=365), AT))]


def pages(queue: str) -> list[tuple[str, Callable[[Session], Any]]]:
    """(label, the queries one page load runs); labels starting with spaces are parts of a page."""
    found: list[tuple[str, Callable[[Session], Any]]] = []
    for label, f in windows():
        found.append((f"overview {label}", lambda s, f=f: (
            queries.filter_options(s), queries.overview(s, f, AT), queries.success_heatmap(s, f),
            queries.active_incidents(s, AT))))
        found.append((f"  overview(){'':4}", lambda s, f=f: queries.overview(s, f, AT)))
        found.append((f"  success_heatmap()", lambda s, f=f: queries.success_heatmap(s, f)))
        narrowed = Filters(f.start, f.end, clouds=("DE",), templates=("hc_ttbar",))
        found.append((f"overview {label}, one cloud + one template", lambda s, f=narrowed: (
            queries.filter_options(s), queries.overview(s, f, AT), queries.success_heatmap(s, f),
            queries.active_incidents(s, AT))))
        found.append((f"queue page {label}", lambda s, f=f: queries.queue_page(s, queue, f, AT)))
        found.append((f"exclusions page {label}", lambda s, f=f: queries.transitions(s, f)))
    found.append(("tickets page", lambda s: (queries.tickets(s), queries.ticket(s, 1))))
    found.append(("stress page", lambda s: (queries.stress_tests(s), queries.stress_test(s, queries.stress_tests(s)[0].id))))
    return found


def _server_cpu(session: Session) -> Callable[[], float]:
    """CPU seconds the database server spent for this session so far: nothing on SQLite (it runs in
    this process, whose CPU time is counted already); on PostgreSQL the backend process's and its
    parallel workers' (PostgreSQL starts them for a query on many rows, e.g. a year's overview; they
    are the postmaster's children, whose time it is credited with, in clock ticks, once it has
    reaped them: hence a pause before each reading)."""
    if session.get_bind().dialect.name != "postgresql":
        return lambda: 0.0
    backend = Path(f"/proc/{session.scalar(text('SELECT pg_backend_pid()'))}")
    postmaster = Path(f"/proc/{_stat_fields(backend / 'stat')[1]}/stat")
    tick = os.sysconf("SC_CLK_TCK")

    def read() -> float:
        time.sleep(REAPED)
        reaped = sum(int(n) for n in _stat_fields(postmaster)[13:15])  # cutime, cstime
        return int((backend / "schedstat").read_text().split()[0]) / 1e9 + reaped / tick
    return read


def _stat_fields(stat: Path) -> list[str]:
    """A process's /proc stat fields from the state on (the name before it may hold spaces)."""
    return stat.read_text().rsplit(")", 1)[1].split()


def time_pages(sessions: Any, queue: str, runs: int) -> list[tuple[str, float, float, float, float]]:
    """(label, median wall s, median and least CPU s of this process and the database server, peak MB
    allocated) per page."""
    found = []
    for label, call in pages(queue):
        walls, cpus = [], []
        for _ in range(runs):
            with sessions() as session:
                server = _server_cpu(session)
                wall, cpu, served = time.perf_counter(), time.process_time(), server()
                call(session)
                walls.append(time.perf_counter() - wall)
                cpus.append(time.process_time() - cpu + server() - served)
        with sessions() as session:
            tracemalloc.start()
            call(session)
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        found.append((label, statistics.median(walls), statistics.median(cpus), min(cpus), peak / 2**20))
    return found


def _bulk_settings(dialect: str) -> Callable[[Any, Any], None]:
    def apply(connection: Any, _record: Any) -> None:
        autocommit = getattr(connection, "autocommit", None)  # psycopg: kept after the first rollback
        if autocommit is False:
            connection.autocommit = True
        for statement in BULK_SETTINGS[dialect]:
            connection.execute(statement)
        if autocommit is False:
            connection.autocommit = False
    return apply


def database_size(engine: Engine, folder: Path) -> int:
    if engine.dialect.name == "postgresql":
        with engine.connect() as connection:
            return int(connection.scalar(select(func.pg_database_size(func.current_database()))))
    return sum(p.stat().st_size for p in folder.glob("bench.db*"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--keep", help="folder for the database (SQLite's file, or PostgreSQL's cluster in its "
                                           "pg/ folder), kept and reused; default a temporary one")
    args = parser.parse_args()
    with ExitStack() as stack:
        folder = Path(args.keep) if args.keep else Path(stack.enter_context(
            tempfile.TemporaryDirectory(prefix="bench-dashboard-")))
        folder.mkdir(parents=True, exist_ok=True)
        kind = "" if args.db == "sqlite" else f"{args.db}-"
        marker = folder / f"bench-{kind}{args.jobs}-{args.days}-v{GENERATOR}.done"
        reuse = bool(args.keep) and marker.exists()
        if args.db == "postgres":
            from tests.pgserver import postgres_server

            server = stack.enter_context(postgres_server(folder / "pg" if args.keep else None))
            if not reuse:
                server.drop_database("bench")
                server.create_database("bench")
            url = server.url("bench")
        else:
            url = f"sqlite:///{folder / 'bench.db'}"
        if not reuse:
            for old in folder.glob("bench*"):
                old.unlink()
            filler = make_engine(url)
            event.listen(filler, "connect", _bulk_settings(filler.dialect.name))
            upgrade(filler)
            facts = fill(filler, args.jobs, args.days)
            filler.dispose()
            print(f"filled {args.jobs:,} jobs over {args.days} days, {facts['queues']} queues x {len(TEMPLATES)} "
                  f"templates, {facts['transitions']:,} transitions, {facts['tickets']:,} tickets in "
                  f"{facts['fill']:.0f} s ({args.jobs / facts['fill']:,.0f} jobs/s, indexes included); rollup "
                  f"backfill ({facts['rolled']:,} final jobs) in {facts['rollup']:.0f} s")
            if args.keep:
                marker.write_text("done\n")
        else:  # migrations added since the fill are applied (they carry existing rows over, as on a robot's database)
            print(f"reusing the database in {folder}")
            reused = make_engine(url)
            upgrade(reused)
            with reused.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
                connection.exec_driver_sql("ANALYZE")  # the planner's statistics cover the tables they added
            reused.dispose()
        engine = make_engine(url)
        stack.callback(engine.dispose)
        size = database_size(engine, folder)
        print(f"database ({args.db}) {size / 2**20:,.0f} MB: {size / 2**20 / (args.jobs / 1e6):,.0f} MB per million jobs")
        busy = make_sessionmaker(engine)().scalar(select(Queue.name).where(Queue.id == 1))
        print(f"\nload average at the start of the timing: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        print("CPU: this process and the database server's process for the session, median of the runs (judged "
              "against the target) and the fastest run; wall time counts the other work on a shared machine")
        print(f"{'page (every range the pages offer, and a year)':50} {'CPU ms':>7} {'fastest':>7} {'wall ms':>8} "
              f"{'peak MB':>7}  target")
        gc.freeze()  # as the dashboard does once started (dashboard.app.create_app)
        over = []
        for label, wall, cpu, least, peak in time_pages(make_sessionmaker(engine), busy, args.runs):
            part = label.startswith("  ")
            verdict = "" if part else ("ok" if cpu < TARGET else "OVER")
            if not part and cpu >= TARGET:
                over.append(label)
            print(f"{label:50} {cpu * 1000:7.1f} {least * 1000:7.1f} {wall * 1000:8.1f} {peak:7.1f}  "
                  f"{'' if part else f'< {TARGET * 1000:.0f} ms {verdict}'}")
        print(f"\nload average at the end: {os.getloadavg()[0]:.1f}; peak resident memory of the whole run: "
              f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
        print(f"every page under {TARGET * 1000:.0f} ms" if not over else
              f"over {TARGET * 1000:.0f} ms: {', '.join(over)}")


if __name__ == "__main__":
    main()
