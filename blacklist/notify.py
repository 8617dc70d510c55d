"""E-mail notification of the robot's exclusion decisions, as a loop step run after the exclusion engine.

    notifier = Notifier(settings.blacklist.notify, actor=settings.blacklist.actor)
    subjects = notifier(session, now)  # the caller commits, as the loop does after every step

What is mailed: every stored transition with `kind == "status"` and `actor == <the robot's actor>`
that has no `notified_at` yet, applied and dry-run alike. A dry-run decision is marked "[dry-run]"
in the subject and the body says that nothing was changed at PanDA.

The burst rule (one message per site per event burst): pending transitions are grouped per site
(and, separately, dry-run from applied, so one message never mixes the two). A site's group is sent
at the first call where `now - <time of its newest pending transition> >= settings.burst`: the
burst is over once the site has been quiet for `burst`. A new decision on the site before then
postpones the whole group and joins it. (A site with decisions closer together than `burst` for
ever would never be mailed; the engine's own cool-downs make that unlikely.)

Silences: a transition of a queue silenced at `now` (an uncleared Silence row with `until > now`
whose scope/name matches the queue, its site or its cloud) is marked notified without any mail,
at once and regardless of the burst, with an INFO log line saying it was suppressed.

Recipients: the site's contacts (Site.contacts) in To, `settings.operations` in Cc (in To when the
site has no contacts). No recipient at all: the group is marked notified, logged and recorded as an
Event ("notification_no_recipients").

Monitor links: `settings.monitor_url` is a `str.format` template with the placeholders `{queue}`,
`{site}`, `{cloud}` and `{panda_id}`. When it contains `{panda_id}` it is a *job* link and one link
is given per job of the evidence; otherwise it is a *queue* link and one link is given per queue.
Values are URL-quoted. A template that cannot be formatted gives no link (logged once).

Delivery: one SMTP connection per call (timeout `timeout` seconds, STARTTLS when configured, login
when a username is set). A failure to connect, to log in or to send never raises out of the
notifier and leaves the transitions pending: they are tried again at the next call. Attempts are
counted in memory per transition id; a transition whose delivery failed `max_attempts` times (5)
is given up: marked notified, an ERROR log line and an Event ("notification_given_up"). A
connection that broke stops the call's remaining sends (each counted as a failed attempt), so a
dead server costs one timeout per call, not one per site. The password is never logged.

Delivery is at least once: the marks are written to the session after sending and are durable
only when the caller commits, so a crash in between mails the group again at the next call.
"""
from __future__ import annotations

import logging
import smtplib
import ssl
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from string import Formatter
from typing import Any
from urllib.parse import quote

from sqlalchemy import select
from sqlalchemy.orm import Session

from blacklist.settings import NotifySettings
from robot.clock import as_utc
from robot.storage.models import Cloud, Event, Queue, QueueTransition, Silence, Site
from robot.vocabulary import decision, plain_reason

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 5
SMTP_TIMEOUT = 10.0
MAX_JOBS_LISTED = 20  # per transition; the rest are counted
NEXT_AFTER_EXCLUSION = "Test jobs keep running; the queue will be set online again automatically when they succeed."
NEXT_AFTER_INCLUSION = ("The queue is back in user brokerage. Test jobs keep running; the robot excludes it again "
                        "if they fail.")
NOTHING_CHANGED = "DRY RUN: nothing was changed at PanDA. The robot runs in dry-run mode; this is what it would have done."
OPT_OUT = ("To opt out of automatic exclusion for this site, ask operations to add the site to "
           "blacklist.safety.exempt_sites.")


@dataclass
class Pending:
    """One unnotified transition with the names the message needs."""

    transition: QueueTransition
    queue: str
    site: str
    cloud: str
    contacts: list[Any]
    status: str  # the queue's status as last read

    @property
    def excluded(self) -> bool:
        return self.transition.new != "online"

    @property
    def time(self) -> datetime:
        return as_utc(self.transition.time)


@dataclass
class Group:
    site: str
    cloud: str
    dry_run: bool
    items: list[Pending] = field(default_factory=list)

    @property
    def ids(self) -> list[int]:
        return [p.transition.id for p in self.items]

    @property
    def newest(self) -> datetime:
        return max(p.time for p in self.items)


class SendFailed(Exception):
    """Delivery failed; `connection_lost` says whether further sends on this connection are pointless."""

    def __init__(self, message: str, connection_lost: bool):
        super().__init__(message)
        self.connection_lost = connection_lost


