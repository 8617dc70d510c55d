"""The embedded grid: real pilot processes, real ROOT files, real payloads, and its faults.

Every test builds a tiny grid in a temporary folder (see conftest.py: one site and storage endpoint
per queue, a 2 x 2000-event dataset). Jobs that only need to *be* somewhere for a while (slots,
kill, restart, wall time) run on a queue whose storage is very slow or whose faults fail them after
an injected delay, so they cost sleeping processes rather than CPU.
"""
from __future__ import annotations

import json
import os
import random
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import TINY_DATA, TINY_ZMUMU, wait_until_final
from robot.backends.embedded.config import FaultMode, load_grid_config
from robot.backends.embedded.faults import active_faults, is_stuck, plan_injection
from robot.backends.embedded.grid import EmbeddedGrid
from robot.backends.embedded.state import Fault, GridState
from robot.cli import main
from robot.clock import ManualClock, SystemClock
from robot.jobstates import JobStatus, QueueStatus
from testjobs.datasets import load_manifest

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=timezone.utc)
ZMUMU = TINY_ZMUMU["name"]
DATASET_EVENTS = TINY_ZMUMU["files"] * TINY_ZMUMU["events_per_file"]
STEPS = ("setup", "stagein", "payload", "stageout")  # the order in which the pilot runs them
# Storage so slow (10 kB/s for ~130 kB files) that a job sits in stage-in for many seconds, asleep.
SLOW_DISK = {"endpoint": {"bandwidth_mb_s": 0.01}}

pytestmark = pytest.mark.slow


def state_dir_of(grid: EmbeddedGrid) -> Path:
    return grid.storage.datasets_dir.parent


def pilot_process(grid: EmbeddedGrid, panda_id: int, timeout: float = 10.0) -> int:
    """The OS pid of the pilot running `panda_id`, found in /proc by its command line."""
    job_file = str(state_dir_of(grid) / "work" / str(panda_id) / "job.json")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                args = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if job_file.encode() in args and b"robot.backends.embedded.pilot" in args:
                return int(entry.name)
        time.sleep(0.02)
    raise AssertionError(f"no pilot process for job {panda_id}")


def process_gone(os_pid: int) -> bool:
    try:
        os.kill(os_pid, 0)
    except ProcessLookupError:
        return True
    return False


# -- 1. healthy jobs and the `slow` fault ----------------------------------------------------------
SLOWDOWN = 4.0


@pytest.fixture(scope="module")
def healthy_run(tmp_path_factory, new_grid_factory):
    factory = new_grid_factory(tmp_path_factory.mktemp("healthy"))
    grid = factory.grid(
        {"ANALY_OK": {}, "ANALY_SLOW": {}},
        faults=[{"queue": "ANALY_SLOW", "mode": "slow", "start_after": "0s", "slowdown": SLOWDOWN}],
    )
    before = datetime.now(timezone.utc)
    ids = grid.submit([
        factory.request("ANALY_OK", max_events=3000),
        factory.request("ANALY_OK", max_events=10**6),
        factory.request("ANALY_SLOW", max_events=10**6),
    ])
    reports = wait_until_final(grid, ids, timeout=40)
    yield before, dict(zip(("partial", "whole", "slow"), (reports[pid] for pid in ids)))
    factory.close()


def test_a_healthy_job_finishes_with_complete_accounting(healthy_run):
    before, jobs = healthy_run
    for key, expected_events in (("partial", 3000), ("whole", DATASET_EVENTS)):
        job = jobs[key]
        assert job.job_status is JobStatus.FINISHED, job
        assert job.queue == "ANALY_OK"
        assert job.n_events == expected_events
        assert job.trans_exit_code == 0
        assert (job.pilot_error_code, job.exe_error_code, job.job_dispatcher_error_code,
                job.task_buffer_error_code) == (0, 0, 0, 0)
        assert {"stagein", "setup", "payload", "stageout"} <= set(job.pilot_timing)
        assert job.pilot_timing["payload"] > 0
        assert job.creation_time is not None and job.start_time is not None and job.end_time is not None
        assert before <= job.creation_time <= job.start_time < job.end_time <= datetime.now(timezone.utc)
        assert job.cpu_consumption_time > 0
        assert job.max_rss_kb > 0


