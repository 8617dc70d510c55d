"""Tests of the test-job inputs (testjobs.datasets) and analysis payloads (testjobs.payloads)."""

from __future__ import annotations

import importlib
import itertools
import json
import math
import os
import re
import signal
import subprocess
import sys
import uuid
import zlib
from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import uproot

from testjobs import datasets
from testjobs.kinematics import FourVector
from testjobs.payloads import (
    EXIT_BAD_ARGUMENTS,
    EXIT_INPUT_CORRUPT,
    EXIT_INPUT_NOT_FOUND,
    EXIT_OK,
    EXIT_OUT_OF_MEMORY,
    EXIT_OUTPUT_WRITE,
    EXIT_PAYLOAD_EXCEPTION,
    OOM_SOFT_LIMIT_MB,
    PAYLOADS,
    ttbar,
    zmumu,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
ZMUMU = "mc23_13p6TeV.601189.PhPy8EG_Zmumu.deriv.DAOD_PHYS.e8514_s4162_r14622_p6026"
TTBAR = "mc23_13p6TeV.601229.PhPy8EG_A14_ttbar_hdamp258p75.deriv.DAOD_PHYS.e8514_s4162_r14622_p6026"
EVENTS_PER_FILE = 1500


@pytest.fixture(scope="module")
def storage(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("storage")


@pytest.fixture(scope="module")
def zmumu_dataset(storage: Path) -> datasets.DatasetManifest:
    return datasets.generate_dataset(storage, ZMUMU, n_files=2, events_per_file=EVENTS_PER_FILE, seed=7)


@pytest.fixture(scope="module")
def zmumu_files(storage: Path, zmumu_dataset: datasets.DatasetManifest) -> list[Path]:
    return [storage / ZMUMU / entry.lfn for entry in zmumu_dataset.files]


def read_events(path: Path) -> ak.Array:
    return uproot.open(path)["events"].arrays()


def run_module(module: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=60
    )


def payload_args(inputs: list[Path], tmp_path: Path, *extra: str) -> list[str]:
    return [
        "--input", *map(str, inputs), "--output", str(tmp_path / "out.root"),
        "--report", str(tmp_path / "report.json"), *extra,
    ]


def load_report(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "report.json").read_text())


# --- datasets ----------------------------------------------------------------------------


def test_same_seed_gives_identical_events_and_other_seed_differs(tmp_path: Path) -> None:
    first = datasets.generate_dataset(tmp_path / "a", ZMUMU, n_files=1, events_per_file=300, seed=11)
    datasets.generate_dataset(tmp_path / "b", ZMUMU, n_files=1, events_per_file=300, seed=11)
    datasets.generate_dataset(tmp_path / "c", ZMUMU, n_files=1, events_per_file=300, seed=12)
    lfn = first.files[0].lfn
    a, b, c = (read_events(tmp_path / run / ZMUMU / lfn) for run in "abc")

    assert a.fields == b.fields
    for branch in a.fields:
        assert ak.array_equal(a[branch], b[branch]), branch
    assert not ak.array_equal(a.mu_pt, c.mu_pt)
    assert not ak.array_equal(a.jet_pt, c.jet_pt)


def test_file_content_depends_only_on_seed_name_and_index(tmp_path: Path) -> None:
    datasets.generate_dataset(tmp_path / "full", ZMUMU, n_files=3, events_per_file=200, seed=5)
    lfn = datasets.file_lfn(ZMUMU, 1)
    datasets.write_file(tmp_path / "single.root", ZMUMU, index=1, n_events=200, seed=5)

    regenerated = read_events(tmp_path / "single.root")
    original = read_events(tmp_path / "full" / ZMUMU / lfn)
    for branch in original.fields:
        assert ak.array_equal(original[branch], regenerated[branch]), branch
    other_file = read_events(tmp_path / "full" / ZMUMU / datasets.file_lfn(ZMUMU, 0))
    assert not ak.array_equal(original.mu_pt, other_file.mu_pt)


def test_files_have_the_expected_branches_and_types(zmumu_files: list[Path]) -> None:
    tree = uproot.open(zmumu_files[1])["events"]
    types = {name: branch.typename for name, branch in tree.items()}
    assert types["event"] == "uint64_t"
    for collection, fields in {"mu": "pt eta phi charge", "el": "pt eta phi charge", "jet": "pt eta phi m btag"}.items():
        for field in fields.split():
            assert types[f"{collection}_{field}"].endswith("[]"), f"{collection}_{field} is not jagged"
    assert types["met_pt"] == types["met_phi"] == "float"
    events = tree.arrays(["run", "event"])
    assert np.all(events.run == datasets.MC_RUN_NUMBER)
    assert events.event.to_list() == list(range(EVENTS_PER_FILE + 1, 2 * EVENTS_PER_FILE + 1))


def test_manifest_describes_the_files_written(storage: Path, zmumu_dataset: datasets.DatasetManifest) -> None:
    manifest = datasets.load_manifest(storage / ZMUMU / datasets.MANIFEST_NAME)
    assert manifest == zmumu_dataset
    assert manifest.scope == "hc_test" and manifest.name == ZMUMU
    assert manifest.total_events == 2 * EVENTS_PER_FILE
    assert json.loads(manifest.to_json())["total_events"] == 2 * EVENTS_PER_FILE

    tid = datasets.task_id(ZMUMU)
    assert re.fullmatch(r"\d{8}", tid)
    assert [entry.lfn for entry in manifest.files] == [
        f"DAOD_PHYS.{tid}._000001.pool.root.1",
        f"DAOD_PHYS.{tid}._000002.pool.root.1",
    ]
    for entry in manifest.files:
        content = (storage / ZMUMU / entry.lfn).read_bytes()
        assert entry.bytes == len(content)
        assert entry.adler32 == f"{zlib.adler32(content) & 0xFFFFFFFF:08x}"
        assert entry.events == uproot.open(storage / ZMUMU / entry.lfn)["events"].num_entries
        assert uuid.UUID(entry.guid).version == 5
    assert len({entry.guid for entry in manifest.files}) == len(manifest.files)


def test_manifest_with_inconsistent_total_is_rejected(zmumu_dataset: datasets.DatasetManifest) -> None:
    document = json.loads(zmumu_dataset.to_json())
    document["total_events"] += 1
    with pytest.raises(ValueError, match="total_events"):
        datasets.DatasetManifest.from_json(json.dumps(document))


def test_run_number_and_data_type_come_from_the_dataset_name() -> None:
    data = "data23_13p6TeV.00456749.physics_Main.deriv.DAOD_PHYS.r15243_p6026"
    assert datasets.run_number(data) == 456749
    assert datasets.run_number(ZMUMU) == datasets.MC_RUN_NUMBER
    assert datasets.file_lfn("mc23_13p6TeV.1.X.deriv.DAOD_PHYSLITE.p1", 0).startswith("DAOD_PHYSLITE.")


@pytest.mark.parametrize("name", ["", "a/b", ".."])
def test_invalid_dataset_names_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError):
        datasets.generate_dataset(tmp_path, name, n_files=1, events_per_file=10, seed=1)


