"""Parse support-desk mail (hostile input) into plain, immutable `Message` records.

`parse_message` never raises anything but `MessageSkipped`: odd charsets are decoded with
errors="replace", malformed or missing headers get defaults, HTML-only bodies are converted to
text (never kept as HTML), attachments are ignored (only their filenames are noted), long bodies
are truncated and raw messages over `MAX_RAW_BYTES` are skipped.
"""
from __future__ import annotations

import codecs
import email
import email.message
import functools
import email.header
import email.policy
import email.utils
import hashlib
import mailbox
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from html.parser import HTMLParser
from pathlib import Path
from typing import Iterator

from robot.clock import as_utc

MAX_RAW_BYTES = 20 * 1024 * 1024
MAX_BODY_CHARS = 100_000
MAX_SUBJECT_CHARS = 1_000
MAX_REFERENCES = 200

GGUS_SUBJECT_RE = re.compile(r"GGUS[-_ ]?Ticket[-_ ]?ID\s*:?\s*#?\s*(\d{3,10})", re.IGNORECASE)
_MSGID_RE = re.compile(r"<([^<>\s]{1,500})>")
_BLANKS_RE = re.compile(r"(?:\s|[\x00-\x08\x0b-\x1f\x7f])+")


@dataclass(frozen=True)
class Message:
    source: str
    message_id: str
    in_reply_to: str | None
    references: tuple[str, ...]
    thread_hint: str | None
    subject: str
    sender: str
    date: datetime
    labels: tuple[str, ...]
    body: str
    truncated: bool
    attachments: tuple[str, ...] = ()


class MessageSkipped(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Skip:
    source: str
    position: int | str
    reason: str


# --------------------------------------------------------------------------- text helpers

class _TextExtractor(HTMLParser):
    _BLOCK = {"p", "br", "div", "tr", "li", "ul", "ol", "table", "blockquote", "pre", "hr",
              "h1", "h2", "h3", "h4", "h5", "h6", "title", "section", "article", "header", "footer"}
    _DROP = {"script", "style", "head", "template", "noscript"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.drop_depth = 0
        self.href: str | None = None
        self.link_text: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            href = next((v for k, v in attrs if k == "href" and v), None)
            self.href = href.strip() if href and href.strip().lower().startswith(("http://", "https://")) else None
            self.link_text = []
        if tag in self._DROP:
            self.drop_depth += 1
        elif tag in self._BLOCK:
            self.parts.append("\n")

    def handle_startendtag(self, tag, attrs):
        if tag in self._BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag):
        if tag == "a" and self.href:  # keep link targets (job links matter), as plain text
            if self.href not in "".join(self.link_text):
                self.parts.append(f" ({self.href})")
            self.href = None
        if tag in self._DROP:
            self.drop_depth = max(0, self.drop_depth - 1)
        elif tag in self._BLOCK:
            self.parts.append("\n")

    def handle_data(self, data):
        if not self.drop_depth:
            self.parts.append(data)
            if self.href:
                self.link_text.append(data)


def html_to_text(html: str) -> str:
    """HTML -> plain text: tags dropped, entities unescaped, script/style content dropped."""
    parser = _TextExtractor()
    try:
        parser.feed(html)
        parser.close()
    except Exception:  # the stdlib parser is lenient; be safe anyway
        pass
    text = "".join(parser.parts).replace("\xa0", " ").replace("\r\n", "\n").replace("\r", "\n")
    lines = [re.sub(r"[ \t]+", " ", line).strip() for line in text.split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def limit_body(text: str, limit: int = MAX_BODY_CHARS) -> tuple[str, bool]:
    """Normalise newlines, drop NULs, truncate to `limit` characters; returns (text, truncated)."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")
    if len(text) > limit:
        return text[:limit], True
    return text, False


def clean_line(value: str, limit: int = MAX_SUBJECT_CHARS) -> str:
    """One line: each run of white space and control characters (line breaks included) one space."""
    if value.isprintable() and "  " not in value:  # its only blanks are single spaces: nothing to replace
        return value.strip()[:limit]
    return _BLANKS_RE.sub(" ", value).strip()[:limit]


def normalise_message_id(value: str | None) -> str | None:
    if not value:
        return None
    match = _MSGID_RE.search(value)
    if match:
        return match.group(1)
    value = value.strip().strip("<>").strip()
    if not value or any(c.isspace() for c in value):
        token = value.split()[0] if value.split() else ""
        value = token
    return value[:500] or None


def parse_message_ids(value: str | None) -> tuple[str, ...]:
    if not value:
        return ()
    ids = _MSGID_RE.findall(value)
    if not ids:
        ids = [t.strip("<>,") for t in value.split()]
    out: list[str] = []
    for i in ids:
        if i and i not in out:
            out.append(i)
    return tuple(out[-MAX_REFERENCES:])


def ggus_hint(subject: str) -> str | None:
    match = GGUS_SUBJECT_RE.search(subject or "")
    return f"ggus:{int(match.group(1))}" if match else None


# --------------------------------------------------------------------------- parsing

def _raw_headers(msg) -> dict[str, str]:
    """Each header's raw text by lower-case name, the first occurrence of each (no structured parsing,
    which may raise on malformed input): read once, then looked up by name."""
    headers: dict[str, str] = {}
    for key, value in msg.raw_items():
        headers.setdefault(key.lower(), str(value))
    return headers


def _decoded(raw: str | None) -> str | None:
    """A header's text with RFC 2047 encoded words undone by hand, tolerating unknown charsets."""
    if raw is None or "=?" not in raw:  # no encoded word: decode_header would return it as it is
        return raw
    try:
        parts = []
        for chunk, charset in email.header.decode_header(raw):
            if isinstance(chunk, bytes):
                parts.append(_decode(chunk, charset))
            else:
                parts.append(chunk)
        return "".join(parts)
    except Exception:
        return raw


def _decode(payload: bytes, charset: str | None) -> str:
    name = "utf-8"
    if charset:
        try:
            name = codecs.lookup(charset.strip().strip('"')).name
        except (LookupError, ValueError, TypeError):
            name = "utf-8"
    try:
        return payload.decode(name, errors="replace")
    except Exception:
        return payload.decode("utf-8", errors="replace")


# A date as mailers write it ("Fri, 20 Nov 2026 12:34:56 +0000"), read at once; any other spelling
# goes to email.utils, which reads this one to the same time (tests/test_tickets.py compares them).
_PLAIN_DATE = re.compile(r"(?:(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), )?(\d{1,2}) (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) "
                         r"(\d{4}) (\d\d):(\d\d):(\d\d) ([+-])(\d\d)(\d\d)")
_MONTHS = {name: number for number, name in enumerate(
    ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), start=1)}


