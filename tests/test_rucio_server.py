"""RucioCatalogue and the embedded grid's registration against a real Rucio 41.5.1 server on loopback.

The server (tests/rucio_server.py) is installed in its own virtualenv on first use and started once
per session. The embedded grid's storage is registered in it: at ANALY_A's endpoint one dataset
complete and one with a file missing, at ANALY_B's the second complete and a third only there.
Rucio's abacus-collection-replica daemon then fills the dataset-replica counters, and the
catalogue, reading as a plain (non-admin) account, must find exactly what the grid holds complete.
"""
from __future__ import annotations

import json
import secrets
from datetime import timedelta
from typing import TYPE_CHECKING

import pytest
import yaml
from click.testing import CliRunner
from conftest import TINY_DATA, TINY_ZMUMU

from robot.backends.embedded.storage import GridStorage
from robot.cli import main
from robot.config import RucioConfig
from robot.rucio_catalogue import RucioCatalogue, client_from_settings
from robot.rucio_register import register_grid

if TYPE_CHECKING:
    from tests.rucio_server import RucioServer

pytest_plugins = ["tests.rucio_server"]  # the rucio_server fixture
pytestmark = pytest.mark.slow

TINY_TTBAR = {"name": "mc23_13p6TeV.601229.PhPy8EG_A14_ttbar_hdamp258p75.deriv.DAOD_PHYS.e8514_s4162_r14622_p6026",
              "files": 2, "events_per_file": 500, "seed": 1229}
QUEUES = {
    "ANALY_A": {"endpoint": {"datasets": ["*Zmumu*"], "incomplete": ["*ttbar*"]}},
    "ANALY_B": {"endpoint": {"datasets": ["*ttbar*", "data23*"]}},
}
A, B = "ANALY_A_DATADISK", "ANALY_B_DATADISK"
READER = "healthrobot"


def root_settings(server: RucioServer) -> RucioConfig:
    return RucioConfig(host=server.url, account="root", auth_type="userpass", username=server.username,
                       password_file=str(server.password_file), retries=1)


@pytest.fixture(scope="module")
def registered(rucio_server, new_grid_factory, tmp_path_factory):
    """The grid's storage, registered in Rucio (twice), with dataset-replica counters filled."""
    base = tmp_path_factory.mktemp("rucio-grid")
    factory = new_grid_factory(base)
    config = factory.config(QUEUES, datasets=[TINY_ZMUMU, TINY_TTBAR, TINY_DATA])
    state_dir = base / "grid"
    factory.seed_datasets(state_dir, config)
    storage = GridStorage(config, state_dir)
    storage.prepare()
    client = client_from_settings(root_settings(rucio_server), base / "data")
    first = register_grid(storage, client, "root")
    second = register_grid(storage, client, "root")
    rucio_server.run_daemon("abacus-collection-replica", "--run-once")

    # the robot reads as its own account, not root
    password = secrets.token_urlsafe(12)
    (base / "reader.password").write_text(password)
    client.add_account(READER, "SERVICE", "robot@localhost")
    client.add_identity(READER, "robot-reader", "USERPASS", "robot@localhost", default=True, password=password)
    reader = RucioConfig(host=rucio_server.url, account=READER, auth_type="userpass", username="robot-reader",
                         password_file=str(base / "reader.password"), retries=1, cache_ttl=timedelta(minutes=5))
    return {"storage": storage, "client": client, "first": first, "second": second, "reader": reader, "base": base}


def test_the_catalogue_finds_exactly_the_datasets_complete_at_the_endpoint(registered, clock):
    catalogue = RucioCatalogue.from_settings(registered["reader"], registered["base"] / "robot", clock)
    (zmumu,) = catalogue.complete_datasets(A, "*")  # the ttbar replica at A misses a file
    assert zmumu.name == TINY_ZMUMU["name"] and zmumu.scope == "hc_test"
    manifest = registered["storage"].complete_datasets(A, "*")[0]
    assert [(f.lfn, f.guid, f.bytes, f.adler32, f.events) for f in zmumu.files] == \
        [(f.lfn, f.guid, f.bytes, f.adler32, f.events) for f in manifest.files]
    assert zmumu.events == TINY_ZMUMU["files"] * TINY_ZMUMU["events_per_file"]
    assert [d.name for d in catalogue.complete_datasets(B, "*")] == [TINY_DATA["name"], TINY_TTBAR["name"]]
    assert [d.name for d in catalogue.complete_datasets(B, "mc23_*")] == [TINY_TTBAR["name"]]
    assert catalogue.complete_datasets(A, "data23_*") == []  # complete, but only at the other endpoint
    assert catalogue.complete_datasets("NO_SUCH_DATADISK", "*") == []


