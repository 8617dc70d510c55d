"""CRICClient against canned CRIC answers (responses); no network."""
from __future__ import annotations

import json
import logging
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import responses

from robot.backends.base import BackendUnavailable
from robot.backends.cric import CRICClient
from robot.jobstates import QueueStatus

BASE = "https://cric.example.org"
PQ = f"{BASE}/api/atlas/pandaqueue/query/"
DDM = f"{BASE}/api/atlas/ddmendpoint/query/"
SITE = f"{BASE}/api/atlas/site/query/"
SET = f"{BASE}/request/pandaqueuestatus/update/set_probestatus/"
TOKEN = "s3cr3t-bearer-token-value"


def pandaqueues(**status_overrides: str) -> dict:
    queues = {
        "ANALY_BNL_VP": {
            "panda_resource": "ANALY_BNL_VP", "siteid": "ANALY_BNL_VP", "panda_site": "BNL",
            "atlas_site": "BNL", "rc_site": "BNL-ATLAS", "cloud": "US", "type": "analysis",
            "state": "ACTIVE", "status": "online", "resource_type": "GRID",
            "astorages": {"read_lan": ["BNL-OSG2_DATADISK"], "write_lan": ["BNL-OSG2_SCRATCHDISK"]},
        },
        "BNL_UNIFIED": {
            "panda_resource": "BNL_UNIFIED", "siteid": "BNL_UNIFIED", "panda_site": "BNL",
            "atlas_site": "BNL", "rc_site": "BNL-ATLAS", "cloud": "US", "type": "unified",
            "state": "ACTIVE", "status": "brokeroff", "resource_type": "GRID",
            "astorages": {"read_lan": ["BNL-OSG2_DATADISK"], "read_wan": ["BNL-OSG2_DATATAPE"]},
        },
        "BNL_PROD": {
            "panda_resource": "BNL_PROD", "siteid": "BNL_PROD", "panda_site": "BNL",
            "atlas_site": "BNL", "rc_site": "BNL-ATLAS", "cloud": "US", "type": "production",
            "state": "ACTIVE", "status": "online", "resource_type": "GRID",
            "astorages": {"read_lan": ["BNL-OSG2_DATADISK"]},
        },
        "ANALY_FZK": {
            "panda_resource": "ANALY_FZK", "siteid": "ANALY_FZK", "panda_site": "FZK-LCG2",
            "atlas_site": "FZK-LCG2", "rc_site": "FZK-LCG2", "cloud": "DE", "type": "analysis",
            "state": "ACTIVE", "status": "test", "resource_type": "GRID",
            "astorages": {},  # -> fallback: endpoints at the site
        },
        "ANALY_FZK_OLD": {
            "panda_resource": "ANALY_FZK_OLD", "siteid": "ANALY_FZK_OLD", "panda_site": "FZK-LCG2",
            "atlas_site": "FZK-LCG2", "rc_site": "FZK-LCG2", "cloud": "DE", "type": "analysis",
            "state": "DISABLED", "status": "offline", "resource_type": "GRID",
        },
        "ANALY_FZK_ODD": {
            "panda_resource": "ANALY_FZK_ODD", "rc_site": "FZK-LCG2", "cloud": "DE",
            "type": "analysis", "state": "ACTIVE", "status": "paused",  # unknown status
        },
    }
    for name, status in status_overrides.items():
        queues[name]["status"] = status
    return queues


DDMENDPOINTS = {
    "BNL-OSG2_DATADISK": {"name": "BNL-OSG2_DATADISK", "rc_site": "BNL-ATLAS", "site": "BNL",
                          "cloud": "US", "state": "ACTIVE"},
    "BNL-OSG2_DATATAPE": {"name": "BNL-OSG2_DATATAPE", "rc_site": "BNL-ATLAS", "site": "BNL",
                          "cloud": "US", "state": "ACTIVE"},
    "FZK-LCG2_DATADISK": {"name": "FZK-LCG2_DATADISK", "rc_site": "FZK-LCG2", "site": "FZK-LCG2",
                          "cloud": "DE", "state": "ACTIVE"},
}

SITES = {
    "BNL": {"name": "BNL", "rc_site": "BNL-ATLAS", "cloud": "US", "tier_level": 1,
            "contacts": ["bnl-support@example.org"]},
    "FZK-LCG2": {"name": "FZK-LCG2", "rc_site": "FZK-LCG2", "cloud": "DE", "tier_level": 1,
                 "email": "fzk-a@example.org, fzk-b@example.org"},
}


class Sleeps(list):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def client(sleeps: Sleeps) -> CRICClient:
    return CRICClient(BASE, token=TOKEN, retries=2, sleep=sleeps, timeout=1)


