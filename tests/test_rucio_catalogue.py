"""RucioCatalogue against Rucio's wire format (mocked with `responses`), and the loop during a Rucio outage.

The answers are shaped like a real Rucio 41 server's (docs: /work/shared/domain/rucio.md): NDJSON
(`application/x-json-stream`) rows, the token in `X-Rucio-Auth-Token`, errors as `ExceptionClass`
/ `ExceptionMessage` headers (and a JSON body), an unknown RSE as a 500 with `RSENotFound`.
"""
from __future__ import annotations

import json
import logging
import re
from datetime import timedelta

import pytest
import requests
import responses
from sqlalchemy import func, select

from blacklist.engine import ExclusionEngine
from blacklist.policies import Policy
from robot.backends.base import BackendUnavailable
from robot.clock import ManualClock
from robot.config import DatasetsConfig, RobotConfig, RucioConfig
from robot.rucio_catalogue import RucioCatalogue
from robot.storage.models import Event, Job, QueueTransition
from tests.fakes import ScriptedGrid, make_robot, templates

HOST = "https://rucio.example.org"
AUTH = f"{HOST}/auth/userpass"
RSE = "SITE-A_DATADISK"
LISTING = f"{HOST}/replicas/rse/{RSE}"
PASSWORD = "s3cret-Pa55word-not-for-logs"
ZMUMU = "mc23_13p6TeV.601189.PhPy8EG_Zmumu.deriv.DAOD_PHYS.e8514_s4162_r14622_p6026"
TTBAR = "mc23_13p6TeV.601229.PhPy8EG_A14_ttbar.deriv.DAOD_PHYS.e8514_s4162_r14622_p6026"
DATA = "data23_13p6TeV.00456749.physics_Main.deriv.DAOD_PHYS.r15243_p6026"
NDJSON = "application/x-json-stream"


def dataset_row(name, length=2, available=None, state="AVAILABLE", scope="hc_test", rse=RSE):
    available = length if available is None else available
    return {"scope": scope, "name": name, "rse_id": "347c2c17588e4a969b8feff96ec46057", "rse": rse,
            "bytes": 1000 * length, "length": length, "available_bytes": 1000 * available,
            "available_length": available, "state": state, "created_at": "Sun, 22 Nov 2026 02:50:09 UTC",
            "updated_at": "Sun, 22 Nov 2026 02:50:19 UTC", "accessed_at": None}


def file_rows(dataset, n=2, scope="hc_test"):
    # Rucio gives GUIDs as 32 upper-case hex digits and lists files in its own order
    return [{"scope": scope, "name": f"DAOD_PHYS.{abs(hash(dataset)) % 10**8:08d}._{i:06d}.pool.root.1",
             "bytes": 1000 + i, "adler32": f"0a0b0c{i:02x}", "guid": f"05344C9867FF50B7B48E3B35F4C631{i:02d}",
             "events": 10_000} for i in range(n, 0, -1)]


def ndjson(rows):
    return "".join(json.dumps(row) + "\n" for row in rows)


def files_url(name, scope="hc_test"):
    return f"{HOST}/dids/{scope}/{name}/files"


def rucio_error(status, exception_class, message="it went wrong"):
    return {"status": status, "headers": {"ExceptionClass": exception_class, "ExceptionMessage": message},
            "body": json.dumps({"ExceptionClass": exception_class, "ExceptionMessage": message}),
            "content_type": "application/octet-stream"}


def calls(rsps, url):
    return sum(1 for call in rsps.calls if call.request.url.split("?")[0] == url)


@pytest.fixture
def rsps():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.get(AUTH, status=200, headers={"X-Rucio-Auth-Token": "healthrobot-robot-unknown-0123456789abcdef",
                                            "X-Rucio-Auth-Token-Expires": "Sun, 22 Nov 2026 08:03:57 UTC"})
        yield mock


@pytest.fixture
def sleeps():
    return []


@pytest.fixture
def settings(tmp_path):
    password_file = tmp_path / "rucio.password"
    password_file.write_text(PASSWORD + "\n")
    return RucioConfig(host=HOST, account="healthrobot", auth_type="userpass", username="robot",
                       password_file=str(password_file), retries=2, cache_ttl=timedelta(minutes=10),
                       timeout=timedelta(seconds=5))


@pytest.fixture
def catalogue(settings, tmp_path, clock, sleeps):
    return RucioCatalogue.from_settings(settings, tmp_path / "data", clock, sleep=sleeps.append)


