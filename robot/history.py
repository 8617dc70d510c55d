"""Job records exported from PanDA's monitoring, imported as observed jobs.

PanDA's monitor lists jobs as JSON (its job list's `?json` answer is `{"jobs": [...]}`), one
record per job with the job table's column names in lower case: `pandaid`, `computingsite`,
`jobstatus`, `creationtime`, `starttime`, `endtime`, `piloterrorcode`, `piloterrordiag`, the other
error codes and diags, `nevents`, `cpuconsumptiontime`, ... A file may hold that object, a bare
list of records, or one record per line (JSON lines).

Records in a final state become `job` rows in the robot's vocabulary through the same mapping the
loop uses for a polled job (`robot.results.final_values`), under one test of an import template,
so that the pages, metrics and `policy replay` read them as they read the robot's own jobs. Only
what the robot stores of its own jobs is kept: no user name, no task or dataset of a user.

Reading is pure (`read_records`, `parse_record`); `import_history` writes, in bulk and
idempotently (a PanDA ID already stored is skipped). A record that cannot be read is reported
with its line and field and skipped; the others are imported.
"""
from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from operator import itemgetter
from typing import Any, Callable, Iterator, TextIO

from sqlalchemy import BigInteger, any_, bindparam, func, select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session

from robot import rollup
from robot.backends.base import JobReport
from robot.backends.panda import pilot_timing  # the same "getjob|stagein|payload|stageout|setup" field
from robot.classify import ErrorTable
from robot.clock import as_utc
from robot.jobstates import FINAL_STATES, JobStatus
from robot.results import final_values
from robot.storage.models import Job, Queue, Setting, Template, Test, UTCDateTime

IMPORT_PAYLOAD = "history"  # the payload of an import template: nothing the robot can send
BATCH = 5000
SQLITE_CACHE_KB = 256 * 1024  # while importing: the job table's indexes of a few million jobs
MAX_PROBLEMS_SHOWN = 50
# Monitor states that are final, with the robot's name for them; `closed` is a job the server
# ended without running it to completion (reassigned, aborted): not a verdict on the queue.
FINAL_ALIASES = {"closed": JobStatus.CANCELLED}
NOT_FINAL = {"pending", "defined", "assigned", "waiting", "activated", "throttled", "sent", "starting", "running",
             "holding", "transferring", "merging"}
INT_FIELDS = {  # monitor field -> JobReport field
    "piloterrorcode": "pilot_error_code", "exeerrorcode": "exe_error_code", "ddmerrorcode": "ddm_error_code",
    "taskbuffererrorcode": "task_buffer_error_code", "jobdispatchererrorcode": "job_dispatcher_error_code",
    "superrorcode": "sup_error_code", "nevents": "n_events", "maxrss": "max_rss_kb", "attemptnr": "attempt_nr",
}
TEXT_FIELDS = {
    "piloterrordiag": "pilot_error_diag", "exeerrordiag": "exe_error_diag", "ddmerrordiag": "ddm_error_diag",
    "taskbuffererrordiag": "task_buffer_error_diag", "jobdispatchererrordiag": "job_dispatcher_error_diag",
}
TIME_FIELDS = {"creationtime": "creation_time", "starttime": "start_time", "endtime": "end_time"}
STATES = {**{state.value: state for state in JobStatus}, **FINAL_ALIASES}  # monitor state -> the robot's


class HistoryFileError(Exception):
    """The file as a whole cannot be read (not JSON, not a list of job records)."""


@dataclass(frozen=True)
class Problem:
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.field}: {self.message}"


@dataclass(frozen=True)
class Observed:
    """A final job read from a record: where it ran and PanDA's report of it."""

    line: int
    queue: str
    report: JobReport


