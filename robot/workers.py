"""Several robot processes on one database, sharing the work the way Rucio's daemons do.

Each process (a *worker*) writes a heartbeat row at every step. The live workers (a beat within
two loop intervals, not stopped, and on PostgreSQL still connected) split the queues by a stable
hash of the queue name modulo their number, each taking the queues whose hash falls on its rank
among them (ordered by worker id, i.e. by start). Decisions that need the whole grid (topology,
queue statuses, the exclusion engine with its mass guard and caps, incidents, stress supervision,
the dashboards' rollup) are taken by one leader at a time: the worker holding the `leader` lease,
renewed at each step and taken over by a conditional update once it expired or its holder died.

When is a worker dead? On PostgreSQL each worker holds a session advisory lock keyed by its id on
a connection of its own for as long as it lives; the server releases it the moment the process is
gone (SIGKILL, a crash: the kernel closes its socket). A killed worker is therefore dead at the
others' next step, and its queues and lease are taken in that same step: replaced within one loop
interval of its death, its queues untested for at most two.

A worker that lives but stops beating (hung: stuck in a remote call, stopped) keeps its lock. A
worker beats at the start of each step, before each of its phases (each may call a remote
service) and at its end, so its heartbeat is never older than one loop interval (plus the
scheduler's delay) while it works. One older than 1.5 intervals means it has been stuck in one
place: the first peer to step after that *fences* it (sets its `stopped_at`, only while its
heartbeat is still that old) and takes its queues in the same step, so it is replaced within two
loop intervals of the first beat it missed. Every beat is conditional on the worker not being fenced, so the two
cannot both win: a fenced worker that wakes up finds its beat refused before its next phase,
drops what it was doing (`Fenced`), lets go of its lock and comes back at its next step as a new
worker, never acting on queues that are someone else's now.

The rules are pure functions of the stored heartbeats and the given `now`; `Workers` does the I/O.
On SQLite only one process may run: a second refuses to start (`AnotherRobotRunning`).
"""
from __future__ import annotations

import atexit
import contextlib
import os
import socket
import time
import zlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Iterable, Sequence

from sqlalchemy import Connection, event, func, or_, select, text, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from robot.storage.models import Lease, Worker

LEADER = "leader"
DEAD_AFTER_INTERVALS = 2  # the lease's term, and on SQLite how long another process counts as running
HUNG_AFTER_INTERVALS = 1.5  # a beat this old: stuck (a worker beats before each phase of a step and at its end)
LOCK_WAIT_INTERVALS = 0.25  # PostgreSQL: how long a step's statement waits for a lock (lock_timeout)
LOCK_NOT_AVAILABLE = "55P03"  # PostgreSQL's SQLSTATE for a lock wait that reached lock_timeout
ALIVE_LOCK = 0x51C0B08  # PostgreSQL advisory lock (ALIVE_LOCK, worker id): held by the worker while its process lives


def bound_lock_waits(session: Session, interval: timedelta) -> None:
    """On PostgreSQL, each transaction of this step's session waits at most a quarter interval for a lock
    (`SET LOCAL lock_timeout`). A peer hung inside its transaction (in a remote call, a stopped process) holds
    its row locks until it is fenced and wakes; without a bound, a step needing one of those rows would hang
    with it and miss its own beats. With it, the statement fails (`lock_wait_timed_out`), the step stops,
    and the next one tries again. Only the loop's steps: commands and pages wait as PostgreSQL's default."""
    if session.get_bind().dialect.name != "postgresql":
        return
    milliseconds = max(1, int(interval.total_seconds() * 1000 * LOCK_WAIT_INTERVALS))

    def bound(_session: Session, _transaction: object, connection: Connection) -> None:
        connection.exec_driver_sql(f"SET LOCAL lock_timeout = {milliseconds}")

    event.listen(session, "after_begin", bound)


def lock_wait_timed_out(exc: DBAPIError) -> bool:
    """Whether PostgreSQL stopped the statement because it waited lock_timeout for a lock."""
    return getattr(exc.orig, "sqlstate", None) == LOCK_NOT_AVAILABLE


class AnotherRobotRunning(Exception):
    """A second robot process on a SQLite database."""


class Fenced(Exception):
    """This worker was counted dead while it lived (its heartbeat went stale: it hung) and its queues
    passed to others: it must stop acting on them."""


@dataclass(frozen=True)
class Beat:
    id: int
    hostname: str
    pid: int
    last_beat_at: datetime
    stopped_at: datetime | None = None
    connected: bool = True  # on PostgreSQL: its process still holds its liveness lock


