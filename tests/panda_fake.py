"""A programmable PanDA server on loopback for the PanDA backend's tests.

It speaks the REST contract panda-client 2.2 uses (/work/shared/domain/panda.md): everything under
`/api/v1/<endpoint>`, a JSON envelope `{"success", "message", "data"}`, jobs submitted as positional
lists in `JobSpec._attributes` / `FileSpec._attributes` order, datetimes sent as
`{"_datetime_object": ...}` and returned as `{"__datetime__": iso}`, missing values as "NULL".

Misbehaviour is scripted per endpoint: `fake.script("job/get_description", "http500", "malformed")`
makes the next two requests to that endpoint misbehave, then it answers normally again;
`fake.always("job/kill", "success_false")` until `fake.always("job/kill", None)`. Modes:

  ok             the normal answer
  http500        HTTP 500 with an HTML error page
  delay          holds the request until the fake stops (past any client timeout), then drops it
  drop           closes the connection without an answer
  malformed      HTTP 200, a body that is not JSON
  success_false  {"success": false, "message": ...}
  empty          success with data [] (no entry per ID)
  null_data      success with data null
  garbage        success with data "garbage"
  bad_state      job dicts with jobStatus "exploded"
  no_state       job dicts without jobStatus
  wrong_id       job dicts carrying another PandaID
  bad_number     job dicts with pilotErrorCode "soon"
  null_ids       submit: every PandaID "NULL" (nothing stored, as the real server without jobDefinitionID)
  partial_null   submit: the first job stored, the others "NULL"
  store_then_500 submit: the jobs are stored, then HTTP 500 is answered

Every request is recorded with its headers, its decoded body and the panda-client environment seen
while it was served (the fake runs in the test's process, so it sees what panda-client was given).
"""
from __future__ import annotations

import itertools
import json
import os
import threading
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from pandaclient.FileSpec import FileSpec
from pandaclient.JobSpec import JobSpec

ENV_SEEN = ("PANDA_AUTH", "PANDA_AUTH_VO", "PANDA_AUTH_ID_TOKEN", "X509_USER_PROXY", "X509_CERT_DIR",
            "PANDA_BEHIND_REAL_LB")
FINAL = {"finished", "failed", "cancelled", "closed"}


@dataclass
class Recorded:
    method: str
    endpoint: str  # the path after /api/v1/
    headers: dict[str, str]
    body: Any
    env: dict[str, str | None]
    mode: str


@dataclass
class FakeJob:
    fields: dict[str, Any]  # JobSpec attribute -> value (None: "NULL" on the wire)
    files: list[dict[str, Any]] = field(default_factory=list)
    archived: bool = False


def _revive(obj: dict[str, Any]) -> Any:
    if "_datetime_object" in obj:
        return datetime.strptime(obj["_datetime_object"], "%Y-%m-%d %H:%M:%S.%f")
    return obj


def decode_jobs(jobs_json: str) -> list[FakeJob]:
    """The `jobs` field of job/submit: positional lists in JobSpec/FileSpec attribute order."""
    out = []
    for state in json.loads(jobs_json, object_hook=_revive):
        *values, files = state
        assert len(values) == len(JobSpec._attributes), "a job is not a list of JobSpec attributes"
        fields = {k: (None if v == "NULL" else v) for k, v in zip(JobSpec._attributes, values)}
        decoded = []
        for file_state in files:
            assert len(file_state) == len(FileSpec._attributes) + 1  # the owner slot, sent as null
            decoded.append({k: (None if v == "NULL" else v) for k, v in zip(FileSpec._attributes, file_state)})
        out.append(FakeJob(fields, decoded))
    return out


def _wire(value: Any) -> Any:
    if value is None:
        return "NULL"
    if isinstance(value, datetime):
        return {"__datetime__": value.isoformat()}
    return value