def _parse_date(headers: dict[str, str], fallback: datetime) -> datetime:
    raw = headers.get("date")
    if raw:
        line = clean_line(raw)
        plain = _PLAIN_DATE.fullmatch(line)
        if plain:
            day, month, year, hour, minute, second, sign, zone_h, zone_m = plain.groups()
            offset = (int(zone_h) * 3600 + int(zone_m) * 60) * (-1 if sign == "-" else 1)
            try:
                return as_utc(datetime(int(year), _MONTHS[month], int(day), int(hour), int(minute), int(second),
                                       tzinfo=timezone(timedelta(seconds=offset))))
            except ValueError:
                pass
        try:
            return as_utc(email.utils.parsedate_to_datetime(line))
        except Exception:
            pass
    return as_utc(fallback)


# A bare address of the usual characters, or one after a plain display name: parseaddr would return
# it unchanged, so it is taken as it is (parseaddr is a third of the parsing time of a short mail).
_ADDRESS = r"[A-Za-z0-9_+-]+(?:\.[A-Za-z0-9_+-]+)*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
_PLAIN_ADDRESS = re.compile(rf"(?P<bare>{_ADDRESS})|[A-Za-z0-9 _'-]*<(?P<named>{_ADDRESS})>")


def _parse_sender(headers: dict[str, str]) -> str:
    raw = _decoded(headers.get("from")) or headers.get("from") or ""
    line = clean_line(raw)
    plain = _PLAIN_ADDRESS.fullmatch(line)
    if plain:
        addr = plain.group("bare") or plain.group("named")
    else:
        try:
            _, addr = email.utils.parseaddr(line)
        except Exception:
            addr = ""
    return clean_line(addr or raw, 320).lower()


def _type_and_charset(part) -> tuple[str, str | None]:
    """A part's content type and charset as the email package reads them, from a cache by the header's
    text (an archive repeats a few Content-Type values, and reading their parameters is slow)."""
    value = next((v for k, v in part.raw_items() if k.lower() == "content-type"), None)
    if not isinstance(value, str):  # none: the default type depends on the enclosing part
        return part.get_content_type(), _charset(part)
    return _content_type(value)


