"""Several robot processes on one database, sharing the work the way Rucio's daemons do.

Each process (a *worker*) writes a heartbeat row at every step. The live workers (a beat within
two loop intervals, not stopped) split the queues by a stable hash of the queue name modulo their
number, each taking the queues whose hash falls on its rank among them (ordered by worker id, i.e.
by start). A worker that stops beating is dead after two intervals and its queues fall to the
others at their next step. Decisions that need the whole grid (topology, queue statuses, the
exclusion engine with its mass guard and caps, incidents, stress supervision, the dashboards'
rollup) are taken by one leader at a time: the worker holding the `leader` lease, renewed at each
step and taken over by a conditional update once it expired.

The rules are pure functions of the stored heartbeats and the given `now`; `Workers` does the I/O.
On SQLite only one process may run: a second refuses to start (`AnotherRobotRunning`).
"""
from __future__ import annotations

import os
import socket
import zlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Iterable, Sequence

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from robot.storage.models import Lease, Worker

LEADER = "leader"
DEAD_AFTER_INTERVALS = 2


class AnotherRobotRunning(Exception):
    """A second robot process on a SQLite database."""


@dataclass(frozen=True)
class Beat:
    id: int
    hostname: str
    pid: int
    last_beat_at: datetime
    stopped_at: datetime | None = None


# -- the rules (pure) ---------------------------------------------------------------------------
def dead_after(interval: timedelta) -> timedelta:
    return DEAD_AFTER_INTERVALS * interval


def is_live(beat: Beat, now: datetime, interval: timedelta) -> bool:
    return beat.stopped_at is None and now - beat.last_beat_at <= dead_after(interval)


def live_ids(beats: Iterable[Beat], now: datetime, interval: timedelta, me: int) -> list[int]:
    """The live workers' ids in rank order (oldest first); `me` is always among them."""
    return sorted({b.id for b in beats if is_live(b, now, interval)} | {me})


def queue_hash(queue: str) -> int:
    """Stable across processes, machines and Python versions (unlike hash())."""
    return zlib.crc32(queue.encode())


def owner(queue: str, live: Sequence[int]) -> int:
    """The live worker that owns `queue`."""
    return live[queue_hash(queue) % len(live)]


def may_take_lease(holder: int | None, expires_at: datetime | None, me: int, now: datetime) -> bool:
    """A lease is free when nobody holds it, it expired, or `me` holds it already (renewal)."""
    return holder is None or holder == me or expires_at is None or expires_at <= now


@dataclass(frozen=True)
class Shard:
    """This worker's part of the work for one step."""

    me: int
    live: tuple[int, ...]
    leader: bool

    @property
    def alone(self) -> bool:
        return len(self.live) == 1

    def owns(self, queue: str) -> bool:
        return self.alone or owner(queue, self.live) == self.me

    def may_reconcile(self, recorded_by: int | None, live_now: Iterable[int]) -> bool:
        """Rows recorded by this worker, by a dead one, or before workers were recorded may be settled;
        a live worker's rows are its own business (it may be sending them right now). `live_now` is read
        after the rows: a worker that started since this step's beat counts as live."""
        return recorded_by is None or recorded_by == self.me or recorded_by not in set(live_now)


SOLO = Shard(me=0, live=(0,), leader=True)  # one process that owns everything (the simulator)


# -- the I/O -----------------------------------------------------------------------------------
def identity() -> tuple[str, int]:
    return socket.gethostname(), os.getpid()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Workers:
    """This process's heartbeat row and lease; `step(now)` beats and returns the step's Shard."""

    def __init__(self, sessions: sessionmaker[Session], interval: timedelta,
                 who: tuple[str, int] | None = None):
        self.sessions = sessions
        self.interval = interval
        self.hostname, self.pid = who or identity()
        self.id: int | None = None

    def register(self, now: datetime) -> int:
        """Writes this process's heartbeat row. On SQLite, refuses when another live process uses the database."""
        with self.sessions() as session:
            # An earlier life of this very process (a robot rebuilt in the same process) is over.
            session.execute(update(Worker).where(Worker.hostname == self.hostname, Worker.pid == self.pid,
                                                 Worker.stopped_at.is_(None)).values(stopped_at=now))
            # A process of this host whose pid is gone died without stopping (SIGKILL, a crash): it is
            # dead now, not two intervals from now, so a restarted robot takes its queues at once.
            gone = [b.id for b in self._beats(session) if b.hostname == self.hostname and b.stopped_at is None
                    and b.pid != self.pid and not _pid_alive(b.pid)]
            if gone:
                session.execute(update(Worker).where(Worker.id.in_(gone)).values(stopped_at=now))
                session.execute(update(Lease).where(Lease.name == LEADER, Lease.holder.in_(gone))
                                .values(holder=None, expires_at=None))
            if session.get_bind().dialect.name == "sqlite":
                for other in self._beats(session):
                    alive = other.hostname != self.hostname or _pid_alive(other.pid)
                    if is_live(other, now, self.interval) and alive:
                        raise AnotherRobotRunning(
                            f"another robot process (host {other.hostname}, pid {other.pid}) uses this SQLite"
                            " database; several processes need PostgreSQL (database.url)")
            worker = Worker(hostname=self.hostname, pid=self.pid, started_at=now, last_beat_at=now)
            session.add(worker)
            session.commit()
            self.id = worker.id
        return self.id

    def step(self, now: datetime) -> Shard:
        """Beat, see who lives, take or renew the leader's lease; committed at once (no lock held)."""
        me = self.id if self.id is not None else self.register(now)
        with self.sessions() as session:
            session.execute(update(Worker).where(Worker.id == me).values(last_beat_at=now))
            live = live_ids(self._beats(session), now, self.interval, me)
            lease = session.get(Lease, LEADER)
            taken = False
            if lease is not None and may_take_lease(lease.holder, lease.expires_at, me, now):
                # The same rule again in the WHERE clause: of workers racing for it, one update wins.
                taken = session.execute(
                    update(Lease).where(Lease.name == LEADER, or_(Lease.holder.is_(None), Lease.holder == me,
                                                                  Lease.expires_at.is_(None), Lease.expires_at <= now))
                    .values(holder=me, expires_at=now + dead_after(self.interval))
                    .execution_options(synchronize_session=False)
                ).rowcount == 1
            session.commit()
        return Shard(me=me, live=tuple(live), leader=taken)

    def stop(self, now: datetime) -> None:
        """A clean stop: the others take this worker's queues and the lease at their next step."""
        if self.id is None:
            return
        with self.sessions() as session:
            session.execute(update(Worker).where(Worker.id == self.id).values(stopped_at=now))
            session.execute(update(Lease).where(Lease.name == LEADER, Lease.holder == self.id)
                            .values(holder=None, expires_at=None))
            session.commit()

    def live_now(self, session: Session, now: datetime, ids: Iterable[int]) -> set[int]:
        """Which of these workers are live, read now (in the caller's transaction)."""
        wanted = sorted({i for i in ids if i is not None})
        if not wanted:
            return set()
        return {b.id for b in self._beats(session, wanted) if is_live(b, now, self.interval)}

    @staticmethod
    def _beats(session: Session, ids: Sequence[int] | None = None) -> list[Beat]:
        return [Beat(*row) for row in session.execute(
            select(Worker.id, Worker.hostname, Worker.pid, Worker.last_beat_at, Worker.stopped_at)
            .where(Worker.stopped_at.is_(None), *([] if ids is None else [Worker.id.in_(ids)])))]
