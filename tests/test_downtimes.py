"""Announced downtimes: read from GOCDB or the embedded grid, and never an exclusion or a blame inside one."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlparse

import pytest
import requests
import responses
from click.testing import CliRunner
from sqlalchemy import select

from blacklist.engine import ExclusionEngine, outside_downtimes
from blacklist.model import Result
from blacklist.policies import Policy
from blacklist.settings import BlacklistSettings
from robot.backends.base import BackendUnavailable
from robot.downtimes import Downtime, DowntimeWatch, GOCDBClient, parse_cric, parse_gocdb, store, windows_by_site
from robot.jobstates import JobStatus, QueueStatus
from robot.storage.models import Downtime as DowntimeRow
from robot.storage.models import Event, Job, Queue, QueueTransition
from tests.fakes import T0, ScriptedGrid, make_robot, templates

GOCDB = "https://goc.example.org"
API = f"{GOCDB}/gocdbpi/public/"


def gocdb_downtime(key: str, site: str, start: datetime, end: datetime, *, severity: str = "OUTAGE",
                   classification: str = "SCHEDULED", service: str = "SRM", host: str = "se.example.org",
                   description: str = "dCache upgrade") -> str:
    """One DOWNTIME element as GOCDB's get_downtime writes it (one per affected service)."""
    return f"""
 <DOWNTIME ID="{key[:-2]}" PRIMARY_KEY="{key}" CLASSIFICATION="{classification}">
  <PRIMARY_KEY>{key}</PRIMARY_KEY>
  <HOSTNAME>{host}</HOSTNAME>
  <SERVICE_TYPE>{service}</SERVICE_TYPE>
  <ENDPOINT>{host}{service}</ENDPOINT>
  <HOSTED_BY>{site}</HOSTED_BY>
  <GOCDB_PORTAL_URL>https://goc.example.org/portal/index.php?Page_Type=Downtime&amp;id={key[:-2]}</GOCDB_PORTAL_URL>
  <AFFECTED_ENDPOINTS/>
  <SEVERITY>{severity}</SEVERITY>
  <DESCRIPTION>{description}</DESCRIPTION>
  <INSERT_DATE>{int(start.timestamp()) - 86400}</INSERT_DATE>
  <START_DATE>{int(start.timestamp())}</START_DATE>
  <END_DATE>{int(end.timestamp())}</END_DATE>
  <FORMATED_START_DATE>{start:%Y-%m-%d %H:%M}</FORMATED_START_DATE>
  <FORMATED_END_DATE>{end:%Y-%m-%d %H:%M}</FORMATED_END_DATE>
 </DOWNTIME>"""


def answer(*elements: str) -> str:
    return '<?xml version="1.0" encoding="UTF-8"?>\n<results>' + "".join(elements) + "\n</results>\n"


START, END = T0 + timedelta(hours=1), T0 + timedelta(hours=5)


# -- GOCDB ----------------------------------------------------------------------------------------
def test_gocdb_downtimes_are_read_per_site_with_one_entry_per_downtime():
    text = answer(gocdb_downtime("100G0", "SITE-A1", START, END, service="SRM"),
                  gocdb_downtime("100G0", "SITE-A1", START, END, service="CREAM-CE", host="ce.example.org"),
                  gocdb_downtime("101G0", "SITE-B1", START, END, severity="WARNING"),  # at risk: still works
                  gocdb_downtime("102G0", "SITE-C1", START, END, classification="UNSCHEDULED",
                                 description="power cut"))
    read = sorted(parse_gocdb(text), key=lambda d: d.site)
    assert [(d.key, d.site, d.start, d.end, d.classification) for d in read] == [
        ("100G0", "SITE-A1", START, END, "scheduled"), ("102G0", "SITE-C1", START, END, "unscheduled")]
    assert read[0].description == "dCache upgrade"


def test_gocdb_formatted_dates_are_used_when_the_unix_ones_are_missing():
    element = gocdb_downtime("7G0", "SITE-A1", START, END).replace(
        f"<START_DATE>{int(START.timestamp())}</START_DATE>", "").replace(
        f"<END_DATE>{int(END.timestamp())}</END_DATE>", "")
    (read,) = parse_gocdb(answer(element))
    assert (read.start, read.end) == (START, END)


@pytest.mark.parametrize("text", ["<html>maintenance</html>", "not xml at all", "<results><DOWNTIME/></results>",
                                  answer(gocdb_downtime("1G0", "S", START, END).replace(
                                      f"<START_DATE>{int(START.timestamp())}</START_DATE>",
                                      "<START_DATE>soon</START_DATE>"))])
def test_a_gocdb_answer_that_is_not_downtimes_is_refused(text):
    with pytest.raises(ValueError):
        parse_gocdb(text)