def test_slow_fault_stretches_wall_time_not_cpu_time(healthy_run):
    _, jobs = healthy_run
    slow, healthy = jobs["slow"], jobs["whole"]
    assert slow.job_status is JobStatus.FINISHED and slow.pilot_error_code == 0
    assert slow.n_events == healthy.n_events == DATASET_EVENTS
    assert slow.pilot_timing["payload"] >= 0.6 * SLOWDOWN * healthy.pilot_timing["payload"], (slow, healthy)
    assert slow.cpu_consumption_time < 2 * healthy.cpu_consumption_time
    assert slow.pilot_timing["payload"] > 2 * slow.cpu_consumption_time


# -- 2-4. every fault mode, fault windows and probabilities, a real lost file ------------------------
EXPECTED_FAULTS = {  # mode: (pilot error code, step where it happens)  -- ../shared/domain/panda.md
    "container": (1306, "setup"),
    "cvmfs": (1377, "setup"),
    "stagein": (1099, "stagein"),
    "stagein_timeout": (1151, "stagein"),
    "missing_input": (1331, "stagein"),
    "no_local_space": (1098, "stagein"),
    "crash": (1203, "payload"),
    "storage_full": (1333, "stageout"),
    "stageout": (1137, "stageout"),
}
FAULT_EVENTS = 3000


def _mode_queue(mode: str) -> str:
    return f"ANALY_{mode.upper()}"


@pytest.fixture(scope="module")
def fault_run(tmp_path_factory, new_grid_factory):
    """One grid, one queue per fault mode plus window/probability/lost-file queues, all run at once."""
    factory = new_grid_factory(tmp_path_factory.mktemp("faults"))
    clock = ManualClock(T0)
    queues = {_mode_queue(mode): {} for mode in EXPECTED_FAULTS}
    queues.update({"ANALY_FUTURE": {}, "ANALY_PAST": {}, "ANALY_PROB0": {}, "ANALY_LOSTFILE": {}})
    faults = [{"queue": _mode_queue(mode), "mode": mode, "start_after": "0s", "duration": "1h"}
              for mode in EXPECTED_FAULTS]
    faults += [
        {"queue": "ANALY_FUTURE", "mode": "stagein", "start_after": "1h", "duration": "1h"},
        {"queue": "ANALY_PAST", "mode": "stagein", "start": (T0 - timedelta(hours=2)).isoformat(), "duration": "1h"},
        {"queue": "ANALY_PROB0", "mode": "stagein", "start_after": "0s", "duration": "1h", "probability": 0.0},
    ]
    grid = factory.grid(queues, faults=faults, clock=clock, max_parallel_jobs=8)
    # A real lost file: the second replica of the dataset disappears from the endpoint.
    lost_lfn = load_manifest(grid.storage.datasets_dir / ZMUMU).files[1].lfn
    (grid.storage.storage_dir / "ANALY_LOSTFILE_DATADISK" / ZMUMU / lost_lfn).unlink()

    names = [*(_mode_queue(m) for m in EXPECTED_FAULTS), "ANALY_FUTURE", "ANALY_PAST", "ANALY_LOSTFILE",
             "ANALY_PROB0", "ANALY_PROB0", "ANALY_PROB0"]
    ids = grid.submit([factory.request(q, max_events=FAULT_EVENTS) for q in names])
    reports = wait_until_final(grid, ids, timeout=40)
    by_queue: dict[str, list] = {}
    for pid in ids:
        by_queue.setdefault(reports[pid].queue, []).append(reports[pid])
    yield grid, by_queue, lost_lfn
    factory.close()


