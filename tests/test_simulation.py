"""The simulated grid, the scoring of a run, the simulate command and replay."""
from __future__ import annotations

import json
import statistics
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import yaml

import pytest
from click.testing import CliRunner

from blacklist.engine import ExclusionEngine
from blacklist.policies import Policy
from blacklist.replay import differences, recorded_moves, replay
from blacklist.settings import BlacklistSettings
from blacklist.simulate import BUILTIN, run, score, summarize
from robot.backends.base import JobRequest
from robot.backends.simulated import (USER_FAILURE, FaultWindow, Scenario, SimulatedGrid, load_scenario,
                                      place_faults, queue_names, site_of)
from robot.classify import classify, load_table
from robot.storage.models import Override, Queue, Silence
from robot.yamlconfig import ConfigError
from sqlalchemy import select
from robot.cli import main
from robot.clock import ManualClock
from robot.jobstates import JobStatus
from tests.fakes import T0, ScriptedGrid, make_robot, templates

START = datetime(2026, 1, 5, tzinfo=timezone.utc)
SCENARIOS = Path(__file__).resolve().parent.parent / "configs" / "scenarios"


def scenario(**extra) -> Scenario:
    base = {"name": "t", "duration": "1d", "queues": {"count": 8, "clouds": ["DE", "US"], "per_site": 2},
            "templates": ["AFT_A", "AFT_B"], "noise": {"site": 0, "user": 0, "unknown": 0}}
    return Scenario.model_validate({**base, **extra})


def request(queue: str) -> JobRequest:
    return JobRequest(job_name="j", queue=queue, payload="p", dataset="d", files=(), max_events=1, max_wall_seconds=60)


def final(grid: SimulatedGrid, clock: ManualClock, pid: int):
    clock.advance(timedelta(days=2))
    report = grid.status([pid])[pid]
    assert report.job_status in (JobStatus.FINISHED, JobStatus.FAILED)
    return report


def test_a_job_lives_through_panda_states_in_virtual_time():
    clock = ManualClock(START)
    grid = SimulatedGrid(scenario(), clock, seed=1)
    (pid,) = grid.submit([request(queue_names(grid.scenario.queues)[0])])
    assert grid.status([pid])[pid].job_status is JobStatus.ACTIVATED
    states = set()
    for _ in range(200):
        clock.advance(timedelta(minutes=1))
        states.add(grid.status([pid])[pid].job_status)
    assert {JobStatus.ACTIVATED, JobStatus.RUNNING, JobStatus.FINISHED} <= states | {JobStatus.ACTIVATED}
    report = grid.status([pid])[pid]
    assert report.job_status is JobStatus.FINISHED and report.start_time < report.end_time and report.n_events > 0


def test_faults_centrals_and_user_waves_give_their_error_classes():
    sc = scenario(faults=[{"queues": ["ANALY_DE-SITE000_1"], "onset": "0s", "duration": "1d", "mode": "cvmfs"}],
                  central_outages=[{"onset": "0s", "duration": "1d", "probability": 1.0, "clouds": ["US"]}],
                  user_waves=[{"onset": "0s", "duration": "1d", "probability": 1.0}])
    clock = ManualClock(START)
    grid = SimulatedGrid(sc, clock, seed=1)
    broken, central, user = grid.submit([request("ANALY_DE-SITE000_1"), request("ANALY_US-SITE001_1"),
                                         request("ANALY_DE-SITE002_1")])
    assert final(grid, clock, broken).pilot_error_code == 1377
    assert final(grid, clock, central).pilot_error_code == 1324
    assert final(grid, clock, user).exe_error_code == 1


def test_common_random_numbers_the_kth_job_of_a_queue_meets_the_same_luck():
    sc = scenario(noise={"site": 0.3, "user": 0.3, "unknown": 0.0})
    outcomes = []
    for extra_queue_jobs in (0, 5):  # another queue's activity must not change this queue's luck
        clock = ManualClock(START)
        grid = SimulatedGrid(sc, clock, seed=7)
        grid.submit([request("ANALY_US-SITE001_2")] * extra_queue_jobs)
        ids = grid.submit([request("ANALY_DE-SITE000_1")] * 10)
        clock.advance(timedelta(days=3))
        outcomes.append([(r.job_status, r.pilot_error_code) for r in grid.status(ids).values()])
    assert outcomes[0] == outcomes[1]
    assert len({o for o in outcomes[0]}) > 1  # and there is luck to meet


