"""Each service is embedded or real by its own switch in the configuration, and only by it."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from robot.backends.base import BackendUnavailable
from robot.backends.cric import CRICClient
from robot.backends.embedded.grid import EmbeddedGrid
from robot.backends.embedded.state import GridState
from robot.backends.embedded.storage import GridStorage
from robot.config import load_config
from robot.rucio_catalogue import RucioCatalogue
from robot.jobstates import QueueStatus
from robot.services import build
from robot.yamlconfig import ConfigError
from tests.fakes import T0


class Clock:
    def now(self):
        return T0


def configure(path: Path, **changes) -> Path:
    raw = yaml.safe_load(path.read_text())
    raw.update(changes)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_default_runs_everything_on_the_embedded_grid(tiny_grid):
    files = tiny_grid.write_files()
    services = build(load_config(files.robot_yaml), Clock())
    try:
        assert isinstance(services.grid, EmbeddedGrid)
        assert services.robot.backend is services.grid
        assert services.robot.topology is services.grid.storage
        assert services.robot.catalogue is services.grid.storage
    finally:
        services.close()


def test_panda_backend_with_the_grid_in_another_process_reads_statuses_from_panda(tiny_grid):
    from robot.backends.embedded import panda_service

    files = tiny_grid.write_files({"ANALY_TINY": {}, "ANALY_OTHER": {}})
    server_grid = tiny_grid.open(tiny_grid.config({"ANALY_TINY": {}, "ANALY_OTHER": {}}), files.state_dir)
    with panda_service.serve(server_grid) as service:
        raw = yaml.safe_load(files.robot_yaml.read_text())
        raw["backend"].update(kind="panda", panda={"url": service.url, "auth": "none", "retries": 0})
        files.robot_yaml.write_text(yaml.safe_dump(raw))
        services = build(load_config(files.robot_yaml), Clock())
        try:
            assert services.grid is None  # nothing of the grid runs here
            assert services.robot.backend.name == "panda"
            assert isinstance(services.robot.topology, GridStorage)
            assert [q.name for q in services.robot.topology.topology().queues] == ["ANALY_TINY", "ANALY_OTHER"]
            # A queue set offline at the server is offline for the robot (read from get_site_specs).
            server_grid.set_queue_status("ANALY_OTHER", QueueStatus.OFFLINE, "downtime", "site admin")
            assert services.robot.backend.queue_status() == {"ANALY_TINY": QueueStatus.ONLINE,
                                                             "ANALY_OTHER": QueueStatus.OFFLINE}
            # Exclusions go to the grid's state file, where `grid serve` reads them.
            services.robot.backend.set_queue_status("ANALY_TINY", QueueStatus.BROKEROFF, "test", "robot")
            assert services.robot.backend.queue_status()["ANALY_TINY"] is QueueStatus.BROKEROFF
            state = GridState(files.state_dir / "grid.sqlite")
            assert state.queue_statuses()["ANALY_TINY"] is QueueStatus.BROKEROFF
            state.close()
        finally:
            services.close()
    with pytest.raises(BackendUnavailable):  # the server is gone: statuses unknown, not stale
        services.robot.backend.queue_status()


def test_production_takes_topology_and_statuses_from_cric_and_data_from_rucio(tiny_grid, tmp_path):
    files = tiny_grid.write_files()
    (files.robot_yaml.parent / "cric.token").write_text("s3cret-cric-token\n")
    (files.robot_yaml.parent / "rucio.pass").write_text("s3cret-rucio-password\n")
    (files.robot_yaml.parent / "panda.token").write_text("s3cret-panda-token\n")
    raw = yaml.safe_load(files.robot_yaml.read_text())
    raw["backend"].update(kind="panda", panda={"url": "https://pandaserver.example:25443/server/panda",
                                               "auth": "oidc", "token_file": "panda.token"})
    raw["topology"] = {"source": "cric", "cric": {"url": "https://cric.example", "token_file": "cric.token",
                                                  "probe": "qhr-probe", "retries": 1}}
    raw["datasets"] = {"source": "rucio", "rucio": {"host": "https://rucio.example", "account": "qhr",
                                                    "auth_type": "userpass", "username": "qhr",
                                                    "password_file": "rucio.pass"}}
    files.robot_yaml.write_text(yaml.safe_dump(raw))
    services = build(load_config(files.robot_yaml), Clock())
    try:
        robot = services.robot
        assert services.grid is None
        assert isinstance(robot.topology, CRICClient) and robot.topology.probe == "qhr-probe"
        assert isinstance(robot.catalogue, RucioCatalogue)
        assert robot.backend.name == "panda" and robot.backend.status_store is robot.topology  # exclusions go to CRIC
        everything = " ".join(repr(x) for x in (robot.topology, robot.catalogue, robot.backend, services))
        assert "s3cret" not in everything
    finally:
        services.close()


def test_cric_topology_needs_the_panda_backend_and_rucio(tmp_path):
    path = tmp_path / "robot.yaml"
    path.write_text("topology:\n  source: cric\n  cric:\n    url: https://cric.example\n")
    with pytest.raises(ConfigError, match="topology.source cric needs backend.kind panda"):
        load_config(path)
    path.write_text("backend:\n  kind: panda\n  panda:\n    url: https://p.example/server/panda\n"
                    "topology:\n  source: cric\n  cric:\n    url: https://cric.example\n")
    with pytest.raises(ConfigError, match="topology.source cric needs datasets.source rucio"):
        load_config(path)


def test_switching_to_a_real_service_without_its_settings_is_refused(tmp_path):
    path = tmp_path / "robot.yaml"
    path.write_text("backend:\n  kind: panda\n")
    with pytest.raises(ConfigError, match="backend.panda"):
        load_config(path)
    path.write_text("backend:\n  kind: panda\n  panda:\n    url: https://p.example/server/panda\ntopology:\n  source: cric\n")
    with pytest.raises(ConfigError, match="topology.cric"):
        load_config(path)


def test_credential_files_are_found_next_to_the_configuration(tiny_grid):
    files = tiny_grid.write_files()
    raw = yaml.safe_load(files.robot_yaml.read_text())
    raw["backend"].update(kind="panda", panda={"url": "https://p.example/server/panda", "auth": "oidc",
                                               "token_file": "secrets/panda.token"})
    files.robot_yaml.write_text(yaml.safe_dump(raw))
    services = build(load_config(files.robot_yaml), Clock())
    try:
        assert services.robot.backend.settings.token_file == str(files.robot_yaml.parent / "secrets" / "panda.token")
    finally:
        services.close()
