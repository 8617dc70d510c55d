"""Incremental IMAP fetching (robot.tickets.imap) against a tiny fake IMAP4rev1 server.

The fake speaks just the part of RFC 3501 that imapclient uses here (greeting, CAPABILITY, LOGIN,
EXAMINE/SELECT, UID SEARCH, UID FETCH with `{n}` literals, LOGOUT) plus Gmail's documented IMAP
extension (capability X-GM-EXT-1, fetch items X-GM-LABELS and X-GM-THRID).
"""
from __future__ import annotations

import json
import logging
import re
import socketserver
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest
from imapclient.exceptions import LoginError

from robot.tickets.imap import connect, fetch_new
from robot.tickets.mail import Message, Skip

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
USER = "shifter@example.org"
PASSWORD = "pw-Sup3rS3cret-xyz"


def raw(n: int, subject: str | None = None) -> bytes:
    subject = subject or f"Jobs fail at ANALY_SITE_{n}"
    return (f"From: User {n} <user{n}@example.org>\r\nTo: atlas-support@example.org\r\n"
            f"Subject: {subject}\r\nMessage-ID: <m{n}@example.org>\r\n"
            f"Date: Sat, 01 Mar 2025 10:0{n % 10}:00 +0000\r\n\r\n"
            f"Get error: stage-in failed ({n})\r\n").encode()


# ----------------------------------------------------------------------------- the fake server

@dataclass
class Mail:
    uid: int
    raw: bytes
    labels: tuple[str, ...] = ()
    thrid: int = 0


@dataclass
class FakeState:
    gmail: bool = True
    mails: list[Mail] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, raw_bytes: bytes, labels=(), thrid=0) -> int:
        with self.lock:
            uid = (self.mails[-1].uid if self.mails else 100) + 1
            self.mails.append(Mail(uid, raw_bytes, tuple(labels), thrid))
            return uid


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _uid_set(text: str, highest: int) -> set[int]:
    out: set[int] = set()
    for part in text.split(","):
        if ":" in part:
            a, b = (highest if x == "*" else int(x) for x in part.split(":"))
            out.update(range(min(a, b), max(a, b) + 1))
        else:
            out.add(highest if part == "*" else int(part))
    return out


class Handler(socketserver.StreamRequestHandler):
    timeout = 5

    def send(self, data: str | bytes) -> None:
        self.wfile.write(data.encode() if isinstance(data, str) else data)

    def handle(self) -> None:
        state: FakeState = self.server.state  # type: ignore[attr-defined]
        caps = "IMAP4rev1 " + ("X-GM-EXT-1 " if state.gmail else "") + "AUTH=PLAIN"
        self.send("* OK fake IMAP4rev1 server ready\r\n")
        while True:
            line = self.rfile.readline()
            if not line:
                return
            text = line.decode("utf-8", "replace").rstrip("\r\n")
            tag, _, rest = text.partition(" ")
            command, _, args = rest.partition(" ")
            command = command.upper()
            state.commands.append(text if command != "LOGIN" else f"{tag} LOGIN ...")
            if command == "CAPABILITY":
                self.send(f"* CAPABILITY {caps}\r\n{tag} OK CAPABILITY completed\r\n")
            elif command == "LOGIN":
                words = [q.replace('\\"', '"').replace("\\\\", "\\") if q else a
                         for q, a in re.findall(r'"((?:[^"\\]|\\.)*)"|(\S+)', args)]
                user, pw = (words + ["", ""])[:2]
                if user == USER and pw == PASSWORD:
                    self.send(f"{tag} OK LOGIN completed\r\n")
                else:
                    self.send(f"{tag} NO [AUTHENTICATIONFAILED] Invalid credentials\r\n")
            elif command in ("SELECT", "EXAMINE"):
                with state.lock:
                    n = len(state.mails)
                    nxt = (state.mails[-1].uid if state.mails else 100) + 1
                self.send(f"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n"
                          f"* {n} EXISTS\r\n* 0 RECENT\r\n* OK [UIDVALIDITY 7] UIDs valid\r\n"
                          f"* OK [UIDNEXT {nxt}] Predicted next UID\r\n"
                          f"{tag} OK [{'READ-ONLY' if command == 'EXAMINE' else 'READ-WRITE'}] "
                          f"{command} completed\r\n")
            elif command == "UID":
                sub, _, args = args.partition(" ")
                with state.lock:
                    mails = list(state.mails)
                highest = mails[-1].uid if mails else 0
                if sub.upper() == "SEARCH":
                    m = re.fullmatch(r"UID (\S+)", args.strip(), re.IGNORECASE)
                    if not m:
                        self.send(f"{tag} BAD unsupported search\r\n")
                        continue
                    wanted = _uid_set(m.group(1), highest) if mails else set()
                    hits = [str(x.uid) for x in mails if x.uid in wanted]
                    self.send(f"* SEARCH {' '.join(hits)}".rstrip() + f"\r\n{tag} OK SEARCH completed\r\n")
                elif sub.upper() == "FETCH":
                    uid_text, _, items = args.partition(" ")
                    wanted = _uid_set(uid_text, highest) if mails else set()
                    items = items.upper()
                    for seq, mail in enumerate(mails, 1):
                        if mail.uid not in wanted:
                            continue
                        parts = [f"UID {mail.uid}"]
                        if state.gmail and "X-GM-THRID" in items:
                            parts.append(f"X-GM-THRID {mail.thrid}")
                        if state.gmail and "X-GM-LABELS" in items:
                            parts.append("X-GM-LABELS (" + " ".join(_quote(x) for x in mail.labels) + ")")
                        head = f"* {seq} FETCH (" + " ".join(parts)
                        if "BODY.PEEK[]" in items or "BODY[]" in items:
                            self.send(head + f" BODY[] {{{len(mail.raw)}}}\r\n")
                            self.send(mail.raw)
                            self.send(")\r\n")
                        else:
                            self.send(head + ")\r\n")
                    self.send(f"{tag} OK FETCH completed\r\n")
                else:
                    self.send(f"{tag} BAD unsupported UID command\r\n")
            elif command == "NOOP":
                self.send(f"{tag} OK NOOP completed\r\n")
            elif command == "LOGOUT":
                self.send(f"* BYE logging out\r\n{tag} OK LOGOUT completed\r\n")
                return
            else:
                self.send(f"{tag} BAD unknown command\r\n")


class FakeIMAPServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


@pytest.fixture
def imap():
    """Start a fake server; yields a factory `(gmail=True) -> (state, port)`."""
    servers = []

    def start(gmail: bool = True):
        server = FakeIMAPServer(("127.0.0.1", 0), Handler)
        server.state = FakeState(gmail=gmail)  # type: ignore[attr-defined]
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()
        servers.append(server)
        return server.state, server.server_address[1]  # type: ignore[attr-defined]

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def login(port: int):
    return connect("127.0.0.1", port, USER, PASSWORD, ssl=False, timeout=5)


# ----------------------------------------------------------------------------- tests

def test_incremental_fetch_with_gmail_labels_and_threads(imap):
    state, port = imap(gmail=True)
    u1 = state.add(raw(1), labels=("\\Inbox", "Status/ACTIVE"), thrid=1234)
    u2 = state.add(raw(2), labels=("Status/WAITING",), thrid=5678)
    u3 = state.add(raw(3, "GGUS-Ticket-ID: #123456 transfers fail"), labels=("Escalated/GGUS",),
                   thrid=9999)
    client = login(port)
    try:
        items, last = fetch_new(client, "INBOX", 0, "imap:desk", NOW)
        assert last == u3
        assert all(isinstance(m, Message) for m in items)
        assert [m.message_id for m in items] == ["m1@example.org", "m2@example.org", "m3@example.org"]
        assert items[0].labels == ("\\Inbox", "Status/ACTIVE")
        assert items[0].thread_hint == "1234"
        assert items[1].labels == ("Status/WAITING",) and items[1].thread_hint == "5678"
        assert items[2].thread_hint == "ggus:123456"  # the GGUS hint wins over the Gmail thread
        assert items[2].labels == ("Escalated/GGUS",)
        assert all(m.source == "imap:desk" for m in items)
        # read-only, and never marks mail as seen
        assert any(" EXAMINE " in c for c in state.commands)
        assert any("UID FETCH" in c and "BODY.PEEK[]" in c and "X-GM-LABELS" in c
                   for c in state.commands)

        again, last2 = fetch_new(client, "INBOX", last, "imap:desk", NOW)
        assert again == [] and last2 == u3  # the server answers "N:*" with the last UID: dropped

        u4 = state.add(raw(4), labels=("Status/URGENT",), thrid=4242)
        new, last3 = fetch_new(client, "INBOX", last2, "imap:desk", NOW)
        assert last3 == u4
        assert [m.message_id for m in new] == ["m4@example.org"]
        assert new[0].labels == ("Status/URGENT",) and new[0].thread_hint == "4242"
    finally:
        client.logout()
    assert u1 < u2 < u3


