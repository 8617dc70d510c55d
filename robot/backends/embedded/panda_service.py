"""The embedded grid served over PanDA's REST contract, so the real panda-client can drive it.

A small WSGI app maps `/api/v1/<endpoint>` onto an `EmbeddedGrid`, speaking the contract as
panda-client 2.2 speaks it (see /work/shared/domain/panda.md):

* every answer is the envelope ``{"success", "message", "data"}``, JSON sent as ``text/plain`` like
  the real server; an unknown endpoint gets HTTP 403 ``ERROR : method X is forbidden``;
* `job/submit` takes ``{"jobs": "<JSON>"}``: per job the 126 JobSpec attributes in
  `JobSpec._attributes` order, then its files (FileSpec attributes in order), datetimes as
  ``{"_datetime_object": ...}``. It answers ``[[PandaID, jobDefinitionID, {"jobsetID": ...}], ...]``.
  The payload, event count and input files travel in `jobParameters` (`job_parameters.py`). As
  PanDA, it accepts another transformation, parameters without `--max-events` (all events), no
  input file and no `maxWalltime`; what its pilots cannot run then fails at run time with the
  pilot's codes (1149 for a transformation other than runGen, 1349 for parameters runGen cannot
  read, 1305 for a payload that fails). An unknown queue or inputs the grid's catalogue does not
  hold refuse the whole bulk (``success: false``, the message names the job and the field) and
  nothing of it is stored. A job without `jobDefinitionID` is answered as the real
  server answers it: success, PandaID ``"NULL"``, nothing stored;
* `job/get_description` (and `..._incl_archive`, the same here) answers one JobSpec dict per ID
  (``null`` for an unknown one) with its `Files`: missing values ``"NULL"``, `transExitCode` a
  string, datetimes ``{"__datetime__": iso}`` (naive UTC, as PanDA stores them);
* `job/kill` answers one boolean per ID (false for a job already final or unknown);
  `system/is_alive`; `metaconfig/get_site_specs`. Nothing else: panda-server 1.0.4 has no call that
  finds a job by its name or its jobDefinitionID (`getPandIDsWithJobID` answers 403 there, and here);
* `pilot/acquire_jobs` and `pilot/update_job` for the grid's own workers (pull mode, `workers.py`);
* beside the server, PanDA's monitor (BigPanDA): `GET /jobs/?json&jobname=NAME` lists the jobs of
  that name as BigPanDA does (``{"jobs": [...]}``, the job table's columns in lower case, null for
  nothing). `jobname` is matched as BigPanDA matches it (case-insensitive, ``|`` between alternatives,
  ``*`` any text) over every job the grid holds (BigPanDA's "deep query" when no time window is
  given); `limit` caps the answer. `GET /jobs/?json&prodsourcelabel=user&endtimerange=FROM|TO` lists
  the grid's background users' jobs that ended in that window, one record each (with `jobstatus`,
  `fields`, `outputs` and `limit` read as BigPanDA reads them), so the robot's users' jobs reader works
  against it as against the real monitor. Other selections of BigPanDA's job list are not served (HTTP
  400 names them), so nothing is answered that the real monitor would answer otherwise.

`serve(grid)` runs it on loopback in a daemon thread and returns a handle with the PANDA_URL.
"""
from __future__ import annotations

import gzip
import json
import logging
import socket
import threading
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pandaclient.FileSpec import FileSpec
from pandaclient.JobSpec import JobSpec
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

from robot.backends.base import InputFile, JobRequest
from robot.backends.embedded.grid import EmbeddedGrid
from robot.backends.job_parameters import OUTPUT_FILE, TRANSFORMATION, runnable
from robot.clock import as_utc
from robot.jobstates import JobStatus, QueueStatus
from testjobs.datasets import load_manifest

log = logging.getLogger(__name__)

JOB_ATTRIBUTES: tuple[str, ...] = JobSpec._attributes
FILE_ATTRIBUTES: tuple[str, ...] = FileSpec._attributes
NULL = "NULL"
TIMING_KEYS = ("getjob", "stagein", "payload", "stageout", "setup")  # pilotTiming, in this order
SC_INVALID = 50  # pilot protocol: a request that makes no sense
MAX_IDS = 5500  # the real server's cap per description call
DEFAULT_WALLTIME = 86400  # seconds a job without maxWalltime may run (a queue's usual limit)
MONITOR_PARAMETERS = {"json", "jobname", "limit"}  # what the embedded monitor's job list serves by name
# ... and for the users' jobs that ended in a time window (the background users of the embedded grid)
USER_LIST_PARAMETERS = {"json", "prodsourcelabel", "jobstatus", "endtimerange", "date_from", "date_to", "limit",
                        "fields", "outputs"}