def test_stuck_queue_starts_nothing_until_the_fault_ends():
    sc = scenario(faults=[{"queues": ["ANALY_DE-SITE000_1"], "onset": "0s", "duration": "6h", "mode": "stuck"}])
    clock = ManualClock(START)
    grid = SimulatedGrid(sc, clock, seed=1)
    (pid,) = grid.submit([request("ANALY_DE-SITE000_1")])
    clock.advance(timedelta(hours=5))
    assert grid.status([pid])[pid].job_status is JobStatus.ACTIVATED
    assert final(grid, clock, pid).start_time >= START + timedelta(hours=6)


def outcomes(sc: Scenario, queue: str, jobs: int = 200, seed: int = 1) -> list:
    """The final reports of `jobs` jobs sent to `queue` at the scenario's start."""
    clock = ManualClock(START)
    grid = SimulatedGrid(sc, clock, seed)
    ids = grid.submit([request(queue)] * jobs)
    clock.advance(timedelta(days=3))
    return list(grid.status(ids).values())


def codes_of(reports) -> Counter:
    return Counter(r.pilot_error_code for r in reports if r.job_status is JobStatus.FAILED)


def test_a_fault_reports_its_mix_of_codes_with_their_weights_and_diag():
    mix = [{"code": 1099, "weight": 3, "diag": "Get error: dCache pool offline"}, {"code": 1305, "weight": 1},
           {"code": 1203, "weight": 1, "at": "payload"}]  # class confusion: a site fault with user and unknown codes
    sc = scenario(faults=[{"queues": ["ANALY_DE-SITE000_1"], "onset": "0s", "duration": "1d", "codes": mix}])
    reports = outcomes(sc, "ANALY_DE-SITE000_1", jobs=400)
    found = codes_of(reports)
    assert set(found) == {1099, 1305, 1203} and sum(found.values()) == 400
    assert 0.5 < found[1099] / 400 < 0.7 and found[1305] > 40 and found[1203] > 40  # weights 3:1:1
    assert {r.pilot_error_diag for r in reports if r.pilot_error_code == 1099} == {"Get error: dCache pool offline"}
    crash = next(r for r in reports if r.pilot_error_code == 1203)
    stagein = next(r for r in reports if r.pilot_error_code == 1099)
    assert crash.end_time - crash.start_time > timedelta(minutes=10) > stagein.end_time - stagein.start_time


def test_a_crash_only_fault_fails_jobs_with_1203_of_class_unknown():
    sc = scenario(faults=[{"queues": ["ANALY_DE-SITE000_1"], "onset": "0s", "duration": "1d", "mode": "crash",
                           "probability": 0.6}])
    found = codes_of(outcomes(sc, "ANALY_DE-SITE000_1"))
    assert set(found) == {1203} and 90 < found[1203] < 150
    table = load_table()
    assert classify(table, pilot=(1203, "")).klass == "unknown"
    assert codes_of(outcomes(sc, "ANALY_DE-SITE000_2")) == Counter()  # its neighbour is healthy


def test_site_noise_follows_its_code_mix_and_differs_from_queue_to_queue():
    even = scenario(noise={"site": 0.5, "user": 0, "unknown": 0, "site_codes": [{"code": 1099}, {"code": 1327}]})
    found = codes_of(outcomes(even, "ANALY_DE-SITE000_1", jobs=300))
    assert set(found) == {1099, 1327} and abs(found[1099] - found[1327]) < 60
    spread = scenario(noise={"site": 0.05, "user": 0, "unknown": 0, "spread": 1.0}, queues={"count": 16})
    rates = [len(codes_of(outcomes(spread, q, jobs=300))) and sum(codes_of(outcomes(spread, q, jobs=300)).values())
             for q in queue_names(spread.queues)]
    assert max(rates) > 3 * max(1, min(rates))  # some queues much flakier than others
    flat = scenario(noise={"site": 0.05, "user": 0, "unknown": 0, "spread": 0})
    assert set(SimulatedGrid(flat, ManualClock(START), 1)._flakiness.values()) == {1.0}