def serve(rsps, datasets, files=None):
    rsps.get(LISTING, body=ndjson(datasets), content_type=NDJSON)
    for row in datasets:
        rows = (files or {}).get(row["name"], file_rows(row["name"], row["length"]))
        rsps.get(files_url(row["name"], row["scope"]), body=ndjson(rows), content_type=NDJSON)


# -- what is complete -------------------------------------------------------------------------------
def test_only_datasets_complete_at_the_endpoint_and_matching_the_glob(rsps, catalogue):
    serve(rsps, [
        dataset_row(ZMUMU),                                  # complete
        dataset_row(TTBAR, length=4, available=2, state="UNAVAILABLE"),  # a file replica missing
        dataset_row(ZMUMU + "_v2", length=3, available=3, state="UNAVAILABLE"),  # counters say full, state not
        dataset_row(ZMUMU + "_v3", length=3, available=2, state="AVAILABLE"),    # state says so, counters not
        dataset_row(ZMUMU + "_empty", length=0, available=0),  # nothing in it
        dataset_row(DATA),                                   # complete, but not what the template reads
    ])
    (found,) = catalogue.complete_datasets(RSE, "mc23_*")
    assert (found.scope, found.name, found.events) == ("hc_test", ZMUMU, 20_000)
    assert [f.lfn for f in found.files] == sorted(f.lfn for f in found.files)  # by name, not Rucio's order
    first = found.files[0]
    assert first.guid == "05344C98-67FF-50B7-B48E-3B35F4C63101"  # dashed, as PanDA and the manifests write it
    assert (first.scope, first.dataset, first.bytes, first.adler32, first.events) == \
        ("hc_test", ZMUMU, 1001, "0a0b0c01", 10_000)
    assert calls(rsps, files_url(TTBAR)) == calls(rsps, files_url(DATA)) == 0  # only complete matches are read
    listing = next(c for c in rsps.calls if c.request.url == LISTING)
    assert listing.request.headers["X-Rucio-Auth-Token"] == "healthrobot-robot-unknown-0123456789abcdef"
    login = next(c for c in rsps.calls if c.request.url.startswith(AUTH))
    assert (login.request.headers["X-Rucio-Username"], login.request.headers["X-Rucio-Account"]) == \
        ("robot", "healthrobot")


def test_the_glob_is_on_the_name_or_with_a_colon_on_scope_and_name(rsps, catalogue):
    serve(rsps, [dataset_row(ZMUMU), dataset_row(DATA, scope="data23_13p6TeV")])
    assert [d.name for d in catalogue.complete_datasets(RSE, "*DAOD_PHYS*")] == [DATA, ZMUMU]
    assert [d.name for d in catalogue.complete_datasets(RSE, "hc_test:*")] == [ZMUMU]
    assert [d.name for d in catalogue.complete_datasets(RSE, "data23_13p6TeV:data23_*")] == [DATA]
    assert catalogue.complete_datasets(RSE, "hc_test") == []  # a bare scope is a name, matching nothing


def test_an_unknown_endpoint_has_no_data_and_is_not_retried(rsps, catalogue, sleeps):
    rsps.get(f"{HOST}/replicas/rse/NO_SUCH_DATADISK",
             **rucio_error(500, "RSENotFound", "RSE 'NO_SUCH_DATADISK' cannot be found in vo 'def'"))
    assert catalogue.complete_datasets("NO_SUCH_DATADISK", "*") == []
    assert calls(rsps, f"{HOST}/replicas/rse/NO_SUCH_DATADISK") == 1 and sleeps == []


def test_an_endpoint_without_datasets_is_an_answer_not_an_outage(rsps, catalogue):
    rsps.get(LISTING, body="", content_type=NDJSON)
    assert catalogue.complete_datasets(RSE, "*") == []


# -- caching ----------------------------------------------------------------------------------------
def test_answers_are_cached_until_cache_ttl_by_the_injected_clock(rsps, catalogue, clock):
    serve(rsps, [dataset_row(ZMUMU)])
    first = catalogue.complete_datasets(RSE, "mc23_*")
    clock.advance(timedelta(minutes=9, seconds=59))
    assert catalogue.complete_datasets(RSE, "mc23_*") == first
    assert calls(rsps, LISTING) == 1
    clock.advance(timedelta(seconds=1))  # ttl over: asked again
    assert catalogue.complete_datasets(RSE, "mc23_*") == first
    assert calls(rsps, LISTING) == 2
    assert calls(rsps, files_url(ZMUMU)) == 1  # a closed dataset's files are not read again
    catalogue.complete_datasets(RSE, "*Zmumu*")  # another pattern: its own answer, same file list
    assert (calls(rsps, LISTING), calls(rsps, files_url(ZMUMU))) == (3, 1)