def test_default_datasets_are_distinct_and_small() -> None:
    specs = datasets.default_datasets()
    assert len({spec.name for spec in specs}) == len(specs) >= 3
    assert sum(spec.n_files * spec.events_per_file for spec in specs) <= 500_000


def test_cli_generates_a_named_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = datasets.main([str(tmp_path), "--name", TTBAR, "--files", "2", "--events", "50", "--seed", "3"])
    output = capsys.readouterr().out
    manifest = datasets.load_manifest(tmp_path / TTBAR)
    assert code == 0
    assert manifest.total_events == 100 and manifest.seed == 3
    assert all(entry.lfn in output for entry in manifest.files)


# --- kinematics used by generator and payloads --------------------------------------------


def test_boost_preserves_mass_and_a_decay_conserves_momentum() -> None:
    parent = FourVector.from_ptetaphim(np.array([40.0]), np.array([1.2]), np.array([0.3]), np.array([91.0]))
    daughter = FourVector(np.array([10.0]), np.array([-20.0]), np.array([35.0]), np.array([math.sqrt(1725.0)]))
    partner = FourVector(-daughter.px, -daughter.py, -daughter.pz, 91.0 - daughter.e)
    assert daughter.boost(parent).mass == pytest.approx(daughter.mass)
    total = daughter.boost(parent) + partner.boost(parent)
    assert total.mass == pytest.approx(91.0)
    assert total.pt == pytest.approx(40.0)
    assert total.eta == pytest.approx(1.2)


# --- payloads: physics ---------------------------------------------------------------------


