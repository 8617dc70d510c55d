"""The pages' numbers on a generated year-like history (bench/dashboard.py's own, small): every
heatmap cell and every overview row, for every time range the pages offer (and a year), read at the
benchmark's moment within an hour, equals counting the job table directly. On SQLite and PostgreSQL."""
from __future__ import annotations

from collections import Counter

import pytest
from sqlalchemy import select

from bench.dashboard import AT, NOW, fill, windows
from dashboard import queries
from dashboard.pages.common import RANGES
from robot.storage.database import make_engine, make_sessionmaker, upgrade
from robot.storage.models import Job, Queue, Template, Test as StoredTest


@pytest.fixture
def history(database_url):
    engine = make_engine(database_url)
    upgrade(engine)
    fill(engine, 6000, 10, clouds=("DE", "US"), sites_per_cloud=2, queues_per_site=3)
    yield make_sessionmaker(engine)
    engine.dispose()


def counted(session, start, end, template: str | None = None) -> list[tuple[str, str, object]]:
    query = (select(Queue.name, Job.outcome, Job.end_time).join(Queue, Queue.id == Job.queue_id)
             .join(StoredTest, StoredTest.id == Job.test_id).join(Template, Template.id == StoredTest.template_id)
             .where(Job.end_time >= start, Job.end_time < end, Job.outcome.in_(["completed", "failed"])))
    if template:
        query = query.where(Template.name == template)
    return session.execute(query).all()


def test_every_range_the_pages_offer_is_a_window_of_the_benchmark():
    assert [label for label, _ in windows()][:len(RANGES)] == list(RANGES)
    assert AT < NOW and AT.timestamp() % 60  # read within an hour and a minute: every window's edges cut periods


def test_heatmap_cells_and_overview_rows_equal_a_direct_count_at_every_range(history):
    for _, f in windows():
        check_range(history, f)


def check_range(history, f) -> None:
    with history() as session:
        heat = queries.success_heatmap(session, f)
        jobs = counted(session, f.start, f.end)
        assert sum(map(sum, heat.jobs)) == len(jobs) > 0
        edges = [*heat.starts, f.end]
        cells: Counter = Counter()
        completed: Counter = Counter()
        for queue, outcome, end in jobs:
            k = max(i for i, edge in enumerate(edges[:-1]) if edge <= end)
            cells[(queue, k)] += 1
            completed[(queue, k)] += outcome == "completed"
        for row, queue in enumerate(heat.queues):
            assert heat.jobs[row] == [cells[(queue, k)] for k in range(len(heat.starts))]
            assert heat.success[row] == [completed[(queue, k)] / cells[(queue, k)] if cells[(queue, k)] else None
                                         for k in range(len(heat.starts))]
        check_series(session, f)
        narrowed = queries.Filters(f.start, f.end, templates=("hc_ttbar",))
        rows = {r.queue: (r.jobs, r.failed) for r in queries.overview(session, narrowed, AT)}
        direct = Counter()
        failed = Counter()
        for queue, outcome, _ in counted(session, f.start, f.end, "hc_ttbar"):
            direct[queue] += 1
            failed[queue] += outcome == "failed"
        assert rows == {queue: (direct[queue], failed[queue]) for queue in rows}


def check_series(session, f) -> None:
    """A queue page's failure rate over time: points cut as the heatmap's cells (at least 48, each
    inner one a whole step), each one's jobs and failures those the job table holds."""
    ended = counted(session, f.start, f.end)
    queue = Counter(name for name, _, _ in ended).most_common(1)[0][0]
    series = queries.queue_page(session, queue, f, AT).failure_series
    edges = [*(p.start for p in series), f.end]
    assert edges == queries.heatmap_edges(f.start, f.end, 48) and len(series) >= 48
    step = edges[2] - edges[1]
    assert all(b - a == step for a, b in zip(edges[1:-1], edges[2:-1]))
    jobs: Counter = Counter()
    failed: Counter = Counter()
    for name, outcome, end in ended:
        if name == queue:
            k = max(i for i, edge in enumerate(edges[:-1]) if edge <= end)
            jobs[k] += 1
            failed[k] += outcome == "failed"
    assert [(p.jobs, p.failed) for p in series] == [(jobs[k], failed[k]) for k in range(len(series))]
