"""Users' own jobs as evidence: hourly aggregates stored on SQLite and PostgreSQL, read by a loop step."""
from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlalchemy import inspect, select

from robot.backends.base import BackendUnavailable, JobReport, UserJobHour
from robot.classify import load_table
from robot.clock import ManualClock
from robot.jobstates import JobStatus
from robot.storage.database import make_engine, make_sessionmaker, upgrade
from robot.storage.models import Event
from robot.storage.models import UserJobHour as Row
from robot.userjobs import UserJobWatch, aggregate, hour_of, read_hours, stored_hours, store
from tests.fakes import T0

TABLE = load_table()


@pytest.fixture
def sessions(database_url):
    engine = make_engine(database_url)
    upgrade(engine)
    yield make_sessionmaker(engine)
    engine.dispose()


def test_the_table_keeps_only_aggregate_counts():
    engine = make_engine("sqlite://")
    upgrade(engine)
    columns = {c["name"] for c in inspect(engine).get_columns("user_job_hour")}
    assert columns == {"queue", "hour", "source", "ended", "failed", "failed_site", "failed_user", "failed_central",
                       "failed_unknown", "codes", "read_at"}  # no user, task or job ID


def test_hours_are_stored_with_classes_and_codes_and_a_second_read_replaces_them(sessions):
    hour = hour_of(T0)
    first = [UserJobHour("ANALY_A", hour, 40, 6, {("pilot", 1099): 3, ("exe", 1): 2, ("pilot", 1324): 1}),
             UserJobHour("ANALY_B", hour, 10, 0)]
    with sessions() as session:
        assert store(session, "panda", first, hour, TABLE, T0) == 2
        session.commit()
        again = [UserJobHour("ANALY_A", hour, 55, 8, {("pilot", 1099): 5, ("exe", 1): 2, ("pilot", 1324): 1})]
        store(session, "panda", again, hour, TABLE, T0 + timedelta(minutes=30))
        session.commit()
    with sessions() as session:
        rows = {r.queue: r for r in session.scalars(select(Row))}
        assert len(rows) == 2
        a = rows["ANALY_A"]
        assert (a.ended, a.failed, a.failed_site, a.failed_user, a.failed_central, a.failed_unknown) == (55, 8, 5, 2, 1, 0)
        assert a.hour == hour and a.hour.tzinfo is not None
        assert a.codes[0] == {"source": "pilot", "code": 1099, "name": "STAGEINFAILED", "class": "site", "jobs": 5}
        assert (rows["ANALY_B"].ended, rows["ANALY_B"].failed) == (10, 0)
        read = stored_hours(session, hour, hour + timedelta(hours=1))
        assert read["ANALY_A"][0].by_class == {"site": 5, "user": 2, "central": 1, "unknown": 0}


def test_final_jobs_are_summed_per_queue_and_hour_by_end_time():
    def job(queue, minutes, failed=False, **errors):
        return JobReport(panda_id=1, job_status=JobStatus.FAILED if failed else JobStatus.FINISHED, queue=queue,
                         end_time=T0 + timedelta(minutes=minutes), **errors)

    reports = [job("A", 5), job("A", 50, True, pilot_error_code=1099), job("A", 70, True, exe_error_code=3),
               job("A", 200), job("B", 10, True), JobReport(2, JobStatus.RUNNING, queue="A")]
    hours = aggregate(reports, T0, T0 + timedelta(hours=2))
    assert [(h.queue, h.hour, h.ended, h.failed, h.errors) for h in hours] == [
        ("A", T0, 2, 1, {("pilot", 1099): 1}), ("A", T0 + timedelta(hours=1), 1, 1, {("exe", 3): 1}),
        ("B", T0, 1, 1, {("none", 0): 1})]


class Source:
    name = "scripted"

    def __init__(self):
        self.hours: list[UserJobHour] = []
        self.asked: list[tuple] = []
        self.down = False

    def user_job_stats(self, since, until):
        self.asked.append((since, until))
        if self.down:
            raise BackendUnavailable("monitor: HTTP 503 after 3 attempt(s)")
        return [h for h in self.hours if since <= h.hour < until]


