"""Users' own analysis jobs as evidence: hourly aggregate counts per queue, read from the backend.

PanDA runs far more user jobs at a queue than the robot's test jobs, and they fail for the same
site reasons (and for their own bugs). The backend counts the users' jobs that ended per queue
and hour, with the error each failed one reported first (`Backend.user_job_stats`); this module
classifies those errors with the robot's error table and keeps the counts as `user_job_hour`
rows. Only aggregate counts are kept: no user name, no task, no job ID.

`UserJobWatch` is a loop step: every `refresh` it reads the hours from the last complete one (or
`look_back` at the first read) up to now and replaces the stored rows of those hours, so reading
an hour twice stores it once and the current hour grows until it is over. A backend that cannot
be read leaves the stored rows as they are and records an event: it never fails the step, and it
is never a failure of any queue.
"""
from __future__ import annotations

import weakref
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Callable, Iterable, Sequence

from sqlalchemy import Connection, bindparam, delete, event, func, insert, select
from sqlalchemy.orm import Session

from robot.backends.base import Backend, BackendUnavailable, JobReport, UserJobHour
from robot.classify import ErrorTable, Verdict, classify, classify_report
from robot.downtimes import Downtime, describe, windows_by_site
from robot.jobstates import JobStatus
from robot.storage.driver_select import DriverSelect
from robot.storage.models import Event, Queue, Site
from robot.storage.models import UserJobHour as UserJobHourRow

HOUR = timedelta(hours=1)
CLASS_COLUMNS = {"site": "failed_site", "user": "failed_user", "central": "failed_central"}  # others: unknown


def hour_of(when: datetime) -> datetime:
    return when.replace(minute=0, second=0, microsecond=0)


def error_key(report: JobReport) -> tuple[str, int]:
    """The error that speaks for a failed job (robot.classify's order; the table is applied when stored)."""
    speaks = classify_report({}, report)
    return speaks.source, speaks.code


def aggregate(reports: Iterable[JobReport], since: datetime, until: datetime) -> list[UserJobHour]:
    """Final jobs (finished or failed, by end time in [since, until)) summed per queue and hour."""
    ended: dict[tuple[str, datetime], int] = defaultdict(int)
    failed: dict[tuple[str, datetime], int] = defaultdict(int)
    errors: dict[tuple[str, datetime], dict[tuple[str, int], int]] = defaultdict(lambda: defaultdict(int))
    for report in reports:
        if report.job_status not in (JobStatus.FINISHED, JobStatus.FAILED) or report.end_time is None:
            continue
        if not since <= report.end_time < until:
            continue
        key = (report.queue, hour_of(report.end_time))
        ended[key] += 1
        if report.job_status is JobStatus.FAILED:
            failed[key] += 1
            errors[key][error_key(report)] += 1
    return [UserJobHour(queue, hour, count, failed[(queue, hour)], dict(errors[(queue, hour)]))
            for (queue, hour), count in sorted(ended.items())]


def verdict(table: ErrorTable, source: str, code: int) -> Verdict:
    """The error table's name and class for one (source, code) of a user job."""
    if source in ("pilot", "ddm", "taskbuffer", "jobdispatcher", "exe"):
        return classify(table, **{source: (code, "")})
    if source == "sup":
        return classify(table, sup=code)
    return classify(table)


Described = dict[tuple[tuple[tuple[str, int], int], ...], tuple[tuple[int, int, int, int], list[dict]]]


