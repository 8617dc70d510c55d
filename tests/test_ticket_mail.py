"""Mail parsing, archive reading, threading and the sample archive (robot.tickets)."""
from __future__ import annotations

import mailbox
from datetime import datetime, timedelta, timezone
from email.message import EmailMessage

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from robot.tickets.mail import (MAX_BODY_CHARS, Message, MessageSkipped, Skip, html_to_text,
                                parse_message, read_maildir, read_mbox)
from robot.tickets.sample import SUPPORT, write_sample_mbox
from robot.tickets.threads import normalise_subject, thread

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=timezone.utc)


def raw(subject="Jobs fail at ANALY_MWT2_UCORE", body="Get error: stage-in failed", *,
        msgid="<a1@example.org>", date="Sat, 01 Mar 2025 10:00:00 +0100", sender="Alice <Alice@CERN.ch>",
        extra="") -> bytes:
    head = f"From: {sender}\nTo: atlas-support@example.org\nSubject: {subject}\n"
    if msgid:
        head += f"Message-ID: {msgid}\n"
    if date:
        head += f"Date: {date}\n"
    return (head + extra + "\n" + body + "\n").encode()


def msg(mid, subject="subject", date=NOW, *, irt=None, refs=(), hint=None, labels=(),
        sender="user@example.org") -> Message:
    return Message(source="test", message_id=mid, in_reply_to=irt, references=tuple(refs),
                   thread_hint=hint, subject=subject, sender=sender, date=date,
                   labels=tuple(labels), body="", truncated=False)


# ----------------------------------------------------------------------------- parsing

def test_plain_message():
    m = parse_message(raw(extra="In-Reply-To: <p0@x>\nReferences: <r1@x> <p0@x>\n"
                                "X-Gmail-Labels: Status/ACTIVE,Category/Site Problem\n"
                                "X-GM-THRID: 1790000000000000001\n"), "mbox:/a", NOW)
    assert m.message_id == "a1@example.org"
    assert m.in_reply_to == "p0@x" and m.references == ("r1@x", "p0@x")
    assert m.sender == "alice@cern.ch"
    assert m.subject == "Jobs fail at ANALY_MWT2_UCORE"
    assert m.date == datetime(2025, 3, 1, 9, 0, tzinfo=timezone.utc)
    assert m.date.tzinfo is timezone.utc or m.date.utcoffset() == timedelta(0)
    assert m.labels == ("Status/ACTIVE", "Category/Site Problem")
    assert m.thread_hint == "1790000000000000001"
    assert "Get error: stage-in failed" in m.body and not m.truncated


def test_ggus_subject_gives_hint():
    m = parse_message(raw(subject="Fwd: GGUS-Ticket-ID: #165432 ATLAS transfers failing"), "s", NOW)
    assert m.thread_hint == "ggus:165432"


def test_html_only_converted_to_text():
    html = ("<html><head><style>p{color:red}</style></head><body><p>Jobs at <b>ANALY_FZK</b> "
            "fail &amp; crash</p><script>alert(1)</script>"
            "<a href='https://bigpanda.cern.ch/job?pandaid=1234567890'>job</a></body></html>")
    m = parse_message(raw(body=html, extra="Content-Type: text/html; charset=utf-8\n"), "s", NOW)
    assert "Jobs at ANALY_FZK fail & crash" in m.body
    assert "<" not in m.body.replace("<b>", "") and "alert" not in m.body and "color" not in m.body
    assert "pandaid=1234567890" in m.body


def test_plain_part_preferred_and_attachment_ignored():
    em = EmailMessage()
    em["From"] = "bob@example.org"
    em["Subject"] = "log attached"
    em.set_content("plain text body")
    em.add_alternative("<p>html body</p>", subtype="html")
    em.add_attachment(b"\x00BINARYLOG" * 100, maintype="application", subtype="octet-stream",
                      filename="pilotlog.tgz")
    m = parse_message(em.as_bytes(), "s", NOW)
    assert m.body.strip() == "plain text body"
    assert m.attachments == ("pilotlog.tgz",)
    assert "BINARYLOG" not in m.body


def test_odd_and_unknown_charsets():
    body = "Grüße aus Zürich".encode("latin-1")
    data = (b"From: x@y.z\nSubject: =?x-unknown-charset?q?caf=E9?=\n"
            b"Content-Type: text/plain; charset=x-no-such-charset\n\n" + body)
    m = parse_message(data, "s", NOW)
    assert "Gr" in m.body and "rich" in m.body
    latin = (b"From: x@y.z\nSubject: =?iso-8859-1?q?Gr=FC=DFe?=\n"
             b"Content-Type: text/plain; charset=iso-8859-1\n\n" + body)
    m = parse_message(latin, "s", NOW)
    assert m.subject == "Grüße" and m.body.strip() == "Grüße aus Zürich"


