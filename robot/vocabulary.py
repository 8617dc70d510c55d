"""One vocabulary for the robot's decisions, used by the CLI table, `why`, the mails and the dashboard.

Two things are said about a queue, always with the same words:
- the robot's **verdict**: `online` (nothing against it), `pending` (in doubt: probe jobs sent),
  `excluded` (taken out of user work);
- whether that verdict is **applied** at PanDA (`applied`: its status was set) or only decided
  (`dry-run`: the exclusion mode is dry-run, nothing was changed).
Every reason the policies write (e.g. "... CUSUM 7.0 >= 6.2") also has a plain form for a shifter,
made from the decision's evidence: "7 site-class failures (STAGEINFAILED) in the last 2h, more than a
healthy queue would show".
"""
from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from robot.durations import format_duration

VERDICTS = ("online", "pending", "excluded")
MEANING = {"online": "nothing against it", "pending": "in doubt: probe jobs sent to check",
           "excluded": "taken out of user work"}
APPLIED, NOT_APPLIED = "applied", "dry-run"
TICKET_VERDICTS = {"site": "site", "central": "central", "not_site": "not the site", "unknown": "unknown"}


def ticket_verdict(verdict: str | None) -> str:
    """A ticket's verdict as people read it: `not_site` is "not the site"; none yet is "not judged"."""
    return TICKET_VERDICTS.get(verdict or "", verdict or "not judged")


def applied_word(applied: bool) -> str:
    return APPLIED if applied else NOT_APPLIED


def verdict_of_status(status: str) -> str:
    """The verdict a PanDA status stands for: online is online, brokeroff / test / offline are excluded."""
    return "online" if status == "online" else "excluded"


def queue_state(status: str | None, robot_state: str | None) -> str:
    """A queue's PanDA status with the robot's verdict when it says more, e.g. `online; robot: excluded (dry-run)`."""
    status = status or "unknown"
    if not robot_state or robot_state == "online":
        return status
    if robot_state == "excluded":
        return f"{status}; robot: excluded ({applied_word(status != 'online')})"
    return f"{status}; robot: {robot_state}"


def decision(old: str, new: str, applied: bool, kind: str = "status") -> str:
    """A stored transition in words: `excluded (dry-run: would set online -> brokeroff)`, `pending`."""
    if kind == "state":  # the robot's own view changed (in doubt, cleared): nothing to apply at PanDA
        return new
    if applied:
        return f"{verdict_of_status(new)} ({APPLIED}: {old} -> {new})"
    return f"{verdict_of_status(new)} ({NOT_APPLIED}: would set {old} -> {new})"


_TECHNICAL = re.compile(r"(:\s*|\s*)\(?CUSUM [0-9.]+( >= [0-9.]+)?\)?")


def plain_reason(reason: str, evidence: Any = None, time: datetime | None = None, new: str | None = None) -> str:
    """The reason in words a shifter reads: what failed, how often, over what time, and what it means."""
    jobs = [j for j in (evidence or {}).get("jobs", []) if isinstance(j, dict)] if isinstance(evidence, dict) else []
    failed = [j for j in jobs if j.get("failed")]
    site = [j for j in failed if j.get("error_class") == "site"]
    if new in ("brokeroff", "test", "offline", "excluded") and site:
        codes = ", ".join(sorted({str(j.get("error") or j.get("code")) for j in site}))
        span = _span(site, time)
        return (f"{len(site)} site-class failure{'s' if len(site) != 1 else ''} ({codes}){span}, "
                "more than a healthy queue would show")
    if new == "pending" and site:
        last = site[-1]
        return (f"a site-class failure ({last.get('error') or last.get('code')}, PanDA job {last.get('panda_id')}): "
                "probe jobs are sent to check the queue")
    if new == "online" and jobs and not failed:
        return f"{len(jobs)} test job{'s' if len(jobs) != 1 else ''} completed in a row: the queue works again"
    cleaned = _TECHNICAL.sub("", reason).strip(" :;,")
    return cleaned or reason


def _span(jobs: list[dict[str, Any]], time: datetime | None) -> str:
    ends = []
    for job in jobs:
        try:
            ends.append(datetime.fromisoformat(str(job.get("end_time"))))
        except ValueError:
            continue
    if time is None or not ends:
        return ""
    first = min(ends)
    if first.tzinfo is None and time.tzinfo is not None:
        first = first.replace(tzinfo=time.tzinfo)
    seconds = max(60.0, (time - first).total_seconds())
    return f" in the last {format_duration(round(seconds / 60) * 60)}"