def store(session: Session, source: str, hours: Sequence[UserJobHour], since: datetime, table: ErrorTable,
          now: datetime, verdicts: dict[tuple[str, int], Verdict] | None = None, described: Described | None = None,
          texts: dict[int, tuple[Any, str]] | None = None) -> int:
    """Make the stored hours of the read (from `since` on) what the backend just counted; returns rows written.

    Each (queue, hour) the backend listed replaces its row; rows of hours it did not list are left
    alone (jobs that ended do not disappear: a backend that lists nothing for an hour did not count it).
    `verdicts`: the errors `table` classified so far, kept by the caller (each error is classified once).
    `described`: the failures per class and the codes of each set of errors counted so far (many hours
    count the same few users' failures, and a growing hour its same failures at every read): the rows that
    counted alike share them; `texts`: their codes as stored (see `_replace`). Both kept by the caller, or
    worked out for this read alone."""
    rows = []
    verdicts = {} if verdicts is None else verdicts
    described = {} if described is None else described
    for hour in hours:
        if hour.hour < since:
            continue
        errors = tuple(hour.errors.items())
        found = described.get(errors)
        if found is None:
            found = described[errors] = _described(errors, table, verdicts)
        rows.append((hour.queue, hour.hour, source, hour.ended, hour.failed, *found[0], found[1], now))
    if rows:
        _replace(session, rows, {} if texts is None else texts)
    return len(rows)


def _described(errors: tuple[tuple[tuple[str, int], int], ...], table: ErrorTable,
               verdicts: dict[tuple[str, int], Verdict]) -> tuple[tuple[int, int, int, int], list[dict]]:
    """Failures per class (site, user, central, unknown) and the codes, most jobs first, of an hour's errors."""
    classes = {"site": 0, "user": 0, "central": 0, "unknown": 0}
    codes = []
    for (error_source, code), jobs in sorted(errors, key=lambda item: -item[1]):
        found = verdicts.get((error_source, code))
        if found is None:
            found = verdicts[(error_source, code)] = verdict(table, error_source, code)
        klass = found.klass if found.klass in classes else "unknown"
        classes[klass] += jobs
        codes.append({"source": error_source, "code": code, "name": found.name, "class": klass, "jobs": jobs})
    return (classes["site"], classes["user"], classes["central"], classes["unknown"]), codes


STORED = UserJobHourRow.__table__
ROW_COLUMNS = ("queue", "hour", "source", "ended", "failed", "failed_site", "failed_user", "failed_central",
               "failed_unknown", "codes", "read_at")  # of the rows `store` writes, in their order


def _replace(session: Session, rows: list[tuple], texts: dict[int, tuple[Any, str]]) -> None:
    """Each row (values in ROW_COLUMNS order) replaces the stored row of its (queue, hour), if there is one.

    On SQLite in one executemany of the driver, each value bound as its column's type binds it (as
    robot.storage.driver_rows does; SQLAlchemy's handling of each row's parameters was most of the cost of
    the 200 hours a 200-queue grid's watch writes at every read), each time converted once, and each list
    of codes (shared by the hours that counted alike) once while `texts` keeps it (by identity, with the
    list itself); elsewhere with Core statements."""
    connection = session.connection()
    dialect = connection.dialect
    if dialect.name == "sqlite":
        time_text, json_text = STORED.c.hour.type.bind_processor(dialect), STORED.c.codes.type.bind_processor(dialect)
        times = {when: time_text(when) for when in {row[1] for row in rows} | {row[10] for row in rows}}
        codes = []
        for row in rows:
            listed = row[9]
            kept = texts.get(id(listed))
            if kept is None or kept[0] is not listed:
                kept = texts[id(listed)] = (listed, json_text(listed))
            codes.append(kept[1])
        sql = _UPSERTS.get(dialect)
        if sql is None:
            quote = dialect.identifier_preparer.quote
            sql = _UPSERTS[dialect] = (  # an upsert: a third cheaper than INSERT OR REPLACE's delete and insert
                f"INSERT INTO {quote(STORED.name)} ({', '.join(map(quote, ROW_COLUMNS))}) "
                f"VALUES ({', '.join('?' * len(ROW_COLUMNS))}) ON CONFLICT ({quote('queue')}, {quote('hour')}) DO UPDATE SET "
                + ", ".join(f"{quote(name)} = excluded.{quote(name)}" for name in ROW_COLUMNS[2:]))
        values = [(row[0], times[row[1]], *row[2:9], text, times[row[10]]) for row, text in zip(rows, codes)]
        connection.exec_driver_sql(sql, values)
        _journal(connection).wrote(values)
        return
    by_hour: dict[datetime, list[str]] = defaultdict(list)
    for row in rows:
        by_hour[row[1]].append(row[0])
    for hour_start, queues in by_hour.items():
        connection.execute(delete(STORED).where(STORED.c.hour == hour_start, STORED.c.queue.in_(queues)))
    connection.execute(insert(STORED), [dict(zip(ROW_COLUMNS, row)) for row in rows])