@given(st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(2100, 1, 1)),
       st.sampled_from([0, 60, -300, 330, 845, -720, 1439, -1439]), st.booleans(), st.booleans())
@settings(max_examples=300, deadline=None)
def test_dates_read_at_once_are_the_times_email_utils_reads(moment, minutes, weekday, negative_zero):
    """The usual date spelling is read without email.utils, to the very same time."""
    import email.utils

    text = email.utils.format_datetime(moment.replace(microsecond=0, tzinfo=timezone(timedelta(minutes=minutes))))
    text = text if weekday else text[5:]
    text = text.replace("+0000", "-0000") if negative_zero else text
    m = parse_message(raw(date=text), "s", NOW)
    expected = email.utils.parsedate_to_datetime(text)
    expected = expected.replace(tzinfo=timezone.utc) if expected.tzinfo is None else expected
    assert m.date == expected and m.date.tzinfo is timezone.utc


def test_odd_dates_fall_back_as_before():
    for text in ("Fri, 31 Feb 2026 12:00:00 +0000", "Fri, 20 Nov 2026 25:00:00 +0000",
                 "Fri, 20 Nov 2026 12:00:00 +9999"):
        assert parse_message(raw(date=text), "s", NOW).date == NOW  # email.utils cannot read them either
    assert parse_message(raw(date="20 nov 2026 12:00:00 GMT"), "s", NOW).date == \
        datetime(2026, 11, 20, 12, 0, tzinfo=timezone.utc)


def test_missing_message_id_and_date():
    data = raw(msgid=None, date=None)
    a = parse_message(data, "s", NOW)
    b = parse_message(data, "s", NOW)
    assert a.message_id == b.message_id and a.message_id.endswith("@synthesised")
    assert a.date == NOW
    c = parse_message(raw(msgid=None, date="not a date", body="other"), "s", NOW)
    assert c.message_id != a.message_id and c.date == NOW
    naive = parse_message(raw(date=None), "s", datetime(2025, 1, 1))
    assert naive.date == datetime(2025, 1, 1, tzinfo=timezone.utc)


def test_huge_body_truncated_and_huge_raw_skipped():
    m = parse_message(raw(body="x" * (MAX_BODY_CHARS + 5000)), "s", NOW)
    assert m.truncated and len(m.body) == MAX_BODY_CHARS
    try:
        parse_message(raw(body="y" * 2000), "s", NOW, max_bytes=1000)
    except MessageSkipped as exc:
        assert "too large" in exc.reason
    else:
        raise AssertionError("not skipped")


def test_empty_and_headerless_skipped():
    for data in (b"", b"   \n", b"\x00\x01\x02 garbage without headers"):
        try:
            parse_message(data, "s", NOW)
        except MessageSkipped as exc:
            assert exc.reason
        else:
            raise AssertionError(data)


def test_html_to_text_entities_and_blocks():
    assert html_to_text("a&nbsp;b<br>c&lt;d&gt;<!-- hidden --><style>x</style>") == "a b\nc<d>"


header_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=80)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2000))
def test_random_bytes_never_crash(data):
    try:
        assert isinstance(parse_message(data, "fuzz", NOW), Message)
    except MessageSkipped as exc:
        assert isinstance(exc.reason, str)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(["From", "Subject", "Date", "Message-ID", "In-Reply-To",
                                        "References", "X-Gmail-Labels", "X-GM-THRID",
                                        "Content-Type", "Content-Transfer-Encoding",
                                        "Content-Disposition", "MIME-Version"]), header_text),
       st.binary(max_size=500))
def test_random_headers_never_crash(headers, body):
    data = b"".join(f"{k}: {v}".encode("utf-8", "surrogateescape") + b"\n"
                    for k, v in headers.items()) + b"\n" + body
    try:
        m = parse_message(data, "fuzz", NOW)
    except MessageSkipped:
        return
    assert m.date.utcoffset() == timedelta(0) and m.message_id
    assert len(m.body) <= MAX_BODY_CHARS


field_names = st.sampled_from(["From", "Subject", "Date", "Message-ID", "In-Reply-To", "References", "X-Gmail-Labels",
                               "X-GM-THRID", "MIME-Version", "X-Odd", "From ", "Content-Type", "Content-Disposition"])