USER_LIST_LIMIT = 20_000  # BigPanDA's default per job table for final states
MONITOR_TIME = "%Y-%m-%dT%H:%M"  # BigPanDA's endtimerange / date_from / date_to spelling
MONITOR_LIMIT = 999_999  # BigPanDA's limit for a deep query (a jobname and no time window)


class Refused(ValueError):
    """A submitted job this grid cannot run; the message names the field."""


def _null(value: Any) -> bool:
    return value is None or value == NULL or value == ""


def _envelope(success: bool, data: Any = None, message: str = "") -> dict[str, Any]:
    return {"success": success, "message": message, "data": data}


# -- decoding a submission -----------------------------------------------------------------------------
def _datetime_hook(obj: dict[str, Any]) -> Any:
    """panda-client's `{"_datetime_object": "%Y-%m-%d %H:%M:%S.%f"}`, kept in the form we answer with."""
    if "_datetime_object" in obj:
        when = datetime.strptime(str(obj["_datetime_object"]), "%Y-%m-%d %H:%M:%S.%f")
        return {"__datetime__": when.isoformat()}
    return obj


def decode_jobs(text: Any) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """The `jobs` parameter of job/submit as (JobSpec attributes, [FileSpec attributes]) per job."""
    if not isinstance(text, str):
        raise Refused("Failed to deserialize jobs: 'jobs' must be a JSON string")
    try:
        states = json.loads(text, object_hook=_datetime_hook)
    except ValueError as exc:
        raise Refused(f"Failed to deserialize jobs: {exc}") from None
    if not isinstance(states, list):
        raise Refused("Failed to deserialize jobs: not a list of jobs")
    jobs = []
    for index, state in enumerate(states):
        if not isinstance(state, list) or len(state) != len(JOB_ATTRIBUTES) + 1 or not isinstance(state[-1], list):
            raise Refused(f"Failed to deserialize jobs: job {index} is not a list of the {len(JOB_ATTRIBUTES)} "
                          "JobSpec attributes followed by its files")
        files = []
        for k, file_state in enumerate(state[-1]):
            if not isinstance(file_state, list) or len(file_state) < len(FILE_ATTRIBUTES):
                raise Refused(f"Failed to deserialize jobs: job {index} Files[{k}] is not a list of the "
                              f"{len(FILE_ATTRIBUTES)} FileSpec attributes")
            files.append(dict(zip(FILE_ATTRIBUTES, file_state)))
        jobs.append((dict(zip(JOB_ATTRIBUTES, state[:-1])), files))
    return jobs


