"""History import: PanDA monitor job records become observed jobs, the same rows as the robot's own."""
from __future__ import annotations

import io
import json
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings, strategies as st
from sqlalchemy import func, insert, select, text

from robot import history, rollup
from robot.classify import load_table
from robot.history import HistoryFileError, Observed, Problem, import_history, parse_record, read_records
from robot.jobstates import JobStatus
from robot.results import final_values
from robot.storage.database import make_engine, make_sessionmaker, upgrade
from robot.storage.models import Job, JobRollup, QueueRollup, Setting, Template
from robot.sync import sync_topology
from tests.fakes import T0
from robot.topology import EndpointInfo, QueueInfo, SiteInfo, Topology

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=timezone.utc)
TABLE = load_table()


def record(pandaid: int, queue: str = "ANALY_A", status: str = "finished", end: str = "2026-11-02 13:04:05",
           **extra) -> dict:
    """A job as PanDA's monitor lists it: the job table's columns in lower case, "NULL" for nothing."""
    base = {"pandaid": pandaid, "computingsite": queue, "jobstatus": status, "creationtime": "2026-11-02 12:00:00",
            "starttime": "2026-11-02 12:10:00", "endtime": end, "piloterrorcode": 0, "piloterrordiag": "NULL",
            "exeerrorcode": 0, "exeerrordiag": "", "ddmerrorcode": 0, "ddmerrordiag": "NULL",
            "taskbuffererrorcode": 0, "taskbuffererrordiag": "NULL", "jobdispatchererrorcode": 0,
            "jobdispatchererrordiag": "NULL", "superrorcode": 0, "transexitcode": "0", "nevents": 1000,
            "cpuconsumptiontime": 321, "maxrss": 123456, "actualcorecount": 1, "attemptnr": 1,
            "pilottiming": "12|30|500|20|4", "produserid": "/DC=ch/CN=Some User", "jeditaskid": 4242}
    base.update(extra)
    return base


def failed(pandaid: int, code: int = 1099, queue: str = "ANALY_A", **extra) -> dict:
    return record(pandaid, queue, "failed", piloterrorcode=code, piloterrordiag="Get error: Staging input file failed",
                  transexitcode="NULL", **extra)


# -- reading ----------------------------------------------------------------------------------------
def test_a_finished_and_a_failed_record_read_as_the_loop_reads_a_polled_job():
    done = parse_record(7, record(1001))
    assert isinstance(done, Observed) and done.line == 7 and done.queue == "ANALY_A"
    assert done.report.job_status is JobStatus.FINISHED and done.report.n_events == 1000
    assert done.report.end_time == datetime(2026, 11, 2, 13, 4, 5, tzinfo=timezone.utc)
    assert done.report.pilot_timing == {"getjob": 12.0, "stagein": 30.0, "payload": 500.0, "stageout": 20.0,
                                        "setup": 4.0}
    bad = parse_record(8, failed(1002))
    values = final_values(bad.report, TABLE)
    assert (values["outcome"], values["error_code"], values["error_name"], values["error_class"]) == \
        ("failed", 1099, "STAGEINFAILED", "site")
    assert bad.report.ddm_error_diag == "" and bad.report.trans_exit_code is None  # "NULL" is nothing


def test_closed_jobs_are_cancelled_and_jobs_in_flight_are_not_final():
    closed = parse_record(1, record(1, status="closed", taskbuffererrorcode=105))
    assert closed.report.job_status is JobStatus.CANCELLED
    assert final_values(closed.report, TABLE)["outcome"] == "cancelled"
    for state in ("defined", "activated", "running", "holding", "transferring"):
        assert parse_record(1, record(1, status=state)) is None


