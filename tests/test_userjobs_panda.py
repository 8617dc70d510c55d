"""Users' own jobs read from PanDA's monitor job list (its documented JSON), mocked with `responses`."""
from __future__ import annotations

from datetime import timedelta
from urllib.parse import parse_qs, urlparse

import pytest
import requests
import responses
from sqlalchemy import select

from robot.backends.base import BackendUnavailable
from robot.backends.panda import PandaBackend
from robot.backends.panda_monitor import MonitorUserJobs
from robot.classify import load_table
from robot.config import PandaConfig
from robot.jobstates import QueueStatus
from robot.storage.database import make_engine, make_sessionmaker, upgrade
from robot.storage.models import Event, Job, QueueTransition
from robot.storage.models import UserJobHour as Row
from robot.userjobs import UserJobWatch
from tests.fakes import T0

MONITOR = "https://bigpanda.example.org"


def record(pandaid, site, status, end, **fields):
    base = {"pandaid": pandaid, "computingsite": site, "jobstatus": status, "prodsourcelabel": "user",
            "produsername": "Some User", "processingtype": "panda-client-1.5.0-jedi-run",
            "creationtime": "2026-11-01 11:00:00", "starttime": "2026-11-01 11:10:00", "endtime": end,
            "piloterrorcode": 0, "exeerrorcode": 0, "ddmerrorcode": 0, "taskbuffererrorcode": 0,
            "jobdispatchererrorcode": 0, "superrorcode": 0, "piloterrordiag": "NULL"}
    return {**base, **fields}


HOUR_12 = [record(1, "ANALY_A", "finished", "2026-11-01 12:05:00"),
           record(2, "ANALY_A", "failed", "2026-11-01 12:20:00", piloterrorcode=1099,
                  piloterrordiag="Get error: Copy command returned error code 256"),
           record(3, "ANALY_A", "failed", "2026-11-01 12:30:00", exeerrorcode=65),
           record(4, "ANALY_B", "finished", "2026-11-01 12:40:00"),
           record(5, "ANALY_A", "failed", "2026-11-01 12:45:00", piloterrorcode=1099,
                  processingtype="gangarobot"),  # a test job (the robot's, HammerCloud's): not users' work
           record(6, "ANALY_B", "running", "NULL")]


def asked(call) -> dict:
    return {k: v[0] for k, v in parse_qs(urlparse(call.request.url).query, keep_blank_values=True).items()}


@responses.activate
def test_each_hour_is_one_request_for_users_final_jobs_summed_per_queue_without_any_user_data():
    responses.get(f"{MONITOR}/jobs/", json={"jobs": HOUR_12, "selectionsummary": []})
    responses.get(f"{MONITOR}/jobs/", json={"jobs": []})
    hours = MonitorUserJobs(MONITOR, sleep=lambda s: None).user_job_stats(T0, T0 + timedelta(hours=1, minutes=30))
    fields = ("pandaid,computingsite,jobstatus,processingtype,endtime,piloterrorcode,exeerrorcode,ddmerrorcode,"
              "taskbuffererrorcode,jobdispatchererrorcode,superrorcode")
    assert [asked(c) for c in responses.calls] == [
        {"json": "", "prodsourcelabel": "user", "jobstatus": "finished|failed",
         "endtimerange": "2026-11-01T12:00|2026-11-01T13:00", "date_from": "2026-11-01T12:00",
         "date_to": "2026-11-01T13:00", "limit": "100000", "fields": fields, "outputs": "jobs"},
        {"json": "", "prodsourcelabel": "user", "jobstatus": "finished|failed",
         "endtimerange": "2026-11-01T13:00|2026-11-01T13:30", "date_from": "2026-11-01T13:00",
         "date_to": "2026-11-01T13:30", "limit": "100000", "fields": fields, "outputs": "jobs"}]
    assert responses.calls[0].request.headers["Accept"] == "application/json"
    assert [(h.queue, h.hour, h.ended, h.failed, h.errors) for h in hours] == [
        ("ANALY_A", T0, 3, 2, {("pilot", 1099): 1, ("exe", 65): 1}), ("ANALY_B", T0, 1, 0, {})]
    assert "Some User" not in repr(hours)