@dataclass
class ImportSummary:
    records: int = 0
    imported: int = 0
    already_known: int = 0  # PanDA IDs stored before (an import repeated)
    not_final: int = 0  # still in flight when exported: nothing to judge yet
    problems: list[Problem] = field(default_factory=list)
    unknown_queues: Counter[str] = field(default_factory=Counter)  # queue -> records skipped
    first_end: datetime | None = None
    last_end: datetime | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"records": self.records, "imported": self.imported, "already_known": self.already_known,
                "not_final": self.not_final, "bad_records": len(self.problems),
                "problems": [str(p) for p in self.problems[:MAX_PROBLEMS_SHOWN]],
                "unknown_queues": dict(self.unknown_queues.most_common()),
                "first_end": self.first_end.isoformat() if self.first_end else None,
                "last_end": self.last_end.isoformat() if self.last_end else None}


# -- reading (pure) ---------------------------------------------------------------------------------
def read_records(source: str | TextIO) -> Iterator[tuple[int, Any]]:
    """(line, record) for each record of a text or an open text file, whichever of the three layouts it has.

    A file is read in chunks of `CHUNK` characters and each record is decoded as soon as it is
    whole, so memory holds a chunk or two and one batch, not the file (a million records are about
    550 MB of JSON). Raises HistoryFileError when the text is none of the layouts. A record that is
    not a JSON object is still yielded (parse_record reports it), and so is a line of JSON lines that
    does not parse, as a Problem.
    """
    text = _Text(source)
    start = text.skip_space(0)
    if text.at(start) == "":
        return
    if text.at(start) == "[":
        yield from _array_items(text, start)
        return
    if text.at(start) != "{":
        raise HistoryFileError(LAYOUTS)
    line_end = text.find_newline(start)
    try:
        first = json.loads(text.buf[start:line_end] if line_end != -1 else text.buf[start:])
    except json.JSONDecodeError:  # an object over several lines: the monitor's {"jobs": [...]}
        yield from _array_items(text, _jobs_list(text, start))
        return
    if isinstance(first, dict) and "pandaid" in first:
        yield from _json_lines(text, start)
        return
    if not isinstance(first, dict) or "jobs" not in first:
        raise HistoryFileError(LAYOUTS)
    if not isinstance(first["jobs"], list):
        raise HistoryFileError(LAYOUTS)
    line = text.line_of(start)
    for record in first["jobs"]:  # the whole object on one line
        yield line, record


LAYOUTS = 'expected PanDA monitor job records: a {"jobs": [...]} object, a list of records or one record per line'
CHUNK = 1 << 20  # characters read at a time
_DECODER = json.JSONDecoder()
_SPACE = re.compile(r"[ \t\r\n]*")
_COMMA = re.compile(r"[ \t\r\n]*,[ \t\r\n]*")  # between two elements of a list


class _Text:
    """The text being read, as a window `buf` over it that grows by chunks as the reader looks further
    and forgets what the reader has passed (`forget`); positions are indexes into `buf`."""

    def __init__(self, source: str | TextIO):
        self._chunks: Iterator[str] = iter((source,)) if isinstance(source, str) else iter(
            lambda: source.read(CHUNK), "")
        self.buf = ""
        self.ended = False
        self._line, self._column = 1, 0  # where buf[0] is in the text (column from 0)

    def more(self) -> bool:
        """Read the next chunk into the window; False at the end of the text."""
        chunk = next(self._chunks, None)
        if chunk is None:
            self.ended = True
            return False
        self.buf += chunk
        return True

    def at(self, index: int) -> str:
        """The character at `index` ("" past the end of the text)."""
        if index < len(self.buf):
            return self.buf[index]
        while index >= len(self.buf) and self.more():
            pass
        return self.buf[index] if index < len(self.buf) else ""

    def skip_space(self, index: int) -> int:
        index = _SPACE.match(self.buf, index).end()
        while index == len(self.buf) and self.more():
            index = _SPACE.match(self.buf, index).end()
        return index

    def find_newline(self, index: int) -> int:
        found = self.buf.find("\n", index)
        while found == -1 and self.more():
            found = self.buf.find("\n", index)
        return found

    def decode(self, index: int) -> tuple[Any, int]:
        """The JSON value that starts at `index`, and where it ends: read on until it is whole (a value
        that ends where the window ends may go on in the next chunk); json.JSONDecodeError at the end."""
        while True:
            try:
                value, end = _DECODER.raw_decode(self.buf, index)
            except json.JSONDecodeError as exc:
                if self.more():
                    continue
                if exc.lineno == 1:
                    exc.colno += self._column
                exc.lineno += self._line - 1
                raise
            if end < len(self.buf) or not self.more():
                return value, end

    def forget(self, index: int) -> int:
        """Drop buf[:index] once it is more than a chunk; returns the position `index` now has."""
        if index < CHUNK:
            return index
        newlines = self.buf.count("\n", 0, index)
        self._line += newlines
        self._column = index - self.buf.rfind("\n", 0, index) - 1 if newlines else self._column + index
        self.buf = self.buf[index:]
        return 0

    def line_of(self, index: int) -> int:
        return self._line + self.buf.count("\n", 0, index)