# Each dialect's upsert of `_replace` (SQLite), made once.
_UPSERTS: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
JOURNAL = "robot.userjobs.journal"  # the key of a SQLite connection's Journal in its `info`
JOURNAL_KEPT = 20_000  # rows (a 200-queue grid's 100 hours): past it the journal starts again, its readers select once


class Journal:
    """The rows `_replace` wrote on one SQLite connection, the last of each (queue, hour), as the select of
    `hour_rows` gives them, in the order written, with the number of the write (`seq`); for `HourMirror`.

    Kept in the connection's `info` (it lives as long as the driver's connection) and dropped at once, so
    that its readers select again, when the connection rolls back (a transaction or a savepoint), when it
    runs any other statement that writes users' hours, or when a written value is not of the type the
    select gives back (it would not compare, or show, alike)."""

    def __init__(self) -> None:
        self.seq = 0
        self.rows: dict[tuple[str, str], tuple[int, str, tuple]] = {}  # (queue, hour) -> seq, read_at, row

    def wrote(self, values: list[tuple]) -> None:
        """Keep the rows of one write (values in ROW_COLUMNS order, as bound)."""
        self.seq += 1
        seq, rows = self.seq, self.rows
        for queue, hour, source, ended, failed, site, user, central, unknown, codes, read_at in values:
            if not (type(queue) is type(hour) is type(source) is type(codes) is type(read_at) is str
                    and type(ended) is type(failed) is type(site) is type(user) is type(central) is type(unknown) is int):
                self.drop()
                return
            key = (queue, hour)
            rows.pop(key, None)  # the last write of each row goes last
            rows[key] = (seq, read_at, (source, queue, hour, ended, failed, site, user, central, unknown, codes))
        if len(rows) > JOURNAL_KEPT:
            self.drop()

    def drop(self) -> None:
        self.seq, self.rows = -1, {}  # readers select again (`since` answers None), then a new one is kept

    def since(self, seq: int, first: str, until: str, stored_since: str) -> list[tuple] | None:
        """The rows written after write `seq` that the select of `hour_rows` gives (hours in [first, until),
        stored at or after `stored_since`; times as stored), None if one of them is for an hour from `until`
        on (a later select gives it: not known to the reader) or the journal was dropped since."""
        if self.seq < seq or seq < 0:
            return None
        found = []
        for written, read_at, row in reversed(self.rows.values()):
            if written <= seq:
                break
            if row[2] >= until:
                return None
            if row[2] >= first and read_at >= stored_since:
                found.append(row)
        return found


def _journal(connection: Connection) -> Journal:
    """The connection's journal (a new one, its engine then watched for rollbacks and other writes, if none)."""
    journal = connection.info.get(JOURNAL)
    if journal is None or journal.seq < 0:
        journal = connection.info[JOURNAL] = Journal()
        engine = connection.engine
        if not event.contains(engine, "rollback", _rolled_back):
            event.listen(engine, "rollback", _rolled_back)
            event.listen(engine, "rollback_savepoint", _rolled_back)
            event.listen(engine, "before_cursor_execute", _other_write)
            event.listen(engine.pool, "reset", _reset)
    return journal


def _rolled_back(connection: Connection, *_: Any) -> None:
    journal = connection.info.get(JOURNAL)
    if journal is not None:
        journal.drop()


