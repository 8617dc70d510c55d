"""Shared fixtures: a tiny embedded grid built in a temporary folder, and a "wait until final" helper.

    def test_something(tiny_grid, wait_final):
        grid = tiny_grid.grid({"ANALY_A": {}, "ANALY_B": {"slots": 1}})
        ids = grid.submit([tiny_grid.request("ANALY_A")])
        reports = wait_final(grid, ids)

Databases: `database_url` is parametrized, so a test that takes it runs twice, on a SQLite file and on
a fresh database of a private PostgreSQL cluster (tests/pgserver.py, started once per session when a
test first needs it, stopped at the end). It fails, never skips, when PostgreSQL cannot start. A test
module opts all the robots `tests.fakes.make_robot` builds into both databases with
`pytestmark = pytest.mark.usefixtures("database_url")`.

Every queue gets its own site and storage endpoint (`<QUEUE>_DATADISK`, site `SITE-<QUEUE>`); a
queue's dict holds QueueConfig keys plus an optional `endpoint` dict of EndpointConfig keys. The
default dataset (`TINY_ZMUMU`: 2 files x 2000 events) is generated once per session and copied into
each grid's state folder, so `prepare()` only lays out the replicas. Random user-like failures are
off (user_failure_rate 0) unless a test asks for them. Grids are stopped (pilots killed) and their
state closed when the test (or the factory's owner) ends.
"""
from __future__ import annotations

import shutil
import uuid
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import pytest
import yaml

from robot.backends.base import InputFile, JobReport, JobRequest
from robot.backends.embedded.config import GridConfig
from robot.backends.embedded.grid import EmbeddedGrid
from robot.clock import Clock, ManualClock, SystemClock
from robot.jobstates import FINAL_STATES
from tests import fakes
from tests.fakes import T0
from tests.pgserver import PostgresServer, postgres_server
from testjobs.datasets import generate_dataset, load_manifest

# Named like the demo's Z->mumu sample, so templates matching "*Zmumu*" find it.
TINY_ZMUMU = {"name": "mc23_13p6TeV.601189.PhPy8EG_Zmumu.deriv.DAOD_PHYS.e8514_s4162_r14622_p6026",
              "files": 2, "events_per_file": 2000, "seed": 1189}
TINY_DATA = {"name": "data23_13p6TeV.00456749.physics_Main.deriv.DAOD_PHYS.r15243_p6026",
             "files": 1, "events_per_file": 1000, "seed": 456749}


class DatasetCache:
    """Generates each dataset once per session; grids get copies of the files."""

    def __init__(self, root: Path):
        self.root = root

    def copy_into(self, datasets_dir: Path, spec: dict[str, Any]) -> None:
        key = f"{spec['name']}__{spec['files']}x{spec['events_per_file']}__{spec.get('seed', 0)}"
        source = self.root / key / spec["name"]
        if not (source / "manifest.json").exists():
            generate_dataset(self.root / key, spec["name"], spec["files"], spec["events_per_file"], spec.get("seed", 0))
        target = datasets_dir / spec["name"]
        if not target.exists():
            shutil.copytree(source, target)


@dataclass(frozen=True)
class RobotFiles:
    """A robot configuration pointing at a tiny grid: pass `robot_yaml` to `--config`."""

    robot_yaml: Path
    grid_yaml: Path
    data_dir: Path
    state_dir: Path  # the grid's state folder (data_dir/grid), datasets already in place