def test_a_central_outage_can_report_site_class_codes_at_a_share_of_the_queues():
    sc = scenario(queues={"count": 20, "clouds": ["DE", "US"], "per_site": 2},
                  central_outages=[{"onset": "0s", "duration": "1d", "probability": 1.0, "share": 0.5,
                                    "codes": [{"code": 1099, "diag": "Get error: Rucio server unreachable"}]}])
    hit = [q for q in queue_names(sc.queues) if codes_of(outcomes(sc, q, jobs=5)) == Counter({1099: 5})]
    assert len(hit) == 10


def test_a_user_wave_hits_only_its_queues_with_its_codes():
    sc = scenario(user_waves=[{"onset": "0s", "duration": "1d", "probability": 1.0, "queues": 2,
                               "codes": [{"code": 1235, "diag": "exceeded memory"}]}])
    hit = [q for q in queue_names(sc.queues) if codes_of(outcomes(sc, q, jobs=5)) == Counter({1235: 5})]
    assert len(hit) == 2
    chosen = scenario(user_waves=[{"onset": "0s", "duration": "1d", "probability": 1.0,
                                   "queues": ["ANALY_US-SITE001_2"]}])
    (report,) = outcomes(chosen, "ANALY_US-SITE001_2", jobs=1)
    assert report.pilot_error_code == 1305 and report.exe_error_code == 1
    assert codes_of(outcomes(chosen, "ANALY_DE-SITE000_1", jobs=5)) == Counter()


def test_a_fault_at_a_site_hits_every_queue_of_it_at_once():
    sc = scenario(queues={"count": 12, "clouds": ["DE", "US"], "per_site": 3},
                  faults=[{"sites": 1, "onset": "1h", "duration": "4h", "mode": "stagein"}])
    windows = place_faults(sc, seed=3)
    sites = site_of(sc.queues)
    assert len(windows) == 3 and len({sites[w.queue] for w in windows}) == 1
    assert len({(w.start, w.end) for w in windows}) == 1


def test_a_slow_queue_completes_its_jobs_with_fewer_events_per_second():
    sc = scenario(faults=[{"queues": ["ANALY_DE-SITE000_1"], "onset": "0s", "duration": "1d", "mode": "slow",
                           "slowdown": 5}])
    slow, normal = outcomes(sc, "ANALY_DE-SITE000_1", 50), outcomes(sc, "ANALY_DE-SITE000_2", 50)
    assert all(r.job_status is JobStatus.FINISHED for r in slow + normal)
    wall = lambda rs: statistics.median((r.end_time - r.start_time).total_seconds() for r in rs)  # noqa: E731
    assert wall(slow) > 3 * wall(normal)
    assert not place_faults(sc, 1)[0].excludable


@pytest.mark.parametrize("data, problem", [
    ({"faults": [{"onset": "1h", "duration": "1h"}, {"onset": "1h", "duration": "1h"},
                 {"onset": "1h", "duration": "1h", "codes": [{"code": 1099, "weight": "abc"}]}]},
     "faults[2].codes[0].weight: Input should be a valid number"),
    ({"faults": [{"onset": "1h", "duration": "1h", "codes": [{"code": 1099, "weight": 0}]}]},
     "faults[0].codes[0].weight: Input should be greater than 0"),
    ({"faults": [{"onset": "1h", "duration": "1h", "queues": 1, "sites": 1}]}, "faults[0]: give queues or sites"),
    ({"faults": [{"onset": "1h", "duration": "1h", "sites": ["XX-SITE9"]}]}, "faults[0].sites: unknown site(s)"),
    ({"faults": [{"onset": "1h", "duration": "1h", "mode": "stuck", "codes": [{"code": 1}]}]},
     "faults[0]: mode stuck fails no job"),
    ({"user_waves": [{"onset": "1h", "duration": "1h", "queues": 99}]}, "user_waves[0].queues: 99 queues asked"),
    ({"central_outages": [{"onset": "1h", "duration": "1h", "codes": []}]}, "central_outages[0].codes: List should"),
    ({"central_outages": [{"onset": "1h", "duration": "1h", "clouds": ["XX"]}]},
     "central_outages[0].clouds: unknown cloud(s) ['XX']"),
    ({"noise": {"site_codes": [{"code": 1099, "at": "never"}]}}, "noise.site_codes[0].at: Input should be"),
])
def test_scenario_errors_name_the_file_and_key_path(tmp_path, data, problem):
    path = tmp_path / "x.yaml"
    path.write_text(yaml.safe_dump({"name": "x", "duration": "1d", "queues": {"count": 8}, **data}))
    with pytest.raises(ConfigError) as caught:
        load_scenario(path)
    assert str(caught.value).startswith(f"{path}: ") and any(p.startswith(problem) for p in caught.value.problems), \
        caught.value.problems