@pytest.mark.parametrize("changes, field, expected", [
    ({"pandaid": "abc"}, "pandaid", "whole number"),
    ({"pandaid": None}, "pandaid", "required"),
    ({"computingsite": "NULL"}, "computingsite", "queue name"),
    ({"jobstatus": "exploded"}, "jobstatus", "PanDA job state"),
    ({"endtime": "yesterday"}, "endtime", "UTC time"),
    ({"endtime": "NULL"}, "endtime", "needs its end time"),
    ({"piloterrorcode": "1099.5"}, "piloterrorcode", "whole number"),
    ({"cpuconsumptiontime": "lots"}, "cpuconsumptiontime", "number"),
])
def test_a_bad_record_is_reported_with_its_line_and_field(changes, field, expected):
    problem = parse_record(12, {**record(5), **changes})
    assert isinstance(problem, Problem)
    assert (problem.line, problem.field) == (12, field)
    assert expected in problem.message
    assert str(problem).startswith(f"line 12: {field}: ")


def test_times_in_iso_8601_with_a_zone_are_read_as_utc():
    observed = parse_record(1, record(1, end="2026-11-02T14:04:05+01:00", starttime="2026-11-02T12:10:00Z"))
    assert observed.report.end_time == datetime(2026, 11, 2, 13, 4, 5, tzinfo=timezone.utc)
    assert observed.report.start_time == datetime(2026, 11, 2, 12, 10, tzinfo=timezone.utc)


def test_the_monitors_object_a_list_and_json_lines_give_the_records_with_their_lines():
    records = [record(1), failed(2), record(3)]
    monitor = json.dumps({"selectionsummary": [{"field": "jobstatus"}], "jobs": records}, indent=1)
    lines = [line for line, _ in read_records(monitor)]
    assert [r["pandaid"] for _, r in read_records(monitor)] == [1, 2, 3]
    texts = monitor.splitlines()
    for line, item in zip(lines, records):  # each line number is where its record starts
        assert texts[line - 1].strip() == "{"
        assert f'"pandaid": {item["pandaid"]}' in "\n".join(texts[line - 1:line + 2])
    assert [r["pandaid"] for _, r in read_records(json.dumps(records))] == [1, 2, 3]
    assert [r["pandaid"] for _, r in read_records(json.dumps({"jobs": records}))] == [1, 2, 3]  # on one line
    jsonl = "\n".join(json.dumps(r) for r in records[:2]) + "\n{broken\n" + json.dumps(records[2]) + "\n"
    read = list(read_records(jsonl))
    assert [line for line, _ in read] == [1, 2, 3, 4]
    assert isinstance(read[2][1], Problem) and read[2][1].line == 3
    assert read[3][1]["pandaid"] == 3


@pytest.mark.parametrize("layout", ["monitor", "list", "lines", "one line"])
def test_a_file_is_read_in_small_chunks_with_the_same_records_and_lines(monkeypatch, layout):
    """A file is not read whole (a million records are 550 MB): records and values that run across
    the chunks' edges come out whole, on the lines they start on, as from the text in one piece."""
    records = [record(1), failed(2, code=1305), record(3, nevents=123456789), record(4, "ANALY_B")]
    text = {"monitor": json.dumps({"selectionsummary": [{"field": "jobstatus"}], "jobs": records}, indent=1),
            "list": json.dumps(records, indent=2), "one line": json.dumps({"jobs": records}),
            "lines": "\n".join(json.dumps(r) for r in records) + "\n\n{broken\n" + json.dumps(record(5)) + "\n"}[layout]
    whole = list(read_records(text))
    for chunk in (1, 3, 7, 64):
        monkeypatch.setattr(history, "CHUNK", chunk)
        assert [(line, item if isinstance(item, Problem) else item["pandaid"]) for line, item in
                read_records(io.StringIO(text))] == [(line, item if isinstance(item, Problem) else item["pandaid"])
                                                     for line, item in whole]
        assert [item for _, item in read_records(io.StringIO(text))] == [item for _, item in whole]


@pytest.mark.parametrize("text", ['[{"pandaid": 1}, {"pandaid": 2}, oops]', '{\n "jobs": [\n {"pandaid": 1},\n oops ]}',
                                  '[\n{"pandaid": 1}\n{"pandaid": 2}]', '[{"pandaid": 1},\n\n {"pandaid": 2,\n "x": tru}]'])