# -- the app ------------------------------------------------------------------------------------------
class PandaService:
    """The WSGI app: `/api/v1/<endpoint>` of PanDA's REST API onto one EmbeddedGrid."""

    def __init__(self, grid: EmbeddedGrid):
        self.grid = grid
        self._queues = {q.name: q for q in grid.storage.queue_settings()}
        self._manifests: dict[str, Any] = {}
        self._manifest_lock = threading.Lock()
        self.endpoints: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            "job/submit": self.submit,
            "job/get_description": self.get_description,
            "job/get_description_incl_archive": self.get_description,
            "job/kill": self.kill,
            "system/is_alive": self.is_alive,
            "metaconfig/get_site_specs": self.get_site_specs,
            "pilot/acquire_jobs": self.acquire_jobs,
            "pilot/update_job": self.update_job,
        }

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        request = Request(environ)
        path = request.path.rstrip("/")
        if path == "/jobs" and request.method == "GET":
            return self.monitor_jobs(request)(environ, start_response)
        endpoint = path[len("/api/v1/"):] if path.startswith("/api/v1/") else path.lstrip("/")
        handler = self.endpoints.get(endpoint) if path.startswith("/api/v1/") else None
        if handler is None or request.method not in ("GET", "POST"):
            response = Response(f"ERROR : method {endpoint} is forbidden", status=403, content_type="text/plain")
            return response(environ, start_response)
        try:
            params = _params(request)
        except ValueError as exc:
            body = _envelope(False, message=f"cannot read the request: {exc}")
        else:
            try:
                body = handler(params)
            except Exception as exc:  # a bug here must not look like an answer
                log.exception("PanDA service: %s failed", endpoint)
                response = Response(f"ERROR : {endpoint} failed: {type(exc).__name__}", status=500,
                                    content_type="text/plain")
                return response(environ, start_response)
        response = Response(json.dumps(body), status=200, content_type="text/plain")
        return response(environ, start_response)

    # -- job/submit ----------------------------------------------------------------------------
    def submit(self, params: dict[str, Any]) -> dict[str, Any]:
        try:
            jobs = decode_jobs(params.get("jobs"))
        except Refused as exc:
            return _envelope(False, message=str(exc))
        if not jobs:
            return _envelope(False, message="No jobs were submitted")
        requests, extras, replies = [], [], []
        for index, (spec, files) in enumerate(jobs):
            if _null(spec.get("jobDefinitionID")):
                replies.append(None)  # the real server stores nothing for it, yet answers success
                continue
            try:
                request, cannot_run = self.job_request(spec, files)
            except Refused as exc:
                name = spec.get("jobName")
                return _envelope(False, message=f"job {index} ({name if not _null(name) else 'no jobName'}): {exc}; "
                                                "nothing of this bulk was stored")
            stored_spec = {k: v for k, v in spec.items() if not _null(v)}
            extras.append({"panda": stored_spec, "panda_files": files, "bulk_position": len(requests),
                           **({"cannot_run": list(cannot_run)} if cannot_run else {})})
            requests.append(request)
            replies.append(spec)
        ids = iter(self.grid.submit(requests, extras) if requests else [])
        data = []
        first = None
        for spec in replies:
            if spec is None:
                data.append([NULL, NULL, {"jobsetID": NULL}])
                continue
            pid = next(ids)
            first = first or pid
            jobset = spec["jobsetID"] if not _null(spec.get("jobsetID")) else first
            data.append([pid, spec["jobDefinitionID"], {"jobsetID": jobset}])
        return _envelope(True, data)

    def job_request(self, spec: dict[str, Any], files: list[dict[str, Any]]
                    ) -> tuple[JobRequest, tuple[int, str] | None]:
        """What the grid runs for one submitted JobSpec, and the pilot error it fails with if its pilots
        cannot run it (another transformation, parameters runGen cannot read). As PanDA, the service
        accepts a job without input files or maxWalltime; Refused names the field that does not fit."""
        queue = spec.get("computingSite")
        if queue not in self._queues:
            raise Refused(f"computingSite {queue!r} is not a queue of this grid")
        params, cannot_run = runnable(spec.get("transformation"), spec.get("jobParameters"))
        try:
            wall = int(spec.get("maxWalltime"))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            wall = 0
        wall = wall if wall > 0 else DEFAULT_WALLTIME
        inputs = [(k, f) for k, f in enumerate(files) if f.get("type") == "input"]
        datasets = {_dataset_name(f.get("dataset")) for _, f in inputs}
        if len(datasets) > 1:
            raise Refused(f"Files: inputs from {len(datasets)} datasets, one at most expected")
        dataset = next(iter(datasets), "")
        manifest = self._manifest(dataset) if inputs else None
        if inputs and manifest is None:
            k = inputs[0][0]
            raise Refused(f"Files[{k}].dataset {inputs[0][1].get('dataset')!r} is not in the grid's catalogue")
        catalogue = {entry.lfn: entry for entry in manifest.files} if manifest else {}
        input_files = []
        for k, f in inputs:
            entry = catalogue.get(f.get("lfn"))
            if entry is None:
                raise Refused(f"Files[{k}].lfn {f.get('lfn')!r} is not a file of dataset {dataset}")
            try:
                size = entry.bytes if _null(f.get("fsize")) else int(f["fsize"])
            except (TypeError, ValueError):
                raise Refused(f"Files[{k}].fsize {f.get('fsize')!r} is not a number of bytes") from None
            checksum = f.get("checksum")
            adler32 = entry.adler32 if _null(checksum) else str(checksum).removeprefix("ad:")
            input_files.append(InputFile(
                lfn=entry.lfn, guid=entry.guid if _null(f.get("GUID")) else str(f["GUID"]),
                scope=manifest.scope if _null(f.get("scope")) else str(f["scope"]), dataset=dataset,
                bytes=size, events=entry.events, adler32=adler32))
        name = spec.get("jobName")
        return JobRequest(
            job_name=str(name) if not _null(name) else f"panda.{uuid.uuid4()}", queue=queue,
            payload=params.payload if params else "", dataset=dataset, files=tuple(input_files),
            max_events=params.max_events if params else 0, max_wall_seconds=wall,
            processing_type="" if _null(spec.get("processingType")) else str(spec["processingType"]),
            prod_source_label="" if _null(spec.get("prodSourceLabel")) else str(spec["prodSourceLabel"]),
        ), cannot_run

    def _manifest(self, dataset: str) -> Any:
        with self._manifest_lock:
            if dataset not in self._manifests:
                path = self.grid.storage.datasets_dir / dataset / "manifest.json"
                self._manifests[dataset] = load_manifest(path) if dataset and path.exists() else None
            return self._manifests[dataset]

    # -- job/get_description, job/kill ----------------------------------------------------------
    def get_description(self, params: dict[str, Any]) -> dict[str, Any]:
        ids = _job_ids(params.get("job_ids"))[:MAX_IDS]
        rows = self.grid.job_rows([pid for pid in ids if pid is not None])
        return _envelope(True, [describe(pid, rows[pid]) if pid in rows else None for pid in ids])

    def kill(self, params: dict[str, Any]) -> dict[str, Any]:
        ids = _job_ids(params.get("job_ids"))
        killed = self.grid.kill([pid for pid in ids if pid is not None])
        return _envelope(True, [killed.get(pid, False) if pid is not None else False for pid in ids])

    # -- the monitor's job list (BigPanDA) ----------------------------------------------------------
    def monitor_jobs(self, request: Request) -> Response:
        """`/jobs/?json&jobname=...`: the jobs of these names as BigPanDA lists them (a users' job list goes to
        monitor_user_jobs)."""
        params = {key: request.args.get(key, "") for key in request.args}
        if "jobname" not in params and params.get("prodsourcelabel") == "user":
            return self.monitor_user_jobs(params)
        unserved = sorted(set(params) - MONITOR_PARAMETERS)
        pattern = params.get("jobname", "")
        if unserved or not pattern:
            what = f"selection {', '.join(unserved)}" if unserved else "a job list without jobname"
            return Response(f"this embedded monitor serves /jobs/?json&jobname=... only, not {what}", status=400,
                            content_type="text/plain")
        try:
            limit = int(params.get("limit") or MONITOR_LIMIT)
        except ValueError:
            return Response(f"Illegal value '{params['limit']}' for limit", status=400, content_type="text/plain")
        ids = sorted(self.grid.find_like(pattern.split("|")))[:max(0, limit)]
        rows = self.grid.job_rows(ids)
        jobs = [monitor_record(pid, rows[pid]) for pid in ids if pid in rows]
        return Response(json.dumps({"selectionsummary": [], "jobs": jobs}), status=200,
                        content_type="application/json")

    def monitor_user_jobs(self, params: dict[str, str]) -> Response:
        """`/jobs/?json&prodsourcelabel=user&endtimerange=FROM|TO...`: the grid's background users' jobs that
        ended in the window, one record each as BigPanDA lists them (`jobstatus`, `fields`, `outputs`, `limit`
        as it reads them); `date_from`/`date_to` select the same window (a drawn job is not modified after its
        end)."""
        def refuse(text: str) -> Response:
            return Response(text, status=400, content_type="text/plain")

        unserved = sorted(set(params) - USER_LIST_PARAMETERS)
        if unserved:
            return refuse(f"this embedded monitor serves users' jobs by end time only, not selection {', '.join(unserved)}")
        try:
            windows = [tuple(datetime.strptime(t, MONITOR_TIME).replace(tzinfo=UTC) for t in pair)
                       for pair in ((params["endtimerange"].split("|") if "endtimerange" in params else None),
                                    ((params["date_from"], params["date_to"]) if "date_from" in params else None))
                       if pair is not None]
            limit = int(params.get("limit") or USER_LIST_LIMIT)
        except (ValueError, KeyError, TypeError):
            return refuse("Illegal time window or limit: endtimerange=%Y-%m-%dT%H:%M|%Y-%m-%dT%H:%M expected")
        if not windows or any(len(w) != 2 for w in windows):
            return refuse("a users' job list needs endtimerange=FROM|TO (or date_from and date_to)")
        since, until = max(w[0] for w in windows), min(w[1] for w in windows)
        states = {s for s in params.get("jobstatus", "").replace(",", "|").split("|") if s}
        fields = [f for f in params.get("fields", "").split(",") if f]
        jobs = []
        for queue, when, code in self.grid.user_job_ends(since, until):
            record = user_job_record(queue, when, code)
            if states and record["jobstatus"] not in states:
                continue
            jobs.append({f: record.get(f) for f in fields} if fields else record)
        jobs = jobs[:max(0, limit)]
        outputs = params.get("outputs", "")
        answer = {"jobs": jobs} if outputs == "jobs" else {"selectionsummary": [], "jobs": jobs, "errsByCount": []}
        return Response(json.dumps(answer), status=200, content_type="application/json")

    # -- system, metaconfig ------------------------------------------------------------------------
    def is_alive(self, params: dict[str, Any]) -> dict[str, Any]:
        return _envelope(True, None, "alive")

    def get_site_specs(self, params: dict[str, Any]) -> dict[str, Any]:
        kind = params.get("type") or "analysis"
        if kind not in ("analysis", "all"):
            return _envelope(True, {})
        statuses = self.grid.queue_status()
        return _envelope(True, {
            q.name: {"sitename": q.name, "nickname": q.name, "panda_resource": q.name,
                     "status": statuses.get(q.name, QueueStatus.ONLINE).value, "type": "analysis",
                     "cloud": q.cloud, "site": q.site, "pandasite": q.site, "ddm": q.endpoint,
                     "astorages": {"read_lan": [q.endpoint], "write_lan": [q.endpoint]},
                     "corecount": 1, "slots": q.slots}
            for q in self._queues.values()})

    # -- pilot/acquire_jobs, pilot/update_job -------------------------------------------------------
    def acquire_jobs(self, params: dict[str, Any]) -> dict[str, Any]:
        queue = params.get("site_name")
        if queue not in self._queues:
            return _envelope(False, message=f"site_name {queue!r} is not a queue of this grid")
        if self.grid.dispatch != "pull":
            return _envelope(False, message="No jobs in PanDA (this grid dispatches its jobs itself)")
        try:
            n_jobs = max(1, int(params.get("n_jobs") or 1))
        except (TypeError, ValueError):
            n_jobs = 1
        taken = self.grid.acquire_jobs(queue, n_jobs, node=str(params.get("node") or ""))
        if not taken:
            return _envelope(False, message="No jobs in PanDA")
        endpoint = self._queues[queue].endpoint
        jobs = [pilot_job_description(pid, row, pilot_job, endpoint) for pid, row, pilot_job in taken]
        return _envelope(True, {"StatusCode": 0, "jobs": jobs})

    def update_job(self, params: dict[str, Any]) -> dict[str, Any]:
        try:
            panda_id = int(params.get("job_id"))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return _envelope(False, {"StatusCode": SC_INVALID}, f"job_id {params.get('job_id')!r} is not a PanDA ID")
        job_status = params.get("job_status")
        if job_status not in ("starting", "running", "holding", "finished", "failed"):
            return _envelope(False, {"StatusCode": SC_INVALID}, f"Invalid job status: {job_status}")
        code, answer = self.grid.update_job(panda_id, job_status, pilot_values(params))
        if code:
            return _envelope(True, {"StatusCode": code, "ErrorDiag": answer, "command": NULL}, answer)
        return _envelope(True, {"StatusCode": 0, "command": answer})


