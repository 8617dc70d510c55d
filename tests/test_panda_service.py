"""The embedded grid over PanDA's REST contract, tested on the wire.

Real HTTP on loopback with httpx (what panda-client uses), a real EmbeddedGrid (conftest's tiny
grids), submissions built from panda-client's own JobSpec / FileSpec and serialised the way
`Client.submitJobs` does, and once the unmodified panda-client itself in a separate process (its
server URL is read at import time). Tests that run payloads or processes are marked slow.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

os.environ.setdefault("PANDA_BEHIND_REAL_LB", "1")  # before anything of panda-client is imported
from conftest import TINY_ZMUMU, GridFactory
from pandaclient import MiscUtils
from pandaclient.FileSpec import FileSpec
from pandaclient.JobSpec import JobSpec

from robot.backends.embedded.config import FaultMode
from robot.backends.embedded.grid import HEARTBEAT_TIMEOUT_SECONDS, EmbeddedGrid
from robot.backends.embedded.panda_service import PandaServiceHandle, serve
from robot.backends.embedded.state import Fault
from robot.backends.embedded.workers import GridWorkers
from robot.backends.panda_monitor import MonitorUserJobs
from robot.backends.job_parameters import TRANSFORMATION, JobParameters, format_job_parameters
from robot.clock import ManualClock, SystemClock
from robot.jobstates import QueueStatus
from testjobs.datasets import load_manifest
from tests.crash_trials import start_grid_serve
from tests.fakes import T0

REPO = Path(__file__).resolve().parent.parent
ZMUMU = TINY_ZMUMU["name"]
DATASET_EVENTS = TINY_ZMUMU["files"] * TINY_ZMUMU["events_per_file"]
SLOW_DISK = {"endpoint": {"bandwidth_mb_s": 0.01}}  # stage-in takes many seconds, asleep
ORDER = ["defined", "activated", "sent", "starting", "running", "holding", "finished"]  # failed ranks as finished
FINAL = {"finished", "failed", "cancelled"}


# -- helpers ---------------------------------------------------------------------------------------
def open_grid(factory: GridFactory, queues: dict[str, dict[str, Any]], *, dispatch: str = "pull",
              clock: Any = None, max_parallel_jobs: int = 4, **config: Any) -> EmbeddedGrid:
    """A tiny grid (conftest's layout) in pull mode; closed with the factory."""
    grid_config = factory.config(queues, **config)
    state_dir = factory.new_dir() / "grid"
    factory.seed_datasets(state_dir, grid_config)
    grid = EmbeddedGrid(grid_config, state_dir, clock if clock is not None else SystemClock(), max_parallel_jobs,
                        dispatch=dispatch)  # type: ignore[arg-type]
    grid.storage.prepare()
    factory.grids.append(grid)
    return grid


def job_spec(grid: EmbeddedGrid, queue: str, name: str, *, max_events: int = 3000,
             processing_type: str | None = "gangarobot", definition_id: int | None = 7, **attrs: Any) -> JobSpec:
    """A user analysis test job as prun builds it (see panda.md), with panda-client's own classes."""
    manifest = load_manifest(grid.storage.datasets_dir / ZMUMU / "manifest.json")
    job = JobSpec()
    job.jobDefinitionID = definition_id
    job.jobName = name
    job.prodSourceLabel = "user"
    job.processingType = processing_type
    job.computingSite = queue
    job.transformation = TRANSFORMATION
    job.jobParameters = format_job_parameters(JobParameters(
        payload="zmumu", max_events=max_events, input_lfns=tuple(f.lfn for f in manifest.files),
        input_dataset=f"{manifest.scope}:{manifest.name}", outputs={"histograms.root": f"{name}.histograms.root"}))
    job.destinationDBlock = f"user.robot.{name}"
    job.cmtConfig = "x86_64-el9-gcc13-opt"
    job.maxWalltime = 600
    job.coreCount = 1
    for f in manifest.files:
        spec = FileSpec()
        spec.type = "input"
        spec.lfn, spec.GUID, spec.scope, spec.dataset = f.lfn, f.guid, manifest.scope, manifest.name
        spec.prodDBlock = manifest.name
        spec.fsize = f.bytes
        spec.checksum = f"ad:{f.adler32}"
        job.addFile(spec)
    log = FileSpec()
    log.type = "log"
    log.lfn = f"{name}.log.tgz"
    log.GUID = "6e0a0a52-1c2b-4bfa-9f1e-6d7d2f1f0d11"
    log.dataset = log.destinationDBlock = f"user.robot.{name}"
    job.addFile(log)
    for key, value in attrs.items():
        setattr(job, key, value)
    return job


def post(handle: PandaServiceHandle, endpoint: str, **params: Any) -> httpx.Response:
    """A call as panda-client's http_request_decorator makes it (json_out=True)."""
    return httpx.post(f"{handle.api}/{endpoint}", content=json.dumps(params).encode(),
                      headers={"Content-Type": "application/json", "Accept": "application/json"}, timeout=30)


def call(handle: PandaServiceHandle, endpoint: str, **params: Any) -> dict[str, Any]:
    reply = post(handle, endpoint, **params)
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"].startswith("text/plain")  # like the real server
    body = json.loads(reply.content, object_hook=_datetimes)
    assert set(body) == {"success", "message", "data"}
    return body


def _datetimes(obj: dict[str, Any]) -> Any:
    """panda-client's decode_special_cases."""
    return datetime.fromisoformat(obj["__datetime__"]) if "__datetime__" in obj else obj


def submit(handle: PandaServiceHandle, jobs: list[JobSpec]) -> dict[str, Any]:
    for job in jobs:  # what Client.submitJobs does before serialising
        job.creationHost = "robot-test-host"
    return call(handle, "job/submit", jobs=MiscUtils.dump_jobs_json(jobs))


def describe(handle: PandaServiceHandle, ids: list[int], endpoint: str = "job/get_description") -> list[Any]:
    body = call(handle, endpoint, job_ids=ids)
    assert body["success"] is True
    return body["data"]


def poll(handle: PandaServiceHandle, ids: list[int], until: Callable[[dict[int, dict]], bool], timeout: float,
         seen: dict[int, list[str]] | None = None) -> dict[int, dict[str, Any]]:
    """get_description until `until(jobs)`, recording each job's states; fails after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        jobs = {job["PandaID"]: job for job in describe(handle, ids)}
        if seen is not None:
            for pid, job in jobs.items():
                states = seen.setdefault(pid, [])
                if not states or states[-1] != job["jobStatus"]:
                    states.append(job["jobStatus"])
        if until(jobs):
            return jobs
        if time.monotonic() > deadline:
            raise AssertionError(f"not there after {timeout:g} s: { {p: j['jobStatus'] for p, j in jobs.items()} }")
        time.sleep(0.05)


def all_final(ids: list[int]) -> Callable[[dict[int, dict]], bool]:
    return lambda jobs: all(jobs[pid]["jobStatus"] in FINAL for pid in ids)


def pilot_alive(grid: EmbeddedGrid, panda_id: int) -> bool:
    job_file = str(grid.state_dir / "work" / str(panda_id) / "job.json").encode()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if job_file in (entry / "cmdline").read_bytes().split(b"\0"):
                    return True
            except OSError:
                continue
    return False


def stored_ids(grid: EmbeddedGrid) -> list[int]:
    return [pid for pid, _ in grid.state.jobs_in(tuple(ORDER) + ("failed", "cancelled"))]


@pytest.fixture
def factory(tiny_grid):
    return tiny_grid


# -- 1. a bulk run end to end, pull mode with the grid's workers ---------------------------------------
@pytest.fixture(scope="module")
def pull_run(tmp_path_factory, new_grid_factory):
    factory = new_grid_factory(tmp_path_factory.mktemp("panda-pull"))
    grid = open_grid(factory, {"ANALY_OK": {}, "ANALY_TESTQ": {}, "ANALY_CVMFS": {}}, clock=None,
                     faults=[{"queue": "ANALY_CVMFS", "mode": "cvmfs", "start_after": "0s"}])
    grid.set_queue_status("ANALY_TESTQ", QueueStatus.TEST, "probing", "test")
    handle = serve(grid)
    workers = GridWorkers(grid, handle.url, heartbeat=0.2, idle=0.2).start()
    specs = [job_spec(grid, "ANALY_OK", "run.ok", max_events=3000),
             job_spec(grid, "ANALY_TESTQ", "run.test.gangarobot"),
             job_spec(grid, "ANALY_TESTQ", "run.test.user", processing_type="analysis"),
             job_spec(grid, "ANALY_CVMFS", "run.cvmfs")]
    before = datetime.now(UTC).replace(tzinfo=None)
    reply = submit(handle, specs)
    ids = [entry[0] for entry in reply["data"]]
    names = dict(zip(("ok", "gangarobot", "user", "cvmfs"), ids))
    seen: dict[int, list[str]] = {}
    running = [names["ok"], names["gangarobot"], names["cvmfs"]]
    jobs = poll(handle, ids, all_final(running), timeout=40, seen=seen)
    for _ in range(5):  # the user job on the queue in `test` is never dispatched
        jobs = poll(handle, ids, lambda _: True, timeout=1, seen=seen)
        time.sleep(0.1)
    yield {"grid": grid, "handle": handle, "reply": reply, "ids": names, "jobs": jobs, "seen": seen,
           "before": before, "after": datetime.now(UTC).replace(tzinfo=None)}
    workers.stop()
    handle.close()
    factory.close()


@pytest.mark.slow
def test_a_submitted_bulk_runs_and_reads_back_as_pandas_job_description(pull_run):
    ids, jobs = pull_run["ids"], pull_run["jobs"]
    assert pull_run["reply"]["success"] is True
    assert pull_run["reply"]["data"] == [[pid, 7, {"jobsetID": ids["ok"]}] for pid in ids.values()]
    job = jobs[ids["ok"]]
    assert job["jobStatus"] == "finished"
    assert (job["computingSite"], job["jobName"], job["processingType"], job["prodSourceLabel"]) == (
        "ANALY_OK", "run.ok", "gangarobot", "user")
    assert (job["jobDefinitionID"], job["jobsetID"], job["attemptNr"]) == (7, ids["ok"], 0)
    assert job["transformation"] == TRANSFORMATION and job["cmtConfig"] == "x86_64-el9-gcc13-opt"
    assert job["nEvents"] == 3000
    assert job["transExitCode"] == "0"  # a string, as PanDA stores it
    assert (job["pilotErrorCode"], job["exeErrorCode"], job["ddmErrorCode"], job["taskBufferErrorCode"],
            job["jobDispatcherErrorCode"], job["supErrorCode"]) == (0, 0, 0, 0, 0, 0)
    assert job["pilotErrorDiag"] == "NULL" and job["taskBufferErrorDiag"] == "NULL"  # missing values
    assert job["cpuConsumptionTime"] > 0 and isinstance(job["maxRSS"], int) and job["maxRSS"] > 0
    assert job["actualCoreCount"] == 1 and job["maxWalltime"] == 600
    timing = job["pilotTiming"].split("|")  # getjob|stagein|payload|stageout|setup
    assert len(timing) == 5 and float(timing[2]) > 0 and all(float(t) >= 0 for t in timing)
    created, started, ended = job["creationTime"], job["startTime"], job["endTime"]
    assert all(isinstance(t, datetime) and t.tzinfo is None for t in (created, started, ended))  # naive UTC
    assert pull_run["before"] <= created <= started < ended <= pull_run["after"]
    assert set(job) == set(JobSpec._attributes) | {"Files"}
    files = {f["lfn"]: f for f in job["Files"]}
    manifest = load_manifest(pull_run["grid"].storage.datasets_dir / ZMUMU / "manifest.json")
    for entry in manifest.files:
        f = files[entry.lfn]
        assert (f["type"], f["GUID"], f["scope"], f["dataset"], f["fsize"], f["checksum"], f["PandaID"]) == (
            "input", entry.guid, manifest.scope, ZMUMU, entry.bytes, f"ad:{entry.adler32}", ids["ok"])
    assert files["run.ok.log.tgz"]["type"] == "log" and files["run.ok.log.tgz"]["status"] == "ready"
    assert files["run.ok.log.tgz"]["md5sum"] == "NULL"


@pytest.mark.slow
def test_panda_client_reads_the_description_back_into_jobspecs(pull_run):
    ids = list(pull_run["ids"].values())
    raw = post(pull_run["handle"], "job/get_description_incl_archive", job_ids=[*ids, 999999]).content
    data = json.loads(raw, object_hook=lambda o: datetime.fromisoformat(o["__datetime__"]) if "__datetime__" in o else o)
    specs = MiscUtils.load_jobs(data["data"])  # what Client.getFullJobStatus does with the answer
    assert specs[-1] is None  # an unknown PandaID
    ok = specs[0]
    assert (ok.PandaID, ok.jobStatus, ok.transExitCode, ok.nEvents) == (ids[0], "finished", "0", 3000)
    assert ok.pilotErrorDiag == "NULL" and isinstance(ok.startTime, datetime)
    assert sorted(f.type for f in ok.Files) == ["input", "input", "log"]
    assert all(f.PandaID == ids[0] for f in ok.Files)


@pytest.mark.slow
def test_states_follow_pandas_machine_through_the_workers(pull_run):
    seen, ids = pull_run["seen"], pull_run["ids"]
    for name in ("ok", "gangarobot", "cvmfs"):
        states = seen[ids[name]]
        ranks = [ORDER.index("finished" if s == "failed" else s) for s in states]
        assert ranks == sorted(ranks), states  # never backwards
        assert states[-1] == ("failed" if name == "cvmfs" else "finished")
    assert "running" in seen[ids["ok"]]  # a second of payload: the polls saw it run


@pytest.mark.slow
def test_a_site_fault_reaches_the_client_with_the_pilot_code_and_the_log_is_kept(pull_run):
    pid = pull_run["ids"]["cvmfs"]
    job = pull_run["jobs"][pid]
    assert job["jobStatus"] == "failed" and job["pilotErrorCode"] == 1377
    assert "CVMFS" in job["pilotErrorDiag"] and job["transExitCode"] == "NULL"
    assert [f["status"] for f in job["Files"] if f["type"] == "log"] == ["failed"]
    assert (pull_run["grid"].state_dir / "logs" / f"{pid}.log").exists()
    assert not (pull_run["grid"].state_dir / "work" / str(pid)).exists()


@pytest.mark.slow
def test_a_queue_in_test_runs_only_gangarobot_jobs(pull_run):
    jobs, ids = pull_run["jobs"], pull_run["ids"]
    assert jobs[ids["gangarobot"]]["jobStatus"] == "finished"
    held = jobs[ids["user"]]
    assert held["jobStatus"] == "activated" and held["startTime"] == "NULL" and held["processingType"] == "analysis"
    assert pull_run["seen"][ids["user"]] == ["activated"]
    specs = call(pull_run["handle"], "metaconfig/get_site_specs", type="analysis")["data"]
    assert specs["ANALY_TESTQ"]["status"] == "test"


# -- 2. kill -------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_kill_cancels_a_running_job_and_its_worker_kills_the_pilot(factory):
    grid = open_grid(factory, {"ANALY_SLOWDISK": SLOW_DISK, "ANALY_CLOSED": {}}, clock=None)
    grid.set_queue_status("ANALY_CLOSED", QueueStatus.OFFLINE, "", "test")
    with serve(grid) as handle, GridWorkers(grid, handle.url, heartbeat=0.2, idle=0.2):
        running, queued = (e[0] for e in submit(handle, [job_spec(grid, "ANALY_SLOWDISK", "kill.run"),
                                                            job_spec(grid, "ANALY_CLOSED", "kill.queued")])["data"])
        poll(handle, [running], lambda jobs: jobs[running]["jobStatus"] == "running", timeout=10)
        deadline = time.monotonic() + 5
        while not pilot_alive(grid, running):
            assert time.monotonic() < deadline, "no pilot process"
            time.sleep(0.05)
        assert call(handle, "job/kill", job_ids=[running, queued, 424242])["data"] == [True, True, False]
        jobs = {j["PandaID"]: j for j in describe(handle, [running, queued])}
        for pid in (running, queued):
            assert jobs[pid]["jobStatus"] == "cancelled" and jobs[pid]["taskBufferErrorCode"] == 100
            assert isinstance(jobs[pid]["endTime"], datetime)
        deadline = time.monotonic() + 5  # the worker hears `tobekilled` at its next heartbeat
        while pilot_alive(grid, running):
            assert time.monotonic() < deadline, "the pilot of a killed job still runs"
            time.sleep(0.05)
        assert call(handle, "job/kill", job_ids=[running])["data"] == [False]  # already over
        time.sleep(0.5)
        assert describe(handle, [running])[0]["jobStatus"] == "cancelled"  # the worker changed nothing after


# -- 3. contract details without payloads --------------------------------------------------------------
def test_is_alive_site_specs_and_forbidden_methods(factory):
    grid = open_grid(factory, {"ANALY_A": {}, "ANALY_B": {}}, clock=ManualClock(T0))
    grid.set_queue_status("ANALY_B", QueueStatus.BROKEROFF, "draining", "test")
    with serve(grid) as handle:
        assert handle.url == f"http://127.0.0.1:{handle.port}/server/panda"
        alive = httpx.get(f"{handle.api}/system/is_alive", headers={"Accept": "application/json"})
        assert alive.status_code == 200 and alive.json()["success"] is True
        reply = httpx.get(f"{handle.api}/metaconfig/get_site_specs", params={"type": "analysis"},
                          headers={"Accept": "application/json"})
        specs = reply.json()["data"]
        assert set(specs) == {"ANALY_A", "ANALY_B"}
        assert specs["ANALY_A"] | {"status": None} == {
            "sitename": "ANALY_A", "nickname": "ANALY_A", "panda_resource": "ANALY_A", "status": None,
            "type": "analysis", "cloud": "XX", "site": "SITE-ANALY_A", "pandasite": "SITE-ANALY_A",
            "ddm": "ANALY_A_DATADISK", "astorages": {"read_lan": ["ANALY_A_DATADISK"], "write_lan": ["ANALY_A_DATADISK"]},
            "corecount": 1, "slots": 4}
        assert (specs["ANALY_A"]["status"], specs["ANALY_B"]["status"]) == ("online", "brokeroff")
        assert set(call(handle, "metaconfig/get_site_specs", type="all")["data"]) == {"ANALY_A", "ANALY_B"}
        assert call(handle, "metaconfig/get_site_specs", type="production")["data"] == {}
        # panda-server 1.0.4 has no getPandIDsWithJobID: no job is found by its jobDefinitionID there
        for path in ("job/frobnicate", "pilot/get_proxy", "job/get_panda_ids_with_job_id"):
            forbidden = post(handle, path, job_ids=[1])
            assert forbidden.status_code == 403 and forbidden.text == f"ERROR : method {path} is forbidden"
        old = httpx.post(f"http://127.0.0.1:{handle.port}/server/panda/getJobStatus", data={"ids": "1"})
        assert old.status_code == 403 and old.text.startswith("ERROR : method") and "forbidden" in old.text
        assert describe(handle, [1, 2]) == [None, None]


def test_the_monitors_job_list_finds_jobs_by_name_as_bigpanda_does(factory):
    """BigPanDA's jobs/?json&jobname=...: alternatives split at |, each matched without case (`_` literal,
    `*` any text) over every job, records in lower case with null for nothing; other selections refused."""
    grid = open_grid(factory, {"ANALY_A": {}}, clock=ManualClock(T0))
    with serve(grid) as handle:
        names = ["hc.1.ANALY_A.aa", "hc.1.ANALY_A.bb", "hc.1.ANALYXA.cc"]
        ids = [reply[0] for reply in submit(handle, [job_spec(grid, "ANALY_A", n) for n in names])["data"]]

        def listed(jobname, **params):
            reply = httpx.get(f"{handle.monitor_url}/jobs/", params={"json": "", "jobname": jobname, **params})
            assert reply.status_code == 200, reply.text
            return reply.json()["jobs"]

        (first,) = listed("hc.1.ANALY_A.aa")
        assert (first["pandaid"], first["jobname"], first["computingsite"]) == (ids[0], names[0], "ANALY_A")
        assert first["jobstatus"] == "activated" and first["piloterrordiag"] is None
        assert first["creationtime"].startswith(T0.strftime("%Y-%m-%dT%H:%M"))
        assert [j["pandaid"] for j in listed("HC.1.analy_a.BB|hc.1.ANALY_A.aa|nope")] == ids[:2]
        assert [j["pandaid"] for j in listed("hc.1.ANALY_A.*")] == ids[:2]  # `_` is no wildcard
        assert [j["pandaid"] for j in listed("hc.1.*", limit=1)] == ids[:1]
        assert listed("hc.1.ANALY_A") == []
        refused = httpx.get(f"{handle.monitor_url}/jobs/", params={"json": "", "computingsite": "ANALY_A"})
        assert refused.status_code == 400 and "computingsite" in refused.text


def test_the_monitors_users_job_list_gives_what_the_grid_counts_to_the_robots_reader(factory):
    """jobs/?json&prodsourcelabel=user&endtimerange=...: the robot's users' jobs reader (the PanDA backend's)
    reads from the served grid, one request an hour, the very hours the embedded backend counts, with a
    broken queue's users failing with its pilot code; a selection it does not serve is refused."""
    clock = ManualClock(T0)
    grid = open_grid(factory, {"ANALY_A": {}, "ANALY_B": {}}, clock=clock)
    grid.state.started_at(clock.now())
    grid.state.add_fault(Fault("ANALY_B", FaultMode.STAGEIN, T0, T0 + timedelta(hours=6)))
    clock.advance(timedelta(hours=3))
    with serve(grid) as handle:
        since, until = T0, T0 + timedelta(hours=2, minutes=30)
        read = MonitorUserJobs(handle.monitor_url, retries=1, sleep=lambda s: None).user_job_stats(since, until)
        counted = grid.user_job_stats(since, until)
        assert sorted(read, key=lambda h: (h.queue, h.hour)) == sorted(counted, key=lambda h: (h.queue, h.hour))
        assert {h.queue for h in read} == {"ANALY_A", "ANALY_B"} and sum(h.ended for h in read) > 40
        broken = [h for h in read if h.queue == "ANALY_B"]
        assert all(h.failed == h.ended for h in broken) and len({code for h in broken for _, code in h.errors}) == 1
        refused = httpx.get(f"{handle.monitor_url}/jobs/", params={"json": "", "prodsourcelabel": "user",
                                                                   "computingsite": "ANALY_A"})
        assert refused.status_code == 400 and "computingsite" in refused.text


def test_a_job_on_an_unknown_queue_refuses_its_bulk_and_stores_nothing(factory):
    grid = open_grid(factory, {"ANALY_A": {}}, clock=ManualClock(T0))
    with serve(grid) as handle:
        good = job_spec(grid, "ANALY_A", "bulk.good")
        bad = job_spec(grid, "ANALY_A", "bulk.bad", computingSite="ANALY_NOWHERE")
        reply = submit(handle, [good, bad])
        assert reply["success"] is False and reply["data"] is None
        assert "job 1 (bulk.bad)" in reply["message"] and "computingSite" in reply["message"], reply["message"]
        assert stored_ids(grid) == []
        ok = submit(handle, [job_spec(grid, "ANALY_A", "bulk.alone")])
        assert ok["success"] is True and stored_ids(grid) == [ok["data"][0][0]]


ACCEPTED_THEN_FAILED = {  # what PanDA accepts but a pilot here cannot run -> (attribute changes, pilot code)
    "parameters without -p": ({"jobParameters": '-j "" -r ./ -i "[]"'}, 1349),
    "parameters that do not parse": ({"jobParameters": '-p "zmumu --max-events 10'}, 1349),
    "another transformation": ({"transformation": "http://example.org/trf/evil.sh"}, 1149),
    "a payload the nodes do not have": ({"jobParameters": '-j "" -r ./ -p "echo%20hello"'}, 1305),
}


@pytest.mark.parametrize("case", list(ACCEPTED_THEN_FAILED))
def test_what_panda_accepts_is_stored_and_fails_at_run_time_with_the_pilots_code(factory, case):
    grid = open_grid(factory, {"ANALY_A": {}}, dispatch="local")
    changes, code = ACCEPTED_THEN_FAILED[case]
    with serve(grid) as handle:
        reply = submit(handle, [job_spec(grid, "ANALY_A", "odd.one", maxWalltime=None, **changes)])
        assert reply["success"] is True, reply["message"]
        pid = reply["data"][0][0]
        grid.start(period=0.05)
        job = poll(handle, [pid], all_final([pid]), timeout=60)[pid]
    assert job["jobStatus"] == "failed" and job["pilotErrorCode"] == code, job["pilotErrorDiag"]
    assert job["maxWalltime"] > 0  # NULL became the queue's limit


def test_inputs_must_be_the_grids_files(factory):
    grid = open_grid(factory, {"ANALY_A": {}}, clock=ManualClock(T0))
    with serve(grid) as handle:
        unknown = job_spec(grid, "ANALY_A", "files.unknown")
        unknown.Files[0].dataset = "mc23_13p6TeV.999999.NotHere.deriv.DAOD_PHYS"
        unknown.Files[1].dataset = "mc23_13p6TeV.999999.NotHere.deriv.DAOD_PHYS"
        reply = submit(handle, [unknown])
        assert reply["success"] is False and "Files[0].dataset" in reply["message"]
        other = job_spec(grid, "ANALY_A", "files.other")
        other.Files[1].lfn = "not.in.the.dataset.root"
        reply = submit(handle, [other])
        assert reply["success"] is False and "Files[1].lfn" in reply["message"]
        garbage = call(handle, "job/submit", jobs="[[1, 2, 3]]")
        assert garbage["success"] is False and "deserialize" in garbage["message"]
        assert call(handle, "job/submit", jobs="[]")["success"] is False
        assert stored_ids(grid) == []


def test_a_job_without_job_definition_id_is_answered_null_and_not_stored(factory):
    grid = open_grid(factory, {"ANALY_A": {}}, clock=ManualClock(T0))
    with serve(grid) as handle:
        reply = submit(handle, [job_spec(grid, "ANALY_A", "nodef", definition_id=None),
                                job_spec(grid, "ANALY_A", "withdef")])
        assert reply["success"] is True
        assert reply["data"][0] == ["NULL", "NULL", {"jobsetID": "NULL"}]
        (pid, definition, extra) = reply["data"][1]
        assert stored_ids(grid) == [pid] and definition == 7 and extra == {"jobsetID": pid}
        (job,) = describe(handle, [pid])
        assert job["jobName"] == "withdef" and job["jobStatus"] == "activated"
        assert job["creationTime"] == T0.replace(tzinfo=None)


# -- 4. the pilot protocol, driven by hand ---------------------------------------------------------------
def acquire(handle: PandaServiceHandle, queue: str, **extra: Any) -> dict[str, Any]:
    return call(handle, "pilot/acquire_jobs", site_name=queue, prod_source_label="user", node="wn-test",
                n_jobs=1, **extra)


def update(handle: PandaServiceHandle, pid: int, status: str, **extra: Any) -> dict[str, Any]:
    return call(handle, "pilot/update_job", job_id=pid, job_status=status, **extra)


def test_the_pilot_protocol_walks_pandas_state_machine(factory):
    clock = ManualClock(T0)
    grid = open_grid(factory, {"ANALY_A": {}}, clock=clock)
    with serve(grid) as handle:
        (pid, *_), = submit(handle, [job_spec(grid, "ANALY_A", "proto.one", max_events=1234)])["data"]
        assert describe(handle, [pid])[0]["jobStatus"] == "activated"
        body = acquire(handle, "ANALY_A")
        assert body["success"] is True and body["data"]["StatusCode"] == 0
        (job,) = body["data"]["jobs"]
        manifest = load_manifest(grid.storage.datasets_dir / ZMUMU / "manifest.json")
        assert (job["PandaID"], job["jobName"], job["transformation"], job["maxWalltime"]) == (
            pid, "proto.one", TRANSFORMATION, 600)
        assert "zmumu --max-events 1234" in job["jobPars"]
        assert job["inFiles"] == ",".join(f.lfn for f in manifest.files)
        assert job["GUID"] == ",".join(f.guid for f in manifest.files)
        assert job["checksum"] == ",".join(f"ad:{f.adler32}" for f in manifest.files)
        assert job["realDatasetsIn"] == ",".join([ZMUMU] * 2) and job["ddmEndPointIn"] == "ANALY_A_DATADISK,ANALY_A_DATADISK"
        assert job["logFile"] == "proto.one.log.tgz" and job["logGUID"] == "6e0a0a52-1c2b-4bfa-9f1e-6d7d2f1f0d11"
        assert "proto.one.log.tgz" in job["outFiles"].split(",")
        assert job["embedded"]["inject"] == {"mode": None, "slowdown": 1.0, "payload_fail": None}
        assert describe(handle, [pid])[0]["jobStatus"] == "sent"
        assert acquire(handle, "ANALY_A")["success"] is False  # nothing left to take

        clock.advance(5)
        assert update(handle, pid, "starting")["data"] == {"StatusCode": 0, "command": "NULL"}
        assert describe(handle, [pid])[0]["jobStatus"] == "starting"
        clock.advance(5)
        assert update(handle, pid, "running", start_time="2026-11-01 12:00:10")["data"]["command"] == "NULL"
        job = describe(handle, [pid])[0]
        assert job["jobStatus"] == "running" and job["startTime"] == (T0 + timedelta(seconds=10)).replace(tzinfo=None)
        assert job["modificationHost"] == "wn-test"
        clock.advance(60)
        final = dict(trans_exit_code=0, pilot_error_code=0, n_events=1234, cpu_consumption_time=42.5, max_rss=123456,
                     core_count=1, pilot_timing="1|2|50|3|4", end_time="2026-11-01 12:01:10")
        assert update(handle, pid, "finished", **final)["data"] == {"StatusCode": 0, "command": "NULL"}
        assert grid.state.jobs([pid])[pid]["job_status"] == "holding"  # until the grid's next tick
        job = describe(handle, [pid])[0]  # a description call ticks the grid
        assert job["jobStatus"] == "finished"
        assert (job["nEvents"], job["cpuConsumptionTime"], job["maxRSS"], job["transExitCode"]) == (1234, 42.5, 123456, "0")
        assert job["pilotTiming"] == "1|2|50|3|4" and job["endTime"] == (T0 + timedelta(seconds=70)).replace(tzinfo=None)

        before = grid.state.jobs([pid])
        for status in ("running", "failed", "finished"):
            refused = update(handle, pid, status, pilot_error_code=1099)["data"]
            assert refused["StatusCode"] != 0 and "refused" in refused["ErrorDiag"]
        assert grid.state.jobs([pid]) == before
        assert update(handle, 99999, "running")["data"]["StatusCode"] != 0
        invalid = update(handle, pid, "exploded")
        assert invalid["success"] is False and invalid["data"]["StatusCode"] != 0


def test_a_killed_job_tells_its_pilot_tobekilled_and_stays_cancelled(factory):
    grid = open_grid(factory, {"ANALY_A": {}}, clock=ManualClock(T0))
    with serve(grid) as handle:
        (pid, *_), = submit(handle, [job_spec(grid, "ANALY_A", "proto.kill")])["data"]
        acquire(handle, "ANALY_A")
        update(handle, pid, "running")
        assert call(handle, "job/kill", job_ids=[pid])["data"] == [True]
        assert update(handle, pid, "running")["data"] == {"StatusCode": 0, "command": "tobekilled"}
        assert update(handle, pid, "finished", n_events=5)["data"]["command"] == "tobekilled"
        (job,) = describe(handle, [pid])
        assert (job["jobStatus"], job["taskBufferErrorCode"], job["nEvents"]) == ("cancelled", 100, 0)


def test_acquire_applies_the_dispatch_rules(factory):
    clock = ManualClock(T0)
    queues = {"ANALY_OFF": {}, "ANALY_TESTQ": {}, "ANALY_STUCK": {}, "ANALY_ONE": {"slots": 1}, "ANALY_FAULTY": {}}
    grid = open_grid(factory, queues, clock=clock, max_parallel_jobs=3,
                     faults=[{"queue": "ANALY_STUCK", "mode": "stuck", "start_after": "0s"},
                             {"queue": "ANALY_FAULTY", "mode": "stagein", "start_after": "0s"}])
    grid.set_queue_status("ANALY_OFF", QueueStatus.OFFLINE, "", "test")
    grid.set_queue_status("ANALY_TESTQ", QueueStatus.TEST, "", "test")
    with serve(grid) as handle:
        specs = [job_spec(grid, "ANALY_OFF", "r.off"), job_spec(grid, "ANALY_TESTQ", "r.user", processing_type="analysis"),
                 job_spec(grid, "ANALY_TESTQ", "r.label", processing_type="analysis", prodSourceLabel="test"),
                 job_spec(grid, "ANALY_STUCK", "r.stuck"), job_spec(grid, "ANALY_ONE", "r.one.1"),
                 job_spec(grid, "ANALY_ONE", "r.one.2"), job_spec(grid, "ANALY_FAULTY", "r.faulty"),
                 job_spec(grid, "ANALY_FAULTY", "r.faulty.2")]
        ids = dict(zip([s.jobName for s in specs], (e[0] for e in submit(handle, specs)["data"])))
        assert acquire(handle, "ANALY_OFF")["success"] is False
        (test_job,) = acquire(handle, "ANALY_TESTQ")["data"]["jobs"]  # only the job labelled `test`
        assert test_job["PandaID"] == ids["r.label"] and acquire(handle, "ANALY_TESTQ")["success"] is False
        assert acquire(handle, "ANALY_STUCK")["success"] is False
        (one,) = acquire(handle, "ANALY_ONE")["data"]["jobs"]
        assert one["PandaID"] == ids["r.one.1"] and acquire(handle, "ANALY_ONE")["success"] is False  # one slot
        (faulty,) = acquire(handle, "ANALY_FAULTY")["data"]["jobs"]
        assert faulty["embedded"]["inject"]["mode"] == "stagein"  # the fault travels to the worker
        assert acquire(handle, "ANALY_FAULTY")["success"] is False  # max_parallel_jobs=3 in flight
        assert acquire(handle, "ANALY_NOWHERE")["success"] is False
        update(handle, one["PandaID"], "failed", pilot_error_code=1099)
        describe(handle, [one["PandaID"]])  # the tick stores the outcome: the slot is free again
        (second,) = acquire(handle, "ANALY_ONE")["data"]["jobs"]
        assert second["PandaID"] == ids["r.one.2"]
        states = {j["jobName"]: j["jobStatus"] for j in describe(handle, list(ids.values()))}
        assert states == {"r.off": "activated", "r.user": "activated", "r.label": "sent", "r.stuck": "activated",
                          "r.one.1": "failed", "r.one.2": "sent", "r.faulty": "sent", "r.faulty.2": "activated"}


def test_a_pilot_that_stops_reporting_fails_its_job_with_lost_heartbeat(factory):
    clock = ManualClock(T0)
    grid = open_grid(factory, {"ANALY_A": {}}, clock=clock)
    with serve(grid) as handle:
        (pid, *_), = submit(handle, [job_spec(grid, "ANALY_A", "proto.lost")])["data"]
        acquire(handle, "ANALY_A")
        update(handle, pid, "running")
        clock.advance(HEARTBEAT_TIMEOUT_SECONDS)
        assert describe(handle, [pid])[0]["jobStatus"] == "running"
        clock.advance(1)
        (job,) = describe(handle, [pid])
        assert job["jobStatus"] == "failed" and job["jobDispatcherErrorCode"] == 100
        assert "heartbeat" in job["jobDispatcherErrorDiag"]
        assert update(handle, pid, "running")["data"]["StatusCode"] != 0


def test_a_grid_that_dispatches_itself_hands_out_no_jobs(factory):
    grid = open_grid(factory, {"ANALY_A": {}}, dispatch="local", clock=ManualClock(T0))
    grid.set_queue_status("ANALY_A", QueueStatus.OFFLINE, "", "test")  # nothing starts a real pilot here
    with serve(grid) as handle:
        (pid, *_), = submit(handle, [job_spec(grid, "ANALY_A", "local.one")])["data"]
        assert acquire(handle, "ANALY_A")["success"] is False
        assert describe(handle, [pid])[0]["jobStatus"] == "activated"
    with pytest.raises(RuntimeError):
        grid.acquire_jobs("ANALY_A")


# -- 5. the unmodified panda-client, and `healthrobot grid serve` -----------------------------------------
CLIENT_SCRIPT = textwrap.dedent("""
    import json, sys
    from pandaclient import Client
    from pandaclient.JobSpec import JobSpec
    from pandaclient.FileSpec import FileSpec
    spec = JobSpec()
    for key, value in json.loads(sys.argv[1]).items():
        setattr(spec, key, value)
    for attrs in json.loads(sys.argv[2]):
        f = FileSpec()
        for key, value in attrs.items():
            setattr(f, key, value)
        spec.addFile(f)
    out = {"hello": Client.hello()}
    status, ids = Client.submitJobs([spec])
    pid = ids[0][0]
    out["submit"] = [status, ids]
    status, jobs = Client.getJobStatus([pid, 987654])
    out["status"] = [status, jobs[0].jobStatus, jobs[0].computingSite, jobs[0].transExitCode, jobs[1]]
    out["kill"] = Client.killJobs([pid])
    status, jobs = Client.getFullJobStatus([pid])
    out["full"] = [status, jobs[0].jobStatus, jobs[0].taskBufferErrorCode, jobs[0].endTime is not None]
    print(json.dumps(out, default=str))
""")


@pytest.mark.slow
def test_the_unmodified_panda_client_talks_to_the_service(factory, tmp_path):
    grid = open_grid(factory, {"ANALY_A": {}}, clock=None)
    spec = job_spec(grid, "ANALY_A", "client.one")
    attrs = {a: getattr(spec, a) for a in JobSpec._attributes if getattr(spec, a) != "NULL"}
    files = [{a: getattr(f, a) for a in FileSpec._attributes if a != "PandaID" and getattr(f, a) != "NULL"}
             for f in spec.Files]
    with serve(grid) as handle:
        env = {**os.environ, "PANDA_URL": handle.url, "PANDA_URL_SSL": handle.url, "PANDACACHE_URL": handle.url,
               "PANDA_BEHIND_REAL_LB": "1", "X509_USER_PROXY": str(tmp_path / "no-proxy")}
        env.pop("PANDA_AUTH", None)
        done = subprocess.run([sys.executable, "-c", CLIENT_SCRIPT, json.dumps(attrs), json.dumps(files)],
                              check=False, env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["hello"][0] == 0
    status, ids = out["submit"]
    assert status == 0 and ids[0][1] == 7
    pid = ids[0][0]
    assert out["status"] == [0, "activated", "ANALY_A", "NULL", None]
    assert out["kill"] == [0, [True]]
    assert out["full"] == [0, "cancelled", 100, True]
    assert grid.state.jobs([pid])[pid]["job_status"] == "cancelled"


@pytest.mark.slow
def test_grid_serve_runs_until_sigterm(factory):
    files = factory.write_files({"ANALY_CLI": {}}, max_parallel_jobs=2)
    process = subprocess.Popen([sys.executable, "-m", "robot.cli", "--config", str(files.robot_yaml), "grid",
                                "serve", "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               cwd=REPO)
    try:
        url = None
        deadline = time.monotonic() + 30
        while url is None:
            line = process.stdout.readline()  # type: ignore[union-attr]
            assert line or process.poll() is None, process.stderr.read()  # type: ignore[union-attr]
            if line.startswith("PANDA_URL="):
                url = line.strip().split("=", 1)[1]
            assert time.monotonic() < deadline, "no PANDA_URL printed"
        api = url.replace("/server/panda", "/api/v1")
        assert url.startswith("http://127.0.0.1:") and url.endswith("/server/panda")
        assert httpx.get(f"{api}/system/is_alive").json()["success"] is True
        specs = httpx.get(f"{api}/metaconfig/get_site_specs", params={"type": "all"}).json()["data"]
        assert set(specs) == {"ANALY_CLI"}
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{api}/system/is_alive", timeout=2)


def test_grid_serve_on_a_taken_port_says_how_to_pick_another(factory):
    files = factory.write_files({"ANALY_CLI": {}}, max_parallel_jobs=2)
    with socket.socket() as other:  # a port some other program listens on
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "robot.cli", "--config", str(files.robot_yaml), "grid", "serve",
                               "--port", str(port)], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use; another port: `" in done.stderr
    assert f"--config {files.robot_yaml} grid serve --port 0` (0: any free port" in done.stderr


PRUN_SCRIPT = textwrap.dedent("""
    import json, sys, time
    from pandaclient import Client
    from pandaclient.JobSpec import JobSpec
    from pandaclient.FileSpec import FileSpec
    job = JobSpec()
    job.jobDefinitionID = 4242
    job.jobName = "user.alice.prun.0001"
    job.prodSourceLabel = "user"
    job.computingSite = sys.argv[1]
    job.transformation = "http://pandaserver.cern.ch:25080/trf/user/runGen-00-00-02"
    job.jobParameters = '-j "" --sourceURL https://panda.example:25443 -r . -p "zmumu" -a jobO.1234.tar.gz'
    job.destinationDBlock = "user.alice.prun.0001/"
    job.cmtConfig = "x86_64-el9-gcc13-opt"
    log = FileSpec()
    log.type, log.lfn, log.dataset = "log", "user.alice.prun.0001.log.tgz", "user.alice.prun.0001/"
    job.addFile(log)
    status, ids = Client.submitJobs([job])
    pid = ids[0][0]
    deadline = time.time() + 300
    while True:
        status, jobs = Client.getJobStatus([pid])
        if jobs[0].jobStatus in ("finished", "failed", "cancelled") or time.time() > deadline:
            break
        time.sleep(0.3)
    print(json.dumps({"submit": [status, ids], "state": jobs[0].jobStatus, "pilot": jobs[0].pilotErrorCode,
                      "diag": jobs[0].pilotErrorDiag}, default=str))
""")


@pytest.mark.slow
def test_a_prun_style_job_from_the_unmodified_client_runs_on_grid_serve(factory, tmp_path):
    """runGen, no --max-events, no input file, no maxWalltime: accepted, and it ends with a pilot code."""
    files = factory.write_files({"ANALY_CLI": {}}, max_parallel_jobs=2)
    process, urls = start_grid_serve(files.robot_yaml, subprocess.DEVNULL)
    url = urls["PANDA_URL"]
    try:
        env = {**os.environ, "PANDA_URL": url, "PANDA_URL_SSL": url, "PANDACACHE_URL": url,
               "PANDA_BEHIND_REAL_LB": "1", "X509_USER_PROXY": str(tmp_path / "no-proxy")}
        env.pop("PANDA_AUTH", None)
        done = subprocess.run([sys.executable, "-c", PRUN_SCRIPT, "ANALY_CLI"], check=False, env=env,
                              capture_output=True, text=True, timeout=400, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        out = json.loads(done.stdout.strip().splitlines()[-1])
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    status, ids = out["submit"]
    assert status == 0 and isinstance(ids[0][0], int), out
    # zmumu without input cannot read an event: the payload fails, the pilot reports it with its code
    assert out["state"] == "failed" and out["pilot"] == 1305, out
