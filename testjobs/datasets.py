"""Input datasets for the robot's test jobs: real ROOT files plus a Rucio-like manifest.

A dataset ``<name>`` is written to ``<storage_dir>/<name>/`` as files named like the
grid's derivations (``DAOD_PHYS.<tid>._000001.pool.root.1``), each holding one TTree
``events``, together with ``manifest.json`` describing every file (LFN, GUID, size,
adler32, events).

Event content is a pure function of (seed, dataset name, file index, events per file),
so any single file can be regenerated on its own. The file *bytes* are not
reproducible (ROOT headers carry creation timestamps), which is why the manifest
records the checksum of the files actually written.

CLI::

    python -m testjobs.datasets OUTDIR                                # the default demo datasets
    python -m testjobs.datasets OUTDIR --name N --files K --events E --seed S [--scope SCOPE]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import uuid
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

MANIFEST_NAME = "manifest.json"
TREE_NAME = "events"
DEFAULT_SCOPE = "hc_test"
MC_RUN_NUMBER = 410000  # the run number all mc23a simulation carries

_GUID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "queue-health-robot/testjobs")
_DATA_TYPE = re.compile(r"^(DAOD_\w+|AOD|ESD|NTUP_\w+)$")
_DATA_RUN = re.compile(r"^data\d\d_\w+\.(\d{8})\.")


@dataclass(frozen=True)
class FileEntry:
    lfn: str
    guid: str
    bytes: int
    adler32: str  # 8 lowercase hex digits, as Rucio stores it
    events: int


@dataclass(frozen=True)
class DatasetManifest:
    scope: str
    name: str
    seed: int
    files: tuple[FileEntry, ...]

    @property
    def total_events(self) -> int:
        return sum(entry.events for entry in self.files)

    @property
    def total_bytes(self) -> int:
        return sum(entry.bytes for entry in self.files)

    def to_json(self) -> str:
        document = {
            "scope": self.scope,
            "name": self.name,
            "seed": self.seed,
            "total_events": self.total_events,
            "files": [asdict(entry) for entry in self.files],
        }
        return json.dumps(document, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> DatasetManifest:
        document = json.loads(text)
        files = tuple(FileEntry(**entry) for entry in document["files"])
        manifest = cls(scope=document["scope"], name=document["name"], seed=document["seed"], files=files)
        if manifest.total_events != document["total_events"]:
            raise ValueError(f"manifest of {manifest.name}: total_events does not match its files")
        return manifest


class DatasetSpec(NamedTuple):
    name: str
    n_files: int
    events_per_file: int
    seed: int


def default_datasets() -> list[DatasetSpec]:
    """The datasets the robot's demo ships (about 17 MB, generated in a few seconds)."""
    return [
        DatasetSpec("mc23_13p6TeV.601189.PhPy8EG_Zmumu.deriv.DAOD_PHYS.e8514_s4162_r14622_p6026", 4, 25_000, 1189),
        DatasetSpec("mc23_13p6TeV.601229.PhPy8EG_A14_ttbar_hdamp258p75.deriv.DAOD_PHYS.e8514_s4162_r14622_p6026", 4, 10_000, 1229),
        DatasetSpec("data23_13p6TeV.00456749.physics_Main.deriv.DAOD_PHYS.r15243_p6026", 5, 20_000, 456749),
    ]


def generate_dataset(
    storage_dir: Path, name: str, n_files: int, events_per_file: int, seed: int, scope: str = DEFAULT_SCOPE
) -> DatasetManifest:
    """Write the dataset's ROOT files and manifest under `storage_dir/name/`; returns the manifest."""
    _validate(name, n_files, events_per_file, seed)
    dataset_dir = Path(storage_dir) / name
    dataset_dir.mkdir(parents=True, exist_ok=True)
    entries = []
    for index in range(n_files):
        lfn = file_lfn(name, index)
        path = dataset_dir / lfn
        write_file(path, name, index, events_per_file, seed)
        entries.append(FileEntry(lfn, file_guid(name, lfn), path.stat().st_size, adler32_of(path), events_per_file))
    manifest = DatasetManifest(scope=scope, name=name, seed=seed, files=tuple(entries))
    (dataset_dir / MANIFEST_NAME).write_text(manifest.to_json())
    return manifest


