"""/health and /metrics: real HTTP on loopback, fed by the real loop's heartbeat on a scripted grid."""
from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from datetime import timedelta

import flask
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import update
from werkzeug.serving import make_server

from dashboard import ops
from robot.clock import ManualClock
from robot.jobstates import QueueStatus
from robot.storage.database import make_engine, make_sessionmaker
from robot.storage.models import Queue
from tests.fakes import T0, ScriptedGrid, make_robot, templates

QUEUES = {"ANALY_A": ("SITE-A", "XX"), "ANALY_B": ("SITE-B", "XX"), "ANALY_C": ("SITE-C", "YY")}


@pytest.fixture
def setup(tmp_path):
    clock = ManualClock(T0)
    grid = ScriptedGrid(clock, QUEUES)
    robot = make_robot(tmp_path, grid, templates({"name": "hc_test", "max_running_jobs": 2}), interval="60s")
    server = flask.Flask("ops-test")
    ops.install(server, robot.config, robot.sessions, clock, show_details=lambda: True)  # as an operator sees it
    http = make_server("127.0.0.1", 0, server, threaded=True)
    thread = threading.Thread(target=http.serve_forever, daemon=True)
    thread.start()
    yield clock, grid, robot, f"http://127.0.0.1:{http.port}"
    http.shutdown()
    http.server_close()


def get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.headers.get("Content-Type", ""), response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get("Content-Type", ""), error.read().decode()


def metrics(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, content_type, text = get(url + "/metrics")
    assert status == 200 and content_type.startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_health_before_the_first_step_is_503_and_says_why(setup):
    _clock, _grid, _robot, url = setup
    status, content_type, body = get(url + "/health")
    report = json.loads(body)
    assert status == 503 and content_type == "application/json"
    assert report["database"]["ok"] is True and report["database"]["revision"] == report["database"]["expected"]
    assert report["scheduler"]["ok"] is False and "not taken a step" in report["scheduler"]["error"]
    assert report["backend"]["ok"] is False and report["ok"] is False


def test_health_follows_the_loop_heartbeat_and_the_backend(setup):
    clock, grid, robot, url = setup
    robot.run_once(clock.now())
    status, _, body = get(url + "/health")
    report = json.loads(body)
    assert status == 200, report
    assert report["scheduler"]["last_step"] == T0.isoformat() and report["backend"]["ok"] is True

    clock.advance(timedelta(minutes=2))  # two intervals late: still healthy
    assert get(url + "/health")[0] == 200
    clock.advance(timedelta(minutes=2))  # four intervals since the last step: the scheduler is stuck
    status, _, body = get(url + "/health")
    assert status == 503 and "no step for 240 s" in json.loads(body)["scheduler"]["error"]

    grid.unreachable = True  # the next step runs but cannot reach the backend
    robot.run_once(clock.now())
    status, _, body = get(url + "/health")
    report = json.loads(body)
    assert status == 503 and report["scheduler"]["ok"] is True
    assert report["backend"]["ok"] is False and report["backend"]["error"] == "the last step did not reach the backend"
    assert "connection refused" in report["backend"]["detail"]

    grid.unreachable = False
    clock.advance(timedelta(minutes=1))
    robot.run_once(clock.now())
    assert get(url + "/health")[0] == 200


def test_health_judges_lateness_by_the_stepping_robot_s_own_interval(tmp_path):
    """A robot started with another interval than this dashboard's configuration (the demo's, or another
    robot.yaml) is late after 3 of its own intervals, not of the dashboard's."""
    clock = ManualClock(T0)
    grid = ScriptedGrid(clock, QUEUES)
    robot = make_robot(tmp_path, grid, templates({"name": "hc_test"}), interval="10m")
    dashboard_config = robot.config.model_copy(
        update={"loop": robot.config.loop.model_copy(update={"interval": timedelta(seconds=60)})})
    robot.run_once(clock.now())
    clock.advance(timedelta(minutes=20))  # 20 dashboard intervals, 2 of the robot's
    report, ok = ops.health(dashboard_config, robot.sessions, clock.now())
    assert ok, report
    assert report["scheduler"]["interval_seconds"] == 600
    clock.advance(timedelta(minutes=11))  # 31 min: more than 3 of the robot's intervals
    report, ok = ops.health(dashboard_config, robot.sessions, clock.now())
    assert not ok and "no step for 1860 s" in report["scheduler"]["error"]


def test_health_is_503_on_an_outdated_schema(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'empty.db'}")  # never migrated
    clock = ManualClock(T0)
    grid = ScriptedGrid(clock, QUEUES)
    robot = make_robot(tmp_path / "robot", grid, templates({"name": "hc_test"}))
    server = flask.Flask("ops-test")
    ops.install(server, robot.config, make_sessionmaker(engine), clock)
    response = server.test_client().get("/health")
    assert response.status_code == 503
    assert response.json["database"]["ok"] is False and "db upgrade" in response.json["database"]["error"]


def test_metrics_are_computed_from_the_database_at_scrape_time(setup):
    clock, grid, robot, url = setup
    found = metrics(url)
    assert found[("healthrobot_database_up", ())] == 1
    assert found[("healthrobot_queues", (("status", "online"),))] == 0  # nothing synced yet
    assert found[("healthrobot_last_step_age_seconds", ())] != found[("healthrobot_last_step_age_seconds", ())]  # NaN

    robot.run_once(clock.now())
    for pid in grid.in_queue("ANALY_A")[:2]:
        grid.start(pid)
        grid.finish(pid, pilot_error_code=1099, pilot_error_diag="stage-in failed")
    for pid in grid.in_queue("ANALY_B")[:1]:
        grid.start(pid)
    grid.statuses["ANALY_C"] = QueueStatus.BROKEROFF  # read by the next step
    clock.advance(timedelta(seconds=30))
    robot.run_once(clock.now())
    with robot.sessions() as session:  # the exclusion engine's view (it is not part of this robot)
        session.execute(update(Queue).where(Queue.name == "ANALY_C").values(robot_state="excluded"))
        session.commit()
    found = metrics(url)
    assert found[("healthrobot_queues", (("status", "online"),))] == 2
    assert found[("healthrobot_queues", (("status", "brokeroff"),))] == 1
    assert found[("healthrobot_queues_robot_state", (("state", "excluded"),))] == 1
    assert found[("healthrobot_jobs_ended_last_hour", (("error_class", "site"), ("outcome", "failed")))] == 2
    assert found[("healthrobot_jobs_in_flight", (("job_status", "running"),))] == 1
    assert found[("healthrobot_last_step_age_seconds", ())] == 0
    assert found[("healthrobot_backend_up", ())] == 1
    clock.advance(timedelta(seconds=42))  # nothing cached: the next scrape reads again
    assert metrics(url)[("healthrobot_last_step_age_seconds", ())] == 42