@responses.activate
def test_the_gocdb_client_asks_for_a_window_and_retries_with_bounds():
    responses.get(API, status=503)
    responses.get(API, body=answer(gocdb_downtime("100G0", "SITE-A1", START, END)))
    sleeps = []
    client = GOCDBClient(GOCDB, retries=2, sleep=sleeps.append)
    (read,) = client.downtimes(T0)
    assert read.site == "SITE-A1" and len(sleeps) == 1
    query = parse_qs(urlparse(responses.calls[-1].request.url).query)
    assert query == {"method": ["get_downtime"], "windowstart": ["2026-10-30"], "windowend": ["2026-11-08"]}


@responses.activate
@pytest.mark.parametrize("reply", [dict(status=500), dict(body="<html>proxy error</html>"),
                                   dict(body=requests.ConnectionError("refused"))])
def test_a_misbehaving_gocdb_is_unavailable_after_its_retries(reply):
    responses.get(API, **reply)
    sleeps = []
    with pytest.raises(BackendUnavailable, match="GOCDB get_downtime"):
        GOCDBClient(GOCDB, retries=2, sleep=sleeps.append).downtimes(T0)
    assert len(responses.calls) == 3 and len(sleeps) == 2


# -- CRIC's downtime view -------------------------------------------------------------------------------
CRIC = "https://cric.example.org"
CRIC_DOWNTIMES = f"{CRIC}/api/core/downtime/query/"


def cric_downtime(ident: int, site: str, start: datetime, end: datetime, *, severity: str = "OUTAGE",
                  classification: str = "SCHEDULED", description: str = "dCache upgrade") -> dict:
    """One downtime as CRIC's view lists it (naive UTC times, the announcing site's fields)."""
    return {"id": ident, "rc_site": site, "provider": "GOCDB", "severity": severity, "classification": classification,
            "description": description, "affected_services": "SRM, webdav, xrootd",
            "info_url": f"https://goc.example.org/portal/index.php?Page_Type=Downtime&id={ident}",
            "create_time": f"{start - timedelta(days=2):%Y-%m-%dT%H:%M:%S}",
            "start_time": f"{start:%Y-%m-%dT%H:%M:%S}", "end_time": f"{end:%Y-%m-%dT%H:%M:%S}"}


def test_cric_downtimes_are_read_per_site_whatever_the_grouping_of_its_answer():
    a1, b1 = cric_downtime(7, "SITE-A1", START, END), cric_downtime(8, "SITE-B1", START, END, severity="WARNING")
    c1 = cric_downtime(9, "SITE-C1", START, END, classification="UNSCHEDULED", description="power cut")
    old = cric_downtime(5, "SITE-A1", T0 - timedelta(days=5), T0 - timedelta(days=4))  # long over: not judged
    expected = [("7", "SITE-A1", START, END, "scheduled"), ("9", "SITE-C1", START, END, "unscheduled")]
    for answer_ in ({"SITE-A1": [a1, old], "SITE-B1": [b1], "SITE-C1": [c1]},  # a list per site
                    {"SITE-A1": {"7": a1, "5": old}, "SITE-B1": {"8": b1}, "SITE-C1": {"9": c1}},  # keyed by id
                    [a1, old, b1, c1]):  # a list, each naming its site
        read = sorted(parse_cric(answer_, T0), key=lambda d: d.site)
        assert [(d.key, d.site, d.start, d.end, d.classification) for d in read] == expected
        assert read[0].description == "dCache upgrade" and read[0].start.tzinfo is not None
    assert parse_cric({}, T0) == []  # no downtime anywhere


@pytest.mark.parametrize("data", ["<html>maintenance</html>", 42, {"SITE-A1": [{"id": 1, "start_time": "soon",
                                                                             "end_time": "later"}]},
                                  [{"id": 1, "start_time": "2026-11-01T12:00:00", "end_time": "2026-11-01T14:00:00"}],
                                  {"SITE-A1": ["an outage"]}])
def test_a_cric_answer_that_is_not_downtimes_is_refused(data):
    with pytest.raises(ValueError):
        parse_cric(data, T0)


@responses.activate
def test_cric_downtimes_are_asked_with_the_topologys_credentials_and_retried_with_bounds():
    from robot.backends.cric import CRICClient
    responses.get(CRIC_DOWNTIMES, status=503)
    responses.get(CRIC_DOWNTIMES, body="<html>proxy error</html>")
    responses.get(CRIC_DOWNTIMES, json={"SITE-A1": [cric_downtime(7, "SITE-A1", START, END)]})
    sleeps: list[float] = []
    client = CRICClient(CRIC, token="t0ken", retries=2, sleep=sleeps.append)
    (read,) = client.downtimes(T0)
    assert (read.site, read.start, read.end) == ("SITE-A1", START, END) and sleeps == [1.0, 2.0]
    request = responses.calls[-1].request
    assert request.url == f"{CRIC_DOWNTIMES}?json" and request.headers["Authorization"] == "Bearer t0ken"
    responses.reset()
    responses.get(CRIC_DOWNTIMES, body=requests.ConnectionError("refused"))
    with pytest.raises(BackendUnavailable, match="CRIC GET /api/core/downtime/query/: connection error after 3"):
        client.downtimes(T0)


