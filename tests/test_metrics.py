"""Health figures: Wilson intervals, HammerCloud's per-job figures, grouping by queue, site, cloud."""
from __future__ import annotations

from datetime import timedelta

import pytest

from robot.clock import ManualClock
from robot.metrics import JobResult, health, summarize, wilson_interval
from tests.fakes import T0, ScriptedGrid, make_robot, templates


def test_wilson_interval_known_values():
    low, high = wilson_interval(2, 10)
    assert low == pytest.approx(0.0567, abs=1e-3) and high == pytest.approx(0.5098, abs=1e-3)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    low, high = wilson_interval(0, 50)
    assert low == 0.0 and high == pytest.approx(0.0714, abs=1e-3)
    low, high = wilson_interval(50, 50)
    assert high == 1.0 and low == pytest.approx(0.9286, abs=1e-3)


def test_wilson_interval_narrows_with_more_jobs():
    few = wilson_interval(3, 10)
    many = wilson_interval(300, 1000)
    assert few[1] - few[0] > many[1] - many[0]
    assert many[0] < 0.3 < many[1]


def test_summarize_counts_rates_and_hammercloud_figures():
    results = [
        JobResult("completed", n_events=1000, wall=10.0, payload=5.0, stagein=1.0, queue_wait=30, cpu=8.0),
        JobResult("completed", n_events=3000, wall=20.0, payload=10.0, stagein=3.0, queue_wait=10, cpu=16.0),
        JobResult("failed", stagein=2.0, error_class="site", error_name="STAGEINFAILED"),
        JobResult("failed", error_class="site", error_name="STAGEINFAILED"),
        JobResult("failed", error_class="user", error_name="EXEERROR"),
        JobResult("unknown"),
    ]
    h = summarize("ANALY_X", "queue", results)
    assert (h.completed, h.failed, h.unknown, h.total) == (2, 3, 1, 5)
    assert h.failure_rate == pytest.approx(0.6)
    assert (h.ci_low, h.ci_high) == pytest.approx(wilson_interval(3, 5))
    assert h.events_per_second == pytest.approx((100 + 150) / 2)  # median of nEvents / wall
    assert h.events_per_payload_second == pytest.approx((200 + 300) / 2)
    assert h.cpu_efficiency == pytest.approx(100 * 24 / 30)
    assert h.stagein_median == pytest.approx(2.0) and h.queue_wait_median == pytest.approx(20)
    assert h.error_classes == {"site": 2, "user": 1}
    assert h.top_errors[0] == ("STAGEINFAILED", 2)


def test_summarize_with_no_jobs_is_grey_not_healthy():
    h = summarize("ANALY_X", "queue", [])
    assert h.failure_rate is None and h.events_per_second is None and h.total == 0


def test_health_query_groups_by_queue_site_and_cloud_within_the_window(tmp_path):
    clock = ManualClock(T0)
    grid = ScriptedGrid(clock, {"ANALY_A1": ("SITE-A", "DE"), "ANALY_A2": ("SITE-A", "DE"),
                                "ANALY_B": ("SITE-B", "DE"), "ANALY_C": ("SITE-C", "US")})
    robot = make_robot(tmp_path, grid, templates({"name": "AFT", "max_queue_time": "1d"}))
    robot.run_once(clock.now())
    early = grid.in_queue("ANALY_C")[0]
    grid.finish(early)  # ends at T0: outside a 1 h window measured 3 h later
    clock.advance(3 * 3600)
    robot.run_once(clock.now())
    for queue, errors in (("ANALY_A1", {"pilot_error_code": 1099}), ("ANALY_A2", {}), ("ANALY_B", {})):
        grid.finish(grid.in_queue(queue)[0], **errors)
    clock.advance(60)
    robot.run_once(clock.now())
    with robot.sessions() as session:
        by_queue = {h.key: h for h in health(session, clock.now(), timedelta(hours=1))}
        by_site = {h.key: h for h in health(session, clock.now(), timedelta(hours=1), "site")}
        by_cloud = {h.key: h for h in health(session, clock.now(), timedelta(hours=1), "cloud")}
        all_day = {h.key: h for h in health(session, clock.now(), timedelta(days=1), "cloud")}
    assert by_queue["ANALY_A1"].failure_rate == 1.0 and by_queue["ANALY_A1"].error_classes == {"site": 1}
    assert by_queue["ANALY_A1"].status == "online" and by_queue["ANALY_A1"].site == "SITE-A"
    assert by_queue["ANALY_C"].total == 0  # its job ended before the window
    assert (by_site["SITE-A"].completed, by_site["SITE-A"].failed) == (1, 1)
    assert by_site["SITE-A"].cloud == "DE"
    assert (by_cloud["DE"].total, by_cloud["US"].total) == (3, 0)
    assert all_day["US"].total == 1


def test_a_stuck_queue_shows_its_waiting_jobs_and_how_long(tmp_path):
    clock = ManualClock(T0)
    grid = ScriptedGrid(clock, {"ANALY_A": ("SITE-A", "DE"), "ANALY_STUCK": ("SITE-S", "DE")})
    robot = make_robot(tmp_path, grid, templates({"name": "AFT"}))
    robot.run_once(clock.now())  # submitted: activated, waiting for the site
    for pid in grid.in_queue("ANALY_A"):
        grid.start(pid)
    clock.advance(timedelta(minutes=12))
    robot.run_once(clock.now())
    with robot.sessions() as session:
        found = {h.key: h for h in health(session, clock.now(), timedelta(hours=1))}
        cloud = health(session, clock.now(), timedelta(hours=1), "cloud")[0]
    stuck = found["ANALY_STUCK"]
    assert stuck.waiting == len(grid.in_queue("ANALY_STUCK")) >= 1 and stuck.longest_wait == 12 * 60
    assert found["ANALY_A"].waiting == 0 and found["ANALY_A"].longest_wait is None
    assert cloud.waiting == stuck.waiting and cloud.longest_wait == 12 * 60
    from robot.cli.render import health_table, make_console

    console = make_console()
    with console.capture() as captured:
        console.print(health_table(found.values()))
    row = next(line for line in captured.get().splitlines() if "ANALY_STUCK" in line)
    assert f"{stuck.waiting} (12m)" in row
