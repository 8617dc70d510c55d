"""The job rollup: final results summed per queue, template and hour, 6 hours, day and week (`job_rollup`),
and the same summed over the templates, per queue (`queue_rollup`).

Pages over long windows read these rows instead of the job table. Every hour in which jobs became
final is recomputed from the job table (the rows of that hour and those queues are replaced), then
its 6 hours from its hours, its day from those and its week from its days; then the queue rows of
those periods from their job rollup rows. Recomputing instead of adding is what makes a
job count once however often it is seen final (a retried step, a job polled twice): the rollup
always equals what `rebuild` derives from the job table.

`update(session, now)` is the loop's call, once per step after the results are stored; it finds
the jobs made final since its last call through `job.status_changed_at` (kept in the `setting`
table). `rebuild(session, now)` is the backfill (`healthrobot db rollup`): it derives everything
again from the job table, and may be run any number of times.
"""
from __future__ import annotations

import functools
import json
import logging
from collections import defaultdict
from dataclasses import dataclass, fields
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable

from sqlalchemy import (BigInteger, Float, Integer, String, and_, any_, bindparam, case, cast, delete, func, insert,
                        literal, literal_column, or_, select, tuple_)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session

from robot.storage import settings
from robot.storage.models import Job, JobRollup, QueueRollup, Setting, Test

log = logging.getLogger(__name__)

HOUR = 3600
SIX_HOURS = 6 * HOUR  # a week heatmap's cells: at 1,000 queues x 3 templates an hour holds about one job per row
DAY = 24 * HOUR
WEEK = 7 * DAY  # Unix-aligned weeks (they start on Thursdays): only their nesting of days matters
SPANS = (HOUR, SIX_HOURS, DAY, WEEK)  # each a whole number of the one before, nested
FORMER_SPANS = (HOUR, DAY, WEEK)  # of a rollup built before the 6-hour rows (no SPANS_SETTING)
SPANS_SETTING = "rollup.spans"  # the spans the stored rollup holds, finest first
WATERMARK_SETTING = "rollup.seen_until"  # status_changed_at from which final jobs are not rolled up yet
AT_MARK_SETTING = "rollup.seen_at_mark"  # how many final jobs stamped exactly at the watermark are rolled up
KEPT_FROM_SETTING = "rollup.kept_from"  # jobs before this were pruned: the rollup before it is kept as it is
CLASSES = ("site", "user", "central", "unknown")
CHUNK = 500  # ids per IN (...)
REBUILD_CHUNK = timedelta(days=7)