def test_the_watch_reads_new_hours_again_until_they_are_over_and_a_failing_source_keeps_what_is_stored(sessions):
    source = Source()
    watch = UserJobWatch(source, TABLE, refresh=timedelta(minutes=10), look_back=timedelta(hours=6))
    now = T0 + timedelta(minutes=30)
    source.hours = [UserJobHour("ANALY_A", T0 - timedelta(hours=1), 20, 1, {("pilot", 1099): 1}),
                    UserJobHour("ANALY_A", T0, 8, 0)]
    with sessions() as session:
        assert watch(session, now) == 2
        assert source.asked[-1] == (T0 - timedelta(hours=6), now)
        assert watch(session, now + timedelta(minutes=5)) is None  # not due yet
        source.hours[-1] = UserJobHour("ANALY_A", T0, 15, 2, {("pilot", 1099): 2})
        watch(session, now + timedelta(minutes=40))  # the next hour: the last one is read again
        assert source.asked[-1][0] == T0  # the hour read before, again: jobs are archived late
        session.commit()
        source.down = True
        assert watch(session, now + timedelta(minutes=60)) is None
        session.commit()
        rows = {r.hour: (r.ended, r.failed) for r in session.scalars(select(Row))}
        assert rows == {T0 - timedelta(hours=1): (20, 1), T0: (15, 2)}
        events = session.scalars(select(Event).where(Event.kind == "user_jobs_unreachable")).all()
        assert len(events) == 1 and "stored counts are kept" in events[0].message


def test_the_watch_writes_an_hour_again_only_when_its_counts_changed_or_its_last_write_was_lost(sessions, database_url):
    source = Source()
    watch = UserJobWatch(source, TABLE, refresh=timedelta(minutes=2), look_back=timedelta(hours=6))
    now = T0 + timedelta(minutes=10)
    source.hours = [UserJobHour("ANALY_A", T0 - timedelta(hours=1), 20, 1, {("pilot", 1099): 1}),
                    UserJobHour("ANALY_A", T0, 8, 0)]
    other = make_engine(database_url)
    with sessions() as session:
        assert watch(session, now) == 2
        session.commit()
        source.hours[-1] = UserJobHour("ANALY_A", T0, 9, 1, {("pilot", 1099): 1})
        assert watch(session, now + timedelta(minutes=10)) == 1  # the hour before, read again unchanged: kept
        session.rollback()  # that step was lost: what it wrote is written again
        assert watch(session, now + timedelta(minutes=20)) == 2
        session.commit()
        rows = {r.hour: (r.ended, r.failed) for r in session.scalars(select(Row))}
        assert rows == {T0 - timedelta(hours=1): (20, 1), T0: (9, 1)}
        now += timedelta(minutes=20)  # from here on every 2 minutes, in the same hour
        assert watch(session, now + timedelta(minutes=2)) == 0  # nothing changed: nothing written
        session.commit()
        with other.begin() as connection:  # another process deletes what the last write stored (none: kept)
            connection.execute(Row.__table__.delete().where(Row.hour == T0))
        assert watch(session, now + timedelta(minutes=4)) == 0
        session.commit()
        source.hours[-1] = UserJobHour("ANALY_A", T0, 10, 1, {("pilot", 1099): 1})
        assert watch(session, now + timedelta(minutes=6)) == 1
        session.commit()
        with other.begin() as connection:  # and now what the last write stored: written again, with the rest
            connection.execute(Row.__table__.delete().where(Row.hour == T0))
        assert watch(session, now + timedelta(minutes=8)) == 2
        session.commit()
        session.execute(Row.__table__.delete().where(Row.hour == T0))  # this process, another way
        session.commit()
        assert watch(session, now + timedelta(minutes=10)) == 2
        session.commit()
        rows = {r.hour: (r.ended, r.failed) for r in session.scalars(select(Row))}
        assert rows == {T0 - timedelta(hours=1): (20, 1), T0: (10, 1)}
    other.dispose()


