"""The embedded grid's pilot: runs one test job on a "worker node" as a real separate process.

Like PanDA's pilot it sets up, stages the input in from the site's storage endpoint, runs the
payload, stages the output out, and reports what happened in PanDA's vocabulary (pilot error codes
and diagnostics, exit codes, events, CPU time, timings). Faults the grid injects happen at the step
where they happen on a real site, with the pilot's real error codes and messages.

Usage: python -m robot.backends.embedded.pilot JOB.json   (writes result.json beside it)
"""
from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from testjobs.datasets import adler32_of
from testjobs.payloads import EXIT_OUT_OF_MEMORY


class PilotError(Exception):
    def __init__(self, code: int, diag: str):
        super().__init__(diag)
        self.code = code
        self.diag = diag


# Faults injected at stage-in / setup / stage-out: (pilot error code, diagnostic as the pilot words it)
SETUP_FAULTS = {
    "container": (1306, "Singularity/Apptainer failed to start the container: FATAL: container creation failed: mount /cvmfs->/cvmfs error"),
    "cvmfs": (1377, "CVMFS is not alive: /cvmfs/atlas.cern.ch not accessible (probe failed)"),
}
STAGEIN_FAULTS = {
    "stagein": (1099, "Get error: Copy command returned error code 256: xrdcp: [ERROR] Server responded with an error: [3010] Unable to open file"),
    "stagein_timeout": (1151, "Get error: Copy command timed out after 3600 s"),
    "missing_input": (1331, "Get error: No such file or directory: {lfn}"),
    "no_local_space": (1098, "Get error: No space left on device (local work directory full)"),
}
STAGEOUT_FAULTS = {
    "storage_full": (1333, "Put error: No space left on device at the destination storage"),
    "stageout": (1137, "Put error: Copy command returned error code 256: globus_xio: System error in connect"),
}
SIGNAL_CODES = {signal.SIGSEGV: 1203, signal.SIGTERM: 1201, signal.SIGXCPU: 1204, signal.SIGBUS: 1206}
REACHED_MAX_TIME = 1213
PAYLOAD_OUT_OF_MEMORY = 1212
PAYLOAD_EXECUTION_FAILURE = 1305
CHECKSUM_MISMATCH = 1171
MISSING_INPUT = 1331
INJECTED_DELAY = 0.5  # seconds an injected failure takes, so failures are not free
PAYLOADS = ("zmumu", "ttbar")  # what runGen finds on this grid's worker nodes (testjobs.payloads)
COMMAND_NOT_FOUND = 127


def stage_in(job: dict[str, Any], workdir: Path, fault: str | None) -> list[Path]:
    """Copy the inputs from the storage endpoint at the job's share of the site's bandwidth."""
    if fault in STAGEIN_FAULTS:
        time.sleep(INJECTED_DELAY * (4 if fault == "stagein_timeout" else 1))
        code, diag = STAGEIN_FAULTS[fault]
        raise PilotError(code, diag.format(lfn=job["inputs"][0]["lfn"] if job["inputs"] else "(no input)"))
    rate = job["bandwidth_mb_s"] * 1e6
    local = []
    for entry in job["inputs"]:
        source, target = Path(entry["source"]), workdir / entry["lfn"]
        began = time.monotonic()
        try:
            shutil.copyfile(source, target)
        except FileNotFoundError:
            raise PilotError(MISSING_INPUT, f"Get error: No such file or directory: {entry['lfn']}") from None
        time.sleep(max(0.0, entry["bytes"] / rate - (time.monotonic() - began)))
        if adler32_of(target) != entry["adler32"]:
            raise PilotError(CHECKSUM_MISMATCH, f"Get error: checksum mismatch (failed xrdadler32) for {entry['lfn']}")
        local.append(target)
    return local


