"""Credentials come only from files or environment variables named in the configuration, and never
reach a log line.

Secrets are planted in the PanDA token file, the CRIC token file and the Rucio password file, and in
the environment for the IMAP password, the GGUS token and the SMTP password (`${NAME}` in the
file); the robot, built from configuration alone, takes good steps (one mails a decision through a
loopback SMTP server that asks for a login), then steps while PanDA, CRIC and Rucio misbehave, then
imports tickets from a loopback IMAP server and from GGUS through the CLI, with every logger at
DEBUG. The secrets must have been sent to the services (else the test proves nothing) and must
appear nowhere else: not in the logs, not in what was printed, not in the database, not in a repr.
A database URL's password is shown masked wherever the URL is shown.
"""
from __future__ import annotations

import json
import logging
import threading
from datetime import timedelta

import pytest
import responses
import yaml
from click.testing import CliRunner
from sqlalchemy import select

from robot.cli import main
from robot.clock import ManualClock
from robot.config import DatabaseConfig, RobotConfig, load_config, masked_url
from robot.services import build
from robot.storage.database import upgrade
from robot.storage.models import Event, Job, Queue, QueueTransition, Ticket, TicketMessage
from tests.fakes import T0
from tests.panda_fake import FakePanda
from tests.test_cric import DDM, PQ, SITE
from tests.test_ticket_imap import PASSWORD as IMAP_PASSWORD
from tests.test_ticket_imap import USER as IMAP_USER
from tests.test_ticket_imap import FakeIMAPServer, FakeState, Handler, raw

pytest.importorskip("aiosmtpd")
from aiosmtpd.controller import Controller  # noqa: E402

from tests.test_notify import Collector, accept  # noqa: E402

CRIC = "https://cric.example.org"
RUCIO = "https://rucio.example.org"
GGUS = "https://ggus.example.org"
SECRETS = {"panda": "PLANTED-panda-id-token-4f1c", "cric": "PLANTED-cric-bearer-9a2e",
           "rucio": "PLANTED-rucio-password-77b0", "imap": IMAP_PASSWORD,  # the password the IMAP server accepts
           "ggus": "PLANTED-ggus-token-5d3a", "smtp": "PLANTED-smtp-password-c81e"}
IN_FILES = ("panda", "cric", "rucio")  # the others come from the environment: ${HEALTHROBOT_TEST_<NAME>}
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


class LoopbackSMTP(Controller):
    """aiosmtpd's threaded server on a port the system picks (port 0), so no fixed port is ever assumed."""

    def _trigger_server(self) -> None:
        assert self.server is not None
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()


def ggus_answers(rsps: responses.RequestsMock) -> None:
    ticket = {"id": 7, "number": "165007", "title": "ATLAS: failures at SITE-A", "state": "assigned",
              "priority": "urgent", "type": "Incident", "created_at": "2025-02-27T10:00:00.000Z",
              "updated_at": "2025-02-28T09:30:00.000Z", "article_ids": [71], "wlcg_sites": "SITE-A",
              "vo_support": "atlas", "area": "Storage", "notified_groups": ""}
    article = {"id": 71, "ticket_id": 7, "from": "Shifter One <shifter@cern.ch>",
               "created_at": "2025-02-28T09:30:00.000Z", "content_type": "text/plain", "body": "Get error: stage-in failed at ANALY_SITE_A"}
    rsps.get(f"{GGUS}/api/v1/tickets/search", json=[ticket])
    rsps.get(f"{GGUS}/api/v1/ticket_articles/by_ticket/7", json=[article])