def _json_lines(text: _Text, start: int) -> Iterator[tuple[int, Any]]:
    number, at = text.line_of(start), start
    while True:
        end = text.find_newline(at)
        line = text.buf[at:] if end == -1 else text.buf[at:end]
        if line.strip():
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as exc:
                yield number, Problem(number, "(record)", f"not JSON: {exc.msg} at column {exc.colno}")
        if end == -1:
            return
        number += 1
        at = text.forget(end + 1)


def _jobs_list(text: _Text, start: int) -> int:
    """Where the list under the key `jobs` begins, in the object that starts at `start`."""
    at = text.skip_space(start + 1)
    try:
        while text.at(at) not in ("}", ""):
            key, at = text.decode(at)
            at = text.skip_space(at)
            if text.at(at) != ":":
                break
            at = text.skip_space(at + 1)
            if key == "jobs" and text.at(at) == "[":
                return at
            _, at = text.decode(at)
            at = text.skip_space(at)
            if text.at(at) == ",":
                at = text.skip_space(at + 1)
    except json.JSONDecodeError as exc:
        raise HistoryFileError(f"line {exc.lineno}: not JSON: {LAYOUTS}") from None
    raise HistoryFileError(LAYOUTS)


def _array_items(text: _Text, at: int) -> Iterator[tuple[int, Any]]:
    """Each element of the JSON list that starts at `at`, with the line it starts on.

    An element that ends inside the window, followed by a comma there, is read without asking the
    window (most of them); one at its edge, or the list's end, goes the careful way."""
    at = text.skip_space(at + 1)
    line, counted = text.line_of(at), at  # the line of text.buf[counted]
    decode, after = _DECODER.raw_decode, _COMMA.match
    while text.at(at) not in ("]", ""):
        buf = text.buf
        line += buf.count("\n", counted, at)
        counted = at
        try:
            item, end = decode(buf, at)
            if end >= len(buf):  # a value at the window's edge may go on in the next chunk
                item, end = text.decode(at)
        except json.JSONDecodeError:
            try:
                item, end = text.decode(at)
            except json.JSONDecodeError as exc:
                raise HistoryFileError(f"line {exc.lineno}: not JSON: {exc.msg} at column {exc.colno}") from None
        yield line, item
        buf = text.buf
        comma = after(buf, end)
        if comma is not None and comma.end() < len(buf):
            at = comma.end()
        else:
            at = text.skip_space(end)
            if text.at(at) == ",":
                at = text.skip_space(at + 1)
            elif text.at(at) not in ("]", ""):
                raise HistoryFileError(f"line {line + text.buf.count(chr(10), counted, at)}: not JSON: expected ',' or ']'")
        if at >= CHUNK:  # what was read is done with
            line += text.buf.count("\n", counted, at)
            at = counted = text.forget(at)


