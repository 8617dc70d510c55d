"""The robot's tables. Names follow PanDA's vocabulary so real and embedded results are one kind of row.

Times are stored as naive UTC (portable across SQLite and PostgreSQL) and read back timezone-aware.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (JSON, BigInteger, Boolean, Column, DateTime, Float, ForeignKey, Index, String,
                        Table, Text, TypeDecorator, UniqueConstraint)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from robot.clock import as_utc


class UTCDateTime(TypeDecorator[datetime]):
    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is timezone.utc:  # the usual case, without a conversion (bulk inserts bind millions)
            return value.replace(tzinfo=None)
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database: use UTC-aware datetimes")
        return as_utc(value).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:  # the usual case (SQLite, timestamp without time zone), without a call
            return value.replace(tzinfo=timezone.utc)
        return as_utc(value)

    # On SQLite, one function each way instead of this type's step and then DateTime's (the loop binds and
    # reads thousands of times at every step): the same text as SQLAlchemy's SQLite DATETIME stores and reads,
    # 'YYYY-MM-DD HH:MM:SS.ffffff'.
    def bind_processor(self, dialect: Any) -> Any:
        if dialect.name != "sqlite":
            return super().bind_processor(dialect)
        to_naive, utc = self.process_bind_param, timezone.utc

        def process(value: datetime | None) -> str | None:
            if value is None:
                return None
            if value.tzinfo is utc:  # the usual case, without process_bind_param's call
                return value.replace(tzinfo=None).isoformat(" ", "microseconds")
            return to_naive(value, dialect).isoformat(" ", "microseconds")

        return process

    def result_processor(self, dialect: Any, coltype: Any) -> Any:
        if dialect.name != "sqlite":
            return super().result_processor(dialect, coltype)
        parse, utc = datetime.fromisoformat, timezone.utc

        def process(value: str | None) -> datetime | None:
            if value is None:
                return None
            if len(value) == 26:  # as written, with its microseconds: read as UTC in one call (a fifth of the cost)
                return parse(value + "+00:00")
            return parse(value).replace(tzinfo=utc)

        return process


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON, list[Any]: JSON}


# -- topology ------------------------------------------------------------------------------------
class Cloud(Base):
    __tablename__ = "cloud"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)


class Site(Base):
    __tablename__ = "site"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    cloud_id: Mapped[int] = mapped_column(ForeignKey("cloud.id"))
    contacts: Mapped[list[Any]] = mapped_column(default=list)
    cloud: Mapped[Cloud] = relationship()


class StorageEndpoint(Base):
    __tablename__ = "storage_endpoint"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    site_id: Mapped[int] = mapped_column(ForeignKey("site.id"))


queue_endpoint = Table(
    "queue_endpoint",
    Base.metadata,
    Column("queue_id", ForeignKey("queue.id"), primary_key=True),
    Column("endpoint_id", ForeignKey("storage_endpoint.id"), primary_key=True),
)


class Queue(Base):
    __tablename__ = "queue"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    site_id: Mapped[int] = mapped_column(ForeignKey("site.id"))
    exempt: Mapped[bool] = mapped_column(default=False)
    status: Mapped[str] = mapped_column(String(16), default="online")  # last status read from the backend
    status_read_at: Mapped[datetime | None]
    retired_at: Mapped[datetime | None]  # gone from the topology: kept for history, never tested
    # the robot's own view, kept by the exclusion engine: online, pending (in doubt) or excluded
    robot_state: Mapped[str] = mapped_column(String(16), default="online", server_default="online")
    robot_state_since: Mapped[datetime | None]
    # the testing cadence the exclusion policy asks for: extra jobs in flight, gap between jobs
    extra_jobs: Mapped[int] = mapped_column(default=0, server_default="0")
    job_gap_seconds: Mapped[int] = mapped_column(default=0, server_default="0")
    site: Mapped[Site] = relationship()
    endpoints: Mapped[list[StorageEndpoint]] = relationship(secondary=queue_endpoint)


# -- tests -------------------------------------------------------------------------------------
class Template(Base):
    """A test template as configured; kept in sync with the YAML so old tests keep their meaning."""

    __tablename__ = "template"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    category: Mapped[str] = mapped_column(String(16))  # functional | stress
    active: Mapped[bool]
    payload: Mapped[str] = mapped_column(String(64))
    input_dataset: Mapped[str] = mapped_column(String(512))
    events_per_job: Mapped[int]
    processing_type: Mapped[str] = mapped_column(String(64))
    settings: Mapped[dict[str, Any]] = mapped_column(default=dict)  # the full template as configured


class Test(Base):
    """One HammerCloud-style test: a template run over some queues between a start and an end."""

    __tablename__ = "test"
    id: Mapped[int] = mapped_column(primary_key=True)
    template_id: Mapped[int] = mapped_column(ForeignKey("template.id"))
    category: Mapped[str] = mapped_column(String(16))
    # draft, unapproved, tobescheduled, scheduled, submitting, running, completed, error, cancelled
    state: Mapped[str] = mapped_column(String(16), index=True)
    start_time: Mapped[datetime]
    end_time: Mapped[datetime]
    created_at: Mapped[datetime]
    requested_by: Mapped[str] = mapped_column(String(128), default="robot")
    # stress tests: what was asked, who approved it, how it ended, and its report
    max_jobs: Mapped[int | None]
    concurrency: Mapped[int | None]
    allow_excluded: Mapped[bool] = mapped_column(default=False, server_default="0")
    approved_by: Mapped[str | None] = mapped_column(String(128))
    approved_at: Mapped[datetime | None]
    comment: Mapped[str] = mapped_column(Text, default="", server_default="")
    outcome: Mapped[str | None] = mapped_column(Text)  # why it ended: done, duration over, safety stop, ...
    report: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    template: Mapped[Template] = relationship()


class TestQueue(Base):
    """HammerCloud's per-queue row of a test: how many jobs to keep in flight there."""

    __tablename__ = "test_queue"
    __table_args__ = (UniqueConstraint("test_id", "queue_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    test_id: Mapped[int] = mapped_column(ForeignKey("test.id"), index=True)
    queue_id: Mapped[int] = mapped_column(ForeignKey("queue.id"))
    max_running_jobs: Mapped[int]
    min_queue_depth: Mapped[int]
    resubmit_enabled: Mapped[bool]
    max_jobs: Mapped[int | None]  # a stress test's total (first attempts; retries come on top)
    retries: Mapped[int] = mapped_column(default=0, server_default="0")
    stopped_at: Mapped[datetime | None]  # the stress safety rule stopped sending here
    stop_reason: Mapped[str | None] = mapped_column(Text)


class Job(Base):
    """A test job: recorded before it is sent, then PanDA's view of it, then the robot's verdict.

    `phase` is the robot's bookkeeping: recorded (written, not yet confirmed by the backend),
    active (has a PanDA ID, in flight), done (final, result stored), lost (never confirmed sent).
    """

    __tablename__ = "job"
    __table_args__ = (
        Index("job_phase", "phase"),
        Index("job_queue_end", "queue_id", "end_time"),
        Index("job_end", "end_time"),
        Index("job_status_changed", "status_changed_at"),
        Index("job_test_outcome", "test_id", "outcome"),  # a stress test's counts without a scan
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    test_id: Mapped[int] = mapped_column(ForeignKey("test.id"))
    queue_id: Mapped[int] = mapped_column(ForeignKey("queue.id"))
    job_name: Mapped[str] = mapped_column(String(200), unique=True)
    panda_id: Mapped[int | None] = mapped_column(BigInteger, index=True)
    phase: Mapped[str] = mapped_column(String(16))
    worker_id: Mapped[int | None]  # the robot process (worker.id) that recorded it; None: before migration 0008
    retry_of: Mapped[int | None] = mapped_column(ForeignKey("job.id"))  # the failed job this one retries
    job_status: Mapped[str | None] = mapped_column(String(16))  # PanDA's jobStatus
    dataset: Mapped[str] = mapped_column(String(512))
    n_files: Mapped[int]
    recorded_at: Mapped[datetime]
    submitted_at: Mapped[datetime | None]
    status_changed_at: Mapped[datetime | None]  # when the robot last saw job_status change
    # PanDA's times and results
    creation_time: Mapped[datetime | None]
    start_time: Mapped[datetime | None]
    end_time: Mapped[datetime | None]
    trans_exit_code: Mapped[int | None]
    pilot_error_code: Mapped[int] = mapped_column(default=0)
    pilot_error_diag: Mapped[str] = mapped_column(Text, default="")
    exe_error_code: Mapped[int] = mapped_column(default=0)
    exe_error_diag: Mapped[str] = mapped_column(Text, default="")
    ddm_error_code: Mapped[int] = mapped_column(default=0)
    ddm_error_diag: Mapped[str] = mapped_column(Text, default="")
    task_buffer_error_code: Mapped[int] = mapped_column(default=0)
    task_buffer_error_diag: Mapped[str] = mapped_column(Text, default="")
    job_dispatcher_error_code: Mapped[int] = mapped_column(default=0)
    job_dispatcher_error_diag: Mapped[str] = mapped_column(Text, default="")
    sup_error_code: Mapped[int] = mapped_column(default=0)
    n_events: Mapped[int] = mapped_column(default=0)
    cpu_consumption_time: Mapped[float] = mapped_column(Float, default=0.0)
    max_rss_kb: Mapped[int] = mapped_column(BigInteger, default=0)
    core_count: Mapped[int] = mapped_column(default=1)
    attempt_nr: Mapped[int] = mapped_column(default=0)
    # time split in seconds: queue wait (creation -> start), then the pilot's steps
    time_queue: Mapped[float | None]
    time_stagein: Mapped[float | None]
    time_setup: Mapped[float | None]
    time_payload: Mapped[float | None]
    time_stageout: Mapped[float | None]
    # the robot's verdict once final
    outcome: Mapped[str | None] = mapped_column(String(16))  # completed, failed, cancelled, unknown
    error_source: Mapped[str | None] = mapped_column(String(16))  # pilot, exe, ddm, taskbuffer, ...
    error_code: Mapped[int | None]
    error_name: Mapped[str | None] = mapped_column(String(64))
    error_class: Mapped[str | None] = mapped_column(String(16))  # site, user, central, unknown
    error_diag: Mapped[str | None] = mapped_column(Text)


# -- queue status and decisions -------------------------------------------------------------------
class QueueTransition(Base):
    """One change of a queue's state, with its reason and evidence: what mails, pages and tickets read.

    kind "status": the PanDA status (online, brokeroff, test, offline), set by the robot or a person,
    or observed at the backend; kind "state": the robot's own view (online, pending, excluded).
    `applied` is false for a decision taken in dry-run mode.
    """

    __tablename__ = "queue_transition"
    __table_args__ = (Index("queue_transition_queue_time", "queue_id", "time"),
                      Index("queue_transition_unnotified", "notified_at"))
    id: Mapped[int] = mapped_column(primary_key=True)
    queue_id: Mapped[int] = mapped_column(ForeignKey("queue.id"))
    time: Mapped[datetime]
    kind: Mapped[str] = mapped_column(String(16), default="status", server_default="status")
    old: Mapped[str] = mapped_column(String(16))
    new: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text)
    evidence: Mapped[dict[str, Any]] = mapped_column(default=dict)
    actor: Mapped[str] = mapped_column(String(128))
    policy: Mapped[str | None] = mapped_column(String(32))
    applied: Mapped[bool] = mapped_column(Boolean, default=True)
    read_back: Mapped[str | None] = mapped_column(String(16))  # the status read after applying it
    notified_at: Mapped[datetime | None]
    queue: Mapped[Queue] = relationship()


class Override(Base):
    """A person's exclusion or inclusion of a queue: it always wins over the robot until it ends."""

    __tablename__ = "override"
    id: Mapped[int] = mapped_column(primary_key=True)
    queue_id: Mapped[int] = mapped_column(ForeignKey("queue.id"), index=True)
    action: Mapped[str] = mapped_column(String(16))  # exclude | include
    status: Mapped[str] = mapped_column(String(16))  # the PanDA status it set
    actor: Mapped[str] = mapped_column(String(128))
    reason: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime]
    until: Mapped[datetime | None]  # none: until cleared
    cleared_at: Mapped[datetime | None]
    applied_at: Mapped[datetime | None]  # when the engine set the status it asks for
    ended_at: Mapped[datetime | None]  # when the engine acted on its end (an exclusion ending: back online)
    queue: Mapped[Queue] = relationship()


class Silence(Base):
    """No automatic action (and no mail) for a queue, a site or a cloud, with who, why and until."""

    __tablename__ = "silence"
    id: Mapped[int] = mapped_column(primary_key=True)
    scope: Mapped[str] = mapped_column(String(16))  # queue | site | cloud
    name: Mapped[str] = mapped_column(String(128))
    actor: Mapped[str] = mapped_column(String(128))
    reason: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime]
    until: Mapped[datetime]
    cleared_at: Mapped[datetime | None]


