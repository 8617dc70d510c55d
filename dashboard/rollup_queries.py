"""Sums of final job results over time ranges, read from the job rollup (robot.rollup).

`bucket_sums` is exact for any ranges: each range is cut into whole weeks, days and hours, read
from the rollup, and the partial hours at its edges, read from the job table (a few rows, through
the `job_end` index). `spread_sums` is the cheap reading for long windows split into many
buckets: each stored day or week is shared among the buckets it overlaps in proportion to the
overlap, so cells are exact up to that period at their edges.
"""
from __future__ import annotations

import bisect
import math
from collections import defaultdict
from datetime import datetime
from typing import Any, Sequence

from sqlalchemy import and_, case, cast, func, literal, or_, select
from sqlalchemy.orm import Session

from robot.rollup import DAY, FINAL, HOUR, SUMS, WEEK, Counts, at, epoch, floor_to, job_columns, sums_sql
from robot.storage.models import Job, JobRollup, Test

LEVELS = (WEEK, DAY, HOUR)
OR_RANGES = 16  # more ranges than this: one enclosing range, the cases sort the rows out

Sums = dict[str, Any]  # name -> value, for the names asked (last_end: the latest, or None)


def cover(start: datetime, end: datetime) -> tuple[list[tuple[int, int, int]], list[tuple[datetime, datetime]]]:
    """[start, end) as whole periods (span, first start, end of the last) and the raw ranges at its edges."""
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
        span = LEVELS[level]
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


def _empty(names: Sequence[str]) -> Sums:
    return {name: (None if name == "last_end" else 0) for name in names}


def _add(target: Sums, values: Sequence[Any], names: Sequence[str], weight: float = 1.0) -> None:
    for name, value in zip(names, values):
        if name == "last_end":
            if value is not None and (target[name] is None or value > target[name]):
                target[name] = value
        elif value:
            target[name] += value * weight if weight != 1.0 else value


def _columns(names: Sequence[str]) -> list[Any]:
    # PostgreSQL sums integers as numeric (read back as Decimal): cast back to the column's own type.
    return [func.max(JobRollup.last_end) if n == "last_end"
            else cast(func.sum(getattr(JobRollup, n)), getattr(JobRollup, n).type) for n in names]


def _filtered(query: Any, column_queue: Any, queue_ids: Sequence[int] | None, column_template: Any,
              template_ids: Sequence[int] | None) -> Any:
    if queue_ids is not None:
        query = query.where(column_queue.in_(list(queue_ids)))
    if template_ids is not None:
        query = query.where(column_template.in_(list(template_ids)))
    return query


def which_range(column: Any, ranges: Sequence[tuple[Any, Any, int]]) -> Any:
    """SQL for the bucket k of the range [first, last) holding `column`, else -1, for sorted, disjoint
    ranges: a binary search (a few comparisons a row, however many ranges), exact at every bound."""
    if not ranges:
        return literal(-1)
    middle = len(ranges) // 2
    first, last, k = ranges[middle]
    return case((column < first, which_range(column, ranges[:middle])), (column < last, literal(k)),
                else_=which_range(column, ranges[middle + 1:]))


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


def bucket_sums(session: Session, edges: Sequence[datetime], names: Sequence[str],
                queue_ids: Sequence[int] | None = None,
                template_ids: Sequence[int] | None = None) -> dict[int, list[Sums]]:
    """Per queue id, the exact sums of each range [edges[k], edges[k+1]) (queues without jobs left out).

    Whole weeks, days and hours come from the rollup; the partial hours at the ranges' edges from the
    job table, summed by the database where it can (SQLite, PostgreSQL)."""
    unknown = set(names) - {*SUMS, "last_end"}
    if unknown:
        raise ValueError(f"not rollup sums: {sorted(unknown)}")
    count = len(edges) - 1
    found: dict[int, list[Sums]] = defaultdict(lambda: [_empty(names) for _ in range(count)])
    pieces: dict[int, list[tuple[int, int, int]]] = defaultdict(list)  # span -> (first, last, bucket)
    raws: list[tuple[datetime, datetime, int]] = []
    for k in range(count):
        periods, raw = cover(edges[k], edges[k + 1])
        for span, first, last in periods:
            pieces[span].append((first, last, k))
        raws += [(a, b, k) for a, b in raw]
    for span, ranges in pieces.items():
        ranges = _merged(ranges)
        bucket = which_range(JobRollup.start, ranges)
        query = _filtered(select(JobRollup.queue_id, bucket, *_columns(names))
                          .where(JobRollup.span == span, _where_ranges(JobRollup.start, ranges))
                          .group_by(bucket, JobRollup.queue_id),
                          JobRollup.queue_id, queue_ids, JobRollup.template_id, template_ids)
        for queue_id, k, *values in session.execute(query):
            if k >= 0:
                _add(found[queue_id][k], values, names)
    if raws:
        _raw_sums(session, _merged(raws), names, queue_ids, template_ids, found)
    return dict(found)


