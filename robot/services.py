"""Build the robot's parts from its configuration: database, backend, topology and catalogue."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from blacklist.engine import ExclusionEngine
from blacklist.notify import Notifier
from blacklist.policies import Policy
from robot.backends.base import Backend, QueueStatusStore
from robot.backends.cric import CRICClient
from robot.backends.embedded.config import load_grid_config
from robot.backends.embedded.downtimes import GridDowntimes
from robot.backends.embedded.grid import EmbeddedGrid
from robot.backends.embedded.state import GridState
from robot.backends.embedded.status import GridQueueStatus
from robot.backends.embedded.storage import GridStorage
from robot.catalogue import Catalogue
from robot.classify import ErrorTable, load_table
from robot.clock import Clock
from robot.config import CRICConfig, RobotConfig
from robot.downtimes import DowntimeWatch, GOCDBClient
from robot.userjobs import UserJobWatch
from robot.incidents import CentralIncidents
from robot.loop import Robot
from robot.stress import StressSupervisor
from robot.stress_report import build_report
from robot.storage.database import make_engine, make_sessionmaker
from robot.topology import TopologySource


@dataclass
class Services:
    config: RobotConfig
    engine: Engine
    sessions: sessionmaker[Session]
    robot: Robot
    grid: EmbeddedGrid | None = None  # the embedded grid when it runs in this process
    grid_statuses: GridQueueStatus | None = None  # its state file, when it runs in another process

    def close(self) -> None:
        if self.grid is not None:
            self.grid.stop()
            self.grid.state.close()
        if self.grid_statuses is not None:
            self.grid_statuses.state.close()
        self.engine.dispose()


def grid_state_dir(config: RobotConfig) -> Path:
    return config.data_path / "grid"


def open_grid(config: RobotConfig, clock: Clock) -> EmbeddedGrid:
    grid_config = load_grid_config(config.resolve(config.backend.embedded.grid))
    return EmbeddedGrid(grid_config, grid_state_dir(config), clock, config.backend.embedded.max_parallel_jobs)


def exclusion_engine(config: RobotConfig, backend: Backend) -> ExclusionEngine:
    functional = [t.name for t in config.templates if t.category == "functional" and t.active]
    critical = tuple(config.blacklist.critical_templates or functional)
    # Other robot processes commit the results they poll up to a step after the time they carry.
    return ExclusionEngine(Policy(config.blacklist, critical), backend, lag=2 * config.loop.interval)


@dataclass
class GridParts:
    """What the robot takes from the grid's side: topology, queue statuses, input data."""

    topology: TopologySource
    statuses: QueueStatusStore
    catalogue: Catalogue


def cric_client(settings: CRICConfig, resolve: Callable[[str], Path] = Path) -> CRICClient:
    """The CRIC client; file names are resolved against the configuration's folder."""
    cert_file, key_file = settings.cert_file, settings.key_file or settings.cert_file
    cert = (str(resolve(cert_file)), str(resolve(key_file))) if cert_file and key_file else None
    token = resolve(settings.token_file).read_text().strip() if settings.token_file else None
    ca_path = str(resolve(settings.ca_path)) if settings.ca_path else None
    return CRICClient(settings.url, cert=cert, ca_path=ca_path, token=token, probe=settings.probe,
                      manual_probe=settings.manual_probe,
                      timeout=settings.timeout.total_seconds(), retries=settings.retries)


def topology_source(config: RobotConfig) -> TopologySource:
    """Where the configured topology is read, without starting anything (CRIC, or the grid's YAML)."""
    if config.topology.source == "cric":
        assert config.topology.cric is not None  # checked by the configuration model
        return cric_client(config.topology.cric, config.resolve)
    grid = load_grid_config(config.resolve(config.backend.embedded.grid))
    return GridStorage(grid, grid_state_dir(config))


def grid_parts(config: RobotConfig, clock: Clock, grid: EmbeddedGrid | None) -> GridParts:
    """Each service is embedded or real by its own switch in the configuration."""
    storage: GridStorage | None = grid.storage if grid is not None else None
    statuses: QueueStatusStore | None = grid
    if grid is None and config.topology.source == "embedded":
        # The embedded grid runs in another process (`healthrobot grid serve`): read its files.
        storage = GridStorage(load_grid_config(config.resolve(config.backend.embedded.grid)), grid_state_dir(config))
        statuses = GridQueueStatus(GridState(grid_state_dir(config) / "grid.sqlite"),
                                   [q.name for q in storage.queue_settings()], clock)
    topology: TopologySource | None = storage
    if config.topology.source == "cric":
        assert config.topology.cric is not None  # checked by the configuration model
        topology = statuses = cric_client(config.topology.cric, config.resolve)
    catalogue: Catalogue | None = storage
    if config.datasets.source == "rucio":
        from robot.rucio_catalogue import RucioCatalogue  # rucio-clients is imported only when used

        catalogue = RucioCatalogue.from_config(config, clock)
    assert topology is not None and statuses is not None and catalogue is not None  # by the configuration model
    return GridParts(topology=topology, statuses=statuses, catalogue=catalogue)