def test_planted_secrets_are_used_and_never_shown(tmp_path, caplog, capsys, monkeypatch):
    for name in IN_FILES:
        (tmp_path / f"{name}.secret").write_text(SECRETS[name] + "\n")
    for name in set(SECRETS) - set(IN_FILES):
        monkeypatch.setenv(f"HEALTHROBOT_TEST_{name.upper()}", SECRETS[name])
    mailbox = FakeIMAPServer(("127.0.0.1", 0), Handler)
    mailbox.state = FakeState(gmail=False)  # type: ignore[attr-defined]
    mailbox.state.add(raw(1))  # type: ignore[attr-defined]
    threading.Thread(target=mailbox.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    mail = Collector()
    smtp = LoopbackSMTP(mail, hostname="127.0.0.1", port=0, authenticator=accept("robot", SECRETS["smtp"]),
                        auth_require_tls=False)
    smtp.start()
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
        "blacklist": {"mode": "enforce", "notify": {
            "enabled": True, "smtp_host": "127.0.0.1", "smtp_port": smtp.port, "username": "robot",
            "password": "${HEALTHROBOT_TEST_SMTP}", "operations": ["ops@example.org"], "burst": "1m"}},
        "tickets": {"imap": {"host": "127.0.0.1", "port": mailbox.server_address[1], "ssl": False,
                             "username": IMAP_USER, "password": "${HEALTHROBOT_TEST_IMAP}"},
                    "ggus": {"url": GGUS, "token": "${HEALTHROBOT_TEST_GGUS}"}},
    }))
    caplog.set_level(logging.DEBUG)
    clock = ManualClock(T0)
    broken = {"cric": False, "rucio": False}
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        cric_answers(rsps, broken)
        rucio_answers(rsps, broken)
        ggus_answers(rsps)
        config = load_config(config_path)
        services = build(config, clock)
        upgrade(services.engine)
        imports = []
        try:
            services.robot.run_once(clock.now())
            assert len(panda.submitted()) == 1  # a good step: the job went to PanDA
            with services.sessions() as session:  # a decision to mail (dry-run: nothing to apply)
                queue = session.scalar(select(Queue.id).where(Queue.name == "ANALY_SITE_A"))
                session.add(QueueTransition(queue_id=queue, time=clock.now(), kind="status", old="online",
                                            new="brokeroff", reason="site-class failures", evidence={},
                                            actor="healthrobot", policy="default", applied=False))
                session.commit()
            clock.advance(timedelta(minutes=2))
            services.robot.run_once(clock.now())  # the burst is over: mailed
            broken.update(cric=True, rucio=True)
            panda.always("*", "http500")
            for _ in range(3):
                clock.advance(timedelta(minutes=11))
                services.robot.run_once(clock.now())
            for source in ("imap", "ggus"):
                imports.append(CliRunner().invoke(main, ["--config", str(config_path), "tickets", "import", source,
                                                         "--json"]))
            shown = [repr(services.robot.backend), repr(services.robot.topology), repr(services.robot.catalogue),
                     repr(config), str(config), config.model_dump_json(), repr(services.engine)]
            with services.sessions() as session:
                stored = [json.dumps([e.kind, e.subject, e.message, e.details]) for e in session.scalars(select(Event))]
                stored += [json.dumps([j.error_diag, j.pilot_error_diag]) for j in session.scalars(select(Job))]
                stored += [json.dumps([t.source, t.subject]) for t in session.scalars(select(Ticket))]
                stored += [json.dumps([m.sender, m.body]) for m in session.scalars(select(TicketMessage))]
            sent = [(call.request.headers.get("Authorization", ""), call.request.headers.get("X-Rucio-Password", ""))
                    for call in rsps.calls]
        finally:
            services.close()
            panda.stop()
            smtp.stop()
            mailbox.shutdown()
            mailbox.server_close()

    # The secrets were used where they belong ...
    assert any(auth == f"Bearer {SECRETS['cric']}" for auth, _ in sent)
    assert any(password == SECRETS["rucio"] for _, password in sent)
    assert any(r.env.get("PANDA_AUTH_ID_TOKEN") == SECRETS["panda"] for r in panda.requests)
    assert any(auth == f"Token token={SECRETS['ggus']}" for auth, _ in sent)
    assert len(mail.received) == 1  # the SMTP server accepted the login (it refuses any other password)
    for result in imports:  # the IMAP server, too (a wrong password is refused: no mail read)
        assert result.exit_code == 0, result.output
        assert json.loads(result.output)["new_messages"] >= 1
    # ... the outage was seen and recorded ...
    assert any("backend_unreachable" in row for row in stored) and any("topology_unreachable" in row for row in stored)
    # ... and nowhere else.
    printed = capsys.readouterr()
    everything = "\n".join([caplog.text, printed.out, printed.err, *[r.output for r in imports], *stored, *shown,
                            *[r.message.as_string() for r in mail.received]])
    assert len(caplog.records) > 20  # debug logging really was on
    for name, secret in SECRETS.items():
        assert secret not in everything, f"the {name} secret leaked"