# -- the embedded grid's background users ------------------------------------------------------------
def test_the_embedded_grids_users_fail_with_a_broken_queues_fault_and_their_own_bugs(tiny_grid):
    clock = ManualClock(T0)
    grid = tiny_grid.grid({"ANALY_A": {}, "ANALY_B": {}}, clock=clock, user_jobs_per_hour=40,
                          faults=[{"queue": "ANALY_B", "mode": "stagein", "start_after": "1h", "duration": "2h"}])
    clock.set(T0 + timedelta(hours=3, minutes=30))
    hours = grid.user_job_stats(T0 - timedelta(hours=5), clock.now())
    assert {h.hour for h in hours} <= {T0 + timedelta(hours=i) for i in range(4)}  # from the grid's start, up to now
    a = [h for h in hours if h.queue == "ANALY_A"]
    b_broken = [h for h in hours if h.queue == "ANALY_B" and T0 + timedelta(hours=1) <= h.hour < T0 + timedelta(hours=3)]
    assert sum(h.ended for h in a) > 80 and all(code in (1305, 1235) for h in a for (_, code) in h.errors)
    assert 0 < sum(h.failed for h in a) < 0.3 * sum(h.ended for h in a)  # their own bugs, not the site's
    assert all(h.errors.get(("pilot", 1099), 0) >= 0.7 * h.ended for h in b_broken)  # the queue's fault hits them
    current = [h for h in hours if h.hour == T0 + timedelta(hours=3)]
    assert current and all(h.ended < 35 for h in current)  # half an hour of the current one, no job from the future
    assert grid.user_job_stats(T0 - timedelta(hours=5), clock.now()) == hours  # the same jobs at every read


def test_the_robot_stores_the_embedded_grids_users_jobs(tiny_grid):
    from robot.config import load_config
    from robot.services import build

    files = tiny_grid.write_files({"ANALY_A": {}}, user_jobs_per_hour=30)
    clock = ManualClock(T0)
    services = build(load_config(files.robot_yaml), clock)
    try:
        upgrade(services.engine)
        clock.set(T0 + timedelta(hours=2))
        services.robot.run_once(clock.now())
        with services.sessions() as session:
            rows = session.scalars(select(Row)).all()
            assert {r.queue for r in rows} == {"ANALY_A"} and {r.source for r in rows} == {"embedded"}
            assert sum(r.ended for r in rows) > 30
    finally:
        services.close()


def test_why_names_the_users_jobs_of_the_last_hours(tiny_grid):
    from click.testing import CliRunner

    from robot.cli import main
    from robot.clock import SystemClock
    from robot.config import load_config
    from robot.services import build

    files = tiny_grid.write_files({"ANALY_A": {}, "ANALY_B": {}}, user_jobs_per_hour=0)
    services = build(load_config(files.robot_yaml), SystemClock())
    try:
        upgrade(services.engine)
        now = SystemClock().now()
        services.robot.run_once(now)
        with services.sessions() as session:
            earlier = hour_of(now) - timedelta(hours=1)
            store(session, "panda", [UserJobHour("ANALY_A", earlier, 40, 6, {("pilot", 1099): 4, ("exe", 1): 2})],
                  earlier, TABLE, now)
            session.commit()
    finally:
        services.close()
    run = lambda *args: CliRunner().invoke(main, ["--config", str(files.robot_yaml), *args])  # noqa: E731
    why = run("why", "ANALY_A")
    assert why.exit_code == 0, why.output
    assert f"users' jobs {earlier:%Y-%m-%d %H}:00 UTC: 40 ended, 6 failed (site 4, user 2): STAGEINFAILED 4 (site)" \
        in why.output
    shown = json.loads(run("why", "ANALY_A", "--json").output)["user_jobs"]
    assert [(r["ended"], r["failed"], r["site"], r["user"]) for r in shown] == [(40, 6, 4, 2)]
    assert "users' jobs" not in run("why", "ANALY_B").output