def test_a_dataset_that_changed_length_has_its_files_read_again(rsps, catalogue, clock):
    serve(rsps, [dataset_row(ZMUMU, length=2)])
    assert len(catalogue.complete_datasets(RSE, "*")[0].files) == 2
    rsps.replace(responses.GET, LISTING, body=ndjson([dataset_row(ZMUMU, length=3)]), content_type=NDJSON)
    rsps.replace(responses.GET, files_url(ZMUMU), body=ndjson(file_rows(ZMUMU, 3)), content_type=NDJSON)
    clock.advance(timedelta(minutes=11))
    assert len(catalogue.complete_datasets(RSE, "*")[0].files) == 3
    assert calls(rsps, files_url(ZMUMU)) == 2


def test_a_failed_read_is_not_cached_and_the_next_call_asks_again(rsps, catalogue, sleeps):
    rsps.get(LISTING, **rucio_error(500, "DatabaseException"))
    with pytest.raises(BackendUnavailable):
        catalogue.complete_datasets(RSE, "*")
    rsps.replace(responses.GET, LISTING, body=ndjson([dataset_row(ZMUMU)]), content_type=NDJSON)
    rsps.get(files_url(ZMUMU), body=ndjson(file_rows(ZMUMU)), content_type=NDJSON)
    assert [d.name for d in catalogue.complete_datasets(RSE, "*")] == [ZMUMU]


# -- retries and misbehaviour -------------------------------------------------------------------------
def test_retries_are_bounded_with_exponential_back_off(rsps, catalogue, sleeps):
    rsps.get(LISTING, **rucio_error(500, "DatabaseException", "(sqlite3.OperationalError) database is locked"))
    with pytest.raises(BackendUnavailable, match=r"DatabaseException.*after 3 attempt\(s\)"):
        catalogue.complete_datasets(RSE, "*")
    assert calls(rsps, LISTING) == 3  # retries=2: one attempt and two retries, rucio-clients adds none
    assert sleeps == [1.0, 2.0]


def test_a_transient_error_is_retried_and_then_answered(rsps, catalogue, sleeps):
    rsps.get(LISTING, **rucio_error(503, "ServiceUnavailable"))
    rsps.get(LISTING, body=ndjson([dataset_row(ZMUMU)]), content_type=NDJSON)
    rsps.get(files_url(ZMUMU), body=ndjson(file_rows(ZMUMU)), content_type=NDJSON)
    assert [d.name for d in catalogue.complete_datasets(RSE, "*")] == [ZMUMU]
    assert sleeps == [1.0]


MISBEHAVIOUR = {
    "timeout": ("listing", {"body": requests.exceptions.ReadTimeout("read timed out")}),
    "connection refused": ("listing", {"body": requests.exceptions.ConnectionError("connection refused")}),
    "500": ("listing", rucio_error(500, "RucioException", "internal error")),
    "502 from a proxy": ("listing", {"status": 502, "body": "<html>Bad Gateway</html>", "content_type": "text/html"}),
    "504": ("listing", {"status": 504, "body": ""}),
    "truncated NDJSON": ("listing", {"body": ndjson([dataset_row(ZMUMU)])[:-40], "content_type": NDJSON}),
    "HTML instead of NDJSON": ("listing", {"body": "<html><body>Login</body></html>", "content_type": "text/html"}),
    "rows that are not objects": ("listing", {"body": "[1, 2]\n", "content_type": NDJSON}),
    "rows without counters": ("listing", {"body": ndjson([{"scope": "hc_test", "name": ZMUMU, "state": "AVAILABLE"}]),
                                          "content_type": NDJSON}),
    "files: empty for a complete dataset": ("files", {"body": "", "content_type": NDJSON}),
    "files: 500": ("files", rucio_error(500, "DatabaseException")),
    "files: bytes as text": ("files", {"body": ndjson([{**r, "bytes": "1000"} for r in file_rows(ZMUMU)]),
                                       "content_type": NDJSON}),
    "files: timeout": ("files", {"body": requests.exceptions.ConnectTimeout("connect timed out")}),
}


