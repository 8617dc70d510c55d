"""The dashboard's data layer: statuses, rates with Wilson bands, the heatmap's buckets, filters, pages."""
from __future__ import annotations

import itertools
import random
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import text

from dashboard import queries
from dashboard.queries import Filters
from dashboard.rollup_queries import bucket_sums, cover
from robot import rollup
from robot.loop import BACKEND_SETTING, LAST_STEP_SETTING
from robot.storage.database import make_engine, make_sessionmaker, upgrade
from robot.storage.models import (Cloud, Episode, Event, Job, Override, Queue, QueueTransition, Setting, Silence, Site,
                                  Template, Ticket, TicketLink, TicketMention)
from robot.storage.models import Test as StoredTest, TestQueue as QueuePart

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=timezone.utc)
PLACES = {"ANALY_A": ("SITE-A", "DE"), "ANALY_A2": ("SITE-A", "DE"), "ANALY_B": ("SITE-B", "DE"),
          "ANALY_C": ("SITE-C", "US")}


class World:
    """Topology, templates and jobs written straight to the tables, as the robot would have."""

    def __init__(self, session):
        self.session = session
        self.ids = itertools.count(1)
        clouds = {c: Cloud(name=c) for c in sorted({c for _, c in PLACES.values()})}
        sites = {s: Site(name=s, cloud=clouds[c]) for s, c in sorted(set(PLACES.values()))}
        self.queues = {q: Queue(name=q, site=sites[s]) for q, (s, _) in PLACES.items()}
        self.templates = {name: Template(name=name, category=category, active=True, payload="zmumu",
                                         input_dataset="mc23.*", events_per_job=1000, processing_type="gangarobot",
                                         settings={})
                          for name, category in (("T1", "functional"), ("T2", "functional"), ("S", "stress"))}
        session.add_all([*clouds.values(), *sites.values(), *self.queues.values(), *self.templates.values()])
        start = datetime(2026, 1, 1, tzinfo=timezone.utc)
        self.tests = {name: StoredTest(template=t, category=t.category, state="running", start_time=start,
                                    end_time=start + timedelta(days=400), created_at=start)
                      for name, t in self.templates.items() if t.category == "functional"}
        session.add_all(self.tests.values())
        session.flush()

    def job(self, queue: str, end: datetime | None, outcome: str | None = "completed", template: str = "T1",
            wall: float = 100.0, payload: float | None = None, events: int = 1000, error_class: str | None = None,
            test: StoredTest | None = None, **extra) -> Job:
        n = next(self.ids)
        start = end - timedelta(seconds=wall) if end is not None else None
        job = Job(test_id=(test or self.tests[template]).id, queue_id=self.queues[queue].id, job_name=f"j{n}",
                  panda_id=1000 + n, phase="done" if outcome else "active", dataset="d", n_files=1,
                  recorded_at=(start or NOW) - timedelta(seconds=60), status_changed_at=end or NOW,
                  creation_time=(start or NOW) - timedelta(seconds=60), start_time=start, end_time=end,
                  outcome=outcome, job_status={"completed": "finished", None: "running"}.get(outcome, "failed"),
                  n_events=events if outcome == "completed" else 0, time_payload=payload, time_queue=60.0,
                  error_class=error_class if outcome == "failed" else None, **extra)
        self.session.add(job)
        return job


@pytest.fixture
def session(database_url):
    engine = make_engine(database_url)  # SQLite, then PostgreSQL
    upgrade(engine)
    with make_sessionmaker(engine)() as session:
        yield session
    engine.dispose()


@pytest.fixture
def world(session) -> World:
    return World(session)


def roll(session) -> None:
    session.flush()
    rollup.rebuild(session, NOW)


def by_queue(rows) -> dict:
    return {r.queue: r for r in rows}


