"""Users' own jobs in the simulator: its users' traffic, and what hearing it buys in `policy simulate`."""
from __future__ import annotations

import json
import math
from datetime import timedelta

import pytest

from blacklist.simulate import BUILTIN, run
from robot.backends.simulated import Scenario, SimulatedGrid, microseconds, with_values
from robot.clock import ManualClock
from robot.yamlconfig import ConfigError


def scenario(**extra) -> Scenario:
    base = {"name": "u", "duration": "6h", "queues": {"count": 8, "clouds": ["DE", "US"], "per_site": 1},
            "templates": ["AFT_A", "AFT_B"], "noise": {"site": 0.01, "user": 0.03, "unknown": 0},
            "users": {"jobs_per_hour": 40, "failure": 0.15},
            "faults": [{"queues": ["ANALY_DE-SITE000_1"], "onset": "2h", "duration": "3h", "mode": "stagein",
                        "probability": 0.8}]}
    return Scenario.model_validate({**base, **extra})


def test_simulated_users_jobs_fail_for_their_own_reasons_and_with_the_sites_fault():
    sc = scenario()
    grid = SimulatedGrid(sc, ManualClock(sc.start), 1)
    hours = grid.user_job_stats(sc.start, sc.start + sc.duration)
    during = [h for h in hours if h.queue == "ANALY_DE-SITE000_1" and sc.start + timedelta(hours=2) <= h.hour
              < sc.start + timedelta(hours=5)]
    assert len(during) == 3
    stagein = sum(h.errors.get(("pilot", 1099), 0) for h in during)
    assert stagein > 0.6 * sum(h.ended for h in during)  # the site's fault hits its users' jobs too
    healthy = [h for h in hours if h.queue != "ANALY_DE-SITE000_1"]
    own = sum(n for h in healthy for (_, code), n in h.errors.items() if code in (1305, 1235, 1150, 1349, 1213))
    assert own > 0.1 * sum(h.ended for h in healthy)  # their own bugs, everywhere
    assert sum(h.errors.get(("pilot", 1099), 0) for h in healthy) < 0.03 * sum(h.ended for h in healthy)
    # the same jobs whatever the reads: an hour read in two parts sums to the hour read whole
    middle = sc.start + timedelta(hours=3, minutes=20)
    parts = grid.user_job_stats(sc.start + timedelta(hours=3), middle) + grid.user_job_stats(
        middle, sc.start + timedelta(hours=4))
    whole = [h for h in hours if h.hour == sc.start + timedelta(hours=3)]
    for h in whole:
        assert sum(p.ended for p in parts if p.queue == h.queue) == h.ended
    assert SimulatedGrid(sc, ManualClock(sc.start), 1).user_job_stats(sc.start, sc.start + sc.duration) == hours
    assert SimulatedGrid(with_values(sc, {"users.jobs_per_hour": 0}, "t"), ManualClock(sc.start), 1).user_job_stats(
        sc.start, sc.start + sc.duration) == []


def test_the_users_section_is_checked_with_key_paths():
    sc = scenario()
    with pytest.raises(ConfigError, match=r"users\.failure"):
        with_values(sc, {"users.failure": 2}, "t")
    with pytest.raises(ConfigError, match=r"users\.codes\[0\]\.code"):
        with_values(sc, {"users.codes": [{"code": -1}]}, "t")


def test_users_jobs_as_evidence_bound_the_detection_latency_with_fewer_test_jobs():
    sc = scenario()
    pairs = [(run(sc, BUILTIN["default-users"], seed, "without"), run(sc, BUILTIN["default"], seed, "default"))
             for seed in range(1, 6)]
    for without, with_users in pairs:  # the same scenario, seed and test-job luck
        assert without.faults == with_users.faults == 1 and with_users.missed == 0
        assert with_users.false_exclusions == 0
        assert with_users.jobs < without.jobs  # a stable queue watched by its users' jobs is tested less often
    # without them the latency is the luck of when the next test job runs; with them the fault shows
    # in the users' jobs within a read and probes confirm it
    assert max(w.latencies[0] for _, w in pairs) < max(d.latencies[0] for d, _ in pairs)
    assert sum(w.latencies[0] for _, w in pairs) < sum(d.latencies[0] for d, _ in pairs)