# -- the rules (pure) ---------------------------------------------------------------------------
def dead_after(interval: timedelta) -> timedelta:
    return DEAD_AFTER_INTERVALS * interval


def hung_after(interval: timedelta) -> timedelta:
    return HUNG_AFTER_INTERVALS * interval


def is_live(beat: Beat, now: datetime, interval: timedelta) -> bool:
    return beat.connected and beat.stopped_at is None and now - beat.last_beat_at <= hung_after(interval)


def is_hung(beat: Beat, now: datetime, interval: timedelta) -> bool:
    """Its process lives (it holds its lock) but it has not beaten for longer than `hung_after`."""
    return beat.connected and beat.stopped_at is None and now - beat.last_beat_at > hung_after(interval)


def live_ids(beats: Iterable[Beat], now: datetime, interval: timedelta, me: int) -> list[int]:
    """The live workers' ids in rank order (oldest first); `me` is always among them."""
    return sorted({b.id for b in beats if is_live(b, now, interval)} | {me})


def queue_hash(queue: str) -> int:
    """Stable across processes, machines and Python versions (unlike hash())."""
    return zlib.crc32(queue.encode())


def owner(queue: str, live: Sequence[int]) -> int:
    """The live worker that owns `queue`."""
    return live[queue_hash(queue) % len(live)]


def may_take_lease(holder: int | None, expires_at: datetime | None, me: int, now: datetime,
                   live: Iterable[int] | None = None) -> bool:
    """A lease is free when nobody holds it, it expired, its holder is not among the `live` workers
    (when given), or `me` holds it already (renewal)."""
    return (holder is None or holder == me or expires_at is None or expires_at <= now
            or (live is not None and holder not in set(live)))


@dataclass(frozen=True)
class Shard:
    """This worker's part of the work for one step."""

    me: int
    live: tuple[int, ...]
    leader: bool
    fenced: tuple[int, ...] = ()  # hung workers this step fenced (their queues are among the live ones' now)

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


# The liveness connections of this process's workers, held here so that none is ever left to the garbage
# collector (which would close it at a random moment); a clean stop closes its own, the exit the rest.
_HELD: set[Connection] = set()


