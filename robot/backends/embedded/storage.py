"""The embedded grid's sites on disk: generated datasets, storage endpoints, topology, catalogue.

Layout of the state folder:
  datasets/<name>/            ROOT files and manifest.json, generated once from a seed
  storage/<RSE>/<name>/<lfn>  a replica: links to the generated files (all of them when complete)
  storage/<RSE>/scratch/      where test jobs stage their output out
"""
from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from robot.backends.base import InputFile
from robot.backends.embedded.config import GridConfig
from robot.catalogue import DatasetInfo
from robot.topology import EndpointInfo, QueueInfo, SiteInfo, Topology
from testjobs.datasets import generate_dataset, load_manifest


@dataclass(frozen=True)
class QueueSettings:
    name: str
    site: str
    cloud: str
    endpoint: str
    slots: int
    cpu_speed: float
    bandwidth_mb_s: float
    user_failure_rate: float
    exempt: bool


class GridStorage:
    def __init__(self, config: GridConfig, state_dir: Path):
        self.config = config
        self.datasets_dir = state_dir / "datasets"
        self.storage_dir = state_dir / "storage"

    # -- topology -------------------------------------------------------------------------------
    def queue_settings(self) -> list[QueueSettings]:
        defaults = self.config.defaults
        found = []
        for cloud_name, cloud in self.config.clouds.items():
            for site_name, site in cloud.sites.items():
                for queue_name, queue in site.queues.items():
                    endpoint = queue.storage or next(iter(site.storage))
                    bandwidth = site.storage[endpoint].bandwidth_mb_s or defaults.bandwidth_mb_s
                    found.append(QueueSettings(
                        name=queue_name, site=site_name, cloud=cloud_name, endpoint=endpoint,
                        slots=queue.slots or defaults.slots,
                        cpu_speed=queue.cpu_speed or defaults.cpu_speed,
                        bandwidth_mb_s=bandwidth,
                        user_failure_rate=(defaults.user_failure_rate if queue.user_failure_rate is None
                                           else queue.user_failure_rate),
                        exempt=queue.exempt,
                    ))
        return found

    def topology(self) -> Topology:
        sites, endpoints = [], []
        for cloud_name, cloud in self.config.clouds.items():
            for site_name, site in cloud.sites.items():
                sites.append(SiteInfo(name=site_name, cloud=cloud_name, contacts=tuple(site.contacts)))
                endpoints.extend(EndpointInfo(name=rse, site=site_name) for rse in site.storage)
        queues = tuple(
            QueueInfo(name=q.name, site=q.site, cloud=q.cloud, endpoints=(q.endpoint,), exempt=q.exempt)
            for q in self.queue_settings()
        )
        return Topology(sites=tuple(sites), endpoints=tuple(endpoints), queues=queues)

    # -- data -----------------------------------------------------------------------------------
    def prepare(self) -> list[str]:
        """Generate missing datasets and lay out the replicas; idempotent. Returns what it made."""
        made = []
        for dataset in self.config.datasets:
            if not (self.datasets_dir / dataset.name / "manifest.json").exists():
                generate_dataset(self.datasets_dir, dataset.name, dataset.files, dataset.events_per_file, dataset.seed)
                made.append(dataset.name)
        for cloud in self.config.clouds.values():
            for site in cloud.sites.values():
                for rse, endpoint in site.storage.items():
                    self._lay_out(rse, endpoint.datasets, endpoint.incomplete)
        return made

    def _lay_out(self, rse: str, complete: list[str], incomplete: list[str]) -> None:
        for dataset in self.config.datasets:
            manifest = load_manifest(self.datasets_dir / dataset.name / "manifest.json")
            if _matches(dataset.name, incomplete):
                files = manifest.files[: len(manifest.files) // 2]
            elif _matches(dataset.name, complete):
                files = manifest.files
            else:
                continue
            replica = self.storage_dir / rse / dataset.name
            replica.mkdir(parents=True, exist_ok=True)
            for entry in files:
                link = replica / entry.lfn
                if not link.exists():
                    os.symlink(self.datasets_dir / dataset.name / entry.lfn, link)

    def complete_datasets(self, endpoint: str, pattern: str) -> list[DatasetInfo]:
        """The Catalogue call: datasets matching `pattern` with every file present at `endpoint`."""
        found = []
        rse_dir = self.storage_dir / endpoint
        if not rse_dir.is_dir():
            return found
        for replica in sorted(rse_dir.iterdir()):
            manifest_path = self.datasets_dir / replica.name / "manifest.json"
            if not fnmatch.fnmatchcase(replica.name, pattern) or not manifest_path.exists():
                continue
            manifest = load_manifest(manifest_path)
            if all((replica / f.lfn).exists() for f in manifest.files):
                files = tuple(
                    InputFile(lfn=f.lfn, guid=f.guid, scope=manifest.scope, dataset=manifest.name,
                              bytes=f.bytes, events=f.events, adler32=f.adler32)
                    for f in manifest.files
                )
                found.append(DatasetInfo(scope=manifest.scope, name=manifest.name, files=files))
        return found

    def input_paths(self, endpoint: str, dataset: str, files: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Where the pilot finds each input file at the endpoint (it may be missing: that is a fault)."""
        replica = self.storage_dir / endpoint / dataset
        return [{"lfn": f["lfn"], "source": str(replica / f["lfn"]), "bytes": f["bytes"], "adler32": f["adler32"]}
                for f in files]

    def scratch(self, endpoint: str) -> Path:
        return self.storage_dir / endpoint / "scratch"


def _matches(name: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)
