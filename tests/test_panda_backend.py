"""The PanDA backend: the real, unmodified panda-client against a programmable PanDA on loopback.

Every misbehaviour the service can show (5xx, a reply held past the timeout, a dropped
connection, malformed JSON, `success: false`, empty and garbage data, "NULL" IDs, unknown states)
must end as BackendUnavailable after a bounded number of requests: never a failed job, never an
exclusion. Sleeping between retries is injected and recorded; nothing here sleeps for real except
the one request held past a 0.3 s timeout.
"""
from __future__ import annotations

import json
import os
import socket
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlparse

import pytest
import responses
from sqlalchemy import func, select

from blacklist.engine import ExclusionEngine
from blacklist.policies import Policy
from robot.backends.base import BackendUnavailable, InputFile, JobRequest
from robot.backends.job_parameters import TRANSFORMATION, parse_job_parameters
from robot.backends.panda import MAX_BATCH, PandaBackend, job_definition_id
from robot.classify import load_table
from robot.config import PandaConfig, RobotConfig
from robot.jobstates import JobStatus, QueueStatus
from robot.loop import Robot
from robot.storage.database import make_engine, make_sessionmaker, upgrade
from robot.storage.models import Event, Job, QueueTransition
from tests.fakes import ScriptedGrid, templates
from tests.panda_fake import FakePanda, decode_jobs

TOKEN = "eyJhbGciOi.SECRET-ID-TOKEN.x9Zq"


@pytest.fixture
def fake():
    server = FakePanda()
    yield server
    server.stop()


class Sleeps(list):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


class Store:
    """A queue-status store (CRIC in production)."""

    def __init__(self):
        self.statuses = {"ANALY_X": QueueStatus.ONLINE}
        self.set_calls = []

    def queue_status(self):
        return dict(self.statuses)

    def set_queue_status(self, queue, status, reason, actor):
        self.set_calls.append((queue, status, reason, actor))
        self.statuses[queue] = status


def backend(url: str, sleep=None, **settings) -> PandaBackend:
    settings = {"auth": "none", "timeout": "5s", "retries": 3, **settings}
    return PandaBackend(PandaConfig(url=url, **settings), Store(), sleep=sleep if sleep is not None else Sleeps())


FILES = (InputFile("DAOD.001.root", "guid-1", "mc23_13p6TeV", "mc23.601189.Zmumu.DAOD_PHYS", 3 * 2**20, 2000, "0a1b2c3d"),
         InputFile("DAOD.002.root", "guid-2", "mc23_13p6TeV", "mc23.601189.Zmumu.DAOD_PHYS", 2 * 2**20, 2000, ""))


def request(name: str = "hc.7.ANALY_X.0123456789ab", queue: str = "ANALY_X") -> JobRequest:
    return JobRequest(job_name=name, queue=queue, payload="zmumu", dataset="mc23.601189.Zmumu.DAOD_PHYS",
                      files=FILES, max_events=4000, max_wall_seconds=1800)


# -- submit ------------------------------------------------------------------------------------------