def parse_record(line: int, record: Any) -> Observed | Problem | None:
    """One monitor record as an observed final job; None for a job not final yet."""
    if isinstance(record, Problem):
        return record
    if not isinstance(record, dict):
        return Problem(line, "(record)", f"expected a JSON object, got {type(record).__name__}")
    try:
        panda_id = _int(record, "pandaid", required=True)
        queue = record.get("computingsite")
        if not isinstance(queue, str) or not queue or queue == "NULL":
            raise _Bad("computingsite", f"expected a queue name, got {_show(queue)}")
        raw = record.get("jobstatus")
        if not isinstance(raw, str):
            raise _Bad("jobstatus", f"expected a PanDA job state, got {_show(raw)}")
        if raw in NOT_FINAL:
            return None
        state = STATES.get(raw)
        if state is None:
            raise _Bad("jobstatus", f"expected a PanDA job state, got {_show(raw)}")
        if state not in FINAL_STATES:
            return None
        get = record.get  # the usual values (a whole number, a text) are taken at once, the rest checked
        values: dict[str, Any] = {name: value if type(value := get(key)) is int else _int(record, key)
                                  for key, name in INT_FIELDS.items()}
        values.update({name: value if type(value := get(key)) is str and value and value != "NULL" else _text(value)
                       for key, name in TEXT_FIELDS.items()})
        values.update({name: _time(record, key) for key, name in TIME_FIELDS.items()})
        if values["end_time"] is None:
            raise _Bad("endtime", f"a {raw} job needs its end time")
        cores = _int(record, "actualcorecount") or _int(record, "corecount") or 1
        report = JobReport(panda_id=panda_id, job_status=state, queue=queue, core_count=cores,
                           trans_exit_code=_exit_code(record.get("transexitcode")),
                           cpu_consumption_time=_float(record, "cpuconsumptiontime"),
                           pilot_timing=pilot_timing(record.get("pilottiming")), **values)
    except _Bad as bad:
        return Problem(line, bad.field, bad.message)
    return Observed(line, queue, report)


class _Bad(Exception):
    def __init__(self, field_name: str, message: str):
        super().__init__(message)
        self.field = field_name
        self.message = message


def _show(value: Any) -> str:
    return "nothing" if value is None else repr(value)[:60]


def _missing(value: Any) -> bool:
    return value is None or value == "" or value == "NULL"


def _int(record: dict[str, Any], key: str, *, required: bool = False) -> int:
    value = record.get(key)
    if _missing(value):
        if required:
            raise _Bad(key, "required, expected a whole number")
        return 0
    if isinstance(value, bool):
        raise _Bad(key, f"expected a whole number, got {_show(value)}")
    if isinstance(value, int):
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise _Bad(key, f"expected a whole number, got {_show(value)}") from None
    if not number.is_integer():
        raise _Bad(key, f"expected a whole number, got {_show(value)}")
    return int(number)