def test_the_engines_read_gives_the_stored_hours_and_only_those_stored_since_when_asked(sessions):
    hour = hour_of(T0)
    alike = {("pilot", 1099): 2, ("exe", 1): 1}
    with sessions() as session:
        store(session, "panda", [UserJobHour("ANALY_A", hour - timedelta(hours=1), 30, 3, alike),
                                 UserJobHour("ANALY_B", hour - timedelta(hours=1), 12, 0)], hour - timedelta(hours=1),
              TABLE, T0)
        store(session, "panda", [UserJobHour("ANALY_A", hour, 20, 3, alike), UserJobHour("ANALY_C", hour, 5, 5,
                                                                                           {("pilot", 1324): 5})],
              hour, TABLE, T0 + timedelta(minutes=10))
        session.commit()
        whole = stored_hours(session, hour - timedelta(hours=1), hour + timedelta(hours=1))
        read = read_hours(session, hour - timedelta(hours=1), hour + timedelta(hours=1))
        assert sorted((h.queue, h.hour, h) for _, h in read) == sorted(
            (h.queue, h.hour, h) for hours in whole.values() for h in hours)
        assert {source for source, _ in read} == {"panda"} and all(h.hour.tzinfo is not None for _, h in read)
        since = read_hours(session, hour - timedelta(hours=1), hour + timedelta(hours=1), T0 + timedelta(minutes=10))
        assert sorted((h.queue, h.hour) for _, h in since) == [("ANALY_A", hour), ("ANALY_C", hour)]
        assert read_hours(session, hour, hour + timedelta(hours=1), T0 + timedelta(minutes=11)) == []


def test_the_engines_users_hours_kept_step_by_step_are_what_reading_them_afresh_gives(database_url, monkeypatch):
    """The engine reads the hours stored since its last read; on SQLite those this process just stored are
    taken from what it wrote, not selected again (robot.userjobs.HourMirror). Whatever else happens between
    two reads (another process stores hours, one for an hour not yet read among them; a write is rolled back;
    this connection writes hours another way), what it keeps is what a restarted engine reads afresh."""
    from blacklist.engine import UserHours
    from robot import userjobs

    selects = []
    select_rows = userjobs.hour_rows
    monkeypatch.setattr(userjobs, "hour_rows", lambda *args: selects.append(args[1:]) or select_rows(*args))
    ours, theirs = make_engine(database_url), make_engine(database_url)
    upgrade(ours)
    window, queues = timedelta(hours=2), ["ANALY_A", "ANALY_B", "ANALY_C"]
    kept, now = UserHours(window), hour_of(T0) + timedelta(minutes=5)
    sqlite = ours.dialect.name == "sqlite"
    with make_sessionmaker(ours)() as session, make_sessionmaker(theirs)() as other:
        for step in range(30):
            now += timedelta(minutes=10)
            hour = hour_of(now)
            counted = [UserJobHour(q, hour, 10 * step + i, step % 3, {("pilot", 1099): step % 3} if step % 3 else {})
                       for i, q in enumerate(queues)]
            store(session, "panda", counted, hour, TABLE, now)
            session.commit()
            what = step % 6  # at xx:15, xx:25, ... xx:05
            if what == 1:  # another process stores an hour
                store(other, "other", [UserJobHour("ANALY_D", hour, 3, 1, {("pilot", 1324): 1})], hour, TABLE, now)
                other.commit()
            elif what == 2:  # a write rolled back
                store(session, "panda", [UserJobHour("ANALY_A", hour, 999, 0)], hour, TABLE, now)
                session.rollback()
            elif what == 3:  # this connection writes users' hours another way
                session.execute(Row.__table__.update().where(Row.queue == "ANALY_B", Row.hour == hour)
                                .values(ended=77, read_at=now))
                session.commit()
            elif what == 4:  # another process, its clock 10 minutes ahead, stores the hour to come at xx:55
                store(other, "other", [UserJobHour("ANALY_E", hour + timedelta(hours=1), 4, 0)], hour, TABLE,
                      now + timedelta(minutes=10))
                other.commit()
            before = len(selects)
            read = dict(kept.read(session, now))
            session.commit()
            if sqlite and what == 0 and step:
                assert len(selects) == before, f"step {step}: the rows just stored were selected again"
            afresh = dict(UserHours(window).read(session, now))
            session.commit()
            assert {q: h for q, h in read.items() if h} == {q: h for q, h in afresh.items() if h}, f"step {step}"
    ours.dispose()
    theirs.dispose()