def test_a_file_read_in_small_chunks_is_refused_at_the_same_line_and_column(monkeypatch, text):
    with pytest.raises(HistoryFileError) as whole:
        list(read_records(text))
    monkeypatch.setattr(history, "CHUNK", 2)
    with pytest.raises(HistoryFileError) as chunked:
        list(read_records(io.StringIO(text)))
    assert str(chunked.value) == str(whole.value) and "line " in str(whole.value)


@pytest.mark.parametrize("text", ["hello", "# README\n\nsome text", '{"selectionsummary": []}', '{"jobs": 3}',
                                  '[{"pandaid": 1}, oops]', '{\n "jobs": [\n {"pandaid": 1},\n oops ]}'])
def test_a_file_that_is_not_job_records_is_an_error(text):
    with pytest.raises(HistoryFileError):
        list(read_records(text))


# -- the usual record's one-pass row ----------------------------------------------------------------
QUEUE_IDS = {"ANALY_A": 1, "ANALY_B": 2}
ODD_VALUES = st.sampled_from([None, "NULL", "", "0", "17", "1099.0", "1099.5", "lots", True, 0, 7, -3, 2.5, 12.0,
                              [1], {"x": 1}])
TIMES = st.sampled_from(["2026-11-02 13:04:05", "2026-11-02T13:04:05", "2026-11-02 13:04:05.250",
                         "2026-11-02T14:04:05+01:00", "2026-11-02T12:10:00Z", "2026-11-02", "2026-W44-1 13:04:05",
                         "2026-13-02 13:04:05", "yesterday", "NULL", "", None, 1700000000])
FIELDS = [*history.INT_FIELDS, *history.TEXT_FIELDS, "actualcorecount", "corecount", "cpuconsumptiontime",
          "transexitcode", "pilottiming", "pandaid", "computingsite", "jobstatus"]


@st.composite
def monitor_records(draw) -> dict:
    """The usual finished record, with some of its fields changed to what a monitor might also write."""
    base = record(draw(st.integers(1, 10**12)), end=draw(st.sampled_from(["2026-11-02 13:04:05", "2026-11-03 00:00:00"])))
    for key in draw(st.lists(st.sampled_from(FIELDS), max_size=4, unique=True)):
        base[key] = draw(ODD_VALUES)
    for key in draw(st.lists(st.sampled_from(list(history.TIME_FIELDS)), max_size=2, unique=True)):
        base[key] = draw(TIMES)
    if draw(st.booleans()):
        base["computingsite"] = draw(st.sampled_from(["ANALY_B", "ANALY_GONE", "NULL"]))
    if draw(st.integers(0, 4)) == 0:
        base["jobstatus"] = draw(st.sampled_from(["failed", "cancelled", "closed", "running", "exploded"]))
    base.pop(draw(st.sampled_from([None, "superrorcode", "actualcorecount", "pilottiming", "nevents"])), None)
    return base


@pytest.mark.parametrize("stamp", [history._sqlite_text, history._as_it_is], ids=["sqlite", "postgresql"])
@given(item=monitor_records())
@settings(max_examples=400, deadline=None)
def test_the_usual_records_row_read_in_one_pass_is_the_row_parse_record_and_final_values_give(stamp, item):
    """The import reads the usual finished record without a report or a dict: whatever it accepts must
    give the very row the general path gives, and whatever is unusual is left to the general path."""
    now = datetime(2026, 11, 20, 12, 0, 0, 123456, tzinfo=timezone.utc)
    fast = history._finished_row(item, QUEUE_IDS, 9, stamp(history._naive_utc(now)), stamp)
    parsed = parse_record(3, item)
    if fast is None:  # left to the general path (the next test shows the usual records are not)
        return
    assert isinstance(parsed, Observed)
    slow = history._row(parsed, QUEUE_IDS[parsed.queue], 9, TABLE, now, stamp)
    assert fast == slow
    assert [type(v) for v in fast[2]] == [type(v) for v in slow[2]]  # 1 and 1.0 are equal, not the same column