class FakePanda:
    def __init__(self, port: int = 0):
        self.jobs: dict[int, FakeJob] = {}
        self.requests: list[Recorded] = []
        self.auth_token: str | None = None  # when set, requests without "Bearer <token>" get 403
        self._scripts: dict[str, list[str]] = defaultdict(list)
        self._always: dict[str, str] = {}
        self._ids = itertools.count(7_000_001)
        self._lock = threading.Lock()
        self.release = threading.Event()
        self.server = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/server/panda"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()

    # -- scripting ---------------------------------------------------------------------------------
    def script(self, endpoint: str, *modes: str) -> None:
        self._scripts[endpoint].extend(modes)

    def always(self, endpoint: str, mode: str | None) -> None:
        """`endpoint` "*" applies to every endpoint."""
        if mode is None:
            self._always.pop(endpoint, None)
        else:
            self._always[endpoint] = mode

    def calls(self, endpoint: str) -> list[Recorded]:
        return [r for r in self.requests if r.endpoint == endpoint]

    # -- the grid's side: what happens to jobs -----------------------------------------------------
    def add_job(self, **fields: Any) -> int:
        pid = next(self._ids)
        self.jobs[pid] = FakeJob({"PandaID": pid, "jobStatus": "defined", **fields})
        return pid

    def update(self, pid: int, **fields: Any) -> None:
        self.jobs[pid].fields.update(fields)

    def archive(self, pid: int) -> None:
        self.jobs[pid].archived = True

    def in_queue(self, queue: str) -> list[int]:
        return [pid for pid, job in self.jobs.items()
                if job.fields.get("computingSite") == queue and job.fields.get("jobStatus") not in FINAL]

    def submitted(self) -> list[FakeJob]:
        return [job for call in self.calls("job/submit") if call.mode in ("ok", "store_then_500", "partial_null")
                for job in decode_jobs(call.body["jobs"])]

    # -- serving ------------------------------------------------------------------------------------
    def _mode(self, endpoint: str) -> str:
        with self._lock:
            if self._scripts[endpoint]:
                return self._scripts[endpoint].pop(0)
            return self._always.get(endpoint) or self._always.get("*") or "ok"

    def _job_dict(self, pid: int, mode: str) -> dict[str, Any] | None:
        job = self.jobs.get(pid)
        if job is None:
            return None
        out = {k: _wire(job.fields.get(k)) for k in JobSpec._attributes}
        out["PandaID"] = pid
        if isinstance(job.fields.get("transExitCode"), int):
            out["transExitCode"] = str(job.fields["transExitCode"])  # the server answers it as a string
        out["Files"] = [{k: _wire(f.get(k)) for k in FileSpec._attributes} for f in job.files]
        if mode == "bad_state":
            out["jobStatus"] = "exploded"
        elif mode == "no_state":
            del out["jobStatus"]
        elif mode == "wrong_id":
            out["PandaID"] = pid + 1_000_000
        elif mode == "bad_number":
            out["pilotErrorCode"] = "soon"
        return out

    def _answer(self, endpoint: str, body: Any, mode: str) -> tuple[int, Any]:
        """(HTTP status, data) for a normal answer; data shaped by the data-level modes."""
        ids = [int(i) for i in body.get("job_ids", [])] if isinstance(body, dict) else []
        if mode == "empty":
            return 200, []
        if mode == "null_data":
            return 200, None
        if mode == "garbage":
            return 200, "garbage"
        if endpoint == "system/is_alive":
            return 200, None
        if endpoint == "job/submit":
            jobs = decode_jobs(body["jobs"])
            replies = []
            for k, job in enumerate(jobs):
                if mode == "null_ids" or (mode == "partial_null" and k > 0):
                    replies.append(["NULL", job.fields.get("jobDefinitionID"), {}])
                    continue
                pid = next(self._ids)
                job.fields.update(PandaID=pid, jobStatus="defined", creationTime=datetime(2026, 11, 1, 12, 0))
                self.jobs[pid] = job
                replies.append([pid, job.fields.get("jobDefinitionID"), {"jobsetID": pid}])
            return (500 if mode == "store_then_500" else 200), replies
        if endpoint in ("job/get_description", "job/get_description_incl_archive"):
            archive = endpoint.endswith("incl_archive")
            out = []
            for pid in ids:
                job = self.jobs.get(pid)
                visible = job is not None and (archive or not job.archived)
                out.append(self._job_dict(pid, mode) if visible else None)
            return 200, out
        if endpoint == "job/kill":
            out = []
            for pid in ids:
                job = self.jobs.get(pid)
                if job is None:
                    out.append(False)
                    continue
                if job.fields.get("jobStatus") not in FINAL:
                    job.fields.update(jobStatus="cancelled", taskBufferErrorCode=100,
                                      taskBufferErrorDiag="killed by the owner")
                out.append(True)
            return 200, out
        return 403, f"ERROR : method {endpoint} is forbidden"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _serve(self, method: str) -> None:
                path = self.path.split("?", 1)[0]
                endpoint = path.split("/api/v1/", 1)[-1]
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else {}
                except ValueError:
                    body = raw.decode(errors="replace")
                mode = fake._mode(endpoint)
                env = {k: os.environ.get(k) for k in ENV_SEEN}
                with fake._lock:
                    fake.requests.append(Recorded(method, endpoint, dict(self.headers), body, env, mode))
                if fake.auth_token is not None and self.headers.get("Authorization") != f"Bearer {fake.auth_token}":
                    return self._send(403, b"ERROR : no credentials", "text/plain")
                if mode == "delay":
                    fake.release.wait(10)
                    self.close_connection = True
                    return
                if mode == "drop":
                    self.close_connection = True
                    return
                if mode == "http500":
                    return self._send(500, b"<html><body>500 Internal Server Error</body></html>", "text/html")
                if mode == "malformed":
                    return self._send(200, b'{"success": true, "data": [1, 2', "text/plain")
                if mode == "success_false":
                    return self._send(200, json.dumps({"success": False, "message": "internal problem",
                                                       "data": None}).encode(), "text/plain")
                status, data = fake._answer(endpoint, body, mode)
                if status == 403:
                    return self._send(403, str(data).encode(), "text/plain")
                envelope = {"success": True, "message": "", "data": data}
                # the real server answers JSON with content type text/plain
                self._send(status, json.dumps(envelope).encode(), "text/plain")

            def _send(self, status: int, payload: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_POST(self) -> None:
                self._serve("POST")

            def do_GET(self) -> None:
                self._serve("GET")

        return Handler