def add_reads(rsps: responses.RequestsMock, queues: dict | None = None) -> None:
    rsps.add(responses.GET, PQ, json=queues if queues is not None else pandaqueues())
    rsps.add(responses.GET, DDM, json=DDMENDPOINTS)
    rsps.add(responses.GET, SITE, json=SITES)


@responses.activate
def test_topology_built_from_the_three_apis(client: CRICClient) -> None:
    add_reads(responses.mock)
    topo = client.topology()

    queues = {q.name: q for q in topo.queues}
    assert set(queues) == {"ANALY_BNL_VP", "BNL_UNIFIED", "ANALY_FZK", "ANALY_FZK_ODD"}
    assert "BNL_PROD" not in queues and "ANALY_FZK_OLD" not in queues
    bnl = queues["ANALY_BNL_VP"]
    assert (bnl.site, bnl.cloud, bnl.endpoints, bnl.exempt) == ("BNL-ATLAS", "US", ("BNL-OSG2_DATADISK",), False)
    assert queues["BNL_UNIFIED"].endpoints == ("BNL-OSG2_DATADISK", "BNL-OSG2_DATATAPE")
    fzk = queues["ANALY_FZK"]
    assert (fzk.site, fzk.cloud, fzk.endpoints) == ("FZK-LCG2", "DE", ("FZK-LCG2_DATADISK",))

    sites = {s.name: s for s in topo.sites}
    assert sites["BNL-ATLAS"].cloud == "US"
    assert sites["BNL-ATLAS"].contacts == ("bnl-support@example.org",)
    assert sites["FZK-LCG2"].contacts == ("fzk-a@example.org", "fzk-b@example.org")
    assert topo.clouds == ("DE", "US")
    assert {(e.name, e.site) for e in topo.endpoints} == {
        ("BNL-OSG2_DATADISK", "BNL-ATLAS"), ("BNL-OSG2_DATATAPE", "BNL-ATLAS"),
        ("FZK-LCG2_DATADISK", "FZK-LCG2")}

    # bearer token sent, ?json on every read
    for call in responses.calls:
        assert call.request.headers["Authorization"] == f"Bearer {TOKEN}"
        assert "json" in parse_qs(urlsplit(call.request.url).query, keep_blank_values=True)


@responses.activate
def test_production_queues_kept_when_not_analysis_only(sleeps: Sleeps) -> None:
    add_reads(responses.mock)
    topo = CRICClient(BASE, sleep=sleeps, analysis_only=False).topology()
    names = {q.name for q in topo.queues}
    assert "BNL_PROD" in names and "ANALY_FZK_OLD" not in names


@responses.activate
def test_queue_status_lowercase_and_unknown_skipped(client: CRICClient, caplog) -> None:
    responses.add(responses.GET, PQ, json=pandaqueues(ANALY_BNL_VP="ONLINE"))
    with caplog.at_level(logging.WARNING, logger="robot.backends.cric"):
        st = client.queue_status()
    assert st == {"ANALY_BNL_VP": QueueStatus.ONLINE, "BNL_UNIFIED": QueueStatus.BROKEROFF,
                  "ANALY_FZK": QueueStatus.TEST}
    assert "ANALY_FZK_ODD" in caplog.text and "paused" in caplog.text


@responses.activate
def test_set_queue_status_sends_probe_request_and_reads_back(client: CRICClient) -> None:
    responses.add(responses.POST, SET, json={"status": "ok"})
    responses.add(responses.GET, PQ, json=pandaqueues(ANALY_FZK="offline"))

    got = client.set_queue_status("ANALY_FZK", QueueStatus.OFFLINE, "3 failures in a row", "robot:default")

    assert got is QueueStatus.OFFLINE
    write = responses.calls[0].request
    assert write.method == "POST"
    assert urlsplit(write.url).path == "/request/pandaqueuestatus/update/set_probestatus/"
    qs = parse_qs(urlsplit(write.url).query, keep_blank_values=True)
    assert qs == {"json": [""], "panda_resource": ["ANALY_FZK"], "value": ["OFFLINE"],
                  "reason": ["3 failures in a row [robot:default]"], "probe": ["healthrobot"]}
    assert write.headers["Authorization"] == f"Bearer {TOKEN}"
    assert responses.calls[1].request.method == "GET"


