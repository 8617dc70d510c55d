"""Announced downtimes: a site that said it would be down is not excluded, nor blamed for that window.

Sources, each behind `DowntimeSource`:
- GOCDB's public programmatic interface (`?method=get_downtime`, XML): `GOCDBClient`;
- CRIC's downtime view (`/api/core/downtime/query/?json`, where the topology comes from CRIC):
  `robot.backends.cric.CRICClient.downtimes`, its answer read by `parse_cric`;
- the embedded grid's own (`healthrobot grid downtime add SITE ...`), kept in its state file.

`DowntimeWatch` is a loop step: it reads the source every `refresh` (a remote one in a thread of its
own, so that a source that hangs holds up no step), stores what it read as `downtime` rows
(inserted, updated, cancelled ones removed) and never stops the step: a source that cannot be read
leaves the stored downtimes as they are and records an event. Only outages
count (GOCDB's `WARNING` severity is "at risk": the site is expected to work).

What a downtime changes is decided by pure functions over these rows (`blacklist.engine` reads
`windows_by_site`): no automatic exclusion while it lasts, no result inside it counts, and the
queue is tested at once when it ends.
"""
from __future__ import annotations

import threading
import time
import xml.etree.ElementTree as ElementTree
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol, Sequence

from sqlalchemy import bindparam, delete, select
from sqlalchemy.orm import Session

from robot.backends.base import BackendUnavailable
from robot.backoff import request_with_retries
from robot.storage.driver_select import DriverSelect
from robot.storage.models import Downtime as DowntimeRow
from robot.storage.models import Event

if TYPE_CHECKING:
    import requests

LOOK_BACK = timedelta(days=2)  # downtimes ended this long ago are still read (results inside them are judged)
LOOK_AHEAD = timedelta(days=7)


@dataclass(frozen=True)
class Downtime:
    key: str  # the source's own identifier (GOCDB's primary key)
    site: str
    start: datetime
    end: datetime
    description: str = ""
    classification: str = "scheduled"  # scheduled | unscheduled (declared while it happens)
    severity: str = "outage"

    def covers(self, moment: datetime) -> bool:
        return self.start <= moment < self.end


class DowntimeSource(Protocol):
    name: str

    def downtimes(self, now: datetime) -> list[Downtime]:
        """Outages overlapping [now - LOOK_BACK, now + LOOK_AHEAD]; raises BackendUnavailable."""


# -- GOCDB ----------------------------------------------------------------------------------------
def parse_gocdb(text: str) -> list[Downtime]:
    """GOCDB's `get_downtime` answer: `<results><DOWNTIME PRIMARY_KEY=.. CLASSIFICATION=..>` elements with
    HOSTED_BY (the site), SEVERITY (OUTAGE or WARNING), DESCRIPTION and START_DATE / END_DATE (Unix
    seconds; FORMATED_START_DATE "YYYY-MM-DD HH:MM" UTC when those are missing).

    A downtime has one element per affected service; they are merged into one per site and key.
    Raises ValueError when the text is not such an answer.
    """
    try:
        root = ElementTree.fromstring(text)
    except ElementTree.ParseError as exc:
        raise ValueError(f"not XML ({exc})") from None
    if root.tag != "results":
        raise ValueError(f"expected <results>, got <{root.tag[:40]}>")
    found: dict[tuple[str, str], Downtime] = {}
    for element in root.iter("DOWNTIME"):
        key = element.get("PRIMARY_KEY") or element.findtext("PRIMARY_KEY") or element.get("ID") or ""
        site = (element.findtext("HOSTED_BY") or "").strip()
        severity = (element.findtext("SEVERITY") or "").strip().lower()
        if not key or not site:
            raise ValueError("a DOWNTIME without PRIMARY_KEY or HOSTED_BY")
        if severity != "outage":
            continue
        start = _gocdb_time(element, "START_DATE", "FORMATED_START_DATE")
        end = _gocdb_time(element, "END_DATE", "FORMATED_END_DATE")
        if end <= start:
            continue
        found[(key, site)] = Downtime(
            key=key, site=site, start=start, end=end, description=(element.findtext("DESCRIPTION") or "").strip(),
            classification=(element.get("CLASSIFICATION") or "SCHEDULED").lower())
    return list(found.values())


