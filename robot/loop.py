"""The robot's loop step: `run_once(now)` submits, polls, stores results and records what it saw.

APScheduler calls it in production; tests and the simulator call it directly with virtual time.
Nothing here reads the wall clock: `now` is always given.
"""
from __future__ import annotations

import functools
import gc
import json
import logging
import os
import zlib
from collections import namedtuple
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Callable, Iterator, Sequence

from sqlalchemy import String, and_, bindparam, case, func, literal_column, or_, select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from robot.backends.base import Backend, BackendUnavailable, JobReport, JobRequest
from robot.catalogue import Catalogue, DatasetInfo
from robot.classify import ErrorTable
from robot.config import RobotConfig
from robot.durations import parse_duration
from robot.jobstates import FINAL_STATES, QUEUED_STATES, RUNNING_STATES, JobStatus, Outcome, QueueStatus
from robot.results import final_values
from robot.planning import SlotState, choose_input, jobs_to_submit, resting
from robot import rollup
from robot.stress import pending_retries
from robot.storage import settings
from robot.storage.driver_select import DriverSelect
from robot.storage.job_updates import record_jobs, update_jobs
from robot.storage.models import (Downtime, Event, Job, Queue, QueueTransition, Site, StorageEndpoint,
                                  Template, Test, TestQueue, queue_endpoint)
from robot.sync import ensure_functional_tests, sync_templates, sync_topology
from robot.topology import Topology, TopologySource
from robot.workers import LOCK_WAIT_INTERVALS, SOLO, Fenced, Shard, Workers, bound_lock_waits, lock_wait_timed_out

log = logging.getLogger(__name__)

ROBOT_NOT_STARTED_IN_TIME = 1
ROBOT_UNKNOWN_TO_BACKEND = 2
ROBOT_NOT_ACTIVATED_IN_TIME = 3
WARN_AGAIN_AFTER = timedelta(hours=1)
NOT_READ = object()  # a stored value not read
# A step that runs after polling, before submission, on the same session (e.g. the exclusion engine).
Evaluator = Callable[[Session, datetime], Any]
LAST_STEP_SETTING = "loop.last_step_at"  # heartbeat: the time of the last step (ISO 8601)
BACKEND_SETTING = "loop.backend"  # "ok", or why the last step could not reach the backend
INTERVAL_SETTING = "loop.interval_seconds"  # the stepping robot's own interval (the demo's is not the config's)
SUBMIT_LOCK = 0x51C0B07  # PostgreSQL advisory lock: one worker at a time counts slots and records jobs
# Core statements on the hot paths: no ORM entities to build or to track
JOB, QUEUE, TEST, TEST_QUEUE = Job.__table__, Queue.__table__, Test.__table__, TestQueue.__table__
TEMPLATE, ENDPOINT, SITE, DOWNTIME = Template.__table__, StorageEndpoint.__table__, Site.__table__, Downtime.__table__


def stepping_interval(stored: str | None, configured: timedelta) -> timedelta:
    """The interval of the robot that steps, as its last step wrote it (`INTERVAL_SETTING`: the demo's robot,
    or one started with another configuration, is not at this process's `loop.interval`); the configured one
    before any step or when what is stored is not a positive number of seconds."""
    try:
        seconds = float(stored) if stored is not None else 0.0
    except ValueError:
        seconds = 0.0
    return timedelta(seconds=seconds) if seconds > 0 else configured


def settle() -> None:
    """After the daemon's first step (modules, configuration and services loaded, the topology, tests and the
    exclusion engine's queues read), keep what it built out of the garbage collector's full passes (gc.freeze):
    it lives until the daemon stops, and a full pass walking it took 70-90 ms of CPU every few steps at
    1,000 queues. Whatever of it is dropped later is still freed when nothing refers to it. A step makes and
    drops tens of thousands of rows and dicts at 10,000 queues: the youngest generation is collected every
    10,000 allocations instead of 700, so they are not promoted into passes that walk them again (no full
    pass in a step at 10,000 queues instead of two or three, 60-140 ms). No collection first: one walks the
    whole heap (about 50 ms of CPU, more wall time on a busy machine) between two steps, which delays the
    next beat its peers wait for; what little garbage is frozen with the rest is never reclaimed."""
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)


@dataclass
class StepSummary:
    now: datetime
    submitted: int = 0
    polled: int = 0
    finished: int = 0
    lost: int = 0  # unconfirmed submissions the backend does not hold
    reconciled: int = 0  # unconfirmed submissions the backend holds: attached to their rows
    timed_out: int = 0
    backend_errors: list[str] = field(default_factory=list)
    evaluations: list[Any] = field(default_factory=list)  # what each evaluator (e.g. exclusion) returned
    fenced: bool = False  # this worker was counted hung by its peers during the step, which it ended
    held_up: str | None = None  # why the step stopped early: a lock a peer held past lock_timeout (PostgreSQL)

    def as_dict(self) -> dict[str, Any]:
        return {"now": self.now.isoformat(), "submitted": self.submitted, "polled": self.polled,
                "finished": self.finished, "lost": self.lost,
                "reconciled": self.reconciled, "timed_out": self.timed_out,
                "backend_errors": self.backend_errors, **({"held_up": self.held_up} if self.held_up else {})}


@dataclass(frozen=True)
class SubmissionContext:
    """What submission needs to know about the queues and tests it sends to."""

    queues: dict[int, tuple[str, list[str]]]  # queue id -> (name, storage endpoints)
    templates: dict[int, dict[str, Any]]  # test id -> its template's settings