@pytest.mark.parametrize("case", list(MISBEHAVIOUR))
def test_a_misbehaving_rucio_makes_the_catalogue_unavailable_after_bounded_retries(rsps, catalogue, sleeps, case):
    which, reply = MISBEHAVIOUR[case]
    if which == "listing":
        rsps.get(LISTING, **reply)
    else:
        rsps.get(LISTING, body=ndjson([dataset_row(ZMUMU)]), content_type=NDJSON)
        rsps.get(files_url(ZMUMU), **reply)
    with pytest.raises(BackendUnavailable) as failure:
        catalogue.complete_datasets(RSE, "*")
    assert calls(rsps, LISTING if which == "listing" else files_url(ZMUMU)) == 3
    assert sleeps == [1.0, 2.0]
    assert RSE in str(failure.value)


# -- authentication and secrets -------------------------------------------------------------------------
def test_an_expired_token_means_a_new_client_and_a_new_login(rsps, catalogue, sleeps):
    rsps.get(LISTING, **rucio_error(401, "CannotAuthenticate", "Cannot authenticate with given credentials"))
    serve(rsps, [dataset_row(ZMUMU)])
    assert [d.name for d in catalogue.complete_datasets(RSE, "*")] == [ZMUMU]
    assert calls(rsps, AUTH) >= 2 and sleeps == [1.0]


def test_the_token_is_cached_under_the_data_dir(rsps, catalogue, tmp_path):
    serve(rsps, [dataset_row(ZMUMU)])
    catalogue.complete_datasets(RSE, "*")
    (token,) = (tmp_path / "data" / "rucio" / "tokens").glob("*/auth_token_for_account_healthrobot")
    assert token.read_text() == "healthrobot-robot-unknown-0123456789abcdef"
    assert token.parent.stat().st_mode & 0o077 == 0


def test_the_password_never_appears_in_logs_errors_or_reprs(rsps, catalogue, caplog, sleeps):
    caplog.set_level(logging.DEBUG)
    refused = rucio_error(401, "CannotAuthenticate", "Cannot authenticate to account healthrobot with given credentials")
    rsps.replace(responses.GET, AUTH, **refused)
    with pytest.raises(BackendUnavailable) as failure:
        catalogue.complete_datasets(RSE, "*")
    assert calls(rsps, AUTH) == 3 and sleeps == [1.0, 2.0]  # a wrong password is retried like the rest, bounded
    assert PASSWORD not in caplog.text and "X-Rucio-Password" not in caplog.text
    assert "HTTP request: GET" in caplog.text  # rucio-clients' debug lines do get through
    assert PASSWORD not in str(failure.value) and PASSWORD not in repr(catalogue)
    assert "CannotAuthenticate" in str(failure.value)
    assert all(PASSWORD not in repr(value) for value in vars(catalogue).values())


def test_an_unreadable_password_file_is_reported_without_retrying(settings, tmp_path, clock, sleeps, rsps):
    catalogue = RucioCatalogue.from_settings(settings.model_copy(update={"password_file": str(tmp_path / "none")}),
                                             tmp_path / "data", clock, sleep=sleeps.append)
    with pytest.raises(BackendUnavailable, match="password file .* cannot be read"):
        catalogue.complete_datasets(RSE, "*")
    assert sleeps == [] and calls(rsps, AUTH) == 0


def test_the_client_reads_no_rucio_config_from_the_environment(rsps, catalogue, tmp_path, monkeypatch):
    from rucio.common import config as rucio_config

    server_config = tmp_path / "server-rucio.cfg"
    server_config.write_text("[database]\ndefault = sqlite:////nonexistent/rucio.db\n"
                             "[client]\nauth_token_file_path = /nonexistent/token\n")
    monkeypatch.setenv("RUCIO_CONFIG", str(server_config))
    rucio_config.clean_cached_config()
    serve(rsps, [dataset_row(ZMUMU)])
    assert [d.name for d in catalogue.complete_datasets(RSE, "*")] == [ZMUMU]
    assert not rucio_config.get_config().has_section("database")
    assert rucio_config.is_client()


