"""What exclusion policies read and what they decide. Plain values: policies are pure functions."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from operator import attrgetter
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from robot.userjobs import StoredHour


END_TIME = attrgetter("end_time")  # the sort key of results


class Action(StrEnum):
    EXCLUDE = "exclude"  # take the queue out of user brokerage (to test / brokeroff / offline)
    INCLUDE = "include"  # set it online again
    PEND = "pend"  # suspicious: send probe jobs, decide when they return (our policy only)
    CLEAR = "clear"  # the suspicion is gone: back to normal testing (our policy only)
    KEEP = "keep"  # nothing to change
    NEEDS_JOBS = "needs_jobs"  # not enough results to judge


@dataclass(frozen=True)
class Result:
    """One final test job, as the policies see it."""

    panda_id: int
    template: str
    end_time: datetime
    failed: bool
    error_class: str | None = None  # site, user, central, unknown (for failures)
    error_name: str | None = None
    error_code: int | None = None
    start_time: datetime | None = None
    created: datetime | None = None  # when PanDA created the job: from then on it waited at the site

    @property
    def began(self) -> datetime:
        """When the job's life at the site began: created, else started, else ended."""
        return self.created or self.start_time or self.end_time


@dataclass(frozen=True)
class QueueView:
    """A queue's facts at evaluation time."""

    name: str
    site: str
    cloud: str
    status: str  # PanDA status as last read: online, brokeroff, test, offline
    robot_state: str = "online"  # online, pending, excluded: the robot's own view
    excluded_by_robot: bool = False  # the current exclusion was the robot's (only those it may lift)
    manual: str | None = None  # an active manual override: "exclude" or "include"
    silenced: bool = False
    exempt: bool = False
    last_robot_exclusion: datetime | None = None
    last_robot_inclusion: datetime | None = None  # evidence older than this was already judged
    # The codes (else names) of the failed jobs behind the robot's exclusion, from its stored evidence
    # (set while the queue is excluded): while they still fail there the fault is not gone, wherever else they fail.
    excluded_for: frozenset[int | str] = frozenset()
    state_since: datetime | None = None  # when robot_state was entered
    results: tuple[Result, ...] = ()  # final results in the window, newest first, critical templates only
    # when each job not started yet began to wait at the site, at a queue where one has waited `stall_after` (elsewhere none)
    waiting_since: tuple[datetime, ...] = ()
    last_start: datetime | None = None  # when a job last started at the queue
    downtime: str | None = None  # the site's announced outage in force now, in words (robot.downtimes.describe)
    downtime_ended: datetime | None = None  # the end of its last one, when no result came in since
    user_jobs: tuple["StoredHour", ...] = ()  # users' own jobs per hour in the window (read only when the policy hears them)


@dataclass(frozen=True)
class Decision:
    queue: str
    action: Action
    reason: str
    new_status: str | None = None  # PanDA status to set (exclude / include)
    evidence: dict[str, Any] = field(default_factory=dict)
    policy: str = ""

    @property
    def changes_status(self) -> bool:
        return self.action in (Action.EXCLUDE, Action.INCLUDE)


def by_template(results: tuple[Result, ...], templates: list[str]) -> dict[str, list[Result]]:
    """Results per critical template, newest first."""
    grouped: dict[str, list[Result]] = {t: [] for t in templates}
    for result in results:
        if result.template in grouped:
            grouped[result.template].append(result)
    for items in grouped.values():
        items.sort(key=END_TIME, reverse=True)
    return grouped


def evidence_of(results: list[Result]) -> list[dict[str, Any]]:
    """The jobs behind a decision, as stored with it."""
    return [{"panda_id": r.panda_id, "template": r.template, "end_time": r.end_time.isoformat(),
             "failed": r.failed, "error_class": r.error_class, "error": r.error_name, "code": r.error_code}
            for r in results]


def failed_codes(evidence: Any) -> frozenset[int | str]:
    """The codes (else error names) of the failed jobs in a decision's stored evidence (`evidence_of`'s
    "jobs") that speak of the site: not user- or central-class ones, which every queue shows now
    and then and which alone never point at a site; nothing for evidence of another shape (a
    person's, an older robot's)."""
    jobs = evidence.get("jobs") if isinstance(evidence, dict) else None
    if not isinstance(jobs, list):
        return frozenset()
    return frozenset(job["code"] if job.get("code") is not None else (job.get("error") or "")
                     for job in jobs if isinstance(job, dict) and job.get("failed")
                     and job.get("error_class") not in ("user", "central"))