def _reset(driver: Any, record: Any, state: Any) -> None:
    """A connection returned to the pool with writes not committed (the pool rolls them back)."""
    journal = record.info.get(JOURNAL)
    if journal is not None and getattr(driver, "in_transaction", True):
        journal.drop()


def _other_write(connection: Connection, cursor: Any, statement: str, *_: Any) -> None:
    """Drop the journal at any statement on users' hours but a select and `_replace`'s upsert."""
    if STORED.name in statement and not statement.lstrip()[:6].upper() == "SELECT" and statement not in _UPSERTS.values():
        _rolled_back(connection)


class HourMirror:
    """The rows of `hour_rows` stored since a reader's last read (the engine's, see blacklist.engine.UserHours),
    taken on SQLite from the journal of what `store` wrote on the same connection since, not selected again
    (the watch stores every queue's current hour at every read: the same process wrote them just before),
    when that is certainly what the select would give: the same driver connection with its journal kept
    whole since the last read (nothing rolled back, no other statement wrote users' hours on it), no other
    connection committed anything since (SQLite's `data_version`, read before the last read), the bounds
    only moved forward, and no row was stored, as the last select found, for an hour not yet read. A row
    stored before the last read and unchanged is then one the reader had (its select gave it, or it was
    written since an earlier one); one written since is in the journal. Anything else: the select, as
    before. Elsewhere (PostgreSQL) always the select."""

    def __init__(self) -> None:
        # after the last read: its journal, data_version, the journal's write then, and the bounds (as stored)
        self._chain: tuple[Journal, int, int, str, str, str] | None = None

    def rows(self, session: Session, first: datetime, until: datetime, stored_since: datetime | None
             ) -> tuple[list[tuple], Callable[[tuple], tuple[str, StoredHour]]]:
        """`hour_rows(session, first, until, stored_since)`."""
        connection = session.connection()
        dialect = connection.dialect
        if dialect.name != "sqlite":
            return hour_rows(session, first, until, stored_since)
        driver = connection.connection.driver_connection
        version = _data_version(connection)
        journal = _journal(connection)
        text = STORED.c.hour.type.bind_processor(dialect)
        bounds = (text(first), text(until), text(stored_since) if stored_since is not None else None)
        chain, self._chain = self._chain, None
        if (chain is not None and bounds[2] is not None and chain[0] is journal and chain[1] == version
                and chain[3] <= bounds[0] and chain[4] <= bounds[1] and chain[5] <= bounds[2]):
            found = journal.since(chain[2], *bounds)
            if found is not None:
                self._chain = (journal, version, journal.seq, *bounds)
                return found, _converter(dialect)
        rows, convert = hour_rows(session, first, until, stored_since)
        if bounds[2] is not None and not driver.execute(LATER, (bounds[1],)).fetchone():
            self._chain = (journal, version, journal.seq, *bounds)
        return rows, convert


DESCRIBED_KEPT = 20_000  # sets of errors a watch keeps described


