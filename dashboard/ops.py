"""Operations endpoints on the dashboard's server: `/health` (JSON) and `/metrics` (Prometheus text).

`/health` answers 200 when the database is reachable with the schema this code expects, the robot's
loop took a step recently (its heartbeat, `loop.last_step_at`, within 3 of the intervals that
stepping robot wrote beside it, `loop.interval_seconds`), and that
step reached the backend; 503 otherwise, with what is wrong in fixed words (`error`). The text of
the exception or of the backend's answer behind it (`detail`) is shown only to signed-in operators
(`show_details`); everyone else gets the same report without it, and the server log has it.
`/metrics` is computed from the database at each scrape by a custom collector (no process-global
counters), so any number of dashboard processes report the same numbers.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

import flask
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from robot.clock import Clock, as_utc
from robot.config import RobotConfig
from robot.loop import BACKEND_SETTING, INTERVAL_SETTING, LAST_STEP_SETTING, stepping_interval
from robot.storage.database import current_revision, head_revision
from robot.storage.models import Event, Job, Queue, QueueTransition, Setting, Test, Ticket

log = logging.getLogger(__name__)

STALE_AFTER_INTERVALS = 3  # the loop is late when its last step is older than this many intervals


def engine_of(sessions: sessionmaker[Session]) -> Engine:
    return sessions.kw["bind"]


def _setting(session: Session, name: str) -> Setting | None:
    return session.get(Setting, name)


def health(config: RobotConfig, sessions: sessionmaker[Session], now: datetime) -> tuple[dict[str, Any], bool]:
    """The three checks and whether all passed."""
    report: dict[str, Any] = {"time": now.isoformat()}
    try:
        current, head = current_revision(engine_of(sessions)), head_revision()
    except Exception as exc:  # any driver error: the database is not reachable
        log.warning("health: database not reachable: %s: %s", type(exc).__name__, exc)
        report["database"] = {"ok": False, "error": "database not reachable",
                              "detail": f"{type(exc).__name__}: {exc}"[:300]}
        report["scheduler"] = {"ok": False, "error": "database not reachable"}
        report["backend"] = {"ok": False, "error": "database not reachable"}
        report["ok"] = False
        return report, False
    report["database"] = {"ok": current == head, "revision": current, "expected": head}
    if current != head:
        report["database"]["error"] = f"schema at {current or 'none'}, {head} expected: run `healthrobot db upgrade`"
    step = backend = stepping = None
    try:
        with sessions() as session:
            step = _setting(session, LAST_STEP_SETTING)
            backend = _setting(session, BACKEND_SETTING)
            stepping = _setting(session, INTERVAL_SETTING)
    except Exception as exc:
        log.warning("health: cannot read the robot's settings: %s: %s", type(exc).__name__, exc)
        if report["database"]["ok"]:
            report["database"] = {"ok": False, "error": "database not readable",
                                  "detail": f"{type(exc).__name__}: {exc}"[:300]}
    interval = stepping_interval(stepping.value if stepping is not None else None, config.loop.interval)
    if step is None:
        report["scheduler"] = {"ok": False, "error": "the robot's loop has not taken a step yet",
                               "interval_seconds": interval.total_seconds()}
    else:
        last = as_utc(datetime.fromisoformat(step.value))
        age = (now - last).total_seconds()
        late = age > STALE_AFTER_INTERVALS * interval.total_seconds()
        report["scheduler"] = {"ok": not late, "last_step": last.isoformat(), "age_seconds": round(age, 1),
                               "interval_seconds": interval.total_seconds()}
        if late:
            report["scheduler"]["error"] = f"no step for {age:.0f} s ({STALE_AFTER_INTERVALS} intervals allowed)"
    if backend is None:
        report["backend"] = {"ok": False, "error": "not polled yet"}
    else:
        report["backend"] = {"ok": backend.value == "ok", "checked": as_utc(backend.changed_at).isoformat(),
                             **({} if backend.value == "ok" else {"error": "the last step did not reach the backend",
                                                                   "detail": backend.value})}
    ok = all(report[part]["ok"] for part in ("database", "scheduler", "backend"))
    report["ok"] = ok
    return report, ok


def without_details(report: dict[str, Any]) -> dict[str, Any]:
    """The report for callers who may not see exception texts: every `detail` left out."""
    return {key: ({k: v for k, v in value.items() if k != "detail"} if isinstance(value, dict) else value)
            for key, value in report.items()}


class RobotCollector(Collector):
    """Gauges read from the database at scrape time."""

    def __init__(self, config: RobotConfig, sessions: sessionmaker[Session], clock: Clock):
        self.config = config
        self.sessions = sessions
        self.clock = clock

    def describe(self) -> list[Any]:
        return []  # nothing is read at registration; everything at scrape time

    def collect(self) -> Iterator[GaugeMetricFamily]:
        now = self.clock.now()
        up = GaugeMetricFamily("healthrobot_database_up", "1 when the database answered this scrape")
        try:
            families = self._families(now)
        except Exception:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _families(self, now: datetime) -> list[GaugeMetricFamily]:
        with self.sessions() as session:
            queues = session.execute(select(Queue.status, Queue.robot_state, func.count())
                                     .where(Queue.retired_at.is_(None))
                                     .group_by(Queue.status, Queue.robot_state)).all()
            in_flight = session.execute(select(Job.job_status, func.count()).where(Job.phase == "active")
                                        .group_by(Job.job_status)).all()
            hour = now - timedelta(hours=1)
            ended = session.execute(select(Job.outcome, Job.error_class, func.count())
                                    .where(Job.phase == "done", Job.end_time >= hour)
                                    .group_by(Job.outcome, Job.error_class)).all()
            stress = session.execute(select(Test.state, func.count()).where(Test.category == "stress")
                                     .group_by(Test.state)).all()
            tickets = session.execute(select(Ticket.verdict, func.count()).where(Ticket.state != "closed")
                                      .group_by(Ticket.verdict)).all()
            transitions = session.scalar(select(func.count()).select_from(QueueTransition)
                                         .where(QueueTransition.time >= now - timedelta(days=1)))
            events = session.execute(select(Event.kind, func.count()).where(Event.time >= hour)
                                     .group_by(Event.kind)).all()
            step = _setting(session, LAST_STEP_SETTING)
            backend = _setting(session, BACKEND_SETTING)
        by_status = GaugeMetricFamily("healthrobot_queues", "Queues by PanDA status", labels=["status"])
        by_state = GaugeMetricFamily("healthrobot_queues_robot_state",
                                     "Queues by the robot's view (online, pending, excluded)", labels=["state"])
        statuses: dict[str, int] = {}
        states: dict[str, int] = {}
        for status, state, count in queues:
            statuses[status] = statuses.get(status, 0) + count
            states[state] = states.get(state, 0) + count
        for status in sorted(set(statuses) | {"online", "brokeroff", "test", "offline"}):
            by_status.add_metric([status], statuses.get(status, 0))
        for state in sorted(set(states) | {"online", "pending", "excluded"}):
            by_state.add_metric([state], states.get(state, 0))
        jobs = GaugeMetricFamily("healthrobot_jobs_in_flight", "Test jobs in flight by PanDA jobStatus",
                                 labels=["job_status"])
        for status, count in sorted(in_flight, key=lambda r: r[0] or ""):
            jobs.add_metric([status or "unknown"], count)
        finished = GaugeMetricFamily("healthrobot_jobs_ended_last_hour", "Test jobs that ended in the last hour",
                                     labels=["outcome", "error_class"])
        for outcome, klass, count in sorted(ended, key=lambda r: (r[0] or "", r[1] or "")):
            finished.add_metric([outcome or "unknown", klass or ""], count)
        tests = GaugeMetricFamily("healthrobot_stress_tests", "Stress tests by state", labels=["state"])
        for state, count in sorted(stress):
            tests.add_metric([state], count)
        open_tickets = GaugeMetricFamily("healthrobot_open_tickets", "Open support tickets by verdict",
                                         labels=["verdict"])
        for verdict, count in sorted(tickets, key=lambda r: r[0] or ""):
            open_tickets.add_metric([verdict or "none"], count)
        moves = GaugeMetricFamily("healthrobot_transitions_last_day", "Queue transitions recorded in the last day")
        moves.add_metric([], transitions or 0)
        kinds = GaugeMetricFamily("healthrobot_events_last_hour", "The robot's events in the last hour",
                                  labels=["kind"])
        for kind, count in sorted(events):
            kinds.add_metric([kind], count)
        age = GaugeMetricFamily("healthrobot_last_step_age_seconds",
                                "Seconds since the robot's loop took its last step (NaN: never)")
        age.add_metric([], (now - as_utc(datetime.fromisoformat(step.value))).total_seconds() if step else float("nan"))
        interval = GaugeMetricFamily("healthrobot_loop_interval_seconds", "The configured loop interval")
        interval.add_metric([], self.config.loop.interval.total_seconds())
        reached = GaugeMetricFamily("healthrobot_backend_up", "1 when the last step reached the backend")
        reached.add_metric([], 1 if backend is not None and backend.value == "ok" else 0)
        return [by_status, by_state, jobs, finished, tests, open_tickets, moves, kinds, age, interval, reached]


def install(server: flask.Flask, config: RobotConfig, sessions: sessionmaker[Session], clock: Clock,
            show_details: Callable[[], bool] = lambda: False) -> None:
    """`/health` and `/metrics`; `show_details()` says, within a request, whether its caller may see
    exception texts in `/health` (the dashboard: signed-in operators)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RobotCollector(config, sessions, clock))

    @server.route("/health")
    def health_endpoint() -> flask.Response:
        report, ok = health(config, sessions, clock.now())
        if not show_details():
            report = without_details(report)
        return flask.Response(flask.json.dumps(report), status=200 if ok else 503, mimetype="application/json")

    @server.route("/metrics")
    def metrics_endpoint() -> flask.Response:
        return flask.Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
