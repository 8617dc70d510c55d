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
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Callable, Iterator, TextIO

from operator import itemgetter

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from robot import rollup
from robot.backends.base import JobReport
from robot.backends.panda import pilot_timing  # the same "getjob|stagein|payload|stageout|setup" field
from robot.classify import ErrorTable
from robot.clock import as_utc
from robot.jobstates import FINAL_STATES, JobStatus
from robot.results import final_values
from robot.storage.models import Job, Queue, Template, Test, UTCDateTime

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
    """Each element of the JSON list that starts at `at`, with the line it starts on."""
    at = text.skip_space(at + 1)
    line, counted = text.line_of(at), at  # the line of text.buf[counted]
    while text.at(at) not in ("]", ""):
        line += text.buf.count("\n", counted, at)
        counted = at
        try:
            item, end = text.decode(at)
        except json.JSONDecodeError as exc:
            raise HistoryFileError(f"line {exc.lineno}: not JSON: {exc.msg} at column {exc.colno}") from None
        yield line, item
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
    batch: list[Observed] = []
    try:
        with path.open(encoding="utf-8") as handle, _writer(session) as write:  # streamed: a chunk and a batch
            for line, record in read_records(handle):
                summary.records += 1
                parsed = parse_record(line, record)
                if parsed is None:
                    summary.not_final += 1
                elif isinstance(parsed, Problem):
                    summary.problems.append(parsed)
                elif parsed.queue not in queues:
                    summary.unknown_queues[parsed.queue] += 1
                else:
                    batch.append(parsed)
                    if len(batch) >= BATCH:
                        _store(session, batch, queues, test_id, table, now, summary, write)
                        batch = []
            _store(session, batch, queues, test_id, table, now, summary, write)
    except UnicodeDecodeError:
        raise HistoryFileError("not a text file: expected PanDA monitor job records as JSON") from None
    if summary.imported:
        _stretch_test(session, test_id, summary)
        rollup.update(session, now)
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


# The job columns an imported record fills (all but the loop's own bookkeeping), in the order the
# bulk writer binds them; the times among them (naive UTC on the wire, as UTCDateTime stores them).
COLUMNS = tuple(c.name for c in Job.__table__.columns if c.name not in ("id", "worker_id", "retry_of"))
TIME_COLUMNS = tuple(i for i, name in enumerate(COLUMNS) if isinstance(Job.__table__.c[name].type, UTCDateTime))
_in_column_order = itemgetter(*COLUMNS)


@contextmanager
def _writer(session: Session) -> Iterator[Callable[[list[dict[str, Any]]], None]]:
    """Appends job rows through the database's own bulk path, in the session's transaction: COPY on
    PostgreSQL, one prepared INSERT run by executemany on SQLite. Plain tuples are bound as they are
    (SQLAlchemy's per-value processing of 43 columns was a third of the import's time), so the times
    are written here as the models write them: naive UTC, on SQLite as its text. On SQLite the
    connection's page cache is made large enough for the job table's indexes while it writes."""
    connection = session.connection()
    raw = connection.connection.driver_connection
    names = ", ".join(COLUMNS)
    dialect = connection.dialect.name
    stamp = _naive_utc if dialect == "postgresql" else _sqlite_text

    def tuples(rows: list[dict[str, Any]]) -> Iterator[tuple[Any, ...]]:
        for row in rows:
            values = list(_in_column_order(row))
            for i in TIME_COLUMNS:
                if values[i] is not None:
                    values[i] = stamp(values[i])
            yield tuple(values)

    if dialect == "postgresql":
        def copy(rows: list[dict[str, Any]]) -> None:
            with raw.cursor() as cursor, cursor.copy(f"COPY job ({names}) FROM STDIN") as sink:
                for values in tuples(rows):
                    sink.write_row(values)
        yield copy
        return
    if dialect != "sqlite":
        raise ValueError(f"history import writes to SQLite or PostgreSQL, not {dialect}")
    statement = f"INSERT INTO job ({names}) VALUES ({', '.join('?' * len(COLUMNS))})"
    cache = raw.execute("PRAGMA cache_size").fetchone()[0]
    raw.execute(f"PRAGMA cache_size = -{SQLITE_CACHE_KB}")
    try:
        yield lambda rows: raw.executemany(statement, tuples(rows))
    finally:
        raw.execute(f"PRAGMA cache_size = {int(cache)}")


def _naive_utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=None) if moment.tzinfo is UTC else as_utc(moment).replace(tzinfo=None)


def _sqlite_text(moment: datetime) -> str:
    """SQLAlchemy's text for a time on SQLite ("2026-11-02 13:04:05.000000"), so that stored times compare."""
    return _naive_utc(moment).isoformat(" ", "microseconds")


def _store(session: Session, batch: list[Observed], queues: dict[str, int], test_id: int, table: ErrorTable,
           now: datetime, summary: ImportSummary, write: Callable[[list[dict[str, Any]]], None]) -> None:
    if not batch:
        return
    ids = {o.report.panda_id for o in batch}
    known = set(session.scalars(select(Job.panda_id).where(Job.panda_id.in_(ids))))
    rows, seen = [], set()
    for observed in batch:
        report = observed.report
        if report.panda_id in known or report.panda_id in seen:
            summary.already_known += 1
            continue
        seen.add(report.panda_id)
        row = final_values(report, table)
        row.update(test_id=test_id, queue_id=queues[observed.queue], job_name=f"history.{report.panda_id}",
                   panda_id=report.panda_id, job_status=report.job_status.value, dataset="", n_files=0,
                   recorded_at=now, submitted_at=report.creation_time, status_changed_at=now,
                   creation_time=report.creation_time, start_time=report.start_time, end_time=report.end_time)
        rows.append(row)
        end = report.end_time
        summary.first_end = end if summary.first_end is None else min(summary.first_end, end)
        summary.last_end = end if summary.last_end is None else max(summary.last_end, end)
    if rows:
        write(rows)
        summary.imported += len(rows)


def _stretch_test(session: Session, test_id: int, summary: ImportSummary) -> None:
    test = session.get(Test, test_id)
    first, last = session.execute(select(func.min(Job.creation_time), func.max(Job.end_time))
                                  .where(Job.test_id == test_id)).one()
    if first is not None:
        test.start_time = first
    if last is not None:
        test.end_time = last

