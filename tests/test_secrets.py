"""Credentials come only from files named in the configuration, and never reach a log line.

Secrets are planted in the PanDA token file, the CRIC token file and the Rucio password file; the
robot, built from configuration alone, takes a good step and then steps while all three services
misbehave, with every logger at DEBUG. The secrets must have been sent to the services (else the test
proves nothing) and must appear nowhere else: not in the logs, not in what was printed, not in the
database, not in a repr.
"""
from __future__ import annotations

import json
import logging
from datetime import timedelta

import responses
import yaml
from sqlalchemy import select

from robot.clock import ManualClock
from robot.config import load_config
from robot.services import build
from robot.storage.database import upgrade
from robot.storage.models import Event, Job
from tests.fakes import T0
from tests.panda_fake import FakePanda
from tests.test_cric import DDM, PQ, SITE

CRIC = "https://cric.example.org"
RUCIO = "https://rucio.example.org"
SECRETS = {"panda": "PLANTED-panda-id-token-4f1c", "cric": "PLANTED-cric-bearer-9a2e",
           "rucio": "PLANTED-rucio-password-77b0"}
DATASET = "mc23_13p6TeV.601189.PhPy8EG_Zmumu.deriv.DAOD_PHYS.e8514_s4162_r14622_p6026"


def cric_answers(rsps: responses.RequestsMock, broken: dict[str, bool]) -> None:
    queues = {"ANALY_SITE_A": {"panda_resource": "ANALY_SITE_A", "rc_site": "SITE-A", "cloud": "DE",
                               "type": "analysis", "state": "ACTIVE", "status": "online",
                               "astorages": {"read_lan": ["SITE-A_DATADISK"]}}}
    bodies = {PQ: queues, DDM: {"SITE-A_DATADISK": {"name": "SITE-A_DATADISK", "rc_site": "SITE-A"}},
              SITE: {"SITE-A": {"name": "SITE-A", "rc_site": "SITE-A", "cloud": "DE"}}}
    for url, body in bodies.items():
        rsps.add_callback(responses.GET, url.replace("https://cric.example.org", CRIC),
                          callback=lambda request, body=body: (500, {}, "down") if broken["cric"]
                          else (200, {}, json.dumps(body)))


def rucio_answers(rsps: responses.RequestsMock, broken: dict[str, bool]) -> None:
    rsps.get(f"{RUCIO}/auth/userpass", headers={"X-Rucio-Auth-Token": "session-token-not-a-secret",
                                                "X-Rucio-Auth-Token-Expires": "Sun, 22 Nov 2026 08:03:57 UTC"})
    row = {"scope": "hc_test", "name": DATASET, "rse": "SITE-A_DATADISK", "bytes": 2000, "length": 2,
           "available_bytes": 2000, "available_length": 2, "state": "AVAILABLE"}
    files = [{"scope": "hc_test", "name": f"DAOD_PHYS.0000{i}.pool.root.1", "bytes": 1000, "adler32": "0a0b0c0d",
              "guid": f"05344C9867FF50B7B48E3B35F4C631{i:02d}", "events": 10_000} for i in (1, 2)]
    ndjson = {"Content-Type": "application/x-json-stream"}
    rsps.add_callback(responses.GET, f"{RUCIO}/replicas/rse/SITE-A_DATADISK",
                      callback=lambda request: (500, {}, "down") if broken["rucio"] else (200, ndjson, json.dumps(row) + "\n"))
    rsps.add_callback(responses.GET, f"{RUCIO}/dids/hc_test/{DATASET}/files",
                      callback=lambda request: (200, ndjson, "".join(json.dumps(f) + "\n" for f in files)))


def test_planted_secrets_are_used_and_never_shown(tmp_path, caplog, capsys):
    for name, secret in SECRETS.items():
        (tmp_path / f"{name}.secret").write_text(secret + "\n")
    panda = FakePanda()
    config_path = tmp_path / "robot.yaml"
    config_path.write_text(yaml.safe_dump({
        "data_dir": str(tmp_path / "data"),
        "backend": {"kind": "panda", "panda": {"url": panda.url, "auth": "oidc", "token_file": "panda.secret",
                                               "retries": 0, "timeout": "2s"}},
        "topology": {"source": "cric", "refresh": "10m",
                     "cric": {"url": CRIC, "token_file": "cric.secret", "retries": 0}},
        "datasets": {"source": "rucio", "rucio": {"host": RUCIO, "account": "healthrobot", "auth_type": "userpass",
                                                  "username": "robot", "password_file": "rucio.secret",
                                                  "retries": 0, "cache_ttl": "5m"}},
        "templates": [{"name": "AFT", "category": "functional", "payload": "zmumu", "input_dataset": "mc23*Zmumu*",
                       "events_per_job": 1000}],
        "blacklist": {"mode": "enforce"},
    }))
    caplog.set_level(logging.DEBUG)
    clock = ManualClock(T0)
    broken = {"cric": False, "rucio": False}
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        cric_answers(rsps, broken)
        rucio_answers(rsps, broken)
        services = build(load_config(config_path), clock)
        upgrade(services.engine)
        try:
            services.robot.run_once(clock.now())
            assert len(panda.submitted()) == 1  # a good step: the job went to PanDA
            broken.update(cric=True, rucio=True)
            panda.always("*", "http500")
            for _ in range(3):
                clock.advance(timedelta(minutes=11))
                services.robot.run_once(clock.now())
            shown = [repr(services.robot.backend), repr(services.robot.topology), repr(services.robot.catalogue)]
            with services.sessions() as session:
                stored = [json.dumps([e.kind, e.subject, e.message, e.details]) for e in session.scalars(select(Event))]
                stored += [json.dumps([j.error_diag, j.pilot_error_diag]) for j in session.scalars(select(Job))]
            sent = [(call.request.headers.get("Authorization", ""), call.request.headers.get("X-Rucio-Password", ""))
                    for call in rsps.calls]
        finally:
            services.close()
            panda.stop()

    # The secrets were used where they belong ...
    assert any(auth == f"Bearer {SECRETS['cric']}" for auth, _ in sent)
    assert any(password == SECRETS["rucio"] for _, password in sent)
    assert any(r.env.get("PANDA_AUTH_ID_TOKEN") == SECRETS["panda"] for r in panda.requests)
    # ... the outage was seen and recorded ...
    assert any("backend_unreachable" in row for row in stored) and any("topology_unreachable" in row for row in stored)
    # ... and nowhere else.
    printed = capsys.readouterr()
    everything = "\n".join([caplog.text, printed.out, printed.err, *stored, *shown])
    assert len(caplog.records) > 20  # debug logging really was on
    for name, secret in SECRETS.items():
        assert secret not in everything, f"the {name} secret leaked"