# -- request parameters ------------------------------------------------------------------------------
def _params(request: Request) -> dict[str, Any]:
    """Query string, then the body: JSON (panda-client's json_out, gzipped or not) or a form."""
    params: dict[str, Any] = {}
    for key in request.args:
        values = request.args.getlist(key)
        params[key] = values if len(values) > 1 else values[0]
    body = request.get_data(cache=True)
    if body[:2] == b"\x1f\x8b":
        body = gzip.decompress(body)
    if body.strip()[:1] in (b"{", b"["):
        decoded = json.loads(body)
        if not isinstance(decoded, dict):
            raise ValueError("the JSON body is not an object")
        params.update(decoded)
    elif body:
        for key in request.form:
            values = request.form.getlist(key)
            params[key] = values if len(values) > 1 else values[0]
    return params


def _job_ids(value: Any) -> list[int | None]:
    """job_ids as a list (or one ID, or a comma-separated string); None where an ID is no number."""
    if isinstance(value, str):
        value = value.strip("[]").split(",") if value.strip() else []
    elif not isinstance(value, (list, tuple)):
        value = [] if value is None else [value]
    ids: list[int | None] = []
    for item in value:
        try:
            ids.append(int(item) if not isinstance(item, bool) else None)
        except (TypeError, ValueError):
            ids.append(None)
    return ids