def _float(record: dict[str, Any], key: str) -> float:
    value = record.get(key)
    if _missing(value):
        return 0.0
    if isinstance(value, bool):
        raise _Bad(key, f"expected a number, got {_show(value)}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise _Bad(key, f"expected a number, got {_show(value)}") from None


def _text(value: Any) -> str:
    return "" if _missing(value) else str(value)


def _exit_code(value: Any) -> int | None:
    try:
        return None if _missing(value) else int(str(value).strip())
    except ValueError:
        return None


def _time(record: dict[str, Any], key: str) -> datetime | None:
    """The monitor writes UTC times as "2026-11-02 13:04:05" (or ISO 8601 with a T, a zone, a fraction)."""
    value = record.get(key)
    if type(value) is str and len(value) == 19:  # the monitor's own "2026-11-02 13:04:05", read at once
        try:
            return datetime.fromisoformat(value + "+00:00")
        except ValueError:
            pass
    if _missing(value):
        return None
    if not isinstance(value, str):
        raise _Bad(key, f"expected a UTC time such as '2026-11-02 13:04:05', got {_show(value)}")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise _Bad(key, f"expected a UTC time such as '2026-11-02 13:04:05', got {_show(value)}") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


# -- writing --------------------------------------------------------------------------------------
def import_history(session: Session, path: Path, template: str, table: ErrorTable, now: datetime) -> ImportSummary:
    """Import the final jobs of a monitor export under `template`; the caller commits."""
    summary = ImportSummary()
    queues = {name: id_ for name, id_ in session.execute(select(Queue.name, Queue.id))}
    test_id = _import_test(session, template, now)
    live = session.get(Setting, rollup.WATERMARK_SETTING) is not None  # the robot rolls up: the hours imported are added
    if live:
        rollup.update(session, now)  # the jobs the loop made final so far, before the imported ones join them
    touched: dict[int, set[int]] | None = defaultdict(set) if live else None  # hour start -> queue ids
    batch: list[tuple[int, datetime, tuple[Any, ...]]] = []
    try:
        with path.open(encoding="utf-8") as handle, _writer(session) as bulk:  # streamed: a chunk and a batch
            stamped_now = bulk.stamp(_naive_utc(now))
            for line, record in read_records(handle):
                summary.records += 1
                row = _finished_row(record, queues, test_id, stamped_now, bulk.stamp)
                if row is None:  # anything but the usual finished job: read field by field, and reported
                    parsed = parse_record(line, record)
                    if parsed is None:
                        summary.not_final += 1
                    elif isinstance(parsed, Problem):
                        summary.problems.append(parsed)
                    elif parsed.queue not in queues:
                        summary.unknown_queues[parsed.queue] += 1
                    else:
                        row = _row(parsed, queues[parsed.queue], test_id, table, now, bulk.stamp)
                if row is not None:
                    batch.append(row)
                    if len(batch) >= BATCH:
                        _store(batch, summary, bulk, touched)
                        batch = []
            _store(batch, summary, bulk, touched)
    except UnicodeDecodeError:
        raise HistoryFileError("not a text file: expected PanDA monitor job records as JSON") from None
    if summary.imported:
        _stretch_test(session, test_id, summary)
        rollup.add_bulk(session, touched, now, session.scalar(select(Test.template_id).where(Test.id == test_id)))
    return summary


def _import_test(session: Session, name: str, now: datetime) -> int:
    """The test that holds imported jobs: one per import template, of an inactive template."""
    template = session.scalar(select(Template).where(Template.name == name))
    if template is None:
        template = Template(name=name, category="functional", active=False, payload=IMPORT_PAYLOAD,
                            input_dataset="", events_per_job=0, processing_type="",
                            settings={"imported": True})
        session.add(template)
        session.flush()
    test_id = session.scalar(select(Test.id).where(Test.template_id == template.id).order_by(Test.id))
    if test_id is None:
        test = Test(template_id=template.id, category="functional", state="completed", start_time=now,
                    end_time=now, created_at=now, requested_by="history import")
        session.add(test)
        session.flush()
        test_id = test.id
    return test_id


# The job columns an imported record fills (all but the loop's own bookkeeping: id, worker_id,
# retry_of), in the order the bulk writer binds them and `_finished_row` writes them.
COLUMNS = ("test_id", "queue_id", "job_name", "panda_id", "phase", "job_status", "dataset", "n_files", "recorded_at",
           "submitted_at", "status_changed_at", "creation_time", "start_time", "end_time", "trans_exit_code",
           "pilot_error_code", "pilot_error_diag", "exe_error_code", "exe_error_diag", "ddm_error_code",
           "ddm_error_diag", "task_buffer_error_code", "task_buffer_error_diag", "job_dispatcher_error_code",
           "job_dispatcher_error_diag", "sup_error_code", "n_events", "cpu_consumption_time", "max_rss_kb",
           "core_count", "attempt_nr", "time_queue", "time_stagein", "time_setup", "time_payload", "time_stageout",
           "outcome", "error_source", "error_code", "error_name", "error_class", "error_diag")
TIME_COLUMNS = tuple(i for i, name in enumerate(COLUMNS) if isinstance(Job.__table__.c[name].type, UTCDateTime))
_in_column_order = itemgetter(*COLUMNS)
QUEUE_ID = COLUMNS.index("queue_id")
Stamp = Callable[[datetime], Any]  # a naive UTC time as the writer binds it


@dataclass(frozen=True)
class _Bulk:
    """The database's bulk path for job rows (tuples in COLUMNS order, times as `stamp` writes them)."""

    write: Callable[[list[tuple[Any, ...]]], None]
    stamp: Stamp
    stored: Callable[[list[int]], set[int]]  # which of these PanDA IDs a job has already


@contextmanager
def _writer(session: Session) -> Iterator[_Bulk]:
    """Appends job rows through the database's own bulk path, in the session's transaction: COPY on
    PostgreSQL, one prepared INSERT run by executemany on SQLite. Plain tuples are bound as they are
    (SQLAlchemy's per-value processing of 43 columns was a third of the import's time), so the times
    are written as the models write them: naive UTC, on SQLite as its text. The PanDA IDs of a batch
    are looked up as one bound value (a JSON list, an array), not one placeholder each. On SQLite the
    connection's page cache is made large enough for the job table's indexes while it writes."""
    connection = session.connection()
    raw = connection.connection.driver_connection
    names = ", ".join(COLUMNS)
    dialect = connection.dialect.name
    if dialect == "postgresql":
        known = select(Job.panda_id).where(Job.panda_id == any_(bindparam("ids", type_=ARRAY(BigInteger))))

        def copy(rows: list[tuple[Any, ...]]) -> None:
            with raw.cursor() as cursor, cursor.copy(f"COPY job ({names}) FROM STDIN") as sink:
                for values in rows:
                    sink.write_row(values)
        yield _Bulk(copy, _as_it_is, lambda ids: set(connection.execute(known, {"ids": ids}).scalars()))
        return
    if dialect != "sqlite":
        raise ValueError(f"history import writes to SQLite or PostgreSQL, not {dialect}")
    statement = f"INSERT INTO job ({names}) VALUES ({', '.join('?' * len(COLUMNS))})"
    lookup = "SELECT panda_id FROM job WHERE panda_id IN (SELECT value FROM json_each(?))"
    cache = raw.execute("PRAGMA cache_size").fetchone()[0]
    raw.execute(f"PRAGMA cache_size = -{SQLITE_CACHE_KB}")
    try:
        yield _Bulk(lambda rows: raw.executemany(statement, rows), _sqlite_text,
                    lambda ids: {found for found, in raw.execute(lookup, (json.dumps(ids),))})
    finally:
        raw.execute(f"PRAGMA cache_size = {int(cache)}")


def _as_it_is(moment: datetime) -> datetime:
    return moment


def _naive_utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=None) if moment.tzinfo is UTC else as_utc(moment).replace(tzinfo=None)