class UserJobWatch:
    """Loop step: read the users' jobs from the backend every `refresh`; never fails the step."""

    def __init__(self, backend: Backend, table: ErrorTable, refresh: timedelta, look_back: timedelta):
        self.backend = backend
        self.table = table
        self.refresh = refresh
        self.look_back = look_back
        self._read_at: datetime | None = None
        self._complete_until: datetime | None = None  # hours before this were read after they ended
        # The counts this watch stored per (queue, hour): an hour read again unchanged is not written again
        # (the hour before the current one, at every read). Forgotten if the last write was not kept.
        self._stored: dict[tuple[str, datetime], tuple[int, int, dict[tuple[str, int], int]]] = {}
        self._wrote: tuple[datetime, datetime, int] | None = None  # the last write: its time, first hour written, rows
        self._mark: tuple[Journal, int, int] | None = None  # and the database then (`journal_mark`)
        self._since: datetime | None = None  # the first hour of the last read
        self._verdicts: dict[tuple[str, int], Verdict] = {}  # each error the table classified, once
        # each set of errors counted, described once (`store`; forgotten all at once past DESCRIBED_KEPT)
        self._described: Described = {}
        self._texts: dict[int, tuple[Any, str]] = {}

    def __call__(self, session: Session, now: datetime) -> int | None:
        if self._read_at is not None and now - self._read_at < self.refresh:
            return None
        self._read_at = now  # a failed read is tried again after `refresh`: the loop is not held up
        since = self._complete_until if self._complete_until is not None else hour_of(now - self.look_back)
        since = min(since, hour_of(now) - HOUR)  # the last hour again: jobs are archived late
        try:
            hours = self.backend.user_job_stats(since, now)
        except BackendUnavailable as exc:
            session.add(Event(time=now, kind="user_jobs_unreachable", subject=self.backend.name,
                              message=f"users' jobs could not be read, the stored counts are kept: {exc}"))
            return None
        self._complete_until = hour_of(now)
        if self._wrote is not None and not (unchanged_since(session, self._mark) or _kept(session, *self._wrote)):
            self._stored.clear()  # the step that wrote them was rolled back
        stored = self._stored
        fresh = [h for h in hours if h.hour >= since and stored.get((h.queue, h.hour)) != (h.ended, h.failed, h.errors)]
        if since != self._since:  # hours before the read are not read again
            self._stored = stored = {key: counts for key, counts in stored.items() if key[1] >= since}
            self._since = since
            if len(self._described) > DESCRIBED_KEPT:  # most sets of errors recur from hour to hour
                self._described, self._texts = {}, {}
        written = store(session, self.backend.name, fresh, since, self.table, now, self._verdicts, self._described,
                        self._texts)
        stored.update({(h.queue, h.hour): (h.ended, h.failed, dict(h.errors)) for h in fresh})
        self._wrote = (now, min((h.hour for h in fresh), default=since), written)  # most reads write the current hour
        self._mark = journal_mark(session)
        return written


def journal_mark(session: Session) -> tuple[Journal, int, int] | None:
    """On SQLite, right after a write: the connection's journal, its last write and `data_version` (while
    the write is not committed, no other connection can commit: SQLite has one writer at a time)."""
    connection = session.connection()
    if connection.dialect.name != "sqlite":
        return None
    journal = _journal(connection)
    return journal, journal.seq, _data_version(connection)


def unchanged_since(session: Session, mark: tuple[Journal, int, int] | None) -> bool:
    """Whether the users' hours stored are certainly as they were at `mark` (`journal_mark`): the same
    connection's journal kept whole (nothing rolled back, no users' hours written another way on it),
    nothing written through it since, and no other connection committed anything since."""
    if mark is None:
        return False
    connection = session.connection()
    journal = connection.info.get(JOURNAL)
    return journal is mark[0] and journal.seq == mark[1] and _data_version(connection) == mark[2]


def _data_version(connection: Connection) -> int:
    """SQLite's count of the commits of other connections (PRAGMA data_version), as this connection sees it."""
    return connection.connection.driver_connection.execute("PRAGMA data_version").fetchone()[0]


def _kept(session: Session, read_at: datetime, since: datetime, rows: int) -> bool:
    """Whether the `rows` rows a watch stored at `read_at` (of hours from `since` on) are in the database."""
    return session.execute(KEPT, {"since": since, "read_at": read_at}).scalar() == rows


KEPT = select(func.count()).where(STORED.c.hour >= bindparam("since"), STORED.c.read_at == bindparam("read_at"))


@dataclass(frozen=True)
class StoredHour:
    """One stored hour of users' jobs at a queue, as decisions and pages read it."""

    queue: str
    hour: datetime
    ended: int
    failed: int
    by_class: dict[str, int]
    codes: tuple[dict, ...]  # {"source", "code", "name", "class", "jobs"}

    def as_dict(self) -> dict:
        return {"hour": self.hour.isoformat(), "ended": self.ended, "failed": self.failed, **self.by_class,
                "codes": list(self.codes)}