def run_payload(job: dict[str, Any], workdir: Path, inputs: list[Path], deadline: float) -> dict[str, Any]:
    """Run the payload; returns its job report. Raises PilotError for a failed payload."""
    if job["payload"] not in PAYLOADS:
        raise PilotError(PAYLOAD_EXECUTION_FAILURE, f"Payload failed with exit code {COMMAND_NOT_FOUND}:"
                                                    f" {job['payload'][:100]}: command not found")
    command = [
        sys.executable, "-m", f"testjobs.payloads.{job['payload']}",
        "--input", *map(str, inputs),
        "--max-events", str(job["max_events"]),
        "--output", str(workdir / "output.root"),
        "--report", str(workdir / "report.json"),
    ]
    if job["inject"].get("payload_fail"):
        command += ["--fail-mode", job["inject"]["payload_fail"]]
    with (workdir / "payload.log").open("wb") as log:
        process = subprocess.Popen(command, cwd=workdir, stdout=log, stderr=subprocess.STDOUT)
        try:
            returncode = process.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise PilotError(REACHED_MAX_TIME, f"Reached maximum wall time ({job['max_wall_seconds']} s): payload killed") from None
    report = _read_json(workdir / "report.json")
    if returncode < 0:
        signum = -returncode
        name = signal.Signals(signum).name
        raise PilotError(SIGNAL_CODES.get(signum, 1200), f"Payload was killed by signal {signum} ({name})", ) from None
    if returncode == EXIT_OUT_OF_MEMORY:
        raise PilotError(PAYLOAD_OUT_OF_MEMORY, f"Payload ran out of memory: {report.get('exit_message', '')}")
    if returncode != 0:
        message = report.get("exit_message") or _tail(workdir / "payload.log")
        raise PilotError(PAYLOAD_EXECUTION_FAILURE, f"Payload failed with exit code {returncode}: {message}")
    return report


def stage_out(job: dict[str, Any], workdir: Path, fault: str | None) -> None:
    if fault in STAGEOUT_FAULTS:
        time.sleep(INJECTED_DELAY)
        raise PilotError(*STAGEOUT_FAULTS[fault])
    destination = Path(job["output_dir"])
    destination.mkdir(parents=True, exist_ok=True)
    target = destination / f"{job['job_name']}.root"
    shutil.copyfile(workdir / "output.root", target)
    # The robot never reads test outputs back: they are deleted once the copy is verified.
    if target.stat().st_size != (workdir / "output.root").stat().st_size:
        raise PilotError(1137, "Put error: size mismatch after copy")
    target.unlink()


def run_job(job: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """Run every step; returns the result PanDA would store for the job."""
    began = time.monotonic()
    deadline = began + job["max_wall_seconds"]
    timing = {"getjob": 0.0, "stagein": 0.0, "setup": 0.0, "payload": 0.0, "stageout": 0.0}
    result: dict[str, Any] = {"job_status": "failed", "pilot_error_code": 0, "pilot_error_diag": "",
                              "exe_error_code": 0, "exe_error_diag": "", "trans_exit_code": None,
                              "n_events": 0, "cpu_consumption_time": 0.0, "max_rss_kb": 0, "pilot_timing": timing}
    fault = job["inject"].get("mode")
    step = "setup"
    try:
        mark = time.monotonic()
        if job.get("cannot_run"):  # accepted by PanDA, but nothing here can run it
            raise PilotError(*job["cannot_run"])
        if fault in SETUP_FAULTS:
            time.sleep(INJECTED_DELAY)
            raise PilotError(*SETUP_FAULTS[fault])
        timing["setup"] = time.monotonic() - mark

        step, mark = "stagein", time.monotonic()
        inputs = stage_in(job, workdir, fault)
        timing["stagein"] = time.monotonic() - mark

        step, mark = "payload", time.monotonic()
        report = run_payload(job, workdir, inputs, deadline)
        # A slow or overloaded node: the same work takes longer in wall time, not in CPU time.
        slowdown = job["inject"].get("slowdown", 1.0) / job["cpu_speed"]
        time.sleep(max(0.0, (time.monotonic() - mark) * (slowdown - 1.0)))
        timing["payload"] = time.monotonic() - mark
        result.update(trans_exit_code=0, n_events=int(report.get("events_read", 0)))

        step, mark = "stageout", time.monotonic()
        stage_out(job, workdir, fault)
        timing["stageout"] = time.monotonic() - mark
        result["job_status"] = "finished"
    except PilotError as error:
        timing[step] = time.monotonic() - mark
        result.update(pilot_error_code=error.code, pilot_error_diag=error.diag)
        if step == "payload":
            report = _read_json(workdir / "report.json")
            exit_code = report.get("exit_code")
            result.update(trans_exit_code=exit_code, exe_error_code=exit_code or 0,
                          exe_error_diag=report.get("exit_message", ""), n_events=int(report.get("events_read", 0)))
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    result.update(cpu_consumption_time=round(usage.ru_utime + usage.ru_stime, 3), max_rss_kb=int(usage.ru_maxrss))
    result["pilot_timing"] = {k: round(v, 3) for k, v in timing.items()}
    return result


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _tail(path: Path, lines: int = 3) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])[:500]
    except OSError:
        return ""


def main(argv: list[str]) -> int:
    job_file = Path(argv[0])
    job = json.loads(job_file.read_text())
    result = run_job(job, job_file.parent)
    temporary = job_file.parent / "result.json.tmp"
    temporary.write_text(json.dumps(result))
    os.replace(temporary, job_file.parent / "result.json")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