def _dataset_name(dataset: Any) -> str:
    """FileSpec.dataset is `name` or `scope:name`."""
    text = "" if _null(dataset) else str(dataset)
    return text.split(":", 1)[1] if ":" in text else text


def _int_or_none(value: Any, cast: Callable[[Any], Any] = int) -> Any:
    if _null(value):
        return None
    try:
        return cast(value)
    except (TypeError, ValueError):
        return None


def pilot_values(params: dict[str, Any]) -> dict[str, Any]:
    """update_job's parameters as the grid's job fields (bad values are ignored, as PanDA does)."""
    values = {
        "trans_exit_code": _int_or_none(params.get("trans_exit_code")),
        "pilot_error_code": _int_or_none(params.get("pilot_error_code")),
        "pilot_error_diag": None if _null(params.get("pilot_error_diag")) else str(params["pilot_error_diag"])[:500],
        "exe_error_code": _int_or_none(params.get("exe_error_code")),
        "exe_error_diag": None if _null(params.get("exe_error_diag")) else str(params["exe_error_diag"])[:500],
        "n_events": _int_or_none(params.get("n_events")),
        "cpu_consumption_time": _int_or_none(params.get("cpu_consumption_time"), float),
        "max_rss_kb": _int_or_none(params.get("max_rss"), lambda v: int(float(v))),
        "core_count": _int_or_none(params.get("core_count")),
        "node": None if _null(params.get("node")) else str(params["node"])[:128],
    }
    timing = params.get("pilot_timing")
    if isinstance(timing, str) and not _null(timing):
        parsed = {}
        for key, part in zip(TIMING_KEYS, timing.split("|")):
            try:
                parsed[key] = float(part)
            except ValueError:
                continue
        values["pilot_timing"] = parsed
    return values