@responses.activate
def test_an_older_monitor_answering_the_bare_list_of_jobs_is_read_too():
    responses.get(f"{MONITOR}/jobs/", json=HOUR_12)
    hours = MonitorUserJobs(MONITOR, sleep=lambda s: None).user_job_stats(T0, T0 + timedelta(hours=1))
    assert [(h.queue, h.ended, h.failed) for h in hours] == [("ANALY_A", 3, 2), ("ANALY_B", 1, 0)]


class Sleeps(list):
    def __call__(self, seconds):
        self.append(seconds)


@responses.activate
def test_a_failing_monitor_is_retried_with_bounds_then_unavailable():
    sleeps = Sleeps()
    responses.get(f"{MONITOR}/jobs/", status=503)
    responses.get(f"{MONITOR}/jobs/", body="<html>maintenance</html>")
    responses.get(f"{MONITOR}/jobs/", json={"jobs": HOUR_12})
    hours = MonitorUserJobs(MONITOR, retries=3, sleep=sleeps).user_job_stats(T0, T0 + timedelta(hours=1))
    assert len(responses.calls) == 3 and sleeps == [1.0, 2.0] and hours[0].ended == 3
    responses.reset()
    responses.get(f"{MONITOR}/jobs/", body=requests.ConnectionError("refused"))
    with pytest.raises(BackendUnavailable, match="connection error after 3 attempt"):
        MonitorUserJobs(MONITOR, retries=2, sleep=Sleeps()).user_job_stats(T0, T0 + timedelta(hours=1))
    responses.reset()
    responses.get(f"{MONITOR}/jobs/", status=403)
    with pytest.raises(BackendUnavailable, match="HTTP 403"):
        MonitorUserJobs(MONITOR, retries=3, sleep=Sleeps()).user_job_stats(T0, T0 + timedelta(hours=1))
    assert len(responses.calls) == 1  # refused: not asked again


class Store:
    def queue_status(self):
        return {"ANALY_A": QueueStatus.ONLINE}

    def set_queue_status(self, *args):
        raise AssertionError("nothing to set")


@responses.activate
def test_the_panda_backend_reads_users_jobs_from_its_monitor_with_its_token(tmp_path):
    token = tmp_path / "token"
    token.write_text("secret-token\n")
    settings = PandaConfig(url="https://pandaserver.example.org/server/panda", auth="oidc", token_file=str(token),
                           monitor_url=MONITOR, retries=1)
    responses.get(f"{MONITOR}/jobs/", json={"jobs": HOUR_12})
    hours = PandaBackend(settings, Store(), sleep=Sleeps()).user_job_stats(T0, T0 + timedelta(hours=1))
    assert responses.calls[0].request.headers["Authorization"] == "Bearer secret-token"
    assert {h.queue for h in hours} == {"ANALY_A", "ANALY_B"}
    without = PandaBackend(PandaConfig(url=settings.url, auth="oidc", token_file=str(token)), Store())
    with pytest.raises(BackendUnavailable, match="monitor_url is not set"):
        without.user_job_stats(T0, T0 + timedelta(hours=1))


@responses.activate
def test_an_unreachable_monitor_is_an_event_never_a_failure_of_a_queue(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'robot.db'}")
    upgrade(engine)
    sessions = make_sessionmaker(engine)
    responses.get(f"{MONITOR}/jobs/", json={"jobs": HOUR_12})
    watch = UserJobWatch(MonitorUserJobs(MONITOR, retries=1, sleep=Sleeps()), load_table(), timedelta(minutes=10),
                         timedelta(hours=1))
    with sessions() as session:
        assert watch(session, T0 + timedelta(minutes=50)) == 2
        session.commit()
        responses.reset()
        responses.get(f"{MONITOR}/jobs/", status=502)
        assert watch(session, T0 + timedelta(minutes=70)) is None
        session.commit()
        assert {(r.queue, r.ended, r.failed) for r in session.scalars(select(Row))} == {("ANALY_A", 3, 2),
                                                                                         ("ANALY_B", 1, 0)}
        (event,) = session.scalars(select(Event)).all()
        assert event.kind == "user_jobs_unreachable" and "HTTP 502 after 2 attempt(s)" in event.message
        assert session.scalars(select(Job)).all() == [] and session.scalars(select(QueueTransition)).all() == []
    engine.dispose()