class Robot:
    def __init__(self, config: RobotConfig, sessions: sessionmaker[Session], backend: Backend,
                 catalogue: Catalogue, topology: TopologySource, error_table: ErrorTable,
                 evaluators: Sequence[Evaluator] = (), rollup: bool = True, shared: bool = True):
        """`rollup=False` skips the dashboards' job rollup: for the simulator, which has no dashboards.
        `shared=False`: no other robot process can use this database (the simulator's in-memory one),
        so no heartbeat is written and this robot does everything."""
        self.config = config
        self.sessions = sessions
        self.backend = backend
        self.catalogue = catalogue
        self.topology = topology
        self.error_table = error_table
        self.evaluators = list(evaluators)
        self.rollup = rollup
        self._topology_synced_at: datetime | None = None
        self._topology: Topology | None = None
        self._tests_valid_until: datetime | None = None
        self._warned: dict[tuple[str, str], datetime] = {}
        # Several processes may share the database (robot/workers.py): each step works on this
        # process's queues, and only the leader takes the decisions that need the whole grid.
        self.workers = Workers(sessions, config.loop.interval) if shared else None
        self._shard: Shard = SOLO
        self._owned: list[int] | None = None  # queue ids this step works on; None: all of them
        self._live_seen: tuple[int, ...] = ()  # the live workers at the last step (an event when they change)

    def run_once(self, now: datetime) -> StepSummary:
        summary = StepSummary(now=now)
        try:
            self._step(now, summary)
        except Fenced as exc:  # this worker hung and was replaced: what it was doing is someone else's now
            log.warning("%s; this step ends here, the next one rejoins as a new worker", exc)
            summary.fenced = True
        except OperationalError as exc:
            if not lock_wait_timed_out(exc):
                raise
            summary.held_up = (f"a lock another transaction held (a peer hung in it?) was still held after"
                               f" {self.config.loop.interval * LOCK_WAIT_INTERVALS}: this step ends here, what it"
                               " had not committed is tried again at the next one")
            log.warning("%s", summary.held_up)
        return summary

    def _check(self) -> None:
        """Beat, or stop (Fenced) if peers counted this worker hung meanwhile."""
        if self.workers:
            self.workers.check()

    def _commit(self, session: Session) -> None:
        """After each phase of a step (the next may call a remote service): beat, then commit what the phase
        did; a worker fenced meanwhile commits nothing of it (its queues are others' now) and stops."""
        self._check()
        if _written(session):
            session.commit()

    def _step(self, now: datetime, summary: StepSummary) -> None:
        shard = self._shard = self.workers.step(now) if self.workers else SOLO
        if shard.fenced:
            log.warning("worker(s) %s hung (no beat for over %s while their process lives): fenced, their queues"
                        " taken over", ", ".join(map(str, shard.fenced)), self.config.loop.interval)
        with self.sessions() as session:
            if self.workers:  # several processes may share the database: no wait on a peer's lock without bound
                bound_lock_waits(session, self.config.loop.interval)
            if shard.leader:
                self._refresh(session, now)
            self._owned = None if shard.alone else [
                queue_id for queue_id, name in session.execute(select(QUEUE.c.id, QUEUE.c.name)) if shard.owns(name)]
            if shard.live != self._live_seen and (self._live_seen or not shard.alone):  # not for one alone
                self._live_seen = shard.live
                self._event(session, now, "workers", f"worker {shard.me}",
                            f"{len(shard.live)} robot process(es) live; this one (worker {shard.me}) serves"
                            f" {'every queue' if self._owned is None else f'{len(self._owned)} queue(s)'}"
                            f"{', and leads' if shard.leader else ''}",
                            {"me": shard.me, "live": list(shard.live), "leader": shard.leader,
                             "queues": None if self._owned is None else len(self._owned),
                             **({"fenced": list(shard.fenced)} if shard.fenced else {})})
            self._reconcile_unconfirmed(session, now, summary)
            self._commit(session)
            if shard.leader:
                self._read_queue_status(session, now, summary)
                self._commit(session)
            self._poll(session, now, summary)
            self._commit(session)
            self._time_out_waiting_jobs(session, now, summary)
            self._commit(session)
            if shard.leader:
                # Other workers commit jobs made final up to a step later than the time they carry.
                if self.rollup:  # the dashboards' sums of the jobs that just became final
                    rollup.update(session, now, margin=timedelta(0) if shard.alone else 2 * self.config.loop.interval)
                    session.commit()
                for evaluate in self.evaluators:
                    summary.evaluations.append(evaluate(session, now))
                    self._commit(session)
            self._submit(session, now, summary)
            if shard.leader:
                _heartbeat(session, now, summary, self.config.loop.interval)
            self._commit(session)

    def _mine(self) -> dict[str, Any]:
        """The parameters of a select built by `_jobs_select` (the queues this process owns, if not all)."""
        return {} if self._owned is None else {"owned": self._owned}

    # -- 1. topology, templates and tests ----------------------------------------------------
    def _refresh(self, session: Session, now: datetime) -> None:
        changed = False
        if self._topology_synced_at is None or now - self._topology_synced_at >= self.config.topology.refresh:
            try:
                topology = self.topology.topology()
            except BackendUnavailable as exc:
                # Keep working with the stored topology; try again at the next step.
                self._event(session, now, "topology_unreachable", "", f"topology could not be read: {exc}")
                topology = None
            if topology is not None and topology != self._topology:
                sync_topology(session, topology, now)
                sync_templates(session, self.config.templates)
                self._topology, changed = topology, True
            if topology is not None:
                self._topology_synced_at = now
        if changed or self._tests_valid_until is None or now >= self._tests_valid_until:
            tests = ensure_functional_tests(session, self.config.templates, now)
            self._tests_valid_until = min((t.end_time for t in tests), default=now + self.config.topology.refresh)

    # -- 2. crash recovery ----------------------------------------------------------------------
    def _reconcile_unconfirmed(self, session: Session, now: datetime, summary: StepSummary) -> None:
        """Jobs recorded but never confirmed: an earlier step stopped (or the backend's reply was lost)
        between recording them and storing their PanDA IDs. The backend is asked for each by name:
        one it holds is attached to its row and followed from now on; one it does not hold is marked
        lost (never counted) once its submission is older than the backend's `lookup_grace` (the
        backend may still store it until then). While it cannot tell, the rows stay recorded and keep
        their slots, so nothing is sent twice."""
        rows = _rows(session, _jobs_select("unconfirmed", self._owned is not None), self._mine(), Unconfirmed._make)
        live = self.workers.live_now(session, now, (row.worker_id for row in rows)) if self.workers else set()
        rows = [row for row in rows if self._shard.may_reconcile(row.worker_id, live)]  # not a live one's
        if not rows:
            return
        found: dict[str, int | None] = {}
        batch_size = self.config.loop.submit_batch_size
        try:
            for start in range(0, len(rows), batch_size):
                found.update(self.backend.find([row.job_name for row in rows[start : start + batch_size]]))
        except BackendUnavailable as exc:
            summary.backend_errors.append(f"find: {exc}")
            self._event(session, now, "submission_unconfirmed", self.backend.name,
                        f"{len(rows)} job(s) recorded but never confirmed submitted could not be looked up: {exc};"
                        " they keep their slots until the backend answers", {"jobs": [r.job_name for r in rows][:50]})
            return
        grace = getattr(self.backend, "lookup_grace", timedelta(0))
        attached = [(row, found[row.job_name]) for row in rows if found.get(row.job_name) is not None]
        missing = [row for row in rows if found.get(row.job_name) is None]
        lost = [row for row in missing if now - row.recorded_at >= grace]
        waiting = len(missing) - len(lost)
        if attached:
            update_jobs(session, [
                {"id": row.id, "panda_id": pid, "phase": "active", "job_status": JobStatus.DEFINED.value,
                 "submitted_at": row.recorded_at, "status_changed_at": now} for row, pid in attached])
        if lost:
            session.execute(update(Job).where(Job.id.in_([row.id for row in lost]), Job.phase == "recorded")
                            .values(phase="lost"))
        summary.reconciled, summary.lost = len(attached), len(lost)
        self._event(session, now, "submission_unconfirmed", self.backend.name,
                    f"{len(rows)} job(s) were recorded but never confirmed submitted: {len(attached)} found at the"
                    f" backend and followed, {len(lost)} unknown to it and marked lost (not counted)"
                    + (f", {waiting} not found yet, asked again (lost only once {grace} old)" if waiting else ""),
                    {"found": {row.job_name: pid for row, pid in attached[:50]},
                     "lost": [row.job_name for row in lost[:50]], "waiting": waiting})

    # -- 3. queue status -------------------------------------------------------------------------
    def _read_queue_status(self, session: Session, now: datetime, summary: StepSummary) -> None:
        try:
            statuses = self.backend.queue_status()
        except BackendUnavailable as exc:
            summary.backend_errors.append(f"queue status: {exc}")
            return
        rows = _rows(session, LIVE_QUEUES, {})
        for queue_id, name, old in rows:
            new = statuses.get(name)
            if new is None or new.value == old:
                continue
            session.execute(update(Queue).where(Queue.id == queue_id).values(status=new.value, status_read_at=now))
            session.add(QueueTransition(queue_id=queue_id, time=now, old=old, new=new.value, actor="backend",
                                        reason="status read at the backend differs from the last one seen",
                                        evidence={"backend": self.backend.name}, applied=True))

    # -- 4. polling ------------------------------------------------------------------------------
    def _poll(self, session: Session, now: datetime, summary: StepSummary) -> None:
        # as stored: the end time is only compared with None
        active = _rows(session, _jobs_select("active", self._owned is not None), self._mine(), converted=False)
        batch_size = self.config.loop.poll_batch_size
        changes: list[dict[str, Any]] = []  # of every batch read: one bulk update, also when a later batch fails
        for start in range(0, len(active), batch_size):
            batch = active[start : start + batch_size]
            try:
                reports = self.backend.status([panda_id for _, panda_id, _, _ in batch])
            except BackendUnavailable as exc:
                summary.backend_errors.append(f"status: {exc}")
                self._event(session, now, "backend_unreachable", self.backend.name,
                            f"job status could not be read: {exc}; {len(active) - start} job(s) stay in flight, nothing counted")
                break
            summary.polled += len(batch)
            forgotten = []
            for job_id, panda_id, status, end_time in batch:
                report = reports.get(panda_id)
                if report is None:
                    forgotten.append(job_id)
                elif report.job_status != status or report.job_status in FINAL_STATES:
                    changes.append(self._from_report(job_id, report, now, end_time))
                    summary.finished += report.job_status in FINAL_STATES
            for job_id in self._unknown_for_too_long(session, forgotten, now):
                changes.append(self._unknown(job_id, now))
                summary.finished += 1
        if changes:
            update_jobs(session, changes)

    def _unknown_for_too_long(self, session: Session, job_ids: list[int], now: datetime) -> list[int]:
        """Of the jobs the backend did not know, those submitted longer than `unknown_after` ago."""
        if not job_ids:
            return []
        return list(session.scalars(select(JOB.c.id).where(
            JOB.c.id.in_(job_ids), JOB.c.submitted_at <= now - self.config.loop.unknown_after)))

    def _from_report(self, job_id: int, report: JobReport, now: datetime, stored_end: Any = NOT_READ) -> dict[str, Any]:
        """The job's columns as `report` gives them; not its end time when neither the report nor the row has one
        (`stored_end`, when read: a running job's): writing it again would rewrite its entries in two indexes."""
        values: dict[str, Any] = {
            "id": job_id, "job_status": report.job_status.value, "status_changed_at": now,
            "creation_time": report.creation_time, "start_time": report.start_time,
        }
        if report.end_time is not None or stored_end is not None:
            values["end_time"] = report.end_time
        if report.job_status in FINAL_STATES:
            values.update(final_values(report, self.error_table))
        return values

    def _unknown(self, job_id: int, now: datetime) -> dict[str, Any]:
        name = self.error_table.get(("robot", ROBOT_UNKNOWN_TO_BACKEND))
        return {"id": job_id, "phase": "done", "status_changed_at": now, "outcome": Outcome.UNKNOWN.value,
                "error_source": "robot", "error_code": ROBOT_UNKNOWN_TO_BACKEND,
                "error_name": name.name if name else "UNKNOWNTOBACKEND", "error_class": "unknown",
                "error_diag": f"the backend has not known this job for {self.config.loop.unknown_after}"}

    # -- 5. jobs that never start --------------------------------------------------------------
    def _time_out_waiting_jobs(self, session: Session, now: datetime, summary: StepSummary) -> None:
        """A job still queued after its template's `max_queue_time` is killed, in one backend call per
        batch. Waiting `activated` (counted from activation) is the site's failure; still waiting for
        the server or its data (defined, assigned, pending, waiting; counted from submission) is a
        central one. A job the backend will not kill (already final, or unknown to it) is polled again
        and recorded as it really ended; a kill that cannot be sent is tried again at the next step."""
        shortest = min((t.max_queue_time for t in self.config.templates), default=timedelta(hours=2))
        waiting = _rows(session, _jobs_select("waiting", self._owned is not None),
                        {"submitted_before": now - shortest, **self._mine()}, Waiting._make)
        expired = []
        for row in waiting:
            limit = parse_duration(row.settings.get("max_queue_time", 7200))
            at_site = row.job_status == JobStatus.ACTIVATED.value
            if now - ((row.status_changed_at or row.submitted_at) if at_site else row.submitted_at) >= limit:
                expired.append((row, limit))
        if not expired:
            return
        answers: dict[int, bool] = {}
        batch_size = self.config.loop.poll_batch_size
        for start in range(0, len(expired), batch_size):
            try:
                answers.update(self.backend.kill([row.panda_id for row, _ in expired[start : start + batch_size]]))
            except BackendUnavailable as exc:
                summary.backend_errors.append(f"kill: {exc}")
                self._event(session, now, "backend_unreachable", self.backend.name,
                            f"kill failed: {exc}; {len(expired) - start} job(s) past max_queue_time stay in flight,"
                            " killed at the next step")
                break
        killed = [(row, limit) for row, limit in expired if answers.get(row.panda_id) is True]
        refused = [row for row, _ in expired if answers.get(row.panda_id) is False]
        update_jobs(session, [self._not_started(row, limit, now) for row, limit in killed])
        summary.timed_out = len(killed)
        if refused:
            self._event(session, now, "kill_refused", self.backend.name,
                        f"{len(refused)} job(s) past max_queue_time were not killed (already ended, or unknown to the"
                        " backend): polled again and recorded as they ended", {"panda_ids": [r.panda_id for r in refused][:50]})
            self._poll_again(session, now, summary, refused)

    def _not_started(self, row: Any, limit: timedelta, now: datetime) -> dict[str, Any]:
        at_site = row.job_status == JobStatus.ACTIVATED.value
        code = ROBOT_NOT_STARTED_IN_TIME if at_site else ROBOT_NOT_ACTIVATED_IN_TIME
        entry = self.error_table.get(("robot", code))
        name, klass = (entry.name, entry.klass) if entry else (
            ("NOTSTARTEDINTIME", "site") if at_site else ("NOTACTIVATEDINTIME", "central"))
        diag = (f"not started within max_queue_time ({limit}) after activation; killed" if at_site else
                f"still {row.job_status} at the server after max_queue_time ({limit}): the server's or the"
                " data's wait, not the site's; killed")
        return {"id": row.id, "phase": "done", "job_status": JobStatus.CANCELLED.value, "status_changed_at": now,
                "end_time": now, "outcome": Outcome.FAILED.value, "error_source": "robot", "error_code": code,
                "error_name": name, "error_class": klass, "error_diag": diag,
                "time_queue": (now - row.submitted_at).total_seconds()}

    def _poll_again(self, session: Session, now: datetime, summary: StepSummary, rows: Sequence[Any]) -> None:
        """The backend's word on jobs it would not kill; left for the next step's poll if it cannot be read."""
        try:
            reports = self.backend.status([row.panda_id for row in rows])
        except BackendUnavailable as exc:
            summary.backend_errors.append(f"status: {exc}")
            return
        changes = [self._from_report(row.id, report, now) for row in rows
                   if (report := reports.get(row.panda_id)) is not None and report.job_status.value != row.job_status]
        summary.finished += sum(change.get("phase") == "done" for change in changes)
        if changes:
            update_jobs(session, changes)

    # -- 6. submission -----------------------------------------------------------------------------
    def _submit(self, session: Session, now: datetime, summary: StepSummary) -> None:
        slots = self._slot_states(session, now)
        plan = [(slot, n) for slot in slots if (n := jobs_to_submit(slot, now)) > 0]
        if not plan:
            return
        context = self._submission_context(session, {slot.queue_id for slot, _ in plan}, {slot.test_id for slot, _ in plan})
        # The input data is read from the catalogue (a remote call, Rucio in production) with no transaction
        # open and no lock held, so a slow catalogue never holds up the other workers or the database.
        session.commit()
        inputs: dict[tuple[int, int], list[DatasetInfo]] = {}
        datasets_cache: dict[tuple[str, str], list[DatasetInfo]] = {}
        outage: BackendUnavailable | None = None  # the catalogue failed: not asked again in this step
        unserved: set[str] = set()
        for slot, _ in plan:
            queue_name, endpoints = context.queues[slot.queue_id]
            pattern = context.templates[slot.test_id]["input_dataset"]
            try:
                inputs[slot.test_id, slot.queue_id] = [
                    d for e in endpoints for d in self._datasets(datasets_cache, e, pattern, outage)]
            except BackendUnavailable as exc:
                outage = outage or exc
                unserved.add(queue_name)
        self._check()  # the catalogue may have held this worker past its peers' patience
        if session.get_bind().dialect.name == "postgresql":
            # While the live workers change (one starts, one dies), two may briefly both own a queue:
            # counting its slots and recording its jobs is done by one at a time (the lock ends with
            # the commit below). Taken alone too: a worker starting now is not seen yet. The slots are
            # counted again under the lock: another worker may have filled some while the catalogue answered.
            session.execute(select(func.pg_advisory_xact_lock(SUBMIT_LOCK)))
            planned = {(slot.test_id, slot.queue_id) for slot, _ in plan}
            plan = [(slot, n) for slot in self._slot_states(session, now, {queue for _, queue in planned})
                    if (slot.test_id, slot.queue_id) in planned and (n := jobs_to_submit(slot, now)) > 0]
        rows: list[dict[str, Any]] = []
        requests: list[JobRequest] = []
        suffixes = _random_suffixes(sum(count for _, count in plan))
        wall_seconds: dict[int, int] = {}
        for slot, count in plan:
            queue_name, endpoints = context.queues[slot.queue_id]
            template = context.templates[slot.test_id]
            datasets = inputs.get((slot.test_id, slot.queue_id))
            if datasets is None:  # the catalogue could not be read for it
                continue
            if not datasets:
                self._warn_no_data(session, now, queue_name, template, endpoints)
                continue
            max_wall_seconds = wall_seconds.get(slot.test_id)
            if max_wall_seconds is None:  # parsed once per test, not once per queue
                max_wall_seconds = wall_seconds[slot.test_id] = int(parse_duration(template["max_wall_time"]).total_seconds())
            for k in range(count):
                name = f"hc.{slot.test_id}.{queue_name}.{next(suffixes)}"
                dataset, files = choose_input(datasets, zlib.crc32(name.encode()), template["events_per_job"])
                rows.append({"test_id": slot.test_id, "queue_id": slot.queue_id, "job_name": name,
                             "worker_id": self._shard.me,
                             "phase": "recorded", "dataset": dataset.name, "n_files": len(files), "recorded_at": now,
                             "retry_of": slot.retry_ids[k] if k < len(slot.retry_ids) else None})
                requests.append(JobRequest(
                    job_name=name, queue=queue_name, payload=template["payload"], dataset=dataset.name, files=files,
                    max_events=template["events_per_job"],
                    max_wall_seconds=max_wall_seconds,
                    processing_type=template["processing_type"],
                ))
        if outage is not None:
            # Nothing is known about the input data: nothing sent there, no dataset missing, no failure.
            summary.backend_errors.append(f"catalogue: {outage}")
            self._event(session, now, "catalogue_unreachable", "",
                        f"input datasets could not be read: {outage}; nothing sent to {len(unserved)} queue(s)"
                        " this step, nothing counted", {"queues": sorted(unserved)[:100]})
        if not rows:
            return
        # Recorded before sent: a crash from here on leaves rows the next step looks up at the backend.
        ids = record_jobs(session, rows)
        session.commit()
        batch_size = self.config.loop.submit_batch_size
        for start in range(0, len(requests), batch_size):
            batch = requests[start : start + batch_size]
            try:
                panda_ids = self.backend.submit(batch)
            except BackendUnavailable as exc:
                summary.backend_errors.append(f"submit: {exc}")
                # The server may have stored the batch before its reply was lost: the rows stay recorded
                # and the next step looks them up by name before calling any of them lost.
                self._event(session, now, "backend_unreachable", self.backend.name,
                            f"submission failed: {exc}; {len(requests) - start} job(s) unconfirmed, looked up at"
                            " the next step, nothing counted")
                return
            update_jobs(session, [{"id": job_id, "panda_id": pid, "phase": "active",
                                    "job_status": JobStatus.DEFINED.value, "submitted_at": now, "status_changed_at": now}
                                   for job_id, pid in zip((ids[r.job_name] for r in batch), panda_ids)])
            session.commit()
            summary.submitted += len(batch)

    def _slot_states(self, session: Session, now: datetime, queue_ids: set[int] | None = None) -> list[SlotState]:
        """The (running test, live queue) pairs that may want a job, with their jobs in flight (of
        `queue_ids` only, when given).

        A pair that holds all the jobs it may hold (in flight at least `max_running_jobs` plus the
        policy's probes, queued at least `min_queue_depth`) gets nothing from `jobs_to_submit`: it is
        left out in SQL. In a steady step that is most pairs, and reading every one of them was the
        step's largest cost. The same select reads when each pair's latest job ended, for the queues
        the policy wants tested with a gap; a pair in that pause (`resting`, most of the others where
        the policy spaces the jobs of stable queues) is left out in SQL too, by each gap's time bound."""
        job = JOB.c
        gaps = tuple(gap for gap, in _rows(session, QUEUE_GAPS, {}))
        pairs = _rows(session, _slots_select(self._owned is not None, queue_ids is not None, gaps), {
            "now": now, **self._mine(), **{f"rests_{gap}": now - timedelta(seconds=gap) for gap in gaps},
            **({} if queue_ids is None else {"queues": sorted(queue_ids)})}, Pair._make)
        counted = sorted({row.test_id for row in pairs if not row.resubmit_enabled or row.max_jobs is not None})
        totals: dict[tuple[int, int], int] = {}
        if counted:
            totals = {(t, q): n for t, q, n in session.execute(
                select(job.test_id, job.queue_id, func.count())
                .where(job.test_id.in_(counted), job.phase != "lost", job.retry_of.is_(None))
                .group_by(job.test_id, job.queue_id))}
        retries = pending_retries(session, sorted({row.test_id for row in pairs if row.max_jobs is not None}))
        slots = []
        pauses = {gap: timedelta(seconds=gap) for gap in {row.job_gap_seconds for row in pairs}}
        for test_id, queue_id, max_running, depth, resubmit, extra, gap, max_jobs, jobs, run, last_end in pairs:
            if max_jobs is None and resubmit and resting(extra, pauses[gap], last_end, now):
                continue
            key = (test_id, queue_id)
            slots.append(SlotState(
                test_id=test_id, queue_id=queue_id, max_running_jobs=max_running, min_queue_depth=depth,
                resubmit_enabled=resubmit, queued=jobs - run, running=run, total=totals.get(key, jobs),
                extra_jobs=0 if max_jobs is not None else extra,
                gap=timedelta(0) if max_jobs is not None else pauses[gap],
                last_end=last_end, max_jobs=max_jobs, retry_ids=tuple(retries.get(key, ()))))
        return slots

    @staticmethod
    def _submission_context(session: Session, queue_ids: set[int], test_ids: set[int]) -> "SubmissionContext":
        """The names and storage endpoints of the queues, and the templates' settings of the tests, to send to. On
        SQLite through the driver (robot.storage.driver_select), the ids bound as one JSON list: SQLAlchemy's handling
        of the two selects cost more than SQLite's own work, at every step that sends."""
        if session.get_bind().dialect.name == "sqlite":
            ids = {"queues": json.dumps(sorted(queue_ids)), "tests": json.dumps(sorted(test_ids))}
            found, settings_of = _rows(session, QUEUES_ENDPOINTS_JSON, ids), _rows(session, TESTS_TEMPLATES_JSON, ids)
        else:
            found = session.execute(QUEUES_ENDPOINTS, {"queues": sorted(queue_ids)}).all()
            settings_of = session.execute(TESTS_TEMPLATES, {"tests": sorted(test_ids)}).all()
        queues: dict[int, tuple[str, list[str]]] = {}
        for queue_id, name, endpoint in found:
            queues.setdefault(queue_id, (name, []))[1].extend([endpoint] if endpoint else [])
        return SubmissionContext(queues=queues, templates=dict(settings_of))

    def _datasets(self, cache: dict[tuple[str, str], list[DatasetInfo]], endpoint: str, pattern: str,
                  outage: BackendUnavailable | None = None) -> list[DatasetInfo]:
        key = (endpoint, pattern)
        if key not in cache:
            if outage is not None:
                raise outage
            cache[key] = self.catalogue.complete_datasets(endpoint, pattern)
        return cache[key]

    def _warn_no_data(self, session: Session, now: datetime, queue: str, template: dict[str, Any], endpoints: list[str]) -> None:
        key = (queue, template["name"])
        if key in self._warned and now - self._warned[key] < WARN_AGAIN_AFTER:
            return
        self._warned[key] = now
        self._event(session, now, "no_input_data", queue,
                    f"no complete dataset matching {template['input_dataset']!r} at {', '.join(endpoints) or 'no endpoint'}"
                    f" for template {template['name']}: nothing submitted (not a site failure)",
                    {"template": template["name"], "endpoints": endpoints})

    @staticmethod
    def _event(session: Session, now: datetime, kind: str, subject: str, message: str,
               details: dict[str, Any] | None = None) -> None:
        log.warning("%s %s: %s", kind, subject, message)
        session.add(Event(time=now, kind=kind, subject=subject, message=message, details=details or {}))