# -- answers -----------------------------------------------------------------------------------------
def _when(text: str | None) -> Any:
    """A stored time as PanDA sends it: {"__datetime__": iso}, naive UTC."""
    if not text:
        return NULL
    return {"__datetime__": as_utc(datetime.fromisoformat(text)).replace(tzinfo=None).isoformat()}


def _text(value: Any) -> Any:
    return NULL if value is None or value == "" else value


def format_timing(timing: dict[str, float]) -> str:
    return "|".join(f"{float(timing.get(key, 0.0)):g}" for key in TIMING_KEYS)


def describe(pid: int, row: dict[str, Any]) -> dict[str, Any]:
    """A job row as PanDA describes a job: the JobSpec attributes, "NULL" where unknown, and `Files`."""
    job: dict[str, Any] = {attr: NULL for attr in JOB_ATTRIBUTES}
    job.update(row.get("panda", {}))
    started = bool(row.get("start_time"))
    trans_exit = row.get("trans_exit_code")
    status = row["job_status"]
    job.update(
        PandaID=pid, jobStatus=status, computingSite=row["queue"], jobName=row["job_name"],
        processingType=_text(row.get("processing_type")), prodSourceLabel=_text(row.get("prod_source_label")),
        maxWalltime=row["max_wall_seconds"], transformation=job.get("transformation", NULL),
        creationTime=_when(row.get("creation_time")), startTime=_when(row.get("start_time")),
        endTime=_when(row.get("end_time")),
        transExitCode=NULL if trans_exit is None else str(trans_exit),
        pilotErrorCode=row.get("pilot_error_code", 0), pilotErrorDiag=_text(row.get("pilot_error_diag")),
        exeErrorCode=row.get("exe_error_code", 0), exeErrorDiag=_text(row.get("exe_error_diag")),
        ddmErrorCode=row.get("ddm_error_code", 0), ddmErrorDiag=_text(row.get("ddm_error_diag")),
        supErrorCode=row.get("sup_error_code", 0),
        taskBufferErrorCode=row.get("task_buffer_error_code", 0),
        taskBufferErrorDiag=_text(row.get("task_buffer_error_diag")),
        jobDispatcherErrorCode=row.get("job_dispatcher_error_code", 0),
        jobDispatcherErrorDiag=_text(row.get("job_dispatcher_error_diag")),
        nEvents=row.get("n_events", 0), cpuConsumptionTime=row.get("cpu_consumption_time", 0),
        cpuConsumptionUnit="s" if "cpu_consumption_time" in row else NULL,
        maxRSS=row["max_rss_kb"] if row.get("max_rss_kb") else NULL,
        actualCoreCount=row.get("core_count", 1) if started else NULL,
        attemptNr=job.get("attemptNr") if not _null(job.get("attemptNr")) else 0,
        pilotTiming=format_timing(row["pilot_timing"]) if row.get("pilot_timing") else NULL,
        modificationHost=_text(row.get("node")),
    )
    if _null(job.get("jobsetID")) and "bulk_position" in row:
        job["jobsetID"] = pid - row["bulk_position"]  # the bulk's first PandaID (IDs of a bulk are consecutive)
    job["Files"] = [_describe_file(pid, k, f, status) for k, f in enumerate(_files_of(row))]
    return job