@responses.activate
def test_cric_downtimes_feed_the_same_table_and_a_misbehaving_cric_never_stops_the_step(tmp_path, clock):
    from robot.backends.cric import CRICClient
    responses.get(CRIC_DOWNTIMES, json={"SITE-A1": [cric_downtime(7, "SITE-A1", T0, T0 + timedelta(hours=2))]})
    robot, grid, _ = robot_with_downtimes(tmp_path, clock)
    robot.evaluators[0] = DowntimeWatch(CRICClient(CRIC, retries=1, sleep=lambda s: None), timedelta(minutes=10))
    robot.run_once(clock.now())
    outage(robot, grid, clock, "ANALY_A1", steps=6)  # CRIC breaks meanwhile: the stored downtime holds
    responses.replace(responses.GET, CRIC_DOWNTIMES, status=500)
    outage(robot, grid, clock, "ANALY_A1", steps=5)
    assert grid.statuses.get("ANALY_A1", QueueStatus.ONLINE) is QueueStatus.ONLINE
    with robot.sessions() as session:
        (row,) = session.scalars(select(DowntimeRow)).all()
        assert (row.source, row.site, row.start, row.end) == ("cric", "SITE-A1", T0, T0 + timedelta(hours=2))
        assert session.scalars(select(QueueTransition).where(QueueTransition.queue.has(name="ANALY_A1"))).all() == []
        events = session.scalars(select(Event.message).where(Event.kind == "downtimes_unreachable")).all()
        assert events and events[0].endswith("CRIC GET /api/core/downtime/query/: HTTP 500 after 2 attempt(s)")


def test_cric_downtimes_are_read_where_the_topology_comes_from_cric(tmp_path):
    from robot.backends.cric import CRICClient
    from robot.config import RobotConfig
    from robot.services import downtime_watch
    from robot.yamlconfig import ConfigError, load_yaml_model
    cric = {"source": "cric", "cric": {"url": CRIC}}
    panda = {"kind": "panda", "panda": {"url": "https://pandaserver.example.org/server/panda"}}
    rucio = {"host": "https://rucio.example", "account": "qhr", "auth_type": "userpass", "username": "qhr",
             "password_file": "rucio.pass"}
    config = RobotConfig.model_validate({"data_dir": str(tmp_path), "backend": panda, "topology": cric,
                                         "datasets": {"source": "rucio", "rucio": rucio}})
    assert config.downtime_source == "cric"
    client = CRICClient(CRIC)
    assert downtime_watch(config, None, client).source is client
    assert isinstance(downtime_watch(config, None).source, CRICClient)
    path = tmp_path / "robot.yaml"
    path.write_text("downtimes:\n  source: cric\n")
    with pytest.raises(ConfigError, match="downtimes.source cric needs topology.source cric"):
        load_yaml_model(path, RobotConfig)


# -- storing ---------------------------------------------------------------------------------------
def test_stored_downtimes_follow_the_source(tmp_path):
    robot = make_robot(tmp_path, ScriptedGrid_for({"ANALY_A1": ("SITE-A1", "A")}), templates({"name": "AFT_A"}))
    first = [Downtime("1", "SITE-A1", START, END, "upgrade"), Downtime("2", "SITE-A1", END + timedelta(days=1),
                                                                        END + timedelta(days=2), "later")]
    with robot.sessions() as session:
        assert store(session, "gocdb", first, T0) == {"added": 2, "changed": 0, "removed": 0}
        session.commit()
    longer = [Downtime("1", "SITE-A1", START, END + timedelta(hours=2), "upgrade")]  # the second was cancelled
    with robot.sessions() as session:
        assert store(session, "gocdb", longer, T0) == {"added": 0, "changed": 1, "removed": 1}
        session.commit()
    during = T0 + timedelta(hours=2)
    with robot.sessions() as session:  # gone from the list while it was going on: it ended early
        assert store(session, "gocdb", [], during) == {"added": 0, "changed": 1, "removed": 0}
        session.commit()
        (row,) = session.scalars(select(DowntimeRow)).all()
        assert (row.start, row.end) == (START, during)
        assert list(windows_by_site(session, T0, during)) == ["SITE-A1"]