def test_rucio_and_the_embedded_grid_agree_on_every_endpoint(registered, clock):
    catalogue = RucioCatalogue.from_settings(registered["reader"], registered["base"] / "robot", clock)
    storage = registered["storage"]
    for endpoint in (A, B):
        for pattern in ("*", "*ttbar*", "hc_test:mc23_*"):
            embedded = storage.complete_datasets(endpoint, pattern.split(":")[-1])  # it globs names only
            assert catalogue.complete_datasets(endpoint, pattern) == embedded


def test_registration_creates_endpoints_datasets_replicas_and_rules_once(registered):
    first, second, client = registered["first"], registered["second"], registered["client"]
    assert sorted(first.rses) == [A, B] and first.scopes == ["hc_test"] and len(first.datasets) == 3
    assert first.replicas == 2 + 1 + 2 + 1  # zmumu and half of ttbar at A; ttbar and data at B
    assert sorted(first.rules) == sorted([f"hc_test:{TINY_ZMUMU['name']}@{A}", f"hc_test:{TINY_TTBAR['name']}@{A}",
                                          f"hc_test:{TINY_TTBAR['name']}@{B}", f"hc_test:{TINY_DATA['name']}@{B}"])
    assert not second.changed, second.as_dict()
    assert client.list_rse_attributes(A)["site"] == "SITE-ANALY_A"
    assert not client.get_did("hc_test", TINY_TTBAR["name"])["open"]
    (row,) = [r for r in client.list_replicas([{"scope": "hc_test", "name": registered["storage"].complete_datasets(
        B, "*ttbar*")[0].files[0].lfn}]) if r]
    assert row["states"] == {A: "AVAILABLE", B: "AVAILABLE"}
    pfn = row["rses"][B][0]
    assert pfn.startswith("file://localhost/") and pfn.endswith(f"/storage/{B}/{TINY_TTBAR['name']}/{row['name']}")
    states = {(r["rse"], r["name"]): r["state"] for rse in (A, B) for r in client.list_datasets_per_rse(rse)}
    assert states[(A, TINY_TTBAR["name"])] == "UNAVAILABLE" and states[(B, TINY_TTBAR["name"])] == "AVAILABLE"


def test_register_rucio_command_is_idempotent(rucio_server, tiny_grid):
    files = tiny_grid.write_files({"ANALY_CLI": {}}, datasets=[TINY_ZMUMU], robot={"datasets": {
        "source": "rucio", "rucio": root_settings(rucio_server).model_dump(mode="json", exclude_none=True)}})
    raw = yaml.safe_load(files.robot_yaml.read_text())
    raw["datasets"]["rucio"]["timeout"] = "10s"
    raw["datasets"]["rucio"]["cache_ttl"] = "1m"
    files.robot_yaml.write_text(yaml.safe_dump(raw))
    runner = CliRunner()
    dry = runner.invoke(main, ["--config", str(files.robot_yaml), "grid", "register-rucio", "--dry-run", "--json"])
    assert dry.exit_code == 0, dry.output
    assert json.loads(dry.output)["rses"] == ["ANALY_CLI_DATADISK"] and json.loads(dry.output)["dry_run"]
    first = runner.invoke(main, ["--config", str(files.robot_yaml), "grid", "register-rucio", "--json"])
    assert first.exit_code == 0, first.output
    assert json.loads(first.output)["rules"] == [f"hc_test:{TINY_ZMUMU['name']}@ANALY_CLI_DATADISK"]
    again = runner.invoke(main, ["--config", str(files.robot_yaml), "grid", "register-rucio"])
    assert again.exit_code == 0 and "nothing to add" in again.output
    assert rucio_server.password not in first.output + again.output