def test_the_usual_record_takes_the_one_pass_path():
    usual = [record(5), record(6, "ANALY_B", cpuconsumptiontime=12.5, pilottiming="NULL", transexitcode="NULL"),
             {k: v for k, v in record(7).items() if k not in ("superrorcode", "maxrss", "corecount", "pilottiming")}]
    assert all(history._finished_row(r, QUEUE_IDS, 9, "now", history._sqlite_text) for r in usual)
    assert set(history.COLUMNS) == {c.name for c in Job.__table__.columns} - {"id", "worker_id", "retry_of"}


# -- importing --------------------------------------------------------------------------------------
TOPOLOGY = Topology(sites=(SiteInfo("SITE-A", "DE"), SiteInfo("SITE-B", "DE")),
                    endpoints=(EndpointInfo("SITE-A_DATADISK", "SITE-A"), EndpointInfo("SITE-B_DATADISK", "SITE-B")),
                    queues=(QueueInfo("ANALY_A", "SITE-A", "DE", ("SITE-A_DATADISK",)),
                            QueueInfo("ANALY_B", "SITE-B", "DE", ("SITE-B_DATADISK",))))


@pytest.fixture
def sessions(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'robot.db'}")
    upgrade(engine)
    maker = make_sessionmaker(engine)
    with maker() as session:
        sync_topology(session, TOPOLOGY, T0)
        session.commit()
    yield maker
    engine.dispose()


def write(tmp_path, records, name="jobs.json"):
    path = tmp_path / name
    path.write_text(json.dumps({"jobs": records}, indent=1))
    return path


def test_import_stores_final_jobs_once_and_rolls_them_up(tmp_path, sessions):
    records = [record(1), failed(2), failed(3, code=1305, queue="ANALY_B"), record(4, status="running"),
               record(5, queue="ANALY_GONE"), {**record(6), "pandaid": "x6"}]
    path = write(tmp_path, records)
    with sessions() as session:
        summary = import_history(session, path, "history", TABLE, NOW)
        session.commit()
    assert (summary.records, summary.imported, summary.not_final, summary.already_known) == (6, 3, 1, 0)
    assert dict(summary.unknown_queues) == {"ANALY_GONE": 1}
    start = next(n for n, text in enumerate(path.read_text().splitlines(), start=1) if '"x6"' in text) - 1
    assert [str(p) for p in summary.problems] == [f"line {start}: pandaid: expected a whole number, got 'x6'"]
    with sessions() as session:
        jobs = {j.panda_id: j for j in session.scalars(select(Job))}
        assert sorted(jobs) == [1, 2, 3]
        assert (jobs[2].outcome, jobs[2].error_class, jobs[2].error_name) == ("failed", "site", "STAGEINFAILED")
        assert (jobs[3].outcome, jobs[3].error_class) == ("failed", "user")
        assert jobs[1].outcome == "completed" and jobs[1].time_payload == 500.0 and jobs[1].time_queue == 600.0
        template = session.scalar(select(Template).where(Template.name == "history"))
        assert template.active is False  # never sent by the loop
        hours = session.execute(select(func.sum(JobRollup.jobs), func.sum(JobRollup.failed_site))
                                .where(JobRollup.span == rollup.HOUR)).one()
        assert tuple(hours) == (3, 1)
        assert datetime.fromisoformat(session.get(Setting, rollup.WATERMARK_SETTING).value) > NOW  # not read again
    with sessions() as session:  # the same file again: nothing twice
        again = import_history(session, path, "history", TABLE, NOW)
        session.commit()
        assert (again.imported, again.already_known) == (0, 3)
        assert session.scalar(select(func.count(Job.id))) == 3