# -- CRIC ------------------------------------------------------------------------------------------
def parse_cric(data: Any, now: datetime) -> list[Downtime]:
    """CRIC's downtime view (`/api/core/downtime/query/?json`): the outages overlapping [now - LOOK_BACK,
    now + LOOK_AHEAD].

    CRIC keeps the downtimes of each resource centre (the GOCDB / OSG site, the queues' `rc_site`),
    as GOCDB or OSG announced them: objects with `id`, `start_time` and `end_time` (ISO 8601, UTC
    without a zone, e.g. "2026-09-14T23:21:00"), `severity` (OUTAGE, or WARNING: at risk, the site is
    expected to work), `classification` (SCHEDULED, UNSCHEDULED), `description`, `affected_services`
    and `info_url`. The answer is one JSON object keyed by site whose values are the site's list of
    downtimes, or an object of them keyed by id; a list of downtimes each naming its `rc_site` is read
    too. The shapes are those that public CRIC clients read (no reference documentation of this view
    was found): every one is accepted, none is guessed further.

    Raises ValueError when `data` is not such an answer (a downtime without a site or readable times).
    """
    if isinstance(data, dict):
        entries = [(str(site), item) for site, items in data.items()
                   for item in (items.values() if isinstance(items, dict) and not _downtime_like(items)
                                else items if isinstance(items, list) else [items])]
    elif isinstance(data, list):
        entries = [("", item) for item in data]
    else:
        raise ValueError(f"expected a JSON object of downtimes per site, got {type(data).__name__}")
    since, until = now - LOOK_BACK, now + LOOK_AHEAD
    found: dict[tuple[str, str], Downtime] = {}
    for site, item in entries:
        if not isinstance(item, dict):
            raise ValueError(f"a downtime of {site or '?'} is {type(item).__name__}, not an object")
        site = str(item.get("rc_site") or item.get("rcsite") or site).strip()
        if not site:
            raise ValueError("a downtime without its site (rc_site)")
        start, end = _cric_time(item, "start_time", site), _cric_time(item, "end_time", site)
        if str(item.get("severity") or "").strip().upper() != "OUTAGE" or end <= start:
            continue
        if end <= since or start > until:
            continue
        key = str(item.get("id") or f"{start:%Y%m%d%H%M}")
        found[(key, site)] = Downtime(
            key=key, site=site, start=start, end=end, description=str(item.get("description") or "").strip(),
            classification=str(item.get("classification") or "SCHEDULED").strip().lower())
    return list(found.values())


def _downtime_like(value: dict[str, Any]) -> bool:
    return "start_time" in value and "end_time" in value


def _cric_time(item: dict[str, Any], field: str, site: str) -> datetime:
    text = item.get(field)
    try:
        when = datetime.fromisoformat(str(text).strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"a downtime of {site} has {field} {str(text)[:40]!r}, not an ISO 8601 time") from None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def _gocdb_time(element: ElementTree.Element, epoch_tag: str, formatted_tag: str) -> datetime:
    epoch = (element.findtext(epoch_tag) or "").strip()
    if epoch:
        try:
            return datetime.fromtimestamp(int(epoch), UTC)
        except (ValueError, OverflowError):
            raise ValueError(f"{epoch_tag} is {epoch[:30]!r}, not Unix seconds") from None
    formatted = (element.findtext(formatted_tag) or "").strip()
    try:
        return datetime.strptime(formatted, "%Y-%m-%d %H:%M").replace(tzinfo=UTC)
    except ValueError:
        raise ValueError(f"a DOWNTIME without a readable {epoch_tag} or {formatted_tag}") from None


class GOCDBClient:
    """GOCDB's public programmatic interface; bounded retries, then BackendUnavailable."""

    name = "gocdb"

    def __init__(self, url: str, *, timeout: float = 30, retries: int = 3, ca_path: str | None = None,
                 sleep: Callable[[float], None] = time.sleep, session: requests.Session | None = None):
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.retries = max(0, retries)
        self.sleep = sleep
        import requests  # noqa: PLC0415 - only a GOCDB client needs it (`why`, `blacklist list` start faster)

        self.session = session if session is not None else requests.Session()
        if ca_path:
            self.session.verify = ca_path

    def downtimes(self, now: datetime) -> list[Downtime]:
        params = {"method": "get_downtime", "windowstart": f"{(now - LOOK_BACK):%Y-%m-%d}",
                  "windowend": f"{(now + LOOK_AHEAD):%Y-%m-%d}"}
        # A malformed answer (parse_gocdb's ValueError) is tried again like a failed request.
        return request_with_retries(self.session, "GET", f"{self.url}/gocdbpi/public/", what="GOCDB get_downtime",
                                    error=BackendUnavailable, retries=self.retries, sleep=self.sleep,
                                    timeout=self.timeout, read=lambda answer: parse_gocdb(answer.text), params=params)


# -- storage and the loop step --------------------------------------------------------------------
def store(session: Session, source: str, read: Sequence[Downtime], now: datetime) -> dict[str, int]:
    """Make the stored downtimes of `source` what it just said; returns counts of what changed.

    One that is no longer listed was cancelled (not started yet: removed) or ended early (its end
    becomes now); ended ones stay, as the record of when the site was excused.
    """
    stored = {row.key: row for row in session.scalars(select(DowntimeRow).where(DowntimeRow.source == source))}
    counts = {"added": 0, "changed": 0, "removed": 0}
    listed = set()
    for downtime in read:
        key = f"{downtime.key}@{downtime.site}"
        listed.add(key)
        row = stored.get(key)
        values = dict(site=downtime.site, start=downtime.start, end=downtime.end, description=downtime.description[:2000],
                      classification=downtime.classification, severity=downtime.severity)
        if row is None:
            session.add(DowntimeRow(source=source, key=key, seen_at=now, **values))
            counts["added"] += 1
        else:
            if any(getattr(row, name) != value for name, value in values.items()):
                for name, value in values.items():
                    setattr(row, name, value)
                counts["changed"] += 1
            row.seen_at = now
    for key, row in stored.items():
        if key in listed or row.end <= now - LOOK_BACK:
            continue
        if row.start > now:
            session.execute(delete(DowntimeRow).where(DowntimeRow.id == row.id))
            counts["removed"] += 1
        elif row.end > now:
            row.end = now
            counts["changed"] += 1
    return counts


