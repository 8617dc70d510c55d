"""Rucio as the robot's catalogue: input datasets complete at a queue's storage endpoint.

`RucioCatalogue.complete_datasets(endpoint, pattern)` asks Rucio, through rucio-clients, for the
dataset replicas at the endpoint (``list_datasets_per_rse``, ``GET /replicas/rse/{rse}``; Rucio
ignores its filters, so the glob is applied here) and keeps those that are complete there: state
``AVAILABLE`` and ``available_length == length > 0``. The glob is matched against the dataset
*name*, as the embedded grid does; a pattern holding a colon (``hc_test:mc23_*``) is matched
against ``scope:name``. For each kept dataset its files come from ``list_files`` (name, guid,
bytes, adler32, events), sorted by name; GUIDs are given in the dashed upper-case form PanDA uses.

Caching, by the injected clock (never the wall clock): the answer per (endpoint, pattern) is
reused for ``cache_ttl``; file lists are kept per (scope, name, length), since a closed dataset
never changes (a dataset that grows gets a new length and is read again).

Errors: connection errors, time-outs, server errors (any Rucio exception but the few below),
malformed answers (not NDJSON, rows without the fields relied on) and empty file lists of a
dataset Rucio says has files are retried ``retries`` times with exponential back-off (injected
sleep), then ``BackendUnavailable`` is raised: the loop records the outage and sends nothing to
the queues concerned in that step; no dataset is taken as missing and nothing counts against a
site. An unknown endpoint (``RSENotFound``) has no data: ``[]``. A dataset that vanishes between
the two calls (``DataIdentifierNotFound``) is left out. After an authentication failure the
client is dropped and created again (a new login). An empty list of datasets at an endpoint is a
valid answer (nothing there), not an outage.

No stale answers: once ``cache_ttl`` is over the cached answer is not used when Rucio is down.
A dataset may have lost files since; jobs sent to it would fail with missing input at the site
and weigh, wrongly, towards excluding it. While Rucio is down PanDA's brokerage and the pilots'
stage-in depend on Rucio as well, so what those jobs would measure is Rucio, not the site.

The client never reads a Rucio configuration file from the environment (a server's, with a
``[database]`` section, switches rucio-clients to server mode): every setting is passed to
``Client(...)``, and rucio-clients' process-wide configuration is pinned to a client-only file
under the data dir (``rucio/rucio.cfg``, no secrets). Tokens are cached under
``<data_dir>/rucio/tokens/<key>/``. The password is read from its file at each login and never
logged (rucio-clients would log the ``X-Rucio-Password`` header at debug level: those records
are dropped) nor shown in a repr.

rucio-clients retries 502/503/504 and connection errors inside each call, with ``time.sleep``;
here its own loop makes one attempt (``AUTH_RETRIES = 0``, its back-off is a no-op) so that the
retries, their count and their sleeps are this module's alone.
"""
from __future__ import annotations

import fnmatch
import hashlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import requests

from robot.backends.base import BackendUnavailable, InputFile
from robot.backoff import backoff_delay
from robot.catalogue import DatasetInfo

if TYPE_CHECKING:
    from robot.config import RobotConfig, RucioConfig

log = logging.getLogger(__name__)
CLIENT_LOG = logging.getLogger(f"{__name__}.client")  # what rucio-clients logs, secrets dropped

FILE_CACHE_SIZE = 5000  # datasets whose file lists are kept
DEFAULT_VO = "def"
CLIENT_CONFIG = """\
# Written by the Queue Health Robot. rucio-clients reads this (client-only) file instead of any
# Rucio configuration found in the environment; every setting is passed to Client(...) directly.
[client]
request_retries = 0
"""

# Settings problems: retrying does not help, and they are reported at once.
_NOT_RETRIED = ("MissingClientParameter", "NoAuthInformation", "ClientProtocolNotFound",
                "ClientProtocolNotSupported", "AccessDenied")
_AUTH_FAILED = ("CannotAuthenticate",)


class Malformed(ValueError):
    """Rucio answered, but not with what its API promises."""


class RucioAPI(Protocol):
    """The part of rucio-clients' `Client` the catalogue uses."""

    def list_datasets_per_rse(self, rse: str) -> Iterable[Any]: ...

    def list_files(self, scope: str, name: str) -> Iterable[Any]: ...


@dataclass(frozen=True)
class Credentials:
    """Where the client's identity comes from; the password itself is only read at login."""

    auth_type: str  # userpass | x509 | oidc
    username: str | None = None
    password_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    def creds(self) -> dict[str, Any]:
        if self.auth_type == "userpass":
            if self.password_file is None:
                raise BackendUnavailable("Rucio userpass login needs a password_file")
            try:
                password = self.password_file.read_text().strip()
            except OSError as exc:
                raise BackendUnavailable(
                    f"Rucio password file {self.password_file} cannot be read ({exc.strerror})") from None
            if not password:
                raise BackendUnavailable(f"Rucio password file {self.password_file} is empty")
            _REDACT.add(password)
            return {"username": self.username, "password": password}
        if self.auth_type == "x509":
            cert = self.cert_file
            return {"client_cert": str(cert), "client_key": str(self.key_file or cert)}
        return {}