def stored_hours(session: Session, since: datetime, until: datetime,
                 queues: Sequence[str] | None = None) -> dict[str, list[StoredHour]]:
    """Stored hours starting in [hour_of(since), until), per queue, oldest first."""
    row = UserJobHourRow
    query = select(*STORED_COLUMNS).where(row.hour >= hour_of(since), row.hour < until)
    if queues is not None:
        query = query.where(row.queue.in_(list(queues)))
    found: dict[str, list[StoredHour]] = defaultdict(list)
    for values in session.execute(query.order_by(row.hour)):
        found[values[0]].append(as_stored(values))
    return dict(found)


# The columns of a stored hour, in the order `as_stored` takes them.
STORED_COLUMNS = tuple(UserJobHourRow.__table__.c[name] for name in (
    "queue", "hour", "ended", "failed", "failed_site", "failed_user", "failed_central", "failed_unknown", "codes"))


# Each list of codes `read_hours` parsed, by the stored text and the decoder that parsed it: the same few
# recur in every read (forgotten all at once past PARSED_CODES_KEPT, about a day and a half of a 200-queue grid).
PARSED_CODES: dict[tuple[Any, str], tuple[dict, ...]] = {}
PARSED_CODES_KEPT = 4_000


def read_hours(session: Session, first: datetime, until: datetime,
               stored_since: datetime | None = None) -> list[tuple[str, StoredHour]]:
    """The stored hours starting in [first, until), with the backend that counted each, in no order; only
    those stored (read from the backend) at or after `stored_since`, when it is given."""
    rows, convert = hour_rows(session, first, until, stored_since)
    return [convert(row) for row in rows]


def hour_rows(session: Session, first: datetime, until: datetime, stored_since: datetime | None = None
              ) -> tuple[list[tuple], Callable[[tuple], tuple[str, StoredHour]]]:
    """The rows of `read_hours` as the database driver gives them (a row stored again alike is equal to the
    one read before: a caller that keeps them converts only those that changed), and the function that
    makes one the backend's name and its StoredHour.

    On SQLite through the driver (robot.storage.driver_select), each time parsed once per read and each
    list of codes once while `PARSED_CODES` keeps it, as the columns' types parse them (the hours that
    counted alike share their codes, as does a growing hour read again with no new failure: not to be
    changed). Elsewhere with a Core select."""
    connection = session.connection()
    dialect = connection.dialect
    rows, _ = (HOURS.rows(connection, {"first": first, "until": until}) if stored_since is None
               else HOURS_SINCE.rows(connection, {"first": first, "until": until, "since": stored_since}))
    if dialect.name != "sqlite":
        return rows, _as_read
    return rows, _converter(dialect)


def _converter(dialect: Any) -> Callable[[tuple], tuple[str, StoredHour]]:
    """The conversion of `hour_rows`' rows on SQLite (see there)."""
    parse_time, parse_json = STORED.c.hour.type.result_processor(dialect, None), STORED.c.codes.type.result_processor(dialect, None)
    parsed: dict[str, datetime] = {}  # a time's text, parsed once
    if len(PARSED_CODES) > PARSED_CODES_KEPT:
        PARSED_CODES.clear()
    decoder = getattr(dialect, "_json_deserializer", None)  # None: the default's, json.loads

    def convert(row: tuple) -> tuple[str, StoredHour]:
        source, queue, hour, ended, failed, site, user, central, unknown, codes = row
        when = parsed.get(hour)
        if when is None:
            when = parsed[hour] = parse_time(hour)
        listed = PARSED_CODES.get((decoder, codes))
        if listed is None:
            listed = PARSED_CODES[(decoder, codes)] = tuple(parse_json(codes) or ())
        return source, StoredHour(queue, when, ended, failed, {"site": site, "user": user, "central": central,
                                                               "unknown": unknown}, listed)

    return convert


def _as_read(row: tuple) -> tuple[str, StoredHour]:
    return row[0], as_stored(row[1:])