# Selects of submission built once (the ids bound at each step, not rendered as literals into a new statement)
QUEUES_WITH_ENDPOINTS = (select(QUEUE.c.id, QUEUE.c.name, ENDPOINT.c.name)
                         .select_from(QUEUE.outerjoin(queue_endpoint, queue_endpoint.c.queue_id == QUEUE.c.id)
                                      .outerjoin(ENDPOINT, ENDPOINT.c.id == queue_endpoint.c.endpoint_id)))
TESTS_WITH_TEMPLATES = select(TEST.c.id, TEMPLATE.c.settings).select_from(TEST.join(TEMPLATE, TEMPLATE.c.id == TEST.c.template_id))
QUEUES_ENDPOINTS = QUEUES_WITH_ENDPOINTS.where(QUEUE.c.id.in_(bindparam("queues", expanding=True)))
TESTS_TEMPLATES = TESTS_WITH_TEMPLATES.where(TEST.c.id.in_(bindparam("tests", expanding=True)))


def _in_json(column: Any, name: str) -> Any:
    """`column` IN the ids of the JSON list bound as `name` (SQLite's json_each): a select the driver runs as it is."""
    return column.in_(select(literal_column("value")).select_from(func.json_each(bindparam(name, type_=String))))


# The same on SQLite, run by the driver
QUEUES_ENDPOINTS_JSON = DriverSelect(QUEUES_WITH_ENDPOINTS.where(_in_json(QUEUE.c.id, "queues")))
TESTS_TEMPLATES_JSON = DriverSelect(TESTS_WITH_TEMPLATES.where(_in_json(TEST.c.id, "tests")))