@pytest.mark.parametrize("url,shown", [
    ("postgresql+psycopg://robot:PLANTED-db@db.example.org:5432/robot",
     "postgresql+psycopg://robot:***@db.example.org:5432/robot"),
    ("postgresql://robot:p%40ss/w:rd@db/robot", "postgresql://robot:***@db/robot"),  # as SQLAlchemy splits it
    ("postgresql://robot@db/robot?sslmode=require&password=PLANTED-db",
     "postgresql://robot@db/robot?sslmode=require&password=***"),
    ("sqlite:////var/lib/healthrobot/healthrobot.db", "sqlite:////var/lib/healthrobot/healthrobot.db"),
])
def test_database_urls_are_shown_without_their_password(url, shown):
    assert masked_url(url) == shown


def test_the_database_password_is_masked_in_config_check_and_reprs(tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    planted = "PLANTED-db-password-e90d"
    monkeypatch.setenv("HEALTHROBOT_TEST_DB_PASSWORD", planted)
    path = tmp_path / "robot.yaml"
    path.write_text(yaml.safe_dump({
        "data_dir": str(tmp_path / "data"),
        "database": {"url": "postgresql+psycopg://robot:${HEALTHROBOT_TEST_DB_PASSWORD}@127.0.0.1:5432/robot"},
        "backend": {"kind": "panda", "panda": {"url": "http://127.0.0.1:1/server/panda", "auth": "none"}},
    }))
    checked = CliRunner().invoke(main, ["config", "check", "--json", str(path)])
    text = CliRunner().invoke(main, ["config", "check", str(path)])
    assert checked.exit_code == 0 and text.exit_code == 0, checked.output + text.output
    assert json.loads(checked.output)["database"] == "postgresql+psycopg://robot:***@127.0.0.1:5432/robot"
    config = load_config(path)
    assert config.database_url.endswith(f":{planted}@127.0.0.1:5432/robot")  # what the engine is given
    shown = [checked.output, text.output, caplog.text, repr(config), str(config), repr(config.database),
             config.model_dump_json(), repr(DatabaseConfig(url=config.database_url)),
             repr(RobotConfig(database=config.database))]
    assert planted not in "\n".join(shown)


def test_configuration_errors_never_show_a_secret(tmp_path, monkeypatch):
    planted = {"HEALTHROBOT_TEST_DB_PASSWORD": "PLANTED-db-e1", "HEALTHROBOT_TEST_IMAP": "PLANTED-imap-e2",
               "HEALTHROBOT_TEST_GGUS": "PLANTED-ggus-e3", "HEALTHROBOT_TEST_SMTP": "PLANTED-smtp-e4"}
    for name, value in planted.items():
        monkeypatch.setenv(name, value)
    secrets = {
        "database": {"url": "postgresql+psycopg://robot:${HEALTHROBOT_TEST_DB_PASSWORD}@127.0.0.1/robot"},
        "tickets": {"imap": {"host": "127.0.0.1", "username": "u", "password": "${HEALTHROBOT_TEST_IMAP}"},
                    "ggus": {"url": GGUS, "token": "${HEALTHROBOT_TEST_GGUS}"}},
        "blacklist": {"notify": {"username": "robot", "password": "${HEALTHROBOT_TEST_SMTP}"}},
    }
    cases = {
        # a check of the whole file fails: it must not print the whole file
        "whole": {**secrets, "backend": {"kind": "panda", "panda": {"url": "http://127.0.0.1:1/", "auth": "none"}},
                  "topology": {"source": "cric", "cric": {"url": CRIC}}},
        # a secret of the wrong type (a number where text is expected): its value is not printed either
        "number": {"tickets": {"imap": {"host": "127.0.0.1", "username": "u", "password": 86754309}}},
    }
    for name, body in cases.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({"data_dir": str(tmp_path), **body}))
        for extra in ([], ["--json"]):
            result = CliRunner().invoke(main, ["config", "check", *extra, str(path)])
            assert result.exit_code == 1, result.output
            assert not any(value in result.output for value in [*planted.values(), "86754309"]), result.output
    shown = CliRunner().invoke(main, ["config", "check", str(tmp_path / "number.yaml")]).output
    assert "tickets.imap.password: Input should be a valid string (the value is a secret: not shown)" in shown