def test_a_bad_record_loses_nothing_else(tmp_path, sessions):
    records = [failed(i, queue="ANALY_A" if i % 2 else "ANALY_B") for i in range(1, 101)]
    records[40]["endtime"] = "soon"
    with sessions() as session:
        summary = import_history(session, write(tmp_path, records), "history", TABLE, NOW)
        session.commit()
        assert summary.imported == 99 and len(summary.problems) == 1
        assert summary.problems[0].field == "endtime"
        assert session.scalar(select(func.count(Job.id))) == 99


def test_a_binary_file_is_an_error(tmp_path, sessions):
    path = tmp_path / "random.bin"
    path.write_bytes(bytes(range(256)) * 8)
    with sessions() as session, pytest.raises(HistoryFileError):
        import_history(session, path, "history", TABLE, NOW)


def test_the_bulk_path_stores_each_column_as_the_orm_does(tmp_path, database_url):
    """Imported jobs are bound as plain values (COPY on PostgreSQL, executemany on SQLite): every column
    must read back byte for byte as SQLAlchemy stores the same job, times and zones included."""
    engine = make_engine(database_url)
    upgrade(engine)
    maker = make_sessionmaker(engine)
    with maker() as session:
        sync_topology(session, TOPOLOGY, T0)
        session.commit()
    records = [record(1), failed(2, queue="ANALY_B", creationtime="2026-11-02T12:00:00.250+01:00",
                                 pilottiming="NULL")]
    export = write(tmp_path, records)
    with maker() as session:
        if engine.dialect.name == "sqlite":
            raw = session.connection().connection.driver_connection
            cache = raw.execute("PRAGMA cache_size").fetchone()[0]
        assert import_history(session, export, "history", TABLE, NOW).imported == 2
        if engine.dialect.name == "sqlite":
            assert raw.execute("PRAGMA cache_size").fetchone()[0] == cache  # given back after the import
        session.commit()
    columns = [c for c in Job.__table__.columns if c.name not in ("id", "job_name", "panda_id")]
    with maker() as session:
        for job in session.scalars(select(Job).order_by(Job.panda_id)).all():
            session.execute(insert(Job.__table__).values(
                **{c.name: getattr(job, c.key) for c in columns}, job_name=f"orm.{job.panda_id}",
                panda_id=job.panda_id + 1000))
        session.commit()
        names = ", ".join(c.name for c in columns)
        stored = {pid: row for pid, *row in session.execute(text(f"SELECT panda_id, {names} FROM job"))}
    assert sorted(stored) == [1, 2, 1001, 1002]
    assert stored[1] == stored[1001] and stored[2] == stored[1002]
    assert stored[2][columns.index(Job.__table__.c.creation_time)] is not None
    engine.dispose()


def live_database(tmp_path, database_url):
    """A database whose robot already rolls up: an earlier import, and the loop's watermark at NOW + 2 h."""
    engine = make_engine(database_url)
    upgrade(engine)
    maker = make_sessionmaker(engine)
    with maker() as session:
        sync_topology(session, TOPOLOGY, T0)
        import_history(session, write(tmp_path, [record(1), failed(2)], "earlier.json"), "history", TABLE, NOW)
        rollup.update(session, NOW + timedelta(hours=2))
        session.commit()
    return engine, maker


def spread(first_id: int, count: int) -> list[dict]:
    """Jobs over 20 days and both queues, a few of them failed."""
    return [(failed if i % 7 == 0 else record)(first_id + i, queue=("ANALY_A", "ANALY_B")[i % 2],
                                               endtime=f"2026-10-{1 + i % 20:02d} {i % 24:02d}:30:00")
            for i in range(count)]


def rollup_rows(session) -> dict:
    return {(table.name, *(getattr(row, c) for c in table.primary_key.columns.keys())):
            {name: getattr(row, name) for name in (*rollup.SUMS, "last_end")}
            for table in (JobRollup.__table__, QueueRollup.__table__)
            for row in session.execute(select(table))}