LIVE_QUEUES = DriverSelect(select(QUEUE.c.id, QUEUE.c.name, QUEUE.c.status).where(QUEUE.c.retired_at.is_(None)))


@functools.cache
def _jobs_select(which: str, mine: bool) -> Any:
    """The jobs a step reads, built once per shape (the step's queues only, `mine`, as bound `owned`):
    `unconfirmed` (recorded, never confirmed submitted), `active` (to poll, with their stored end time), and
    `waiting` (queued since before the bound `submitted_before`, with their template's settings)."""
    job = JOB.c
    owned = [job.queue_id.in_(bindparam("owned", expanding=True))] if mine else []
    if which == "unconfirmed":
        return DriverSelect(select(job.id, job.job_name, job.recorded_at, job.worker_id)
                            .where(job.phase == "recorded", *owned))
    if which == "active":
        return DriverSelect(select(job.id, job.panda_id, job.job_status, job.end_time).where(job.phase == "active", *owned))
    assert which == "waiting", which
    return DriverSelect(
        select(job.id, job.panda_id, job.job_status, job.submitted_at, job.status_changed_at, TEMPLATE.c.settings)
        .select_from(JOB.join(TEST, TEST.c.id == job.test_id).join(TEMPLATE, TEMPLATE.c.id == TEST.c.template_id))
        .where(job.phase == "active", job.job_status.in_([s.value for s in QUEUED_STATES]),
               job.submitted_at <= bindparam("submitted_before", type_=job.submitted_at.type), *owned))


