"""End to end: PandaBackend and the real panda-client against the embedded grid's PanDA service.

Real pilots run the real payload on this machine; the grid dispatches its jobs itself (local
dispatch) in a background thread, and the robot's side sees it only through PanDA's REST contract.
"""
from __future__ import annotations

import time

import pytest

from robot.backends.base import BackendUnavailable
from robot.backends.panda import PandaBackend, job_definition_id
from robot.config import PandaConfig
from robot.jobstates import FINAL_STATES, JobStatus

panda_service = pytest.importorskip("robot.backends.embedded.panda_service")

pytestmark = pytest.mark.slow


def poll_until_final(backend, ids, timeout=60.0):
    """Poll through PanDA until every job is final; fails the test (with the states) at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        reports = backend.status(ids)
        assert all(reports[pid] is not None for pid in ids), f"PanDA does not know {ids}: {reports}"
        if all(reports[pid].job_status in FINAL_STATES for pid in ids):
            return reports
        assert time.monotonic() < deadline, {pid: reports[pid].job_status.value for pid in ids}
        time.sleep(0.2)


def test_submit_poll_and_kill_through_the_embedded_panda_service(tiny_grid):
    grid = tiny_grid.grid({"ANALY_GOOD": {}, "ANALY_STUCK": {}},
                          faults=[{"queue": "ANALY_STUCK", "mode": "stuck", "start_after": "0s", "duration": "1h"}])
    grid.start(period=0.1)
    with panda_service.serve(grid) as service:
        backend = PandaBackend(PandaConfig(url=service.url, auth="none", timeout="30s", retries=1), grid)
        backend.ping()
        good = [tiny_grid.request("ANALY_GOOD", grid=grid, max_events=500) for _ in range(2)]
        stuck = tiny_grid.request("ANALY_STUCK", grid=grid, max_events=500)
        ids = backend.submit([*good, stuck])
        assert len(set(ids)) == 3
        # the service stored what the backend built
        rows = grid.job_rows(ids)
        assert [rows[pid]["panda"]["jobDefinitionID"] for pid in ids] == [job_definition_id(r.job_name)
                                                                          for r in [*good, stuck]]

        reports = poll_until_final(backend, ids[:2])
        for pid in ids[:2]:
            report = reports[pid]
            assert report.job_status is JobStatus.FINISHED, report
            assert report.queue == "ANALY_GOOD" and report.n_events == 500 and report.trans_exit_code == 0
            assert report.start_time and report.end_time and report.end_time >= report.start_time
            assert report.pilot_timing.get("payload", 0) > 0

        waiting = backend.status([ids[2]])[ids[2]]
        assert waiting.job_status in (JobStatus.DEFINED, JobStatus.ACTIVATED)
        assert backend.kill([ids[2]]) == {ids[2]: True}
        killed = poll_until_final(backend, [ids[2]])[ids[2]]
        assert killed.job_status is JobStatus.CANCELLED and killed.task_buffer_error_code == 100
        assert backend.status([99_999_999]) == {99_999_999: None}

    with pytest.raises(BackendUnavailable):  # the service is gone: unknown, not failed
        backend.status(ids)


def test_a_job_the_service_cannot_run_refuses_the_bulk(tiny_grid):
    grid = tiny_grid.grid({"ANALY_GOOD": {}})
    with panda_service.serve(grid) as service:
        backend = PandaBackend(PandaConfig(url=service.url, auth="none", retries=3), grid)
        bad = tiny_grid.request("ANALY_NOWHERE", grid=grid)
        with pytest.raises(BackendUnavailable, match="not retried"):
            backend.submit([tiny_grid.request("ANALY_GOOD", grid=grid), bad])
        (pid,) = backend.submit([tiny_grid.request("ANALY_GOOD", grid=grid)])
        assert list(grid.job_rows(list(range(1, pid + 1)))) == [pid]  # nothing of the refused bulk stored