# -- overview ----------------------------------------------------------------------------------------
def test_overview_statuses_follow_silences_overrides_and_the_robots_state(session, world):
    q = world.queues
    q["ANALY_A"].robot_state = "excluded"  # excluded by the robot, but its site is silenced: silenced wins
    session.add(Silence(scope="site", name="SITE-A", actor="ops", reason="downtime", created_at=NOW - timedelta(hours=1),
                        until=NOW + timedelta(hours=1)))
    session.add(Silence(scope="cloud", name="US", actor="ops", reason="over", created_at=NOW - timedelta(days=2),
                        until=NOW - timedelta(hours=1)))  # ended: no effect
    session.add(Override(queue_id=q["ANALY_B"].id, action="exclude", status="brokeroff", actor="alice",
                         reason="disk replacement", created_at=NOW - timedelta(hours=2)))
    q["ANALY_C"].robot_state = "pending"
    session.add(QueueTransition(queue_id=q["ANALY_C"].id, time=NOW - timedelta(hours=3), kind="state", old="online",
                                new="pending", reason="older reason", evidence={}, actor="healthrobot"))
    session.add(QueueTransition(queue_id=q["ANALY_C"].id, time=NOW - timedelta(hours=1), kind="state", old="online",
                                new="pending", reason="first site failure: probing", evidence={}, actor="healthrobot"))
    roll(session)
    found = by_queue(queries.overview(session, Filters(NOW - timedelta(days=1), NOW), NOW))
    assert {name: s.status for name, s in found.items()} == {
        "ANALY_A": "silenced", "ANALY_A2": "silenced", "ANALY_B": "excluded", "ANALY_C": "pending"}
    assert found["ANALY_C"].status_reason == "first site failure: probing"
    assert found["ANALY_B"].status_reason == "" and "alice" in found["ANALY_B"].detail
    assert "downtime" in found["ANALY_A"].detail
    assert [s.queue for s in found.values()] == ["ANALY_A", "ANALY_A2", "ANALY_B", "ANALY_C"]  # cloud, site, queue


def test_overview_an_include_override_wins_and_a_status_set_outside_the_robot_is_excluded(session, world):
    q = world.queues
    q["ANALY_A"].robot_state = "excluded"
    session.add(Override(queue_id=q["ANALY_A"].id, action="include", status="online", actor="bob", reason="fixed",
                         created_at=NOW - timedelta(minutes=5)))
    q["ANALY_B"].status = "offline"
    session.add(Override(queue_id=q["ANALY_C"].id, action="exclude", status="test", actor="bob", reason="old",
                         created_at=NOW - timedelta(days=2), until=NOW - timedelta(days=1)))  # over
    roll(session)
    found = by_queue(queries.overview(session, Filters(NOW - timedelta(days=1), NOW), NOW))
    assert (found["ANALY_A"].status, found["ANALY_B"].status, found["ANALY_C"].status) == ("online", "excluded", "online")
    assert found["ANALY_B"].detail == "status offline at the backend"


def test_overview_shows_a_site_in_an_announced_downtime_as_such(session, world):
    from robot.storage.models import Downtime

    world.queues["ANALY_B"].robot_state = "pending"  # what the robot thought before: the downtime speaks first
    session.add(Downtime(source="gocdb", key="9G0@SITE-B", site="SITE-B", start=NOW - timedelta(hours=1),
                         end=NOW + timedelta(hours=3), classification="scheduled", severity="outage",
                         description="dCache upgrade", seen_at=NOW))
    session.add(Downtime(source="gocdb", key="8G0@SITE-C", site="SITE-C", start=NOW - timedelta(days=1),
                         end=NOW - timedelta(hours=2), classification="scheduled", severity="outage",
                         description="over", seen_at=NOW))  # ended: no effect
    roll(session)
    found = by_queue(queries.overview(session, Filters(NOW - timedelta(days=1), NOW), NOW))
    assert {name: s.status for name, s in found.items()} == {
        "ANALY_A": "online", "ANALY_A2": "online", "ANALY_B": "downtime", "ANALY_C": "online"}
    assert found["ANALY_B"].detail == ("scheduled downtime 2026-11-20 11:00-15:00 UTC (dCache upgrade): announced by "
                                       "the site, not judged")