fields = st.one_of(
    st.tuples(st.sampled_from(["Content-Type", "content-type"]), st.sampled_from([
        "text/plain", "text/plain; charset=utf-8", 'text/plain; charset="ISO-8859-1"', "TEXT/HTML",
        "text/html; charset=utf-8", "text/plain; charset*=utf-8''x", "text/plain; name=a.txt", "text/plain;\n charset=latin1",
        "multipart/mixed; boundary=b", "message/rfc822", "application/pdf", "text"])),
    st.tuples(st.just("Content-Transfer-Encoding"), st.sampled_from(["base64", "Quoted-Printable", "8bit", "x-uue", "base64 "])),
    st.tuples(field_names, st.one_of(
        st.sampled_from(["attachment; filename=a.log", "<a@b> <c@d>", "Fri, 20 Nov 2026 12:00:00 +0100", " x", "",
                         "a\n  folded", "a\n\tfolded\n more", "caf\u00e9", "=?utf-8?q?caf=C3=A9?=", "x\r"]),
        st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40))))
bodies = st.one_of(st.binary(max_size=300), st.sampled_from([
    b"plain text\n", b"<html><body><p>Jobs at <b>X</b> fail</p></body></html>\n", b"caf\xc3\xa9 \xe9\r\nline\r\n",
    b"PGh0bWw+\n", b"a=3Db=\n", b"--b\nContent-Type: text/plain\n\nin a part\n--b--\n", b"\n\nafter blank lines"]))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(fields, max_size=8), bodies, st.sampled_from(["\n\n", "\n", "\n \n\n"]))
def test_plain_mail_is_read_as_the_email_package_reads_it(header, body, separator):
    """The usual mail is read without the email package (robot.tickets.mail._plain_message): the very same
    Message as the email package gives, or the email package is asked."""
    from robot.tickets import mail

    head = "\n".join(f"{name}{'' if name.endswith(' ') else ':'} {value}" for name, value in header)
    data = head.encode("utf-8") + separator.encode() + body
    read = []
    for plain in (mail._plain_message, lambda raw: None):
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(mail, "_plain_message", plain)
            try:
                read.append(parse_message(data, "s", NOW))
            except MessageSkipped as exc:
                read.append(exc.reason)
    assert read[0] == read[1]


# ----------------------------------------------------------------------------- archives

def test_mbox_with_corrupt_message(tmp_path):
    path = tmp_path / "support.mbox"
    path.write_bytes(
        b"From a@x Sat Mar  1 10:00:00 2025\n" + raw(msgid="<m1@x>") +
        b"\nFrom broken Sat Mar  1 10:00:00 2025\n\x00\x01\x02\xff no headers here\n"
        b"\nFrom b@x Sat Mar  1 11:00:00 2025\n" + raw(msgid="<m2@x>", subject="Re: x"))
    items = list(read_mbox(path, fallback_date=NOW))
    assert [type(i) for i in items] == [Message, Skip, Message]
    assert items[1].position == 1 and items[1].source == f"mbox:{path}"
    assert [i.message_id for i in items if isinstance(i, Message)] == ["m1@x", "m2@x"]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from([b"From a@x Sat Mar  1 10:00:00 2025\n", b"From \n", b"\n", b"\n\n", b">From x\n",
                                 b"Subject: s\n", b"body line\n", b"no newline", b"\r\n", b"From"]), max_size=30))
def test_mbox_messages_are_the_ones_mailbox_reads(tmp_path, pieces):
    from robot.tickets.mail import mbox_messages

    path = tmp_path / "any.mbox"
    path.write_bytes(b"".join(pieces))
    box = mailbox.mbox(str(path), create=False)
    try:
        expected = [box.get_bytes(key) for key in box.iterkeys()]
    finally:
        box.close()
    assert list(mbox_messages(path)) == expected


def test_maildir_with_corrupt_message(tmp_path):
    box = mailbox.Maildir(str(tmp_path / "md"), create=True)
    k1 = box.add(raw(msgid="<d1@x>"))
    kbad = box.add(b"\xff\xfe\x00 not mail at all")
    k2 = box.add(raw(msgid="<d2@x>"))
    box.close()
    items = list(read_maildir(tmp_path / "md", fallback_date=NOW))
    skips = [i for i in items if isinstance(i, Skip)]
    assert len(items) == 3 and len(skips) == 1 and skips[0].position == kbad
    assert sorted(i.message_id for i in items if isinstance(i, Message)) == ["d1@x", "d2@x"]
    assert {k1, k2}  # keys exist


# ----------------------------------------------------------------------------- threading