# -- rucio-clients, held on a short leash ----------------------------------------------------------
class _Redact(logging.Filter):
    """Drops rucio-clients' log records that carry a password header; masks known secrets."""

    def __init__(self) -> None:
        super().__init__()
        self._secrets: set[str] = set()
        self._lock = threading.Lock()

    def add(self, secret: str) -> None:
        with self._lock:
            self._secrets.add(secret)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "X-Rucio-Password" in message:
            return False
        masked = message
        for secret in self._secrets:
            masked = masked.replace(secret, "***")
        if masked != message:
            record.msg, record.args = masked, ()
        return True


_REDACT = _Redact()
CLIENT_LOG.addFilter(_REDACT)
_PIN_LOCK = threading.Lock()
_pinned_parser: Any = None


def pin_client_config(folder: Path) -> None:
    """Make rucio-clients' process-wide configuration a client-only file in `folder`.

    rucio-clients reads `$RUCIO_CONFIG`, else `rucio.cfg` under `$RUCIO_HOME/etc`,
    `$VIRTUAL_ENV/etc`, ... once, and caches it; a server's file there would switch it to server
    mode. The cache is filled here from our file instead (unless it already is).
    """
    global _pinned_parser
    from rucio.common import config as rucio_config

    with _PIN_LOCK:
        if rucio_config.get_config.cache_info().currsize and _pinned_parser is not None \
                and rucio_config.get_config() is _pinned_parser:
            return
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "rucio.cfg"
        if not path.exists() or path.read_text() != CLIENT_CONFIG:
            path.write_text(CLIENT_CONFIG)
        saved = os.environ.get("RUCIO_CONFIG")
        os.environ["RUCIO_CONFIG"] = str(path)
        try:
            rucio_config.clean_cached_config()
            _pinned_parser = rucio_config.get_config()
        finally:
            if saved is None:
                os.environ.pop("RUCIO_CONFIG", None)
            else:
                os.environ["RUCIO_CONFIG"] = saved


def make_client(host: str, auth_host: str | None, account: str, credentials: Credentials, *, data_dir: Path,
                ca_cert: str | None = None, vo: str | None = None, timeout: float = 30) -> Any:
    """A rucio-clients `Client` that reads no config, caches its token under `data_dir/rucio/tokens`,
    makes one HTTP attempt per call and logs through `CLIENT_LOG` (secrets dropped). Logs in."""
    from rucio.client import Client  # first: importing it may empty rucio-clients' config cache

    folder = data_dir / "rucio"
    pin_client_config(folder)

    if credentials.auth_type == "oidc":
        from rucio.common.utils import wlcg_token_discovery

        # Without a token rucio-clients would start an interactive browser login: never in a daemon.
        if not wlcg_token_discovery():
            raise BackendUnavailable("Rucio OIDC login needs a token in $BEARER_TOKEN or $BEARER_TOKEN_FILE")
    key = hashlib.sha256("|".join([host, auth_host or host, account, vo or DEFAULT_VO, credentials.auth_type,
                                   credentials.username or ""]).encode()).hexdigest()[:16]
    token_dir = folder / "tokens" / key
    token_dir.mkdir(parents=True, exist_ok=True, mode=0o700)

    class _Client(Client):
        AUTH_RETRIES = 0  # one attempt per call (a 401 still triggers a new login)

        def _get_auth_tokens(self):  # type: ignore[no-untyped-def]
            suffix = f"for_account_{self.account}"
            return None, str(token_dir / f"auth_token_exp_{suffix}"), str(token_dir / f"auth_token_{suffix}"), \
                str(token_dir)

        def _back_off(self, retry_number: int, reason: str) -> None:
            """The catalogue's own loop backs off."""

        def __repr__(self) -> str:
            return f"<rucio Client {self.host} account={self.account}>"

    return _Client(rucio_host=host, auth_host=auth_host or host, account=account, ca_cert=ca_cert,
                   auth_type=credentials.auth_type, creds=credentials.creds(), timeout=timeout,
                   user_agent="healthrobot", vo=vo or DEFAULT_VO, logger=CLIENT_LOG)


# -- the catalogue ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Cached:
    fetched_at: datetime
    datasets: list[DatasetInfo]