def test_overview_says_when_the_robots_exclusion_was_not_applied(session, world):
    q = world.queues
    q["ANALY_A"].robot_state = "excluded"  # a dry-run decision: the backend still has it online
    q["ANALY_B"].robot_state, q["ANALY_B"].status = "excluded", "brokeroff"  # applied
    roll(session)
    found = by_queue(queries.overview(session, Filters(NOW - timedelta(days=1), NOW), NOW))
    assert (found["ANALY_A"].status, found["ANALY_B"].status) == ("excluded", "excluded")
    assert found["ANALY_A"].detail.startswith("online; robot: excluded (dry-run)") and found["ANALY_B"].detail == "status brokeroff at the backend"


def test_overview_failure_rate_wilson_band_and_events_per_second(session, world):
    for k in range(10):  # 7 completed (1000 events in 100 s, 2000 in 300 s ...), 3 failed
        end = NOW - timedelta(hours=2, minutes=k)
        if k < 7:
            world.job("ANALY_A", end, wall=100 if k % 2 else 300, events=1000 if k % 2 else 2000, payload=50)
        else:
            world.job("ANALY_A", end, outcome="failed", error_class="site" if k < 9 else "user")
    world.job("ANALY_A", NOW - timedelta(hours=1), outcome="cancelled")  # not counted
    world.job("ANALY_A", NOW - timedelta(days=3))  # outside the window
    roll(session)
    found = by_queue(queries.overview(session, Filters(NOW - timedelta(days=1), NOW), NOW))
    a = found["ANALY_A"]
    assert (a.jobs, a.failed, a.failure_rate) == (10, 3, pytest.approx(0.3))
    assert (a.ci_low, a.ci_high) == (pytest.approx(0.10779, abs=1e-4), pytest.approx(0.60323, abs=1e-4))
    # k = 0, 2, 4, 6: 2000 events in 300 s; k = 1, 3, 5: 1000 in 100 s -> 11000 / 1500
    assert a.events_per_second == pytest.approx(11000 / 1500)
    assert a.events_per_payload_second == pytest.approx(11000 / 350)
    assert a.error_classes == {"site": 2, "user": 1}
    assert a.last_end == NOW - timedelta(hours=1)  # the cancelled job ended last
    b = found["ANALY_B"]
    assert (b.jobs, b.failure_rate, b.events_per_second, b.ci_low, b.last_end) == (0, None, None, None, None)


def test_overview_window_edges_are_exact_to_the_microsecond(session, world):
    start = datetime(2026, 6, 3, 10, 20, 30, 500_000, tzinfo=timezone.utc)
    end = start + timedelta(days=40, hours=5)
    for when in (start - timedelta(microseconds=1), end, end + timedelta(seconds=1)):
        world.job("ANALY_A", when, outcome="failed")  # outside [start, end)
    for when in (start, start + timedelta(days=9, minutes=3), end - timedelta(microseconds=1)):
        world.job("ANALY_A", when)  # inside
    roll(session)
    a = by_queue(queries.overview(session, Filters(start, end), end))["ANALY_A"]
    assert (a.jobs, a.failed) == (3, 0)


def test_filters_narrow_overview_heatmap_and_transitions(session, world):
    for queue in PLACES:
        world.job(queue, NOW - timedelta(hours=1), template="T1")
        world.job(queue, NOW - timedelta(hours=1), template="T2", outcome="failed")
        session.add(QueueTransition(queue_id=world.queues[queue].id, time=NOW - timedelta(hours=2), old="online",
                                    new="brokeroff", reason=f"why {queue}", evidence={"jobs": [1]}, actor="healthrobot"))
    roll(session)
    window = (NOW - timedelta(days=1), NOW)
    assert [s.queue for s in queries.overview(session, Filters(*window, clouds=("US",)), NOW)] == ["ANALY_C"]
    assert [s.queue for s in queries.overview(session, Filters(*window, sites=("SITE-A",)), NOW)] == \
        ["ANALY_A", "ANALY_A2"]
    only_t2 = queries.overview(session, Filters(*window, templates=("T2",), queues=("ANALY_B",)), NOW)
    assert [(s.queue, s.jobs, s.failed) for s in only_t2] == [("ANALY_B", 1, 1)]
    heat = queries.success_heatmap(session, Filters(*window, templates=("T1",), clouds=("DE",)))
    assert heat.queues == ["ANALY_A", "ANALY_A2", "ANALY_B"]
    assert [row[-1] for row in heat.success] == [1.0, 1.0, 1.0] and [row[-1] for row in heat.jobs] == [1, 1, 1]
    found = queries.transitions(session, Filters(*window, sites=("SITE-B",)))
    assert [(t.queue, t.site, t.cloud, t.reason, t.evidence) for t in found] == \
        [("ANALY_B", "SITE-B", "DE", "why ANALY_B", {"jobs": [1]})]
    assert len(queries.transitions(session, Filters(*window))) == 4
    assert queries.transitions(session, Filters(NOW - timedelta(hours=1), NOW)) == []