def test_batches_cover_all_messages(imap):
    state, port = imap(gmail=True)
    uids = [state.add(raw(n), labels=(f"L{n}",), thrid=n) for n in range(1, 6)]
    client = login(port)
    try:
        items, last = fetch_new(client, "INBOX", 0, "imap:desk", NOW, batch=2)
    finally:
        client.logout()
    assert last == uids[-1]
    assert [m.labels for m in items] == [(f"L{n}",) for n in range(1, 6)]
    assert sum("UID FETCH" in c for c in state.commands) == 3


def test_server_without_gmail_extension(imap):
    state, port = imap(gmail=False)
    state.add(raw(1), labels=("Status/ACTIVE",), thrid=1234)
    last_uid = state.add(raw(2))
    client = login(port)
    try:
        items, last = fetch_new(client, "INBOX", 0, "imap:plain", NOW)
    finally:
        client.logout()
    assert last == last_uid
    assert [m.message_id for m in items] == ["m1@example.org", "m2@example.org"]
    assert all(m.labels == () and m.thread_hint is None for m in items)
    fetches = [c for c in state.commands if "UID FETCH" in c]
    assert fetches and not any("X-GM" in c for c in fetches)


def test_empty_mailbox(imap):
    _state, port = imap(gmail=True)
    client = login(port)
    try:
        assert fetch_new(client, "INBOX", 0, "imap:desk", NOW) == ([], 0)
        assert fetch_new(client, "INBOX", 17, "imap:desk", NOW) == ([], 17)
    finally:
        client.logout()


def test_garbage_message_becomes_skip(imap):
    state, port = imap(gmail=True)
    state.add(raw(1), labels=("Status/ACTIVE",), thrid=1)
    bad = state.add(b"\x00\x01 this is not a mail at all\r\n", labels=("Junk",), thrid=2)
    good = state.add(raw(3), thrid=3)
    client = login(port)
    try:
        items, last = fetch_new(client, "INBOX", 0, "imap:desk", NOW)
    finally:
        client.logout()
    assert last == good
    assert isinstance(items[0], Message) and isinstance(items[2], Message)
    assert items[1] == Skip("imap:desk", bad, "no headers")


def test_password_is_never_logged(imap, caplog):
    state, port = imap(gmail=True)
    state.add(raw(1), labels=("Status/ACTIVE",), thrid=1)
    caplog.set_level(logging.DEBUG)
    client = login(port)
    try:
        fetch_new(client, "INBOX", 0, "imap:desk", NOW)
    finally:
        client.logout()
    with pytest.raises(LoginError):
        connect("127.0.0.1", port, USER, "wrong-" + PASSWORD, ssl=False, timeout=5)
    assert caplog.records  # something was logged at all (imapclient traces commands at DEBUG)
    assert PASSWORD not in caplog.text


def test_tickets_import_imap_is_incremental(imap, tmp_path):
    """The CLI reads the mailbox, remembers the last UID, and reads only new mail next time."""
    from click.testing import CliRunner

    from robot.cli import main
    from robot.storage.database import make_engine, upgrade

    state, port = imap()
    for n in range(3):
        state.add(raw(n), labels=("Status/ACTIVE",), thrid=500 + n)
    config = tmp_path / "robot.yaml"
    config.write_text(f"data_dir: {tmp_path}\ntickets:\n  imap: {{host: 127.0.0.1, port: {port}, ssl: false, "
                      f"username: {USER}, password: {PASSWORD}, folder: INBOX}}\n")
    upgrade(make_engine(f"sqlite:///{tmp_path / 'healthrobot.db'}"))
    run = lambda: CliRunner().invoke(main, ["--config", str(config), "tickets", "import", "imap", "--json"])  # noqa: E731
    first = run()
    assert first.exit_code == 0, first.output
    assert json.loads(first.output)["new_messages"] == 3
    assert json.loads(run().output)["new_messages"] == 0
    state.add(raw(7), labels=("Status/WAITING",), thrid=900)
    assert json.loads(run().output)["new_messages"] == 1