class FailingSource:
    name = "gocdb"

    def downtimes(self, now):
        raise BackendUnavailable("GOCDB get_downtime: timeout after 3 attempt(s)")


def test_a_source_that_cannot_be_read_keeps_what_is_stored_and_never_stops_the_step(tmp_path, clock):
    grid = ScriptedGrid_for({"ANALY_A1": ("SITE-A1", "A")})
    robot = make_robot(tmp_path, grid, templates({"name": "AFT_A"}))
    with robot.sessions() as session:
        store(session, "gocdb", [Downtime("1", "SITE-A1", START, END)], T0)
        session.commit()
    robot.evaluators.append(DowntimeWatch(FailingSource(), timedelta(minutes=10)))
    summary = robot.run_once(clock.now())
    assert summary.submitted == 1  # the step went on
    with robot.sessions() as session:
        assert session.scalar(select(Event.message).where(Event.kind == "downtimes_unreachable")).startswith(
            "downtimes could not be read, the stored ones are kept: GOCDB get_downtime: timeout")
        assert len(session.scalars(select(DowntimeRow)).all()) == 1


# -- what a downtime changes -------------------------------------------------------------------------
QUEUES = {f"ANALY_{c}{i}": (f"SITE-{c}{i}", c) for c in "ABCD" for i in range(1, 4)}  # 12 queues, 4 clouds


def ScriptedGrid_for(queues):  # noqa: N802 - reads like the class it builds
    from robot.clock import ManualClock
    return ScriptedGrid(ManualClock(T0), queues)


class ListedDowntimes:
    """A downtime source whose list a test sets."""

    name = "gocdb"

    def __init__(self):
        self.listed: list[Downtime] = []

    def downtimes(self, now):
        return list(self.listed)


def robot_with_downtimes(tmp_path, clock, names=("AFT_A",)):
    grid = ScriptedGrid(clock, QUEUES)
    robot = make_robot(tmp_path, grid, templates(*({"name": name} for name in names)))
    source = ListedDowntimes()
    settings = BlacklistSettings.model_validate({"mode": "enforce", "default": {"stall_after": "30d"}})
    robot.evaluators[:0] = [DowntimeWatch(source, timedelta(0))]
    robot.evaluators.append(ExclusionEngine(Policy(settings, tuple(names)), grid))
    return robot, grid, source


def outage(robot, grid, clock, queue, steps):
    """The queue's site is down: every job there fails with a stage-in error, step after step."""
    for _ in range(steps):
        for pid in grid.in_queue(queue):
            grid.finish(pid, pilot_error_code=1099, pilot_error_diag="Get error: copy failed")
        clock.advance(timedelta(minutes=10))
        robot.run_once(clock.now())


def test_an_announced_outage_is_neither_excluded_nor_counted_and_the_queue_is_tested_when_it_ends(tmp_path, clock):
    robot, grid, source = robot_with_downtimes(tmp_path, clock)
    source.listed = [Downtime("9G0", "SITE-A1", T0, T0 + timedelta(hours=2), "storage upgrade")]
    robot.run_once(clock.now())
    outage(robot, grid, clock, "ANALY_A1", steps=11)  # the whole downtime long
    assert grid.statuses.get("ANALY_A1", QueueStatus.ONLINE) is QueueStatus.ONLINE
    with robot.sessions() as session:
        assert session.scalars(select(QueueTransition).where(QueueTransition.queue.has(name="ANALY_A1"))).all() == []
    clock.advance(timedelta(minutes=15))  # past its end: the failures inside it do not count...
    before = len(grid.requests)
    robot.run_once(clock.now())
    with robot.sessions() as session:
        queue = session.scalars(select(Queue).where(Queue.name == "ANALY_A1")).one()
        assert (queue.robot_state, queue.job_gap_seconds) == ("online", 0)
        assert queue.extra_jobs >= 1  # ... and it is tested at once
    assert [grid.requests[pid].queue for pid in list(grid.requests)[before:]].count("ANALY_A1") >= 1