def test_filter_options_list_live_names_sorted(session, world):
    world.queues["ANALY_C"].retired_at = NOW - timedelta(days=1)
    session.flush()
    assert queries.filter_options(session) == {"clouds": ["DE"], "sites": ["SITE-A", "SITE-B"],
                                               "templates": ["S", "T1", "T2"],
                                               "queues": ["ANALY_A", "ANALY_A2", "ANALY_B"]}


# -- heatmap ---------------------------------------------------------------------------------------
def test_heatmap_cells_are_cut_at_whole_steps_with_exact_boundaries(session, world):
    start = datetime(2026, 11, 19, 10, 30, tzinfo=timezone.utc)
    end = start + timedelta(days=1)  # 24 h: hourly cells, the first and the last cut by the window
    tick = timedelta(microseconds=1)
    for when, outcome in ((start - tick, "completed"), (start, "completed"),  # before; first cell
                          (start + timedelta(minutes=30) - tick, "failed"),  # last instant of the first cell
                          (start + timedelta(minutes=30), "failed"), (start + timedelta(minutes=80), "completed"),
                          (end - tick, "completed"), (end, "failed")):  # last cell; after
        world.job("ANALY_A", when, outcome=outcome, error_class="site")
    roll(session)
    heat = queries.success_heatmap(session, Filters(start, end, queues=("ANALY_A",)))
    hour = datetime(2026, 11, 19, 11, tzinfo=timezone.utc)
    assert heat.starts == [start] + [hour + timedelta(hours=k) for k in range(24)]
    assert heat.queues == ["ANALY_A"]
    assert heat.jobs == [[2, 2] + [0] * 22 + [1]]
    assert heat.success == [[0.5, 0.5] + [None] * 22 + [1.0]]


@pytest.mark.parametrize("window, step, cells", [
    (timedelta(hours=1), timedelta(minutes=2), 30), (timedelta(hours=6), timedelta(minutes=15), 24),
    (timedelta(days=1), timedelta(hours=1), 24), (timedelta(days=3), timedelta(hours=3), 24),
    (timedelta(days=7), timedelta(hours=6), 28), (timedelta(days=56), timedelta(days=1), 56),
    (timedelta(days=365), timedelta(weeks=1), 52)])
def test_heatmap_cells_are_the_largest_whole_step_giving_24_cells(window, step, cells):
    end = datetime(2026, 11, 20, 12, 17, 23, 400_000, tzinfo=timezone.utc)
    edges = queries.heatmap_edges(end - window, end)
    inner = edges[1:-1]
    assert edges[0] == end - window and edges[-1] == end
    assert len(edges) - 1 == cells + 1  # the first and the last cells are cut by the window
    assert all(rollup.epoch(e) % step.total_seconds() == 0 for e in inner)
    assert all(b - a == step for a, b in zip(inner, inner[1:]))


def test_heatmap_over_a_long_window_is_exact_per_day(session, world):
    start = datetime(2026, 1, 1, 7, tzinfo=timezone.utc)
    for day in range(0, 56, 7):
        world.job("ANALY_A", start + timedelta(days=day, hours=12))
        world.job("ANALY_A", start + timedelta(days=day, hours=13), outcome="failed")
    roll(session)
    heat = queries.success_heatmap(session, Filters(start, start + timedelta(days=56), queues=("ANALY_A",)))
    assert heat.starts[1] == datetime(2026, 1, 2, tzinfo=timezone.utc) and len(heat.starts) == 57
    # 07:00 + 12 h and + 13 h: the 19:00 job in the day's cell, the 20:00 one too
    assert [(k, n) for k, n in enumerate(heat.jobs[0]) if n] == [(k, 2) for k in range(0, 56, 7)]
    assert [heat.success[0][k] for k in range(0, 56, 7)] == [0.5] * 8