@pytest.mark.parametrize("mode", list(EXPECTED_FAULTS))
def test_each_fault_mode_fails_with_the_pilot_code_at_its_step(fault_run, mode):
    grid, by_queue, _ = fault_run
    (job,) = by_queue[_mode_queue(mode)]
    code, step = EXPECTED_FAULTS[mode]
    assert job.job_status is JobStatus.FAILED, job
    assert job.pilot_error_code == code, job
    assert job.pilot_error_diag
    timing = job.pilot_timing
    position = STEPS.index(step)
    assert all(timing[later] == 0 for later in STEPS[position + 1:]), timing  # it stopped there
    assert timing[step] > 0, timing
    if step in ("setup", "stagein"):
        assert job.n_events == 0 and job.trans_exit_code is None and timing["payload"] == 0
        assert timing[step] >= (2.0 if mode == "stagein_timeout" else 0.5) - 0.01  # injected delays
    if step == "stagein":
        assert job.pilot_error_diag.startswith("Get error:")
    if step == "stageout":  # the payload ran fully; only the output copy failed
        assert job.pilot_error_diag.startswith("Put error:")
        assert job.trans_exit_code == 0 and job.n_events == FAULT_EVENTS and timing["payload"] > 0
    if mode == "crash":
        assert "SIGSEGV" in job.pilot_error_diag and "signal 11" in job.pilot_error_diag
        assert job.trans_exit_code is None
    if mode == "missing_input":  # names the file it could not find
        assert load_manifest(grid.storage.datasets_dir / ZMUMU).files[0].lfn in job.pilot_error_diag


def test_faults_outside_their_window_or_with_probability_zero_do_not_fire(fault_run):
    grid, by_queue, _ = fault_run
    for queue in ("ANALY_FUTURE", "ANALY_PAST", "ANALY_PROB0"):
        for job in by_queue[queue]:
            assert job.job_status is JobStatus.FINISHED and job.pilot_error_code == 0, job
            assert job.n_events == FAULT_EVENTS
    assert len(by_queue["ANALY_PROB0"]) == 3
    # the faults exist, they were just not active / not drawn
    modes = {(f.queue, f.mode) for f in grid.state.faults()}
    assert {("ANALY_FUTURE", FaultMode.STAGEIN), ("ANALY_PAST", FaultMode.STAGEIN),
            ("ANALY_PROB0", FaultMode.STAGEIN)} <= modes


def test_fault_windows_and_probabilities_pure():
    fault = Fault(queue="Q", mode=FaultMode.STAGEIN, start=T0, until=T0 + timedelta(hours=1))
    assert active_faults([fault], "Q", T0) == [fault]  # start inclusive
    assert active_faults([fault], "Q", T0 - timedelta(seconds=1)) == []
    assert active_faults([fault], "Q", T0 + timedelta(hours=1)) == []  # end exclusive
    assert active_faults([fault], "OTHER", T0) == []
    rng = random.Random(7)
    never = Fault(queue="Q", mode=FaultMode.STAGEIN, start=T0, until=T0 + timedelta(hours=1), probability=0.0)
    assert all(plan_injection([never], 0.0, rng).mode is None for _ in range(2000))
    always = Fault(queue="Q", mode=FaultMode.CVMFS, start=T0, until=T0 + timedelta(hours=1), probability=1.0)
    assert all(plan_injection([always], 0.0, rng).mode is FaultMode.CVMFS for _ in range(2000))
    third = Fault(queue="Q", mode=FaultMode.STAGEOUT, start=T0, until=T0 + timedelta(hours=1), probability=0.3)
    hits = sum(plan_injection([third], 0.0, rng).mode is FaultMode.STAGEOUT for _ in range(4000))
    assert 0.25 < hits / 4000 < 0.35
    crash = Fault(queue="Q", mode=FaultMode.CRASH, start=T0, until=T0 + timedelta(hours=1))
    assert plan_injection([crash], 0.0, rng).payload_fail == "crash"
    stuck = Fault(queue="Q", mode=FaultMode.STUCK, start=T0, until=T0 + timedelta(hours=1))
    assert is_stuck([stuck]) and not is_stuck([always])


