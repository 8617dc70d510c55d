"""Where tickets come from: an mbox file, a Maildir folder, an IMAP mailbox or GGUS; all end as stored threads."""
from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any, Iterable, Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from robot.backends.base import Backend, JobReport
from robot.backends.embedded.state import GridState
from robot.config import RobotConfig
from robot.jobstates import JobStatus
from robot.storage.models import Cloud, Queue, Setting, Site, StorageEndpoint, Ticket, queue_endpoint
from robot.tickets.extract import TopologyIndex
from robot.tickets.imap import connect, fetch_new
from robot.tickets.mail import Message, read_maildir, read_mbox
from robot.tickets.sample import demo_threads, write_messages
from robot.tickets.store import ImportSummary, JobLookup, collector_paused, judge_tickets, store_threads
from robot.tickets.threads import DEFAULT_SUPPORT_ADDRESSES, thread
from robot.topology import EndpointInfo, QueueInfo, SiteInfo, Topology


def stored_topology(session: Session) -> Topology:
    """The topology as the robot last stored it (queues, sites, endpoints, clouds)."""
    sites = session.execute(select(Site.name, Cloud.name).join(Cloud, Cloud.id == Site.cloud_id)).all()
    endpoints = session.execute(select(StorageEndpoint.name, Site.name).join(Site, Site.id == StorageEndpoint.site_id)).all()
    links: dict[str, list[str]] = {}
    for queue, endpoint in session.execute(
        select(Queue.name, StorageEndpoint.name).join(queue_endpoint, queue_endpoint.c.queue_id == Queue.id)
        .join(StorageEndpoint, StorageEndpoint.id == queue_endpoint.c.endpoint_id)
    ):
        links.setdefault(queue, []).append(endpoint)
    queues = session.execute(select(Queue.name, Site.name, Cloud.name).join(Site, Site.id == Queue.site_id)
                             .join(Cloud, Cloud.id == Site.cloud_id).where(Queue.retired_at.is_(None))).all()
    return Topology(sites=tuple(SiteInfo(s, c) for s, c in sites),
                    endpoints=tuple(EndpointInfo(e, s) for e, s in endpoints),
                    queues=tuple(QueueInfo(q, s, c, tuple(links.get(q, ()))) for q, s, c in queues))


def grid_job_lookup(config: RobotConfig):  # type: ignore[no-untyped-def]
    """Ask the embedded grid's records where PanDA jobs ran (read-only: the grid may be running)."""
    path = config.data_path / "grid" / "grid.sqlite"

    def lookup(panda_ids: Sequence[int]) -> dict[int, JobReport | None]:
        if not path.exists():
            return {}
        state = GridState(path)
        try:
            found = state.jobs(list(panda_ids))
        finally:
            state.close()
        return {pid: JobReport(panda_id=pid, job_status=JobStatus(job["job_status"]), queue=job["queue"])
                for pid, job in found.items()}

    return lookup


MBOX_START = b"From "


def check_mailbox(path: Path) -> None:
    """Refuse, in one line, anything that is not an mbox file or a Maildir folder."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such mbox file or Maildir folder")
    if path.is_dir():
        missing = [sub for sub in ("cur", "new") if not (path / sub).is_dir()]
        if missing:
            raise ValueError(f"{path}: not a Maildir folder (expected the subfolders cur/ and new/; "
                             f"{' and '.join(m + '/' for m in missing)} missing)")
        return
    try:
        with path.open("rb") as handle:
            head = handle.read(4096)
    except OSError as exc:
        raise ValueError(f"{path}: cannot be read: {exc.strerror or exc}") from exc
    if head.strip() and not head.lstrip(b"\r\n").startswith(MBOX_START):
        raise ValueError(f"{path}: not an mbox file (expected mail messages, each starting with a "
                         f"'From ' line, as in a Gmail export); pass a Maildir folder, `imap` or `ggus` otherwise")


def job_lookup(config: RobotConfig) -> JobLookup:
    """Where pasted PanDA jobs ran and how they ended: with the PanDA backend, PanDA itself (batched
    getJobStatus through the backend, each ID asked once per import); else the embedded grid's records."""
    if config.backend.kind != "panda":
        return grid_job_lookup(config)
    cache: dict[int, JobReport | None] = {}
    backend: list[Backend] = []

    def lookup(panda_ids: Sequence[int]) -> dict[int, JobReport | None]:
        missing = [pid for pid in dict.fromkeys(panda_ids) if pid not in cache]
        if missing:
            if not backend:
                from robot.services import panda_backend  # noqa: PLC0415 (panda-client only when needed)

                backend.append(panda_backend(config, None))
            cache.update(backend[0].status(missing))
        return {pid: cache.get(pid) for pid in panda_ids}

    return lookup