def test_on_postgresql_a_pages_sums_are_planned_without_parallel_workers_in_its_transaction_only(postgres):
    engine = make_engine(postgres.create_database(f"test_{uuid.uuid4().hex[:12]}"))
    upgrade(engine)
    sessions = make_sessionmaker(engine)
    show = text("SHOW max_parallel_workers_per_gather")
    with sessions() as session:
        default = session.scalar(show)
        queries.overview(session, Filters(NOW - timedelta(days=365), NOW), NOW)
        assert session.scalar(show) == "0"
    with sessions() as session:  # the next transaction (another page, the robot) plans as the server says
        assert session.scalar(show) == default != "0"
    engine.dispose()


def test_cover_cuts_a_range_into_weeks_days_hours_and_raw_edges():
    start = datetime(2026, 1, 1, 22, 30, tzinfo=timezone.utc)  # Thursday
    end = datetime(2026, 1, 20, 3, 15, tzinfo=timezone.utc)
    periods, raw = cover(start, end)
    assert raw == [(start, datetime(2026, 1, 1, 23, tzinfo=timezone.utc)),
                   (datetime(2026, 1, 20, 3, tzinfo=timezone.utc), end)]
    spans = sorted((span, rollup.at(lo), rollup.at(hi)) for span, lo, hi in periods)
    day = lambda d, h=0: datetime(2026, 1, d, h, tzinfo=timezone.utc)
    assert spans == [(3600, day(1, 23), day(2)), (3600, day(20), day(20, 3)),
                     (86400, day(2), day(8)), (86400, day(15), day(20)), (604800, day(8), day(15))]


def test_bucket_sums_equal_counting_the_jobs_one_by_one(session, world):
    """Random edges (the CASE path), cells at whole steps cut by the window (one stored period or one
    slot per range), and ranges of many periods with gaps between them (rows read there must not count)."""
    rng = random.Random(3)
    base = datetime(2026, 2, 1, tzinfo=timezone.utc)
    ends = [base + timedelta(seconds=rng.uniform(0, 90 * 86400)) for _ in range(1500)]
    for k, end in enumerate(ends):  # templates T1, T1, T2 in turn: every template read (the queue rollup) or T1's
        world.job(("ANALY_A", "ANALY_B")[k % 2], end, outcome=("completed", "failed")[k % 3 == 0],
                  template=("T1", "T1", "T2")[k % 5 % 3])
    roll(session)
    at = base + timedelta(days=80, minutes=17, seconds=23.4)
    edge_sets = [sorted(base + timedelta(seconds=rng.uniform(0, 90 * 86400)) for _ in range(12))]
    edge_sets += [queries.heatmap_edges(at - window, at) for window in (
        timedelta(hours=6), timedelta(days=1), timedelta(days=3), timedelta(days=7), timedelta(days=40),
        timedelta(days=85))]
    edge_sets.append([base + timedelta(hours=h, minutes=30) for h in range(0, 80 * 24, 37)])
    # whole hours [0, 2), [2, 4), [4, 5) and [6, 8) of every 8 (the hour [5, 6) is cut at 5:30): more
    # ranges than are read one by one, and the stored row of [5, 6) in the 2-hour slot of [4, 5)
    edge_sets.append([base + timedelta(days=9, hours=8 * m + h) for m in range(8) for h in (0, 2, 4, 5.5)])
    for edges, templates in itertools.product(edge_sets, (None, ("T1",))):
        found = bucket_sums(session, edges, ("jobs", "failed"),
                            template_ids=templates and [world.templates[t].id for t in templates])
        for q, queue in ((world.queues["ANALY_A"].id, 0), (world.queues["ANALY_B"].id, 1)):
            for k in range(len(edges) - 1):
                inside = [i for i, e in enumerate(ends) if i % 2 == queue and edges[k] <= e < edges[k + 1]
                          and (templates is None or i % 5 % 3 < 2)]
                assert found[q]["jobs"][k] == len(inside)
                assert found[q]["failed"][k] == sum(1 for i in inside if i % 3 == 0)