class GridFactory:
    """Builds tiny embedded grids under `base_dir`; `close()` stops them all."""

    def __init__(self, base_dir: Path, cache: DatasetCache):
        self.base_dir = base_dir
        self.cache = cache
        self.grids: list[EmbeddedGrid] = []
        self._count = 0

    # -- configuration --------------------------------------------------------------------------
    def raw_config(self, queues: dict[str, dict[str, Any]], *, faults: Iterable[dict[str, Any]] = (),
                   datasets: Sequence[dict[str, Any]] = (TINY_ZMUMU,), seed: int = 1,
                   **defaults: Any) -> dict[str, Any]:
        """The grid YAML as a dict: one site and storage endpoint per queue, in cloud `XX`."""
        sites = {}
        for name, queue in queues.items():
            queue = dict(queue)
            endpoint = queue.pop("endpoint", {})
            sites[f"SITE-{name}"] = {"contacts": [f"admins-{name.lower()}@example.org"],
                                     "storage": {f"{name}_DATADISK": endpoint}, "queues": {name: queue}}
        return {"defaults": {"user_failure_rate": 0.0, **defaults}, "seed": seed,
                "datasets": [dict(d) for d in datasets], "clouds": {"XX": {"sites": sites}},
                "faults": [dict(f) for f in faults]}

    def config(self, queues: dict[str, dict[str, Any]], **kwargs: Any) -> GridConfig:
        return GridConfig.model_validate(self.raw_config(queues, **kwargs))

    def new_dir(self, prefix: str = "grid") -> Path:
        self._count += 1
        path = self.base_dir / f"{prefix}{self._count}"
        path.mkdir(parents=True)
        return path

    def seed_datasets(self, state_dir: Path, config: GridConfig) -> None:
        for dataset in config.datasets:
            self.cache.copy_into(state_dir / "datasets", dataset.model_dump())

    # -- grids ------------------------------------------------------------------------------------
    def open(self, config: GridConfig, state_dir: Path, clock: Clock | None = None,
             max_parallel_jobs: int = 4) -> EmbeddedGrid:
        """An EmbeddedGrid on `state_dir` with its data prepared; closed by `close()`."""
        self.seed_datasets(state_dir, config)
        grid = EmbeddedGrid(config, state_dir, clock or SystemClock(), max_parallel_jobs)
        grid.storage.prepare()
        self.grids.append(grid)
        return grid

    def grid(self, queues: dict[str, dict[str, Any]] | None = None, *, clock: Clock | None = None,
             max_parallel_jobs: int = 4, state_dir: Path | None = None, **config: Any) -> EmbeddedGrid:
        """A new tiny grid (default: one healthy queue ANALY_TINY)."""
        grid_config = self.config(queues if queues is not None else {"ANALY_TINY": {}}, **config)
        return self.open(grid_config, state_dir or self.new_dir() / "grid", clock, max_parallel_jobs)

    def write_files(self, queues: dict[str, dict[str, Any]] | None = None, *, max_parallel_jobs: int = 4,
                    templates: Sequence[dict[str, Any]] = (), robot: dict[str, Any] | None = None,
                    **config: Any) -> RobotFiles:
        """A robot YAML and grid YAML in a new folder; the grid's datasets are already in place."""
        root = self.new_dir("robot")
        raw = self.raw_config(queues if queues is not None else {"ANALY_TINY": {}}, **config)
        grid_yaml = root / "grid.yaml"
        grid_yaml.write_text(yaml.safe_dump(raw, sort_keys=False))
        data_dir = root / "data"
        robot_raw = {"data_dir": str(data_dir),
                     "backend": {"kind": "embedded", "embedded": {"grid": str(grid_yaml),
                                                                  "max_parallel_jobs": max_parallel_jobs}},
                     "templates": [dict(t) for t in templates], **(robot or {})}
        robot_yaml = root / "robot.yaml"
        robot_yaml.write_text(yaml.safe_dump(robot_raw, sort_keys=False))
        state_dir = data_dir / "grid"
        self.seed_datasets(state_dir, GridConfig.model_validate(raw))
        return RobotFiles(robot_yaml=robot_yaml, grid_yaml=grid_yaml, data_dir=data_dir, state_dir=state_dir)

    def close(self) -> None:
        for grid in self.grids:
            grid.stop(kill_running=True)
            grid.state.close()
        self.grids.clear()

    # -- jobs -------------------------------------------------------------------------------------
    def request(self, queue: str, *, grid: EmbeddedGrid | None = None, dataset: str = TINY_ZMUMU["name"],
                max_events: int = 10**6, max_wall_seconds: int = 600, payload: str = "zmumu",
                job_name: str | None = None, **extra: Any) -> JobRequest:
        """A test job reading every file of `dataset` (from the manifest, whatever the replicas hold)."""
        grid = grid or self.grids[-1]
        manifest = load_manifest(grid.storage.datasets_dir / dataset / "manifest.json")
        files = tuple(InputFile(lfn=f.lfn, guid=f.guid, scope=manifest.scope, dataset=manifest.name,
                                bytes=f.bytes, events=f.events, adler32=f.adler32) for f in manifest.files)
        self._count += 1
        return JobRequest(job_name=job_name or f"test.{queue}.{self._count}.{time.monotonic_ns()}", queue=queue,
                          payload=payload, dataset=dataset, files=files, max_events=max_events,
                          max_wall_seconds=max_wall_seconds, **extra)