def test_jobs_that_waited_or_ran_inside_an_announced_outage_do_not_count_when_they_fail_after_it(tmp_path, clock):
    """The jobs sent to a site just before its downtime wait or start there and fail once it is over: the
    outage's, not the site's; the queue is neither suspected nor excluded, and it is still tested at once after
    the end."""
    robot, grid, source = robot_with_downtimes(tmp_path, clock, ("AFT_A", "AFT_B"))
    source.listed = [Downtime("9G0", "SITE-A1", T0 + timedelta(minutes=5), T0 + timedelta(hours=2), "storage upgrade")]
    robot.run_once(clock.now())
    inside = []
    for step in range(11):  # the whole downtime long: half of the jobs start there, the others keep waiting
        for pid in grid.in_queue("ANALY_A1", (JobStatus.ACTIVATED,)):
            if pid not in inside:
                inside.append(pid)
                if len(inside) % 2:
                    grid.start(pid)
        clock.advance(timedelta(minutes=10))
        robot.run_once(clock.now())
    assert len(inside) == 2 and {grid.jobs[pid].job_status for pid in inside} == {JobStatus.RUNNING, JobStatus.ACTIVATED}
    clock.advance(timedelta(minutes=15))  # the downtime is over: they fail now, the stage-in still broken
    for pid in inside:
        if grid.jobs[pid].job_status is JobStatus.ACTIVATED:
            grid.start(pid)
        wall = (clock.now() - grid.jobs[pid].start_time).total_seconds() or 30.0  # it ends now
        grid.finish(pid, wall=wall, pilot_error_code=1099, pilot_error_diag="Get error: copy failed")
    for _ in range(3):
        robot.run_once(clock.now())
        clock.advance(timedelta(minutes=5))
    with robot.sessions() as session:
        queue = session.scalars(select(Queue).where(Queue.name == "ANALY_A1")).one()
        ended = session.scalars(select(Job).where(Job.panda_id.in_(inside))).all()
        assert {job.outcome for job in ended} == {"failed"} and all(job.end_time > T0 + timedelta(hours=2)
                                                                     for job in ended)
        assert session.scalars(select(QueueTransition).where(QueueTransition.queue_id == queue.id)).all() == []
        assert (queue.robot_state, queue.job_gap_seconds) == ("online", 0)  # still to be tested at once
    assert grid.statuses.get("ANALY_A1", QueueStatus.ONLINE) is QueueStatus.ONLINE


def test_a_long_job_that_started_inside_an_outage_does_not_count_when_it_fails_after_the_window(tmp_path, clock):
    """The policy's window (6 h) reaches back past the outage's end: the outage still excuses its jobs."""
    robot, grid, source = robot_with_downtimes(tmp_path, clock)
    source.listed = [Downtime("9G0", "SITE-A1", T0 + timedelta(minutes=5), T0 + timedelta(hours=1), "storage upgrade")]
    robot.run_once(clock.now())
    (inside,) = grid.in_queue("ANALY_A1")  # sent just before the outage
    clock.advance(timedelta(minutes=10))
    grid.start(inside)
    robot.run_once(clock.now())
    clock.advance(timedelta(hours=8))  # it runs on, and fails 7 h after the outage's end
    grid.finish(inside, wall=(clock.now() - grid.jobs[inside].start_time).total_seconds(), pilot_error_code=1099,
                pilot_error_diag="Get error: copy failed")
    robot.run_once(clock.now())
    with robot.sessions() as session:
        assert session.scalar(select(Job.outcome).where(Job.panda_id == inside)) == "failed"
        assert session.scalars(select(QueueTransition).where(QueueTransition.queue.has(name="ANALY_A1"))).all() == []


def test_a_result_counts_unless_its_job_lived_at_the_site_during_an_announced_outage():
    down = [Downtime("1", "S", T0, T0 + timedelta(hours=2))]

    def result(created, started, ended):
        return Result(1, "AFT_A", T0 + ended, True, "site", "STAGEINFAILED", 1099, T0 + started, T0 + created)

    h = timedelta(hours=1)
    before, inside, waited, ran, spanned, after = (result(-2 * h, -1.5 * h, -h), result(h, h, 1.5 * h),
                                                   result(h, 2.5 * h, 3 * h), result(h, 1.5 * h, 3 * h),
                                                   result(-h, -h, 3 * h), result(2 * h, 2.2 * h, 3 * h))
    assert outside_downtimes([before, inside, waited, ran, spanned, after], down) == [before, after]


def test_the_same_outage_unannounced_is_excluded_as_before(tmp_path, clock):
    robot, grid, source = robot_with_downtimes(tmp_path, clock)
    robot.run_once(clock.now())
    outage(robot, grid, clock, "ANALY_A1", steps=11)
    assert grid.statuses["ANALY_A1"] is QueueStatus.BROKEROFF


def test_a_downtime_elsewhere_or_in_the_past_changes_nothing(tmp_path, clock):
    robot, grid, source = robot_with_downtimes(tmp_path, clock)
    source.listed = [Downtime("1G0", "SITE-B1", T0, T0 + timedelta(hours=4)),  # another site
                     Downtime("2G0", "SITE-A1", T0 - timedelta(days=1), T0 - timedelta(hours=20))]  # long over
    robot.run_once(clock.now())
    outage(robot, grid, clock, "ANALY_A1", steps=11)
    assert grid.statuses["ANALY_A1"] is QueueStatus.BROKEROFF