def test_a_really_missing_replica_fails_stagein_with_1331(fault_run):
    grid, by_queue, lost_lfn = fault_run
    (job,) = by_queue["ANALY_LOSTFILE"]
    assert job.job_status is JobStatus.FAILED
    assert job.pilot_error_code == 1331
    assert lost_lfn in job.pilot_error_diag
    assert job.pilot_timing["payload"] == 0
    # no fault was injected: the file is really gone, and the catalogue no longer offers the dataset
    assert not [f for f in grid.state.faults() if f.queue == "ANALY_LOSTFILE"]
    assert grid.storage.complete_datasets("ANALY_LOSTFILE_DATADISK", "*") == []
    assert [d.name for d in grid.storage.complete_datasets("ANALY_CVMFS_DATADISK", "*")] == [ZMUMU]


def test_complete_datasets_skips_incomplete_and_absent_replicas(tiny_grid):
    grid = tiny_grid.grid(
        {"ANALY_INC": {"endpoint": {"incomplete": ["*Zmumu*"]}},
         "ANALY_FULL": {},
         "ANALY_DATAONLY": {"endpoint": {"datasets": ["data23_*"]}}},
        datasets=(TINY_ZMUMU, TINY_DATA),
    )
    storage = grid.storage
    # the incomplete replica is there, with part of the files, but is not offered
    assert len(list((storage.storage_dir / "ANALY_INC_DATADISK" / ZMUMU).iterdir())) == 1
    assert storage.complete_datasets("ANALY_INC_DATADISK", "*Zmumu*") == []
    assert [d.name for d in storage.complete_datasets("ANALY_INC_DATADISK", "*")] == [TINY_DATA["name"]]
    assert storage.complete_datasets("ANALY_DATAONLY_DATADISK", "*Zmumu*") == []
    assert [d.name for d in storage.complete_datasets("ANALY_DATAONLY_DATADISK", "*")] == [TINY_DATA["name"]]
    assert storage.complete_datasets("NO_SUCH_DATADISK", "*") == []

    (dataset,) = storage.complete_datasets("ANALY_FULL_DATADISK", "*Zmumu*")
    manifest = load_manifest(storage.datasets_dir / ZMUMU)
    assert (dataset.scope, dataset.name) == (manifest.scope, ZMUMU)
    assert len(dataset.files) == TINY_ZMUMU["files"]
    assert sum(f.events for f in dataset.files) == DATASET_EVENTS
    for got, entry in zip(dataset.files, manifest.files):
        assert (got.lfn, got.guid, got.bytes, got.adler32, got.events) == (
            entry.lfn, entry.guid, entry.bytes, entry.adler32, TINY_ZMUMU["events_per_file"])
        assert (got.dataset, got.scope) == (ZMUMU, manifest.scope)
        assert (storage.storage_dir / "ANALY_FULL_DATADISK" / ZMUMU / got.lfn).stat().st_size == got.bytes


def test_stuck_queue_holds_jobs_activated_until_healed(tiny_grid, wait_final):
    clock = ManualClock(T0)
    grid = tiny_grid.grid(
        {"ANALY_STUCK": {}, "ANALY_ELSEWHERE": {}}, clock=clock,
        faults=[{"queue": "ANALY_STUCK", "mode": "stuck", "start_after": "0s", "duration": "2h"},
                {"queue": "ANALY_ELSEWHERE", "mode": "cvmfs", "start_after": "0s", "duration": "2h"}],
    )
    stuck, elsewhere = grid.submit([tiny_grid.request("ANALY_STUCK"), tiny_grid.request("ANALY_ELSEWHERE")])
    # the grid keeps working for other queues meanwhile
    assert wait_final(grid, [elsewhere])[elsewhere].pilot_error_code == 1377
    for _ in range(5):
        clock.advance(timedelta(minutes=5))
        report = grid.status([stuck])[stuck]
        assert report.job_status is JobStatus.ACTIVATED and report.start_time is None
        assert grid.running_jobs() == 0
        time.sleep(0.02)
    assert grid.state.heal("ANALY_STUCK", clock.now()) == 1
    report = wait_final(grid, [stuck])[stuck]
    assert report.job_status is JobStatus.FINISHED and report.n_events == DATASET_EVENTS
    assert report.start_time == clock.now()