def test_a_submission_is_one_bulk_call_with_the_jobs_prun_would_build(fake):
    panda = backend(fake.url)
    ids = panda.submit([request("hc.7.ANALY_X.aaa"), request("hc.7.ANALY_Y.bbb", queue="ANALY_Y")])
    (call,) = fake.requests
    assert (call.method, call.endpoint) == ("POST", "job/submit")
    assert ids == list(fake.jobs) and len(set(ids)) == 2  # the server's IDs, in order
    first, second = fake.submitted()
    job = first.fields
    assert job["jobDefinitionID"] == job_definition_id("hc.7.ANALY_X.aaa") > 0
    assert second.fields["jobDefinitionID"] == job_definition_id("hc.7.ANALY_Y.bbb")
    assert (job["jobName"], job["prodSourceLabel"], job["processingType"], job["computingSite"]) == (
        "hc.7.ANALY_X.aaa", "user", "gangarobot", "ANALY_X")
    assert second.fields["computingSite"] == "ANALY_Y"
    assert job["transformation"] == TRANSFORMATION
    assert (job["destinationDBlock"], job["cmtConfig"], job["VO"]) == (
        "user.healthrobot.hc.7.ANALY_X.aaa", "x86_64-el9-gcc13-opt", "atlas")
    assert (job["maxCpuCount"], job["maxWalltime"], job["coreCount"]) == (1800, 1800, 1)
    assert job["minRamCount"] == 2000 and job["maxDiskCount"] == 5 + 1 + 2000  # inputs (MB) + work space
    assert job["creationHost"] is not None  # panda-client's own touch
    params = parse_job_parameters(job["jobParameters"])
    assert (params.payload, params.max_events, params.input_lfns) == ("zmumu", 4000, ("DAOD.001.root", "DAOD.002.root"))
    assert params.input_dataset == "mc23_13p6TeV:mc23.601189.Zmumu.DAOD_PHYS"
    assert params.outputs == {"histograms.root": "hc.7.ANALY_X.aaa.histograms.root"}
    inputs = [f for f in first.files if f["type"] == "input"]
    assert [(f["lfn"], f["GUID"], f["scope"], f["dataset"], f["prodDBlock"], f["fsize"], f["checksum"])
            for f in inputs] == [
        ("DAOD.001.root", "guid-1", "mc23_13p6TeV", "mc23.601189.Zmumu.DAOD_PHYS", "mc23.601189.Zmumu.DAOD_PHYS",
         3 * 2**20, "ad:0a1b2c3d"),
        ("DAOD.002.root", "guid-2", "mc23_13p6TeV", "mc23.601189.Zmumu.DAOD_PHYS", "mc23.601189.Zmumu.DAOD_PHYS",
         2 * 2**20, None)]
    (output,) = [f for f in first.files if f["type"] == "output"]
    (logfile,) = [f for f in first.files if f["type"] == "log"]
    assert output["lfn"] == "hc.7.ANALY_X.aaa.histograms.root"
    assert (logfile["lfn"], logfile["dataset"], logfile["destinationDBlock"]) == (
        "hc.7.ANALY_X.aaa.log.tgz", "user.healthrobot.hc.7.ANALY_X.aaa", "user.healthrobot.hc.7.ANALY_X.aaa")
    assert logfile["GUID"] and output["GUID"] and logfile["GUID"] != output["GUID"]


def test_nickname_and_platform_come_from_the_settings(fake):
    backend(fake.url, nickname="gangarbt", cmt_config="x86_64-el9-gcc14-opt").submit([request("hc.1.A.x")])
    (job,) = fake.submitted()
    assert (job.fields["destinationDBlock"], job.fields["cmtConfig"]) == ("user.gangarbt.hc.1.A.x", "x86_64-el9-gcc14-opt")


def test_a_large_submission_goes_in_batches(fake):
    ids = backend(fake.url).submit([request(f"hc.1.ANALY_X.{i}") for i in range(MAX_BATCH + 3)])
    assert [len(decode_jobs(c.body["jobs"])) for c in fake.calls("job/submit")] == [MAX_BATCH, 3]
    assert len(ids) == MAX_BATCH + 3 == len(fake.jobs) and ids == list(fake.jobs)


@pytest.mark.parametrize("mode", ["http500", "delay", "drop", "malformed", "success_false", "empty", "null_data",
                                  "garbage"])
def test_a_submission_that_may_have_reached_the_server_is_not_retried(fake, mode):
    sleeps = Sleeps()
    fake.always("job/submit", mode)
    panda = backend(fake.url, sleeps, timeout="0.3s")
    with pytest.raises(BackendUnavailable, match="not retried"):
        panda.submit([request()])
    assert len(fake.calls("job/submit")) == 1 and sleeps == []


def test_jobs_stored_before_an_error_are_not_submitted_twice(fake):
    fake.script("job/submit", "store_then_500")
    with pytest.raises(BackendUnavailable, match="HTTP 500"):
        backend(fake.url).submit([request("hc.1.A.a"), request("hc.1.A.b")])
    assert len(fake.jobs) == 2 and len(fake.calls("job/submit")) == 1