def test_every_shipped_scenario_loads_and_together_they_use_every_feature():
    scenarios = [load_scenario(p) for p in sorted(SCENARIOS.glob("*.yaml"))]
    faults = [f for s in scenarios for f in s.faults]
    used = {
        "code mix": any(f.codes and len(f.codes) > 1 for f in faults),
        "class confusion": any(f.codes and {c.code for c in f.codes} & {1305, 1203, 1235} and
                               {c.code for c in f.codes} & {1099, 1137, 1151, 1306, 1377} for f in faults),
        "site codes in a central outage": any(c.code == 1099 for s in scenarios for o in s.central_outages
                                              for c in o.codes),
        "site noise mix": any("site_codes" in s.noise.model_fields_set for s in scenarios),
        "crash only": any(f.mode == "crash" and not f.codes for f in faults),
        "wave on some queues": any(w.queues is not None and w.codes != [USER_FAILURE]
                                   for s in scenarios for w in s.user_waves),
        "slow": any(f.mode == "slow" for f in faults),
        "stuck": any(f.mode == "stuck" for f in faults),
        "noise spread": any(s.noise.spread > 0 for s in scenarios),
        "site-wide": any(f.sites is not None for f in faults),
    }
    assert all(used.values()), [k for k, v in used.items() if not v]


def test_score_counts_latency_misses_false_and_central_exclusions():
    sc = scenario(central_outages=[{"onset": "10h", "duration": "1h"}])
    faults = [FaultWindow("Q1", START + timedelta(hours=2), START + timedelta(hours=6), "stagein", 1.0),
              FaultWindow("Q2", START + timedelta(hours=2), START + timedelta(hours=3), "stagein", 1.0)]
    moves = [("Q1", START + timedelta(hours=2, minutes=20), "brokeroff"),
             ("Q1", START + timedelta(hours=7), "online"),
             ("Q3", START + timedelta(hours=10, minutes=30), "brokeroff"),
             ("Q3", START + timedelta(hours=12, minutes=30), "online")]
    result = score(sc, faults, moves, START + timedelta(days=1))
    assert result.latencies == [20 * 60] and result.missed == 1
    assert result.reinclusion == [3600]
    assert result.false_exclusions == 1 and result.central_exclusions == 1
    assert result.lost_queue_hours == pytest.approx(2 + 1)  # Q3 excluded 2 h while healthy, Q1 1 h after recovery


def test_score_counts_every_flip_premature_reinclusions_and_broken_hours_online():
    sc = scenario()
    faults = [FaultWindow("Q1", START + timedelta(hours=2), START + timedelta(hours=8), "stagein", 0.5),
              FaultWindow("Q2", START + timedelta(hours=2), START + timedelta(hours=4), "stagein", 1.0),
              FaultWindow("Q3", START + timedelta(hours=2), START + timedelta(hours=4), "slow", 1.0)]
    at = lambda h, m=0: START + timedelta(hours=h, minutes=m)  # noqa: E731
    moves = [("Q1", at(3), "brokeroff"), ("Q1", at(4), "online"),  # re-included while still broken
             ("Q1", at(5), "brokeroff"), ("Q1", at(6), "online"),  # and again
             ("Q1", at(7), "brokeroff"), ("Q1", at(9), "online"),  # finally after the fault
             ("Q2", at(2, 30), "brokeroff"),  # never re-included
             ("Q3", at(3), "brokeroff"), ("Q3", at(5), "online")]  # a slow queue is no case for exclusion
    result = score(sc, faults, moves, START + timedelta(days=1))
    assert result.faults == 2 and result.missed == 0
    assert result.latencies == [3600, 1800]  # the first exclusion of each fault
    assert result.premature == 2
    assert result.flips == 5 + 1  # Q1: five changes while its fault was on; Q2: one
    assert result.not_reincluded == 1 and result.reinclusion == [3600]
    assert result.broken_online_hours == pytest.approx((1 + 1 + 1) + 0.5)  # Q1 online 2-3, 4-5, 6-7; Q2 2-2:30
    # lost while healthy: Q1 8-9, Q2 from 4 h to the end of the day, Q3 3-5
    assert result.false_exclusions == 1 and result.lost_queue_hours == pytest.approx(1 + 20 + 2)
    summary = summarize([result])
    assert summary.premature_reinclusions == 2 and summary.flips_per_fault == 3.0 and summary.not_reincluded == 1