def test_a_server_side_hold_leaves_jobs_defined_until_healed(tiny_grid, wait_final):
    """PanDA leaves a job `defined` while it has not set it up (input not ready): not the site's wait."""
    clock = ManualClock(T0)
    grid = tiny_grid.grid({"ANALY_HELD": {}}, clock=clock,
                          faults=[{"queue": "ANALY_HELD", "mode": "not_activated", "start_after": "0s",
                                   "duration": "2h"}])
    (held,) = grid.submit([tiny_grid.request("ANALY_HELD")])
    for _ in range(3):
        clock.advance(timedelta(minutes=5))
        assert grid.status([held])[held].job_status is JobStatus.DEFINED
    assert grid.state.heal("ANALY_HELD", clock.now()) == 1
    assert wait_final(grid, [held])[held].job_status is JobStatus.FINISHED


# -- 5. queue status ---------------------------------------------------------------------------------
def test_queue_status_gates_dispatch(tiny_grid, wait_final):
    # every queue has a cvmfs fault: jobs that are dispatched fail half a second later, cheaply
    queues = ("ANALY_OFF", "ANALY_TESTQ", "ANALY_BROKER", "ANALY_ON")
    grid = tiny_grid.grid({q: {} for q in queues},
                          faults=[{"queue": q, "mode": "cvmfs", "start_after": "0s"} for q in queues])
    grid.set_queue_status("ANALY_OFF", QueueStatus.OFFLINE, "blacklisted", "test")
    grid.set_queue_status("ANALY_TESTQ", QueueStatus.TEST, "probing", "test")
    grid.set_queue_status("ANALY_BROKER", QueueStatus.BROKEROFF, "draining", "test")
    assert grid.queue_status() == {"ANALY_OFF": QueueStatus.OFFLINE, "ANALY_TESTQ": QueueStatus.TEST,
                                   "ANALY_BROKER": QueueStatus.BROKEROFF, "ANALY_ON": QueueStatus.ONLINE}
    with pytest.raises(ValueError, match="ANALY_NOPE"):
        grid.set_queue_status("ANALY_NOPE", QueueStatus.OFFLINE, "", "test")

    req = tiny_grid.request
    jobs = dict(zip(
        ("off_test", "test_gangarobot", "test_user", "test_label", "broker_test", "on_user"),
        grid.submit([
            req("ANALY_OFF"),
            req("ANALY_TESTQ"),
            req("ANALY_TESTQ", processing_type="analysis", prod_source_label="user"),
            req("ANALY_TESTQ", processing_type="analysis", prod_source_label="test"),
            req("ANALY_BROKER"),
            req("ANALY_ON", processing_type="analysis", prod_source_label="user"),
        ]),
    ))
    held = {jobs["off_test"], jobs["test_user"]}
    dispatched = [pid for pid in jobs.values() if pid not in held]
    grid.tick()
    reports = wait_final(grid, dispatched)
    assert all(r.pilot_error_code == 1377 for r in reports.values())  # they really ran
    for _ in range(3):
        grid.tick()
    for report in grid.status(sorted(held)).values():
        assert report.job_status is JobStatus.ACTIVATED and report.start_time is None

    # the status is the grid's (persistent) state: another grid on the same folder reads it back
    other = GridState(state_dir_of(grid) / "grid.sqlite")
    assert other.queue_statuses()["ANALY_TESTQ"] is QueueStatus.TEST
    other.close()

    grid.set_queue_status("ANALY_OFF", QueueStatus.ONLINE, "back", "test")
    grid.set_queue_status("ANALY_TESTQ", QueueStatus.ONLINE, "back", "test")
    reports = wait_final(grid, sorted(held))
    assert all(r.pilot_error_code == 1377 for r in reports.values())


