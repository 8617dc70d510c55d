"""Register the embedded grid's generated datasets in a Rucio server (`healthrobot grid register-rucio`).

What the grid holds on disk becomes what Rucio knows, so that the robot can take its input data
from Rucio (`datasets.source: rucio`) while running on the embedded grid:

* each storage endpoint: a non-deterministic RSE with a ``file`` protocol whose prefix is the
  endpoint's folder, attributes ``site`` and ``cloud``, and no quota for the account;
* each dataset's scope (from its manifest), the dataset, its files with bytes, adler32 and the
  ``guid`` and ``events`` metadata, and a replica of every file present at each endpoint (with
  its real path), the files attached, the dataset closed;
* one replication rule per endpoint holding the dataset. At an endpoint that holds only part of
  it, the rule waits for the missing files (there is no transfer service): the dataset replica
  stays incomplete, which is the point. Rucio's ``abacus-collection-replica`` daemon fills the
  dataset-replica counters the catalogue reads.

Idempotent: what exists is read first and only what is missing is added (Duplicate,
DataIdentifierAlreadyExists and DuplicateRule from a concurrent run are taken as "exists"); a
second run changes nothing. It needs an account allowed to add RSEs and scopes (root, an admin).
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from robot.backends.embedded.storage import GridStorage
from testjobs.datasets import DatasetManifest, load_manifest

log = logging.getLogger(__name__)

PROTOCOL_IMPL = "rucio.rse.protocols.posix.Default"
RULE_COMMENT = "healthrobot: embedded grid replica"


@dataclass(frozen=True)
class Replica:
    """What one endpoint holds of one dataset."""

    rse: str
    manifest: DatasetManifest
    lfns: tuple[str, ...]  # the files present at the endpoint

    @property
    def complete(self) -> bool:
        return len(self.lfns) == len(self.manifest.files)


@dataclass(frozen=True)
class Endpoint:
    rse: str
    site: str
    cloud: str
    folder: Path


@dataclass
class Registration:
    """What a run added (empty lists and zero counts: nothing changed)."""

    rses: list[str] = field(default_factory=list)
    protocols: list[str] = field(default_factory=list)
    attributes: list[str] = field(default_factory=list)
    limits: list[str] = field(default_factory=list)
    scopes: list[str] = field(default_factory=list)
    datasets: list[str] = field(default_factory=list)
    replicas: int = 0
    attached: int = 0
    closed: list[str] = field(default_factory=list)
    rules: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return any(asdict(self).values())

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def endpoints(storage: GridStorage) -> list[Endpoint]:
    root = storage.storage_dir.resolve()
    return [Endpoint(rse=rse, site=site_name, cloud=cloud_name, folder=root / rse)
            for cloud_name, cloud in storage.config.clouds.items()
            for site_name, site in cloud.sites.items() for rse in site.storage]


def replicas(storage: GridStorage) -> list[Replica]:
    """Every (endpoint, dataset) with at least one file present, from the folders on disk."""
    found = []
    manifests = {}
    for dataset in storage.config.datasets:
        path = storage.datasets_dir / dataset.name / "manifest.json"
        if path.exists():
            manifests[dataset.name] = load_manifest(path)
    for endpoint in endpoints(storage):
        for name, manifest in sorted(manifests.items()):
            folder = endpoint.folder / name
            present = tuple(f.lfn for f in manifest.files if (folder / f.lfn).exists())
            if present:
                found.append(Replica(rse=endpoint.rse, manifest=manifest, lfns=present))
    return found


def register_grid(storage: GridStorage, client: Any, account: str, *, dry_run: bool = False) -> Registration:
    """Make Rucio hold what the grid's storage holds; returns what was (or, dry-run, would be) added.

    `client` is a logged-in rucio-clients `Client`; `account` owns the rules and gets no quota limit.
    A dry run reads Rucio and changes nothing.
    """
    done = Registration()
    held = replicas(storage)
    for endpoint in endpoints(storage):
        _rse(client, endpoint, account, done, dry_run)

    scopes = {r.manifest.scope for r in held}
    if scopes:
        known = set(client.list_scopes())
        for scope in sorted(scopes - known):
            _add(dry_run, client.add_scope, account, scope)
            done.scopes.append(scope)

    by_dataset: dict[tuple[str, str], list[Replica]] = {}
    for replica in held:
        by_dataset.setdefault((replica.manifest.scope, replica.manifest.name), []).append(replica)
    for (scope, name), where in sorted(by_dataset.items()):
        manifest = where[0].manifest
        did = _get_did(client, scope, name)
        if did is None:
            _add(dry_run, client.add_dataset, scope, name)
            done.datasets.append(f"{scope}:{name}")
        for replica in where:
            # A dry run cannot read replicas at an RSE it has not added.
            _file_replicas(client, storage, replica, done, dry_run, read=not (dry_run and replica.rse in done.rses))
        attached = {row["name"] for row in client.list_content(scope, name)} if did is not None else set()
        missing = [f.lfn for f in manifest.files if f.lfn not in attached
                   and any(f.lfn in r.lfns for r in where)]
        if missing:
            _add(dry_run, client.attach_dids, scope, name, [{"scope": scope, "name": lfn} for lfn in missing])
            done.attached += len(missing)
        if did is None or did.get("open"):
            _add(dry_run, client.close, scope, name, ok=("UnsupportedOperation",))
            done.closed.append(f"{scope}:{name}")
        ruled = {rule["rse_expression"] for rule in client.list_did_rules(scope, name)
                 if rule.get("account") == account} if did is not None else set()
        for replica in where:
            if replica.rse not in ruled:
                _add(dry_run, client.add_replication_rule, [{"scope": scope, "name": name}], 1, replica.rse,
                     comment=RULE_COMMENT, ok=("DuplicateRule",))
                done.rules.append(f"{scope}:{name}@{replica.rse}")
    log.info("Rucio registration%s: %s", " (dry run)" if dry_run else "", done.as_dict())
    return done


def _rse(client: Any, endpoint: Endpoint, account: str, done: Registration, dry_run: bool) -> None:
    from rucio.common.exception import RSENotFound, RSEProtocolNotSupported

    try:
        client.get_rse(endpoint.rse)
        exists = True
    except RSENotFound:
        exists = False
        _add(dry_run, client.add_rse, endpoint.rse, deterministic=False)
        done.rses.append(endpoint.rse)
    prefix = f"{endpoint.folder}/"
    protocols = []
    if exists:
        try:
            protocols = client.get_protocols(endpoint.rse)
        except RSEProtocolNotSupported:
            protocols = []
    if not any(p.get("scheme") == "file" and p.get("prefix") == prefix for p in protocols):
        _add(dry_run, client.add_protocol, endpoint.rse, {
            "scheme": "file", "hostname": "localhost", "port": 0, "prefix": prefix, "impl": PROTOCOL_IMPL,
            "domains": {"lan": {"read": 1, "write": 1, "delete": 1},
                        "wan": {"read": 1, "write": 1, "delete": 1,
                                "third_party_copy_read": 1, "third_party_copy_write": 1}},
        })
        done.protocols.append(endpoint.rse)
    attributes = client.list_rse_attributes(endpoint.rse) if exists else {}
    for key, value in (("site", endpoint.site), ("cloud", endpoint.cloud)):
        if attributes.get(key) != value:
            _add(dry_run, client.add_rse_attribute, endpoint.rse, key, value)
            done.attributes.append(f"{endpoint.rse}:{key}={value}")
    limit = client.get_local_account_limit(account, endpoint.rse).get(endpoint.rse) if exists else None
    if limit is None:
        _add(dry_run, client.set_local_account_limit, account, endpoint.rse, -1)
        done.limits.append(f"{account}@{endpoint.rse}")


def _file_replicas(client: Any, storage: GridStorage, replica: Replica, done: Registration, dry_run: bool,
                   read: bool) -> None:
    scope = replica.manifest.scope
    entries = {f.lfn: f for f in replica.manifest.files}
    available: set[str] = set()
    if read:
        for row in client.list_replicas([{"scope": scope, "name": lfn} for lfn in replica.lfns],
                                        rse_expression=replica.rse):
            if row.get("states", {}).get(replica.rse) == "AVAILABLE":
                available.add(row["name"])
    folder = storage.storage_dir.resolve() / replica.rse / replica.manifest.name
    missing = [
        {"scope": scope, "name": lfn, "bytes": entries[lfn].bytes, "adler32": entries[lfn].adler32,
         "pfn": f"file://localhost{folder / lfn}",
         "meta": {"guid": entries[lfn].guid, "events": entries[lfn].events}}
        for lfn in replica.lfns if lfn not in available
    ]
    if missing:
        _add(dry_run, client.add_replicas, replica.rse, missing)
        done.replicas += len(missing)


def _get_did(client: Any, scope: str, name: str) -> dict[str, Any] | None:
    from rucio.common.exception import DataIdentifierNotFound

    try:
        return client.get_did(scope, name)
    except DataIdentifierNotFound:
        return None


def _add(dry_run: bool, call: Any, *args: Any, ok: tuple[str, ...] = (), **kwargs: Any) -> None:
    """`call(*args, **kwargs)` unless dry-run; "already exists" (a concurrent run) is not an error."""
    if dry_run:
        return
    from rucio.common.exception import DataIdentifierAlreadyExists, Duplicate, RucioException

    try:
        call(*args, **kwargs)
    except (Duplicate, DataIdentifierAlreadyExists) as exc:
        log.info("already in Rucio: %s", type(exc).__name__)
    except RucioException as exc:
        if type(exc).__name__ not in ok:
            raise
        log.info("already in Rucio: %s", type(exc).__name__)