class RucioCatalogue:
    """`Catalogue` backed by Rucio. `clock` returns the current aware UTC time; `sleep` waits
    between retries; `client_factory` builds a logged-in client (tests pass their own)."""

    name = "rucio"

    def __init__(self, client_factory: Callable[[], RucioAPI], clock: Callable[[], datetime], *,
                 cache_ttl: timedelta = timedelta(minutes=15), retries: int = 3,
                 sleep: Callable[[float], None] = time.sleep, where: str = "Rucio") -> None:
        self._factory = client_factory
        self._clock = clock
        self.cache_ttl = cache_ttl
        self.retries = max(0, int(retries))
        self._sleep = sleep
        self.where = where
        self._client: RucioAPI | None = None
        self._answers: dict[tuple[str, str], _Cached] = {}
        self._files: dict[tuple[str, str, int], tuple[InputFile, ...]] = {}

    @classmethod
    def from_settings(cls, settings: RucioConfig, data_dir: Path, clock: Callable[[], datetime] | Any, *,
                      resolve: Callable[[str], Path] = Path, sleep: Callable[[float], None] = time.sleep
                      ) -> RucioCatalogue:
        """From `datasets.rucio`; `resolve` turns the configured file names into paths."""
        return cls(lambda: client_from_settings(settings, data_dir, resolve=resolve), _as_callable(clock),
                   cache_ttl=settings.cache_ttl, retries=settings.retries,
                   sleep=sleep, where=f"Rucio {settings.host}")

    @classmethod
    def from_config(cls, config: RobotConfig, clock: Callable[[], datetime] | Any, *,
                    sleep: Callable[[float], None] = time.sleep) -> RucioCatalogue:
        """The robot's catalogue when `datasets.source` is rucio (relative paths: the config's folder)."""
        if config.datasets.rucio is None:
            raise ValueError("datasets.rucio is not configured")
        return cls.from_settings(config.datasets.rucio, config.data_path, clock, resolve=config.resolve, sleep=sleep)

    def __repr__(self) -> str:
        return f"RucioCatalogue({self.where!r}, cache_ttl={self.cache_ttl}, retries={self.retries})"

    # -- the Catalogue call ------------------------------------------------------------------------
    def complete_datasets(self, endpoint: str, pattern: str) -> list[DatasetInfo]:
        key = (endpoint, pattern)
        now = self._clock()
        cached = self._answers.get(key)
        if cached is not None and timedelta(0) <= now - cached.fetched_at < self.cache_ttl:
            return list(cached.datasets)
        datasets = self._with_retries(f"datasets at {endpoint}", lambda client: self._read(client, endpoint, pattern))
        self._answers[key] = _Cached(now, datasets)
        return list(datasets)

    def forget(self) -> None:
        """Drop every cached answer and file list."""
        self._answers.clear()
        self._files.clear()

    # -- reading -----------------------------------------------------------------------------------
    def _read(self, client: RucioAPI, endpoint: str, pattern: str) -> list[DatasetInfo]:
        from rucio.common.exception import DataIdentifierNotFound, RSENotFound

        try:
            rows = [row for row in _rows(client.list_datasets_per_rse(endpoint), "list_datasets_per_rse")
                    if _complete_match(row, endpoint, pattern)]
        except RSENotFound:
            log.warning("%s does not know the storage endpoint %s: no input data there", self.where, endpoint)
            return []
        found = []
        for row in sorted(rows, key=lambda r: (r["name"], r["scope"])):
            try:
                files = self._dataset_files(client, row["scope"], row["name"], row["length"])
            except DataIdentifierNotFound:
                log.warning("%s: dataset %s:%s is gone; left out", self.where, row["scope"], row["name"])
                continue
            if files is not None:
                found.append(DatasetInfo(scope=row["scope"], name=row["name"], files=files))
        return found

    def _dataset_files(self, client: RucioAPI, scope: str, name: str, length: int) -> tuple[InputFile, ...] | None:
        key = (scope, name, length)
        if key in self._files:
            return self._files[key]
        files = tuple(sorted((_input_file(row, scope, name) for row in _rows(client.list_files(scope, name),
                                                                                  "list_files")),
                             key=lambda f: f.lfn))
        if not files:
            raise Malformed(f"list_files {scope}:{name}: no files, but the dataset replica has {length}")
        if len(files) != length:
            log.warning("%s: dataset %s:%s lists %d files, its replica %d; left out this time",
                        self.where, scope, name, len(files), length)
            return None
        if len(self._files) >= FILE_CACHE_SIZE:
            self._files.pop(next(iter(self._files)))
        self._files[key] = files
        return files

    # -- retries -------------------------------------------------------------------------------------
    def _with_retries(self, what: str, call: Callable[[RucioAPI], list[DatasetInfo]]) -> list[DatasetInfo]:
        from rucio.common.exception import RucioException

        attempts = self.retries + 1
        last = ""
        for attempt in range(attempts):
            if attempt:
                delay = backoff_delay(attempt)
                log.warning("%s: reading %s failed (%s), retry %d/%d in %.0fs",
                            self.where, what, last, attempt, self.retries, delay)
                self._sleep(delay)
            try:
                if self._client is None:
                    self._client = self._factory()
                return call(self._client)
            except BackendUnavailable:
                raise
            except RucioException as exc:
                kind = type(exc).__name__
                last = f"{kind}: {_short(exc)}"
                if kind in _AUTH_FAILED:
                    self._client = None  # log in again with a new client
                if kind in _NOT_RETRIED:
                    self._client = None
                    raise BackendUnavailable(f"{self.where}: reading {what}: {last}") from None
            except requests.Timeout:
                last = "timeout"
            except (requests.RequestException, OSError) as exc:
                last = f"connection error ({type(exc).__name__})"
            except ValueError as exc:  # Malformed, JSON that does not parse, bytes that do not decode
                last = f"malformed answer: {_short(exc)}"
        raise BackendUnavailable(f"{self.where}: reading {what}: {last} after {attempts} attempt(s)")


