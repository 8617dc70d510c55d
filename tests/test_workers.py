"""Several robot processes: who owns which queue, who leads, when one is dead (pure rules), and the rows."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from click.testing import CliRunner

from robot.cli import main
from robot.config import load_config
from robot.storage.database import make_engine, make_sessionmaker, upgrade
from robot.workers import (AnotherRobotRunning, Beat, Fenced, Shard, Workers, is_hung, is_live, live_ids,
                           may_take_lease, owner, queue_hash)
from tests.fakes import T0

MINUTE = timedelta(minutes=1)
QUEUES = [f"ANALY_Q{i}" for i in range(300)]


def beat(worker_id, age, stopped=False):
    return Beat(worker_id, "host", 100 + worker_id, T0 - age, T0 if stopped else None)


def test_a_heartbeat_older_than_one_and_a_half_intervals_is_hung_and_a_stopped_worker_dead_at_once():
    """A worker beats before each phase of its steps and at their end: a beat 1.5 intervals old means it is stuck."""
    assert is_live(beat(1, 1.5 * MINUTE), T0, MINUTE) and not is_hung(beat(1, 1.5 * MINUTE), T0, MINUTE)
    assert not is_live(beat(1, 1.5 * MINUTE + timedelta(seconds=1)), T0, MINUTE)
    assert is_hung(beat(1, 1.5 * MINUTE + timedelta(seconds=1)), T0, MINUTE)
    assert not is_live(beat(1, timedelta(0), stopped=True), T0, MINUTE)
    assert not is_hung(beat(1, 5 * MINUTE, stopped=True), T0, MINUTE)  # already stopped (or fenced)
    assert live_ids([beat(3, MINUTE), beat(1, 2 * MINUTE), beat(2, timedelta(0))], T0, MINUTE, me=7) == [2, 3, 7]


def test_live_workers_split_the_queues_evenly_each_queue_to_exactly_one():
    live = [4, 9, 12]
    owners = {q: owner(q, live) for q in QUEUES}
    shards = [Shard(me, tuple(live), leader=me == 4) for me in live]
    for queue in QUEUES:
        assert [s.me for s in shards if s.owns(queue)] == [owners[queue]]
    counts = [list(owners.values()).count(w) for w in live]
    assert min(counts) > 60  # 100 each on average, crc32 spreads them


def test_the_split_is_stable_and_when_one_dies_only_its_rank_order_decides():
    assert queue_hash("ANALY_FZK") == queue_hash("ANALY_FZK") == 4197517589  # crc32: the same in every process
    before = {q: owner(q, [1, 2, 3]) for q in QUEUES}
    after = {q: owner(q, [1, 3]) for q in QUEUES}
    assert set(after.values()) == {1, 3}
    assert all(owner(q, [1, 2, 3]) == before[q] for q in QUEUES)  # no hidden state


def test_alone_a_worker_owns_everything():
    assert all(Shard(5, (5,), leader=True).owns(q) for q in QUEUES)


def test_rows_of_a_live_worker_are_not_settled_by_another():
    shard = Shard(2, (2,), leader=False)
    live_now = {1, 2}  # worker 1 started after this step's beat
    assert shard.may_reconcile(2, live_now) and shard.may_reconcile(3, live_now) and shard.may_reconcile(None, live_now)
    assert not shard.may_reconcile(1, live_now)


def test_the_lease_is_taken_when_free_or_expired_and_renewed_by_its_holder():
    assert may_take_lease(None, None, 1, T0)
    assert may_take_lease(1, T0 + MINUTE, 1, T0)
    assert not may_take_lease(2, T0 + MINUTE, 1, T0)
    assert may_take_lease(2, T0, 1, T0)


def sessions_for(url):
    engine = make_engine(url)
    upgrade(engine)
    return make_sessionmaker(engine)


ON_POSTGRESQL = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)  # SQLite: one worker only


@ON_POSTGRESQL
def test_one_leader_at_a_time_and_the_lease_passes_when_the_leader_dies(database_url):
    sessions = sessions_for(database_url)
    a, b = Workers(sessions, MINUTE, ("a", 1)), Workers(sessions, MINUTE, ("b", 2))
    first, second = a.step(T0), b.step(T0)
    assert (first.leader, second.leader) == (True, False) and second.live == (a.id, b.id)
    assert a.step(T0 + MINUTE).leader and not b.step(T0 + MINUTE).leader
    # a stops beating after T0+1m (on SQLite nothing else tells): hung after T0+2.5m, fenced, its lease passes
    late = b.step(T0 + 2.5 * MINUTE + timedelta(seconds=1))
    assert late.leader and late.live == (b.id,) and late.alone and late.fenced == (a.id,)


@ON_POSTGRESQL
def test_a_clean_stop_hands_over_at_once(database_url):
    sessions = sessions_for(database_url)
    a, b = Workers(sessions, MINUTE, ("a", 1)), Workers(sessions, MINUTE, ("b", 2))
    a.step(T0), b.step(T0)
    a.stop(T0 + timedelta(seconds=1))
    shard = b.step(T0 + timedelta(seconds=2))
    assert shard.leader and shard.alone


@ON_POSTGRESQL
def test_a_robot_restarted_on_this_host_takes_over_from_its_killed_predecessor_at_once(database_url):
    import socket
    import subprocess
    import sys

    sessions = sessions_for(database_url)
    killed = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(killed.stdout)  # a process of this host that is gone, as after a SIGKILL
    old = Workers(sessions, MINUTE, (socket.gethostname(), dead_pid))
    assert old.step(T0).leader
    elsewhere = Workers(sessions, MINUTE, ("otherhost", dead_pid))  # another host's pid says nothing here
    elsewhere.step(T0)
    restarted = Workers(sessions, MINUTE, (socket.gethostname(), dead_pid + 10**6))
    shard = restarted.step(T0 + timedelta(seconds=5))  # well within the two intervals a heartbeat lives
    assert shard.leader and shard.live == (elsewhere.id, restarted.id)


def test_on_sqlite_a_second_process_refuses_to_start(tmp_path):
    sessions = sessions_for(f"sqlite:///{tmp_path / 'r.db'}")
    Workers(sessions, MINUTE, ("otherhost", 1)).step(T0)
    with pytest.raises(AnotherRobotRunning, match="host otherhost, pid 1.*PostgreSQL"):
        Workers(sessions, MINUTE, ("thishost", 2)).register(T0 + MINUTE)
    # once the first is dead (no beat for two intervals) a new one may start
    Workers(sessions, MINUTE, ("thishost", 2)).register(T0 + 3 * MINUTE)


def test_the_postgresql_example_configuration_loads(monkeypatch):
    monkeypatch.setenv("HEALTHROBOT_DB_PASSWORD", "s3cret")
    monkeypatch.delenv("HEALTHROBOT_DB_HOST", raising=False)
    config = load_config(Path(__file__).resolve().parent.parent / "configs" / "robot-postgres.yaml")
    assert config.database_url == "postgresql+psycopg://healthrobot:s3cret@localhost/healthrobot"
    assert config.backend.kind == "panda" and config.backend.panda.url.startswith("http://127.0.0.1:")


def test_healthrobot_run_refuses_a_second_process_on_sqlite_in_one_line(tiny_grid):
    files = tiny_grid.write_files()
    config = files.robot_yaml
    assert CliRunner().invoke(main, ["--config", str(config), "db", "upgrade"]).exit_code == 0
    sessions = sessions_for(f"sqlite:///{files.data_dir / 'healthrobot.db'}")
    Workers(sessions, MINUTE, ("otherhost", 4242)).step(datetime.now(timezone.utc))  # alive, elsewhere
    result = CliRunner().invoke(main, ["--config", str(config), "run", "--once"])
    assert result.exit_code == 1, (result.exception, result.output)
    message = (result.stderr or result.output).strip()
    assert message == ("Error: another robot process (host otherhost, pid 4242) uses this SQLite database;"
                       " several processes need PostgreSQL (database.url)"), message


def test_a_worker_whose_process_is_gone_from_the_database_is_dead_at_once():
    assert not is_live(Beat(1, "host", 101, T0, None, connected=False), T0, MINUTE)
    assert may_take_lease(2, T0 + MINUTE, 1, T0, live=[1, 3])  # its holder is not live: free before it expires
    assert not may_take_lease(2, T0 + MINUTE, 1, T0, live=[1, 2])


VICTIM = """
import sys, time
from datetime import datetime, timedelta, timezone
from robot.storage.database import make_engine, make_sessionmaker
from robot.workers import Workers
w = Workers(make_sessionmaker(make_engine(sys.argv[1])), timedelta(minutes=1), ("elsewhere", 1))
print(w.step(datetime.fromisoformat(sys.argv[2])).me, flush=True)
time.sleep(600)
"""


@ON_POSTGRESQL
def test_a_killed_worker_is_replaced_at_the_survivors_next_step_not_two_intervals_later(database_url):
    """A worker on another host (no pid to look at) SIGKILLed right after its beat: its queues and the lease
    pass at the survivor's very next step, not once its heartbeat is two intervals old."""
    import signal
    import subprocess
    import sys
    import time

    from sqlalchemy import text

    from robot.workers import ALIVE_LOCK

    sessions = sessions_for(database_url)
    victim = subprocess.Popen([sys.executable, "-c", VICTIM, database_url, T0.isoformat()],
                              stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parent.parent)
    try:
        victim_id = int(victim.stdout.readline())
        survivor = Workers(sessions, MINUTE, ("here", 2))
        shard = survivor.step(T0 + timedelta(seconds=1))
        assert shard.live == (victim_id, survivor.id) and not shard.leader  # the victim leads while it lives
    finally:
        victim.send_signal(signal.SIGKILL)
        victim.wait()

    def lock_held() -> bool:  # the server lets go of a dead client's session at once; wait for it, untimed
        with sessions() as session:
            return bool(session.scalar(text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
                                             " AND classid = :ns AND objid = :id").bindparams(ns=ALIVE_LOCK, id=victim_id)))
    deadline = time.monotonic() + 60
    while lock_held():
        assert time.monotonic() < deadline, "the server never released the killed worker's lock"
        time.sleep(0.05)
    # the victim's heartbeat (T0) is still fresh for two intervals; its death is seen anyway
    shard = survivor.step(T0 + MINUTE)
    assert shard.live == (survivor.id,) and shard.alone and shard.leader
    with sessions() as session:  # its unconfirmed rows may be settled now
        assert not survivor.live_now(session, T0 + MINUTE, [victim_id])
    survivor.stop(T0 + MINUTE)