def test_score_counts_faults_met_while_still_excluded_as_covered_and_measures_latency_from_exposure():
    """A flapping queue kept out through its next faults is not charged with missing them; a queue
    put back while broken is charged from that moment; a re-inclusion after a run of faults counts once."""
    sc = scenario()
    at = lambda h, m=0: START + timedelta(hours=h, minutes=m)  # noqa: E731
    on_off = [FaultWindow("Q1", at(h), at(h + 1), "stagein", 0.9) for h in (2, 4, 6)]
    faults = [*on_off, FaultWindow("Q2", at(2), at(4), "stagein", 0.9),
              FaultWindow("Q2", at(5), at(7), "stagein", 0.9), FaultWindow("Q3", at(2), at(4), "stagein", 0.9)]
    moves = [("Q1", at(2, 20), "brokeroff"), ("Q1", at(8), "online"),  # out through all three swings
             ("Q2", at(2, 10), "brokeroff"), ("Q2", at(5, 30), "online"),  # back while its second fault is on
             ("Q2", at(5, 45), "brokeroff"), ("Q2", at(9), "online"),
             ("Q3", at(2, 30), "brokeroff"), ("Q3", at(3), "online")]  # back early, never out again
    result = score(sc, faults, moves, START + timedelta(days=1))
    assert result.faults == 6 and result.covered == 2 and result.missed == 0
    assert sorted(result.latencies) == [10 * 60, 15 * 60, 20 * 60, 30 * 60]  # Q2's second: 5:30 -> 5:45
    assert result.premature == 2 and result.not_reincluded == 0
    assert sorted(result.reinclusion) == [3600, 7200]  # Q1 after its last swing, Q2 after its second fault
    summary = summarize([result])
    assert summary.covered == 2 and summary.missed == 0


def test_both_policies_run_on_a_small_scenario_and_ours_ignores_a_user_wave():
    # the wave (2h-6h) and an hour after it: HammerCloud's false exclusions all fall inside (8 of 8 at 12h too)
    sc = scenario(duration="7h", user_waves=[{"onset": "2h", "duration": "4h", "probability": 0.8}])
    ours, theirs = run(sc, BUILTIN["default"], 1, "default"), run(sc, BUILTIN["hammercloud"], 1, "hammercloud")
    assert ours.false_exclusions == 0
    assert theirs.false_exclusions > 0
    assert ours.jobs > 0 and theirs.jobs > 0


NOISY = {"queues": {"count": 16, "clouds": ["DE", "US"], "per_site": 2},
         "noise": {"site": 0.01, "user": 0.03, "unknown": 0.005}}


def test_default_policy_detects_partial_faults_faster_and_never_reincludes_a_broken_queue():
    """Issue 11's targets on a small seeded grid: every fault caught, at most half HammerCloud's median
    latency here, no healthy queue excluded, no queue put back online while its fault was on, every
    one back after it."""
    sc = scenario(duration="12h", **NOISY,
                  faults=[{"queues": 3, "onset": "2h", "duration": "5h", "mode": "stagein_timeout", "probability": 0.5}])
    ours, theirs = run(sc, BUILTIN["default"], 1, "default"), run(sc, BUILTIN["hammercloud+safety"], 1, "hc")
    assert ours.missed == theirs.missed == 0
    assert statistics.median(ours.latencies) <= 0.5 * statistics.median(theirs.latencies)
    assert ours.false_exclusions <= theirs.false_exclusions
    assert ours.premature == 0 and ours.not_reincluded == 0


def test_default_policy_spends_about_half_hammercloud_test_jobs_on_a_quiet_grid():
    # stable queues wait stable_gap between a template's jobs; a doubt's probes go out once
    sc = scenario(duration="12h", **NOISY)
    ours, theirs = run(sc, BUILTIN["default"], 1, "default"), run(sc, BUILTIN["hammercloud"], 1, "hammercloud")
    assert ours.false_exclusions == theirs.false_exclusions == 0
    assert ours.jobs <= 0.55 * theirs.jobs  # 0.54: every template's first job goes out at once