class Notifier:
    """The notification step: `notifier(session, now) -> list of the subjects sent`."""

    def __init__(self, settings: NotifySettings, actor: str, *, timeout: float = SMTP_TIMEOUT,
                 max_attempts: int = MAX_ATTEMPTS):
        self.settings = settings
        self.actor = actor
        self.timeout = timeout
        self.max_attempts = max_attempts
        self.attempts: dict[int, int] = defaultdict(int)  # transition id -> failed deliveries
        self._bad_template_logged = False

    def __call__(self, session: Session, now: datetime) -> list[str]:
        if not self.settings.enabled:
            return []
        now = as_utc(now)
        pending = self._pending(session)
        live = {p.transition.id for p in pending}
        for stale in [i for i in self.attempts if i not in live]:  # notified by someone else meanwhile
            del self.attempts[stale]
        if not pending:
            return []
        silenced = self._silenced(session, now)
        groups: dict[tuple[str, bool], Group] = {}
        for item in pending:
            if {("queue", item.queue), ("site", item.site), ("cloud", item.cloud)} & silenced:
                log.info("notification of %s %s -> %s (transition %d) suppressed: queue, site or cloud silenced",
                         item.queue, item.transition.old, item.transition.new, item.transition.id)
                self._mark([item], now)
                continue
            key = (item.site, not item.transition.applied)
            groups.setdefault(key, Group(item.site, item.cloud, not item.transition.applied)).items.append(item)
        due = [g for _, g in sorted(groups.items()) if now - g.newest >= self.settings.burst]
        sent: list[str] = []
        connection: smtplib.SMTP | None = None
        broken: str | None = None  # why the connection is unusable for the rest of this call
        try:
            for group in due:
                recipients = self._recipients(group)
                if not recipients[0] and not recipients[1]:
                    log.warning("no recipients for site %s (no contacts, no operations list): %d decision(s) "
                                "marked notified without a mail", group.site, len(group.items))
                    session.add(Event(time=now, kind="notification_no_recipients", subject=group.site[:200],
                                      message=f"{len(group.items)} decision(s) not mailed: no site contacts and no "
                                              "operations list", details={"transitions": group.ids}))
                    self._mark(group.items, now)
                    continue
                try:
                    message = self._message(group, recipients, now)
                except (ValueError, TypeError, LookupError) as exc:  # e.g. an address the header refuses
                    self._failed(session, group, f"cannot build the message: {_describe(exc)}", now)
                    continue
                if broken is None:
                    try:
                        if connection is None:
                            connection = self._connect()
                        self._send(connection, message)
                    except SendFailed as exc:
                        if exc.connection_lost:
                            broken = str(exc)
                            connection = _close(connection)
                        self._failed(session, group, str(exc), now)
                        continue
                else:
                    self._failed(session, group, f"not tried: {broken}", now)
                    continue
                log.info("mailed %r to %s", message["Subject"], ", ".join(recipients[0] + recipients[1]))
                self._mark(group.items, now)
                sent.append(str(message["Subject"]))
        finally:
            _close(connection)
        session.flush()
        return sent

    # -- reading -----------------------------------------------------------------------------------
    def _pending(self, session: Session) -> list[Pending]:
        rows = session.execute(
            select(QueueTransition, Queue.name, Site.name, Cloud.name, Site.contacts, Queue.status)
            .join(Queue, Queue.id == QueueTransition.queue_id).join(Site, Site.id == Queue.site_id)
            .join(Cloud, Cloud.id == Site.cloud_id)
            .where(QueueTransition.kind == "status", QueueTransition.actor == self.actor,
                   QueueTransition.notified_at.is_(None))
            .order_by(QueueTransition.time, QueueTransition.id)
        ).all()
        return [Pending(t, queue, site, cloud, list(contacts or []), status)
                for t, queue, site, cloud, contacts, status in rows]

    @staticmethod
    def _silenced(session: Session, now: datetime) -> set[tuple[str, str]]:
        rows = session.execute(select(Silence.scope, Silence.name).where(Silence.cleared_at.is_(None),
                                                                         Silence.until > now)).all()
        return {(scope, name) for scope, name in rows}

    def _recipients(self, group: Group) -> tuple[list[str], list[str]]:
        """(To, Cc): the site's contacts, and the operations list (To when there are no contacts)."""
        contacts = _addresses(group.items[0].contacts)
        operations = [a for a in _addresses(self.settings.operations) if a not in contacts]
        return (contacts, operations) if contacts else (operations, [])

    # -- bookkeeping -------------------------------------------------------------------------------
    def _mark(self, items: list[Pending], now: datetime) -> None:
        for item in items:
            item.transition.notified_at = now
            self.attempts.pop(item.transition.id, None)

    def _failed(self, session: Session, group: Group, why: str, now: datetime) -> None:
        give_up = []
        for item in group.items:
            self.attempts[item.transition.id] += 1
            if self.attempts[item.transition.id] >= self.max_attempts:
                give_up.append(item)
        attempt = max(self.attempts[i] for i in group.ids)
        if not give_up:
            log.warning("could not mail site %s (%d decision(s), attempt %d of %d): %s; trying again next step",
                        group.site, len(group.items), attempt, self.max_attempts, why)
            return
        log.error("gave up mailing site %s after %d failed attempts: %d decision(s) (transitions %s) marked "
                  "notified without a mail; last error: %s", group.site, self.max_attempts, len(give_up),
                  ", ".join(str(p.transition.id) for p in give_up), why)
        session.add(Event(time=now, kind="notification_given_up", subject=group.site[:200],
                          message=f"{len(give_up)} decision(s) not mailed after {self.max_attempts} attempts: {why}",
                          details={"transitions": [p.transition.id for p in give_up]}))
        self._mark(give_up, now)

    # -- SMTP --------------------------------------------------------------------------------------
    def _connect(self) -> smtplib.SMTP:
        s = self.settings
        try:
            connection = smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=self.timeout)
        except (OSError, smtplib.SMTPException) as exc:
            raise SendFailed(f"cannot connect to {s.smtp_host}:{s.smtp_port}: {_describe(exc)}", True) from None
        step = "greet the server"
        try:
            connection.ehlo()
            if s.starttls:
                step = "start TLS"
                connection.starttls(context=ssl.create_default_context())
                connection.ehlo()
            if s.username:
                step = f"log in as {s.username}"
                connection.login(s.username, s.password.get_secret_value() if s.password else "")
        except (OSError, smtplib.SMTPException) as exc:
            _close(connection)
            raise SendFailed(f"cannot {step} at {s.smtp_host}:{s.smtp_port}: {_describe(exc)}", True) from None
        return connection

    @staticmethod
    def _send(connection: smtplib.SMTP, message: EmailMessage) -> None:
        try:
            refused = connection.send_message(message)
        except smtplib.SMTPServerDisconnected as exc:
            raise SendFailed(f"server disconnected: {_describe(exc)}", True) from None
        except smtplib.SMTPException as exc:  # refused sender/recipients/data: the connection is still usable
            raise SendFailed(_describe(exc), False) from None
        except OSError as exc:
            raise SendFailed(_describe(exc), True) from None
        if refused:
            log.warning("some recipients of %r were refused: %s", message["Subject"],
                        ", ".join(f"{a} ({code})" for a, (code, _) in refused.items()))

    # -- the message -------------------------------------------------------------------------------
    def _message(self, group: Group, recipients: tuple[list[str], list[str]], now: datetime) -> EmailMessage:
        message = EmailMessage()
        message["Subject"] = subject(group)
        message["From"] = self.settings.sender
        message["To"] = ", ".join(recipients[0])
        if recipients[1]:
            message["Cc"] = ", ".join(recipients[1])
        message["Date"] = format_datetime(now)
        domain = self.settings.sender.rpartition("@")[2] or None
        message["Message-ID"] = make_msgid("queue-health-robot", domain=domain)
        message["Auto-Submitted"] = "auto-generated"
        body = self.body(group)
        # readable as sent when it can be (ASCII, lines within SMTP's limit); quoted-printable otherwise
        plain = body.isascii() and max(map(len, body.splitlines()), default=0) <= 998
        message.set_content(body, subtype="plain", charset="utf-8", cte="7bit" if plain else "quoted-printable")
        return message

    def body(self, group: Group) -> str:
        lines = [f"The Queue Health Robot ({self.actor}) took {_count(len(group.items), 'decision')} on queues of "
                 f"site {group.site} (cloud {group.cloud}).", ""]
        if group.dry_run:
            lines += [NOTHING_CHANGED, ""]
        for item in group.items:
            lines += self._transition_lines(item, group.dry_run) + [""]
        lines += [OPT_OUT]
        if self.settings.operations:
            lines += [f"Operations: {', '.join(_addresses(self.settings.operations))}"]
        return "\n".join(lines) + "\n"

    def _transition_lines(self, item: Pending, dry_run: bool) -> list[str]:
        t = item.transition
        lines = [f"== {item.queue}: robot: {decision(t.old, t.new, not dry_run)} ==",
                 f"Time:     {item.time.isoformat()}",
                 "Why:      " + _indent(plain_reason(t.reason, t.evidence, item.time, t.new), 10),
                 "Reason:   " + _indent(t.reason, 10)]
        if t.policy:
            lines.append(f"Policy:   {t.policy}")
        evidence = t.evidence if isinstance(t.evidence, dict) else {}
        extra = {k: v for k, v in evidence.items() if k != "jobs"}
        if extra:
            lines.append("Evidence: " + ", ".join(f"{k}={v}" for k, v in extra.items()))
        jobs = [j for j in evidence.get("jobs", []) if isinstance(j, dict)]
        job_links = "{panda_id}" in self.settings.monitor_url
        if jobs:
            failing = [j for j in jobs if j.get("failed")]
            lines.append("Failing test jobs:" if len(failing) == len(jobs) else
                         "Successful test jobs:" if not failing else "Test jobs behind the decision:")
            for job in jobs[:MAX_JOBS_LISTED]:
                lines.append("  - " + _job_line(job))
                if job_links:
                    link = self._link(item, job.get("panda_id"))
                    if link:
                        lines.append(f"    {link}")
            if len(jobs) > MAX_JOBS_LISTED:
                lines.append(f"  ... and {len(jobs) - MAX_JOBS_LISTED} more")
        if self.settings.monitor_url and not job_links:
            link = self._link(item, None)
            if link:
                lines.append(f"Monitor:  {link}")
        if t.read_back:
            lines.append(f"Current status: {t.read_back} (read back from PanDA after the change)")
        else:
            lines.append(f"Current status: {item.status} (as last read from PanDA)")
        if dry_run:
            lines.append("Next:     Nothing was changed (dry run)." + (
                " Enforced, test jobs would keep running and the queue would be set online again automatically "
                "when they succeed." if item.excluded else ""))
        else:
            lines.append("Next:     " + (NEXT_AFTER_EXCLUSION if item.excluded else NEXT_AFTER_INCLUSION))
        return lines

    def _link(self, item: Pending, panda_id: Any) -> str | None:
        values = {"queue": item.queue, "site": item.site, "cloud": item.cloud,
                  "panda_id": "" if panda_id is None else str(panda_id)}
        try:
            names = {name for _, name, _, _ in Formatter().parse(self.settings.monitor_url) if name is not None}
            unknown = names - set(values)
            if unknown:
                raise KeyError(", ".join(sorted(unknown)))
            return self.settings.monitor_url.format(**{k: quote(v, safe="") for k, v in values.items()})
        except (KeyError, ValueError, IndexError) as exc:
            if not self._bad_template_logged:
                log.warning("monitor_url %r cannot be formatted (%s): no monitor links in mails; "
                            "placeholders: {queue}, {site}, {cloud}, {panda_id}", self.settings.monitor_url, exc)
                self._bad_template_logged = True
            return None