class Setting(Base):
    """Runtime switches that operators flip without a restart (e.g. the exclusion mode)."""

    __tablename__ = "setting"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(256))
    actor: Mapped[str] = mapped_column(String(128))
    changed_at: Mapped[datetime]


class Event(Base):
    """The robot's own log of things operators should see: an unreachable backend, missing data, ..."""

    __tablename__ = "event"
    __table_args__ = (Index("event_time", "time"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    time: Mapped[datetime]
    kind: Mapped[str] = mapped_column(String(64))
    subject: Mapped[str] = mapped_column(String(200), default="")
    message: Mapped[str] = mapped_column(Text)
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)


class Downtime(Base):
    """An outage a site announced (GOCDB, the embedded grid): no automatic exclusion, no blame inside it."""

    __tablename__ = "downtime"
    __table_args__ = (UniqueConstraint("source", "key"), Index("downtime_end", "end"))
    id: Mapped[int] = mapped_column(primary_key=True)
    source: Mapped[str] = mapped_column(String(32))  # gocdb | embedded
    key: Mapped[str] = mapped_column(String(256))  # the source's identifier @ site
    site: Mapped[str] = mapped_column(String(128))
    start: Mapped[datetime]
    end: Mapped[datetime]
    classification: Mapped[str] = mapped_column(String(16))  # scheduled | unscheduled
    severity: Mapped[str] = mapped_column(String(16))  # outage
    description: Mapped[str] = mapped_column(Text, default="")
    seen_at: Mapped[datetime]


class UserJobHour(Base):
    """Users' own analysis jobs at one queue in one hour, as PanDA counted them: aggregate counts only.

    No user name, task or job ID is kept. `hour` is the hour's start (UTC); jobs count in the hour
    they ended. `codes` holds one entry per error that failed jobs reported first (the one
    robot.classify lets speak): {"source", "code", "name", "class", "jobs"}. The current hour is
    read again until it is over, so its row grows; every read replaces the rows it covers.
    """

    __tablename__ = "user_job_hour"
    __table_args__ = (Index("user_job_hour_hour", "hour"),)
    queue: Mapped[str] = mapped_column(String(128), primary_key=True)  # PanDA's computingsite
    hour: Mapped[datetime] = mapped_column(primary_key=True)
    source: Mapped[str] = mapped_column(String(32))  # the backend that counted them: panda, embedded, simulated
    ended: Mapped[int] = mapped_column(default=0)  # finished + failed
    failed: Mapped[int] = mapped_column(default=0)
    failed_site: Mapped[int] = mapped_column(default=0)  # failures per error class (robot.classify)
    failed_user: Mapped[int] = mapped_column(default=0)
    failed_central: Mapped[int] = mapped_column(default=0)
    failed_unknown: Mapped[int] = mapped_column(default=0)
    codes: Mapped[list[Any]] = mapped_column(default=list)
    read_at: Mapped[datetime]


# -- tickets ----------------------------------------------------------------------------------
class Ticket(Base):
    """A user support thread (mail) or a GGUS ticket, with the robot's verdict on it."""

    __tablename__ = "ticket"
    __table_args__ = (UniqueConstraint("source", "key"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    source: Mapped[str] = mapped_column(String(64))  # mail | ggus
    key: Mapped[str] = mapped_column(String(512))  # thread key: Gmail thread, GGUS number or root Message-ID
    subject: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16))  # open | waiting | closed
    labels: Mapped[list[Any]] = mapped_column(default=list)
    requester: Mapped[str] = mapped_column(String(256), default="")
    first_message_at: Mapped[datetime]
    last_message_at: Mapped[datetime]
    messages: Mapped[int] = mapped_column(default=0)
    verdict: Mapped[str | None] = mapped_column(String(16))  # site | central | not_site | unknown
    verdict_reason: Mapped[str | None] = mapped_column(Text)
    verdict_evidence: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    judged_at: Mapped[datetime | None]


class TicketMessage(Base):
    __tablename__ = "ticket_message"
    id: Mapped[int] = mapped_column(primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("ticket.id"), index=True)
    message_id: Mapped[str] = mapped_column(String(512), unique=True)
    date: Mapped[datetime]
    sender: Mapped[str] = mapped_column(String(256), default="")
    subject: Mapped[str] = mapped_column(Text, default="")
    body: Mapped[str] = mapped_column(Text, default="")


class TicketMention(Base):
    """Something a ticket names: a queue, site, storage endpoint, cloud, PanDA job, task or error."""

    __tablename__ = "ticket_mention"
    __table_args__ = (Index("ticket_mention_queue", "queue"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("ticket.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    value: Mapped[str] = mapped_column(String(256))
    queue: Mapped[str | None] = mapped_column(String(128))
    site: Mapped[str | None] = mapped_column(String(128))
    cloud: Mapped[str | None] = mapped_column(String(64))
    complaint: Mapped[bool] = mapped_column(default=True)
    code: Mapped[int | None]
    snippet: Mapped[str] = mapped_column(Text, default="")


class Episode(Base):
    """A period when a queue was degraded: from the robot's exclusions or from its failure rates."""

    __tablename__ = "episode"
    __table_args__ = (Index("episode_queue_start", "queue_id", "start"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    queue_id: Mapped[int] = mapped_column(ForeignKey("queue.id"))
    start: Mapped[datetime]
    end: Mapped[datetime | None]  # none: still going on
    source: Mapped[str] = mapped_column(String(16))  # exclusion | metrics
    reason: Mapped[str] = mapped_column(Text)
    error_classes: Mapped[dict[str, Any]] = mapped_column(default=dict)
    evidence: Mapped[dict[str, Any]] = mapped_column(default=dict)
    queue: Mapped[Queue] = relationship()


class TicketLink(Base):
    """A ticket linked to an episode, with how sure the robot is and why."""

    __tablename__ = "ticket_link"
    __table_args__ = (UniqueConstraint("ticket_id", "episode_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("ticket.id"), index=True)
    episode_id: Mapped[int] = mapped_column(ForeignKey("episode.id"), index=True)
    score: Mapped[float] = mapped_column(Float)
    reason: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime]


# -- dashboards -------------------------------------------------------------------------------
class RollupSums:
    """The sums of a rollup row (robot.rollup.Counts): `jobs` counts the completed and failed jobs, as
    the metrics do; throughput sums are over completed jobs."""

    jobs: Mapped[int] = mapped_column(default=0)  # completed + failed
    failed: Mapped[int] = mapped_column(default=0)
    completed: Mapped[int] = mapped_column(default=0)
    cancelled: Mapped[int] = mapped_column(default=0)
    unknown: Mapped[int] = mapped_column(default=0)
    failed_site: Mapped[int] = mapped_column(default=0)  # failures per error class
    failed_user: Mapped[int] = mapped_column(default=0)
    failed_central: Mapped[int] = mapped_column(default=0)
    failed_unknown: Mapped[int] = mapped_column(default=0)
    events: Mapped[int] = mapped_column(BigInteger, default=0)  # completed jobs with a wall time
    wall_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    cpu_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    payload_events: Mapped[int] = mapped_column(BigInteger, default=0)  # completed jobs with a payload time
    payload_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    last_end: Mapped[datetime | None]


class JobRollup(RollupSums, Base):
    """Final job results summed per queue, template and period, so long windows read a few rows.

    A period is an hour, 6 hours, a day or a week (`span` seconds) starting at `start` (Unix seconds,
    a multiple of `span`: integers keep the pages' arithmetic portable). Hours are recomputed from
    the job table for every hour in which jobs became final (robot.rollup), longer periods from the
    next shorter ones, so a job seen final twice is still counted once.
    """

    __tablename__ = "job_rollup"
    __table_args__ = (Index("job_rollup_queue", "queue_id", "span", "start"), {"sqlite_with_rowid": False})
    span: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    start: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    queue_id: Mapped[int] = mapped_column(ForeignKey("queue.id", name="fk_job_rollup_queue_id"), primary_key=True,
                                          autoincrement=False)
    template_id: Mapped[int] = mapped_column(ForeignKey("template.id", name="fk_job_rollup_template_id"),
                                             primary_key=True, autoincrement=False)


class QueueRollup(RollupSums, Base):
    """The job rollup's rows summed over the templates: per queue and period. Pages over every queue and
    template (the overview, its heatmap) read these, a third of the rows at three templates a queue.
    Recomputed from `job_rollup` wherever that changes (robot.rollup), so it always equals its sum."""

    __tablename__ = "queue_rollup"
    __table_args__ = {"sqlite_with_rowid": False}  # read by period for every queue: no index by queue to keep up
    span: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    start: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    queue_id: Mapped[int] = mapped_column(ForeignKey("queue.id", name="fk_queue_rollup_queue_id"), primary_key=True,
                                          autoincrement=False)


class User(Base):
    """Someone who may sign in to the dashboard; roles come from the configuration, not from here."""

    __tablename__ = "user"
    __table_args__ = (UniqueConstraint("name", name="uq_user_name"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    password_hash: Mapped[str] = mapped_column(String(256))  # scrypt$n$r$p$salt$hash (robot.users)
    created_at: Mapped[datetime]
    disabled: Mapped[bool] = mapped_column(default=False, server_default="0")
    # Random, replaced whenever the password changes or the user is disabled or enabled. A dashboard
    # session carries the stamp it was signed in with and ends when it no longer matches (robot.users).
    session_stamp: Mapped[str] = mapped_column(String(64))


class LoginFailure(Base):
    """A failed dashboard sign-in: recent ones throttle further attempts per user and per address."""

    __tablename__ = "login_failure"
    __table_args__ = (Index("login_failure_name", "name", "time"), Index("login_failure_address", "address", "time"))
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128))  # as typed (the user may not exist)
    address: Mapped[str] = mapped_column(String(64))  # the client's address as the server saw it
    time: Mapped[datetime]


class Worker(Base):
    """One robot process: its heartbeat. Live ones (a beat within two loop intervals) share the queues."""

    __tablename__ = "worker"
    id: Mapped[int] = mapped_column(primary_key=True)
    hostname: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int]
    started_at: Mapped[datetime]
    last_beat_at: Mapped[datetime]
    stopped_at: Mapped[datetime | None]  # a clean stop: the others take its queues at once


class Lease(Base):
    """A named lease one worker holds until `expires_at` (the leader's: decisions that need the whole grid)."""

    __tablename__ = "lease"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[int | None]  # worker.id
    expires_at: Mapped[datetime | None]