@responses.activate
def test_a_persons_override_goes_to_cric_under_the_manual_probe_name(client: CRICClient) -> None:
    """Finding 7: people's overrides went to CRIC under the robot's probe name."""
    responses.add(responses.POST, SET, json={"status": "ok"})
    responses.add(responses.GET, PQ, json=pandaqueues(ANALY_FZK="test"))
    client.set_queue_status("ANALY_FZK", QueueStatus.TEST, "manual exclude by alice: downtime", "person:alice")
    qs = parse_qs(urlsplit(responses.calls[0].request.url).query)
    assert qs["probe"] == ["healthrobot-manual"] and qs["reason"] == ["manual exclude by alice: downtime [person:alice]"]


@responses.activate
def test_set_queue_status_returns_what_was_read(client: CRICClient) -> None:
    responses.add(responses.POST, SET, json={})
    responses.add(responses.GET, PQ, json=pandaqueues())  # write did not take: still "test"
    assert client.set_queue_status("ANALY_FZK", QueueStatus.BROKEROFF, "r", "p") is QueueStatus.TEST
    qs = parse_qs(urlsplit(responses.calls[0].request.url).query)
    assert qs["value"] == ["BROKEROFF"]


@responses.activate
def test_retries_then_succeeds(client: CRICClient, sleeps: Sleeps) -> None:
    responses.add(responses.GET, PQ, status=503)
    responses.add(responses.GET, PQ, body=requests.ConnectionError("refused"))
    responses.add(responses.GET, PQ, json=pandaqueues())
    assert client.queue_status()["ANALY_BNL_VP"] is QueueStatus.ONLINE
    assert sleeps == [1.0, 2.0]


@pytest.mark.parametrize("failure", [
    {"status": 502},
    {"body": requests.ConnectionError("refused")},
    {"body": requests.Timeout("slow")},
])
@responses.activate
def test_retries_exhausted_raise_backend_unavailable(client: CRICClient, sleeps: Sleeps, caplog, failure) -> None:
    responses.add(responses.GET, PQ, **failure)
    with caplog.at_level(logging.DEBUG), pytest.raises(BackendUnavailable) as err:
        client.queue_status()
    assert len(responses.calls) == 3 and len(sleeps) == 2
    assert "/api/atlas/pandaqueue/query/" in str(err.value)
    assert "3 attempt" in str(err.value)
    assert TOKEN not in str(err.value) and TOKEN not in caplog.text


@responses.activate
def test_client_error_is_not_retried(client: CRICClient, sleeps: Sleeps) -> None:
    responses.add(responses.POST, SET, status=403)
    with pytest.raises(BackendUnavailable, match="HTTP 403") as err:
        client.set_queue_status("ANALY_FZK", QueueStatus.TEST, "r", "p")
    assert len(responses.calls) == 1 and sleeps == []
    assert TOKEN not in str(err.value)


@pytest.mark.parametrize("answer", [
    {"body": "<html>CRIC is down for maintenance</html>"},
    {"body": ""},
    {"json": {}},
    {"json": []},
    {"json": {"ANALY_X": "not an object"}},
])
@responses.activate
def test_malformed_or_empty_answer_raises(client: CRICClient, caplog, answer) -> None:
    responses.add(responses.GET, PQ, **answer)
    with caplog.at_level(logging.DEBUG), pytest.raises(BackendUnavailable) as err:
        client.topology()
    assert "/api/atlas/pandaqueue/query/" in str(err.value)
    assert TOKEN not in str(err.value) and TOKEN not in caplog.text


@responses.activate
def test_empty_endpoint_list_raises_not_empty_topology(client: CRICClient) -> None:
    responses.add(responses.GET, PQ, json=pandaqueues())
    responses.add(responses.GET, DDM, json={})
    with pytest.raises(BackendUnavailable, match="ddmendpoint"):
        client.topology()


@responses.activate
def test_no_wanted_queue_left_raises(client: CRICClient) -> None:
    only_prod = {k: v for k, v in pandaqueues().items() if k == "BNL_PROD"}
    add_reads(responses.mock, only_prod)
    with pytest.raises(BackendUnavailable, match="no active queues"):
        client.topology()


def test_x509_auth_configures_session(sleeps: Sleeps) -> None:
    c = CRICClient(BASE, cert=("/p/usercert.pem", "/p/userkey.pem"), ca_path="/etc/grid-security/certificates",
                   sleep=sleeps)
    assert c.session.cert == ("/p/usercert.pem", "/p/userkey.pem")
    assert c.session.verify == "/etc/grid-security/certificates"


@responses.activate
def test_x509_request_has_no_bearer_header(sleeps: Sleeps) -> None:
    responses.add(responses.GET, PQ, body=json.dumps(pandaqueues()))
    c = CRICClient(BASE, cert=("/p/usercert.pem", "/p/userkey.pem"), sleep=sleeps)
    c.queue_status()
    assert "Authorization" not in responses.calls[0].request.headers
