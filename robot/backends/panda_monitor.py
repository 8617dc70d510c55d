"""Users' own jobs as PanDA's monitor (BigPanDA) lists them, summed per queue and hour.

panda-client has no call that lists other people's jobs, and the server's REST statistics
(`/api/v1/statistics/job_stats_by_site_and_resource_type`) count jobs per state without their
error codes. The monitor's job list does both, in bulk: `GET {monitor_url}/jobs/?json` with, as
its job list view reads them (panda-bigmon-core, core/views.py `setupView` and `jobList`):
- `prodsourcelabel=user` (an exact match) and `jobstatus=finished|failed` (`|` separates values);
- `endtimerange=FROM|TO` (`%Y-%m-%dT%H:%M`, UTC): the jobs whose END TIME is in the hour, the time
  they are counted by. `date_from` / `date_to` select on the modification time instead, which a
  job's later bookkeeping moves past its end (such a job would be missed by its own hour); they
  are sent as well, for a monitor that predates `endtimerange`;
- `limit` (records per job table asked; the monitor's default is 20000), `fields` (comma-separated
  columns to keep: the few counted here) and `outputs=jobs` (no selection or error summary).
The answer is `{"selectionsummary": [...], "jobs": [...], "errsByCount": [...]}` with the job
table's columns in lower case (the records `healthrobot history import` reads); older monitors
answered the bare list of jobs, which is read too. Each hour is asked for in one request; the
records are summed at once (robot.userjobs.aggregate) and nothing of them is kept: no user name,
no job ID.

Test jobs (`processingtype` gangarobot: the robot's own and HammerCloud's) are not users' work and
are left out. Failures are retried with bounds (timeouts, connection errors, 5xx, malformed
answers), then `BackendUnavailable`: nothing is known, no queue failed.

The same job list finds the robot's own jobs by name (`job_ids`), which panda-server cannot:
`jobname=A|B|...` with no time window is BigPanDA's "deep query" over the live tables and the
archive (180 days), each alternative matched exactly but for case (its `UPPER(jobname) LIKE`, `_`
escaped); the names it answers with are compared exactly here.
"""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import requests

from robot.backends.base import BackendUnavailable, JobReport, UserJobHour
from robot.backoff import request_with_retries
from robot.history import Problem, parse_record
from robot.userjobs import HOUR, aggregate, hour_of

log = logging.getLogger(__name__)

TEST_JOBS = {"gangarobot"}  # processingtype of test jobs: not users' work
LIMIT = 100_000  # records per hour asked for; more means the hour is counted in part (logged)
# The columns counted (robot.history.parse_record reads them; the error diagnostics are not needed to
# know which error speaks for a job, robot.userjobs.error_key).
FIELDS = ("pandaid", "computingsite", "jobstatus", "processingtype", "endtime", "piloterrorcode", "exeerrorcode",
          "ddmerrorcode", "taskbuffererrorcode", "jobdispatchererrorcode", "superrorcode")
NAMES_PER_REQUEST = 50  # job names per look-up request (the URL stays short of the usual 8 kB limits)


