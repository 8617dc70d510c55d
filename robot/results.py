"""A final job report as the robot stores it: PanDA's results, the time split and the robot's verdict.

One mapping for every way a job's end reaches the robot: the loop polling a backend, and job
records imported from PanDA's monitoring (`robot.history`), so both become the same kind of row.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

from robot.backends.base import JobReport
from robot.classify import ErrorTable, classify_report
from robot.jobstates import JobStatus, Outcome


def final_values(report: JobReport, table: ErrorTable) -> dict[str, Any]:
    """The job columns of a report in a final state (finished, failed or cancelled)."""
    timing = report.pilot_timing
    values: dict[str, Any] = dict(
        phase="done", trans_exit_code=report.trans_exit_code,
        pilot_error_code=report.pilot_error_code, pilot_error_diag=report.pilot_error_diag,
        exe_error_code=report.exe_error_code, exe_error_diag=report.exe_error_diag,
        ddm_error_code=report.ddm_error_code, ddm_error_diag=report.ddm_error_diag,
        task_buffer_error_code=report.task_buffer_error_code, task_buffer_error_diag=report.task_buffer_error_diag,
        job_dispatcher_error_code=report.job_dispatcher_error_code,
        job_dispatcher_error_diag=report.job_dispatcher_error_diag,
        sup_error_code=report.sup_error_code, n_events=report.n_events,
        cpu_consumption_time=report.cpu_consumption_time, max_rss_kb=report.max_rss_kb,
        core_count=report.core_count, attempt_nr=report.attempt_nr,
        time_queue=seconds_between(report.creation_time, report.start_time),
        time_stagein=timing.get("stagein"), time_setup=timing.get("setup"),
        time_payload=timing.get("payload"), time_stageout=timing.get("stageout"),
    )
    if report.job_status is JobStatus.FINISHED:
        values.update(outcome=Outcome.COMPLETED.value, error_source=None, error_code=None, error_name=None,
                      error_class=None, error_diag=None)
        return values
    verdict = classify_report(table, report)
    cancelled = report.job_status is JobStatus.CANCELLED or verdict.klass == "none"
    values.update(outcome=(Outcome.CANCELLED if cancelled else Outcome.FAILED).value,
                  error_source=verdict.source, error_code=verdict.code, error_name=verdict.name,
                  error_class=verdict.klass, error_diag=verdict.diag)
    return values


def seconds_between(start: datetime | None, end: datetime | None) -> float | None:
    return (end - start).total_seconds() if start and end else None