# The gaps between jobs the policy asks of live queues, each once (a few values of its settings: `_slots_select`
# is built once per set of them)
QUEUE_GAPS = DriverSelect(select(QUEUE.c.job_gap_seconds)
                          .where(QUEUE.c.retired_at.is_(None), QUEUE.c.job_gap_seconds != 0)
                          .distinct().order_by(QUEUE.c.job_gap_seconds))


@functools.cache
def _slots_select(mine: bool, subset: bool, gaps: tuple[int, ...] = ()) -> Any:
    """The select of `Robot._slot_states`, built once per shape (the step's queues only, `mine`, as bound
    `owned`; some queues only, `subset`, as bound `queues`; the queues' `gaps`); the step's time is bound as
    `now`, and for each gap `g` the time a job must have ended by for its pair to be due again, as `rests_g`."""
    test, queue, pair, job = TEST.c, QUEUE.c, TEST_QUEUE.c, JOB.c
    now = bindparam("now", type_=test.end_time.type)
    # A stress test sends until its end, and to an excluded queue only if it was asked to.
    stress_may_send = and_(test.end_time > now, or_(test.allow_excluded, and_(
        queue.status == QueueStatus.ONLINE.value, queue.robot_state != "excluded")))
    flying = (select(job.test_id, job.queue_id, func.count().label("jobs"),
                     func.sum(case((job.job_status.in_([s.value for s in RUNNING_STATES]), 1), else_=0))
                     .label("running"))
              .where(job.phase.in_(["recorded", "active"])).group_by(job.test_id, job.queue_id).subquery())
    in_flight, running = func.coalesce(flying.c.jobs, 0), func.coalesce(flying.c.running, 0)
    probes = case((pair.max_jobs.is_(None), queue.extra_jobs), else_=0)
    # When the pair's latest job ended, for a queue the policy wants tested with a gap (robot.planning): found
    # from the newest end of the queue down (its index), so a pair of a queue tested since reads a row or two.
    last_end = case((queue.job_gap_seconds != 0, select(job.end_time)
                     .where(job.queue_id == pair.queue_id, job.test_id == pair.test_id, job.end_time.is_not(None))
                     .order_by(job.end_time.desc()).limit(1).scalar_subquery()))
    # As HammerCloud, no functional test goes to a site in an announced outage (robot.downtimes): the
    # exclusion engine has its queues tested at once when it ends. A stress test asked for goes all the same.
    down = queue.site_id.in_(select(SITE.c.id).join(DOWNTIME, DOWNTIME.c.site == SITE.c.name)
                             .where(DOWNTIME.c.start <= now, DOWNTIME.c.end > now))
    return DriverSelect(
        select(pair.test_id, pair.queue_id, pair.max_running_jobs, pair.min_queue_depth,
               pair.resubmit_enabled, queue.extra_jobs, queue.job_gap_seconds, pair.max_jobs,
               in_flight, running, last_end)
        .join(TEST, test.id == pair.test_id).join(QUEUE, queue.id == pair.queue_id)
        .outerjoin(flying, and_(flying.c.test_id == pair.test_id, flying.c.queue_id == pair.queue_id))
        .where(test.state == "running", queue.retired_at.is_(None), queue.status != QueueStatus.OFFLINE.value,
               pair.stopped_at.is_(None), or_(pair.max_jobs.is_(None), stress_may_send),
               or_(pair.max_jobs.is_not(None), ~down),
               *([pair.queue_id.in_(bindparam("owned", expanding=True))] if mine else []),
               *([pair.queue_id.in_(bindparam("queues", expanding=True))] if subset else []),
               or_(in_flight < pair.max_running_jobs + probes,
                   in_flight - running < pair.min_queue_depth),
               *([_not_resting(gaps)] if gaps else [])))