_HOURS = select(STORED.c.source, *STORED_COLUMNS).where(STORED.c.hour >= bindparam("first"),
                                                        STORED.c.hour < bindparam("until"))
HOURS, HOURS_SINCE = DriverSelect(_HOURS), DriverSelect(_HOURS.where(STORED.c.read_at >= bindparam("since")))
LATER = f"SELECT 1 FROM {STORED.name} WHERE hour >= ? LIMIT 1"  # a row for an hour from a time on (SQLite)


def as_stored(values: Sequence) -> StoredHour:
    """A stored hour from the values of STORED_COLUMNS."""
    queue, hour, ended, failed, site, user, central, unknown, codes = values
    return StoredHour(queue, hour, ended, failed, {"site": site, "user": user, "central": central, "unknown": unknown},
                      tuple(codes or ()))


def outside_downtimes(hours: Sequence[StoredHour], downtimes: Sequence[Downtime]) -> list[StoredHour]:
    """The hours that count: not one that overlaps an announced outage of the queue's site, nor one that
    starts within an hour of its end.

    An hour's counts are the users' jobs that ended in it; when each waited or ran is not kept. An hour
    that overlaps the outage holds jobs that failed inside it. The hour after it holds the jobs that waited
    or ran at the site while it was down and failed as it came back (waiting jobs start at once, and a
    stage-in error comes first). So an outage excuses the hours from its start to a full hour after its end,
    as the test jobs that lived in it are excused (blacklist.engine.outside_downtimes). A job of it that
    fails later still counts: users' jobs never exclude alone, and the queue is tested at once at the end.
    """
    if not downtimes:
        return list(hours)
    return [h for h in hours if excused_by(h.hour, downtimes) is None]


def excused_by(hour: datetime, downtimes: Sequence[Downtime]) -> Downtime | None:
    """The announced outage that excuses the users' jobs of the hour starting at `hour`, if one does."""
    return next((d for d in downtimes if d.start < hour + HOUR and hour < d.end + HOUR), None)


RECENT = timedelta(hours=6)  # what `why` and the queue page show


def recent_rows(session: Session, queue: str, now: datetime, span: timedelta = RECENT) -> list[dict]:
    """A queue's users' jobs per hour over the last `span`, newest first, as `why` and the queue page
    show them: jobs ended and failed, failures per class, the errors behind them, and the announced
    outage of its site that keeps an hour from counting (`not_counted`, in words; "" when it counts)."""
    hours = stored_hours(session, now - span, now + HOUR, [queue]).get(queue, [])
    site = session.scalar(select(Site.name).join(Queue, Queue.site_id == Site.id).where(Queue.name == queue))
    downtimes = windows_by_site(session, now - span - 2 * HOUR, now + HOUR).get(site, []) if hours else []
    return [{"hour": f"{h.hour:%Y-%m-%d %H:00}", "ended": h.ended, "failed": h.failed, **h.by_class,
             "errors": ", ".join(f"{e['name']} {e['jobs']} ({e['class']})" for e in h.codes[:4])
             + (", ..." if len(h.codes) > 4 else ""),
             "not_counted": describe(d) if (d := excused_by(h.hour, downtimes)) else ""}
            for h in reversed(hours)]


def describe_hour(row: dict) -> str:
    """One hour in words: "users' jobs 2026-11-01 12:00 UTC: 40 ended, 6 failed (site 3, user 2): STAGEINFAILED 3 (site), ..."
    and, for an hour an announced outage excuses, "; not counted: scheduled downtime ..."."""
    classes = ", ".join(f"{k} {row[k]}" for k in ("site", "user", "central", "unknown") if row[k])
    text = f"users' jobs {row['hour']} UTC: {row['ended']} ended, {row['failed']} failed"
    text += f" ({classes}): {row['errors']}" if row["failed"] else ""
    return text + (f"; not counted: {row['not_counted']}" if row.get("not_counted") else "")