def _raw_sums(session: Session, raws: list[tuple[datetime, datetime, int]], names: Sequence[str],
              queue_ids: Sequence[int] | None, template_ids: Sequence[int] | None,
              found: dict[int, list[Sums]]) -> None:
    """Adds the final jobs that ended within the raw ranges to their queue's bucket."""
    # Each range through the `job_end` index (the ranges are an hour at most each, spread over the
    # window), or through `job_queue_end` for a few queues. Many queues or templates are tested on
    # `column + 0`, which no index serves: else SQLite would read every job of those queues or tests.
    few = queue_ids is not None and len(queue_ids) <= OR_RANGES
    where = [Job.outcome.in_(FINAL), or_(*(and_(*([Job.queue_id.in_(list(queue_ids))] if few else []),
                                               Job.end_time >= a, Job.end_time < b) for a, b, _ in raws))]
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
        for queue_id, k, *values in session.execute(query):
            if k >= 0:
                _add(found[queue_id][k], values, names)
        return
    starts = [a for a, _, _ in raws]
    extra: dict[tuple[int, int], Counts] = defaultdict(Counts)
    for queue_id, _template, outcome, end, start, n_events, payload, cpu, klass in session.execute(
            select(*job_columns()).join(Test, Test.id == Job.test_id).where(*where)):
        i = bisect.bisect_right(starts, end) - 1
        if i >= 0 and end < raws[i][1]:
            extra[(queue_id, raws[i][2])].add_job(outcome, end, start, n_events, payload, cpu, klass)
    for (queue_id, k), counts in extra.items():
        _add(found[queue_id][k], [getattr(counts, n) for n in names], names)


def total_sums(session: Session, start: datetime, end: datetime, names: Sequence[str],
               queue_ids: Sequence[int] | None = None, template_ids: Sequence[int] | None = None) -> dict[int, Sums]:
    """Per queue id, the exact sums over [start, end)."""
    return {q: sums[0] for q, sums in bucket_sums(session, [start, end], names, queue_ids, template_ids).items()}


def spread_sums(session: Session, edges: Sequence[datetime], names: Sequence[str], span: int,
                queue_ids: Sequence[int] | None = None,
                template_ids: Sequence[int] | None = None) -> dict[int, list[Sums]]:
    """Per queue id, each stored period of `span` shared among equal-width buckets by overlap."""
    count = len(edges) - 1
    first, last = epoch(edges[0]), epoch(edges[-1])
    width = (last - first) / count
    sums = [n for n in names if n != "last_end"]
    query = _filtered(select(JobRollup.queue_id, JobRollup.start, *_columns(sums))
                      .where(JobRollup.span == span, JobRollup.start >= floor_to(first, span), JobRollup.start < last)
                      .group_by(JobRollup.queue_id, JobRollup.start),
                      JobRollup.queue_id, queue_ids, JobRollup.template_id, template_ids)
    cells: dict[int, list[list[float]]] = {}  # queue id -> per name, per bucket
    for queue_id, start, *values in session.execute(query):
        row = cells.get(queue_id)
        if row is None:
            row = cells[queue_id] = [[0.0] * count for _ in sums]
        lo, hi = max(start, first), min(start + span, last)
        k = max(0, int((lo - first) // width))
        while k < count and lo < hi:
            edge = min(hi, first + (k + 1) * width)
            if edge > lo:
                weight = (edge - lo) / span
                for i, value in enumerate(values):
                    if value:
                        row[i][k] += value * weight
            lo, k = edge, k + 1
    return {queue_id: [{name: row[i][k] for i, name in enumerate(sums)} for k in range(count)]
            for queue_id, row in cells.items()}