def _not_resting(gaps: tuple[int, ...]) -> Any:
    """Leaves out the pairs in their pause after a job (robot.planning.resting; most pairs, where the policy spaces
    jobs): a job of the pair ended after the bound `rests_g` of the queue's gap `g` (its latest end is after it).
    Asked as "no such job" (NOT EXISTS), not of the latest end: that reads only the queue's jobs ended since, from
    its index, not its latest job's end twice over (ordered, then compared) for each of the pairs, most of them
    resting (the select's largest cost). The times are compared as stored, with no date arithmetic (not the same
    in SQLite and PostgreSQL); a gap not listed (changed since `gaps` was read) keeps its pairs, which `resting`
    then judges."""
    pair, queue, job = TEST_QUEUE.c, QUEUE.c, JOB.c
    due_by = case({gap: bindparam(f"rests_{gap}", type_=job.end_time.type) for gap in gaps},
                  value=queue.job_gap_seconds, else_=bindparam("now", type_=job.end_time.type))
    ended_since = (select(job.id)
                   .where(job.queue_id == pair.queue_id, job.test_id == pair.test_id, job.end_time > due_by).exists())
    return or_(pair.max_jobs.is_not(None), pair.resubmit_enabled.is_(False), queue.extra_jobs != 0,
               queue.job_gap_seconds == 0, ~ended_since)