def test_thread_by_references_with_missing_parent():
    t0 = NOW - timedelta(days=1)
    ms = [msg("a", "stage-in", t0), msg("b", "Re: stage-in", t0 + timedelta(hours=1), irt="a"),
          msg("c", "other subject", t0 + timedelta(hours=2), refs=["lost", "b"]),
          msg("d", "sibling", t0 + timedelta(hours=3), refs=["lost"]),
          msg("e", "unrelated", t0 + timedelta(hours=4))]
    threads = thread(ms)
    assert [sorted(m.message_id for m in t.messages) for t in threads] == [["a", "b", "c", "d"], ["e"]]
    assert threads[0].key == "a" and threads[0].subject == "stage-in"


def test_thread_by_gmail_id_and_ggus_number():
    t0 = NOW - timedelta(days=2)
    ms = [msg("g1", "first", t0, hint="1790001"), msg("g2", "totally different", t0 + timedelta(1),
                                                      hint="1790001"),
          msg("x1", "GGUS-Ticket-ID: #165432 A", t0, hint="ggus:165432"),
          msg("x2", "GGUS-Ticket-ID: #165432 B", t0 + timedelta(days=30), hint="ggus:165432")]
    keys = {t.key: sorted(m.message_id for m in t.messages) for t in thread(ms)}
    assert keys == {"1790001": ["g1", "g2"], "ggus:165432": ["x1", "x2"]}


def test_thread_by_subject_within_window_only():
    t0 = NOW - timedelta(days=60)
    ms = [msg("s1", "[atlas-support] Jobs fail at ANALY_FZK", t0),
          msg("s2", "RE: AW: [atlas-support]  jobs FAIL at ANALY_FZK", t0 + timedelta(days=10)),
          msg("s3", "Re: Jobs fail at ANALY_FZK", t0 + timedelta(days=23)),  # 13 days after s2
          msg("s4", "Re: Jobs fail at ANALY_FZK", t0 + timedelta(days=40)),  # 17 days later
          msg("s5", "Jobs fail at ANALY_FZK", t0 + timedelta(days=41))]  # new thread, not a reply
    threads = thread(ms)
    assert [[m.message_id for m in t.messages] for t in threads] == [["s1", "s2", "s3"], ["s4"], ["s5"]]
    assert normalise_subject("Fwd: [atlas-support] Re:  X  y") == ("x y", True)


def test_subject_fallback_respects_different_hints():
    ms = [msg("h1", "same", NOW, hint="111"), msg("h2", "Re: same", NOW + timedelta(hours=1), hint="222")]
    assert len(thread(ms)) == 2


def test_messages_sorted_labels_union_and_states():
    t0 = NOW - timedelta(days=1)
    support = "atlas-support@example.org"

    def one(labels, last_sender=support):
        return thread([msg("p", "s", t0, labels=["Category/DDM"]),
                       msg("q", "Re: s", t0 + timedelta(hours=2), irt="p", labels=labels,
                           sender=last_sender)])[0]

    assert one([]).state == "open"
    assert one(["Status/ACTIVE"]).state == "open"
    assert one(["Status/URGENT"]).state == "open"
    assert one(["Status/WAITING"]).state == "waiting"
    assert one(["Status/CLOSED"]).state == "closed"
    assert one(["Closed"]).state == "closed"
    assert one(["Closed"], last_sender="user@example.org").state == "open"  # the user replied
    t = one(["Status/WAITING", "Category/DDM"])
    assert t.labels == ("Category/DDM", "Status/WAITING")
    # given out of order, messages come back sorted by date
    rev = thread([msg("q", "Re: s", t0 + timedelta(hours=2), irt="p"), msg("p", "s", t0)])[0]
    assert [m.message_id for m in rev.messages] == ["p", "q"]


def test_sample_archive_threads(tmp_path):
    path = tmp_path / "sample.mbox"
    n = write_sample_mbox(path, NOW)
    items = list(read_mbox(path))
    messages = [i for i in items if isinstance(i, Message)]
    assert n == len(items) == len(messages) >= 60
    assert all(NOW - timedelta(days=3) <= m.date < NOW for m in messages)
    threads = thread(messages, support_addresses=[SUPPORT])
    assert 23 <= len(threads) <= 27
    keys = {t.key for t in threads}
    assert "ggus:165432" in keys
    states = {t.state for t in threads}
    assert {"open", "waiting", "closed"} <= states
    bodies = "\n".join(m.body for m in messages)
    assert "pandaid=" in bodies and "jeditaskid=31234567" in bodies
    assert any("<script>" in m.subject for m in messages)
    html = [m for m in messages if "ANALY_GRIF-LAL" in m.body and "Status check failed" in m.body]
    assert html and "track()" not in html[0].body
    # deterministic
    again = tmp_path / "again.mbox"
    write_sample_mbox(again, NOW)
    assert again.read_bytes() == path.read_bytes()