@functools.lru_cache(maxsize=1024)
def _content_type(value: str) -> tuple[str, str | None]:
    part = email.message.Message(policy=email.policy.compat32)
    part["Content-Type"] = value
    return part.get_content_type(), _charset(part)


def _charset(part) -> str | None:
    try:
        return part.get_content_charset()
    except Exception:
        return None


def _body_and_attachments(msg) -> tuple[str, tuple[str, ...]]:
    plain: list[str] = []
    html: list[str] = []
    attachments: list[str] = []
    for part in msg.walk():
        try:
            if part.is_multipart():
                continue
            filename = disposition = None
            if part.get("content-disposition") is not None or "name" in str(part.get("content-type", "")).lower():
                try:  # a file name is a Content-Disposition filename or a Content-Type name parameter
                    filename = part.get_filename()
                except Exception:
                    filename = None
                try:
                    disposition = part.get_content_disposition()
                except Exception:
                    pass
            if filename or disposition == "attachment":
                attachments.append(clean_line(filename or "(unnamed)", 255))
                continue
            ctype, charset = _type_and_charset(part)
            if ctype not in ("text/plain", "text/html"):
                continue
            payload = part.get_payload(decode=True)
            if payload is None:
                payload = str(part.get_payload() or "").encode("utf-8", "replace")
            text = _decode(payload, charset)
            (plain if ctype == "text/plain" else html).append(text)
        except MessageSkipped:
            raise
        except Exception:
            continue
    if plain:
        body = "\n".join(plain)
    elif html:
        body = "\n".join(html_to_text(h) for h in html)
    else:
        body = ""
    return body, tuple(attachments)


def parse_message(raw: bytes, source: str, fallback_date: datetime,
                  max_bytes: int = MAX_RAW_BYTES) -> Message:
    """Parse one raw RFC 822 message; raises only `MessageSkipped`."""
    if not isinstance(raw, (bytes, bytearray)):
        raise MessageSkipped("not bytes")
    if len(raw) > max_bytes:
        raise MessageSkipped(f"message too large ({len(raw)} bytes > {max_bytes})")
    if not raw.strip():
        raise MessageSkipped("empty message")
    try:
        return _parse(bytes(raw), source, fallback_date)
    except MessageSkipped:
        raise
    except Exception as exc:  # safety net: hostile input never escapes as another error
        raise MessageSkipped(f"unparsable message ({type(exc).__name__})") from None


def _parse(raw: bytes, source: str, fallback_date: datetime) -> Message:
    # compat32 leaves headers raw (they are decoded by hand below): several times faster than
    # policy.default's header objects, and just as tolerant of hostile input.
    plain = _plain_message(raw)
    if plain is None:
        msg = email.message_from_bytes(raw, policy=email.policy.compat32)
        headers = _raw_headers(msg)
    else:
        headers, body = plain
    if not headers:
        raise MessageSkipped("no headers")
    subject = clean_line(_decoded(headers.get("subject")) or "")
    message_id = normalise_message_id(headers.get("message-id"))
    if not message_id:
        message_id = f"sha256-{hashlib.sha256(raw).hexdigest()[:32]}@synthesised"
    in_reply_to_ids = parse_message_ids(headers.get("in-reply-to"))
    references = parse_message_ids(headers.get("references"))
    # The GGUS number wins over the Gmail thread id: it is shared by mail and the GGUS API.
    hint = ggus_hint(subject)
    if hint is None:
        thrid = clean_line(headers.get("x-gm-thrid") or "", 100)
        hint = thrid or None
    labels: list[str] = []
    for label in (_decoded(headers.get("x-gmail-labels")) or "").split(","):
        label = clean_line(label.strip().strip('"'), 200)
        if label and label not in labels:
            labels.append(label)
    body, attachments = _body_and_attachments(msg) if plain is None else (body, ())
    body, truncated = limit_body(body)
    return Message(
        source=source,
        message_id=message_id,
        in_reply_to=in_reply_to_ids[0] if in_reply_to_ids else None,
        references=references,
        thread_hint=hint,
        subject=subject,
        sender=_parse_sender(headers),
        date=_parse_date(headers, fallback_date),
        labels=tuple(labels),
        body=body,
        truncated=truncated,
        attachments=attachments,
    )