def _files_of(row: dict[str, Any]) -> list[dict[str, Any]]:
    """The FileSpecs as submitted; for a job submitted to the grid directly, its inputs."""
    if "panda_files" in row:
        return row["panda_files"]
    return [{"type": "input", "lfn": f["lfn"], "GUID": f["guid"], "scope": f["scope"], "dataset": f["dataset"],
             "prodDBlock": f["dataset"], "fsize": f["bytes"], "checksum": f"ad:{f['adler32']}" if f["adler32"] else NULL}
            for f in row["files"]]


def user_job_record(queue: str, end: datetime, code: int) -> dict[str, Any]:
    """A background user's job as BigPanDA's job list has it (the few columns a user's job fills here; the
    PandaID a stable number from the queue and end time, far above the grid's own)."""
    when = end.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="seconds")
    return {"pandaid": 10**12 + zlib.crc32(f"{queue}|{when}".encode()), "computingsite": queue,
            "jobstatus": JobStatus.FAILED.value if code else JobStatus.FINISHED.value, "prodsourcelabel": "user",
            "processingtype": "panda-client", "creationtime": when, "endtime": when, "modificationtime": when,
            "piloterrorcode": code, "piloterrordiag": f"pilot error {code}" if code else None, "exeerrorcode": 0,
            "ddmerrorcode": 0, "taskbuffererrorcode": 0, "jobdispatchererrorcode": 0, "superrorcode": 0}


def monitor_record(pid: int, row: dict[str, Any]) -> dict[str, Any]:
    """A job as BigPanDA's job list has it: the job table's columns in lower case, null for nothing,
    times as ISO text (naive UTC)."""
    record = {}
    for key, value in describe(pid, row).items():
        if key == "Files":
            continue
        if isinstance(value, dict) and "__datetime__" in value:
            value = value["__datetime__"]
        record[key.lower()] = None if value == NULL else value
    return record


def _describe_file(pid: int, k: int, spec: dict[str, Any], job_status: str) -> dict[str, Any]:
    out = {attr: NULL for attr in FILE_ATTRIBUTES}
    out.update({key: value for key, value in spec.items() if key in out and not _null(value)})
    out.update(rowID=pid * 100 + k, PandaID=pid)
    if spec.get("type") == "input":
        out["status"] = "ready"
    else:
        out["status"] = {JobStatus.FINISHED.value: "ready", JobStatus.FAILED.value: "failed",
                         JobStatus.CANCELLED.value: "failed"}.get(job_status, "unknown")
    return out