def test_a_submission_is_retried_while_no_connection_can_be_made():
    with socket.socket() as s:  # a port where nothing listens, until the second back-off
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/server/panda"
    servers = []

    def sleep(seconds):
        sleeps.append(seconds)
        if len(sleeps) == 2:
            servers.append(FakePanda(port))

    sleeps: list[float] = []
    try:
        ids = backend(url, sleep).submit([request("hc.1.A.a"), request("hc.1.A.b")])
        (server,) = servers
        assert sleeps == [1.0, 2.0] and ids == list(server.jobs) and len(server.calls("job/submit")) == 1
    finally:
        for server in servers:
            server.stop()


def test_a_server_that_never_answers_the_port_gives_up_after_the_retries():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sleeps = Sleeps()
    with pytest.raises(BackendUnavailable, match="ConnectError after 4 attempt"):
        backend(f"http://127.0.0.1:{port}/server/panda", sleeps).submit([request()])
    assert sleeps == [1.0, 2.0, 4.0]


def test_null_ids_raise_and_the_jobs_that_were_created_are_killed(fake):
    fake.script("job/submit", "null_ids")
    with pytest.raises(BackendUnavailable, match="2 of 2 job"):
        backend(fake.url).submit([request("hc.1.A.a"), request("hc.1.A.b")])
    assert fake.jobs == {} and fake.calls("job/kill") == []
    fake.script("job/submit", "partial_null")
    with pytest.raises(BackendUnavailable, match="1 of 2 job"):
        backend(fake.url).submit([request("hc.1.A.a"), request("hc.1.A.b")])
    (created,) = fake.jobs
    assert fake.calls("job/kill")[0].body == {"job_ids": [created]}
    assert fake.jobs[created].fields["jobStatus"] == "cancelled"
    assert len(fake.calls("job/submit")) == 2  # neither retried


# -- status ------------------------------------------------------------------------------------------

def test_finished_and_failed_jobs_are_mapped_with_null_fields(fake):
    t = datetime(2026, 11, 1, 12, 0)
    done = fake.add_job(computingSite="ANALY_X", jobStatus="finished", creationTime=t,
                        startTime=t + timedelta(minutes=5), endTime=t + timedelta(minutes=15), transExitCode=0,
                        nEvents=4000, cpuConsumptionTime=420, maxRSS=812345, actualCoreCount=1, coreCount=1,
                        attemptNr=1, pilotTiming="3|12|500|8|20", pilotErrorCode=0, exeErrorCode=0)
    failed = fake.add_job(computingSite="ANALY_X", jobStatus="failed", creationTime=t,
                          startTime=t + timedelta(minutes=2), endTime=t + timedelta(minutes=3),
                          pilotErrorCode=1099, pilotErrorDiag="Get error: Copy command returned error code 256",
                          ddmErrorCode=0, jobDispatcherErrorCode=None, supErrorCode=None, attemptNr=2,
                          pilotTiming="2|44||", maxRSS=None, coreCount=None)
    reports = backend(fake.url).status([done, failed])
    ok, bad = reports[done], reports[failed]
    utc = UTC
    assert (ok.panda_id, ok.job_status, ok.queue) == (done, JobStatus.FINISHED, "ANALY_X")
    assert (ok.creation_time, ok.start_time, ok.end_time) == (
        datetime(2026, 11, 1, 12, 0, tzinfo=utc), datetime(2026, 11, 1, 12, 5, tzinfo=utc),
        datetime(2026, 11, 1, 12, 15, tzinfo=utc))
    assert (ok.trans_exit_code, ok.n_events, ok.cpu_consumption_time, ok.max_rss_kb, ok.core_count, ok.attempt_nr) == (
        0, 4000, 420.0, 812345, 1, 1)
    assert ok.pilot_timing == {"getjob": 3.0, "stagein": 12.0, "payload": 500.0, "stageout": 8.0, "setup": 20.0}
    assert (bad.job_status, bad.pilot_error_code, bad.pilot_error_diag) == (
        JobStatus.FAILED, 1099, "Get error: Copy command returned error code 256")
    # "NULL" everywhere the server had nothing: None, 0 or ""
    assert (bad.trans_exit_code, bad.exe_error_code, bad.exe_error_diag, bad.job_dispatcher_error_code,
            bad.sup_error_code, bad.n_events, bad.max_rss_kb, bad.cpu_consumption_time, bad.core_count) == (
        None, 0, "", 0, 0, 0, 0, 0.0, 1)
    assert bad.attempt_nr == 2 and bad.pilot_timing == {"getjob": 2.0, "stagein": 44.0}
    assert [c.endpoint for c in fake.requests] == ["job/get_description"]  # all known: no archive call
    assert fake.requests[0].body == {"job_ids": [done, failed]}