def test_settings_need_credentials_for_their_auth_type_and_rucio_settings_for_the_rucio_source():
    with pytest.raises(ValueError, match="username and password_file"):
        RucioConfig(host=HOST, account="a", auth_type="userpass", username="u")
    with pytest.raises(ValueError, match="cert_file"):
        RucioConfig(host=HOST, account="a", auth_type="x509")
    with pytest.raises(ValueError, match="datasets.rucio"):
        DatasetsConfig(source="rucio")
    config = RobotConfig.model_validate({"datasets": {"source": "rucio", "rucio": {
        "host": HOST, "account": "a", "auth_type": "oidc", "timeout": "10s", "cache_ttl": "5m"}}})
    assert config.datasets.rucio.cache_ttl == timedelta(minutes=5) and config.datasets.rucio.auth_host is None
    assert RobotConfig().datasets.source == "embedded"


def test_from_config_resolves_files_against_the_config_folder(tmp_path, clock, rsps):
    (tmp_path / "secret").write_text(PASSWORD)
    config = RobotConfig.model_validate({"data_dir": "data", "base_dir": tmp_path, "datasets": {
        "source": "rucio", "rucio": {"host": HOST, "account": "healthrobot", "auth_type": "userpass",
                                     "username": "robot", "password_file": "secret"}}})
    config = config.model_copy(update={"base_dir": tmp_path})
    serve(rsps, [dataset_row(ZMUMU)])
    catalogue = RucioCatalogue.from_config(config, clock)
    assert [d.name for d in catalogue.complete_datasets(RSE, "*")] == [ZMUMU]
    assert next(tmp_path.glob("data/rucio/tokens/*/auth_token_for_account_healthrobot"))


# -- the loop during a Rucio outage ---------------------------------------------------------------------
QUEUES = {"ANALY_A": ("SITE-A", "DE"), "ANALY_B": ("SITE-B", "DE"), "ANALY_C": ("SITE-C", "US")}
ANY_LISTING = re.compile(rf"{re.escape(HOST)}/replicas/rse/.*")


def test_the_loop_keeps_stepping_through_a_rucio_outage_sends_nothing_and_excludes_nobody(
        tmp_path, clock: ManualClock, settings, sleeps, rsps):
    grid = ScriptedGrid(clock, QUEUES)
    robot = make_robot(tmp_path, grid, templates({"name": "AFT", "input_dataset": "mc23_*"}))
    robot.catalogue = RucioCatalogue.from_settings(settings, tmp_path / "data", clock, sleep=sleeps.append)
    robot.evaluators.append(ExclusionEngine(Policy(robot.config.blacklist, ("AFT",)), grid))
    rsps.get(ANY_LISTING, **rucio_error(500, "DatabaseException", "database is locked"))
    for _ in range(6):  # an hour of Rucio answering 500
        summary = robot.run_once(clock.now())
        assert summary.submitted == 0 and any(e.startswith("catalogue:") for e in summary.backend_errors)
        clock.advance(timedelta(minutes=10))
    assert grid.calls["submit"] == 0
    assert sum(calls(rsps, f"{HOST}/replicas/rse/{site}_DATADISK") for site in ("SITE-A", "SITE-B", "SITE-C")) \
        == 6 * 3  # once per step (3 attempts), not once per queue: the outage holds for the step
    with robot.sessions() as session:
        outages = session.scalars(select(Event).where(Event.kind == "catalogue_unreachable")).all()
        assert len(outages) == 6 and outages[0].details["queues"] == ["ANALY_A", "ANALY_B", "ANALY_C"]
        assert "nothing counted" in outages[0].message and PASSWORD not in outages[0].message
        assert session.scalar(select(func.count()).select_from(Event).where(Event.kind == "no_input_data")) == 0
        assert session.scalar(select(func.count()).select_from(Job)) == 0
        assert session.scalar(select(func.count()).select_from(QueueTransition)) == 0

    rsps.remove(responses.GET, ANY_LISTING)  # Rucio is back
    rsps.add_callback(responses.GET, ANY_LISTING, content_type=NDJSON, callback=lambda request: (
        200, {}, ndjson([dataset_row(ZMUMU, rse=request.url.rsplit("/", 1)[1])])))
    rsps.get(files_url(ZMUMU), body=ndjson(file_rows(ZMUMU)), content_type=NDJSON)
    summary = robot.run_once(clock.now())
    assert summary.submitted == 3 and not summary.backend_errors
    assert {r.dataset for r in grid.requests.values()} == {ZMUMU}
