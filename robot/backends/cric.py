"""ATLAS CRIC as topology source and queue-status store.

Reads (each answers one JSON object keyed by name, every value a dict):

* ``/api/atlas/pandaqueue/query/?json`` -- PanDA queues. Fields relied on:
  ``panda_resource`` (queue name; the key of the object is the fallback), ``rc_site`` (the site's
  GOCDB name; ``atlas_site`` as fallback), ``cloud``, ``type`` (``analysis`` / ``unified`` /
  ``production`` ...), ``state`` (``ACTIVE``; anything else is a retired queue and left out),
  ``status`` (``online`` / ``brokeroff`` / ``test`` / ``offline``) and, for the storage endpoints
  the queue reads its input from, ``astorages`` (activity -> list of DDM endpoint names, the shape
  the pilot's queuedata uses; the ``read_lan`` then ``read_wan`` activities are taken). When a queue
  has no usable ``astorages`` the older comma-separated ``ddm`` field is used, and when that is
  empty too, every endpoint whose ``rc_site`` is the queue's site.
* ``/api/atlas/ddmendpoint/query/?json`` -- storage endpoints (RSEs): ``name`` (key as fallback)
  and ``rc_site``.
* ``/api/atlas/site/query/?json`` -- sites: ``rc_site`` (``name`` as fallback), ``cloud`` and,
  if present, ``contacts`` (a list) or ``email`` (a comma-separated string). These contact field
  names are not verified against today's CRIC.

* ``/api/core/downtime/query/?json`` -- the sites' announced downtimes (``downtimes``, read every
  ``downtimes.refresh`` by robot.downtimes.DowntimeWatch; the answer's shapes in
  robot.downtimes.parse_cric). An empty answer is no downtime.

Write: ``/request/pandaqueuestatus/update/set_probestatus/?json&panda_resource=Q&value=V&reason=R
&probe=P`` (the AGIS-era request HammerCloud used; not verified against today's CRIC), sent as a
POST with the parameters in the query string, then the status is read back.

Every request is retried on connection errors, timeouts and 5xx with exponential back-off, then
``BackendUnavailable`` is raised. Malformed or empty answers raise ``BackendUnavailable`` as well:
an empty answer is never taken as "all queues gone". Error messages and log lines name the URL
path only; the bearer token and the key file never appear in them.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

import requests

from robot.backends.base import BackendUnavailable
from robot.backoff import request_with_retries
from robot.downtimes import Downtime, parse_cric
from robot.jobstates import QueueStatus
from robot.topology import EndpointInfo, QueueInfo, SiteInfo, Topology

log = logging.getLogger(__name__)

PANDAQUEUE_PATH = "/api/atlas/pandaqueue/query/"
DDMENDPOINT_PATH = "/api/atlas/ddmendpoint/query/"
SITE_PATH = "/api/atlas/site/query/"
DOWNTIME_PATH = "/api/core/downtime/query/"
SET_PROBESTATUS_PATH = "/request/pandaqueuestatus/update/set_probestatus/"

ANALYSIS_TYPES = frozenset({"analysis", "unified"})
READ_ACTIVITIES = ("read_lan", "read_wan")


class CRICClient:
    name = "cric"  # as a downtime source

    def __init__(
        self,
        base_url: str,
        *,
        cert: tuple[str, str] | None = None,
        ca_path: str | None = None,
        token: str | None = None,
        timeout: float = 30,
        retries: int = 3,
        sleep: Callable[[float], None] = time.sleep,
        session: requests.Session | None = None,
        analysis_only: bool = True,
        probe: str = "healthrobot",
        manual_probe: str = "healthrobot-manual",
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.retries = max(0, int(retries))  # retries after the first attempt
        self.sleep = sleep
        self.analysis_only = analysis_only
        self.probe = probe
        self.manual_probe = manual_probe  # people's overrides (actor "person:NAME") are not the robot's
        self.session = session if session is not None else requests.Session()
        if cert is not None:
            self.session.cert = cert
        if ca_path is not None:
            self.session.verify = ca_path
        self._token = token

    # ---------------------------------------------------------------- transport

    def _request(self, method: str, path: str, params: dict[str, str] | None = None,
                 read: Callable[[requests.Response], Any] = lambda response: response) -> Any:
        url = f"{self.base_url}{path}?json"
        if params:
            url += "&" + urlencode(params)
        headers = {"Accept": "application/json"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        return request_with_retries(self.session, method, url, what=f"CRIC {method} {path}", error=BackendUnavailable,
                                    retries=self.retries, sleep=self.sleep, timeout=self.timeout, headers=headers,
                                    read=read)

    def _get_objects(self, path: str) -> dict[str, dict[str, Any]]:
        resp = self._request("GET", path)
        try:
            data = resp.json()
        except ValueError:
            raise BackendUnavailable(f"CRIC GET {path}: answer is not JSON") from None
        if not isinstance(data, dict):
            raise BackendUnavailable(
                f"CRIC GET {path}: expected a JSON object, got {type(data).__name__}")
        if not data:
            raise BackendUnavailable(f"CRIC GET {path}: empty answer")
        good = {k: v for k, v in data.items() if isinstance(v, dict)}
        if not good:
            raise BackendUnavailable(f"CRIC GET {path}: no object entries in answer")
        if len(good) < len(data):
            log.warning("CRIC GET %s: %d non-object entries skipped", path, len(data) - len(good))
        return good

    # ---------------------------------------------------------------- helpers

    def _keep_queue(self, q: dict[str, Any]) -> bool:
        if str(q.get("state", "")).upper() != "ACTIVE":
            return False
        return not self.analysis_only or str(q.get("type", "")).lower() in ANALYSIS_TYPES

    @staticmethod
    def _queue_name(key: str, q: dict[str, Any]) -> str:
        return str(q.get("panda_resource") or key)

    @staticmethod
    def _queue_site(q: dict[str, Any]) -> str:
        return str(q.get("rc_site") or q.get("atlas_site") or "")

    @staticmethod
    def _queue_endpoints(q: dict[str, Any], by_site: dict[str, list[str]], site: str) -> tuple[str, ...]:
        found: list[str] = []
        astorages = q.get("astorages")
        if isinstance(astorages, dict):
            for activity in READ_ACTIVITIES:
                names = astorages.get(activity) or []
                if isinstance(names, str):
                    names = names.split(",")
                for n in names:
                    n = str(n).strip()
                    if n and n not in found:
                        found.append(n)
        if not found and isinstance(q.get("ddm"), str):
            found = [n.strip() for n in q["ddm"].split(",") if n.strip()]
        if not found:
            found = list(by_site.get(site, ()))
        return tuple(dict.fromkeys(found))

    @staticmethod
    def _contacts(s: dict[str, Any]) -> tuple[str, ...]:
        raw = s.get("contacts")
        if raw is None:
            raw = s.get("email")
        if isinstance(raw, str):
            raw = raw.split(",")
        if not isinstance(raw, (list, tuple)):
            return ()
        return tuple(c.strip() for c in raw if isinstance(c, str) and c.strip())

    # ---------------------------------------------------------------- API

    def topology(self) -> Topology:
        queues_raw = self._get_objects(PANDAQUEUE_PATH)
        endpoints_raw = self._get_objects(DDMENDPOINT_PATH)
        sites_raw = self._get_objects(SITE_PATH)

        endpoints: list[EndpointInfo] = []
        by_site: dict[str, list[str]] = {}
        for key, e in sorted(endpoints_raw.items()):
            name = str(e.get("name") or key)
            site = str(e.get("rc_site") or "")
            endpoints.append(EndpointInfo(name=name, site=site))
            if site:
                by_site.setdefault(site, []).append(name)

        sites: dict[str, SiteInfo] = {}
        for key, s in sorted(sites_raw.items()):
            name = str(s.get("rc_site") or s.get("name") or key)
            cloud = str(s.get("cloud") or "")
            contacts = self._contacts(s)
            if name in sites:  # several ATLAS sites on one GOCDB site: merge contacts
                old = sites[name]
                sites[name] = SiteInfo(name, old.cloud or cloud,
                                       tuple(dict.fromkeys(old.contacts + contacts)))
            else:
                sites[name] = SiteInfo(name, cloud, contacts)

        queues: list[QueueInfo] = []
        for key, q in sorted(queues_raw.items()):
            if not self._keep_queue(q):
                continue
            name = self._queue_name(key, q)
            site = self._queue_site(q)
            if not site:
                log.warning("CRIC queue %s has no rc_site/atlas_site; skipped", name)
                continue
            cloud = str(q.get("cloud") or (sites[site].cloud if site in sites else ""))
            if site not in sites:
                sites[site] = SiteInfo(site, cloud)
            queues.append(QueueInfo(name=name, site=site, cloud=cloud,
                                    endpoints=self._queue_endpoints(q, by_site, site)))
        if not queues:
            raise BackendUnavailable(
                f"CRIC GET {PANDAQUEUE_PATH}: no active queues of the wanted type in the answer")
        return Topology(sites=tuple(sites.values()), endpoints=tuple(endpoints), queues=tuple(queues))

    def _statuses(self, *, filtered: bool) -> dict[str, QueueStatus]:
        out: dict[str, QueueStatus] = {}
        for key, q in self._get_objects(PANDAQUEUE_PATH).items():
            if filtered and not self._keep_queue(q):
                continue
            name = self._queue_name(key, q)
            raw = str(q.get("status", "")).lower()
            try:
                out[name] = QueueStatus(raw)
            except ValueError:
                log.warning("CRIC queue %s has unknown status %r; skipped", name, q.get("status"))
        return out

    def queue_status(self) -> dict[str, QueueStatus]:
        return self._statuses(filtered=True)

    def downtimes(self, now: datetime) -> list[Downtime]:
        """The sites' announced outages around now; a malformed answer is tried again like a failed request."""
        return self._request("GET", DOWNTIME_PATH, read=lambda answer: parse_cric(answer.json(), now))

    def set_queue_status(self, queue: str, status: QueueStatus, reason: str, actor: str) -> QueueStatus:
        value = QueueStatus(status).value.upper()
        probe = self.manual_probe if actor.startswith("person:") else self.probe
        self._request("POST", SET_PROBESTATUS_PATH, {
            "panda_resource": queue, "value": value, "reason": f"{reason} [{actor}]", "probe": probe,
        })
        log.info("CRIC set %s to %s as probe %s for %s: %s", queue, value, probe, actor, reason)
        now = self._statuses(filtered=False)
        if queue not in now:
            raise BackendUnavailable(
                f"CRIC GET {PANDAQUEUE_PATH}: queue {queue} missing from read-back")
        if now[queue] != QueueStatus(status):
            log.warning("CRIC read-back for %s is %s, wanted %s", queue, now[queue], status)
        return now[queue]
