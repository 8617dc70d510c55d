"""The cost / detection trade-off: points from simulated runs, the figure, `policy simulate --plot`."""
from __future__ import annotations

import json
from datetime import timedelta

from click.testing import CliRunner

from blacklist import tradeoff
from blacklist.simulate import RunResult, policy_settings
from robot.cli import main


def result(jobs: int, latencies: list[float], false: int = 0, faults: int = 2) -> RunResult:
    return RunResult("x", 1, latencies=latencies, faults=faults, false_exclusions=false, jobs=jobs, queue_days=10.0)


def test_points_pool_every_run_of_a_setting():
    found = tradeoff.points([
        ("hammercloud", "job_gap=0m", result(800, [600.0, 1200.0])),
        ("hammercloud", "job_gap=0m", result(900, [1800.0], false=1)),
        ("default", "stable_gap=1h", result(400, [], faults=2)),
    ])
    hc, ours = found
    assert (hc.policy, hc.setting) == ("hammercloud", "job_gap=0m")
    assert hc.jobs_per_queue_day == 85.0 and hc.detection_median_min == 20.0
    assert hc.false_per_100_queue_days == 5.0 and (hc.detected, hc.faults) == (3, 4)
    assert ours.detection_median_min is None and ours.jobs_per_queue_day == 40.0


def test_each_policy_gets_its_own_cadence_knobs():
    _, hc = policy_settings("hammercloud")
    _, ours = policy_settings("default")
    slow = tradeoff.with_cadence(hc, {"hammercloud.job_gap": timedelta(hours=2)})
    assert slow.hammercloud.job_gap == timedelta(hours=2) and hc.hammercloud.job_gap == timedelta(0)
    assert slow.safety == hc.safety and slow.hammercloud.window == hc.hammercloud.window
    paced = tradeoff.with_cadence(ours, {"default.stable_gap": timedelta(0), "user_jobs.watched_gap": timedelta(0)})
    assert paced.default.stable_gap == timedelta(0) and paced.user_jobs.watched_gap == timedelta(0)
    assert paced.default.window == ours.default.window and paced.user_jobs.weight == ours.user_jobs.weight
    labels = {(t[1], tradeoff.label(t[2])) for t in tradeoff.tasks(["s.yaml"], 1)}
    assert ("hammercloud", "job_gap=0m") in labels and ("default", "stable_gap=2h watched_gap=3h") in labels
    # the shipped cadence is one of the default's points
    assert ("default", "stable_gap=1h watched_gap=90m") in labels


def test_each_cadence_setting_gives_its_own_point(tmp_path):
    """A queue watched by its users' jobs waits `watched_gap`, not `stable_gap`: the default's
    settings must move both, or several settings are one cadence and one point."""
    path = tmp_path / "watched.yaml"
    path.write_text("name: watched\nduration: 8h\nqueues: {count: 2}\ntemplates: [T]\n"
                    "users: {jobs_per_hour: 30, failure: 0.1}\n")
    found = tradeoff.points([(policy, tradeoff.label(changes), tradeoff.run_at(str(path), policy, changes, 1))
                             for policy, changes in tradeoff.CADENCES])
    for policy in ("hammercloud", "default"):
        costs = [p.jobs_per_queue_day for p in found if p.policy == policy]
        assert len(costs) == 4
        assert costs == sorted(set(costs), reverse=True), (policy, costs)  # each longer pause, fewer jobs


def test_figure_has_one_line_per_policy_and_the_goal():
    fig = tradeoff.figure([tradeoff.Point("hammercloud", "job_gap=0m", 80.0, 40.0, 3.0, 9, 10),
                           tradeoff.Point("hammercloud", "job_gap=1h", 40.0, 70.0, 2.0, 9, 10),
                           tradeoff.Point("default", "stable_gap=1h", 38.0, 25.0, 1.0, 10, 10)], "t")
    assert [t.name for t in fig.data] == ["hammercloud", "default"]
    assert list(fig.data[0].x) == [40.0, 80.0]  # sorted by cost
    (goal,) = fig.layout.shapes
    assert (goal.x1, goal.y1) == (40.0, 20.0)  # half of HammerCloud's own cadence on both axes


def test_simulate_writes_the_plot(tmp_path, monkeypatch):
    monkeypatch.setattr(tradeoff, "CADENCES", (
        ("hammercloud", {"hammercloud.job_gap": timedelta(0)}),
        ("default", {"default.stable_gap": timedelta(hours=1), "user_jobs.watched_gap": timedelta(minutes=90)})))
    path = tmp_path / "scenario.yaml"
    path.write_text("name: tiny\nduration: 6h\nqueues: {count: 4}\n"
                    "faults:\n  - {queues: 1, onset: 1h, duration: 4h, mode: stagein}\n")
    plot = tmp_path / "tradeoff.html"
    result = CliRunner().invoke(main, ["policy", "simulate", str(path), "--policy", "default", "--workers", "1",
                                       "--json", "--plot", str(plot)])
    assert result.exit_code == 0, result.output
    output = json.loads(result.stdout)
    assert output["report"]["scenario"]
    assert [(p["policy"], p["setting"]) for p in output["plot"]] == [
        ("hammercloud", "job_gap=0m"), ("default", "stable_gap=1h watched_gap=90m")]
    assert all(p["jobs_per_queue_day"] > 0 and p["faults"] == 1 for p in output["plot"])
    html = plot.read_text()
    assert "test jobs per queue-day" in html and "job_gap=0m" in html and "stable_gap=1h watched_gap=90m" in html


def test_the_points_are_printed_beside_the_plot(capsys):
    from robot.cli.policy_cmd import _print_points
    _print_points("t.html", [tradeoff.Point("default", "stable_gap=1h watched_gap=90m", 38.0, 25.0, 1.0, 9, 10).__dict__])
    out = capsys.readouterr().out
    assert "The points of t.html" in out and "stable_gap=1h watched_gap=90m" in out and "9/10" in out