class DowntimeWatch:
    """Loop step: read the downtime source every `refresh`; never fails the step.

    `background`: the source is remote (GOCDB, CRIC) and is read in a thread of its own, what it said
    stored at the first step after it answered. A source that hangs (its time-out and retries add up to
    minutes) then holds up no step: the loop goes on with the stored downtimes, and no robot process
    misses its beat for it (its peers would count it hung). A local source is read in the step.
    """

    def __init__(self, source: DowntimeSource, refresh: timedelta, background: bool = False):
        self.source = source
        self.refresh = refresh
        self.background = background
        self._read_at: datetime | None = None
        self._reading: _Reading | None = None

    def __call__(self, session: Session, now: datetime) -> dict[str, int] | None:
        if self._reading is not None:
            if not self._reading.done.is_set():
                return None  # still asking: the stored downtimes hold meanwhile
            reading, self._reading = self._reading, None
            return self._store(session, reading.answer, now)
        if self._read_at is not None and now - self._read_at < self.refresh:
            return None
        self._read_at = now  # a failed read is tried again after `refresh` too: the loop is not held up
        if self.background:
            self._reading = _Reading(lambda: self.source.downtimes(now))
            return None
        return self._store(session, lambda: self.source.downtimes(now), now)

    def _store(self, session: Session, read: Callable[[], list[Downtime]], now: datetime) -> dict[str, int] | None:
        try:
            found = read()
        except BackendUnavailable as exc:
            session.add(Event(time=now, kind="downtimes_unreachable", subject=self.source.name,
                              message=f"downtimes could not be read, the stored ones are kept: {exc}"))
            return None
        return store(session, self.source.name, found, now)


class _Reading:
    """One read of a source in a daemon thread (a hung source holds up neither the loop nor the process's exit)."""

    def __init__(self, read: Callable[[], list[Downtime]]):
        self.done = threading.Event()
        self._found: list[Downtime] = []
        self._error: BaseException | None = None
        threading.Thread(target=self._run, args=(read,), name="downtimes", daemon=True).start()

    def _run(self, read: Callable[[], list[Downtime]]) -> None:
        try:
            self._found = read()
        except BaseException as exc:  # noqa: BLE001 - handed to the step, which raises it as a read in the step would
            self._error = exc
        finally:
            self.done.set()

    def answer(self) -> list[Downtime]:
        if self._error is not None:
            raise self._error
        return self._found


def windows_by_site(session: Session, since: datetime, until: datetime) -> dict[str, list[Downtime]]:
    """Stored outages overlapping [since, until], per site."""
    found: dict[str, list[Downtime]] = defaultdict(list)
    # Through the driver, not ORM entities: the exclusion engine reads them at every step.
    rows, convert = WINDOWS.rows(session.connection(), {"since": since, "until": until})
    for key, site, start, end, description, classification, severity in map(convert, rows):
        found[site].append(Downtime(key=key, site=site, start=start, end=end, description=description,
                                    classification=classification, severity=severity))
    return found


_ROW = DowntimeRow.__table__.c
WINDOWS = DriverSelect(
    select(_ROW.key, _ROW.site, _ROW.start, _ROW.end, _ROW.description, _ROW.classification, _ROW.severity)
    .where(_ROW.end > bindparam("since"), _ROW.start <= bindparam("until")).order_by(_ROW.start))


def describe(downtime: Downtime) -> str:
    """The words shown to people: "scheduled downtime 2026-11-02 08:00-12:00 UTC (dCache upgrade)"."""
    same_day = downtime.start.date() == downtime.end.date()
    end = f"{downtime.end:%H:%M}" if same_day else f"{downtime.end:%Y-%m-%d %H:%M}"
    what = "scheduled downtime" if downtime.classification == "scheduled" else "declared unscheduled downtime"
    text = f"{what} {downtime.start:%Y-%m-%d %H:%M}-{end} UTC"
    return f"{text} ({downtime.description})" if downtime.description else text


def announced_downtimes(session: Session, site: str, now: datetime) -> list[str]:
    """A site's announced outages around now (the last two days, the coming week), in words, "now" marked."""
    found = windows_by_site(session, now - LOOK_BACK, now + LOOK_AHEAD).get(site, [])
    return [describe(d) + (" (now)" if d.covers(now) else "") for d in found]