@ON_POSTGRESQL
def test_a_hung_worker_is_fenced_by_the_first_peer_to_step_after_one_interval(database_url):
    """Its process lives (it holds its lock) but it stopped beating: the peer that sees its beat older than an
    interval fences it and takes its queues and lease; the hung one, woken up, may act on nothing more (Fenced)
    and comes back at its next step as a new worker."""
    sessions = sessions_for(database_url)
    a, b = Workers(sessions, MINUTE, ("a", 1)), Workers(sessions, MINUTE, ("b", 2))
    assert a.step(T0).leader and not b.step(T0 + timedelta(seconds=30)).leader
    a.check()  # a beats within its step (T0 + the seconds it took so far) ...
    assert b.step(T0 + MINUTE).live == (a.id, b.id)  # ... and is live one interval later
    # ... then hangs in a remote call: b's next step, its beat over an interval old, fences it
    shard = b.step(T0 + 10 * MINUTE)
    assert shard.fenced == (a.id,) and shard.live == (b.id,) and shard.leader
    old = a.id
    with pytest.raises(Fenced, match=f"worker {old} was fenced"):
        a.check()  # woken up, before its next phase
    again = a.step(T0 + 10 * MINUTE + timedelta(seconds=5))
    assert a.id != old and again.live == (b.id, a.id) and not again.leader
    # a beat that lands before the peer looks wins: a worker that beats in time is never fenced
    a.check()
    assert b.step(T0 + 11 * MINUTE).fenced == ()
    a.stop(T0 + 11 * MINUTE), b.stop(T0 + 11 * MINUTE)


