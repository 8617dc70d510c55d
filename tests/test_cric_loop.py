"""The loop with CRIC as topology and queue-status store, while CRIC misbehaves.

A CRIC that answers 500, times out, sends garbage or an empty object must not retire queues, change
statuses or lead to an exclusion: the robot keeps stepping, records that CRIC was unreachable, and
takes the decision again once CRIC answers.
"""
from __future__ import annotations

import json
from datetime import timedelta

import pytest
import requests
import responses
from sqlalchemy import func, select

from blacklist.engine import ExclusionEngine
from blacklist.policies import Policy
from blacklist.settings import BlacklistSettings
from robot.backends.cric import CRICClient
from robot.jobstates import QueueStatus
from robot.storage.models import Event, Queue, QueueTransition
from tests.fakes import ScriptedGrid, make_robot, templates
from tests.test_cric import DDM, DDMENDPOINTS, PQ, SET, SITE, SITES, pandaqueues

QUEUES = {"ANALY_BNL_VP": ("BNL-ATLAS", "US"), "BNL_UNIFIED": ("BNL-ATLAS", "US"), "ANALY_FZK": ("FZK-LCG2", "DE"),
          "ANALY_FZK_ODD": ("FZK-LCG2", "DE")}


class CRICBacked(ScriptedGrid):
    """Jobs on the scripted grid; queue statuses in CRIC, as the PanDA backend has them."""

    def __init__(self, clock, cric: CRICClient):
        super().__init__(clock, QUEUES)
        self.cric = cric

    def queue_status(self):
        return self.cric.queue_status()

    def set_queue_status(self, queue, status, reason, actor):
        return self.cric.set_queue_status(queue, status, reason, actor)


class FakeCRIC:
    """CRIC's answers, switched between good and a misbehaviour; statuses change only by a write."""

    def __init__(self, rsps: responses.RequestsMock):
        self.mode = "good"
        self.statuses: dict[str, str] = {}
        self.writes: list[dict] = []
        for url, body in ((PQ, self._queues), (DDM, lambda: DDMENDPOINTS), (SITE, lambda: SITES)):
            rsps.add_callback(responses.GET, url, callback=self._answer(body))
        rsps.add_callback(responses.POST, SET, callback=self._write)

    def _queues(self) -> dict:
        return pandaqueues(**self.statuses)

    def _answer(self, body):
        def reply(request):
            if self.mode == "500":
                return 500, {}, "Internal Server Error"
            if self.mode == "timeout":
                raise requests.ReadTimeout("read timed out")
            if self.mode == "malformed":
                return 200, {}, "<html>maintenance</html>"
            if self.mode == "empty":
                return 200, {}, "{}"
            return 200, {"Content-Type": "application/json"}, json.dumps(body())
        return reply

    def _write(self, request):
        if self.mode != "good":
            return 500, {}, "Internal Server Error"
        params = dict(p.split("=", 1) for p in request.url.split("?", 1)[1].split("&") if "=" in p)
        self.writes.append(params)
        self.statuses[params["panda_resource"]] = params["value"].lower()
        return 200, {}, json.dumps({"status": "ok"})


@pytest.fixture
def cric():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        yield FakeCRIC(rsps)


def make(tmp_path, clock, mode="enforce"):
    client = CRICClient("https://cric.example.org", token="t0ken", retries=1, sleep=lambda s: None, probe="qhr")
    grid = CRICBacked(clock, client)
    robot = make_robot(tmp_path, grid, templates({"name": "AFT_A"}))
    robot.topology = client
    settings = BlacklistSettings.model_validate({"mode": mode, "default": {"stall_after": "30d"}})
    robot.evaluators.append(ExclusionEngine(Policy(settings, ("AFT_A",)), grid))
    return robot, grid


def count(robot, *what):
    with robot.sessions() as session:
        return session.scalar(select(func.count()).select_from(what[0]).where(*what[1:]))


@pytest.mark.parametrize("mode", ["500", "timeout", "malformed", "empty"])
def test_a_misbehaving_cric_changes_nothing_and_is_recorded(tmp_path, clock, cric, mode):
    robot, grid = make(tmp_path, clock)
    robot.run_once(clock.now())
    active = count(robot, Queue, Queue.retired_at.is_(None))
    assert active == 4 and len(grid.jobs) == 4  # ANALY_BNL_VP, BNL_UNIFIED, ANALY_FZK, ANALY_FZK_ODD
    seen = count(robot, QueueTransition)  # the statuses first read from CRIC (test, brokeroff)

    cric.mode = mode
    for _ in range(3):
        clock.advance(timedelta(minutes=31))  # past topology.refresh (30m): CRIC is read again each step
        summary = robot.run_once(clock.now())
        assert any("queue status" in e for e in summary.backend_errors)

    assert count(robot, Queue, Queue.retired_at.is_(None)) == active  # nothing retired
    assert count(robot, QueueTransition) == seen  # no status change read, no decision
    assert count(robot, Event, Event.kind == "topology_unreachable") == 3
    assert grid.calls["status"] == 3  # jobs kept being followed meanwhile


def test_an_exclusion_waits_for_cric_to_answer_then_is_read_back(tmp_path, clock, cric):
    robot, grid = make(tmp_path, clock)
    robot.run_once(clock.now())
    cric.mode = "500"
    for _ in range(4):  # ANALY_BNL_VP fails every job with a stage-in error while CRIC is down
        for pid in grid.in_queue("ANALY_BNL_VP"):
            grid.finish(pid, pilot_error_code=1099, pilot_error_diag="Get error: copy failed")
        clock.advance(timedelta(minutes=10))
        robot.run_once(clock.now())
    assert count(robot, Event, Event.kind == "actuation_failed", Event.subject == "ANALY_BNL_VP") >= 1
    assert count(robot, QueueTransition, QueueTransition.kind == "status", QueueTransition.actor != "backend") == 0
    assert cric.writes == []

    cric.mode = "good"
    clock.advance(timedelta(minutes=10))
    robot.run_once(clock.now())
    assert [(w["panda_resource"], w["probe"]) for w in cric.writes] == [("ANALY_BNL_VP", "qhr")]
    with robot.sessions() as session:
        row = session.scalars(select(QueueTransition).where(QueueTransition.kind == "status",
                                                           QueueTransition.actor != "backend")).one()
        assert (row.queue.name, row.applied, row.read_back) == ("ANALY_BNL_VP", True, cric.writes[0]["value"].lower())
        assert row.evidence  # the failed jobs behind the decision
    assert grid.cric.queue_status()["ANALY_BNL_VP"] is not QueueStatus.ONLINE