def write_file(path: Path, name: str, index: int, n_events: int, seed: int) -> None:
    """Write file `index` of dataset `name`; its content depends only on the arguments."""
    # Deferred so that the robot can use the manifest helpers without paying for these imports.
    import numpy as np
    import uproot

    from testjobs.simulation import process_mixture, simulate

    rng = np.random.default_rng(np.random.SeedSequence([seed, _stable_int(name), index]))
    columns = simulate(rng, n_events, process_mixture(name))
    first_event = index * n_events + 1
    branches = {
        "run": np.full(n_events, run_number(name), dtype=np.uint32),
        "event": np.arange(first_event, first_event + n_events, dtype=np.uint64),
        **columns,
    }
    with uproot.recreate(path) as root_file:
        root_file.mktree(TREE_NAME, branches)


def load_manifest(path: Path) -> DatasetManifest:
    """Read a manifest, given either its file or its dataset directory."""
    path = Path(path)
    return DatasetManifest.from_json((path / MANIFEST_NAME if path.is_dir() else path).read_text())


def file_lfn(name: str, index: int) -> str:
    """Grid-style logical file name of file `index` (0-based) of dataset `name`."""
    return f"{data_type(name)}.{task_id(name)}._{index + 1:06d}.pool.root.1"


def file_guid(name: str, lfn: str) -> str:
    return str(uuid.uuid5(_GUID_NAMESPACE, f"{name}/{lfn}")).upper()


def task_id(name: str) -> str:
    """Deterministic 8-digit production task id standing in for the one that made the dataset."""
    return f"{_stable_int(name) % 10**8:08d}"


def data_type(name: str) -> str:
    return next((field for field in name.split(".") if _DATA_TYPE.match(field)), "DAOD_PHYS")


def run_number(name: str) -> int:
    """The run encoded in a data DID (``data23_13p6TeV.00456749...``), else the MC run number."""
    match = _DATA_RUN.match(name)
    return int(match.group(1)) if match else MC_RUN_NUMBER


def adler32_of(path: Path, chunk_size: int = 1 << 20) -> str:
    checksum = 1
    with open(path, "rb") as stream:
        while chunk := stream.read(chunk_size):
            checksum = zlib.adler32(chunk, checksum)
    return f"{checksum:08x}"


def _stable_int(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


def _validate(name: str, n_files: int, events_per_file: int, seed: int) -> None:
    if not name or "/" in name or name in {".", ".."}:
        raise ValueError(f"invalid dataset name {name!r}")
    if n_files < 1 or events_per_file < 1:
        raise ValueError("a dataset needs at least one file and one event per file")
    if seed < 0:
        raise ValueError("seed must be non-negative")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testjobs.datasets", description="Generate test-job input datasets.")
    parser.add_argument("outdir", type=Path, help="storage directory; each dataset goes to OUTDIR/<name>/")
    parser.add_argument("--name", help="dataset name (default: generate the demo datasets)")
    parser.add_argument("--files", type=int, default=2, help="number of files (with --name)")
    parser.add_argument("--events", type=int, default=1000, help="events per file (with --name)")
    parser.add_argument("--seed", type=int, default=1, help="random seed (with --name)")
    parser.add_argument("--scope", default=DEFAULT_SCOPE)
    args = parser.parse_args(argv)

    specs = [DatasetSpec(args.name, args.files, args.events, args.seed)] if args.name else default_datasets()
    for spec in specs:
        try:
            manifest = generate_dataset(args.outdir, *spec, scope=args.scope)
        except ValueError as error:
            parser.error(str(error))
        print(f"{manifest.scope}:{manifest.name}: {len(manifest.files)} files, "
              f"{manifest.total_events} events, {manifest.total_bytes / 1e6:.1f} MB")
        for entry in manifest.files:
            print(f"  {entry.lfn}  guid={entry.guid}  events={entry.events}  bytes={entry.bytes}  adler32={entry.adler32}")
        print(f"  manifest: {args.outdir / manifest.name / MANIFEST_NAME}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
