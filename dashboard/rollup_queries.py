"""Sums of final job results over time ranges, read from the job rollup (robot.rollup).

`bucket_sums` is exact for any ranges: each range is cut into whole weeks, days, 6 hours and hours,
read from the rollup, and the partial hours at its edges, read from the job table (a few rows,
through the `job_end` index). Ranges whose edges fall on whole periods (the heatmap's cells) read
one stored row per queue and cell when every queue and template is asked for (`queue_rollup`), one
per queue, template and cell else (`job_rollup`, whose index by queue serves a few queues).
"""
from __future__ import annotations

import bisect
import math
from collections import defaultdict
from datetime import datetime
from typing import Any, Sequence

from sqlalchemy import and_, case, cast, func, literal, or_, select
from sqlalchemy.orm import Session

from robot.rollup import (FINAL, HOUR, SPANS, SUMS, Counts, at, epoch, floor_to, job_columns, stored_spans,
                          sums_sql)
from robot.storage.models import Job, JobRollup, QueueRollup, Test

# For the page's transaction alone: a page reads tens of thousands of rollup rows at most, for which
# PostgreSQL's parallel workers (planned for a year's overview) cost more CPU than they save: ~60 ms of
# the server's CPU with two workers, ~44 ms without, for a year's overview and heatmap at 1,000 queues.
SERIAL = "SET LOCAL max_parallel_workers_per_gather = 0"
OR_RANGES = 16  # more ranges than this: one enclosing range, the cases sort the rows out

Sums = dict[str, Any]  # name -> value, for the names asked (last_end: the latest, or None)


def cover(start: datetime, end: datetime, spans: Sequence[int] = SPANS
          ) -> tuple[list[tuple[int, int, int]], list[tuple[datetime, datetime]]]:
    """[start, end) as whole periods (span, first start, end of the last) and the raw ranges at its
    edges: the largest stored periods first (`spans`, finest first, each nested in the next)."""
    levels = sorted(spans, reverse=True)
    a, b = epoch(start), epoch(end)
    if b <= a:
        return [], []
    lo, hi = math.ceil(a / HOUR) * HOUR, floor_to(b, HOUR)
    if lo >= hi:
        return [], [(start, end)]
    raw = []
    if a < lo:
        raw.append((start, at(lo)))
    if hi < b:
        raw.append((at(hi), end))
    periods: list[tuple[int, int, int]] = []

    def split(first: int, last: int, level: int) -> None:
        span = levels[level]
        if span == HOUR:
            periods.append((span, first, last))
            return
        inner_lo, inner_hi = math.ceil(first / span) * span, floor_to(last, span)
        if inner_lo >= inner_hi:
            split(first, last, level + 1)
            return
        periods.append((span, inner_lo, inner_hi))
        if first < inner_lo:
            split(first, inner_lo, level + 1)
        if inner_hi < last:
            split(inner_hi, last, level + 1)

    split(lo, hi, 0)
    return periods, raw


def _new(names: Sequence[str], count: int) -> list[list[Any]]:
    """Per name, the value of each of `count` buckets."""
    return [[None] * count if name == "last_end" else [0] * count for name in names]


def _add_rows(found: dict[int, list[list[Any]]], rows: Sequence[Any], names: Sequence[str], count: int,
              bucket_of: dict[Any, int] | None = None) -> None:
    """Adds rows (queue id, bucket, values in the order of `names`) to their queue's buckets; with
    `bucket_of`, the second column is a key mapped to the bucket (rows of keys it lacks are dropped)."""
    latest = [(i, i + 2) for i, name in enumerate(names) if name == "last_end"]  # (name, column of the row)
    summed = [(i, i + 2) for i, name in enumerate(names) if name != "last_end"]
    bucket = None if bucket_of is None else bucket_of.get
    for row in rows:  # indexed, not unpacked: no list per row for the collector to count
        k = row[1] if bucket is None else bucket(row[1], -1)
        if k < 0:
            continue
        columns = found.get(row[0])
        if columns is None:
            columns = found[row[0]] = _new(names, count)
        for i, c in summed:
            value = row[c]
            if value:
                columns[i][k] += value
        for i, c in latest:
            if row[c] is not None and (columns[i][k] is None or row[c] > columns[i][k]):
                columns[i][k] = row[c]


def _fetch(connection: Any, query: Any, names: Sequence[str]) -> Sequence[Any]:
    """The rows of a rollup query. Sums of numbers come as the driver gives them (plain tuples: no
    SQLAlchemy row per row for the 50,000 cells of a year's heatmap), a latest end through its column
    type (SQLite gives it as text)."""
    result = connection.execute(query)
    if "last_end" in names:
        return result.all()
    try:
        return result.cursor.fetchall()
    finally:
        result.close()


def _columns(table: Any, names: Sequence[str]) -> list[Any]:
    # PostgreSQL sums integers as numeric (read back as Decimal): cast back to the column's own type.
    return [func.max(table.last_end) if n == "last_end"
            else cast(func.sum(getattr(table, n)), getattr(table, n).type) for n in names]


