"""Bring the database in line with the outside world: topology, templates and functional tests."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from robot.config import TemplateConfig
from robot.storage.models import Cloud, Queue, Site, StorageEndpoint, Template, Test, TestQueue
from robot.topology import Topology


def sync_topology(session: Session, topology: Topology, now: datetime) -> dict[str, int]:
    """Upsert clouds, sites, endpoints and queues; queues that disappeared are retired, not deleted."""
    clouds = {c.name: c for c in session.scalars(select(Cloud))}
    for name in topology.clouds:
        if name not in clouds:
            clouds[name] = Cloud(name=name)
            session.add(clouds[name])
    sites = {s.name: s for s in session.scalars(select(Site))}
    for info in topology.sites:
        site = sites.get(info.name) or Site(name=info.name)
        site.cloud, site.contacts = clouds[info.cloud], list(info.contacts)
        sites[info.name] = site
        session.add(site)
    endpoints = {e.name: e for e in session.scalars(select(StorageEndpoint))}
    session.flush()
    for info in topology.endpoints:
        endpoint = endpoints.get(info.name) or StorageEndpoint(name=info.name)
        endpoint.site_id = sites[info.site].id
        endpoints[info.name] = endpoint
        session.add(endpoint)
    queues = {q.name: q for q in session.scalars(select(Queue))}
    added = retired = 0
    for info in topology.queues:
        queue = queues.get(info.name)
        if queue is None:
            queue = Queue(name=info.name, status="online", robot_state="online", robot_state_since=now)
            session.add(queue)
            added += 1
        queue.site, queue.exempt, queue.retired_at = sites[info.site], info.exempt, None
        queue.endpoints = [endpoints[e] for e in info.endpoints]
    current = {q.name for q in topology.queues}
    for name, queue in queues.items():
        if name not in current and queue.retired_at is None:
            queue.retired_at = now
            retired += 1
    session.flush()
    return {"added": added, "retired": retired}


def sync_templates(session: Session, templates: list[TemplateConfig]) -> dict[str, Template]:
    """Store the configured templates; a template removed from the configuration becomes inactive."""
    stored = {t.name: t for t in session.scalars(select(Template))}
    for config in templates:
        row = stored.get(config.name) or Template(name=config.name)
        row.category, row.active, row.payload = config.category, config.active, config.payload
        row.input_dataset, row.events_per_job = config.input_dataset, config.events_per_job
        row.processing_type = config.processing_type
        row.settings = config.model_dump(mode="json")
        stored[config.name] = row
        session.add(row)
    configured = {t.name for t in templates}
    for name, row in stored.items():
        if name not in configured:
            row.active = False
    session.flush()
    return stored


def ensure_functional_tests(session: Session, templates: list[TemplateConfig], now: datetime) -> list[Test]:
    """HammerCloud's rule: every active functional template always has one running test.

    Tests past their end are completed; a new one starts for the next `lifetime`. Queues that
    joined the topology since a test started are added to it.
    """
    rows = {t.name: t for t in session.scalars(select(Template))}
    for test in session.scalars(select(Test).where(Test.state == "running", Test.category == "functional")):
        if test.end_time <= now or not test.template.active:
            test.state = "completed"
    running: list[Test] = []
    live_queues = list(session.scalars(
        select(Queue).where(Queue.retired_at.is_(None)).options(selectinload(Queue.site).selectinload(Site.cloud))
    ))
    for config in templates:
        if config.category != "functional" or not config.active:
            continue
        template = rows[config.name]
        test = session.scalars(
            select(Test).where(Test.template_id == template.id, Test.state == "running")
        ).first()
        if test is None:
            test = Test(template=template, category="functional", state="running", start_time=now,
                        end_time=now + config.lifetime, created_at=now, requested_by="robot")
            session.add(test)
            session.flush()
        present = set(session.scalars(select(TestQueue.queue_id).where(TestQueue.test_id == test.id)))
        for queue in live_queues:
            if queue.id not in present and config.applies_to(queue.name, queue.site.cloud.name):
                session.add(TestQueue(test_id=test.id, queue_id=queue.id, max_running_jobs=config.max_running_jobs,
                                      min_queue_depth=config.min_queue_depth, resubmit_enabled=config.resubmit))
        running.append(test)
    session.flush()
    return running