def subject(group: Group) -> str:
    """HammerCloud-like: "<queue> auto-excluded at HH:MM UTC" for one decision, counts for several."""
    prefix = "[dry-run] " if group.dry_run else ""
    if len(group.items) == 1:
        item = group.items[0]
        verb = "auto-excluded" if item.excluded else "set online again"
        text = f"{item.queue} {verb} at {item.time:%H:%M} UTC"
    else:
        excluded = {p.queue for p in group.items if p.excluded}
        included = {p.queue for p in group.items if not p.excluded}
        parts = []
        if excluded:
            parts.append(f"{_count(len(excluded), 'queue')} auto-excluded")
        if included:
            parts.append(f"{len(included)} re-included" if excluded else f"{_count(len(included), 'queue')} re-included")
        text = f"{group.site}: {', '.join(parts)}"
    return prefix + " ".join(text.split())  # no line breaks in a header, whatever the names hold


def _job_line(job: dict[str, Any]) -> str:
    text = f"PanDA ID {job.get('panda_id')}, template {job.get('template')}"
    if job.get("failed"):
        error = job.get("error") or "unknown error"
        code = job.get("code")
        text += f": failed, {error}" + (f" (code {code})" if code is not None else "")
        if job.get("error_class"):
            text += f", {job['error_class']} class"
    else:
        text += ": completed"
    if job.get("end_time"):
        text += f", ended {job['end_time']}"
    return text


def _addresses(values: Any) -> list[str]:
    """Distinct, non-empty addresses in their order; anything not a string is skipped."""
    seen: list[str] = []
    for value in values or []:
        if isinstance(value, str):
            address = " ".join(value.split())
            if address and address not in seen:
                seen.append(address)
    return seen


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _indent(text: str, width: int) -> str:
    return ("\n" + " " * width).join((text or "").splitlines() or [""])


def _describe(exc: BaseException) -> str:
    if isinstance(exc, smtplib.SMTPResponseException):
        error = exc.smtp_error.decode(errors="replace") if isinstance(exc.smtp_error, bytes) else str(exc.smtp_error)
        return f"{type(exc).__name__} {exc.smtp_code} {error}"
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return f"all recipients refused: {', '.join(exc.recipients)}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _close(connection: smtplib.SMTP | None) -> None:
    if connection is None:
        return None
    try:
        connection.quit()
    except (OSError, smtplib.SMTPException):
        connection.close()
    return None
