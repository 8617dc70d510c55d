"""Mails about exclusion decisions, sent to a real SMTP server (aiosmtpd) on loopback."""
from __future__ import annotations

import email
import logging
import socket
from dataclasses import dataclass
from datetime import datetime, timedelta
from email import policy
from email.message import EmailMessage
from typing import Any, Callable

import pytest
from sqlalchemy import select, update

pytest.importorskip("aiosmtpd")
from aiosmtpd.controller import Controller  # noqa: E402
from aiosmtpd.smtp import AuthResult, LoginPassword  # noqa: E402

from blacklist.notify import NEXT_AFTER_EXCLUSION, Notifier  # noqa: E402
from blacklist.settings import NotifySettings  # noqa: E402
from robot.clock import ManualClock  # noqa: E402
from robot.loop import Robot  # noqa: E402
from robot.storage.models import Queue, QueueTransition, Silence, Site  # noqa: E402
from tests.fakes import T0, ScriptedGrid, make_robot, templates  # noqa: E402

ACTOR = "healthrobot"
QUEUES = {"ANALY_A1": ("SITE-A", "DE"), "ANALY_A2": ("SITE-A", "DE"), "ANALY_A3": ("SITE-A", "DE"),
          "ANALY_B": ("SITE-B", "US")}
CONTACTS = {"SITE-A": ["admin-a@site-a.example.org", "cloud-de@example.org"], "SITE-B": ["admin-b@site-b.example.org"]}
OPS = ["ops@example.org"]
PASSWORD = "s3cret-Pa55word"
BURST = timedelta(minutes=10)


# -- the SMTP server -------------------------------------------------------------------------------
@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage


class Collector:
    def __init__(self) -> None:
        self.received: list[Received] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.original_content or envelope.content, policy=policy.default)
        self.received.append(Received(envelope.mail_from, list(envelope.rcpt_tos), message))  # type: ignore[arg-type]
        return "250 OK"

    def subjects(self) -> list[str]:
        return [r.message["Subject"] for r in self.received]


class BoundController(Controller):
    """An aiosmtpd server on a socket bound beforehand (port 0, chosen by the kernel and never let go),
    so no other process can take its port between choosing it and listening on it."""

    def __init__(self, handler: Any, sock: socket.socket, **kwargs: Any):
        super().__init__(handler, hostname="127.0.0.1", port=sock.getsockname()[1], **kwargs)
        self.sock = sock

    def _create_server(self):  # type: ignore[no-untyped-def]
        sock = self.sock.dup()  # the server closes its own; whoever bound `sock` closes that one
        sock.listen()
        return self.loop.create_server(self._factory_invoker, sock=sock, ssl=self.ssl_context)