def test_states_outside_the_robots_vocabulary_are_mapped(fake):
    moving = fake.add_job(jobStatus="transferring")
    closed = fake.add_job(jobStatus="closed")
    throttled = fake.add_job(jobStatus="throttled")
    reports = backend(fake.url).status([moving, closed, throttled])
    assert [reports[p].job_status for p in (moving, closed, throttled)] == [
        JobStatus.HOLDING, JobStatus.CANCELLED, JobStatus.ACTIVATED]


def test_pre_dispatch_states_are_kept_apart_for_blame(fake):
    ids = [fake.add_job(jobStatus=state) for state in ("defined", "assigned", "pending", "waiting", "activated")]
    reports = backend(fake.url).status(ids)
    assert [reports[p].job_status.value for p in ids] == ["defined", "assigned", "pending", "waiting", "activated"]


def test_the_servers_own_unknown_is_could_not_tell_not_a_malformed_reply(fake):
    """With its database down panda-server answers success with jobStatus "unknown": not asked again at
    once (each such answer takes the server about 30 s), raised as BackendUnavailable for the step."""
    fine, lost_db = fake.add_job(jobStatus="running"), fake.add_job(jobStatus="unknown")
    with pytest.raises(BackendUnavailable, match="could not tell") as caught:
        backend(fake.url).status([fine, lost_db])
    assert "malformed" not in str(caught.value)
    assert len(fake.calls("job/get_description")) == 1


def test_unknown_ids_are_none_and_archived_jobs_are_read_from_the_archive(fake):
    live = fake.add_job(jobStatus="running")
    old = fake.add_job(jobStatus="finished", nEvents=10)
    fake.archive(old)
    reports = backend(fake.url).status([live, old, 12345])
    assert reports[live].job_status is JobStatus.RUNNING
    assert reports[old].job_status is JobStatus.FINISHED and reports[old].n_events == 10
    assert reports[12345] is None
    assert [(c.endpoint, c.body["job_ids"]) for c in fake.requests] == [
        ("job/get_description", [live, old, 12345]), ("job/get_description_incl_archive", [old, 12345])]


def test_status_is_asked_in_bounded_batches(fake):
    ids = [fake.add_job(jobStatus="running") for _ in range(MAX_BATCH + 2)]
    reports = backend(fake.url).status(ids)
    assert all(reports[p].job_status is JobStatus.RUNNING for p in ids)
    assert [len(c.body["job_ids"]) for c in fake.calls("job/get_description")] == [MAX_BATCH, 2]


STATUS_MISBEHAVIOURS = ["http500", "delay", "drop", "malformed", "success_false", "empty", "null_data", "garbage",
                        "bad_state", "no_state", "wrong_id", "bad_number"]


@pytest.mark.parametrize("mode", STATUS_MISBEHAVIOURS)
def test_a_misbehaving_status_reply_is_backend_unavailable_after_bounded_retries(fake, mode):
    pid = fake.add_job(jobStatus="failed", pilotErrorCode=1099)
    sleeps = Sleeps()
    fake.always("job/get_description", mode)
    with pytest.raises(BackendUnavailable, match="getJobStatus.*after 3 attempt"):
        backend(fake.url, sleeps, retries=2, timeout="0.3s").status([pid])
    assert len(fake.calls("job/get_description")) == 3 and sleeps == [1.0, 2.0]


