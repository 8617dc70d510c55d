"""The real PanDA server as a backend, through the unmodified panda-client 2.x.

Jobs are built as prun built user analysis jobs before JEDI (one `JobSpec` per test job with its
`FileSpec`s), sent with `Client.submitJobs` in one call per batch, polled with
`Client.getJobStatus` (jobs the server no longer holds in its live tables are asked again with
`Client.getFullJobStatus`, which includes the archive) and killed with `Client.killJobs`. PanDA
cannot read or set a queue's status: `queue_status` and `set_queue_status` go to the status store
given to the constructor (CRIC in production, the embedded grid in the demo).

panda-client quirks handled here (see /work/shared/domain/panda.md):

* **Configuration at import time.** `pandaclient.Client` reads `PANDA_URL`, `PANDA_URL_SSL` and
  `PANDACACHE_URL` when it is imported and resolves the cache host by DNS unless
  `PANDA_BEHIND_REAL_LB` is set. `_client()` is the only place it is imported, and it sets those
  variables (and the credentials) first. A module is imported once per process, so for a second
  backend (another server, another port) the environment is too late: before every call, under one
  process-wide lock, `_configured()` points the already imported module at this backend's server
  the way panda-client's own `useIntrServer()` / `setCacheServer()` do, by setting its module
  globals `baseURL`, `baseURLSSL`, `baseURLCSRVSSL`, `server_base_path`, `server_base_path_ssl`
  and `cache_base_path_ssl`. Every call is therefore serialised; the robot makes them from one
  thread anyway.
* **Credentials per call.** panda-client reads `PANDA_AUTH`, `PANDA_AUTH_VO`,
  `PANDA_AUTH_ID_TOKEN`, `X509_USER_PROXY` and `X509_CERT_DIR` from the environment at each
  request. They are set for the duration of each call only and restored afterwards, so the token
  does not linger in the environment of processes the robot starts later. The token file is read
  at every call (tokens are renewed in place); with OIDC a token is always resolved by the robot,
  so panda-client never falls back to its interactive device-code flow.
* **Timeout.** panda-client opens an `httpx.Client(timeout=600)` per request and offers no way to
  change it. At import, the module's `httpx` reference is replaced by a thin proxy whose `Client`
  is an `httpx.Client` subclass that applies `settings.timeout` (httpx applies it per phase:
  connect, each read, each write) and records how each request ended. Nothing else of httpx or
  panda-client changes.
* **Errors.** Calls return `(255, None)` on HTTP errors, `success: false`, and unparseable or
  empty replies; malformed JSON even raises out of `submitJobs` / `killJobs`. All of these, and
  replies of the wrong shape (not a list, one entry per ID missing, no or an unknown `jobStatus`,
  numbers that are not numbers), become `BackendUnavailable`: nothing known, never a failed job.
* **"NULL".** Values the server does not have come back as the string ``"NULL"`` (JobSpec turns
  every `None` into it); `transExitCode` is a string. Both are mapped to `None`, 0 or "".
* **Output.** panda-client prints (missing proxy warnings, tracebacks of bad replies) to stdout;
  that is captured and logged at debug level with the token masked, so `healthrobot run --once
  --json` stays clean. Its own logger (`panda-client`) is replaced by one that forwards to this
  module's logger at debug level.

Retries: every call is tried `settings.retries` more times with exponential back-off (1 s, 2 s,
4 s ... at most 30 s), then `BackendUnavailable` is raised, with one exception: **a submission is
retried only when the request certainly never reached the server** (no connection could be made,
or credentials could not be set up). A reply that timed out, a 5xx, a malformed reply or
`success: false` may come after the server stored the jobs; sending the batch again could double
them. Such a batch raises at once: the loop keeps its jobs unconfirmed and, at its next step, asks
for each by name (`find`, in PanDA's monitor: the server itself cannot find a job by name) before
calling any of them lost, and calls one lost only once its submission is `lookup_grace` old. When the server answers with some IDs missing (``"NULL"``) the jobs it
did create are killed (one attempt) before raising, so they do not run orphaned.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import threading
import time
import types
import uuid
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from robot.backends.base import BackendUnavailable, JobReport, JobRequest, QueueStatusStore, UserJobHour
from robot.backends.job_parameters import OUTPUT_FILE, TRANSFORMATION, JobParameters, format_job_parameters
from robot.backoff import backoff_delay
from robot.config import PandaConfig
from robot.jobstates import JobStatus, QueueStatus

log = logging.getLogger(__name__)

MAX_BATCH = 500  # IDs or jobs per panda-client call, whatever the caller passes
MIN_RAM_MB = 2000  # minRamCount per job (one core), ATLAS's usual analysis request
DISK_MARGIN_MB = 2000  # maxDiskCount: the input files plus this much work space
TIMING_KEYS = ("getjob", "stagein", "payload", "stageout", "setup")  # pilotTiming, in order

# Real PanDA states outside the robot's vocabulary, mapped to the nearest one. Anything else (but
# "unknown", the server's own "cannot tell") is a malformed reply. The pre-dispatch states
# (defined, assigned, pending, waiting) are the robot's own: whose wait it is depends on them.
STATE_ALIASES = {
    "throttled": JobStatus.ACTIVATED,
    "transferring": JobStatus.HOLDING, "merging": JobStatus.HOLDING,
    "closed": JobStatus.CANCELLED,  # ended by the system (task aborted, job superseded): no verdict
}

# Environment variables panda-client reads; set around each call, then restored.
_MANAGED_ENV = ("PANDA_URL", "PANDA_URL_SSL", "PANDACACHE_URL", "PANDA_BEHIND_REAL_LB", "PANDA_AUTH",
                "PANDA_AUTH_VO", "PANDA_AUTH_ID_TOKEN", "OIDC_AUTH_TOKEN_FILE", "OIDC_AUTH_ID_TOKEN",
                "X509_USER_PROXY", "X509_CERT_DIR")

# -- the one place panda-client is imported ----------------------------------------------------------

_LOCK = threading.RLock()  # panda-client's configuration is module-global: one call at a time
_PANDA: types.SimpleNamespace | None = None


class _CallState:
    """What the httpx proxy saw during the current call (only ever used under _LOCK)."""

    def __init__(self) -> None:
        self.timeout: float | None = None  # None: outside our calls, panda-client's own 600 s
        self.reset()

    def reset(self) -> None:
        self.requests = 0  # requests handed to httpx
        self.maybe_delivered = False  # a connection was made: the server may have acted
        self.error = ""  # httpx exception class of the last request, if any
        self.http_status: int | None = None


_STATE = _CallState()
# Connection never established: the request cannot have reached the server.
_NOT_SENT_ERRORS = ("ConnectError", "ConnectTimeout", "UnsupportedProtocol")


def _bounded_httpx(httpx: types.ModuleType) -> object:
    """A stand-in for the `httpx` module inside pandaclient.Client: its `Client` applies our timeout."""

    class BoundedClient(httpx.Client):  # type: ignore[name-defined,misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            if _STATE.timeout is not None:
                kwargs["timeout"] = _STATE.timeout
            super().__init__(*args, **kwargs)

        def send(self, request: Any, **kwargs: Any) -> Any:
            _STATE.requests += 1
            try:
                response = super().send(request, **kwargs)
            except Exception as exc:
                _STATE.error = type(exc).__name__
                if not isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.UnsupportedProtocol)):
                    _STATE.maybe_delivered = True
                raise
            _STATE.maybe_delivered = True
            _STATE.http_status = response.status_code
            return response

    class Proxy:
        Client = BoundedClient

        def __getattr__(self, name: str) -> Any:
            return getattr(httpx, name)

    return Proxy()


class _Forward(logging.Handler):
    """panda-client's own log lines ("getJobStatus failed : None"), as debug lines of this module:
    the backend logs what matters itself, once, with the retry it takes."""

    def emit(self, record: logging.LogRecord) -> None:
        log.debug("panda-client %s: %s", record.levelname.lower(), _mask(record.getMessage()))


def _mask(text: str, secret: str | None = None) -> str:
    text = re.sub(r"Bearer\s+\S+", "Bearer ***", text)
    return text.replace(secret, "***") if secret else text


def _client(env: dict[str, str | None]) -> types.SimpleNamespace:
    """Import panda-client (once per process) with `env` applied first; returns its modules."""
    global _PANDA
    with _LOCK:
        if _PANDA is None:
            with _environment(env):
                from pandaclient import (  # lazily, on purpose
                    Client,
                    FileSpec,
                    JobSpec,
                    PLogger,
                )

            quiet = logging.getLogger(f"{__name__}.client")
            quiet.propagate = False
            quiet.addHandler(_Forward())  # a handler: else PLogger adds one writing to stdout
            PLogger.setLogger(quiet)
            Client.httpx = _bounded_httpx(Client.httpx)
            _PANDA = types.SimpleNamespace(Client=Client, JobSpec=JobSpec.JobSpec, FileSpec=FileSpec.FileSpec)
        return _PANDA


def _set_environment(env: dict[str, str | None]) -> None:
    """Set these variables; None removes one."""
    for key, value in env.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@contextlib.contextmanager
def _environment(env: dict[str, str | None]) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in _MANAGED_ENV}
    try:
        _set_environment(env)
        yield
    finally:
        _set_environment(saved)


def _api_base(url: str) -> str:
    """What panda-client derives from a server URL: only scheme and host are used."""
    parsed = urlparse(url)
    return f"{parsed.scheme}://{parsed.netloc}/api/v1"


# -- errors -----------------------------------------------------------------------------------------


class _Malformed(Exception):
    """The reply arrived but does not say what it should."""


class _CouldNotTell(Exception):
    """The server answered that it does not know right now (jobStatus "unknown": its database is down)."""


@dataclass
class _Failure:
    reason: str
    delivered: bool  # the server may have received the request (and acted on it)
    retry: bool = True  # False: asking again at once would not help (the server said it cannot tell)


# -- the backend ------------------------------------------------------------------------------------


class PandaBackend:
    name = "panda"

    def __init__(self, settings: PandaConfig, status_store: QueueStatusStore, *,
                 sleep: Callable[[float], None] = time.sleep, statuses_from_server: bool = False) -> None:
        """`statuses_from_server`: read queue statuses from the server's `metaconfig/get_site_specs`
        (when no CRIC holds them); they are still set in `status_store`."""
        self.settings = settings
        self.status_store = status_store
        self.statuses_from_server = statuses_from_server
        self.sleep = sleep
        self.timeout = settings.timeout.total_seconds()
        self.retries = settings.retries
        self.cache_url = settings.cache_url or settings.url
        if settings.auth == "none" and urlparse(settings.url).scheme != "http":
            raise ValueError("backend.panda.auth none is for a plain http server (on loopback); "
                             f"use x509 or oidc for {urlparse(settings.url).scheme}://")
        if settings.auth == "oidc" and not (settings.token_file or os.environ.get("PANDA_AUTH_ID_TOKEN")
                                            or os.environ.get("OIDC_AUTH_TOKEN_FILE")):
            raise ValueError("backend.panda.auth oidc needs token_file (or $PANDA_AUTH_ID_TOKEN / "
                             "$OIDC_AUTH_TOKEN_FILE)")
        self._secret: str | None = None  # the last token read, only to mask it in captured output
        # How long a submission the monitor does not list may still appear there: the server may store a
        # bulk after its reply was lost (or its sender died), and the monitor reads what the server stored.
        self.lookup_grace = settings.lookup_grace
        self._monitor = _monitor(settings, self._token, sleep) if settings.monitor_url else None

    # ---------------------------------------------------------------- configuration per call

    def _token(self) -> str:
        """The OIDC token: token_file, else $PANDA_AUTH_ID_TOKEN, else the file $OIDC_AUTH_TOKEN_FILE."""
        source = self.settings.token_file or os.environ.get("OIDC_AUTH_TOKEN_FILE")
        if self.settings.token_file is None and os.environ.get("PANDA_AUTH_ID_TOKEN"):
            token = os.environ["PANDA_AUTH_ID_TOKEN"].strip()
        elif source:
            try:
                token = Path(source).read_text().strip()
            except OSError as exc:
                raise BackendUnavailable(f"PanDA: token file {source} cannot be read ({exc.strerror})") from None
        else:
            token = ""
        if not token:
            # An empty token would start panda-client's interactive device-code flow.
            raise BackendUnavailable(f"PanDA: no OIDC token ({source or '$PANDA_AUTH_ID_TOKEN'} is empty)")
        self._secret = token
        return token

    def _env(self) -> dict[str, str | None]:
        s = self.settings
        env: dict[str, str | None] = {
            "PANDA_URL": s.url, "PANDA_URL_SSL": s.url, "PANDACACHE_URL": self.cache_url,
            "PANDA_BEHIND_REAL_LB": "1",
        }
        if s.auth == "oidc":
            env.update(PANDA_AUTH="oidc", PANDA_AUTH_VO=s.vo, PANDA_AUTH_ID_TOKEN=self._token())
        else:
            env.update(PANDA_AUTH=None, PANDA_AUTH_ID_TOKEN=None, OIDC_AUTH_TOKEN_FILE=None, OIDC_AUTH_ID_TOKEN=None)
        if s.auth == "x509":
            if s.proxy_file:
                env["X509_USER_PROXY"] = s.proxy_file
        else:
            env["X509_USER_PROXY"] = None
        if s.ca_dir:
            env["X509_CERT_DIR"] = s.ca_dir
        return env

    @contextlib.contextmanager
    def _configured(self) -> Iterator[Any]:
        """panda-client's Client module, pointed at this backend's server with its credentials."""
        env = self._env()
        with _LOCK:
            client = _client(env).Client
            client.baseURL = client.baseURLSSL = self.settings.url
            client.server_base_path = client.server_base_path_ssl = _api_base(self.settings.url)
            client.baseURLCSRVSSL = self.cache_url
            client.cache_base_path_ssl = _api_base(self.cache_url)
            _STATE.reset()
            _STATE.timeout = self.timeout
            printed = io.StringIO()
            try:
                with _environment(env), contextlib.redirect_stdout(printed):
                    yield client
            finally:
                _STATE.timeout = None
                self._log_printed(printed.getvalue())

    def _log_printed(self, text: str) -> None:
        if not text.strip():
            return
        log.debug("panda-client printed: %s", _mask(text.strip()[:2000], self._secret))

    # ---------------------------------------------------------------- calls with retries

    def _attempt(self, what: str, call: Callable[[Any], tuple[Any, Any]],
                 check: Callable[[Any], Any]) -> Any | _Failure:
        """One call: `check(data)` on success, or a _Failure saying why and whether it reached the server."""
        with self._configured() as client:
            try:
                status, data = call(client)
            except SystemExit:  # panda-client exits on some auth set-up errors
                return _Failure("panda-client gave up (auth set-up)", delivered=False)
            except Exception as exc:  # noqa: BLE001 - malformed JSON raises out of some calls
                return _Failure(f"unreadable reply ({type(exc).__name__})", delivered=_STATE.maybe_delivered)
            finally:
                state = (_STATE.requests, _STATE.maybe_delivered, _STATE.error, _STATE.http_status)
        requests, delivered, error, http_status = state
        if status != 0:
            if requests == 0:
                return _Failure("no request sent (credentials could not be set up)", delivered=False)
            if error:
                return _Failure(error, delivered=delivered)
            if http_status is not None and http_status != 200:
                return _Failure(f"HTTP {http_status}", delivered=True)
            return _Failure("failure reply (success false, empty or unparseable)", delivered=True)
        try:
            return check(data)
        except _CouldNotTell as exc:
            return _Failure(f"the server could not tell: {exc}", delivered=True, retry=False)
        except _Malformed as exc:
            return _Failure(f"malformed reply: {exc}", delivered=True)

    def _call(self, what: str, call: Callable[[Any], tuple[Any, Any]], check: Callable[[Any], Any], *,
              retry_if: Callable[[_Failure], bool] = lambda failure: True, retries: int | None = None) -> Any:
        attempts = (self.retries if retries is None else retries) + 1
        for attempt in range(attempts):
            result = self._attempt(what, call, check)
            if not isinstance(result, _Failure):
                return result
            if not result.retry:
                raise BackendUnavailable(f"PanDA {what}: {result.reason}; asked again at the next step")
            if not retry_if(result):
                raise BackendUnavailable(
                    f"PanDA {what}: {result.reason}; not retried: the server may have acted on it")
            if attempt + 1 < attempts:
                delay = backoff_delay(attempt + 1)
                log.warning("PanDA %s failed (%s), retry %d/%d in %.0fs", what, result.reason, attempt + 1,
                            attempts - 1, delay)
                self.sleep(delay)
        raise BackendUnavailable(f"PanDA {what}: {result.reason} after {attempts} attempt(s)")

    # ---------------------------------------------------------------- submit

    def job_spec(self, request: JobRequest) -> Any:
        """The JobSpec prun would have built for this test job (with its input, output and log files)."""
        panda = _PANDA or _client(self._env())
        s = self.settings
        name = request.job_name
        out_dataset = f"user.{s.nickname}.{name}"
        scope = request.files[0].scope if request.files else ""
        job = panda.JobSpec()
        job.jobDefinitionID = job_definition_id(name)
        job.jobName = name
        job.prodSourceLabel = request.prod_source_label
        job.processingType = request.processing_type
        job.computingSite = request.queue
        job.destinationSE = request.queue
        job.transformation = TRANSFORMATION
        job.jobParameters = format_job_parameters(JobParameters(
            payload=request.payload, max_events=request.max_events,
            input_lfns=tuple(f.lfn for f in request.files),
            input_dataset=f"{scope}:{request.dataset}" if scope else request.dataset,
            outputs={OUTPUT_FILE: f"{name}.{OUTPUT_FILE}"},
        ))
        job.prodDBlock = request.dataset
        job.destinationDBlock = out_dataset
        job.cmtConfig = s.cmt_config
        job.VO = s.vo
        job.maxCpuCount = request.max_wall_seconds
        job.maxWalltime = request.max_wall_seconds
        job.coreCount = 1
        job.minRamCount = MIN_RAM_MB
        job.minRamUnit = "MB"
        input_mb = sum(f.bytes for f in request.files) // 2**20 + 1
        job.maxDiskCount = input_mb + DISK_MARGIN_MB
        job.maxDiskUnit = "MB"
        for f in request.files:
            spec = panda.FileSpec()
            spec.type = "input"
            spec.lfn = f.lfn
            spec.GUID = f.guid
            spec.scope = f.scope
            spec.dataset = f.dataset
            spec.prodDBlock = f.dataset
            spec.fsize = f.bytes
            if f.adler32:
                spec.checksum = f"ad:{f.adler32}"
            job.addFile(spec)
        for kind, lfn in (("output", f"{name}.{OUTPUT_FILE}"), ("log", f"{name}.log.tgz")):
            spec = panda.FileSpec()
            spec.type = kind
            spec.lfn = lfn
            spec.GUID = str(uuid.uuid5(uuid.NAMESPACE_URL, f"healthrobot:{lfn}"))
            spec.dataset = out_dataset
            spec.destinationDBlock = out_dataset
            spec.destinationSE = request.queue
            job.addFile(spec)
        return job

    def submit(self, jobs: Sequence[JobRequest]) -> list[int]:
        """Bulk submission, one `submitJobs` call per batch; the PanDA IDs in the order of `jobs`.

        Retried only while no connection could be made (see the module's docstring); a reply with
        IDs missing kills the jobs that were created and raises BackendUnavailable.
        """
        ids: list[int] = []
        for start in range(0, len(jobs), MAX_BATCH):
            batch = list(jobs[start : start + MAX_BATCH])
            specs = [self.job_spec(request) for request in batch]
            try:
                ids.extend(self._submit_batch(specs))
            except BackendUnavailable:
                if ids:  # an earlier batch went through: do not leave it running unobserved
                    self._kill_quietly(ids)
                raise
        return ids

    def _submit_batch(self, specs: list[Any]) -> list[int]:
        n = len(specs)
        replies = self._call("submitJobs", lambda client: client.submitJobs(specs),
                             lambda data: _list_of(data, n, "submitJobs"),
                             retry_if=lambda failure: not failure.delivered)
        ids: list[int | None] = [_panda_id(reply) for reply in replies]
        good = [pid for pid in ids if pid is not None]
        if len(good) < n:
            if good:
                self._kill_quietly(good)
            raise BackendUnavailable(f"PanDA submitJobs: {n - len(good)} of {n} job(s) came back without a "
                                     f"PanDA ID (NULL); the {len(good)} created were killed")
        return good  # type: ignore[return-value]

    def _kill_quietly(self, panda_ids: list[int]) -> None:
        try:
            self._kill_batch(panda_ids, retry=False)
        except BackendUnavailable as exc:
            log.warning("PanDA: %d job(s) created by a failed submission could not be killed: %s",
                        len(panda_ids), exc)

    # ---------------------------------------------------------------- status

    def status(self, panda_ids: Sequence[int]) -> dict[int, JobReport | None]:
        """`getJobStatus` per batch; IDs it does not know are asked again with `getFullJobStatus`."""
        wanted = list(dict.fromkeys(int(pid) for pid in panda_ids))
        out: dict[int, JobReport | None] = {}
        for start in range(0, len(wanted), MAX_BATCH):
            batch = wanted[start : start + MAX_BATCH]
            out.update(self._call("getJobStatus", lambda client, ids=batch: client.getJobStatus(ids),
                                  lambda data, ids=batch: _reports(data, ids)))
            gone = [pid for pid in batch if out[pid] is None]
            if gone:
                out.update(self._call("getFullJobStatus", lambda client, ids=gone: client.getFullJobStatus(ids),
                                      lambda data, ids=gone: _reports(data, ids)))
        return out

    # ---------------------------------------------------------------- find by name

    def find(self, job_names: Sequence[str]) -> dict[str, int | None]:
        """The PanDA ID of each job submitted under these names; None where PanDA's monitor lists none.

        panda-server 1.0.4 cannot find a job by its name or its jobDefinitionID (it has no
        getPandIDsWithJobID: 403), so the names are looked up in PanDA's monitor, whose job list
        (BigPanDA's `jobs/?jobname=...`) reads the server's job tables, archive included
        (robot/backends/panda_monitor.py). Anything the monitor cannot answer, or no monitor
        configured, raises BackendUnavailable: the robot then keeps the submissions unconfirmed (their
        slots taken) and asks again at its next step. Bounded: no request is retried and the first
        failure ends the look-up, so a step waits at most one timeout. A name the monitor does not list
        is only absent *now*: the loop calls its job lost once the submission is `lookup_grace` old.
        """
        if self._monitor is None:
            raise BackendUnavailable("PanDA: unconfirmed submissions are looked up in PanDA's monitor (the server"
                                     " cannot find a job by name): backend.panda.monitor_url is not set")
        return self._monitor.job_ids(job_names, retries=0)

    # ---------------------------------------------------------------- kill

    def kill(self, panda_ids: Sequence[int]) -> dict[int, bool]:
        wanted = list(dict.fromkeys(int(pid) for pid in panda_ids))
        out: dict[int, bool] = {}
        for start in range(0, len(wanted), MAX_BATCH):
            out.update(self._kill_batch(wanted[start : start + MAX_BATCH]))
        return out

    def _kill_batch(self, batch: list[int], *, retry: bool = True) -> dict[int, bool]:
        """Killing twice is harmless, so a kill is retried whatever went wrong (unless told not to)."""
        replies = self._call("killJobs", lambda client: client.killJobs(batch),
                             lambda data: _list_of(data, len(batch), "killJobs"),
                             retry_if=lambda failure: retry)
        return {pid: reply is True or (isinstance(reply, (list, tuple)) and bool(reply) and reply[0] is True)
                for pid, reply in zip(batch, replies)}

    # ---------------------------------------------------------------- health and queue status

    def ping(self) -> None:
        """`Client.hello` (system/is_alive); BackendUnavailable when the server does not answer well."""
        self._call("hello", lambda client: client.hello(), lambda data: data)

    def queue_status(self) -> dict[str, QueueStatus]:
        if not self.statuses_from_server:
            return self.status_store.queue_status()
        return self._call("get_site_specs", lambda client: _site_specs(client)(), _statuses)

    def user_job_stats(self, since: datetime, until: datetime) -> list[UserJobHour]:
        """Users' own jobs, counted from PanDA's monitor (robot/backends/panda_monitor.py)."""
        if self._monitor is None:
            raise BackendUnavailable("users' jobs are read from PanDA's monitor: backend.panda.monitor_url is not set")
        return self._monitor.user_job_stats(since, until)

    def set_queue_status(self, queue: str, status: QueueStatus, reason: str, actor: str) -> None:
        self.status_store.set_queue_status(queue, status, reason, actor)


def _monitor(settings: PandaConfig, token: Callable[[], str], sleep: Callable[[float], None]) -> Any:
    """PanDA's monitor with the backend's credentials: the proxy (x509) or the token (oidc)."""
    from robot.backends.panda_monitor import MonitorUserJobs  # it reads records as robot.history does, which imports this module

    proxy = (settings.proxy_file or os.environ.get("X509_USER_PROXY")) if settings.auth == "x509" else None
    assert settings.monitor_url is not None
    return MonitorUserJobs(settings.monitor_url, timeout=settings.timeout.total_seconds(), retries=settings.retries,
                           cert=(proxy, proxy) if proxy else None, ca_path=settings.ca_dir,
                           token=token if settings.auth == "oidc" else None, sleep=sleep)


def _site_specs(client: Any) -> Callable[[], tuple[Any, Any]]:
    """metaconfig/get_site_specs (analysis queues), which panda-client has no function for."""
    return client.http_request_decorator(endpoint="metaconfig/get_site_specs", method="get", json_out=True)(
        lambda: {"type": "analysis"})


def _statuses(data: Any) -> dict[str, QueueStatus]:
    """{queue: {"status": ...}} -> the statuses; a status outside PanDA's four is a malformed reply."""
    if not isinstance(data, dict):
        raise _Malformed(f"get_site_specs answered {type(data).__name__}, not a mapping")
    out = {}
    for queue, spec in data.items():
        status = spec.get("status") if isinstance(spec, dict) else None
        try:
            out[str(queue)] = QueueStatus(status)
        except ValueError:
            raise _Malformed(f"queue {str(queue)[:60]!r} has status {str(status)[:40]!r}") from None
    return out


def job_definition_id(job_name: str) -> int:
    """A positive jobDefinitionID derived from the job's unique name (stable: the same job, the same ID).

    prun took it from a per-user counter to group the jobs of one submission; the robot's test jobs
    are independent, and a value derived from the name needs no state and can be recomputed from
    the database. It is not unique (crc32), which PanDA does not require.
    """
    return zlib.crc32(job_name.encode()) % 2_000_000_000 + 1


# -- reading replies --------------------------------------------------------------------------------


def _list_of(data: Any, n: int, what: str) -> list[Any]:
    if not isinstance(data, (list, tuple)):
        raise _Malformed(f"{what} answered {type(data).__name__}, not a list")
    if len(data) != n:
        raise _Malformed(f"{what} answered {len(data)} entries for {n}")
    return list(data)


def _panda_id(reply: Any) -> int | None:
    """[PandaID, jobDefinitionID, {...}] -> PandaID; None for "NULL", a missing or a garbage ID."""
    value = reply[0] if isinstance(reply, (list, tuple)) and reply else reply
    if isinstance(value, bool):
        return None
    try:
        pid = int(value)
    except (TypeError, ValueError):
        return None
    return pid if pid > 0 else None


def _reports(data: Any, batch: list[int]) -> dict[int, JobReport | None]:
    specs = _list_of(data, len(batch), "the job status call")
    out: dict[int, JobReport | None] = {}
    for pid, spec in zip(batch, specs):
        if spec is None:  # unknown to this table (or an entry panda-client could not read)
            out[pid] = None
            continue
        reported = _int(_get(spec, "PandaID"), "PandaID", None)
        if reported != pid:
            raise _Malformed(f"asked for {pid}, got PandaID {_get(spec, 'PandaID')!r} in its place")
        out[pid] = job_report(spec)
    return out


def _get(spec: Any, attr: str) -> Any:
    value = getattr(spec, attr, None)
    return None if value == "NULL" else value


def job_report(spec: Any) -> JobReport:
    """A JobSpec (as getJobStatus returns it) as the robot's JobReport; _Malformed if it says nothing usable."""
    pid = _int(_get(spec, "PandaID"), "PandaID", None)
    raw_state = _get(spec, "jobStatus")
    if pid is None or not isinstance(raw_state, str):
        raise _Malformed(f"job {pid} without a jobStatus")
    if raw_state == "unknown":  # what panda-server answers, with success, while its database is down
        raise _CouldNotTell(f"job {pid} is in state 'unknown' (the server's database may be down)")
    try:
        state = STATE_ALIASES.get(raw_state) or JobStatus(raw_state)
    except ValueError:
        raise _Malformed(f"job {pid} in unknown state {raw_state[:40]!r}") from None
    actual_cores = _int(_get(spec, "actualCoreCount"), "actualCoreCount", 0)
    return JobReport(
        panda_id=pid, job_status=state, queue=_text(_get(spec, "computingSite")),
        creation_time=_time(_get(spec, "creationTime"), "creationTime"),
        start_time=_time(_get(spec, "startTime"), "startTime"),
        end_time=_time(_get(spec, "endTime"), "endTime"),
        trans_exit_code=_exit_code(_get(spec, "transExitCode")),
        pilot_error_code=_int(_get(spec, "pilotErrorCode"), "pilotErrorCode", 0),
        pilot_error_diag=_text(_get(spec, "pilotErrorDiag")),
        exe_error_code=_int(_get(spec, "exeErrorCode"), "exeErrorCode", 0),
        exe_error_diag=_text(_get(spec, "exeErrorDiag")),
        ddm_error_code=_int(_get(spec, "ddmErrorCode"), "ddmErrorCode", 0),
        ddm_error_diag=_text(_get(spec, "ddmErrorDiag")),
        task_buffer_error_code=_int(_get(spec, "taskBufferErrorCode"), "taskBufferErrorCode", 0),
        task_buffer_error_diag=_text(_get(spec, "taskBufferErrorDiag")),
        job_dispatcher_error_code=_int(_get(spec, "jobDispatcherErrorCode"), "jobDispatcherErrorCode", 0),
        job_dispatcher_error_diag=_text(_get(spec, "jobDispatcherErrorDiag")),
        sup_error_code=_int(_get(spec, "supErrorCode"), "supErrorCode", 0),
        n_events=_int(_get(spec, "nEvents"), "nEvents", 0),
        cpu_consumption_time=_float(_get(spec, "cpuConsumptionTime"), "cpuConsumptionTime"),
        max_rss_kb=_int(_get(spec, "maxRSS"), "maxRSS", 0),
        core_count=actual_cores or _int(_get(spec, "coreCount"), "coreCount", 0) or 1,
        attempt_nr=_int(_get(spec, "attemptNr"), "attemptNr", 0),
        pilot_timing=pilot_timing(_get(spec, "pilotTiming")),
    )


def _int(value: Any, field: str, default: int | None) -> int | None:
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        raise _Malformed(f"{field} is {value!r}, not a number")
    if isinstance(value, int):
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise _Malformed(f"{field} is {str(value)[:40]!r}, not a number") from None
    if not number.is_integer():
        raise _Malformed(f"{field} is {value!r}, not a whole number")
    return int(number)


def _float(value: Any, field: str) -> float:
    if value is None or value == "":
        return 0.0
    if isinstance(value, bool):
        raise _Malformed(f"{field} is {value!r}, not a number")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise _Malformed(f"{field} is {str(value)[:40]!r}, not a number") from None


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _exit_code(value: Any) -> int | None:
    """transExitCode comes back as a string ("0", "65", "NULL"); text that is no number gives None."""
    try:
        return int(str(value).strip()) if value is not None else None
    except ValueError:
        return None


def _time(value: Any, field: str) -> datetime | None:
    """panda-client decodes {"__datetime__": iso} into naive datetimes (UTC); strings are read too."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise _Malformed(f"{field} is {value[:40]!r}, not a time") from None
    if not isinstance(value, datetime):
        raise _Malformed(f"{field} is a {type(value).__name__}, not a time")
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def pilot_timing(value: Any) -> dict[str, float]:
    """pilotTiming "getjob|stagein|payload|stageout|setup" (seconds) -> {name: seconds}; blanks left out."""
    if not isinstance(value, str):
        return {}
    out: dict[str, float] = {}
    for key, part in zip(TIMING_KEYS, value.split("|")):
        try:
            out[key] = float(part)
        except ValueError:
            continue
    return out