@pytest.fixture
def closed_port():
    """A socket bound to a port of its own (port 0) that does not listen: connections to it are refused
    until `smtp_server(sock)` serves on it. Held until the test ends, so its port stays ours."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    yield sock
    sock.close()


def accept(user: str, password: str) -> Callable[..., AuthResult]:
    def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
        ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
            user.encode(), password.encode())
        return AuthResult(success=ok, handled=False)  # not handled: the server answers 535 itself
    return authenticator


@pytest.fixture
def smtp_server():
    """`start(sock=None, **smtp_kwargs) -> (port, collector)`: an aiosmtpd server on 127.0.0.1 (on `sock`, or
    on a port 0 of its own), stopped at the end."""
    controllers: list[Controller] = []
    sockets: list[socket.socket] = []

    def start(sock: socket.socket | None = None, **kwargs: Any) -> tuple[int, Collector]:
        collector = Collector()
        if sock is None:
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        controller = BoundController(collector, sock, **kwargs)
        controller.start()
        controllers.append(controller)
        return controller.port, collector

    yield start
    for controller in controllers:
        controller.stop()
    for sock in sockets:
        sock.close()


@pytest.fixture
def smtp(smtp_server) -> tuple[int, Collector]:
    return smtp_server()


# -- the database ----------------------------------------------------------------------------------
@pytest.fixture
def robot(tmp_path) -> Robot:
    """Clouds, sites and queues made by one robot step; site contacts set in the database."""
    clock = ManualClock(T0 - timedelta(hours=1))
    robot = make_robot(tmp_path, ScriptedGrid(clock, QUEUES), templates({"name": "AFT"}))
    robot.run_once(clock.now())
    with robot.sessions() as session:
        for site, contacts in CONTACTS.items():
            session.execute(update(Site).where(Site.name == site).values(contacts=contacts))
        session.commit()
    return robot


def settings(port: int, **overrides: Any) -> NotifySettings:
    values: dict[str, Any] = {"enabled": True, "smtp_host": "127.0.0.1", "smtp_port": port, "operations": OPS,
                              "sender": "robot@hc.example.org", "burst": BURST,
                              "monitor_url": "https://monitor.example.org/jobs/{panda_id}?queue={queue}"}
    return NotifySettings(**{**values, **overrides})


def job(panda_id: int, template: str = "AFT", error: str = "STAGEINFAILED", code: int = 1099) -> dict[str, Any]:
    return {"panda_id": panda_id, "template": template, "end_time": (T0 - timedelta(minutes=5)).isoformat(),
            "failed": True, "error_class": "site", "error": error, "code": code}


def add(robot: Robot, queue: str, when: datetime, *, new: str = "brokeroff", old: str = "online",
        reason: str = "CUSUM 5.1 >= 4.6: site-class failures", jobs: list[dict[str, Any]] | None = None,
        applied: bool = True, read_back: str | None = "brokeroff", actor: str = ACTOR, kind: str = "status") -> int:
    with robot.sessions() as session:
        queue_id = session.scalar(select(Queue.id).where(Queue.name == queue))
        row = QueueTransition(queue_id=queue_id, time=when, kind=kind, old=old, new=new, reason=reason,
                              evidence={"cusum": 5.1, "jobs": jobs if jobs is not None else [job(4711), job(4712)]},
                              actor=actor, policy="default", applied=applied,
                              read_back=read_back if applied else None)
        session.add(row)
        session.commit()
        return row.id


def run(notifier: Notifier, robot: Robot, now: datetime) -> list[str]:
    with robot.sessions() as session:
        subjects = notifier(session, now)
        session.commit()
    return subjects


def notified(robot: Robot) -> dict[int, datetime | None]:
    with robot.sessions() as session:
        return dict(session.execute(select(QueueTransition.id, QueueTransition.notified_at)).all())


def text_of(message: EmailMessage) -> str:
    assert not message.is_multipart() and message.get_content_type() == "text/plain"
    return message.get_content()


# -- tests -----------------------------------------------------------------------------------------
def test_one_message_per_site_per_burst_to_contacts_and_operations(robot, smtp):
    port, server = smtp
    a = [add(robot, q, T0 + timedelta(minutes=i)) for i, q in enumerate(["ANALY_A1", "ANALY_A2", "ANALY_A3"])]
    a.append(add(robot, "ANALY_A1", T0 + timedelta(minutes=3), old="brokeroff", new="online", read_back="online",
                 reason="3 good jobs in a row", jobs=[{**job(4800), "failed": False}]))
    b = add(robot, "ANALY_B", T0)
    notifier = Notifier(settings(port), ACTOR)

    sent = run(notifier, robot, T0 + timedelta(minutes=13))

    assert sorted(sent) == ["ANALY_B auto-excluded at 12:00 UTC", "SITE-A: 3 queues auto-excluded, 1 re-included"]
    assert sorted(server.subjects()) == sorted(sent)
    by_subject = {r.message["Subject"]: r for r in server.received}
    site_a = by_subject["SITE-A: 3 queues auto-excluded, 1 re-included"]
    assert sorted(site_a.rcpt_tos) == sorted(CONTACTS["SITE-A"] + OPS)
    assert site_a.mail_from == "robot@hc.example.org"
    assert site_a.message["To"] == ", ".join(CONTACTS["SITE-A"]) and site_a.message["Cc"] == OPS[0]
    assert sorted(by_subject["ANALY_B auto-excluded at 12:00 UTC"].rcpt_tos) == sorted(CONTACTS["SITE-B"] + OPS)
    body = text_of(site_a.message)
    assert all(f"== {q}: robot: excluded (applied: online -> brokeroff) ==" in body
               for q in ("ANALY_A1", "ANALY_A2", "ANALY_A3"))
    assert "== ANALY_A1: robot: online (applied: brokeroff -> online) ==" in body
    # the policy's reason, and the same in words a shifter reads
    assert "Reason:   CUSUM 5.1 >= 4.6: site-class failures" in body
    assert "Why:      2 site-class failures (STAGEINFAILED) in the last 5m, more than a healthy queue would show" in body
    assert "Why:      1 test job completed in a row: the queue works again" in body
    marks = notified(robot)
    assert all(marks[i] == T0 + timedelta(minutes=13) for i in a + [b])
    assert run(notifier, robot, T0 + timedelta(hours=1)) == [] and len(server.received) == 2  # nothing twice


def test_nothing_is_sent_before_the_burst_is_over(robot, smtp):
    port, server = smtp
    first = add(robot, "ANALY_A1", T0)
    notifier = Notifier(settings(port), ACTOR)
    assert run(notifier, robot, T0 + timedelta(minutes=9)) == []
    second = add(robot, "ANALY_A2", T0 + timedelta(minutes=9))  # the burst goes on: the first one waits
    assert run(notifier, robot, T0 + timedelta(minutes=12)) == []
    assert server.received == [] and notified(robot) == {first: None, second: None}
    assert run(notifier, robot, T0 + timedelta(minutes=19)) == ["SITE-A: 2 queues auto-excluded"]
    assert all(notified(robot).values())


def test_body_is_plain_text_with_reason_jobs_links_status_next_step_and_opt_out(robot, smtp):
    port, server = smtp
    add(robot, "ANALY_B", T0, reason="CUSUM 6.2 >= 4.6 over 5 site-class failures",
        jobs=[job(90001), job(90002, template="AFT_2", error="NOLOCALSPACE", code=1098)])
    assert run(Notifier(settings(port), ACTOR), robot, T0 + BURST) == ["ANALY_B auto-excluded at 12:00 UTC"]
    (received,) = server.received
    body = text_of(received.message)
    assert "CUSUM 6.2 >= 4.6 over 5 site-class failures" in body
    assert "PanDA ID 90001, template AFT, STAGEINFAILED" not in body  # the error follows "failed,"
    assert "PanDA ID 90001, template AFT: failed, STAGEINFAILED (code 1099)" in body
    assert "PanDA ID 90002, template AFT_2: failed, NOLOCALSPACE (code 1098)" in body
    assert "https://monitor.example.org/jobs/90001?queue=ANALY_B" in body
    assert "online -> brokeroff" in body and "Time:     2026-11-01T12:00:00+00:00" in body
    assert "Current status: brokeroff (read back" in body
    assert NEXT_AFTER_EXCLUSION in body
    assert "blacklist.safety.exempt_sites" in body and "dry" not in body.lower()
    assert received.message["Auto-Submitted"] == "auto-generated" and received.message["Message-ID"]
    assert received.message["Content-Transfer-Encoding"] == "7bit"  # ASCII: readable as sent


def test_queue_link_when_the_monitor_url_has_no_job_placeholder(robot, smtp):
    port, server = smtp
    add(robot, "ANALY_B", T0)
    run(Notifier(settings(port, monitor_url="https://mon.example.org/q/{queue}"), ACTOR), robot, T0 + BURST)
    body = text_of(server.received[0].message)
    assert "Monitor:  https://mon.example.org/q/ANALY_B" in body and body.count("https://mon.example.org") == 1


def test_dry_run_decisions_are_marked_as_such(robot, smtp):
    port, server = smtp
    add(robot, "ANALY_B", T0, applied=False)
    assert run(Notifier(settings(port), ACTOR), robot, T0 + BURST) == ["[dry-run] ANALY_B auto-excluded at 12:00 UTC"]
    body = text_of(server.received[0].message)
    assert "nothing was changed" in body.lower() and "robot: excluded (dry-run: would set online -> brokeroff)" in body
    assert NEXT_AFTER_EXCLUSION not in body


def test_only_status_changes_of_this_robot_are_mailed(robot, smtp):
    port, server = smtp
    mine = add(robot, "ANALY_B", T0)
    person = add(robot, "ANALY_A1", T0, actor="alice")
    state = add(robot, "ANALY_A2", T0, kind="state", old="online", new="pending")
    assert run(Notifier(settings(port), ACTOR), robot, T0 + BURST) == ["ANALY_B auto-excluded at 12:00 UTC"]
    marks = notified(robot)
    assert marks[mine] and marks[person] is None and marks[state] is None


def test_silenced_site_is_marked_without_a_mail(robot, smtp, caplog):
    port, server = smtp
    with robot.sessions() as session:
        session.add(Silence(scope="site", name="SITE-A", actor="alice", reason="downtime", created_at=T0,
                            until=T0 + timedelta(days=1)))
        session.commit()
    silenced = [add(robot, "ANALY_A1", T0), add(robot, "ANALY_A2", T0)]
    other = add(robot, "ANALY_B", T0)
    caplog.set_level(logging.INFO, logger="blacklist.notify")
    notifier = Notifier(settings(port), ACTOR)
    assert run(notifier, robot, T0 + timedelta(minutes=1)) == []  # silenced ones need no burst to pass
    marks = notified(robot)
    assert all(marks[i] for i in silenced) and marks[other] is None
    assert "suppressed" in caplog.text
    assert run(notifier, robot, T0 + BURST) == ["ANALY_B auto-excluded at 12:00 UTC"]
    assert server.subjects() == ["ANALY_B auto-excluded at 12:00 UTC"]


def test_server_down_marks_nothing_and_a_later_call_sends(robot, smtp_server, closed_port):
    port = closed_port.getsockname()[1]  # nobody listens here yet
    ids = [add(robot, "ANALY_A1", T0), add(robot, "ANALY_B", T0)]
    notifier = Notifier(settings(port), ACTOR)
    assert run(notifier, robot, T0 + BURST) == []
    assert notified(robot) == {i: None for i in ids}
    _, server = smtp_server(closed_port)
    assert sorted(run(notifier, robot, T0 + BURST + timedelta(minutes=1))) == [
        "ANALY_A1 auto-excluded at 12:00 UTC", "ANALY_B auto-excluded at 12:00 UTC"]
    assert len(server.received) == 2 and all(notified(robot).values())


def test_gives_up_after_five_failed_attempts(robot, caplog, closed_port):
    port = closed_port.getsockname()[1]  # connections refused
    ids = [add(robot, "ANALY_A1", T0), add(robot, "ANALY_A2", T0)]
    notifier = Notifier(settings(port), ACTOR)
    for attempt in range(4):
        assert run(notifier, robot, T0 + BURST + timedelta(minutes=attempt)) == []
        assert notified(robot) == {i: None for i in ids}
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert run(notifier, robot, T0 + BURST + timedelta(minutes=4)) == []
    assert all(notified(robot).values())
    errors = [r for r in caplog.records if r.levelno == logging.ERROR and r.name == "blacklist.notify"]
    assert len(errors) == 1 and "gave up" in errors[0].getMessage() and "SITE-A" in errors[0].getMessage()


def test_login_with_password_works_and_password_is_never_logged(robot, smtp_server, caplog):
    caplog.set_level(logging.DEBUG)
    port, server = smtp_server(authenticator=accept("robot", PASSWORD), auth_require_tls=False)
    add(robot, "ANALY_B", T0)
    good = Notifier(settings(port, username="robot", password=PASSWORD), ACTOR)
    assert run(good, robot, T0 + BURST) == ["ANALY_B auto-excluded at 12:00 UTC"]
    assert len(server.received) == 1

    second = add(robot, "ANALY_A1", T0 + BURST)
    wrong = Notifier(settings(port, username="robot", password=PASSWORD + "-old"), ACTOR)
    assert run(wrong, robot, T0 + 2 * BURST) == []  # refused login: a failure to send
    assert notified(robot)[second] is None and len(server.received) == 1
    assert "log in as robot" in caplog.text
    assert PASSWORD not in caplog.text


def test_login_against_a_server_without_auth_is_a_failure_and_password_not_logged(robot, smtp, caplog):
    caplog.set_level(logging.DEBUG)
    port, server = smtp
    only = add(robot, "ANALY_B", T0)
    notifier = Notifier(settings(port, username="robot", password=PASSWORD), ACTOR)
    assert run(notifier, robot, T0 + BURST) == []
    assert notified(robot)[only] is None and server.received == []
    assert PASSWORD not in caplog.text and "could not mail site SITE-B" in caplog.text


def test_hostile_reason_is_sent_unchanged_as_plain_text(robot, smtp):
    port, server = smtp
    hostile = 'Re: [GGUS #123] <script>alert("pwned")</script> & <b>urgent</b> \u00fcber-site'
    add(robot, "ANALY_B", T0, reason=hostile)
    run(Notifier(settings(port), ACTOR), robot, T0 + BURST)
    (received,) = server.received
    assert [part.get_content_type() for part in received.message.walk()] == ["text/plain"]
    assert hostile in text_of(received.message)
    assert received.message["Content-Transfer-Encoding"] == "quoted-printable"  # not ASCII: encoded, decoded intact
    assert hostile not in received.message["Subject"]


def test_no_recipients_marks_notified_without_a_mail(robot, smtp, caplog):
    port, server = smtp
    with robot.sessions() as session:
        session.execute(update(Site).values(contacts=[]))
        session.commit()
    only = add(robot, "ANALY_B", T0)
    assert run(Notifier(settings(port, operations=[]), ACTOR), robot, T0 + BURST) == []
    assert notified(robot)[only] and server.received == [] and "no recipients" in caplog.text


def test_disabled_does_nothing(robot, smtp):
    port, server = smtp
    only = add(robot, "ANALY_B", T0)
    assert run(Notifier(settings(port, enabled=False), ACTOR), robot, T0 + timedelta(days=1)) == []
    assert notified(robot)[only] is None and server.received == []