# -- the embedded grid announces its own -------------------------------------------------------------
def test_grid_downtime_add_reaches_the_robot(tiny_grid):
    from robot.cli import main
    from robot.config import load_config
    from robot.services import build
    from robot.storage.database import upgrade

    files = tiny_grid.write_files({"ANALY_A": {}, "ANALY_B": {}})
    run = lambda *args: CliRunner().invoke(main, ["--config", str(files.robot_yaml), *args])  # noqa: E731
    refused = run("grid", "downtime", "add", "SITE-ANALY_Z", "--for", "2h", "--reason", "x")
    assert refused.exit_code == 2 and "unknown site 'SITE-ANALY_Z'" in refused.output
    no_end = run("grid", "downtime", "add", "SITE-ANALY_A", "--reason", "x")
    assert no_end.exit_code == 2 and "--end" in no_end.output
    added = run("grid", "downtime", "add", "SITE-ANALY_A", "--for", "2h", "--reason", "dCache upgrade")
    assert added.exit_code == 0, added.output
    assert "SITE-ANALY_A: downtime " in added.output and "(dCache upgrade)" in added.output
    listed = run("grid", "downtime", "list")
    assert "SITE-ANALY_A" in listed.output and "dCache upgrade" in listed.output

    config = load_config(files.robot_yaml)
    from robot.clock import SystemClock
    services = build(config, SystemClock())
    try:
        upgrade(services.engine)
        services.robot.run_once(SystemClock().now())
        with services.sessions() as session:
            (row,) = session.scalars(select(DowntimeRow)).all()
            assert (row.source, row.site, row.description) == ("embedded", "SITE-ANALY_A", "dCache upgrade")
    finally:
        services.close()
    why = run("why", "ANALY_A")  # the first thing a shifter checks
    assert why.exit_code == 0, why.output
    assert "SITE-ANALY_A: scheduled downtime " in why.output and "(dCache upgrade) (now)" in why.output
    assert "downtime" not in run("why", "ANALY_B").output


# -- in the simulator ----------------------------------------------------------------------------------
def test_in_the_simulator_only_the_unannounced_outage_is_excluded():
    """The same stage-in outage at two sites, one announced: it is left alone, the other is excluded."""
    from blacklist.simulate import BUILTIN, run
    from robot.backends.simulated import Scenario

    scenario = Scenario.model_validate({
        "name": "downtime", "duration": "14h", "queues": {"count": 16, "clouds": ["DE", "US"], "per_site": 2},
        "templates": ["AFT_A", "AFT_B"], "noise": {"site": 0, "user": 0, "unknown": 0},
        "faults": [{"sites": ["DE-SITE000"], "onset": "2h", "duration": "4h", "mode": "stagein", "announced": True},
                   {"sites": ["US-SITE001"], "onset": "2h", "duration": "4h", "mode": "stagein"}]})
    result = run(scenario, BUILTIN["default"], 1, "default")
    assert result.faults == 2 and result.missed == 0  # both queues of the unannounced outage excluded
    assert result.false_exclusions == 0  # nothing at the announced one (there is no other noise)


def test_replay_leaves_a_queue_alone_during_its_sites_announced_downtime(tmp_path, clock):
    from blacklist.replay import replay

    grid = ScriptedGrid(clock, QUEUES)
    robot = make_robot(tmp_path, grid, templates({"name": "AFT_A"}))  # the robot itself judged nothing then
    robot.run_once(clock.now())
    outage(robot, grid, clock, "ANALY_A1", steps=11)
    policy = Policy(BlacklistSettings.model_validate({"default": {"stall_after": "30d"}}), ("AFT_A",))
    with robot.sessions() as session:
        assert [m.queue for m in replay(session, policy, T0, clock.now()) if m.action == "exclude"] == ["ANALY_A1"]
        store(session, "gocdb", [Downtime("9G0", "SITE-A1", T0, T0 + timedelta(hours=3), "storage upgrade")], T0)
        session.commit()
        assert [m for m in replay(session, policy, T0, clock.now()) if m.queue == "ANALY_A1"] == []