def count_zmumu_by_loop(path: Path) -> int:
    """Independent event-by-event implementation of the zmumu selection."""
    events = uproot.open(path)["events"].arrays(["mu_pt", "mu_eta", "mu_charge"], library="np")
    selected = 0
    for pts, etas, charges in zip(events["mu_pt"], events["mu_eta"], events["mu_charge"]):
        good = [q for pt, eta, q in zip(pts, etas, charges) if pt > 20.0 and abs(eta) < 2.5]
        selected += any(q1 * q2 < 0 for q1, q2 in itertools.combinations(good, 2))
    return selected


def write_random_muons(path: Path, n_events: int = 3000) -> None:
    """Muons scattered across the cut values with random charges, so that same-sign pairs,
    |eta| just above 2.5 and pt just below 20 GeV all occur often."""
    rng = np.random.default_rng(42)
    counts = rng.integers(0, 5, n_events)
    total = int(counts.sum())
    muons = ak.unflatten(ak.zip({
        "pt": rng.uniform(10.0, 40.0, total).astype(np.float32),
        "eta": rng.uniform(-3.0, 3.0, total).astype(np.float32),
        "phi": rng.uniform(-np.pi, np.pi, total).astype(np.float32),
        "charge": rng.choice(np.array([-1, 1], dtype=np.int8), total),
    }), counts)
    with uproot.recreate(path) as output:
        output.mktree("events", {"mu": muons, "met_pt": rng.exponential(20.0, n_events).astype(np.float32)})


def test_zmumu_selection_matches_an_independent_count(zmumu_files: list[Path], tmp_path: Path) -> None:
    assert zmumu.main(payload_args(zmumu_files, tmp_path, "--max-events", "-1")) == EXIT_OK
    report = load_report(tmp_path)
    expected = sum(count_zmumu_by_loop(path) for path in zmumu_files)
    assert report["events_selected"] == expected
    assert 0.3 * report["events_read"] < expected < report["events_read"]


def test_zmumu_selection_on_edge_cases_matches_an_independent_count(tmp_path: Path) -> None:
    write_random_muons(tmp_path / "muons.root")
    assert zmumu.main(payload_args([tmp_path / "muons.root"], tmp_path, "--max-events", "-1")) == EXIT_OK
    assert load_report(tmp_path)["events_selected"] == count_zmumu_by_loop(tmp_path / "muons.root")


def test_zmumu_mass_histogram_peaks_at_the_z_mass(zmumu_files: list[Path], tmp_path: Path) -> None:
    assert zmumu.main(payload_args(zmumu_files, tmp_path, "--max-events", "-1")) == EXIT_OK
    output = uproot.open(tmp_path / "out.root")
    counts, edges = output["mumu_mass"].to_numpy()
    peak = np.argmax(counts)
    assert 89.0 <= (edges[peak] + edges[peak + 1]) / 2 <= 93.0
    assert counts.sum() > 0.9 * load_report(tmp_path)["events_selected"]
    assert set(output.keys(cycle=False)) == {"mumu_mass", "mu_leading_pt", "met"}


def test_ttbar_finds_a_top_candidate_peak(storage: Path, tmp_path: Path) -> None:
    manifest = datasets.generate_dataset(storage, TTBAR, n_files=1, events_per_file=2000, seed=3)
    inputs = [storage / TTBAR / manifest.files[0].lfn]
    assert ttbar.main(payload_args(inputs, tmp_path)) == EXIT_OK

    jets = uproot.open(inputs[0])["events"].arrays(["jet_pt", "jet_eta", "jet_btag"])
    good = (jets.jet_pt > 25) & (abs(jets.jet_eta) < 2.5)
    expected = ak.sum((ak.sum(good, axis=1) >= 4) & (ak.sum(good & (jets.jet_btag > 0.7), axis=1) >= 1))
    assert load_report(tmp_path)["events_selected"] == expected > 0
    counts, edges = uproot.open(tmp_path / "out.root")["trijet_mass"].to_numpy()
    assert 150.0 <= edges[np.argmax(counts)] <= 200.0


# --- payloads: report and exit codes ---------------------------------------------------------


def test_report_respects_max_events_across_files(zmumu_files: list[Path], tmp_path: Path) -> None:
    assert zmumu.main(payload_args(zmumu_files, tmp_path, "--max-events", "2000")) == EXIT_OK
    report = load_report(tmp_path)
    assert report["exit_code"] == EXIT_OK
    assert report["events_read"] == 2000
    assert report["files_read"] == 2
    assert set(report["timings"]) == {"open", "read", "process", "write"}
    assert report["cpu_time"] > 0 and report["max_rss_kb"] > 0