# -- 6. slots ----------------------------------------------------------------------------------------
def test_slots_per_queue_and_parallel_jobs_for_the_grid(tiny_grid, wait_final):
    queues = {"ANALY_ONE": {"slots": 1}, "ANALY_WIDE_A": {"slots": 4}, "ANALY_WIDE_B": {"slots": 4}}
    # stage-in fails after an injected 0.5 s: jobs occupy their slot without using the CPU
    grid = tiny_grid.grid(queues, max_parallel_jobs=4,
                          faults=[{"queue": q, "mode": "stagein", "start_after": "0s"} for q in queues])
    names = ["ANALY_ONE", "ANALY_WIDE_A", "ANALY_WIDE_B"] * 3 + ["ANALY_WIDE_A", "ANALY_WIDE_B"]
    ids = grid.submit([tiny_grid.request(q) for q in names])
    peaks = {"total": 0, "processes": 0, **{q: 0 for q in queues}}

    def observe(reports):
        running = [r for r in reports.values() if r.job_status is JobStatus.RUNNING]
        peaks["total"] = max(peaks["total"], len(running))
        peaks["processes"] = max(peaks["processes"], grid.running_jobs())
        for q in queues:
            peaks[q] = max(peaks[q], sum(r.queue == q for r in running))

    reports = wait_final(grid, ids, poll=0.02, on_poll=observe)
    assert all(r.pilot_error_code == 1099 for r in reports.values())
    assert peaks["ANALY_ONE"] == 1
    assert peaks["total"] == 4 and peaks["processes"] <= 4
    assert max(peaks["ANALY_WIDE_A"], peaks["ANALY_WIDE_B"]) > 1
    # the same from the recorded times: ANALY_ONE's jobs never overlap, the grid never runs 5
    intervals = sorted((r.start_time, r.end_time) for r in reports.values() if r.queue == "ANALY_ONE")
    assert len(intervals) == 3
    assert all(later[0] >= earlier[1] for earlier, later in zip(intervals, intervals[1:]))
    everything = [(r.start_time, r.end_time) for r in reports.values()]
    for start, _ in everything:
        assert sum(s <= start < e for s, e in everything) <= 4


# -- 7. kill -------------------------------------------------------------------------------------------
def test_kill_cancels_running_and_queued_jobs_not_finished_ones(tiny_grid, wait_final):
    grid = tiny_grid.grid({"ANALY_SLOWDISK": SLOW_DISK, "ANALY_FAST": {}, "ANALY_CLOSED": {}})
    grid.set_queue_status("ANALY_CLOSED", QueueStatus.OFFLINE, "", "test")
    running, done, queued = grid.submit([tiny_grid.request("ANALY_SLOWDISK"), tiny_grid.request("ANALY_FAST"),
                                         tiny_grid.request("ANALY_CLOSED")])
    assert wait_final(grid, [done])[done].job_status is JobStatus.FINISHED
    assert grid.status([running])[running].job_status is JobStatus.RUNNING
    pilot = pilot_process(grid, running)

    assert grid.kill([running, done, queued, 987654]) == {running: True, done: False, queued: True, 987654: False}
    reports = grid.status([running, done, queued])
    for pid in (running, queued):
        assert reports[pid].job_status is JobStatus.CANCELLED
        assert reports[pid].task_buffer_error_code == 100 and reports[pid].end_time is not None
    assert reports[done].job_status is JobStatus.FINISHED and reports[done].task_buffer_error_code == 0
    assert process_gone(pilot)
    with pytest.raises(ProcessLookupError):
        os.killpg(pilot, 0)  # nothing of its session is left either
    assert grid.running_jobs() == 0
    # killing again does nothing, and later ticks do not bring the jobs back
    assert grid.kill([running]) == {running: False}
    grid.set_queue_status("ANALY_CLOSED", QueueStatus.ONLINE, "", "test")
    for _ in range(3):
        grid.tick()
    assert {r.job_status for r in grid.status([running, queued]).values()} == {JobStatus.CANCELLED}
    assert grid.running_jobs() == 0