# -- ticket verdicts ----------------------------------------------------------------------------------
def test_a_ticket_about_a_site_in_an_announced_downtime_gets_that_answer_first():
    from robot.tickets.verdict import DowntimeRef, EpisodeRef, Figures, Named, Places, judge

    down = DowntimeRef("SITE-X", T0, T0 + timedelta(hours=4), "scheduled downtime 2026-11-01 12:00-16:00 UTC (dCache)")
    places = Places(site_queues={"SITE-X": ["ANALY_X"], "SITE-Y": ["ANALY_Y"]})
    during = T0 + timedelta(hours=1)
    episode = EpisodeRef(1, "ANALY_X", "SITE-X", "US", T0, None, "metrics", "failed 7 of 9 test jobs (STAGEINFAILED)")
    for named in (Named("queue", "ANALY_X", "ANALY_X", "SITE-X", "US"), Named("site", "SITE-X", None, "SITE-X", "US"),
                  Named("panda_id", "6000000001", "ANALY_X")):  # a job: its queue's site, from the topology
        result = judge(during, during, [named], [episode], {}, [], places, None, [down])
        assert result.verdict == "site" and result.reason.startswith("scheduled downtime 2026-11-01 12:00-16:00 UTC")
        assert "resubmit after 2026-11-01 16:00 UTC" in result.reply and result.confidence == 0.9
    other = judge(during, during, [Named("queue", "ANALY_Y", "ANALY_Y", "SITE-Y", "DE")], [],
                  {"ANALY_Y": Figures("ANALY_Y", 40, 0, 0)}, [], places, None, [down])
    assert other.verdict == "not_site"  # another site's downtime says nothing about this one
    long_after = judge(T0 + timedelta(days=1), T0 + timedelta(days=1), [Named("queue", "ANALY_X", "ANALY_X", "SITE-X",
                                                                             "US")], [], {}, [], places, None, [down])
    assert "downtime" not in long_after.reason


def test_imported_tickets_are_judged_with_the_stored_downtimes(tmp_path, clock):
    from robot.storage.models import Ticket, TicketMention
    from robot.tickets.store import judge_tickets

    robot = make_robot(tmp_path, ScriptedGrid(clock, QUEUES), templates({"name": "AFT_A"}))
    robot.run_once(clock.now())  # the topology
    when = T0 + timedelta(hours=2)
    with robot.sessions() as session:
        store(session, "gocdb", [Downtime("9G0", "SITE-A1", T0, T0 + timedelta(hours=4), "storage upgrade")], T0)
        ticket = Ticket(source="mail", key="<1@x>", subject="jobs fail at ANALY_A1", state="open",
                        first_message_at=when, last_message_at=when, messages=1)
        session.add(ticket)
        session.flush()
        session.add(TicketMention(ticket_id=ticket.id, kind="queue", value="ANALY_A1", queue="ANALY_A1",
                                  site="SITE-A1", cloud="A"))
        judge_tickets(session, when)
        assert ticket.verdict == "site"
        assert ticket.verdict_reason.startswith("scheduled downtime 2026-11-01 12:00-16:00 UTC (storage upgrade)")


# -- no test jobs to a site in announced downtime ---------------------------------------------------------
def test_no_test_job_goes_to_a_site_in_announced_downtime_and_it_is_tested_when_it_ends(tmp_path, clock):
    """As HammerCloud: the site's queues get nothing while the outage lasts (what is in flight at its start is
    left alone), the other queues are tested as usual, and the site's are tested at the step it ends."""
    robot, grid, source = robot_with_downtimes(tmp_path, clock)
    start, end = T0 + timedelta(hours=1), T0 + timedelta(hours=3)
    source.listed = [Downtime("9G0", "SITE-A1", start, end, "storage upgrade")]
    while clock.now() < end + timedelta(minutes=30):
        robot.run_once(clock.now())
        for pid in grid.in_queue("ANALY_A1") + grid.in_queue("ANALY_B1"):
            grid.finish(pid)  # every job ends well at once: each step would send the next one
        clock.advance(timedelta(minutes=10))
    sent = {queue: [job.creation_time for job in grid.jobs.values() if job.queue == queue]
            for queue in ("ANALY_A1", "ANALY_B1")}
    assert [when for when in sent["ANALY_A1"] if start <= when < end] == []
    assert min(when for when in sent["ANALY_A1"] if when >= end) == end  # at once
    assert [when for when in sent["ANALY_B1"] if start <= when < end] != []  # elsewhere, as usual



# -- users' own jobs around an announced downtime ----------------------------------------------------------
def test_users_hours_that_overlap_an_outage_or_end_within_the_hour_after_it_do_not_count():
    """An hour's counts are the users' jobs that ended in it, not when each waited or ran: one that overlaps
    the outage holds some that ended inside it, and the hour after its end holds those that waited or ran
    inside it and failed as the site came back."""
    from robot.userjobs import StoredHour, outside_downtimes as hours_outside

    def hours(*offsets):
        return [StoredHour("ANALY_A1", T0 + timedelta(hours=h), 30, 5, {}, ()) for h in offsets]

    h = timedelta(hours=1)
    on_the_hour = [Downtime("1", "SITE-A1", T0, T0 + 2 * h)]
    assert hours_outside(hours(-1, 0, 1, 2, 3), on_the_hour) == hours(-1, 3)
    half_past = [Downtime("1", "SITE-A1", T0 + h / 2, T0 + 2.5 * h)]
    assert hours_outside(hours(-1, 0, 1, 2, 3, 4), half_past) == hours(-1, 4)
    assert hours_outside(hours(0, 1), []) == hours(0, 1)


