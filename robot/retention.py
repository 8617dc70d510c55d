"""Retention: `healthrobot db prune --older-than 400d` deletes old jobs and keeps their rollup.

Jobs that ended (or, never sent, were recorded) before the cut are deleted; jobs in flight never
are. The cut is moved back to the start of its (Unix) week, so that every rollup row before it
covers deleted jobs only: those rows are kept, and the pages read year-long windows from them as
before, exactly. The cut is stored (`rollup.kept_from`): a later backfill (`healthrobot db rollup`)
rebuilds the rollup from the cut on and keeps the rows before it. A job that retried a deleted one
forgets which (`retry_of` cleared); transitions, episodes, tickets and tests are kept (they are few).
The users' jobs counted per queue and hour (`user_job_hour`) before the cut are deleted too.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from robot.rollup import WEEK, at, epoch, floor_to, kept_from, set_kept_from
from robot.storage.models import Job, UserJobHour

CHUNK = 50_000  # jobs deleted per statement: short transactions, bounded memory


@dataclass(frozen=True)
class PruneSummary:
    cut: datetime  # jobs that ended before this were deleted (the start of a week)
    deleted: int
    user_hours: int = 0  # users' jobs' hourly counts deleted


def prune(session: Session, now: datetime, older_than: timedelta) -> PruneSummary:
    """Delete the final jobs older than `older_than`, in chunks, committing each; keep the rollup."""
    if older_than <= timedelta(0):
        raise ValueError(f"--older-than must be positive, got {older_than}")
    cut = at(floor_to(epoch(now - older_than), WEEK))
    previous = kept_from(session)
    set_kept_from(session, max(cut, previous) if previous else cut, now)
    session.commit()
    when = func.coalesce(Job.end_time, Job.status_changed_at, Job.recorded_at)
    old = select(Job.id).where(Job.phase.in_(["done", "lost"]), when < cut)
    deleted = 0
    while True:
        ids = list(session.scalars(old.order_by(Job.id).limit(CHUNK)))
        if not ids:
            break
        session.execute(update(Job).where(Job.retry_of.in_(ids)).values(retry_of=None))
        session.execute(delete(Job).where(Job.id.in_(ids)))
        session.commit()
        deleted += len(ids)
    user_hours = session.execute(delete(UserJobHour).where(UserJobHour.hour < cut)).rowcount or 0
    session.commit()
    return PruneSummary(cut, deleted, user_hours)