def test_cli_run_in_a_subprocess(zmumu_files: list[Path], tmp_path: Path) -> None:
    result = run_module("testjobs.payloads.zmumu", *payload_args(zmumu_files[:1], tmp_path, "--max-events", "700"))
    assert result.returncode == EXIT_OK, result.stderr
    assert load_report(tmp_path)["events_read"] == 700
    assert (tmp_path / "out.root").is_file()


@pytest.mark.parametrize("name", PAYLOADS)
def test_every_registered_payload_runs(zmumu_files: list[Path], tmp_path: Path, name: str) -> None:
    payload = importlib.import_module(f"testjobs.payloads.{name}")
    assert payload.main(payload_args(zmumu_files, tmp_path, "--max-events", "1000")) == EXIT_OK
    assert load_report(tmp_path)["events_read"] == 1000
    assert uproot.open(tmp_path / "out.root").keys()


def test_missing_input_file(zmumu_files: list[Path], tmp_path: Path) -> None:
    inputs = [zmumu_files[0], tmp_path / "absent.root"]
    assert zmumu.main(payload_args(inputs, tmp_path)) == EXIT_INPUT_NOT_FOUND
    report = load_report(tmp_path)
    assert report["exit_code"] == EXIT_INPUT_NOT_FOUND and "absent.root" in report["exit_message"]
    assert report["events_read"] == 0


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_input_file(zmumu_files: list[Path], tmp_path: Path, damage: str) -> None:
    content = zmumu_files[0].read_bytes()
    corrupt = tmp_path / "corrupt.root"
    corrupt.write_bytes(b"this is not a ROOT file\n" * 100 if damage == "garbage" else content[: len(content) // 3])
    assert zmumu.main(payload_args([corrupt], tmp_path)) == EXIT_INPUT_CORRUPT
    assert load_report(tmp_path)["exit_code"] == EXIT_INPUT_CORRUPT


def test_output_write_failure(zmumu_files: list[Path], tmp_path: Path) -> None:
    (tmp_path / "not-a-directory").write_text("")
    args = payload_args(zmumu_files[:1], tmp_path, "--max-events", "100")
    args[args.index("--output") + 1] = str(tmp_path / "not-a-directory" / "out.root")
    assert zmumu.main(args) == EXIT_OUTPUT_WRITE
    assert load_report(tmp_path)["exit_code"] == EXIT_OUTPUT_WRITE


@pytest.mark.parametrize("bad", [["--max-events", "0"], ["--max-events", "ten"], ["--fail-mode", "explode"]])
def test_bad_arguments_still_write_a_report(zmumu_files: list[Path], tmp_path: Path, bad: list[str]) -> None:
    assert zmumu.main(payload_args(zmumu_files, tmp_path, *bad)) == EXIT_BAD_ARGUMENTS
    assert load_report(tmp_path)["exit_code"] == EXIT_BAD_ARGUMENTS


def test_fail_mode_user_error(zmumu_files: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert zmumu.main(payload_args(zmumu_files, tmp_path, "--fail-mode", "user-error")) == EXIT_PAYLOAD_EXCEPTION
    assert "Traceback (most recent call last)" in capsys.readouterr().err
    report = load_report(tmp_path)
    assert report["exit_code"] == EXIT_PAYLOAD_EXCEPTION and "mu_ptcone30" in report["exit_message"]
    assert report["events_read"] > 0


def test_fail_mode_crash_dies_by_sigsegv(zmumu_files: list[Path], tmp_path: Path) -> None:
    result = run_module("testjobs.payloads.zmumu", *payload_args(zmumu_files, tmp_path, "--fail-mode", "crash"))
    assert result.returncode == -signal.SIGSEGV
    assert not (tmp_path / "report.json").exists()


def test_fail_mode_oom_stops_at_the_soft_limit(zmumu_files: list[Path], tmp_path: Path) -> None:
    result = run_module("testjobs.payloads.ttbar", *payload_args(zmumu_files, tmp_path, "--fail-mode", "oom"))
    assert result.returncode == EXIT_OUT_OF_MEMORY, result.stderr
    report = load_report(tmp_path)
    assert report["exit_code"] == EXIT_OUT_OF_MEMORY
    assert OOM_SOFT_LIMIT_MB * 1024 < report["max_rss_kb"] < (OOM_SOFT_LIMIT_MB + 300) * 1024