# -- 8. restart ----------------------------------------------------------------------------------------
def test_a_restarted_grid_fails_orphaned_jobs_and_keeps_queued_ones(tiny_grid):
    first = tiny_grid.grid({"ANALY_SLOWDISK": SLOW_DISK})
    state_dir = state_dir_of(first)
    (orphan,) = first.submit([tiny_grid.request("ANALY_SLOWDISK")])
    first.tick()
    assert first.status([orphan])[orphan].job_status is JobStatus.RUNNING
    (queued,) = first.submit([tiny_grid.request("ANALY_SLOWDISK")])  # defined, never seen by a tick
    first.stop(kill_running=True)
    first.state.close()

    second = tiny_grid.open(first.config, state_dir)
    reports = second.status([orphan, queued, 424242])
    assert reports[424242] is None
    lost = reports[orphan]
    assert lost.job_status is JobStatus.FAILED
    assert lost.job_dispatcher_error_code == 100 and "heartbeat" in lost.job_dispatcher_error_diag
    assert lost.pilot_error_code == 0 and lost.end_time is not None and lost.start_time is not None
    assert reports[queued].job_status is JobStatus.RUNNING  # the new grid dispatched it
    pilot_process(second, queued)
    assert second.kill([queued]) == {queued: True}


# -- 9. max wall time ----------------------------------------------------------------------------------
def test_a_job_over_its_wall_time_is_killed_with_1213(tiny_grid):
    clock = ManualClock(T0)
    grid = tiny_grid.grid({"ANALY_SLOWDISK": SLOW_DISK}, clock=clock)
    (pid,) = grid.submit([tiny_grid.request("ANALY_SLOWDISK", max_wall_seconds=5)])
    grid.tick()
    pilot = pilot_process(grid, pid)
    clock.advance(65)  # max wall time plus the pilot's grace period: still allowed
    assert grid.status([pid])[pid].job_status is JobStatus.RUNNING
    clock.advance(1)
    report = grid.status([pid])[pid]
    assert report.job_status is JobStatus.FAILED
    assert report.pilot_error_code == 1213 and "wall time" in report.pilot_error_diag
    assert report.end_time == clock.now()
    assert process_gone(pilot) and grid.running_jobs() == 0


# -- 10. control from another process: the CLI -------------------------------------------------------
def _cli(files, *args: str):
    return CliRunner().invoke(main, ["--config", str(files.robot_yaml), "grid", *args])