def _sqlite_text(naive: datetime) -> str:
    """SQLAlchemy's text for a naive UTC time on SQLite ("2026-11-02 13:04:05.000000"), so that stored times compare."""
    return naive.isoformat(" ", "microseconds")


def _row(observed: Observed, queue_id: int, test_id: int, table: ErrorTable, now: datetime,
         stamp: Stamp) -> tuple[int, datetime, tuple[Any, ...]]:
    """(PanDA ID, naive UTC end, the job row in COLUMNS order) of any final job read by parse_record."""
    report = observed.report
    row = final_values(report, table)
    row.update(test_id=test_id, queue_id=queue_id, job_name=f"history.{report.panda_id}",
               panda_id=report.panda_id, job_status=report.job_status.value, dataset="", n_files=0,
               recorded_at=now, submitted_at=report.creation_time, status_changed_at=now,
               creation_time=report.creation_time, start_time=report.start_time, end_time=report.end_time)
    values = list(_in_column_order(row))
    for i in TIME_COLUMNS:
        if values[i] is not None:
            values[i] = stamp(_naive_utc(values[i]))
    return report.panda_id, _naive_utc(report.end_time), tuple(values)


INT_KEYS = tuple(INT_FIELDS)  # piloterrorcode, exeerrorcode, ddmerrorcode, taskbuffererrorcode,
# jobdispatchererrorcode, superrorcode, nevents, maxrss, attemptnr
TEXT_KEYS = tuple(TEXT_FIELDS)  # piloterrordiag, exeerrordiag, ddmerrordiag, taskbuffererrordiag, jobdispatchererrordiag
_from_iso = datetime.fromisoformat