# A header field as the email package's compat32 policy reads it: its name, then its value (less the
# blanks after the colon and the last line end), continued on the lines that start with a blank.
_FIELD = re.compile(r"([\041-\071\073-\176]+):[ \t]*(.*(?:\n[ \t].*)*)\n")
_DECODED_ENCODINGS = {"quoted-printable", "base64", "x-uuencode", "uuencode", "uue", "x-uue"}


def _plain_message(raw: bytes) -> tuple[dict[str, str], str] | None:
    """The headers (as `_raw_headers` gives them) and the body text of the usual support mail: one
    text/plain or text/html part, no transfer encoding to undo, no attachment, well-formed ASCII header
    lines; read without the email package, as it reads them. None for any other message, which the
    email package parses (tests/test_ticket_mail.py compares the two on generated mail)."""
    end = raw.find(b"\n\n")
    if end <= 0:
        return None
    head = raw[:end + 1]
    if not head.isascii() or b"\r" in head:
        return None
    headers: dict[str, str] = {}
    fields, at = head.decode("ascii"), 0
    while at < len(fields):
        field = _FIELD.match(fields, at)
        if field is None:
            return None
        headers.setdefault(field.group(1).lower(), field.group(2).rstrip("\r\n"))  # the first of a name wins
        at = field.end()
    if "content-disposition" in headers:
        return None
    content_type = headers.get("content-type")
    if content_type is not None and "name" in content_type.lower():
        return None
    ctype, charset = ("text/plain", None) if content_type is None else _content_type(content_type)
    if ctype not in ("text/plain", "text/html") or \
            headers.get("content-transfer-encoding", "").lower() in _DECODED_ENCODINGS:
        return None
    text = _decode(raw[end + 2:], charset)
    return headers, text if ctype == "text/plain" else html_to_text(text)


# --------------------------------------------------------------------------- archives

def _read_box(box: mailbox.Mailbox, source: str, keys, fallback_date: datetime,
              max_bytes: int) -> Iterator[Message | Skip]:
    for position, key in keys:
        try:
            raw = box.get_bytes(key)
        except Exception as exc:
            yield Skip(source, position, f"unreadable ({type(exc).__name__})")
            continue
        try:
            yield parse_message(raw, source, fallback_date, max_bytes=max_bytes)
        except MessageSkipped as exc:
            yield Skip(source, position, exc.reason)


def read_mbox(path, fallback_date: datetime | None = None,
              max_bytes: int = MAX_RAW_BYTES) -> Iterator[Message | Skip]:
    """Messages of an mbox file in file order; bad ones come out as `Skip` (position = index)."""
    path = Path(path)
    source = f"mbox:{path}"
    fallback = fallback_date or datetime.fromtimestamp(path.stat().st_mtime, timezone.utc)
    position = -1
    try:
        for position, raw in enumerate(mbox_messages(path)):
            try:
                yield parse_message(raw, source, fallback, max_bytes=max_bytes)
            except MessageSkipped as exc:
                yield Skip(source, position, exc.reason)
    except OSError as exc:
        yield Skip(source, position + 1, f"unreadable ({type(exc).__name__})")


def mbox_messages(path: Path) -> Iterator[bytes]:
    """Each message of an mbox file as mailbox.mbox gives it (`get_bytes` of each key of its table of
    contents: the lines after a "From " line, less the blank line before the next one), in one pass
    over the file's lines instead of a table of contents and a seek and a read per message."""
    with path.open("rb") as handle:
        lines: list[bytes] | None = None  # None before the first "From " line: not a message
        for line in handle:
            if line.startswith(b"From "):
                if lines is not None:
                    yield _without_separator(lines)
                lines = []
            elif lines is not None:
                lines.append(line)
        if lines is not None:
            yield _without_separator(lines)


def _without_separator(lines: list[bytes]) -> bytes:
    if lines and lines[-1] == b"\n":
        lines.pop()
    return b"".join(lines)


def read_maildir(path, fallback_date: datetime | None = None,
                 max_bytes: int = MAX_RAW_BYTES) -> Iterator[Message | Skip]:
    """Messages of a Maildir (sorted by key); bad ones come out as `Skip` (position = key)."""
    path = Path(path)
    source = f"maildir:{path}"
    fallback = fallback_date or datetime.fromtimestamp(path.stat().st_mtime, timezone.utc)
    box = mailbox.Maildir(str(path), factory=None, create=False)
    keys = sorted(box.iterkeys())
    yield from _read_box(box, source, ((k, k) for k in keys), fallback, max_bytes)
