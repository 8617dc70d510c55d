"""The embedded grid's description: clouds, sites, storage endpoints, queues and scheduled faults."""
from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated

from pydantic import Field, model_validator

from robot.yamlconfig import Duration, PositiveInt, Strict, load_yaml_model


class FaultMode(StrEnum):
    STAGEIN = "stagein"  # 1099 STAGEINFAILED
    STAGEIN_TIMEOUT = "stagein_timeout"  # 1151
    MISSING_INPUT = "missing_input"  # 1331
    NO_LOCAL_SPACE = "no_local_space"  # 1098
    STORAGE_FULL = "storage_full"  # 1333 at stage-out
    STAGEOUT = "stageout"  # 1137
    CONTAINER = "container"  # 1306
    CVMFS = "cvmfs"  # 1377
    SLOW = "slow"  # slow worker nodes: events/s drops, no error
    STUCK = "stuck"  # jobs are not dispatched, they wait in the queue
    CRASH = "crash"  # the payload dies with SIGSEGV
    NOT_ACTIVATED = "not_activated"  # the server does not set jobs up: they stay `defined` (not the site's wait)


class QueueConfig(Strict):
    slots: PositiveInt | None = None
    cpu_speed: Annotated[float, Field(gt=0, le=10)] | None = None
    storage: str | None = None  # default: the site's first storage endpoint
    exempt: bool = False
    user_failure_rate: Annotated[float, Field(ge=0, le=1)] | None = None


class EndpointConfig(Strict):
    bandwidth_mb_s: Annotated[float, Field(gt=0)] | None = None
    datasets: list[str] = ["*"]  # glob patterns of the datasets with a complete replica here
    incomplete: list[str] = []  # glob patterns of datasets present but not complete


class SiteConfig(Strict):
    contacts: list[str] = []
    storage: dict[str, EndpointConfig]
    queues: dict[str, QueueConfig]


class CloudConfig(Strict):
    sites: dict[str, SiteConfig]


class DefaultsConfig(Strict):
    slots: PositiveInt = 4
    cpu_speed: Annotated[float, Field(gt=0, le=10)] = 1.0
    bandwidth_mb_s: Annotated[float, Field(gt=0)] = 200.0
    user_failure_rate: Annotated[float, Field(ge=0, le=1)] = 0.02
    user_jobs_per_hour: Annotated[float, Field(ge=0, le=1000)] = 20.0  # background users' jobs per queue (0: none)
    user_job_failure_rate: Annotated[float, Field(ge=0, le=1)] = 0.12  # share of them failing for their own reasons


class ScheduledFault(Strict):
    queue: str
    mode: FaultMode
    start: datetime | None = None  # absolute UTC time, or
    start_after: Duration | None = None  # relative to the grid's first start
    duration: Duration = timedelta(hours=1)
    probability: Annotated[float, Field(ge=0, le=1)] = 1.0
    slowdown: Annotated[float, Field(ge=1)] = 4.0  # for mode slow

    @model_validator(mode="after")
    def _one_start(self) -> "ScheduledFault":
        if (self.start is None) == (self.start_after is None):
            raise ValueError("give exactly one of 'start' (UTC time) or 'start_after' (duration)")
        return self


class DatasetConfig(Strict):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")]
    files: PositiveInt
    events_per_file: PositiveInt
    seed: int = 0


class GridConfig(Strict):
    defaults: DefaultsConfig = DefaultsConfig()
    clouds: dict[str, CloudConfig]
    datasets: list[DatasetConfig] = []
    faults: list[ScheduledFault] = []
    seed: int = 1  # random stream for user-like failures

    @model_validator(mode="after")
    def _references(self) -> "GridConfig":
        queues: set[str] = set()
        endpoints: set[str] = set()
        for cloud_name, cloud in self.clouds.items():
            for site_name, site in cloud.sites.items():
                if not site.storage:
                    raise ValueError(f"clouds.{cloud_name}.sites.{site_name}.storage: a site needs at least one storage endpoint")
                for queue_name, queue in site.queues.items():
                    if queue_name in queues:
                        raise ValueError(f"queue {queue_name} is defined twice")
                    if queue.storage is not None and queue.storage not in site.storage:
                        raise ValueError(
                            f"clouds.{cloud_name}.sites.{site_name}.queues.{queue_name}.storage: "
                            f"{queue.storage!r} is not one of the site's endpoints {sorted(site.storage)}"
                        )
                    queues.add(queue_name)
                endpoints.update(site.storage)
        for i, fault in enumerate(self.faults):
            if fault.queue not in queues:
                raise ValueError(f"faults[{i}].queue: unknown queue {fault.queue!r}")
        return self


def load_grid_config(path: Path | str) -> GridConfig:
    return load_yaml_model(path, GridConfig)
