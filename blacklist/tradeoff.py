"""What testing costs and what it buys: test jobs per queue-day against median detection latency.

Each policy is run over a few cadence settings it accepts, on the same scenarios and seeds
(`healthrobot policy simulate ... --plot FILE`):
- `hammercloud`: its rules, one job per template in flight (gap 0, HammerCloud's cadence), or a
  fixed pause `hammercloud.job_gap` between a template's jobs at every queue;
- `default`: ours (users' own jobs heard, where the scenario has them), with its two pauses
  scaled together: `default.stable_gap` on stable queues and `user_jobs.watched_gap` on stable
  queues watched by their users' jobs (the shipped 1h and 90m, their half, double and zero;
  probes when in doubt and slow tests of broken queues as configured). A watched queue waits
  the longer of the two, so `stable_gap` alone would leave most queues' cadence unchanged.
Every point is one (policy, setting) over all the scenarios' runs: jobs per queue-day from the
simulator's count of submitted test jobs, and the median of every detected fault's latency.
"""
from __future__ import annotations

import logging
import statistics
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Callable

import plotly.graph_objects as go

from blacklist.settings import BlacklistSettings, with_values
from blacklist.simulate import RunResult, policy_settings, run
from robot.backends.simulated import load_scenario



def _minutes(*values: int) -> dict[str, timedelta]:
    return dict(zip(("default.stable_gap", "user_jobs.watched_gap"), (timedelta(minutes=m) for m in values)))


# (policy, settings changed for one point): the cadence settings each policy accepts, named by their
# key path under `blacklist:`
CADENCES: tuple[tuple[str, dict[str, timedelta]], ...] = (
    *(("hammercloud", {"hammercloud.job_gap": timedelta(minutes=m)}) for m in (0, 30, 60, 120)),
    *(("default", _minutes(stable, watched)) for stable, watched in ((0, 0), (30, 45), (60, 90), (120, 180))),
)


@dataclass(frozen=True)
class Point:
    policy: str
    setting: str  # e.g. "stable_gap=1h"
    jobs_per_queue_day: float
    detection_median_min: float | None
    false_per_100_queue_days: float
    detected: int
    faults: int


def with_cadence(settings: BlacklistSettings, changes: dict[str, timedelta]) -> BlacklistSettings:
    return with_values(settings, changes, "the trade-off's cadences")


def label(changes: dict[str, timedelta]) -> str:
    """`job_gap=0m`, `stable_gap=1h watched_gap=90m`: each key's last part and its value."""
    parts = []
    for key, value in changes.items():
        minutes = int(value.total_seconds() // 60)
        parts.append(f"{key.rsplit('.', 1)[-1]}={minutes // 60}h" if minutes and minutes % 60 == 0
                     else f"{key.rsplit('.', 1)[-1]}={minutes}m")
    return " ".join(parts)


def run_at(path: str, policy: str, changes: dict[str, timedelta], seed: int) -> RunResult:
    """One simulated run of a policy at one of its cadence settings."""
    _, settings = policy_settings(policy)
    return run(load_scenario(path), with_cadence(settings, changes), seed, policy)


def _one(task: tuple[str, str, dict[str, timedelta], int]) -> tuple[str, str, RunResult]:
    path, policy, changes, seed = task
    logging.getLogger("blacklist").setLevel(logging.ERROR)  # the decisions are scored, not logged
    return policy, label(changes), run_at(path, policy, changes, seed)


def tasks(scenarios: list[str], seeds: int) -> list[tuple[str, str, dict[str, timedelta], int]]:
    return [(path, policy, changes, seed) for policy, changes in CADENCES
            for path in scenarios for seed in range(1, seeds + 1)]


def points(results: list[tuple[str, str, RunResult]]) -> list[Point]:
    """One point per (policy, setting), over every run of it."""
    grouped: dict[tuple[str, str], list[RunResult]] = {}
    for policy, setting, result in results:
        grouped.setdefault((policy, setting), []).append(result)
    out = []
    for (policy, setting), runs in grouped.items():
        latencies = [x / 60 for r in runs for x in r.latencies]
        queue_days = sum(r.queue_days for r in runs)
        out.append(Point(policy, setting, sum(r.jobs for r in runs) / queue_days if queue_days else 0.0,
                         statistics.median(latencies) if latencies else None,
                         100 * sum(r.false_exclusions for r in runs) / queue_days if queue_days else 0.0,
                         len(latencies), sum(r.faults for r in runs)))
    return out


def sweep(scenarios: list[str], seeds: int, workers: int,
          progress: Callable[[int, int], None] | None = None) -> list[Point]:
    """Run every policy at each of its cadence settings on the scenarios and seeds."""
    todo = tasks(scenarios, seeds)
    results = []
    with ProcessPoolExecutor(workers) as pool:
        for done, result in enumerate(pool.map(_one, todo), start=1):
            results.append(result)
            if progress:
                progress(done, len(todo))
    return points(results)


def figure(found: list[Point], title: str) -> go.Figure:
    fig = go.Figure()
    for policy in dict.fromkeys(p.policy for p in found):
        mine = sorted((p for p in found if p.policy == policy and p.detection_median_min is not None),
                      key=lambda p: p.jobs_per_queue_day)
        fig.add_trace(go.Scatter(
            x=[p.jobs_per_queue_day for p in mine], y=[p.detection_median_min for p in mine],
            mode="lines+markers+text", name=policy, text=[p.setting for p in mine], textposition="top center",
            customdata=[[p.false_per_100_queue_days, p.detected, p.faults] for p in mine],
            hovertemplate=("%{text}<br>%{x:.1f} test jobs per queue-day<br>median detection %{y:.1f} min"
                           "<br>false exclusions %{customdata[0]:.1f} per 100 queue-days"
                           "<br>detected %{customdata[1]} of %{customdata[2]} faults<extra>" + policy + "</extra>")))
    reference = next((p for p in found if p.policy == "hammercloud" and p.setting.endswith("=0m")), None)
    if reference and reference.detection_median_min is not None:
        fig.add_shape(type="rect", x0=0, x1=reference.jobs_per_queue_day / 2, y0=0,
                      y1=reference.detection_median_min / 2, line={"dash": "dot"}, fillcolor="green", opacity=0.1)
        fig.add_annotation(x=reference.jobs_per_queue_day / 4, y=reference.detection_median_min / 4,
                           text="goal: half HammerCloud's jobs and latency", showarrow=False)
    fig.update_layout(title=title, xaxis_title="test jobs per queue-day", yaxis_title="median detection latency (min)",
                      xaxis={"rangemode": "tozero"}, yaxis={"rangemode": "tozero"}, template="plotly_white")
    return fig


def write_plot(path: Path | str, scenarios: list[str], seeds: int, workers: int,
               progress: Callable[[int, int], None] | None = None) -> list[Point]:
    """Sweep the cadences and write the figure as a standalone HTML file; returns the points."""
    found = sweep(scenarios, seeds, workers, progress)
    names = ", ".join(Path(s).stem for s in scenarios)
    fig = figure(found, f"Cost against detection ({names}; {seeds} seed{'s' if seeds > 1 else ''} each)")
    fig.write_html(str(path), include_plotlyjs=True)
    return found