def client_from_settings(settings: RucioConfig, data_dir: Path, *, resolve: Callable[[str], Path] = Path) -> Any:
    """A logged-in rucio-clients `Client` for `datasets.rucio` (see `make_client`)."""
    return make_client(settings.host, settings.auth_host, settings.account, credentials_from(settings, resolve),
                       data_dir=data_dir, ca_cert=str(resolve(settings.ca_cert)) if settings.ca_cert else None,
                       vo=settings.vo, timeout=settings.timeout.total_seconds())


def credentials_from(settings: RucioConfig, resolve: Callable[[str], Path] = Path) -> Credentials:
    return Credentials(
        auth_type=settings.auth_type, username=settings.username,
        password_file=resolve(settings.password_file) if settings.password_file else None,
        cert_file=resolve(settings.cert_file) if settings.cert_file else None,
        key_file=resolve(settings.key_file) if settings.key_file else None)


# -- what an answer must look like -------------------------------------------------------------------
def _rows(answer: Iterable[Any], call: str) -> Iterable[dict[str, Any]]:
    """The rows of an NDJSON answer; rucio-clients yields a non-JSON body as one string."""
    if answer is None:
        raise Malformed(f"{call}: no answer")
    for row in answer:
        if not isinstance(row, dict):
            raise Malformed(f"{call}: a row is {type(row).__name__}, not an object")
        yield row


def _complete_match(row: dict[str, Any], endpoint: str, pattern: str) -> bool:
    scope, name, state = row.get("scope"), row.get("name"), row.get("state")
    length, available = row.get("length"), row.get("available_length")
    if not (isinstance(scope, str) and scope and isinstance(name, str) and name and isinstance(state, str)):
        raise Malformed(f"list_datasets_per_rse {endpoint}: a row lacks scope, name or state")
    if not (_is_int(length) and _is_int(available)):
        raise Malformed(f"list_datasets_per_rse {endpoint}: {scope}:{name} lacks length or available_length")
    if row.get("rse", endpoint) != endpoint:
        raise Malformed(f"list_datasets_per_rse {endpoint}: a row is for {row.get('rse')!r}")
    target = f"{scope}:{name}" if ":" in pattern else name
    if not fnmatch.fnmatchcase(target, pattern):
        return False
    return state == "AVAILABLE" and available == length and length > 0


def _input_file(row: dict[str, Any], scope: str, dataset: str) -> InputFile:
    name, size = row.get("name"), row.get("bytes")
    if not (isinstance(name, str) and name and _is_int(size) and size >= 0):
        raise Malformed(f"list_files {scope}:{dataset}: a file lacks name or bytes")
    adler32, guid, events = row.get("adler32"), row.get("guid"), row.get("events")
    if adler32 is not None and not isinstance(adler32, str):
        raise Malformed(f"list_files {scope}:{dataset}: {name} has adler32 {adler32!r}")
    if events is not None and not (_is_int(events) and events >= 0):
        raise Malformed(f"list_files {scope}:{dataset}: {name} has events {events!r}")
    return InputFile(lfn=name, guid=_guid(guid), scope=str(row.get("scope") or scope), dataset=dataset,
                     bytes=size, events=events or 0, adler32=(adler32 or "").lower())


def _guid(value: Any) -> str:
    """Rucio stores GUIDs as 32 hex digits; PanDA and the manifests write them dashed, upper case."""
    if not value:
        return ""
    try:
        return str(uuid.UUID(str(value))).upper()
    except ValueError:
        return str(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _short(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _as_callable(clock: Any) -> Callable[[], datetime]:
    """A `robot.clock.Clock` (its `now`) or a callable returning the time."""
    return clock.now if hasattr(clock, "now") else clock