def test_simulate_command_prints_the_comparison(tmp_path):
    path = tmp_path / "scenario.yaml"
    path.write_text("name: tiny\nduration: 6h\nqueues: {count: 4}\n"
                    "faults:\n  - {queues: 1, onset: 1h, duration: 4h, mode: stagein}\n")
    result = CliRunner().invoke(main, ["policy", "simulate", str(path), "--workers", "1", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)["report"]["scenario"]
    assert set(report) == {"hammercloud", "hammercloud+safety", "default"} and report["default"]["faults"] == 1
    assert {"premature_reinclusions", "flips_per_fault", "broken_online_hours", "not_reincluded"} <= set(
        report["default"])
    table = CliRunner().invoke(main, ["policy", "simulate", str(path), "--workers", "1",
                                      "--policy", "hammercloud+safety"]).output
    assert "Premature" in table and "hammercloud+safety" in table and "Covered" in table
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nduration: 1d\nfaults:\n  - {queues: [NOPE], onset: 1h, duration: 1h}\n")
    result = CliRunner().invoke(main, ["policy", "simulate", str(bad)])
    assert result.exit_code == 1 and "unknown queue" in result.output


def test_simulate_shows_progress_per_scenario_seed_and_policy_on_a_terminal_only(tmp_path, monkeypatch):
    import io

    from rich.console import Console

    from robot.cli import policy_cmd
    path = tmp_path / "tiny.yaml"
    path.write_text("name: tiny\nduration: 1h\nqueues: {count: 2}\n")
    screen = io.StringIO()
    monkeypatch.setattr(policy_cmd, "make_console", lambda stderr=False: Console(
        file=screen if stderr else io.StringIO(), force_terminal=True, width=150))
    result = CliRunner().invoke(main, ["policy", "simulate", str(path), "--workers", "1", "--seeds", "2",
                                       "--policy", "hammercloud"])
    assert result.exit_code == 0, result.output
    assert "tiny · seed 2 · hammercloud" in screen.getvalue() and "2/2" in screen.getvalue()
    monkeypatch.setattr(policy_cmd, "make_console", lambda stderr=False: Console(file=screen, force_terminal=False))
    screen.truncate(0)
    CliRunner().invoke(main, ["policy", "simulate", str(path), "--workers", "1", "--policy", "hammercloud"])
    assert "seed 1" not in screen.getvalue()  # not a terminal: no bar


def test_hammercloud_with_safety_holds_what_a_central_outage_makes_hammercloud_exclude():
    # the outage (1h-4h) and an hour after it (the same 8 and 1 central exclusions as over 8h)
    sc = scenario(duration="5h", central_outages=[{"onset": "1h", "duration": "3h", "probability": 0.9}])
    bare, safe = run(sc, BUILTIN["hammercloud"], 1, "hammercloud"), run(sc, BUILTIN["hammercloud+safety"], 1, "x")
    assert bare.central_exclusions >= 3
    assert safe.central_exclusions < bare.central_exclusions
    assert run(sc, BUILTIN["default"], 1, "default").central_exclusions == 0


def test_sweep_prints_one_table_per_value_of_a_scenario_key(tmp_path):
    path = tmp_path / "scenario.yaml"
    path.write_text("name: tiny\nduration: 3h\nqueues: {count: 4}\nnoise: {site: 0, user: 0, unknown: 0}\n"
                    "user_waves:\n  - {onset: 30m, duration: 2h, probability: 0.1}\n")
    args = ["policy", "sweep", str(path), "--set", "user_waves[0].probability=0%,90%", "--workers", "1",
            "--policy", "hammercloud"]
    result = CliRunner().invoke(main, [*args, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)["report"]
    assert list(report) == ["tiny: user_waves[0].probability=0", "tiny: user_waves[0].probability=0.9"]
    calm, wave = (report[k]["hammercloud"] for k in report)
    assert calm["false_per_100_queue_days"] == 0 and wave["false_per_100_queue_days"] > 0
    table = CliRunner().invoke(main, args).output
    assert table.count("tiny: user_waves[0].probability=") == 2
    wrong = CliRunner().invoke(main, ["policy", "sweep", str(path), "--set", "noise.usr=1,2"])
    assert wrong.exit_code == 1 and "noise.usr: the scenario has no noise.usr" in wrong.output
    bad = CliRunner().invoke(main, ["policy", "sweep", str(path), "--set", "noise.user=abc"])
    assert bad.exit_code == 1 and "noise.user" in bad.output and "'abc'" in bad.output


def test_sweep_varies_a_policy_setting_for_every_row(tmp_path):
    """`--set blacklist.KEY=...` changes the policy's settings, not the scenario: a longer pause between
    a stable queue's jobs spends fewer test jobs on the same grid."""
    path = tmp_path / "scenario.yaml"
    path.write_text("name: tiny\nduration: 6h\nqueues: {count: 4}\nnoise: {site: 0, user: 0, unknown: 0}\n")
    result = CliRunner().invoke(main, ["policy", "sweep", str(path), "--set", "blacklist.default.stable_gap=0,2h",
                                       "--workers", "1", "--policy", "default", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)["report"]
    assert list(report) == ["tiny: blacklist.default.stable_gap=0", "tiny: blacklist.default.stable_gap=2h"]
    busy, calm = (report[k]["default"]["jobs"] for k in report)
    assert calm < busy
    wrong = CliRunner().invoke(main, ["policy", "sweep", str(path), "--set", "blacklist.default.stable_gapp=1h"])
    assert wrong.exit_code == 1 and "blacklist.default.stable_gapp: the blacklist settings have no" in wrong.output
    bad = CliRunner().invoke(main, ["policy", "sweep", str(path), "--set", "blacklist.default.probes=-1"])
    assert bad.exit_code == 1 and "blacklist.default.probes" in bad.output


def test_replay_finds_where_another_policy_would_have_differed(tmp_path):
    clock = ManualClock(T0)
    grid = ScriptedGrid(clock, {"ANALY_A": ("SITE-A", "DE"), "ANALY_B": ("SITE-B", "US")})
    robot = make_robot(tmp_path, grid, templates({"name": "AFT_A"}, {"name": "AFT_B"}))
    robot.run_once(clock.now())
    for _ in range(4):  # user-code failures only: HammerCloud would exclude, ours would not
        for pid in grid.in_queue("ANALY_A"):
            grid.finish(pid, exe_error_code=1, exe_error_diag="Traceback")
        clock.advance(timedelta(minutes=10))
        robot.run_once(clock.now())
    theirs = Policy(BlacklistSettings(policy="hammercloud"), ("AFT_A", "AFT_B"))
    ours = Policy(BlacklistSettings(policy="default"), ("AFT_A", "AFT_B"))
    with robot.sessions() as session:
        hc = replay(session, theirs, T0, clock.now())
        default = replay(session, ours, T0, clock.now())
        recorded = recorded_moves(session, "healthrobot", T0, clock.now())
    assert [(m.queue, m.action) for m in hc] == [("ANALY_A", "exclude")] and "LastT" in hc[0].reason
    assert default == [] and recorded == []
    (diff,) = differences(hc, recorded, timedelta(minutes=30))
    assert (diff.queue, diff.replayed, diff.recorded) == ("ANALY_A", "exclude", None)


def _failing_history(tmp_path, policy: Policy):
    """A robot running `policy` in enforce mode: ANALY_A fails at stage-in for an hour, then recovers."""
    clock = ManualClock(T0)
    grid = ScriptedGrid(clock, {"ANALY_A": ("SITE-A", "DE"), "ANALY_B": ("SITE-B", "US"),
                                "ANALY_C": ("SITE-C", "FR")})
    robot = make_robot(tmp_path, grid, templates({"name": "AFT_A"}, {"name": "AFT_B"}))
    robot.evaluators.append(ExclusionEngine(policy, grid))
    robot.run_once(clock.now())
    for step in range(18):
        for queue in grid.queues:
            for pid in grid.in_queue(queue):
                broken = queue == "ANALY_A" and step < 6
                grid.finish(pid, **({"pilot_error_code": 1099, "pilot_error_diag": "Get error"} if broken else {}))
        clock.advance(timedelta(minutes=10))
        robot.run_once(clock.now())
    return robot, clock


def test_replay_runs_the_engine_and_agrees_with_what_the_engine_did(tmp_path):
    policy = Policy(BlacklistSettings(mode="enforce", policy="hammercloud"), ("AFT_A", "AFT_B"))
    robot, clock = _failing_history(tmp_path, policy)
    with robot.sessions() as session:
        recorded = recorded_moves(session, "healthrobot", T0, clock.now())
        replayed = replay(session, policy, T0, clock.now(), timedelta(minutes=10))
    assert [m.action for m in recorded] == ["exclude", "include"]  # the history has both moves
    assert [(m.queue, m.time, m.action, m.reason) for m in replayed] == [
        (m.queue, m.time, m.action, m.reason) for m in recorded]


def test_a_replay_step_longer_than_a_job_sees_it_start_then_end(tmp_path):
    """With 1 h steps, jobs of the history start and end within one step (their two changes batched in one
    advance): the failures still count and the replay excludes as the robot did."""
    policy = Policy(BlacklistSettings(mode="enforce", policy="hammercloud"), ("AFT_A", "AFT_B"))
    robot, clock = _failing_history(tmp_path, policy)
    with robot.sessions() as session:
        replayed = replay(session, policy, T0, clock.now(), timedelta(hours=1))
    assert [(m.queue, m.action) for m in replayed][:1] == [("ANALY_A", "exclude")]


def test_a_silence_or_an_override_in_the_history_changes_the_replay(tmp_path):
    policy = Policy(BlacklistSettings(mode="dry-run", policy="hammercloud"), ("AFT_A", "AFT_B"))
    robot, clock = _failing_history(tmp_path, policy)  # dry-run: the robot excluded nothing itself
    with robot.sessions() as session:
        plain = replay(session, policy, T0, clock.now())
        assert [(m.queue, m.action) for m in plain] == [("ANALY_A", "exclude"), ("ANALY_A", "include")]
        session.add(Silence(scope="site", name="SITE-A", actor="alice", reason="storage intervention",
                            created_at=T0, until=T0 + timedelta(days=1)))
        session.flush()
        assert replay(session, policy, T0, clock.now()) == []  # silenced: never excluded
        session.rollback()
        queue_id = session.scalar(select(Queue.id).where(Queue.name == "ANALY_A"))
        session.add(Override(queue_id=queue_id, action="include", status="online", actor="bob", reason="known issue",
                             created_at=T0 + timedelta(minutes=5), until=T0 + timedelta(hours=2),
                             cleared_at=None))
        session.flush()
        overridden = replay(session, policy, T0, clock.now())
        assert all(m.time >= T0 + timedelta(hours=2) for m in overridden)  # a person's inclusion wins meanwhile
        session.rollback()


def test_the_simulated_grids_reports_are_those_the_constructor_makes():
    """The grid makes its reports without JobReport's constructor (robot.backends.simulated._report): the same
    objects, each with its own timing dict, and a job killed before it was ever asked for starts from its report
    as submitted."""
    from robot.backends.base import JobReport
    from robot.backends.simulated import _report
    values = {"panda_id": 7, "job_status": JobStatus.FAILED, "queue": "Q", "creation_time": T0, "end_time": T0,
              "pilot_error_code": 1099, "pilot_timing": {"stagein": 60.0}}
    assert vars(_report(**values)) == vars(JobReport(**values)) and _report(**values) == JobReport(**values)
    first, second = _report(panda_id=1, job_status=JobStatus.RUNNING), _report(panda_id=2, job_status=JobStatus.RUNNING)
    assert first.pilot_timing == {} and first.pilot_timing is not second.pilot_timing
    scenario = Scenario(name="kill", duration=timedelta(hours=2), queues={"count": 1})
    clock = ManualClock(scenario.start)
    grid = SimulatedGrid(scenario, clock, seed=1)
    [panda_id] = grid.submit([JobRequest(job_name="j", queue="ANALY_DE-SITE000_1", payload="p", dataset="d", files=(),
                                         max_events=1, max_wall_seconds=60, processing_type="t")])
    assert grid.kill([panda_id]) == {panda_id: True}
    killed = grid.status([panda_id])[panda_id]
    assert (killed.job_status, killed.creation_time, killed.queue, killed.end_time) == (
        JobStatus.CANCELLED, scenario.start, "ANALY_DE-SITE000_1", scenario.start)