@pytest.mark.parametrize("mode", ["http500", "malformed", "empty", "garbage", "no_state"])
def test_a_misbehaving_archive_reply_is_backend_unavailable_too(fake, mode):
    pid = fake.add_job(jobStatus="finished")
    fake.archive(pid)
    fake.always("job/get_description_incl_archive", mode)
    with pytest.raises(BackendUnavailable, match="getFullJobStatus"):
        backend(fake.url, retries=1).status([pid])
    assert len(fake.calls("job/get_description_incl_archive")) == 2


def test_a_reply_held_past_the_timeout_ends_as_a_timeout(fake):
    """panda-client's own timeout is 600 s; the fake holds the reply for 10 s: only ours can end it."""
    fake.always("job/get_description", "delay")
    with pytest.raises(BackendUnavailable, match="ReadTimeout after 1 attempt"):
        backend(fake.url, retries=0, timeout="0.2s").status([1])


def test_a_transient_failure_is_retried_with_exponential_back_off(fake):
    pid = fake.add_job(jobStatus="running")
    fake.script("job/get_description", "http500", "malformed", "delay")
    sleeps = Sleeps()
    reports = backend(fake.url, sleeps, retries=3, timeout="0.3s").status([pid])
    assert reports[pid].job_status is JobStatus.RUNNING
    assert sleeps == [1.0, 2.0, 4.0] and len(fake.calls("job/get_description")) == 4


def test_back_off_is_capped(fake):
    fake.always("job/get_description", "http500")
    sleeps = Sleeps()
    with pytest.raises(BackendUnavailable):
        backend(fake.url, sleeps, retries=7).status([1])
    assert sleeps == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]


def test_no_retries_means_one_request(fake):
    fake.always("job/get_description", "http500")
    with pytest.raises(BackendUnavailable, match="after 1 attempt"):
        backend(fake.url, retries=0).status([1])
    assert len(fake.requests) == 1


# -- kill, hello, queue status ----------------------------------------------------------------------

def test_kill_cancels_and_reports_per_job(fake):
    pid = fake.add_job(jobStatus="activated")
    panda = backend(fake.url)
    assert panda.kill([pid, 999]) == {pid: True, 999: False}
    assert fake.calls("job/kill")[0].body == {"job_ids": [pid, 999]}
    report = panda.status([pid])[pid]
    assert (report.job_status, report.task_buffer_error_code) == (JobStatus.CANCELLED, 100)


@pytest.mark.parametrize("mode", ["http500", "malformed", "success_false", "empty", "garbage"])
def test_a_misbehaving_kill_is_backend_unavailable(fake, mode):
    pid = fake.add_job(jobStatus="activated")
    fake.always("job/kill", mode)
    with pytest.raises(BackendUnavailable, match="killJobs"):
        backend(fake.url, retries=1).kill([pid])
    assert len(fake.calls("job/kill")) == 2


def test_ping_uses_hello(fake):
    panda = backend(fake.url, retries=0)
    panda.ping()
    assert fake.requests[-1].method == "GET" and fake.requests[-1].endpoint == "system/is_alive"
    fake.always("system/is_alive", "success_false")
    with pytest.raises(BackendUnavailable, match="hello"):
        panda.ping()


def test_queue_status_is_read_and_set_in_the_status_store(fake):
    panda = backend(fake.url)
    panda.set_queue_status("ANALY_X", QueueStatus.BROKEROFF, "site failures", "healthrobot")
    assert panda.queue_status() == {"ANALY_X": QueueStatus.BROKEROFF}
    assert panda.status_store.set_calls == [("ANALY_X", QueueStatus.BROKEROFF, "site failures", "healthrobot")]
    assert fake.requests == []  # PanDA cannot set a queue's status


# -- the import-time URL and the environment ------------------------------------------------------

def test_two_backends_on_two_servers_in_one_process():
    one, two = FakePanda(), FakePanda()
    try:
        a, b = backend(one.url), backend(two.url)
        pa = a.submit([request("hc.1.A.a")])
        pb = b.submit([request("hc.1.B.b")])
        a.status(pa)
        b.kill(pb)
        assert [c.endpoint for c in one.requests] == ["job/submit", "job/get_description"]
        assert [c.endpoint for c in two.requests] == ["job/submit", "job/kill"]
        assert one.submitted()[0].fields["jobName"] == "hc.1.A.a" and two.submitted()[0].fields["jobName"] == "hc.1.B.b"
    finally:
        one.stop()
        two.stop()