@atexit.register
def _close_held() -> None:
    for connection in list(_HELD):
        with contextlib.suppress(Exception):
            connection.close()
    _HELD.clear()


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
        self._alive: Connection | None = None  # PostgreSQL: the connection holding this worker's liveness lock
        self._step_at: datetime | None = None  # the current step's `now`, and when it began (monotonic)
        self._step_began = 0.0

    def register(self, now: datetime) -> int:
        """Writes this process's heartbeat row. On SQLite, refuses when another live process uses the database.
        On PostgreSQL the row is committed on a connection of its own that takes the liveness lock first,
        so nobody ever sees this worker without its lock, and keeps it until the process ends."""
        engine = self.sessions.kw["bind"]
        own = engine.connect() if engine.dialect.name == "postgresql" else None
        with Session(bind=own, expire_on_commit=False) if own is not None else self.sessions() as session:
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
                    if other.stopped_at is None and now - other.last_beat_at <= dead_after(self.interval) and alive:
                        raise AnotherRobotRunning(
                            f"another robot process (host {other.hostname}, pid {other.pid}) uses this SQLite"
                            " database; several processes need PostgreSQL (database.url)")
            worker = Worker(hostname=self.hostname, pid=self.pid, started_at=now, last_beat_at=now)
            session.add(worker)
            session.flush()
            if own is not None:  # a session lock: it outlives this transaction, not the connection
                session.execute(select(func.pg_advisory_lock(ALIVE_LOCK, worker.id)))
            session.commit()
            self.id = worker.id
        self.close()
        self._alive = own
        if own is not None:
            _HELD.add(own)
        return self.id

    def step(self, now: datetime) -> Shard:
        """Beat, fence the hung, see who lives, take or renew the leader's lease; committed at once (no lock
        held). A dead or hung peer's queues and lease are taken in the very step that sees it so."""
        if self.id is None or not self._still_connected() or not self._beat(now):
            self.register(now)  # first step, the liveness connection was lost, or fenced: others count us dead
        self._step_at, self._step_began = now, time.monotonic()
        me = self.id
        with self.sessions() as session:
            beats = self._beats(session)
            hung = [b.id for b in beats if b.id != me and is_hung(b, now, self.interval)]
            fenced: list[int] = []
            if hung:  # only while still hung: a beat that lands first wins, and the worker stays
                fenced = list(session.scalars(
                    update(Worker).where(Worker.id.in_(hung), Worker.stopped_at.is_(None),
                                         Worker.last_beat_at < now - hung_after(self.interval))
                    .values(stopped_at=now).returning(Worker.id).execution_options(synchronize_session=False)))
            live = live_ids([b for b in beats if b.id not in fenced], now, self.interval, me)
            lease = session.get(Lease, LEADER)
            taken = False
            if lease is not None and may_take_lease(lease.holder, lease.expires_at, me, now, live):
                # The same rule again in the WHERE clause: of workers racing for it, one update wins.
                dead_holder = [] if lease.holder is None or lease.holder in live else [Lease.holder == lease.holder]
                taken = session.execute(
                    update(Lease).where(Lease.name == LEADER, or_(Lease.holder.is_(None), Lease.holder == me,
                                                                  Lease.expires_at.is_(None), Lease.expires_at <= now,
                                                                  *dead_holder))
                    .values(holder=me, expires_at=now + dead_after(self.interval))
                    .execution_options(synchronize_session=False)
                ).rowcount == 1
            session.commit()
        return Shard(me=me, live=tuple(live), leader=taken, fenced=tuple(sorted(fenced)))

    def check(self) -> None:
        """Beats within the step (the step's `now` plus the time it has taken so far); raises Fenced when a
        peer counted this worker hung meanwhile. Called before each phase of a step."""
        if self.id is None or self._step_at is None or self._alive is None:
            return  # on SQLite this process is the only one: nobody fences it (and its open write would block)
        if not self._beat(self._step_at + timedelta(seconds=time.monotonic() - self._step_began)):
            fenced = self.id
            self.close()  # its liveness lock goes: the next step registers a new worker
            self.id = None
            raise Fenced(f"worker {fenced} was fenced by a peer (its heartbeat was more than "
                         f"{hung_after(self.interval)} old): its queues are served by the live workers")

    def _beat(self, at: datetime) -> bool:
        """This worker's heartbeat, unless it was fenced (or stopped): False then."""
        with self.sessions() as session:
            beaten = session.execute(update(Worker).where(Worker.id == self.id, Worker.stopped_at.is_(None))
                                     .values(last_beat_at=at)).rowcount == 1
            session.commit()
        return beaten

    def stop(self, now: datetime) -> None:
        """A clean stop: the others take this worker's queues and the lease at their next step."""
        if self.id is None:
            return
        with self.sessions() as session:
            session.execute(update(Worker).where(Worker.id == self.id).values(stopped_at=now))
            session.execute(update(Lease).where(Lease.name == LEADER, Lease.holder == self.id)
                            .values(holder=None, expires_at=None))
            session.commit()
        self.close()

    def close(self) -> None:
        """Lets go of the liveness lock (its connection); the row's `stopped_at` or heartbeat say the rest."""
        if self._alive is not None:
            _HELD.discard(self._alive)
            self._alive.close()
            self._alive = None

    def _still_connected(self) -> bool:
        """False when this worker's liveness connection broke (the server restarted, the network dropped):
        the lock is gone and the others count this worker dead, so it comes back as a new one."""
        if self._alive is None:
            return self.sessions.kw["bind"].dialect.name != "postgresql"
        try:
            self._alive.execute(select(1)).close()
            self._alive.rollback()
        except DBAPIError:
            self._alive.invalidate()
            self.close()
            return False
        return True

    def live_now(self, session: Session, now: datetime, ids: Iterable[int]) -> set[int]:
        """Which of these workers are live, read now (in the caller's transaction)."""
        wanted = sorted({i for i in ids if i is not None})
        if not wanted:
            return set()
        return {b.id for b in self._beats(session, wanted) if is_live(b, now, self.interval)}

    @staticmethod
    def _beats(session: Session, ids: Sequence[int] | None = None) -> list[Beat]:
        """The workers not stopped; on PostgreSQL, each with whether its process still holds its liveness lock."""
        rows = session.execute(
            select(Worker.id, Worker.hostname, Worker.pid, Worker.last_beat_at, Worker.stopped_at)
            .where(Worker.stopped_at.is_(None), *([] if ids is None else [Worker.id.in_(ids)]))).all()
        if session.get_bind().dialect.name != "postgresql":
            return [Beat(*row) for row in rows]
        locked = set(session.scalars(text(
            "SELECT objid::bigint FROM pg_locks WHERE locktype = 'advisory' AND classid = :ns AND objsubid = 2"
            " AND granted AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        ).bindparams(ns=ALIVE_LOCK)))
        return [Beat(*row, connected=row.id in locked) for row in rows]
