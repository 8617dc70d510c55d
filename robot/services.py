"""Build the robot's parts from its configuration: database, backend, topology and catalogue."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from blacklist.engine import ExclusionEngine
from blacklist.notify import Notifier
from blacklist.policies import Policy
from robot.backends.base import Backend
from robot.backends.embedded.config import load_grid_config
from robot.backends.embedded.grid import EmbeddedGrid
from robot.classify import load_table
from robot.clock import Clock
from robot.config import RobotConfig
from robot.loop import Robot
from robot.stress import StressSupervisor
from robot.stress_report import build_report
from robot.storage.database import make_engine, make_sessionmaker


@dataclass
class Services:
    config: RobotConfig
    engine: Engine
    sessions: sessionmaker[Session]
    grid: EmbeddedGrid
    robot: Robot

    def close(self) -> None:
        self.grid.stop()
        self.grid.state.close()
        self.engine.dispose()


def grid_state_dir(config: RobotConfig) -> Path:
    return config.data_path / "grid"


def open_grid(config: RobotConfig, clock: Clock) -> EmbeddedGrid:
    grid_config = load_grid_config(config.resolve(config.backend.embedded.grid))
    return EmbeddedGrid(grid_config, grid_state_dir(config), clock, config.backend.embedded.max_parallel_jobs)


def exclusion_engine(config: RobotConfig, backend: Backend) -> ExclusionEngine:
    functional = [t.name for t in config.templates if t.category == "functional" and t.active]
    critical = tuple(config.blacklist.critical_templates or functional)
    return ExclusionEngine(Policy(config.blacklist, critical), backend)


def build(config: RobotConfig, clock: Clock) -> Services:
    engine = make_engine(config.database_url, config.database.echo)
    sessions = make_sessionmaker(engine)
    grid = open_grid(config, clock)
    table = load_table(config.resolve(config.classification.table) if config.classification.table else None)
    robot = Robot(config, sessions, backend=grid, catalogue=grid.storage, topology=grid.storage, error_table=table,
                  evaluators=[StressSupervisor(config, grid, report=build_report), exclusion_engine(config, grid),
                              Notifier(config.blacklist.notify, config.blacklist.actor)])
    return Services(config=config, engine=engine, sessions=sessions, grid=grid, robot=robot)