@collector_paused
def import_source(session: Session, source: str, config: RobotConfig, error_table: Any,
                  now: datetime) -> tuple[ImportSummary, list[int]]:
    if source == "ggus":
        messages, skipped, label = _from_ggus(config), [], "ggus"
    elif source == "imap":
        messages, skipped = _from_imap(session, config, now)
        label = "mail"
    else:
        path = Path(source)
        check_mailbox(path)
        reader = read_maildir if path.is_dir() else read_mbox
        messages, skipped = [], []
        for item in reader(path):
            if isinstance(item, Message):
                messages.append(item)
            else:
                skipped.append(f"{item}")
        label = "mail"
    index = TopologyIndex.from_topology(stored_topology(session), config.tickets.aliases)
    support = (config.tickets.support_address,) if config.tickets.support_address else DEFAULT_SUPPORT_ADDRESSES
    threads = thread(messages, support_addresses=support)
    summary, changed = store_threads(session, label, threads, index, error_table, job_lookup(config), support)
    summary.skipped = skipped
    return summary, changed


def _from_imap(session: Session, config: RobotConfig, now: datetime) -> tuple[list[Message], list[str]]:
    """New mail since the last import (the last UID is kept per server and folder)."""
    settings = config.tickets.imap
    if settings is None:
        raise ValueError("tickets.imap is not configured (host, username, password, folder)")
    key = f"tickets.imap.{settings.host}.{settings.folder}.uid"[:64]
    stored = session.get(Setting, key)
    client = connect(settings.host, settings.port, settings.username, settings.password.get_secret_value(),
                     ssl=settings.ssl)
    try:
        items, last_uid = fetch_new(client, settings.folder, int(stored.value) if stored else 0,
                                    f"imap:{settings.host}", now)
    finally:
        client.logout()
    session.merge(Setting(name=key, value=str(last_uid), actor="tickets import", changed_at=now))
    return [m for m in items if isinstance(m, Message)], [str(s) for s in items if not isinstance(s, Message)]


def _from_ggus(config: RobotConfig) -> Iterable[Message]:
    from robot.tickets.ggus import GGUSClient

    settings = config.tickets.ggus
    if settings is None:
        raise ValueError("tickets.ggus is not configured (url, token)")
    client = GGUSClient(settings.url, settings.token.get_secret_value(), vo=settings.vo)
    messages: list[Message] = []
    for site in settings.sites or [None]:
        for ticket in client.search(site, 0):
            messages += client.to_messages(ticket, client.articles(ticket["id"]))
    return messages


def import_demo_tickets(session: Session, config: RobotConfig, error_table: Any, path: Path, broken: str,
                        healthy: str, broken_from: datetime, healthy_from: datetime, end: datetime) -> list[Ticket]:
    """Write the demo's own tickets to `path`, import and judge them: one about its broken queue (written
    after `broken_from`), one about a healthy queue (written after `healthy_from`), both before `end`."""
    write_messages(path, demo_threads(broken, healthy, broken_from, healthy_from, end))
    _summary, changed = import_source(session, str(path), config, error_table, end)
    judge_tickets(session, end, changed, error_table)
    return list(session.scalars(select(Ticket).where(Ticket.id.in_(changed)).order_by(Ticket.id)))