def test_cli_breaks_and_heals_a_running_grid(tiny_grid, wait_final):
    files = tiny_grid.write_files({"ANALY_CLI": {}, "ANALY_CALM": {}})
    grid = tiny_grid.open(load_grid_config(files.grid_yaml), files.state_dir, SystemClock())
    grid.start(period=0.05)

    result = _cli(files, "break", "ANALY_CLI", "--mode", "cvmfs", "--for", "10m")
    assert result.exit_code == 0, result.output
    assert "ANALY_CLI" in result.output and "cvmfs" in result.output
    (broken,) = grid.submit([tiny_grid.request("ANALY_CLI")])
    report = wait_final(grid, [broken])[broken]
    assert report.job_status is JobStatus.FAILED and report.pilot_error_code == 1377

    result = _cli(files, "list", "--json")
    assert result.exit_code == 0, result.output
    rows = {row["queue"]: row for row in json.loads(result.output)}
    assert rows["ANALY_CLI"]["faults"] == ["cvmfs"] and rows["ANALY_CALM"]["faults"] == []
    assert rows["ANALY_CLI"]["status"] == "online"

    result = _cli(files, "break", "ANALY_CLI", "--mode", "stageout", "--start-in", "1h", "--for", "1h")
    assert result.exit_code == 0, result.output
    states = sorted(row["state"] for row in json.loads(_cli(files, "faults", "--json").output))
    assert states == ["active", "scheduled"]

    result = _cli(files, "heal", "ANALY_CLI")  # ends the active fault and cancels the scheduled one
    assert result.exit_code == 0 and "2 fault(s) ended" in result.output, result.output
    assert [row["state"] for row in json.loads(_cli(files, "faults", "--json").output)] == ["ended", "ended"]
    (healed,) = grid.submit([tiny_grid.request("ANALY_CLI")])
    report = wait_final(grid, [healed])[healed]
    assert report.job_status is JobStatus.FINISHED and report.pilot_error_code == 0
    rows = {row["queue"]: row for row in json.loads(_cli(files, "list", "--json").output)}
    assert rows["ANALY_CLI"]["faults"] == []

    faults_before = grid.state.faults()
    result = _cli(files, "break", "ANALY_NOPE", "--mode", "cvmfs")
    assert result.exit_code != 0
    assert "ANALY_NOPE" in result.output
    assert grid.state.faults() == faults_before


# -- 11. scheduled faults across restarts --------------------------------------------------------------
def test_scheduled_faults_are_added_once_and_stay_healed(tiny_grid, wait_final):
    files = tiny_grid.write_files(
        {"ANALY_SCHED": {}},
        faults=[{"queue": "ANALY_SCHED", "mode": "cvmfs", "start_after": "1h", "duration": "2h"},
                {"queue": "ANALY_SCHED", "mode": "stagein", "start": "2026-11-02T08:00:00Z", "duration": "1h"}],
    )
    config = load_grid_config(files.grid_yaml)
    clock = ManualClock(T0)

    def restart() -> EmbeddedGrid:
        for old in tiny_grid.grids:
            old.stop()
            old.state.close()
        return tiny_grid.open(config, files.state_dir, clock)

    grid = restart()
    faults = grid.state.faults()
    assert [(f.mode, f.start, f.until) for f in faults] == [
        (FaultMode.CVMFS, T0 + timedelta(hours=1), T0 + timedelta(hours=3)),
        (FaultMode.STAGEIN, datetime(2026, 11, 2, 8, tzinfo=timezone.utc), datetime(2026, 11, 2, 9, tzinfo=timezone.utc)),
    ]
    clock.advance(timedelta(minutes=30))
    grid = restart()  # start_after still counts from the first start; nothing is added twice
    assert grid.state.faults() == faults

    clock.advance(timedelta(hours=1))  # inside the cvmfs window
    (pid,) = grid.submit([tiny_grid.request("ANALY_SCHED", grid=grid)])
    assert wait_final(grid, [pid])[pid].pilot_error_code == 1377
    healed_at = clock.now()
    assert grid.state.heal("ANALY_SCHED", healed_at) == 2  # the active fault, and the scheduled one cancelled

    clock.advance(timedelta(minutes=1))
    grid = restart()
    after = grid.state.faults()
    assert [(f.mode, f.start, f.until) for f in after] == [
        (FaultMode.CVMFS, T0 + timedelta(hours=1), healed_at), (FaultMode.STAGEIN, healed_at, healed_at)]
    assert not active_faults(after, "ANALY_SCHED", clock.now())
    (pid,) = grid.submit([tiny_grid.request("ANALY_SCHED", grid=grid)])
    report = wait_final(grid, [pid])[pid]
    assert report.job_status is JobStatus.FINISHED and report.pilot_error_code == 0