def panda_backend(config: RobotConfig, statuses: QueueStatusStore | None) -> Backend:
    """The PanDA backend as configured (`statuses`: where queue statuses are read and set)."""
    from robot.backends.panda import PandaBackend  # panda-client is imported only when used

    assert config.backend.panda is not None  # checked by the configuration model
    settings = config.backend.panda
    files = {key: str(config.resolve(value)) for key in ("proxy_file", "token_file", "ca_dir")
             if (value := getattr(settings, key))}  # relative to the configuration's folder
    # Without CRIC, queue statuses are read where PanDA shows them (metaconfig/get_site_specs).
    return PandaBackend(settings.model_copy(update=files), statuses,  # type: ignore[arg-type]
                        statuses_from_server=config.topology.source != "cric")


def downtime_watch(config: RobotConfig, state: GridState | None, cric: CRICClient | None = None) -> DowntimeWatch | None:
    """The loop step that reads announced downtimes from the configured source (none: no step).

    `state`: the embedded grid's state, when this process has it open already; `cric`: the topology's
    CRIC client, when it has one.
    """
    source = config.downtime_source
    if source == "none":
        return None
    if source == "cric":
        assert config.topology.cric is not None  # checked by the configuration model
        return DowntimeWatch(cric or cric_client(config.topology.cric, config.resolve), config.downtimes.refresh,
                             background=True)
    if source == "gocdb":
        settings = config.downtimes.gocdb
        client = GOCDBClient(settings.url, timeout=settings.timeout.total_seconds(), retries=settings.retries,
                             ca_path=str(config.resolve(settings.ca_path)) if settings.ca_path else None)
        return DowntimeWatch(client, config.downtimes.refresh, background=True)
    state = state if state is not None else GridState(grid_state_dir(config) / "grid.sqlite")
    return DowntimeWatch(GridDowntimes(state), config.downtimes.refresh)


def user_job_watch(config: RobotConfig, backend: Backend, table: ErrorTable) -> UserJobWatch | None:
    """The loop step that reads users' own jobs from the backend (none: not read, or PanDA without its monitor)."""
    if not config.user_jobs.read or (config.backend.kind == "panda" and not (config.backend.panda and
                                                                             config.backend.panda.monitor_url)):
        return None
    return UserJobWatch(backend, table, config.user_jobs.refresh, config.user_jobs.look_back)


def build(config: RobotConfig, clock: Clock, grid: EmbeddedGrid | None = None) -> Services:
    """The robot as configured. `grid`: an embedded grid already running in this process (the demo)."""
    engine = make_engine(config.database_url, config.database.echo)
    sessions = make_sessionmaker(engine)
    if grid is None and config.backend.kind == "embedded":
        grid = open_grid(config, clock)
    parts = grid_parts(config, clock, grid)
    backend: Backend
    if config.backend.kind == "panda":
        backend = panda_backend(config, parts.statuses)
    else:
        assert grid is not None
        backend = grid
    table = load_table(config.resolve(config.classification.table) if config.classification.table else None)
    watch = downtime_watch(config, grid.state if grid is not None else
                           parts.statuses.state if isinstance(parts.statuses, GridQueueStatus) else None,
                           parts.topology if isinstance(parts.topology, CRICClient) else None)
    users = user_job_watch(config, backend, table)
    robot = Robot(config, sessions, backend=backend, catalogue=parts.catalogue, topology=parts.topology,
                  error_table=table,
                  evaluators=[*([watch] if watch else []), *([users] if users else []),
                              StressSupervisor(config, backend, report=build_report), exclusion_engine(config, backend), CentralIncidents(),
                              Notifier(config.blacklist.notify, config.blacklist.actor)])
    return Services(config=config, engine=engine, sessions=sessions, robot=robot, grid=grid,
                    grid_statuses=parts.statuses if isinstance(parts.statuses, GridQueueStatus) else None)