# -- incidents -----------------------------------------------------------------------------------------
def test_active_incidents_are_the_current_ones_newest_first(session, world):
    old = Event(time=NOW - timedelta(hours=3), kind="mass_failure", subject="central", message="old one", details={})
    held = Event(time=NOW - timedelta(minutes=40), kind="cloud_failure", subject="central",
                 message="5 of 6 queues of cloud DE failing at once: exclusions held", details={"cloud": "DE"})
    mismatch = Event(time=NOW - timedelta(minutes=10), kind="status_mismatch", subject="ANALY_A",
                     message="set brokeroff but read back online", details={})
    down = Event(time=NOW, kind="backend_unreachable", subject="panda", message="job status could not be read",
                 details={})
    stale_down = Event(time=NOW - timedelta(hours=2), kind="backend_unreachable", subject="panda", message="old",
                       details={})
    session.add_all([old, held, mismatch, down, stale_down,
                     Setting(name=LAST_STEP_SETTING, value=NOW.isoformat(), actor="robot", changed_at=NOW),
                     Setting(name=BACKEND_SETTING, value="status: 503", actor="robot", changed_at=NOW)])
    session.flush()
    found = queries.active_incidents(session, NOW)
    assert [(i.kind, i.message) for i in found] == [
        ("backend_unreachable", "job status could not be read"), ("status_mismatch", mismatch.message),
        ("cloud_failure", held.message)]
    session.get(Setting, BACKEND_SETTING).value = "ok"  # the backend answered at the last step
    session.flush()
    assert [i.kind for i in queries.active_incidents(session, NOW)] == ["status_mismatch", "cloud_failure"]
    session.get(Setting, BACKEND_SETTING).value = "queue status: timed out"  # no event for it: said anyway
    session.delete(down)
    session.flush()
    assert [(i.kind, i.message) for i in queries.active_incidents(session, NOW)][0] == \
        ("backend_unavailable", "queue status: timed out")


# -- one queue ---------------------------------------------------------------------------------------
def test_queue_page_of_an_unknown_queue_raises_lookup_error(session, world):
    with pytest.raises(LookupError, match="ANALY_NOPE"):
        queries.queue_page(session, "ANALY_NOPE", Filters(NOW - timedelta(days=1), NOW), NOW)