def test_x509_settings_reach_panda_client_only_during_a_call(fake, tmp_path, monkeypatch):
    monkeypatch.delenv("X509_USER_PROXY", raising=False)
    monkeypatch.setenv("PANDA_AUTH", "oidc")  # someone else's setting: not used for an x509 backend
    proxy = tmp_path / "x509up"
    proxy.write_text("-----BEGIN CERTIFICATE----- not a real proxy")
    panda = backend(fake.url, auth="x509", proxy_file=str(proxy), ca_dir=str(tmp_path))
    panda.status([1])
    env = fake.requests[0].env
    assert (env["X509_USER_PROXY"], env["X509_CERT_DIR"], env["PANDA_AUTH"], env["PANDA_BEHIND_REAL_LB"]) == (
        str(proxy), str(tmp_path), None, "1")
    assert "Authorization" not in fake.requests[0].headers
    assert "X509_USER_PROXY" not in os.environ and os.environ["PANDA_AUTH"] == "oidc"  # restored


def test_the_oidc_token_is_sent_and_never_logged(fake, tmp_path, caplog, capsys):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    fake.auth_token = TOKEN
    panda = backend(fake.url, auth="oidc", vo="atlas", token_file=str(token_file), retries=1)
    caplog.set_level("DEBUG")
    ids = panda.submit([request()])
    assert panda.status(ids)[ids[0]].job_status is JobStatus.DEFINED
    call = fake.requests[0]
    assert (call.headers["Authorization"], call.headers["Origin"]) == (f"Bearer {TOKEN}", "atlas")
    assert (call.env["PANDA_AUTH"], call.env["PANDA_AUTH_VO"]) == ("oidc", "atlas")
    errors = []
    for mode in ("http500", "malformed", "success_false", "garbage"):
        fake.always("*", mode)
        for action in (lambda: panda.status(ids), lambda: panda.kill(ids), lambda: panda.submit([request()])):
            with pytest.raises(BackendUnavailable) as excinfo:
                action()
            errors.append(str(excinfo.value))
    fake.always("*", None)
    fake.auth_token = "another token"  # the server refuses ours: 403
    with pytest.raises(BackendUnavailable) as excinfo:
        panda.status(ids)
    errors.append(str(excinfo.value))
    out, err = capsys.readouterr()
    assert "panda-client printed" in caplog.text  # what panda-client printed was captured, and logged
    for text in [caplog.text, out, err, *errors]:
        assert TOKEN not in text and "SECRET-ID-TOKEN" not in text
    assert "PANDA_AUTH_ID_TOKEN" not in os.environ  # only set for the duration of a call


