"""`healthrobot policy simulate|replay`: exclusion policies side by side, in simulation or on history."""
from __future__ import annotations

import json
import logging
from concurrent.futures import ProcessPoolExecutor
from datetime import timedelta
from pathlib import Path

import click
from rich.table import Table

from blacklist.policies import Policy
from blacklist.replay import differences, recorded_moves, replay
from blacklist.simulate import RunResult, policy_settings, run, summarize
from robot.backends.simulated import load_scenario
from robot.cli import Context, pass_context
from robot.cli.params import DURATION
from robot.cli.render import make_console
from robot.clock import SystemClock
from robot.yamlconfig import ConfigError

COLUMNS = [("detection_median_min", "Detect. median (min)"), ("detection_p95_min", "Detect. p95 (min)"),
           ("missed", "Missed"), ("false_per_100_queue_days", "False excl./100 queue-days"),
           ("central_exclusions", "Excl. in central outages"), ("reinclusion_median_min", "Re-incl. median (min)"),
           ("lost_queue_hours", "Queue-hours lost"), ("jobs", "Test jobs")]


def _one(args: tuple[str, str, int]) -> tuple[str, str, RunResult]:
    path, policy, seed = args
    logging.getLogger("blacklist").setLevel(logging.ERROR)  # the decisions are scored, not logged
    label, settings = policy_settings(policy)
    return path, label, run(load_scenario(path), settings, seed, label)


@click.group("policy")
def policy_group() -> None:
    """Exclusion policies: compare them in simulation, replay them on history."""


@policy_group.command("simulate")
@click.argument("scenarios", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--policy", "policies", multiple=True, default=["hammercloud", "default"], show_default=True,
              help="A built-in policy (hammercloud, default) or a YAML file with blacklist settings; repeat it.")
@click.option("--seeds", type=click.IntRange(1, 100), default=1, show_default=True, help="Random streams per scenario.")
@click.option("--workers", type=click.IntRange(1, 64), default=2, show_default=True, help="Parallel processes.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def policy_simulate(scenarios: tuple[str, ...], policies: tuple[str, ...], seeds: int, workers: int,
                    as_json: bool) -> None:
    """Run SCENARIOS (YAML) with each policy on the same random streams and compare them."""
    try:
        for path in scenarios:
            load_scenario(path)
        for policy in policies:
            policy_settings(policy)
    except ConfigError as exc:
        raise click.ClickException(f"invalid {exc}") from exc
    tasks = [(path, policy, seed) for path in scenarios for policy in policies for seed in range(1, seeds + 1)]
    with ProcessPoolExecutor(workers) as pool:
        results = list(pool.map(_one, tasks))
    labels = list(dict.fromkeys(label for _, label, _ in results))
    report = {Path(path).stem: {label: summarize([r for p, l, r in results if p == path and l == label]).as_dict()
                                for label in labels} for path in scenarios}
    if len(scenarios) > 1:
        report["all scenarios"] = {label: summarize([r for _, l, r in results if l == label]).as_dict()
                                   for label in labels}
    if as_json:
        click.echo(json.dumps({"seeds": seeds, "report": report}, indent=2))
        return
    console = make_console()
    for scenario, by_policy in report.items():
        table = Table(title=f"{scenario} ({seeds} seed{'s' if seeds > 1 else ''})", title_justify="left",
                      header_style="bold")
        table.add_column("Policy")
        for _, header in COLUMNS:
            table.add_column(header, justify="right")
        for label, summary in by_policy.items():
            table.add_row(label, *(_fmt(summary[key]) for key, _ in COLUMNS))
        console.print(table)


def _fmt(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


@policy_group.command("replay")
@click.option("--since", type=DURATION, default="7d", show_default=True, help="How far back.")
@click.option("--policy", "policy_name", default=None,
              help="A built-in policy or a YAML file with blacklist settings (default: the configured one).")
@click.option("--step", type=DURATION, default="10m", show_default=True, help="Evaluation interval of the replay.")
@click.option("--tolerance", type=DURATION, default="30m", show_default=True,
              help="Moves this close in time count as the same.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_context
def policy_replay(ctx: Context, since: timedelta, policy_name: str | None, step: timedelta, tolerance: timedelta,
                  as_json: bool) -> None:
    """Evaluate a policy on the stored results and list where it would have decided otherwise."""
    config = ctx.config
    if policy_name:
        try:
            label, settings = policy_settings(policy_name)
        except ConfigError as exc:
            raise click.ClickException(f"invalid {exc}") from exc
    else:
        label, settings = config.blacklist.policy, config.blacklist
    functional = [t.name for t in config.templates if t.category == "functional" and t.active]
    policy = Policy(settings, tuple(config.blacklist.critical_templates or functional))
    now = SystemClock().now()
    with ctx.session() as session:
        replayed = replay(session, policy, now - since, now, step)
        recorded = recorded_moves(session, config.blacklist.actor, now - since, now)
    found = differences(replayed, recorded, tolerance)
    if as_json:
        click.echo(json.dumps({"policy": label, "replayed": len(replayed), "recorded": len(recorded),
                               "differences": [{"queue": d.queue, "time": d.time.isoformat(), "replayed": d.replayed,
                                                "recorded": d.recorded, "reason": d.reason} for d in found]}, indent=2))
        return
    click.echo(f"{label}: {len(replayed)} move(s) replayed, {len(recorded)} recorded, {len(found)} difference(s)")
    for d in found:
        who = f"{label} would {d.replayed}" if d.replayed else f"the robot did {d.recorded}, {label} would not"
        click.echo(f"{d.time:%Y-%m-%d %H:%M} {d.queue:20} {who}: {d.reason}")


COMMANDS = [policy_group]