def test_queue_page_series_errors_jobs_transitions_and_tickets(session, world):
    start = NOW - timedelta(hours=4)
    for k in range(4):  # bucket k (1 h each): k failures out of 4
        for j in range(4):
            when = start + timedelta(hours=k, minutes=10 * j + 5)
            if j < k:
                world.job("ANALY_A", when, outcome="failed", error_class="site", error_name="STAGEINFAILED",
                          error_code=1099, error_source="pilot", error_diag=f"stage-in failed ({k}{j})")
            else:
                world.job("ANALY_A", when, wall=200, events=4000, payload=150.0, time_stagein=10.0 + j,
                          time_stageout=3.0)
    world.job("ANALY_A", NOW - timedelta(minutes=30), outcome="failed", error_class="user",
              error_name="PAYLOADEXECUTIONFAILURE", error_code=1305, error_source="pilot", error_diag="exit 65")
    flying = world.job("ANALY_A", None, outcome=None)
    world.job("ANALY_B", NOW - timedelta(hours=1))  # another queue
    q = world.queues["ANALY_A"]
    session.add(QueueTransition(queue_id=q.id, time=NOW - timedelta(hours=2), old="online", new="brokeroff",
                                reason="site failures: STAGEINFAILED x3", evidence={}, actor="healthrobot"))
    ticket = Ticket(source="mail", key="t1", subject="jobs fail at ANALY_A", state="open", labels=[],
                    first_message_at=NOW - timedelta(hours=1), last_message_at=NOW, messages=2, verdict="site",
                    verdict_reason="the site: ANALY_A excluded")
    other = Ticket(source="mail", key="t2", subject="elsewhere", state="open", labels=[],
                   first_message_at=NOW, last_message_at=NOW, messages=1, verdict="unknown")
    session.add_all([ticket, other])
    session.flush()
    episode = Episode(queue_id=q.id, start=NOW - timedelta(hours=2), end=None, source="exclusion",
                      reason="site failures", error_classes={"site": 3}, evidence={})
    session.add(episode)
    session.flush()
    session.add_all([TicketMention(ticket_id=ticket.id, kind="queue", value="ANALY_A", queue="ANALY_A", site="SITE-A",
                                   complaint=True),
                     TicketLink(ticket_id=ticket.id, episode_id=episode.id, score=1.0, reason="the ticket names ANALY_A",
                                created_at=NOW)])
    roll(session)
    page = queries.queue_page(session, "ANALY_A", Filters(start, NOW), NOW)
    assert (page.queue, page.site, page.cloud, page.status_reason) == \
        ("ANALY_A", "SITE-A", "DE", "site failures: STAGEINFAILED x3")
    series = page.failure_series
    assert len(series) == 48 and series[0].start == start
    per_hour = [(sum(p.jobs for p in series[12 * k:12 * k + 12]), sum(p.failed for p in series[12 * k:12 * k + 12]))
                for k in range(4)]
    assert per_hour == [(4, 0), (4, 1), (4, 2), (5, 4)]
    point = next(p for p in series if p.jobs)
    assert (point.jobs, point.failed, point.rate, point.low, point.high) == \
        (1, 0, 0.0, 0.0, pytest.approx(0.7935, abs=1e-4))  # Wilson 95 % for 0 of 1
    assert page.error_classes == {"site": 6, "user": 1} and (page.jobs, page.failed) == (17, 7)
    assert [(e.code, e.count, e.error_class) for e in page.top_errors] == \
        [("STAGEINFAILED", 6, "site"), ("PAYLOADEXECUTIONFAILURE", 1, "user")]
    assert page.top_errors[0].message.startswith("pilot 1099: stage-in failed")
    assert page.events_per_second == [20.0] * 10
    assert page.time_split["payload"] == 150.0 and page.time_split["queue wait"] == 60.0
    assert page.time_split["stage-in"] == pytest.approx(statistics_median([10, 11, 12, 13, 11, 12, 13, 12, 13, 13]))
    assert page.recent_jobs[0].panda_id == flying.panda_id and page.recent_jobs[0].status == "running"
    assert page.recent_jobs[1].status == "completed" and page.recent_jobs[1].error_code == ""
    assert page.recent_jobs[2].error_code == "PAYLOADEXECUTIONFAILURE (1305)"  # ended 30 min ago
    assert len(page.recent_jobs) == 18
    assert [t.reason for t in page.transitions] == ["site failures: STAGEINFAILED x3"]
    assert [(t.id, t.verdict, t.site_problem, t.queues) for t in page.tickets] == [(ticket.id, "site", True, ["ANALY_A"])]
    assert [(e.queue, e.kind, e.score) for e in page.tickets[0].episodes] == [("ANALY_A", "exclusion", 1.0)]
    narrowed = queries.queue_page(session, "ANALY_A", Filters(start, NOW, templates=("T2",)), NOW)
    assert narrowed.jobs == 0 and narrowed.top_errors == [] and narrowed.events_per_second == []


def statistics_median(values):
    ordered = sorted(values)
    middle = len(ordered) // 2
    return (ordered[middle - 1] + ordered[middle]) / 2 if len(ordered) % 2 == 0 else ordered[middle]