def test_a_renewed_token_file_is_used_at_the_next_call(fake, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("first")
    panda = backend(fake.url, auth="oidc", token_file=str(token_file))
    panda.status([1])
    token_file.write_text("second")
    panda.status([1])
    assert [c.headers["Authorization"] for c in fake.calls("job/get_description")] == ["Bearer first", "Bearer second"]


def test_oidc_without_a_token_is_refused_and_never_starts_a_device_flow(fake, tmp_path, monkeypatch):
    for name in ("PANDA_AUTH_ID_TOKEN", "OIDC_AUTH_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match="token_file"):
        backend(fake.url, auth="oidc")
    empty = tmp_path / "token"
    empty.write_text("\n")
    with pytest.raises(BackendUnavailable, match="no OIDC token") as excinfo:
        backend(fake.url, auth="oidc", token_file=str(empty)).status([1])
    missing = backend(fake.url, auth="oidc", token_file=str(tmp_path / "gone"))
    with pytest.raises(BackendUnavailable, match="cannot be read"):
        missing.status([1])
    assert fake.requests == [] and "Bearer" not in str(excinfo.value)


def test_auth_none_is_for_plain_http_only():
    with pytest.raises(ValueError, match="plain http"):
        PandaBackend(PandaConfig(url="https://pandaserver.example.org/server/panda", auth="none"), Store())


# -- at loop level: a misbehaving PanDA never excludes a queue -------------------------------------

QUEUES = {f"ANALY_{c}{i}": (f"SITE-{c}{i}", c) for c in "ABCD" for i in range(1, 4)}  # 12 queues, 4 clouds


def panda_robot(tmp_path, fake, grid, **loop) -> Robot:
    config = RobotConfig.model_validate({
        "data_dir": str(tmp_path), "templates": templates({"name": "AFT_A"}, {"name": "AFT_B"}), "loop": loop,
        "blacklist": {"mode": "enforce"},
    })
    engine = make_engine(config.database_url)
    upgrade(engine)
    panda = PandaBackend(PandaConfig(url=fake.url, auth="none", timeout="0.3s", retries=1), grid, sleep=Sleeps())
    return Robot(config, make_sessionmaker(engine), panda, grid, grid, load_table(),
                 evaluators=[ExclusionEngine(Policy(config.blacklist, ("AFT_A", "AFT_B")), panda)])


def fail_queue(fake, queue, code=1099):
    for pid in fake.in_queue(queue):
        fake.update(pid, jobStatus="failed", pilotErrorCode=code, pilotErrorDiag="Get error: copy failed",
                    startTime=datetime(2026, 11, 1, 12, 1), endTime=datetime(2026, 11, 1, 12, 2))


def transitions(robot):
    with robot.sessions() as session:
        return [(t.queue.name, t.old, t.new) for t in
                session.scalars(select(QueueTransition).where(QueueTransition.kind == "status"))]


def outcomes(robot):
    with robot.sessions() as session:
        return dict(session.execute(select(Job.outcome, func.count()).group_by(Job.outcome)).all())


def test_the_loop_excludes_a_broken_queue_through_panda(tmp_path, clock, fake):
    """The control for the test below: the same set-up does see and act on real site failures."""
    grid = ScriptedGrid(clock, QUEUES)
    robot = panda_robot(tmp_path, fake, grid)
    assert robot.run_once(clock.now()).submitted == 24
    for _ in range(4):
        fail_queue(fake, "ANALY_A1")
        clock.advance(timedelta(minutes=10))
        robot.run_once(clock.now())
    assert ("ANALY_A1", "online", "brokeroff") in transitions(robot)
    assert grid.statuses["ANALY_A1"] is QueueStatus.BROKEROFF  # set in the status store, not at PanDA
    # the failures PanDA reported are counted (an excluded queue that still fails is then tested slowly,
    # so how many more follow in these 40 minutes is the policy's cadence, not this test's point)
    assert outcomes(robot)["failed"] >= 2


@pytest.mark.parametrize("modes", [["http500"], ["malformed", "empty", "garbage"], ["delay", "drop"],
                                   ["bad_state", "no_state", "wrong_id", "bad_number", "success_false", "null_data"]],
                         ids=["5xx", "malformed-empty-garbage", "timeout-drop", "nonsense-jobs"])
def test_a_misbehaving_panda_leaves_the_robot_running_and_excludes_nothing(tmp_path, clock, fake, modes):
    grid = ScriptedGrid(clock, QUEUES)
    robot = panda_robot(tmp_path, fake, grid)
    assert robot.run_once(clock.now()).submitted == 24
    steps = 4
    for k in range(steps):
        fail_queue(fake, "ANALY_A1")  # the truth is bad, but PanDA cannot tell the robot
        mode = modes[k % len(modes)]
        for endpoint in ("job/get_description", "job/get_description_incl_archive", "job/kill", "job/submit"):
            fake.always(endpoint, mode)
        clock.advance(timedelta(minutes=10))
        summary = robot.run_once(clock.now())
        assert summary.polled == 0 and summary.finished == 0
        assert any(e.startswith("status: PanDA getJobStatus") for e in summary.backend_errors)
    assert transitions(robot) == [] and grid.statuses == {}
    assert outcomes(robot) == {None: 24}  # all still in flight: nothing failed, nothing counted
    with robot.sessions() as session:
        events = session.scalars(select(Event).where(Event.kind == "backend_unreachable")).all()
    assert len(events) == steps and all(e.subject == "panda" for e in events)
    # PanDA answers again: the robot picks up where it was, with the real results
    for endpoint in ("job/get_description", "job/get_description_incl_archive", "job/kill", "job/submit"):
        fake.always(endpoint, None)
    clock.advance(timedelta(minutes=10))
    assert robot.run_once(clock.now()).polled == 24
    assert outcomes(robot).get("failed") == 2


def test_jobs_panda_forgot_end_unknown_never_failed(tmp_path, clock, fake):
    grid = ScriptedGrid(clock, QUEUES)
    robot = panda_robot(tmp_path, fake, grid, unknown_after="30m")
    robot.run_once(clock.now())
    fake.jobs.clear()  # neither the live tables nor the archive know them any more
    for _ in range(4):
        clock.advance(timedelta(minutes=10))
        robot.run_once(clock.now())
    counts = outcomes(robot)
    assert counts.get("unknown") == 24 and "failed" not in counts
    assert transitions(robot) == []


def test_find_never_asks_the_server_which_cannot_find_a_job_by_name(fake):
    """panda-server 1.0.4 has no getPandIDsWithJobID (403): without PanDA's monitor nothing can be looked up,
    and the backend says what to set instead of asking the server."""
    with pytest.raises(BackendUnavailable, match="monitor_url is not set"):
        backend(fake.url).find(["hc.7.ANALY_X.a"])
    assert fake.calls("job/get_panda_ids_with_job_id") == []


MONITOR = "https://bigpanda.example.org"


@responses.activate
def test_find_looks_names_up_in_the_monitors_job_list_exactly():
    """BigPanDA matches jobname without case (UPPER LIKE) and answers its records in lower case: the
    backend asks for many names per request (`a|b|...`) and takes only exact matches."""
    names = [f"hc.7.ANALY_X.{i:03d}x" for i in range(60)]
    listed = {names[3]: 9003, names[55]: 9055}

    def answer(request):
        asked = parse_qs(urlparse(request.url).query)["jobname"][0].split("|")
        jobs = [{"pandaid": pid, "jobname": name, "jobstatus": "running"} for name, pid in listed.items()
                if name in asked]
        if names[0] in asked:  # another job, whose name differs only by case
            jobs.append({"pandaid": 9999, "jobname": names[0].upper(), "jobstatus": "failed"})
        return 200, {}, json.dumps({"selectionsummary": [], "jobs": jobs})

    responses.add_callback(responses.GET, f"{MONITOR}/jobs/", callback=answer)
    found = backend("http://127.0.0.1:9/server/panda", monitor_url=MONITOR).find(names)
    assert found == {name: listed.get(name) for name in names}
    assert len(responses.calls) == 2  # 50 names per request
    assert all("json" in parse_qs(urlparse(c.request.url).query, keep_blank_values=True) for c in responses.calls)


@responses.activate
def test_find_is_asked_once_and_never_waits_out_retries():
    """A monitor that fails (5xx, a page that is not its job list) ends the look-up at once, not retried (the
    next step asks again), so reconciling never holds a step longer than one timeout."""
    responses.get(f"{MONITOR}/jobs/", status=503)
    sleeps = Sleeps()
    with pytest.raises(BackendUnavailable, match="PanDA monitor job look-up: HTTP 503 after 1 attempt"):
        backend("http://127.0.0.1:9/server/panda", sleeps, monitor_url=MONITOR, retries=3).find(["hc.7.ANALY_X.a"])
    assert len(responses.calls) == 1 and not sleeps
    responses.replace(responses.GET, f"{MONITOR}/jobs/", body="<html>maintenance</html>")
    with pytest.raises(BackendUnavailable, match="malformed answer: not JSON"):
        backend("http://127.0.0.1:9/server/panda", monitor_url=MONITOR).find(["hc.7.ANALY_X.a"])
