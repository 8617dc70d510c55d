"""`healthrobot db prune`: old jobs go, their sums stay in the rollup, the pages' year-long windows stay exact."""
from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from bench.dashboard import NOW, fill
from dashboard import queries
from dashboard.queries import Filters
from robot import rollup
from robot.cli import main
from robot.retention import prune
from robot.storage.database import make_engine, make_sessionmaker, upgrade
from robot.backends.base import UserJobHour
from robot.classify import load_table
from robot.storage.models import Job, JobRollup
from robot.storage.models import UserJobHour as UserJobHourRow
from robot.userjobs import store

DAYS = 430  # a little more than the 400 days the README's prune keeps


@pytest.fixture
def history(database_url):
    engine = make_engine(database_url)
    upgrade(engine)
    fill(engine, 2500, DAYS, clouds=("DE",), sites_per_cloud=2, queues_per_site=2)
    yield make_sessionmaker(engine)
    engine.dispose()


def pages(session) -> tuple:
    """What the pages count over long windows (rates to 9 digits: sums of floats in another order)."""
    year = Filters(NOW - timedelta(days=365), NOW)
    month = Filters(NOW - timedelta(days=30), NOW)

    def rows(found):
        return [(r.queue, r.jobs, r.failed, r.error_classes, r.last_end, round(r.events_per_second or 0, 9),
                 round(r.cpu_efficiency or 0, 9)) for r in found]

    heat = queries.success_heatmap(session, year)
    page = queries.queue_page(session, "ANALY_DE_SITE00_0", year, NOW)
    return (rows(queries.overview(session, year, NOW)), rows(queries.overview(session, month, NOW)),
            [[round(n, 9) for n in row] for row in heat.jobs], page.jobs, page.failed,
            [(p.jobs, p.failed) for p in page.failure_series])


def final_jobs_before(session, cut: datetime) -> int:
    return session.scalar(select(func.count()).select_from(Job).where(Job.phase == "done", Job.end_time < cut))


def test_prune_deletes_old_jobs_and_pages_over_a_year_count_the_same(history):
    with history() as session:
        before = pages(session)
        jobs = session.scalar(select(func.count()).select_from(Job))
        flying = session.scalar(select(func.count()).select_from(Job).where(Job.phase == "active"))
        done = prune(session, NOW, timedelta(days=400))
        assert done.cut <= NOW - timedelta(days=400) and rollup.epoch(done.cut) % rollup.WEEK == 0
        assert done.deleted > 20 and final_jobs_before(session, done.cut) == 0
        assert session.scalar(select(func.count()).select_from(Job)) == jobs - done.deleted
        assert session.scalar(select(func.count()).select_from(Job).where(Job.phase == "active")) == flying
        assert pages(session) == before
        # a backfill after pruning keeps the rollup before the cut
        rollup.rebuild(session, NOW)
        session.commit()
        assert pages(session) == before
        assert rollup.stored_queue_counts(session) == rollup.queue_counts_from_templates(session)
        rows = session.scalar(select(func.count()).select_from(JobRollup).where(
            JobRollup.start < int(rollup.epoch(done.cut))))
        assert rows > 0


def test_a_second_prune_with_a_shorter_age_moves_the_cut_forward(history):
    with history() as session:
        before = pages(session)
        first = prune(session, NOW, timedelta(days=420))
        second = prune(session, NOW, timedelta(days=400))
        assert second.cut > first.cut and second.deleted > 0
        assert rollup.kept_from(session) == second.cut
        rollup.rebuild(session, NOW)
        session.commit()
        assert pages(session) == before
        assert rollup.stored_queue_counts(session) == rollup.queue_counts_from_templates(session)


def test_db_prune_command(tmp_path):
    url = f"sqlite:///{tmp_path / 'robot.db'}"
    engine = make_engine(url)
    upgrade(engine)
    fill(engine, 500, 60, clouds=("DE",), sites_per_cloud=1, queues_per_site=2)
    config = tmp_path / "robot.yaml"
    config.write_text(f"data_dir: {tmp_path}\ndatabase: {{url: '{url}'}}\n")
    now = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0)
    with make_sessionmaker(engine)() as session:  # users' jobs counted long ago and this hour
        store(session, "panda", [UserJobHour("ANALY_A", now - timedelta(days=100), 10, 1, {("pilot", 1099): 1}),
                                 UserJobHour("ANALY_A", now, 5, 0)], now - timedelta(days=100), load_table(), now)
        session.commit()
    for bad in ("0d", "soon"):
        result = CliRunner().invoke(main, ["--config", str(config), "db", "prune", "--older-than", bad])
        assert result.exit_code == 2 and "--older-than" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(main, ["--config", str(config), "db", "prune", "--older-than", "40d"])
    assert result.exit_code == 0, result.output
    found = re.search(r"deleted (\d+) jobs that ended before (\S+ \S+) UTC", result.output)
    assert found, result.output
    cut = datetime.fromisoformat(found.group(2)).replace(tzinfo=timezone.utc)
    assert "and 1 hourly counts of users' jobs" in result.output
    with make_sessionmaker(engine)() as session:
        assert final_jobs_before(session, cut) == 0
        assert [h.hour for h in session.scalars(select(UserJobHourRow))] == [now]
    engine.dispose()