class MonitorUserJobs:
    name = "panda"

    def __init__(self, url: str, *, timeout: float = 60, retries: int = 3, cert: tuple[str, str] | None = None,
                 ca_path: str | None = None, token: Callable[[], str] | None = None,
                 sleep: Callable[[float], None] = time.sleep, session: requests.Session | None = None,
                 limit: int = LIMIT):
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.retries = max(0, retries)
        self.token = token
        self.sleep = sleep
        self.limit = limit
        self.session = session if session is not None else requests.Session()
        if cert:
            self.session.cert = cert
        if ca_path:
            self.session.verify = ca_path

    def user_job_stats(self, since: datetime, until: datetime) -> list[UserJobHour]:
        hours = []
        start = since
        while start < until:
            end = min(hour_of(start) + HOUR, until)
            hours += aggregate(self._records(start, end), start, end)
            start = end
        return hours

    def _records(self, start: datetime, end: datetime) -> list[JobReport]:
        since, until = f"{start:%Y-%m-%dT%H:%M}", f"{end:%Y-%m-%dT%H:%M}"
        params = {"json": "", "prodsourcelabel": "user", "jobstatus": "finished|failed",
                  "endtimerange": f"{since}|{until}", "date_from": since, "date_to": until, "limit": self.limit,
                  "fields": ",".join(FIELDS), "outputs": "jobs"}
        return request_with_retries(self.session, "GET", f"{self.url}/jobs/", what="PanDA monitor job list",
                                    error=BackendUnavailable, retries=self.retries, sleep=self.sleep,
                                    timeout=self.timeout, read=lambda answer: self._reports(answer.text, start),
                                    params=params, headers=self._headers())

    def job_ids(self, job_names: Sequence[str], *, retries: int | None = None) -> dict[str, int | None]:
        """The PandaID of the job of each name; None where the monitor lists none. BackendUnavailable when
        it cannot be read (after `retries`, default the monitor's own), the first failure ending the look-up."""
        names = list(dict.fromkeys(job_names))
        found: dict[str, int] = {}
        for start in range(0, len(names), NAMES_PER_REQUEST):
            chunk = names[start : start + NAMES_PER_REQUEST]
            if any("|" in name or "*" in name for name in chunk):
                raise BackendUnavailable("PanDA monitor job look-up: a job name with | or * cannot be looked up")
            params = {"json": "", "jobname": "|".join(chunk)}
            listed = request_with_retries(
                self.session, "GET", f"{self.url}/jobs/", what="PanDA monitor job look-up", error=BackendUnavailable,
                retries=self.retries if retries is None else retries, sleep=self.sleep, timeout=self.timeout,
                read=lambda answer: _named_ids(answer.text), params=params, headers=self._headers())
            wanted = set(chunk)
            for name, pid in listed:
                if name in wanted:
                    found[name] = min(pid, found.get(name, pid))  # a name used twice: the first job
        return {name: found.get(name) for name in job_names}

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self.token is not None:
            headers["Authorization"] = f"Bearer {self.token()}"
        return headers

    def _reports(self, text: str, start: datetime) -> list[JobReport]:
        """The users' final jobs of an answer; ValueError when it is not the monitor's job list."""
        records = _job_list(text)
        if len(records) >= self.limit:
            log.warning("PanDA monitor: %d records or more for the hour of %s: it is counted in part", self.limit,
                        start.isoformat())
        reports, bad = [], 0
        for i, record in enumerate(records):
            if isinstance(record, dict) and str(record.get("processingtype") or "").lower() in TEST_JOBS:
                continue
            read = parse_record(i + 1, record)
            if isinstance(read, Problem):
                bad += 1
            elif read is not None:
                reports.append(read.report)
        if records and bad == len(records):
            raise ValueError("no job record could be read")
        if bad:
            log.info("PanDA monitor: %d unreadable record(s) of %d skipped", bad, len(records))
        return reports


def _job_list(text: str) -> list[Any]:
    """The records of a monitor's job list answer; ValueError when it is not one."""
    try:
        data: Any = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc.msg})") from None
    records = data.get("jobs") if isinstance(data, dict) else data  # a bare list: an older monitor
    if not isinstance(records, list):
        raise ValueError('expected {"jobs": [...]}')
    return records


def _named_ids(text: str) -> list[tuple[str, int]]:
    """(jobname, pandaid) of each record of a job list; ValueError when it is not the monitor's job list."""
    records = _job_list(text)
    out = []
    for record in records:
        name = record.get("jobname") if isinstance(record, dict) else None
        pid = record.get("pandaid") if isinstance(record, dict) else None
        if not isinstance(name, str) or isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
            raise ValueError(f"a record without a jobname and a PandaID: {str(record)[:120]}")
        out.append((name, pid))
    return out
