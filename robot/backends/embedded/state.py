"""The embedded grid's own persistent state, in a SQLite file inside its state folder.

The grid is a separate system from the robot (it stands in for PanDA and the sites), so it keeps
its own records: jobs, queue statuses and faults switched on by operators. SQLite's locking lets
`healthrobot grid break` in one process change the faults of a grid running in another.
"""
from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from robot.backends.embedded.config import FaultMode
from robot.clock import as_utc
from robot.jobstates import QueueStatus

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    panda_id INTEGER PRIMARY KEY AUTOINCREMENT,
    queue TEXT NOT NULL,
    status TEXT NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status);
CREATE INDEX IF NOT EXISTS jobs_name ON jobs (json_extract(data, '$.job_name'));
CREATE INDEX IF NOT EXISTS jobs_definition ON jobs (json_extract(data, '$.panda.jobDefinitionID'));
CREATE TABLE IF NOT EXISTS queue_status (
    queue TEXT PRIMARY KEY, status TEXT NOT NULL, reason TEXT NOT NULL, actor TEXT NOT NULL,
    changed_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS faults (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    queue TEXT NOT NULL, mode TEXT NOT NULL, start TEXT NOT NULL, until TEXT NOT NULL,
    probability REAL NOT NULL, slowdown REAL NOT NULL, actor TEXT NOT NULL,
    source TEXT UNIQUE  -- set for faults scheduled in the grid YAML, so a restart adds them once
);
CREATE TABLE IF NOT EXISTS downtimes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    site TEXT NOT NULL, start TEXT NOT NULL, until TEXT NOT NULL, reason TEXT NOT NULL, actor TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class Fault:
    queue: str
    mode: FaultMode
    start: datetime
    until: datetime
    probability: float = 1.0
    slowdown: float = 4.0
    actor: str = "config"
    id: int | None = None

    def active(self, now: datetime) -> bool:
        return self.start <= now < self.until


def _ts(when: datetime) -> str:
    return as_utc(when).isoformat()


def _dt(text: str) -> datetime:
    return as_utc(datetime.fromisoformat(text))


class GridState:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, timeout=30, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    # -- meta ------------------------------------------------------------------------------
    def started_at(self, now: datetime) -> datetime:
        """When the grid first started; relative fault schedules count from it."""
        self._db.execute("INSERT OR IGNORE INTO meta VALUES ('started_at', ?)", (_ts(now),))
        (value,) = self._db.execute("SELECT value FROM meta WHERE key='started_at'").fetchone()
        return _dt(value)

    # -- jobs --------------------------------------------------------------------------------
    def add_jobs(self, queue_and_data: list[tuple[str, dict[str, Any]]]) -> list[int]:
        ids = []
        with self._transaction():
            for queue, data in queue_and_data:
                cursor = self._db.execute(
                    "INSERT INTO jobs (queue, status, data) VALUES (?, ?, ?)",
                    (queue, data["job_status"], json.dumps(data)),
                )
                ids.append(int(cursor.lastrowid))
        return ids

    def save_job(self, panda_id: int, data: dict[str, Any]) -> None:
        self._db.execute(
            "UPDATE jobs SET status=?, data=? WHERE panda_id=?", (data["job_status"], json.dumps(data), panda_id)
        )

    def jobs(self, panda_ids: list[int]) -> dict[int, dict[str, Any]]:
        found: dict[int, dict[str, Any]] = {}
        for start in range(0, len(panda_ids), 500):
            chunk = panda_ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for panda_id, data in self._db.execute(f"SELECT panda_id, data FROM jobs WHERE panda_id IN ({marks})", chunk):
                found[panda_id] = json.loads(data)
        return found

    def ids_by_name(self, names: list[str]) -> dict[str, int]:
        """The PanDA ID of each job stored under one of these names (the first, were a name reused)."""
        found: dict[str, int] = {}
        for start in range(0, len(names), 500):
            chunk = names[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for panda_id, name in self._db.execute(
                f"SELECT panda_id, json_extract(data, '$.job_name') FROM jobs"
                f" WHERE json_extract(data, '$.job_name') IN ({marks}) ORDER BY panda_id", chunk):
                found.setdefault(name, panda_id)
        return found

    def ids_like(self, patterns: list[str]) -> list[int]:
        """The PanDA IDs of the jobs whose name matches one of these SQL LIKE patterns (escape `!`,
        case-insensitive as SQLite's LIKE is for ASCII)."""
        found: set[int] = set()
        for start in range(0, len(patterns), 500):
            chunk = patterns[start : start + 500]
            where = " OR ".join("json_extract(data, '$.job_name') LIKE ? ESCAPE '!'" for _ in chunk)
            found.update(pid for (pid,) in self._db.execute(f"SELECT panda_id FROM jobs WHERE {where}", chunk))
        return sorted(found)

    def jobs_in(self, statuses: tuple[str, ...]) -> list[tuple[int, dict[str, Any]]]:
        marks = ",".join("?" * len(statuses))
        rows = self._db.execute(
            f"SELECT panda_id, data FROM jobs WHERE status IN ({marks}) ORDER BY panda_id", statuses
        )
        return [(panda_id, json.loads(data)) for panda_id, data in rows]

    # -- queue status ------------------------------------------------------------------------
    def queue_statuses(self) -> dict[str, QueueStatus]:
        return {q: QueueStatus(s) for q, s in self._db.execute("SELECT queue, status FROM queue_status")}

    def set_queue_status(self, queue: str, status: QueueStatus, reason: str, actor: str, now: datetime) -> None:
        self._db.execute(
            "INSERT INTO queue_status VALUES (?, ?, ?, ?, ?) ON CONFLICT (queue) DO UPDATE SET "
            "status=excluded.status, reason=excluded.reason, actor=excluded.actor, changed_at=excluded.changed_at",
            (queue, status.value, reason, actor, _ts(now)),
        )

    # -- faults ------------------------------------------------------------------------------
    def add_fault(self, fault: Fault, source: str | None = None) -> None:
        """Record a fault; one with a `source` already recorded is ignored (healed ones stay healed)."""
        self._db.execute(
            "INSERT OR IGNORE INTO faults (queue, mode, start, until, probability, slowdown, actor, source) "
            "VALUES (?,?,?,?,?,?,?,?)",
            (fault.queue, fault.mode.value, _ts(fault.start), _ts(fault.until), fault.probability, fault.slowdown,
             fault.actor, source),
        )

    def heal(self, queue: str, now: datetime) -> int:
        """End every fault on the queue now (cancelling those not started yet); returns how many."""
        # A fault not started yet gets start=until=now, so it reads as ended, not as still scheduled.
        cursor = self._db.execute(
            "UPDATE faults SET start=MIN(start, ?), until=? WHERE queue=? AND until>?",
            (_ts(now), _ts(now), queue, _ts(now)),
        )
        return cursor.rowcount

    def faults(self) -> list[Fault]:
        rows = self._db.execute(
            "SELECT id, queue, mode, start, until, probability, slowdown, actor FROM faults ORDER BY id"
        )
        return [
            Fault(queue=q, mode=FaultMode(m), start=_dt(s), until=_dt(u), probability=p, slowdown=sd, actor=a, id=i)
            for i, q, m, s, u, p, sd, a in rows
        ]

    # -- announced downtimes ----------------------------------------------------------------
    def add_downtime(self, site: str, start: datetime, until: datetime, reason: str, actor: str) -> int:
        cursor = self._db.execute("INSERT INTO downtimes (site, start, until, reason, actor) VALUES (?,?,?,?,?)",
                                  (site, _ts(start), _ts(until), reason, actor))
        return int(cursor.lastrowid)

    def downtimes(self) -> list[tuple[int, str, datetime, datetime, str, str]]:
        """(id, site, start, until, reason, actor) of every announced downtime, oldest first."""
        rows = self._db.execute("SELECT id, site, start, until, reason, actor FROM downtimes ORDER BY start, id")
        return [(i, site, _dt(s), _dt(u), reason, actor) for i, site, s, u, reason, actor in rows]

    def _transaction(self) -> "_Transaction":
        return _Transaction(self._db)


class _Transaction:
    def __init__(self, db: sqlite3.Connection):
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: Any, *_: Any) -> None:
        self._db.execute("ROLLBACK" if kind else "COMMIT")