def test_users_failures_inside_an_outage_and_the_hour_after_it_are_not_evidence(tmp_path, clock):
    """The queue's site announced an outage (13:30-15:20); its users' jobs failed with a stage-in error while it
    lasted and in the hour after (they waited there): none of it reaches the policy; before it and from an hour
    after its end they count."""
    from blacklist.engine import QueueFacts
    from robot.classify import load_table
    from robot.backends.base import UserJobHour
    from robot.userjobs import describe_hour, recent_rows
    from robot.userjobs import store as store_hours

    robot, grid, source = robot_with_downtimes(tmp_path, clock)
    robot.run_once(clock.now())  # the topology
    policy = Policy(BlacklistSettings.model_validate({"mode": "enforce", "user_jobs": {"enabled": True}}), ("AFT_A",))
    assert policy.hears_users
    now = T0 + timedelta(hours=5, minutes=30)
    failing = [UserJobHour("ANALY_A1", T0 + timedelta(hours=h), 40, 20, {("pilot", 1099): 20}) for h in range(6)]
    with robot.sessions() as session:
        store(session, "gocdb", [Downtime("9G0", "SITE-A1", T0 + timedelta(hours=1, minutes=30),
                                          T0 + timedelta(hours=3, minutes=20), "storage upgrade")], T0)
        store_hours(session, "scripted", failing, T0, load_table(), now)
        session.commit()
        heard = QueueFacts(policy).load(session, now).views["ANALY_A1"].user_jobs
        shown = [describe_hour(row) for row in recent_rows(session, "ANALY_A1", now)]  # as `why` and the queue page
    assert [h.hour for h in heard] == [T0, T0 + timedelta(hours=5)]  # before it, and from 16:20 on
    assert [line.partition("; not counted: ")[2] for line in shown] == [
        "", *["scheduled downtime 2026-11-01 13:30-15:20 UTC (storage upgrade)"] * 4, ""]
    assert shown[1].startswith("users' jobs 2026-11-01 16:00 UTC: 40 ended, 20 failed (site 20): STAGEINFAILED 20 (site)")


@responses.activate
def test_a_hung_gocdb_holds_up_no_step_and_what_it_says_later_is_stored(tmp_path, clock):
    """GOCDB is read in a thread of its own: while it does not answer the steps go on (no robot process
    misses its beat for it), and its answer is stored at the first step after it came."""
    import threading

    from robot.config import RobotConfig
    from robot.services import downtime_watch

    answered = threading.Event()

    def hung(request):
        assert answered.wait(120), "the test never let GOCDB answer"
        return 200, {}, answer(gocdb_downtime("100G0", "SITE-A1", START, END))

    responses.add_callback(responses.GET, API, callback=hung)
    config = RobotConfig.model_validate({"data_dir": str(tmp_path), "downtimes": {"source": "gocdb"}})
    assert downtime_watch(config, None).background  # remote: read in a thread of its own
    robot, grid, _ = robot_with_downtimes(tmp_path, clock)
    watch = robot.evaluators[0] = DowntimeWatch(GOCDBClient(GOCDB, retries=0), timedelta(minutes=10), background=True)
    assert robot.run_once(clock.now()).submitted == len(QUEUES)  # the step went on, GOCDB unanswered
    for _ in range(2):
        clock.advance(timedelta(minutes=1))
        robot.run_once(clock.now())  # and the next ones, GOCDB still asked
    with robot.sessions() as session:
        assert session.scalars(select(DowntimeRow)).all() == []
    answered.set()
    assert watch._reading.done.wait(120)
    robot.run_once(clock.now())
    with robot.sessions() as session:
        (row,) = session.scalars(select(DowntimeRow)).all()
        assert (row.source, row.site, row.start, row.end) == ("gocdb", "SITE-A1", START, END)
    assert len(responses.calls) == 1  # asked once, until `refresh` is over


@responses.activate
def test_a_failure_of_a_source_read_in_the_background_is_recorded_at_the_next_step(tmp_path, clock):
    responses.get(API, status=503)
    robot, grid, _ = robot_with_downtimes(tmp_path, clock)
    watch = robot.evaluators[0] = DowntimeWatch(GOCDBClient(GOCDB, retries=0), timedelta(minutes=10), background=True)
    robot.run_once(clock.now())
    assert watch._reading.done.wait(120)
    clock.advance(timedelta(minutes=1))
    robot.run_once(clock.now())
    with robot.sessions() as session:
        assert session.scalar(select(Event.message).where(Event.kind == "downtimes_unreachable")).endswith(
            "GOCDB get_downtime: HTTP 503 after 1 attempt(s)")
