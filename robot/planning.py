"""What to submit next: pure functions of the in-flight counts and the data catalogue."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from robot.catalogue import DatasetInfo
from robot.backends.base import InputFile


@dataclass(frozen=True)
class SlotState:
    """One (test, queue) pair and its jobs, as the loop counts them."""

    test_id: int
    queue_id: int
    max_running_jobs: int
    min_queue_depth: int
    resubmit_enabled: bool
    queued: int  # recorded, defined or activated
    running: int  # sent, starting, running or holding
    total: int  # jobs recorded for the pair (lost ones excluded); all of them where resubmission is off
    extra_jobs: int = 0  # probes the exclusion policy asks for (the queue is in doubt)
    gap: timedelta = timedelta(0)  # the policy's pause between jobs (a long-stable queue)
    last_end: datetime | None = None  # when the pair's latest job ended
    max_jobs: int | None = None  # a stress test's total of first attempts
    retry_ids: tuple[int, ...] = ()  # failed jobs waiting for their retry


def jobs_to_submit(slot: SlotState, now: datetime) -> int:
    """HammerCloud's rule: keep `max_running_jobs` jobs in flight, plus `min_queue_depth` queued.

    With the defaults (1, 0) this is "one job in flight; when it ends, submit the next".
    Without resubmission a pair gets its first `max_running_jobs` jobs and no more. The exclusion
    policy may ask for `extra_jobs` more in flight (probes), or for a `gap` after a job ends.
    A stress test keeps `max_running_jobs` in flight until `max_jobs` first attempts are out, and
    sends the retries it owes before new jobs.
    """
    in_flight = slot.queued + slot.running
    if slot.max_jobs is not None:  # a stress test: C in flight until N are done, retries first
        budget = len(slot.retry_ids) + max(0, slot.max_jobs - slot.total)
        return min(max(0, slot.max_running_jobs - in_flight), budget)
    if not slot.resubmit_enabled:
        return max(0, slot.max_running_jobs - slot.total)
    if resting(slot.extra_jobs, slot.gap, slot.last_end, now):
        return 0
    fill = max(0, slot.max_running_jobs + slot.extra_jobs - in_flight)
    depth = max(0, slot.min_queue_depth - (slot.queued + fill))
    return fill + depth


def resting(extra_jobs: int, gap: timedelta, last_end: datetime | None, now: datetime) -> bool:
    """Whether a resubmitting pair is in the policy's pause: no probes asked, and its latest job ended
    less than the gap ago (`jobs_to_submit` gives it nothing)."""
    return not extra_jobs and bool(gap) and last_end is not None and now - last_end < gap


def choose_input(datasets: list[DatasetInfo], sequence: int, events_per_job: int) -> tuple[DatasetInfo, tuple[InputFile, ...]]:
    """Pick a complete dataset by `sequence` (any number that varies between jobs); take the fewest
    files that hold `events_per_job` events."""
    ordered = sorted(datasets, key=lambda d: d.name)
    dataset = ordered[sequence % len(ordered)]
    files: list[InputFile] = []
    events = 0
    for entry in dataset.files:
        files.append(entry)
        events += entry.events
        if events >= events_per_job:
            break
    return dataset, tuple(files)