def wait_until_final(grid: EmbeddedGrid, panda_ids: Sequence[int], timeout: float = 30.0, poll: float = 0.05,
                     on_poll: Callable[[dict[int, JobReport | None]], None] | None = None) -> dict[int, JobReport]:
    """Call `grid.status` (which ticks the grid) until every job is final; fails the test on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        reports = grid.status(list(panda_ids))
        if on_poll is not None:
            on_poll(reports)
        missing = [pid for pid, report in reports.items() if report is None]
        assert not missing, f"the grid does not know jobs {missing}"
        if all(report.job_status in FINAL_STATES for report in reports.values()):
            return reports  # type: ignore[return-value]
        if time.monotonic() > deadline:
            states = {pid: report.job_status.value for pid, report in reports.items()}
            raise AssertionError(f"jobs not final after {timeout:g} s: {states}")
        time.sleep(poll)


@pytest.fixture(scope="session")
def grid_dataset_cache(tmp_path_factory) -> DatasetCache:
    return DatasetCache(tmp_path_factory.mktemp("grid-datasets"))


@pytest.fixture(scope="session")
def new_grid_factory(grid_dataset_cache) -> Callable[[Path], GridFactory]:
    """For module-scoped fixtures: `factory = new_grid_factory(dir)`; call `factory.close()` at the end."""
    return lambda base_dir: GridFactory(base_dir, grid_dataset_cache)


@pytest.fixture
def tiny_grid(tmp_path, grid_dataset_cache):
    """A GridFactory in tmp_path: `tiny_grid.grid({...})`, `tiny_grid.request(queue)`, `tiny_grid.write_files()`."""
    factory = GridFactory(tmp_path, grid_dataset_cache)
    yield factory
    factory.close()


@pytest.fixture
def wait_final():
    """`wait_final(grid, ids, timeout=30)`: tick and poll until every job is final; returns the reports."""
    return wait_until_final


@pytest.fixture
def clock():
    """Virtual time at the scripted tests' start (tests.fakes.T0)."""
    return ManualClock(T0)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """The session's private PostgreSQL cluster (unix socket in a temp folder, no TCP port)."""
    with postgres_server() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path, monkeypatch) -> Iterator[str]:
    """An empty database, SQLite then PostgreSQL.

    `tests.fakes.make_robot` follows it: on PostgreSQL each robot data folder of the test gets its own
    new database (this one for the first), on SQLite its own file as always."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'robot.db'}"
        return
    server: PostgresServer = request.getfixturevalue("postgres")
    created: list[str] = []

    def new_database() -> str:
        created.append(f"test_{uuid.uuid4().hex[:12]}")
        return server.create_database(created[-1])

    url = new_database()
    by_folder: dict[Path, str] = {}

    def database_for(folder: Path) -> str:
        if Path(folder) not in by_folder:
            by_folder[Path(folder)] = url if not by_folder else new_database()
        return by_folder[Path(folder)]

    monkeypatch.setattr(fakes, "database_for", database_for)
    yield url
    for name in created:
        server.drop_database(name)  # closes what the test left open