@ON_POSTGRESQL
def test_a_step_waits_for_a_row_lock_a_quarter_interval_at_most_then_tries_again_at_the_next(database_url, tmp_path):
    """A peer hung inside its transaction (a remote call, a stopped process) holds its row locks until it is
    fenced and wakes. A step that needs one of those rows does not hang with it (and miss its own beats):
    it stops once it waited lock_timeout (a quarter interval), says so, and the next step does the work."""
    import threading

    from sqlalchemy import select, update

    from robot.clock import ManualClock
    from robot.jobstates import JobStatus
    from robot.storage.models import Job
    from tests.fakes import ScriptedGrid, make_robot, templates

    clock = ManualClock(T0)
    grid = ScriptedGrid(clock, {"ANALY_A": ("SITE-A", "DE")})
    robot = make_robot(tmp_path, grid, templates({"name": "AFT"}), interval="2s")
    assert robot.run_once(clock.now()).submitted == 1
    (pid,) = grid.in_queue("ANALY_A")
    grid.start(pid)  # the next step's poll writes the job's row ...
    with robot.sessions() as peer:  # ... which a hung peer's open transaction holds
        peer.execute(update(Job).where(Job.panda_id == pid).values(worker_id=None))
        clock.advance(timedelta(seconds=2))
        held: list = []
        step = threading.Thread(target=lambda: held.append(robot.run_once(clock.now())), daemon=True)
        step.start()
        step.join(120)
        alive = step.is_alive()
        peer.rollback()  # let go in any case, so that a step that waited without bound ends too
    step.join(120)
    assert not alive, "the step waited for the row lock without bound"
    (summary,) = held
    assert summary.held_up and "lock" in summary.held_up and summary.as_dict()["held_up"] == summary.held_up
    clock.advance(timedelta(seconds=2))
    assert not robot.run_once(clock.now()).held_up  # the next step does it
    with robot.sessions() as session:
        assert session.scalar(select(Job.job_status).where(Job.panda_id == pid)) == JobStatus.RUNNING.value
    robot.workers.stop(clock.now())