def test_an_import_into_a_live_database_rolls_up_its_jobs_whatever_the_importers_clock(tmp_path, database_url):
    """The imported jobs are stamped with the importer's clock; the robot's watermark may be ahead of it
    (a robot on another host, a clock set back): they are rolled up all the same, as a rebuild would."""
    engine, maker = live_database(tmp_path, database_url)
    with maker() as session:
        summary = import_history(session, write(tmp_path, spread(100, 60)), "history", TABLE, NOW + timedelta(hours=1))
        session.commit()
        assert summary.imported == 60
    with maker() as session:
        stored = rollup_rows(session)
        rollup.rebuild(session, NOW + timedelta(hours=3))
        assert stored == rollup_rows(session)
        assert sum(row["jobs"] for key, row in stored.items() if key[:2] == ("job_rollup", rollup.WEEK)) == 62
    engine.dispose()


def test_the_loops_next_step_does_not_read_again_the_jobs_an_import_rolled_up(tmp_path, database_url):
    engine, maker = live_database(tmp_path, database_url)
    with maker() as session:
        import_history(session, write(tmp_path, spread(100, 200)), "history", TABLE, NOW + timedelta(hours=3))
        session.commit()
    with maker() as session:
        assert rollup.update(session, NOW + timedelta(hours=4)) == 0
        stored = rollup_rows(session)
        rollup.rebuild(session, NOW + timedelta(hours=5))
        assert stored == rollup_rows(session)
    engine.dispose()


# -- the command, and a replay over what it imported -------------------------------------------------
def test_history_import_then_policy_replay_judges_the_imported_past(tmp_path, tiny_grid):
    """A queue whose stage-in broke two days ago in the imported history is excluded by the replay."""
    from click.testing import CliRunner

    from robot.cli import main

    files = tiny_grid.write_files({"ANALY_A": {}, "ANALY_B": {}, "ANALY_C": {}, "ANALY_D": {}})
    start = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(days=2)
    records, pandaid = [], 0
    for step in range(48):  # every 10 minutes for 8 hours, one job per queue; ANALY_A broken from hour 4
        end = start + timedelta(minutes=10 * step)
        for queue in ("ANALY_A", "ANALY_B", "ANALY_C", "ANALY_D"):
            pandaid += 1
            stamp = end.strftime("%Y-%m-%d %H:%M:%S")
            records.append(failed(pandaid, queue=queue, endtime=stamp, starttime=stamp, creationtime=stamp)
                           if queue == "ANALY_A" and step >= 24 else
                           record(pandaid, queue=queue, end=stamp, starttime=stamp, creationtime=stamp))
    export = write(tmp_path, records + [record(10**6, queue="ANALY_ELSEWHERE")])
    run = lambda *args: CliRunner().invoke(main, ["--config", str(files.robot_yaml), *args])  # noqa: E731

    first = run("history", "import", str(export))
    assert first.exit_code == 0, first.output
    assert f"{export}: 193 record(s): 192 imported, 0 already stored, 0 not final, 0 bad" in first.output
    assert "computingsite ANALY_ELSEWHERE: not a queue of the configured topology, 1 record(s) skipped" in first.output
    assert "replay it: " in first.output and "policy replay --template history --since 3d" in first.output
    again = json.loads(run("history", "import", str(export), "--json").output)
    assert (again["imported"], again["already_known"]) == (0, 192)

    replayed = json.loads(run("policy", "replay", "--template", "history", "--since", "3d", "--json").output)
    excluded = [d["queue"] for d in replayed["differences"] if d["replayed"] == "exclude"]
    assert excluded == ["ANALY_A"]  # the robot itself did nothing then: every replayed move is a difference

    not_json = tmp_path / "README.md"
    not_json.write_text("# Queue Health Robot\n\nSome text.\n")
    refused = run("history", "import", str(not_json))
    assert refused.exit_code == 1 and refused.output.strip().splitlines() == [
        f"Error: {not_json}: expected PanDA monitor job records: a {{\"jobs\": [...]}} object, a list of records "
        "or one record per line"]
