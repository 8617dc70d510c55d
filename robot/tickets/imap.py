"""Live support-desk mail over IMAP (imapclient), fetched incrementally by UID.

    client = connect("imap.gmail.com", 993, user, password)
    items, last_uid = fetch_new(client, "INBOX", since_uid=0, source="imap:desk", fallback_date=now)
    ...  # store last_uid; the next call passes it as since_uid

The folder is opened read-only (EXAMINE) and bodies are fetched with `BODY.PEEK[]`, so the robot
never marks mail as seen. On Gmail (capability `X-GM-EXT-1`) the message's Gmail labels are merged
into `Message.labels` and the Gmail thread id becomes `Message.thread_hint` (a GGUS hint from the
subject wins: it is shared with the GGUS API). Unparsable messages come back as `Skip` records
whose position is the IMAP UID. UIDs are only meaningful with the folder's UIDVALIDITY; if the
server changes it, start again from `since_uid=0`.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import replace
from datetime import datetime

from imapclient import IMAPClient
from imapclient.imap_utf7 import decode as decode_utf7

from robot.tickets.mail import Message, MessageSkipped, Skip, clean_line, parse_message

log = logging.getLogger(__name__)

GMAIL_CAPABILITY = "X-GM-EXT-1"
BODY = b"BODY[]"
GM_LABELS = b"X-GM-LABELS"
GM_THRID = b"X-GM-THRID"


def connect(host: str, port: int, username: str, password: str, ssl: bool = True,
            timeout: float = 30) -> IMAPClient:
    """Open an IMAP connection and log in; the password is never logged."""
    client = IMAPClient(host, port=port, ssl=ssl, timeout=timeout)
    try:
        client.login(username, password)
    except Exception:
        log.warning("IMAP login to %s:%s as %s failed", host, port, username)
        with contextlib.suppress(OSError):
            client.shutdown()
        raise
    log.info("IMAP connected to %s:%s as %s", host, port, username)
    return client


def _label(value) -> str:
    if isinstance(value, bytes):
        try:
            value = decode_utf7(value)
        except (ValueError, UnicodeError):
            value = value.decode("utf-8", errors="replace")
        if isinstance(value, bytes):
            value = value.decode("utf-8", errors="replace")
    return clean_line(str(value), 200)


def _with_gmail(message: Message, data: dict) -> Message:
    labels = list(message.labels)
    raw_labels = data.get(GM_LABELS) or ()
    if not isinstance(raw_labels, (tuple, list)):
        raw_labels = (raw_labels,)
    for value in raw_labels:
        label = _label(value)
        if label and label not in labels:
            labels.append(label)
    hint = message.thread_hint
    thrid = data.get(GM_THRID)
    if thrid is not None and not (hint or "").startswith("ggus:"):
        thrid = thrid.decode("ascii", "replace") if isinstance(thrid, bytes) else str(thrid)
        hint = clean_line(thrid, 100) or hint
    if tuple(labels) == message.labels and hint == message.thread_hint:
        return message
    return replace(message, labels=tuple(labels), thread_hint=hint)


def fetch_new(client: IMAPClient, folder: str, since_uid: int, source: str,
              fallback_date: datetime, batch: int = 200) -> tuple[list[Message | Skip], int]:
    """Messages of `folder` with UID > `since_uid`, in UID order, and the highest UID seen.

    Returns `(items, last_uid)`: items are `Message`s, or `Skip(source, uid, reason)` for messages
    that cannot be parsed; `last_uid` is `since_uid` when nothing is new.
    """
    if batch < 1:
        raise ValueError("batch must be >= 1")
    since_uid = max(0, int(since_uid))
    client.select_folder(folder, readonly=True)
    # "N:*" always matches the highest UID, even when it is below N: drop those.
    uids = sorted(uid for uid in client.search(["UID", f"{since_uid + 1}:*"]) if uid > since_uid)
    if not uids:
        return [], since_uid
    gmail = client.has_capability(GMAIL_CAPABILITY)
    items_wanted = ["BODY.PEEK[]"] + (["X-GM-LABELS", "X-GM-THRID"] if gmail else [])
    out: list[Message | Skip] = []
    for start in range(0, len(uids), batch):
        chunk = uids[start:start + batch]
        response = client.fetch(chunk, items_wanted)
        for uid in chunk:
            data = response.get(uid)
            if data is None or data.get(BODY) is None:
                out.append(Skip(source, uid, "not returned by the server"))
                continue
            try:
                message = parse_message(data[BODY], source, fallback_date)
            except MessageSkipped as exc:
                out.append(Skip(source, uid, exc.reason))
                continue
            out.append(_with_gmail(message, data) if gmail else message)
    log.debug("IMAP %s: %d new message(s) after UID %d", folder, len(out), since_uid)
    return out, uids[-1]