# -- tickets and stress tests ------------------------------------------------------------------------
def test_tickets_newest_first_with_verdict_and_linked_episodes(session, world):
    older = Ticket(source="mail", key="a", subject="old", state="closed", labels=[], messages=1, verdict="not_site",
                   verdict_reason="not the site: ANALY_B passed 48 of 50 tests", first_message_at=NOW - timedelta(days=3),
                   last_message_at=NOW - timedelta(days=2))
    newer = Ticket(source="ggus", key="b", subject="new", state="open", labels=[], messages=3, verdict="site",
                   verdict_reason="the site", first_message_at=NOW - timedelta(days=1), last_message_at=NOW)
    session.add_all([older, newer])
    session.flush()
    session.add_all([TicketMention(ticket_id=older.id, kind="queue", value="ANALY_B", queue="ANALY_B", site="SITE-B",
                                   complaint=True),
                     TicketMention(ticket_id=newer.id, kind="site", value="SITE-A", site="SITE-A", complaint=True),
                     TicketMention(ticket_id=newer.id, kind="queue", value="ANALY_C", queue="ANALY_C",
                                   complaint=False)])  # "runs fine at ANALY_C": not a complaint
    episodes = [Episode(queue_id=world.queues[q].id, start=NOW - timedelta(hours=h), end=None, source="metrics",
                        reason=f"{q} failing", error_classes={}, evidence={}) for q, h in (("ANALY_A", 5), ("ANALY_A2", 3))]
    session.add_all(episodes)
    session.flush()
    session.add_all([TicketLink(ticket_id=newer.id, episode_id=episodes[0].id, score=0.56, reason="near", created_at=NOW),
                     TicketLink(ticket_id=newer.id, episode_id=episodes[1].id, score=0.7, reason="site", created_at=NOW)])
    session.flush()
    found = queries.tickets(session)
    assert [(t.id, t.source, t.site_problem) for t in found] == [(newer.id, "ggus", True), (older.id, "mail", False)]
    assert found[0].queues == [] and found[0].sites == ["SITE-A"] and found[1].queues == ["ANALY_B"]
    assert [(e.queue, e.score, e.summary) for e in found[0].episodes] == [("ANALY_A2", 0.7, "ANALY_A2 failing"),
                                                                        ("ANALY_A", 0.56, "ANALY_A failing")]
    assert len(queries.tickets(session, limit=1)) == 1
    assert queries.ticket(session, older.id) == found[1]
    with pytest.raises(LookupError):
        queries.ticket(session, newer.id + 100)


def test_stress_tests_list_and_detail(session, world):
    when = NOW - timedelta(days=1)
    first = StoredTest(template=world.templates["S"], category="stress", state="completed", start_time=when,
                 end_time=when + timedelta(hours=2), created_at=when, requested_by="alice", max_jobs=3, concurrency=2,
                 approved_by="ops (operator)", outcome="safety stop", report={"summary": {"jobs": 4}})
    second = StoredTest(template=world.templates["S"], category="stress", state="unapproved", start_time=NOW,
                  end_time=NOW + timedelta(hours=1), created_at=NOW, requested_by="bob", max_jobs=5, concurrency=1)
    session.add_all([first, second])
    session.flush()
    session.add_all([QueuePart(test_id=first.id, queue_id=world.queues[q].id, max_running_jobs=2, min_queue_depth=0,
                               resubmit_enabled=True, max_jobs=3, stopped_at=NOW if q == "ANALY_B" else None,
                               stop_reason="safety stop: 21 of 25 failed" if q == "ANALY_B" else None)
                     for q in ("ANALY_B", "ANALY_A")])
    for outcome in ("completed", "completed", "failed", None):
        world.job("ANALY_A", when + timedelta(minutes=5) if outcome else None, outcome=outcome, test=first)
    world.job("ANALY_A", when, test=world.tests["T1"])  # a functional job: not the stress test's
    session.flush()
    rows = queries.stress_tests(session)
    assert [r.id for r in rows] == [second.id, first.id]
    row = rows[1]
    assert (row.template, row.queues, row.state, row.jobs, row.failed, row.in_flight, row.requested_by) == \
        ("S", ["ANALY_A", "ANALY_B"], "completed", 3, 1, 1, "alice")
    detail = queries.stress_test(session, first.id)
    assert detail.report == {"summary": {"jobs": 4}} and detail.stop_reasons == {"ANALY_B": "safety stop: 21 of 25 failed"}
    assert (detail.jobs, detail.approved_by, detail.outcome) == (3, "ops (operator)", "safety stop")
    with pytest.raises(LookupError):
        queries.stress_test(session, 999)
    with pytest.raises(LookupError):
        queries.stress_test(session, world.tests["T1"].id)  # a functional test is not a stress test