def _finished_row(record: Any, queues: dict[str, int], test_id: int, now: Any,
                  stamp: Stamp) -> tuple[int, datetime, tuple[Any, ...]] | None:
    """`_row` of the usual record, read in one pass: a finished job at a known queue with its PanDA ID a
    whole number and its times naive (the monitor's "2026-11-02 13:04:05"). None for any other record:
    parse_record reads it, and reports what is wrong with it. Each field is read by the same rule as
    parse_record and final_values read it, and a test holds the two rows equal; this one builds no
    report and no dict (the import's time went to building them). `now` is stamped already."""
    if type(record) is not dict:
        return None
    get = record.get
    panda_id, queue = get("pandaid"), get("computingsite")
    if get("jobstatus") != "finished" or type(panda_id) is not int or type(queue) is not str:
        return None
    queue_id = queues.get(queue)
    if queue_id is None:
        return None
    try:
        created, started, ended = _from_iso(get("creationtime")), _from_iso(get("starttime")), _from_iso(get("endtime"))
        if created.tzinfo is not None or started.tzinfo is not None or ended.tzinfo is not None:
            return None
        pilot, exe, ddm, task_buffer, dispatcher, sup, n_events, max_rss, attempt = (
            value if type(value := get(key)) is int else _int(record, key) for key in INT_KEYS)
        cores = value if type(value := get("actualcorecount")) is int and value else (
            _int(record, "actualcorecount") or _int(record, "corecount") or 1)
        cpu = value if type(value := get("cpuconsumptiontime")) is float else _float(record, "cpuconsumptiontime")
    except (TypeError, ValueError, _Bad):  # a time that is not a naive one, a field parse_record would report
        return None
    pilot_diag, exe_diag, ddm_diag, task_buffer_diag, dispatcher_diag = (
        value if type(value := get(key)) is str and value and value != "NULL" else _text(value) for key in TEXT_KEYS)
    timing = pilot_timing(get("pilottiming"))
    created_at = stamp(created)
    return panda_id, ended, (
        test_id, queue_id, f"history.{panda_id}", panda_id, "done", "finished", "", 0, now, created_at, now,
        created_at, stamp(started), stamp(ended), _exit_code(get("transexitcode")), pilot, pilot_diag, exe, exe_diag,
        ddm, ddm_diag, task_buffer, task_buffer_diag, dispatcher, dispatcher_diag, sup, n_events, cpu, max_rss, cores,
        attempt, (started - created).total_seconds(), timing.get("stagein"), timing.get("setup"),
        timing.get("payload"), timing.get("stageout"), "completed", None, None, None, None, None)


def _store(batch: list[tuple[int, datetime, tuple[Any, ...]]], summary: ImportSummary, bulk: _Bulk,
           touched: dict[int, set[int]] | None) -> None:
    """Write the rows of a batch whose PanDA IDs are not stored yet (nor earlier in the batch), and note
    the hour each ended in at its queue in `touched` (when given)."""
    if not batch:
        return
    known = bulk.stored([panda_id for panda_id, _, _ in batch])
    rows = []
    first = summary.first_end.replace(tzinfo=None) if summary.first_end else None
    last = summary.last_end.replace(tzinfo=None) if summary.last_end else None
    for panda_id, end, values in batch:
        if panda_id in known:
            summary.already_known += 1
            continue
        known.add(panda_id)
        rows.append(values)
        if touched is not None:
            touched[rollup.floor_to(end.replace(tzinfo=UTC).timestamp(), rollup.HOUR)].add(values[QUEUE_ID])
        if first is None or end < first:
            first = end
        if last is None or end > last:
            last = end
    if rows:
        bulk.write(rows)
        summary.imported += len(rows)
        summary.first_end, summary.last_end = first.replace(tzinfo=UTC), last.replace(tzinfo=UTC)


def _stretch_test(session: Session, test_id: int, summary: ImportSummary) -> None:
    test = session.get(Test, test_id)
    first, last = session.execute(select(func.min(Job.creation_time), func.max(Job.end_time))
                                  .where(Job.test_id == test_id)).one()
    if first is not None:
        test.start_time = first
    if last is not None:
        test.end_time = last