def pilot_job_description(pid: int, row: dict[str, Any], pilot_job: dict[str, Any], endpoint: str) -> dict[str, Any]:
    """A job as pilot/acquire_jobs hands it to a pilot (PanDA's format: lists joined by commas).

    `embedded` carries what only this grid's workers need: the bandwidth share and CPU speed of
    the "worker node" and the faults the grid injects into this job."""
    spec = row.get("panda", {})
    files = row["files"]
    name = row["job_name"]
    outputs = [f for f in row.get("panda_files", []) if f.get("type") in ("output", "log")]
    log_file = next((f for f in outputs if f["type"] == "log"), None)
    out_files = [f["lfn"] for f in outputs if f["type"] == "output"] or [f"{name}.{OUTPUT_FILE}"]
    log_lfn = log_file["lfn"] if log_file else f"{name}.log.tgz"
    destination = spec.get("destinationDBlock", NULL)

    def joined(values: list[Any]) -> str:
        return ",".join(str(v) for v in values)

    return {
        "StatusCode": 0, "PandaID": pid, "jobsetID": spec.get("jobsetID", pid - row.get("bulk_position", 0)),
        "jobDefinitionID": spec.get("jobDefinitionID", NULL), "jobName": name,
        "prodSourceLabel": _text(row.get("prod_source_label")), "processingType": _text(row.get("processing_type")),
        "transformation": spec.get("transformation", TRANSFORMATION), "homepackage": "AnalysisTransforms",
        "jobPars": spec.get("jobParameters", NULL), "cmtConfig": spec.get("cmtConfig", NULL),
        "swRelease": "NULL", "attemptNr": spec.get("attemptNr", 0),
        "inFiles": joined([f["lfn"] for f in files]), "GUID": joined([f["guid"] for f in files]),
        "fsize": joined([f["bytes"] for f in files]),
        "checksum": joined([f"ad:{f['adler32']}" for f in files]),
        "scopeIn": joined([f["scope"] for f in files]),
        "realDatasetsIn": joined([f["dataset"] for f in files]), "prodDBlocks": joined([f["dataset"] for f in files]),
        "dispatchDblock": joined([NULL for _ in files]), "ddmEndPointIn": joined([endpoint for _ in files]),
        "outFiles": joined([*out_files, log_lfn]), "logFile": log_lfn,
        "logGUID": log_file.get("GUID", NULL) if log_file else str(uuid.uuid5(uuid.NAMESPACE_URL, log_lfn)),
        "destinationDblock": joined([destination] * (len(out_files) + 1)),
        "realDatasets": joined([destination] * (len(out_files) + 1)),
        "ddmEndPointOut": joined([endpoint] * (len(out_files) + 1)),
        "maxWalltime": row["max_wall_seconds"], "maxCpuCount": spec.get("maxCpuCount", 0),
        "coreCount": spec.get("coreCount", 1), "minRamCount": spec.get("minRamCount", 0),
        "maxDiskCount": spec.get("maxDiskCount", 0), "nSent": 0,
        "embedded": {"bandwidth_mb_s": pilot_job["bandwidth_mb_s"], "cpu_speed": pilot_job["cpu_speed"],
                     "inject": pilot_job["inject"], "cannot_run": pilot_job.get("cannot_run")},
    }


# -- serving -----------------------------------------------------------------------------------------
class _QuietHandler(WSGIRequestHandler):
    def log_request(self, *args: Any, **kwargs: Any) -> None:  # one line per request is noise here
        pass


@dataclass
class PandaServiceHandle:
    """A running service: `url` is what PANDA_URL / PANDA_URL_SSL take; `close()` stops it."""

    server: BaseWSGIServer
    thread: threading.Thread
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/server/panda"

    @property
    def monitor_url(self) -> str:
        """What backend.panda.monitor_url takes: the monitor's job list is {monitor_url}/jobs/."""
        return f"http://{self.host}:{self.port}"

    @property
    def api(self) -> str:
        """Where panda-client sends its calls: {scheme}://{host}/api/v1."""
        return f"http://{self.host}:{self.port}/api/v1"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)

    def __enter__(self) -> PandaServiceHandle:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def serve(grid: EmbeddedGrid, host: str = "127.0.0.1", port: int = 0) -> PandaServiceHandle:
    """Serve `grid` over PanDA's REST contract in a daemon thread (port 0: any free port).

    A port that is taken raises OSError (EADDRINUSE): the socket is bound here, since werkzeug itself
    would print its own advice and exit the process."""
    listener = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
    try:
        server = make_server(host, port, PandaService(grid), threaded=True, request_handler=_QuietHandler,
                             fd=listener.fileno())
    finally:
        listener.close()  # werkzeug holds its own duplicate of it
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="panda-service",
                              daemon=True)
    thread.start()
    return PandaServiceHandle(server=server, thread=thread, host=host, port=server.port)


__all__ = ["PandaService", "PandaServiceHandle", "Refused", "decode_jobs", "describe", "serve"]