def which_range(column: Any, ranges: Sequence[tuple[Any, Any, int]]) -> Any:
    """SQL for the bucket k of the range [first, last) holding `column`, else -1, for sorted, disjoint
    ranges: a binary search (a few comparisons a row, however many ranges), exact at every bound."""
    if not ranges:
        return literal(-1)
    middle = len(ranges) // 2
    first, last, k = ranges[middle]
    return case((column < first, which_range(column, ranges[:middle])), (column < last, literal(k)),
                else_=which_range(column, ranges[middle + 1:]))


def _bucket_key(start: Any, span: int, ranges: Sequence[tuple[int, int, int]]) -> tuple[Any, dict[int, int] | None]:
    """SQL that tells a rollup row's bucket (from its `start` column), for sorted, disjoint ranges of whole periods of `span`,
    and the map from its values to the buckets (None: the SQL gives the bucket, -1 for none).

    One bucket: its number. When each range is one period, the start itself (grouped in the table's own order); when each
    lies within one slot of the longest range's length (the heatmap's cells, cut at whole multiples
    of a step), the slot; else `which_range`. Rows outside the ranges map to no bucket: they are not
    read (the ranges' own conditions), or lie in slots of no range (checked here)."""
    if len({k for _, _, k in ranges}) == 1:  # one bucket (a window's total): rows grouped by queue alone
        return literal(ranges[0][2]), None
    length = max(b - a for a, b, _ in ranges)
    slots: dict[int, int] = {}
    for a, b, k in ranges:
        slot = a // length
        if (b - 1) // length != slot or slots.setdefault(slot, k) != k:
            return which_range(start, ranges), None
    if len(ranges) > OR_RANGES:  # the whole enclosing span is read: rows between the ranges too
        for (_, b, _), (a, _, _) in zip(ranges, ranges[1:]):
            if a > b and any(slot in slots for slot in range(b // length, (a - 1) // length + 1)):
                return which_range(start, ranges), None
    if length == span:
        return start, {a: k for a, _, k in ranges}
    return start // length, slots


def _where_ranges(column: Any, ranges: Sequence[tuple[Any, Any, int]]) -> Any:
    """The rows within the ranges: each range through the index while there are few, else the span
    enclosing them all (the bucket expression drops the rest)."""
    if len(ranges) <= OR_RANGES:
        return or_(*(and_(column >= first, column < last) for first, last, _ in ranges))
    return and_(column >= ranges[0][0], column < ranges[-1][1])


def _merged(ranges: list[tuple[Any, Any, int]]) -> list[tuple[Any, Any, int]]:
    """Sorted ranges, those that touch and share a bucket joined."""
    found: list[tuple[Any, Any, int]] = []
    for first, last, k in sorted(ranges, key=lambda r: r[0]):
        if found and found[-1][1] == first and found[-1][2] == k:
            found[-1] = (found[-1][0], last, k)
        else:
            found.append((first, last, k))
    return found


def _joined(ranges: list[tuple[Any, Any, int]]) -> list[tuple[Any, Any]]:
    """Sorted ranges as the stretches they cover: those that touch joined, whatever their bucket (the
    sub-hour cells of a short window are one stretch of the job table, read through its index once)."""
    found: list[tuple[Any, Any]] = []
    for first, last, _ in ranges:
        if found and found[-1][1] == first:
            found[-1] = (found[-1][0], last)
        else:
            found.append((first, last))
    return found


def bucket_sums(session: Session, edges: Sequence[datetime], names: Sequence[str],
                queue_ids: Sequence[int] | None = None,
                template_ids: Sequence[int] | None = None) -> dict[int, dict[str, list[Any]]]:
    """Per queue id and name, the exact sum over each range [edges[k], edges[k+1]) (queues without
    jobs left out; last_end: the latest, or None).

    Whole weeks, days, 6 hours and hours come from the rollup (the spans it holds): the queue rollup
    for every queue and template, the job rollup for chosen ones; the partial hours at the ranges' edges from
    the job table, summed by the database where it can."""
    unknown = set(names) - {*SUMS, "last_end"}
    if unknown:
        raise ValueError(f"not rollup sums: {sorted(unknown)}")
    count = len(edges) - 1
    found: dict[int, list[list[Any]]] = {}
    pieces: dict[int, list[tuple[int, int, int]]] = defaultdict(list)  # span -> (first, last, bucket)
    raws: list[tuple[datetime, datetime, int]] = []
    spans = stored_spans(session)
    for k in range(count):
        periods, raw = cover(edges[k], edges[k + 1], spans)
        for span, first, last in periods:
            pieces[span].append((first, last, k))
        raws += [(a, b, k) for a, b in raw]
    connection = session.connection()  # Core rows: no ORM row processing for thousands of sums
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql(SERIAL)
    table = QueueRollup if template_ids is None and queue_ids is None else JobRollup  # (its index serves a few queues)
    for key, bucket_of, query in _rollup_queries(table, pieces, names, count):
        if queue_ids is not None:
            query = query.where(table.queue_id.in_(list(queue_ids)))
        if template_ids is not None:
            query = query.where(JobRollup.template_id.in_(list(template_ids)))
        _add_rows(found, _fetch(connection, query, names), names, count, bucket_of)
    if raws:
        _raw_sums(session, _merged(raws), names, queue_ids, template_ids, found, count)
    return {queue_id: dict(zip(names, columns)) for queue_id, columns in found.items()}


def _rollup_queries(table: Any, pieces: dict[int, list[tuple[int, int, int]]], names: Sequence[str],
                    count: int) -> list[tuple[Any, dict[int, int] | None, Any]]:
    """(bucket key, its map to the buckets, select) reading the rollup rows of the pieces (span -> whole
    periods of it, with their bucket). One total (a window's): the rows of every span in one statement,
    grouped by queue once. Else one statement per span; a queue rollup row that is a bucket's only row
    (each range one stored period) is read as it is, not summed."""
    if count == 1 and pieces:
        within = or_(*(and_(table.span == span, or_(*(and_(table.start >= a, table.start < b)
                                                        for a, b, _ in _merged(ranges))))
                       for span, ranges in sorted(pieces.items(), reverse=True)))
        key = literal(0)
        return [(key, None, select(table.queue_id, key, *_columns(table, names)).where(within)
                 .group_by(table.queue_id))]
    found = []
    for span, ranges in pieces.items():
        ranges = _merged(ranges)
        key, bucket_of = _bucket_key(table.start, span, ranges)
        query = select(table.queue_id, key)
        if table is QueueRollup and key is table.start:  # one row per queue and period: nothing to sum
            query = query.add_columns(*(getattr(table, n) for n in names))
        else:
            query = query.add_columns(*_columns(table, names)).group_by(
                *([] if len({k for _, _, k in ranges}) == 1 else [key]), table.queue_id)
        found.append((key, bucket_of, query.where(table.span == span, _where_ranges(table.start, ranges))))
    return found


def _raw_sums(session: Session, raws: list[tuple[datetime, datetime, int]], names: Sequence[str],
              queue_ids: Sequence[int] | None, template_ids: Sequence[int] | None,
              found: dict[int, list[list[Any]]], count: int) -> None:
    """Adds the final jobs that ended within the raw ranges to their queue's bucket."""
    # Each range through the `job_end` index (the ranges are an hour at most each, spread over the
    # window), or through `job_queue_end` for a few queues. Many queues or templates are tested on
    # `column + 0`, which no index serves: else SQLite would read every job of those queues or tests.
    few = queue_ids is not None and len(queue_ids) <= OR_RANGES
    where = [Job.outcome.in_(FINAL), or_(*(and_(*([Job.queue_id.in_(list(queue_ids))] if few else []),
                                               Job.end_time >= a, Job.end_time < b) for a, b in _joined(raws)))]
    if queue_ids is not None and not few:
        where.append((Job.queue_id + 0).in_(list(queue_ids)))
    if template_ids is not None:
        where.append((Job.test_id + 0).in_(select(Test.id).where(Test.template_id.in_(list(template_ids)))))
    sums = sums_sql(session.get_bind().dialect.name)
    if sums is not None:
        bucket = which_range(Job.end_time, raws)
        # as the rollup's own columns (PostgreSQL would sum to numeric, read back as Decimal)
        columns = [sums[n] if n == "last_end" else cast(sums[n], getattr(JobRollup, n).type) for n in names]
        # grouped by bucket first: by queue first, SQLite would walk the whole (queue, end) index for its order
        query = select(Job.queue_id, bucket, *columns).where(*where).group_by(bucket, Job.queue_id)
        _add_rows(found, session.connection().execute(query).all(), names, count)
        return
    starts = [a for a, _, _ in raws]
    extra: dict[tuple[int, int], Counts] = defaultdict(Counts)
    for queue_id, _template, outcome, end, start, n_events, payload, cpu, klass in session.execute(
            select(*job_columns()).join(Test, Test.id == Job.test_id).where(*where)):
        i = bisect.bisect_right(starts, end) - 1
        if i >= 0 and end < raws[i][1]:
            extra[(queue_id, raws[i][2])].add_job(outcome, end, start, n_events, payload, cpu, klass)
    _add_rows(found, [(queue_id, k, *(getattr(counts, n) for n in names)) for (queue_id, k), counts in extra.items()],
              names, count)


def total_sums(session: Session, start: datetime, end: datetime, names: Sequence[str],
               queue_ids: Sequence[int] | None = None, template_ids: Sequence[int] | None = None) -> dict[int, Sums]:
    """Per queue id, the exact sums over [start, end)."""
    return {q: {name: values[0] for name, values in sums.items()}
            for q, sums in bucket_sums(session, [start, end], names, queue_ids, template_ids).items()}
