"""End to end: PandaBackend and the real panda-client against the embedded grid's PanDA service.

Real pilots run the real payload on this machine; the grid dispatches its jobs itself (local
dispatch) in a background thread, and the robot's side sees it only through PanDA's REST contract.
"""
from __future__ import annotations

import threading
import time

import httpx
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


def test_jobs_are_found_by_name_even_when_the_reply_to_their_submission_was_lost(tiny_grid):
    """The server stores a bulk and its reply is lost: the backend cannot know the PandaIDs from the
    submission, and finds them by name in PanDA's monitor (the job list the service serves as BigPanDA),
    since the server itself cannot: it answers getPandIDsWithJobID 403, as panda-server 1.0.4 does."""
    from werkzeug.serving import make_server

    grid = tiny_grid.grid({"ANALY_GOOD": {}})
    service = panda_service.PandaService(grid)
    lose_reply = [True]

    def lossy(environ, start_response):
        if environ["PATH_INFO"].endswith("/job/submit") and lose_reply:
            lose_reply.clear()
            list(service(environ, lambda *args: None))  # the bulk is stored; its reply never arrives
            start_response("502 Bad Gateway", [("Content-Type", "text/plain")])
            return [b"upstream went away"]
        return service(environ, start_response)

    server = make_server("127.0.0.1", 0, lossy, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        host = f"http://127.0.0.1:{server.server_port}"
        backend = PandaBackend(PandaConfig(url=f"{host}/server/panda", auth="none", retries=2, monitor_url=host),
                               grid, sleep=lambda s: None)
        jobs = [tiny_grid.request("ANALY_GOOD", grid=grid) for _ in range(2)]
        with pytest.raises(BackendUnavailable, match="not retried"):
            backend.submit(jobs)
        stored = grid.job_rows(list(range(1, 10)))
        assert sorted(row["job_name"] for row in stored.values()) == sorted(j.job_name for j in jobs)
        found = backend.find([jobs[0].job_name, "hc.1.ANALY_GOOD.never-sent", jobs[1].job_name])
        by_name = {row["job_name"]: pid for pid, row in stored.items()}
        assert found == {jobs[0].job_name: by_name[jobs[0].job_name], "hc.1.ANALY_GOOD.never-sent": None,
                         jobs[1].job_name: by_name[jobs[1].job_name]}
        assert grid.find([jobs[1].job_name, "nope"]) == {jobs[1].job_name: by_name[jobs[1].job_name], "nope": None}
        forbidden = httpx.get(f"{host}/api/v1/job/get_panda_ids_with_job_id",
                              params={"job_id": job_definition_id(jobs[0].job_name)})
        assert forbidden.status_code == 403 and "is forbidden" in forbidden.text
    finally:
        server.shutdown()
        server.server_close()
