"""The grid's topology as the robot sees it: cloud -> site -> queue, and storage endpoints."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class QueueInfo:
    name: str
    site: str
    cloud: str
    endpoints: tuple[str, ...]  # storage endpoints (RSEs) the queue reads input from
    exempt: bool = False  # never excluded automatically (test/local queues, site opt-out)


@dataclass(frozen=True)
class SiteInfo:
    name: str
    cloud: str
    contacts: tuple[str, ...] = ()


@dataclass(frozen=True)
class EndpointInfo:
    name: str
    site: str


@dataclass(frozen=True)
class Topology:
    sites: tuple[SiteInfo, ...]
    endpoints: tuple[EndpointInfo, ...]
    queues: tuple[QueueInfo, ...]

    @property
    def clouds(self) -> tuple[str, ...]:
        return tuple(sorted({s.cloud for s in self.sites}))


class TopologySource(Protocol):
    def topology(self) -> Topology: ...
