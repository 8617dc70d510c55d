"""What the exclusion engine keeps between steps is what it would work out afresh from the stored rows."""
from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from sqlalchemy import update

from blacklist.engine import ResultCache, _view_of
from blacklist.model import END_TIME, QueueView, Result
from blacklist.policies import Policy
from blacklist.simulate import BUILTIN
from robot.storage.database import make_engine, make_sessionmaker, upgrade
from robot.storage.models import Cloud, Job, Queue, Site, Template
from robot.storage.models import Test as StoredTest

T0 = datetime(2026, 11, 2, tzinfo=UTC)
STEP = timedelta(minutes=10)


def test_the_result_cache_orders_each_queues_results_as_a_sort_of_what_it_holds(database_url):
    """Results read step by step, many ending at the same time, some read again changed, others leaving
    the window: each queue's ordering is the stable sort of its results in the order first read, as
    sorting them again at every step gives, and its newest start their latest."""
    database = make_engine(database_url)
    upgrade(database)
    policy = Policy(BUILTIN["default"], ("t",))
    draw = random.Random(7)
    with make_sessionmaker(database)() as session:
        cloud = Cloud(name="DE")
        site = Site(name="SITE-A", cloud=cloud)
        queues = [Queue(name=f"ANALY_{i}", site=site) for i in range(3)]
        template = Template(name="t", category="functional", active=True, payload="p", input_dataset="d",
                            events_per_job=10, processing_type="test")
        test = StoredTest(template=template, category="functional", state="running", start_time=T0,
                          end_time=T0 + timedelta(days=2), created_at=T0)
        session.add_all([cloud, site, *queues, template, test])
        session.flush()
        cache, jobs, now = ResultCache(policy), [], T0 + policy.window
        for step in range(60):
            for _ in range(draw.randint(0, 6)):
                queue = draw.choice(queues)
                end = now - draw.choice([timedelta(0), STEP, 2 * STEP, policy.window / 2])  # ties, and late arrivals
                # the first queue's jobs run long after its first ones: the last to start leaves the window first
                long = queue is queues[0] and step >= 5
                start = end - timedelta(minutes=480 if long else draw.choice([5, 20, 90]))
                job = Job(test_id=test.id, queue_id=queue.id, job_name=f"j{len(jobs)}",
                          panda_id=len(jobs) + 1, phase="done", job_status="failed", dataset="d", n_files=1,
                          recorded_at=start, creation_time=start, start_time=start if draw.random() < 0.9 else None,
                          end_time=end, status_changed_at=now, outcome=draw.choice(["completed", "failed"]))
                session.add(job)
                jobs.append(job)
            session.flush()
            for job in draw.sample(jobs, min(len(jobs), draw.randint(0, 2))):  # read again, changed
                session.execute(update(Job).where(Job.id == job.id).values(
                    status_changed_at=now, error_code=step, end_time=job.end_time + draw.choice([timedelta(0), STEP])))
            ordered = cache.read(session, now)
            fresh = ResultCache(policy)
            fresh.read(session, now)
            for queue in queues:
                held = cache._by_queue[queue.id].values()
                assert ordered.get(queue.id, ()) == tuple(sorted(held, key=END_TIME, reverse=True))
                assert sorted(held, key=repr) == sorted(fresh._by_queue[queue.id].values(), key=repr)
                assert cache.newest_start(queue.id) == max((r.start_time for r in held if r.start_time), default=None)
            now += STEP
        assert len(jobs) > 100


def test_a_view_copied_without_its_constructor_is_the_one_the_constructor_makes():
    """The views' fast path (QueueFacts._moved) copies a view's fields without QueueView's constructor:
    the copy must be the same value, hash and fields (it stops working, here first, if QueueView gains
    slots, a __post_init__ or a field set outside __init__)."""
    view = QueueView(name="ANALY_0", site="SITE-A", cloud="DE", status="online", robot_state="pending",
                     excluded_for=frozenset({1099}), state_since=T0)
    result = Result(1, "t", T0, True, "site", "ERR", 1099, T0 - STEP, T0 - 2 * STEP)
    fields = {**vars(view), "results": (result,), "last_start": T0, "user_jobs": ()}
    made, copied = QueueView(**fields), _view_of(fields)
    assert type(copied) is QueueView and copied == made and hash(copied) == hash(made) and vars(copied) == vars(made)
    assert copied.results == (result,) and view.results == ()  # the original is left as it was