@dataclass
class Counts:
    """The sums of one rollup row (or of several: `add`)."""

    jobs: int = 0
    failed: int = 0
    completed: int = 0
    cancelled: int = 0
    unknown: int = 0
    failed_site: int = 0
    failed_user: int = 0
    failed_central: int = 0
    failed_unknown: int = 0
    events: int = 0
    wall_seconds: float = 0.0
    cpu_seconds: float = 0.0
    payload_events: int = 0
    payload_seconds: float = 0.0
    last_end: datetime | None = None

    def add_job(self, outcome: str | None, end: datetime, start: datetime | None, n_events: int | None,
                payload: float | None, cpu: float | None, error_class: str | None) -> None:
        """One final job, counted as robot.metrics.summarize counts it."""
        if self.last_end is None or end > self.last_end:
            self.last_end = end
        if outcome == "completed":
            self.jobs += 1
            self.completed += 1
            wall = (end - start).total_seconds() if start else 0.0
            if wall > 0:
                self.events += n_events or 0
                self.wall_seconds += wall
                self.cpu_seconds += cpu or 0.0
            if payload and payload > 0:
                self.payload_events += n_events or 0
                self.payload_seconds += payload
        elif outcome == "failed":
            self.jobs += 1
            self.failed += 1
            klass = error_class if error_class in CLASSES else "unknown"
            setattr(self, f"failed_{klass}", getattr(self, f"failed_{klass}") + 1)
        elif outcome == "cancelled":
            self.cancelled += 1
        elif outcome == "unknown":
            self.unknown += 1

    def add(self, other: "Counts") -> None:
        for name in SUMS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        if other.last_end is not None and (self.last_end is None or other.last_end > self.last_end):
            self.last_end = other.last_end

    def as_row(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


SUMS = tuple(f.name for f in fields(Counts) if f.name != "last_end")
ROLLUP_COLUMNS = ("span", "start", "queue_id", "template_id", *SUMS, "last_end")
QUEUE_COLUMNS = ("span", "start", "queue_id", *SUMS, "last_end")


def epoch(moment: datetime) -> float:
    return moment.timestamp()


def at(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, tz=timezone.utc)


def floor_to(seconds: float, span: int) -> int:
    return int(seconds // span) * span


def job_columns() -> tuple[Any, ...]:
    """What `Counts.add_job` reads, after the queue and template ids."""
    return (Job.queue_id, Test.template_id, Job.outcome, Job.end_time, Job.start_time, Job.n_events,
            Job.time_payload, Job.cpu_consumption_time, Job.error_class)


def aggregate(rows: Iterable[Any], span: int = HOUR) -> dict[tuple[int, int, int], Counts]:
    """(queue id, template id, period start) -> Counts, from rows shaped like `job_columns()`. Pure."""
    found: dict[tuple[int, int, int], Counts] = {}
    for queue_id, template_id, outcome, end, start, n_events, payload, cpu, klass in rows:
        key = (queue_id, template_id, floor_to(epoch(end), span))
        counts = found.get(key)
        if counts is None:
            counts = found[key] = Counts()
        counts.add_job(outcome, end, start, n_events, payload, cpu, klass)
    return found


FINAL = ("completed", "failed", "cancelled", "unknown")  # outcomes are set when a job is done


def _final_jobs(*where: Any) -> Any:
    return (select(*job_columns()).join(Test, Test.id == Job.test_id)
            .where(Job.outcome.in_(FINAL), Job.end_time.is_not(None), *where))


def _hour_and_wall(dialect: str) -> tuple[Any, Any] | None:
    """SQL for a job's hour (Unix seconds) and wall time, on the databases that have them."""
    if dialect == "sqlite":  # stored as 'YYYY-MM-DD HH:MM:SS.ffffff'; SQLite's own date functions keep ms only

        def whole(column: Any) -> Any:  # the fraction cut off first: SQLite would round it to the next second
            return cast(func.strftime("%s", func.substr(column, 1, 19)), Integer)

        def exact(column: Any) -> Any:
            return whole(column) + cast(func.substr(column, 20), Float)

        return (whole(Job.end_time) // HOUR) * HOUR, exact(Job.end_time) - exact(Job.start_time)
    if dialect == "postgresql":
        seconds = func.extract("epoch", Job.end_time)
        return (cast(func.floor(seconds / HOUR), BigInteger) * HOUR,
                func.extract("epoch", Job.end_time - Job.start_time))
    return None


def sums_sql(dialect: str) -> dict[str, Any] | None:
    """SQL aggregates of final jobs, one per rollup column (SUMS, then last_end), counted as
    `Counts.add_job` counts them; None on a database without the date arithmetic they need."""
    found = _hour_and_wall(dialect)
    if found is None:
        return None
    wall = found[1]
    completed = Job.outcome == "completed"
    timed = and_(completed, Job.end_time > Job.start_time)
    paid = and_(completed, Job.time_payload > 0)
    failed = Job.outcome == "failed"

    def count(condition: Any) -> Any:
        return func.sum(case((condition, 1), else_=0))

    def total(condition: Any, value: Any) -> Any:
        return func.coalesce(func.sum(case((condition, func.coalesce(value, 0)), else_=0)), 0)

    columns = [count(Job.outcome.in_(["completed", "failed"])), count(failed), count(completed),
               count(Job.outcome == "cancelled"), count(Job.outcome == "unknown"),
               *(count(and_(failed, Job.error_class == k)) for k in ("site", "user", "central")),
               count(and_(failed, or_(Job.error_class.is_(None), Job.error_class.not_in(CLASSES[:3])))),
               total(timed, Job.n_events), total(timed, wall), total(timed, Job.cpu_consumption_time),
               total(paid, Job.n_events), total(paid, Job.time_payload), func.max(Job.end_time)]
    return dict(zip((*SUMS, "last_end"), columns))


def _hours_select(dialect: str, *where: Any) -> Any | None:
    """The hour rows of the matching final jobs, summed by the database as `Counts.add_job` sums them."""
    sums = sums_sql(dialect)
    if sums is None:
        return None
    hour = _hour_and_wall(dialect)[0]
    return (select(literal(HOUR), hour, Job.queue_id, Test.template_id, *sums.values())
            .join(Test, Test.id == Job.test_id)
            .where(Job.outcome.in_(FINAL), Job.end_time.is_not(None), *where)
            .group_by(hour, Job.queue_id, Test.template_id)
            .order_by(hour, Job.queue_id, Test.template_id))  # in the rollup's key order: appended to its index


def _fill_hours(session: Session, *where: Any) -> None:
    """Insert the hour rows of the matching final jobs (their rows must be gone)."""
    query = _hours_select(session.get_bind().dialect.name, *where)
    if query is not None:
        session.execute(insert(JobRollup.__table__).from_select(ROLLUP_COLUMNS, query))
        return
    _insert(session, HOUR, aggregate(session.execute(_final_jobs(*where)), HOUR))


def _insert(session: Session, span: int, found: dict[tuple[int, int, int], Counts]) -> None:
    if found:  # in the table's key order (span, start, queue, template): appended, not scattered
        session.execute(insert(JobRollup.__table__), [
            {"span": span, "start": start, "queue_id": q, "template_id": t, **found[(q, t, start)].as_row()}
            for start, q, t in sorted((start, q, t) for q, t, start in found)])


def _chunks(ids: Iterable[int]) -> Iterable[list[int]]:
    ordered = sorted(ids)
    for i in range(0, len(ordered), CHUNK):
        yield ordered[i:i + CHUNK]


def _among_ids(column: Any, dialect: str) -> Any:
    """`column` in the queue ids bound as `ids` (`_ids`), one bound value on SQLite (a JSON list) and
    PostgreSQL (an array): not one placeholder per id to render at every execution."""
    if dialect == "postgresql":
        return column == any_(bindparam("ids", type_=ARRAY(Integer)))
    if dialect == "sqlite":
        return column.in_(select(literal_column("value")).select_from(func.json_each(bindparam("ids", type_=String))))
    return column.in_(bindparam("ids", expanding=True))


def _ids(dialect: str, ids: list[int]) -> Any:
    return json.dumps(ids) if dialect == "sqlite" else ids


def _among_pairs(queue: Any, template: Any, dialect: str) -> Any:
    """(`queue`, `template`) in the pairs bound as `pairs` (`_pairs`): one bound value on SQLite (a JSON list
    of pairs) and PostgreSQL (two arrays of the same length)."""
    if dialect == "postgresql":
        pairs = func.unnest(bindparam("pair_queues", type_=ARRAY(Integer)),
                            bindparam("pair_templates", type_=ARRAY(Integer))).table_valued("q", "t").render_derived()
        return tuple_(queue, template).in_(select(pairs.c.q, pairs.c.t))
    if dialect == "sqlite":
        value = literal_column("value")
        return tuple_(queue, template).in_(select(func.json_extract(value, "$[0]"), func.json_extract(value, "$[1]"))
                                           .select_from(func.json_each(bindparam("pairs", type_=String))))
    return tuple_(queue, template).in_(bindparam("pairs", expanding=True))


def _pairs(dialect: str, pairs: list[tuple[int, int]]) -> dict[str, Any]:
    if dialect == "postgresql":
        return {"pair_queues": [q for q, _ in pairs], "pair_templates": [t for _, t in pairs]}
    return {"pairs": json.dumps(pairs) if dialect == "sqlite" else pairs}


def _pair_chunks(dialect: str, pairs: Iterable[tuple[int, int]]) -> list[dict[str, Any]]:
    """The bound values of `pairs` (queue id, template id) in chunks of at most CHUNK queues: `ids` their
    queues (what the indexes are searched by), and the pairs themselves."""
    by_queue: dict[int, list[int]] = defaultdict(list)
    for queue_id, template_id in pairs:
        by_queue[queue_id].append(template_id)
    return [{"ids": _ids(dialect, chunk), **_pairs(dialect, [(q, t) for q in chunk for t in sorted(by_queue[q])])}
            for chunk in _chunks(by_queue)]


@functools.cache
def _step_statements(dialect: str) -> dict[Any, tuple[Any, Any]]:
    """The statements `update` runs at every step, (delete, insert) per span and for the queue rows,
    built once per database kind: what varies (the period, the queue ids and (queue, template) pairs) is
    bound at execution, so no expression is built per step and SQLAlchemy's compiled cache serves them.
    The hours' insert is None where the database cannot sum them (`_hours_select`). The job rollup's rows
    are those of the pairs whose jobs ended, not every template's at their queues: a step ends about one
    job of one template at a queue, and its other templates' rows would only be read again.

    On SQLite and PostgreSQL the delete is None and the insert an upsert that writes only the rows whose
    sums changed: every key the select yields has a job in it, and a step changes few of the rows it
    recomputes (one template's of a queue, and the queue rows of its periods), so most are only read."""
    start = bindparam("start", type_=BigInteger)
    hours = _hours_select(dialect, _among_ids(Job.queue_id, dialect), _among_pairs(Job.queue_id, Test.template_id, dialect),
                          Job.end_time >= bindparam("first", type_=Job.end_time.type),
                          Job.end_time < bindparam("last", type_=Job.end_time.type))
    jobs, queues = JobRollup.__table__, QueueRollup.__table__

    def replace(table: Any, columns: tuple[str, ...], query: Any, *where: Any) -> tuple[Any, Any]:
        upsert = UPSERTS.get(dialect)
        if upsert is None:
            return delete(table).where(*where), insert(table).from_select(columns, query)
        statement = upsert(table).from_select(columns, query)
        sums = [name for name in columns if name not in table.primary_key.columns]
        return None, statement.on_conflict_do_update(
            index_elements=list(table.primary_key.columns), set_={name: statement.excluded[name] for name in sums},
            where=or_(*(table.c[name].is_distinct_from(statement.excluded[name]) for name in sums)))

    among = (_among_ids(JobRollup.queue_id, dialect), _among_pairs(JobRollup.queue_id, JobRollup.template_id, dialect))
    found: dict[Any, tuple[Any, Any]] = {HOUR: (
        delete(jobs).where(JobRollup.span == HOUR, JobRollup.start == start, *among),
        None) if hours is None else replace(jobs, ROLLUP_COLUMNS, hours, JobRollup.span == HOUR, JobRollup.start == start, *among)}
    for finer, span in zip(SPANS, SPANS[1:]):
        # The finer periods one by one, not as a range: the index (span, start, queue, template) is then
        # searched at each of them for the queues bound, instead of read through every queue's rows.
        finer_starts = JobRollup.start.in_([start + k * finer for k in range(span // finer)])
        found[span] = replace(jobs, ROLLUP_COLUMNS, _summed(span, finer, finer_starts, *among),
                              JobRollup.span == span, JobRollup.start == start, *among)

    def within(table: Any) -> Any:  # some queues' rows at the periods of each span (starts bound as `starts_<span>`)
        return or_(*(and_(table.span == span, table.start.in_(bindparam(f"starts_{span}", expanding=True)),
                          _among_ids(table.queue_id, dialect)) for span in SPANS))

    found[QueueRollup] = replace(queues, QUEUE_COLUMNS, _over_templates(within(JobRollup)), within(QueueRollup))
    return found


UPSERTS = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}  # INSERT ... ON CONFLICT DO UPDATE


def _recompute_hour(session: Session, hour: int, chunks: list[dict[str, Any]]) -> None:
    """The hour rows of some (queue, template) pairs (`_pair_chunks`), from their final jobs."""
    dialect = session.get_bind().dialect.name
    statements = _step_statements(dialect)
    remove, fill = statements[HOUR]
    connection = session.connection()  # Core statements: not through the ORM's bulk paths
    for values in chunks:
        if remove is not None:
            connection.execute(remove, {"start": hour, **values})
        if fill is not None:
            connection.execute(fill, {**values, "first": at(hour), "last": at(hour + HOUR)})
        else:
            _fill_hours(session, tuple_(Job.queue_id, Test.template_id).in_(values["pairs"]),
                        Job.end_time >= at(hour), Job.end_time < at(hour + HOUR))


def _summed(span: int, finer: int, *where: Any) -> Any:
    """A select of the `finer` rows summed into periods of `span` (integer division keeps it portable)."""
    period = (JobRollup.start // span) * span
    return (select(literal(span), period, JobRollup.queue_id, JobRollup.template_id,
                   *(func.sum(getattr(JobRollup, name)) for name in SUMS), func.max(JobRollup.last_end))
            .where(JobRollup.span == finer, *where)
            .group_by(period, JobRollup.queue_id, JobRollup.template_id)
            .order_by(period, JobRollup.queue_id, JobRollup.template_id))  # appended to the rollup's index


def _recompute_from_finer(session: Session, span: int, start: int, chunks: list[dict[str, Any]]) -> None:
    dialect = session.get_bind().dialect.name
    statements = _step_statements(dialect)
    remove, fill = statements[span]
    connection = session.connection()
    for values in chunks:
        if remove is not None:
            connection.execute(remove, {"start": start, **values})
        connection.execute(fill, {"start": start, **values})


def _over_templates(*where: Any) -> Any:
    """A select of the job rollup's rows summed over the templates, as queue rollup rows."""
    key = (JobRollup.span, JobRollup.start, JobRollup.queue_id)
    return (select(*key, *(func.sum(getattr(JobRollup, name)) for name in SUMS), func.max(JobRollup.last_end))
            .where(*where).group_by(*key).order_by(*key))  # appended to the queue rollup's own order


def _fill_queues(session: Session, *where: Any) -> None:
    """Insert the queue rows of the job rollup's matching rows (the queue rows must be gone)."""
    session.execute(insert(QueueRollup.__table__).from_select(QUEUE_COLUMNS, _over_templates(*where)))


def _recompute_queues(session: Session, periods: dict[int, set[int]], queue_ids: set[int]) -> None:
    """The queue rows of these periods (span -> starts) and queues, from their job rollup rows: one
    delete and one insert per chunk of queues, whatever the periods (a row recomputed unchanged costs little)."""
    dialect = session.get_bind().dialect.name
    remove, fill = _step_statements(dialect)[QueueRollup]
    starts = {f"starts_{span}": sorted(periods.get(span, ())) for span in SPANS}
    connection = session.connection()
    for chunk in _chunks(queue_ids):
        values = {"ids": _ids(dialect, chunk), **starts}
        if remove is not None:
            connection.execute(remove, values)
        connection.execute(fill, values)


def _watermark(session: Session) -> tuple[datetime | None, int | None, tuple[int, ...]]:
    """The watermark, how many final jobs stamped exactly at it the call that set it rolled up, and the
    spans the rollup holds (`stored_spans`): one read."""
    stored = dict(session.execute(select(Setting.name, Setting.value).where(
        Setting.name.in_([WATERMARK_SETTING, AT_MARK_SETTING, SPANS_SETTING]))).all())
    mark, seen, spans = stored.get(WATERMARK_SETTING), stored.get(AT_MARK_SETTING), stored.get(SPANS_SETTING)
    return ((datetime.fromisoformat(mark) if mark else None), (int(seen) if seen else None),
            tuple(int(x) for x in spans.split(",")) if spans else FORMER_SPANS)


def _final_since(since: Any) -> Any:
    return and_(Job.status_changed_at >= since, Job.outcome.in_(FINAL), Job.end_time.is_not(None))


def _final_at(moment: datetime) -> Any:
    """The count of final jobs stamped exactly at `moment`."""
    return select(func.count()).select_from(Job).where(_final_since(moment), Job.status_changed_at <= moment)


def _set_watermark(session: Session, now: datetime, at_mark: int | None = None) -> None:
    """The watermark at `now`, with the count of final jobs stamped at it (counted when not given)."""
    if at_mark is None:
        at_mark = session.scalar(_final_at(now))
    settings.store(session, {WATERMARK_SETTING: now.isoformat(), AT_MARK_SETTING: str(at_mark)}, "robot", now)


def update(session: Session, now: datetime, margin: timedelta = timedelta(0)) -> int:
    """Roll up the jobs made final since the last call (and `margin` before it); returns how many were seen.

    Safe to repeat: each touched hour is recomputed from the job table, never incremented. The
    first call on a database without a watermark rebuilds everything. `margin`: with several robot
    processes, a job another one made final may be committed after this call's watermark passed
    the time it carries.

    The jobs stamped exactly at the watermark were rolled up by the call that set it, unless a step at
    that same time made more final since (a step repeated at the same time, one that crashed before its
    rollup): they are read again only when their count differs from the one that call stored. Otherwise
    every step would recompute the hours of the previous step's jobs as well as its own.
    """
    seen_until, seen_at_mark, held = _watermark(session)
    if seen_until is None:
        return rebuild(session, now)
    _add_spans(session, now, held)
    mark = max(now, seen_until)
    at_seen = None if margin else session.scalar(_final_at(seen_until))
    skip_seen = at_seen is not None and at_seen == seen_at_mark  # those at the watermark were rolled up
    job, test = Job.__table__.c, Test.__table__.c
    rows = session.execute(
        select(job.queue_id, test.template_id, job.end_time, job.status_changed_at)
        .join_from(Job.__table__, Test.__table__, test.id == job.test_id)
        .where(job.status_changed_at > seen_until if skip_seen else job.status_changed_at >= seen_until - margin,
               job.outcome.in_(FINAL), job.end_time.is_not(None))).all()
    at_mark = at_seen if skip_seen and mark == seen_until else sum(changed == mark for _, _, _, changed in rows)
    touched: dict[int, set[tuple[int, int]]] = defaultdict(set)  # hour start -> (queue id, template id)
    for queue_id, template_id, end, _ in rows:
        touched[floor_to(epoch(end), HOUR)].add((queue_id, template_id))
    _refresh(session, touched)
    _set_watermark(session, mark, at_mark)
    return len(rows)


def _refresh(session: Session, hours: dict[int, set[tuple[int, int]]]) -> None:
    """Recompute the rows of these hours (hour start -> (queue id, template id) pairs), then of the periods
    of every span holding them, then the queue rows of those periods."""
    dialect = session.get_bind().dialect.name
    bound: dict[frozenset[tuple[int, int]], list[dict[str, Any]]] = {}  # usually one set of pairs for every span

    def chunks(pairs: set[tuple[int, int]]) -> list[dict[str, Any]]:
        key = frozenset(pairs)
        if key not in bound:
            bound[key] = _pair_chunks(dialect, pairs)
        return bound[key]

    for hour, pairs in hours.items():
        _recompute_hour(session, hour, chunks(pairs))
    finer = hours
    touched = {HOUR: set(hours)}
    for span in SPANS[1:]:
        periods: dict[int, set[tuple[int, int]]] = defaultdict(set)
        for start, pairs in finer.items():
            periods[floor_to(start, span)] |= pairs
        for start, pairs in periods.items():
            _recompute_from_finer(session, span, start, chunks(pairs))
        touched[span] = set(periods)
        finer = periods
    if hours:
        _recompute_queues(session, touched, {queue_id for pairs in hours.values() for queue_id, _ in pairs})


def stored_spans(session: Session) -> tuple[int, ...]:
    """The spans the stored rollup holds, finest first: what a reader may cover a range with."""
    stored = session.get(Setting, SPANS_SETTING)
    return tuple(int(x) for x in stored.value.split(",")) if stored else FORMER_SPANS


def _set_spans(session: Session, now: datetime) -> None:
    settings.store(session, {SPANS_SETTING: ",".join(map(str, SPANS))}, "robot", now)


def _add_spans(session: Session, now: datetime, held: tuple[int, ...] | None = None) -> None:
    """A rollup from before a span was added gets its rows, summed from the next finer span it holds
    (every span nests in the ones above it): one statement per span, no rebuild from the job table.
    `held`: the spans stored, when already read."""
    held = stored_spans(session) if held is None else held
    added = [span for span in SPANS if span not in held]
    if not added:
        return
    for span in added:
        finer = max(s for s in held if s < span)
        session.execute(insert(JobRollup.__table__).from_select(ROLLUP_COLUMNS, _summed(span, finer)))
        session.execute(delete(QueueRollup).where(QueueRollup.span == span))
        _fill_queues(session, JobRollup.span == span)
        held = tuple(sorted((*held, span)))
    _set_spans(session, now)
    log.info("job rollup: rows of %s seconds added", ", ".join(map(str, added)))


def kept_from(session: Session) -> datetime | None:
    """Where pruning cut the job table (robot.retention): the rollup before it cannot be derived again."""
    stored = session.get(Setting, KEPT_FROM_SETTING)
    return datetime.fromisoformat(stored.value) if stored else None


def set_kept_from(session: Session, cut: datetime, now: datetime) -> None:
    if epoch(cut) % WEEK:
        raise ValueError(f"the pruning cut must start a week: {cut}")
    session.merge(Setting(name=KEPT_FROM_SETTING, value=cut.isoformat(), actor="robot", changed_at=now))


def rebuild(session: Session, now: datetime) -> int:
    """Derive the rollup again from the job table (the backfill); returns the jobs rolled up.

    After pruning, only the periods from the cut on: those before it hold the deleted jobs' sums."""
    cut = kept_from(session)
    if cut is not None:  # the rows kept before the cut get the spans added since they were built
        _add_spans(session, now)
    since = () if cut is None else (Job.end_time >= cut,)
    kept = () if cut is None else (JobRollup.start >= int(epoch(cut)),)
    session.execute(delete(JobRollup).where(*kept))
    session.execute(delete(QueueRollup).where(*(() if cut is None else (QueueRollup.start >= int(epoch(cut)),))))
    dialect = session.get_bind().dialect.name
    if _hours_select(dialect) is not None:
        _fill_hours(session, *since)
    else:  # a database without the date arithmetic above: summed here, a week of jobs at a time
        first, last = session.execute(select(func.min(Job.end_time), func.max(Job.end_time))
                                      .where(Job.outcome.in_(FINAL), *since)).one()
        start = at(floor_to(epoch(first), HOUR)) if first is not None else None
        while start is not None and start <= last:
            _fill_hours(session, Job.end_time >= start, Job.end_time < start + REBUILD_CHUNK)
            start += REBUILD_CHUNK
    for finer, span in zip(SPANS, SPANS[1:]):
        session.execute(insert(JobRollup.__table__).from_select(ROLLUP_COLUMNS, _summed(span, finer, *kept)))
    _fill_queues(session, *kept)
    _set_watermark(session, now)
    _set_spans(session, now)
    count = session.scalar(select(func.coalesce(func.sum(JobRollup.jobs + JobRollup.cancelled + JobRollup.unknown), 0))
                           .where(JobRollup.span == WEEK))
    log.info("job rollup rebuilt from %d final jobs", count)
    return int(count or 0)


def add_bulk(session: Session, hours: dict[int, set[int]] | None, now: datetime, template_id: int) -> None:
    """Roll up jobs of one template just written in bulk (a history import), all stamped `now` and ending in
    these hours (hour start -> queue ids), after `update` rolled up the jobs made final before them: those hours are
    recomputed as `update` recomputes them, whatever the watermark (the importer's clock may be behind
    the robot's, and its jobs would be left out); with `hours` None (a database without a rollup yet)
    everything is rebuilt. Then the watermark passes `now`, so that `update` does not read them again."""
    if hours is None:
        rebuild(session, now)
    else:
        _refresh(session, {hour: {(queue_id, template_id) for queue_id in queue_ids} for hour, queue_ids in hours.items()})
    seen_until, _, _ = _watermark(session)
    _set_watermark(session, max(now + timedelta(microseconds=1), seen_until or now))


def stored_counts(session: Session, span: int = HOUR) -> dict[tuple[int, int, int], Counts]:
    """Every stored row of one span, as Counts (for checks and tests)."""
    found = {}
    for row in session.scalars(select(JobRollup).where(JobRollup.span == span)):
        found[(row.queue_id, row.template_id, row.start)] = Counts(
            **{name: getattr(row, name) for name in (*SUMS, "last_end")})
    return found


def stored_queue_counts(session: Session) -> dict[tuple[int, int, int], Counts]:
    """Every stored queue rollup row, (span, start, queue id) -> Counts (for checks and tests)."""
    return {(row.span, row.start, row.queue_id): Counts(**{name: getattr(row, name) for name in (*SUMS, "last_end")})
            for row in session.scalars(select(QueueRollup))}


def queue_counts_from_templates(session: Session) -> dict[tuple[int, int, int], Counts]:
    """What the queue rollup must hold: the job rollup's rows added up over the templates (a check)."""
    found: dict[tuple[int, int, int], Counts] = defaultdict(Counts)
    for row in session.scalars(select(JobRollup)):
        found[(row.span, row.start, row.queue_id)].add(Counts(**{name: getattr(row, name) for name in (*SUMS, "last_end")}))
    return dict(found)