# The rows of the step's selects that are read by name
Unconfirmed = namedtuple("Unconfirmed", "id job_name recorded_at worker_id")
Waiting = namedtuple("Waiting", "id panda_id job_status submitted_at status_changed_at settings")
Pair = namedtuple("Pair", "test_id queue_id max_running_jobs min_queue_depth resubmit_enabled extra_jobs"
                          " job_gap_seconds max_jobs jobs running last_end")


def _written(session: Session) -> bool:
    """Whether a phase of the step left anything to commit (`Robot._commit`). On SQLite the driver opens a
    transaction only to write (a select runs outside one, and holds no lock once read): a phase that only read (at
    most steps the crash recovery, the queue status and the time-outs) has nothing to commit, and SQLAlchemy's
    commit (the connection given back to the pool, then taken again by the next phase, about 50 us each) is not
    done. Elsewhere always. (Before the catalogue is read the submission commits all the same: no transaction of
    SQLAlchemy's is open while a remote service answers.)"""
    if session.new or session.deleted or session.dirty:  # to flush
        return True
    if not session.in_transaction():
        return False  # nothing was run: a commit would begin a transaction only to end it
    connection = session.connection()
    return connection.dialect.name != "sqlite" or connection.connection.driver_connection.in_transaction


def _rows(session: Session, select_: DriverSelect, params: dict[str, Any], make: Callable[[Any], Any] = tuple,
          converted: bool = True) -> list:
    """The rows of one of the step's selects, each converted as SQLAlchemy would and `make` of it; or as stored
    (`converted` False: values only compared with None). On SQLite through the driver (robot.storage.driver_select),
    unless a list is bound (the queues of one worker among several): SQLAlchemy's handling of a select and of each
    of its rows cost more than SQLite's own work, at every step."""
    if any(isinstance(value, list) for value in params.values()):
        return [make(values) for values in session.execute(select_.statement, params)]
    found, convert = select_.rows(session.connection(), params)
    return [make(convert(values)) for values in found] if converted else found


def _random_suffixes(count: int) -> Iterator[str]:
    """`count` random 12-digit hex suffixes for job names, from one read of the system's random source."""
    pool = os.urandom(6 * count).hex()
    return (pool[i : i + 12] for i in range(0, 12 * count, 12))


def _heartbeat(session: Session, now: datetime, summary: StepSummary, interval: timedelta) -> None:
    """When the last step ran, at what interval the robot steps, and whether it reached the backend: what the
    dashboard's /health and `stress watch` read."""
    problem = "; ".join(summary.backend_errors)
    values = {LAST_STEP_SETTING: now.isoformat(), INTERVAL_SETTING: f"{interval.total_seconds():g}",
              BACKEND_SETTING: (problem or "ok")[:256]}
    settings.store(session, values, "robot", now)