def test_policy_simulate_adds_the_users_row_for_scenarios_with_users_traffic_and_says_what_each_row_was_given(
        tmp_path):
    from click.testing import CliRunner

    from robot.cli import main

    path = tmp_path / "tiny.yaml"
    path.write_text("name: tiny\nduration: 2h\nqueues: {count: 4}\nusers: {jobs_per_hour: 20}\n"
                    "faults:\n  - {queues: 1, onset: 30m, duration: 1h, mode: stagein}\n")
    result = CliRunner().invoke(main, ["policy", "simulate", str(path), "--workers", "1", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert list(out["report"]["tiny"]) == ["hammercloud", "hammercloud+safety", "default", "default-users"]
    assert out["given"]["default"].endswith("the users' own jobs of each queue, behind our safety layer: "
                                            "20 users' jobs per queue-hour")
    assert out["given"]["default-users"] == "default without the users' own jobs: the test jobs alone"
    table = CliRunner().invoke(main, ["policy", "simulate", str(path), "--workers", "1", "--policy", "default",
                                      "--policy", "default-users"]).output
    assert "default-users" in table and "Each row: the same scenario, seeds and test-job luck" in table
    assert "  default-users: default without the users' own jobs: the test jobs alone" in table


def test_policy_sweep_gives_the_rows_policy_simulate_gives_with_the_users_row(tmp_path):
    from click.testing import CliRunner

    from robot.cli import main

    path = tmp_path / "tiny.yaml"
    path.write_text("name: tiny\nduration: 1h\nqueues: {count: 4}\nusers: {jobs_per_hour: 20}\n")
    result = CliRunner().invoke(main, ["policy", "sweep", str(path), "--set", "noise.user=0%,1%", "--workers", "1",
                                       "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert list(out["report"]) == ["tiny: noise.user=0", "tiny: noise.user=0.01"]
    for rows in out["report"].values():
        assert list(rows) == ["hammercloud", "hammercloud+safety", "default", "default-users"]
    assert out["given"]["default"].endswith("20 users' jobs per queue-hour")
    table = CliRunner().invoke(main, ["policy", "sweep", str(path), "--set", "users.jobs_per_hour=0,20",
                                      "--workers", "1", "--policy", "default"]).output
    assert table.count("default-users") == 0 and "  default: our policy on the test jobs" in table


def test_a_stuck_queues_users_jobs_stop_ending_once_the_running_ones_end():
    sc = scenario(faults=[{"queues": ["ANALY_DE-SITE000_1"], "onset": "2h", "duration": "3h", "mode": "stuck"}])
    grid = SimulatedGrid(sc, ManualClock(sc.start), 1)
    ended = {h.hour - sc.start: h.ended for h in grid.user_job_stats(sc.start, sc.start + sc.duration)
             if h.queue == "ANALY_DE-SITE000_1"}
    hour = timedelta(hours=1)
    assert ended[hour] > 20  # before: about 40 an hour
    assert 0 < ended[2 * hour] < ended[hour]  # the jobs running at the onset end within the job's duration (40m)
    assert 3 * hour not in ended and 4 * hour not in ended  # then nothing ends
    assert ended[5 * hour] > 0  # unblocked


def test_the_users_traffic_drawn_for_a_seed_stays_what_it_was():
    """The users' jobs a seed draws are pinned (what the grid drew when these counts were written): runs
    made before a change of the simulator must stay comparable with runs made after it. Read as the watch
    reads (an hour cut at both ends, the hour cut by its start read whole), with a fault and a stuck queue."""
    sc = scenario(faults=[{"queues": ["ANALY_DE-SITE000_1"], "onset": "2h", "duration": "3h", "mode": "stagein",
                           "probability": 0.8},
                          {"queues": ["ANALY_US-SITE001_1"], "onset": "1h", "duration": "2h", "mode": "stuck"}])
    grid = SimulatedGrid(sc, ManualClock(sc.start), 3)
    hour = timedelta(hours=1)
    read = [(h.queue, h.hour - sc.start, h.ended, h.failed, h.errors)
            for h in grid.user_job_stats(sc.start + timedelta(hours=1, minutes=30), sc.start + timedelta(hours=3, minutes=10))
            if h.queue in ("ANALY_DE-SITE000_1", "ANALY_US-SITE001_1", "ANALY_DE-SITE002_1")]
    assert read == [
        ("ANALY_DE-SITE000_1", hour, 26, 5, {("pilot", 1305): 4, ("pilot", 1150): 1}),
        ("ANALY_DE-SITE000_1", 2 * hour, 40, 30, {("pilot", 1099): 30}),
        ("ANALY_DE-SITE000_1", 3 * hour, 7, 7, {("pilot", 1099): 6, ("pilot", 1235): 1}),
        ("ANALY_US-SITE001_1", hour, 6, 0, {}),
        ("ANALY_DE-SITE002_1", hour, 18, 1, {("pilot", 1305): 1}),
        ("ANALY_DE-SITE002_1", 2 * hour, 38, 7, {("pilot", 1235): 1, ("pilot", 1150): 2, ("pilot", 1305): 2,
                                                 ("pilot", 1349): 2}),
        ("ANALY_DE-SITE002_1", 3 * hour, 4, 0, {})]
    assert [list(h.errors) for h in grid.user_job_stats(sc.start + 2 * hour, sc.start + 3 * hour)
            if h.queue == "ANALY_DE-SITE002_1"] == [[("pilot", 1235), ("pilot", 1150), ("pilot", 1305), ("pilot", 1349)]]


def test_a_users_jobs_end_is_rounded_to_the_microsecond_as_timedelta_rounds_it():
    ties = [(k + 0.5) / 1e6 for k in (0, 1, 2, 3, 123456, 3_599_999_998, 3_599_999_999)]
    near = [math.nextafter(t, d) for t in ties for d in (0.0, 1e9)]
    for seconds in [0.0, 1e-7, 0.4e-6, 0.6e-6, 1.5, 59.9999995, 3599.9999996, *ties, *near]:
        assert microseconds(seconds) == timedelta(seconds=seconds) // timedelta(microseconds=1), seconds
