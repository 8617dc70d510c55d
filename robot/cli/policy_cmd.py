"""`healthrobot policy simulate|replay`: exclusion policies side by side, in simulation or on history."""
from __future__ import annotations

import itertools
import json
import logging
from concurrent.futures import ProcessPoolExecutor, as_completed
from datetime import timedelta
from pathlib import Path
from typing import Any

import click
import yaml
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from blacklist.policies import Policy
from blacklist.replay import differences, recorded_moves, replay
from blacklist.settings import with_values as with_settings
from blacklist.simulate import COMPARED, GIVEN, WITHOUT_USERS, RunResult, policy_settings, run, summarize
from blacklist.targets import HAMMERCLOUD, WITH_SAFETY, Targets, targets
from robot.backends.simulated import Scenario, load_scenario, with_values
from robot.cli import Context, pass_context
from robot.cli.params import DURATION
from robot.cli.render import make_console
from robot.clock import SystemClock
from robot.yamlconfig import ConfigError

COLUMNS = [("detection_median_min", "Detect. median (min)"), ("detection_p95_min", "Detect. p95 (min)"),
           ("missed", "Missed"), ("covered", "Covered"),
           ("false_per_100_queue_days", "False excl./100 queue-days"),
           ("central_exclusions", "Excl. in central outages"), ("reinclusion_median_min", "Re-incl. median (min)"),
           ("premature_reinclusions", "Premature re-incl."), ("flips_per_fault", "Flips per fault"),
           ("not_reincluded", "Not re-incl."), ("lost_queue_hours", "Healthy queue-hours lost"),
           ("broken_online_hours", "Broken queue-hours online"), ("jobs", "Test jobs")]
POLICY_HELP = (f"A built-in policy ({', '.join((*COMPARED, WITHOUT_USERS))}) or a YAML file with blacklist settings; "
               f"repeat it. Default: {', '.join(COMPARED)}, and {WITHOUT_USERS} when a scenario has users' traffic.")


Variant = tuple[Scenario, dict[str, Any]]  # a scenario, and the blacklist settings changed for every policy row


def _one(task: tuple[str, Variant, str, int]) -> tuple[str, str, RunResult]:
    key, (scenario, changes), policy, seed = task
    logging.getLogger("blacklist").setLevel(logging.ERROR)  # the decisions are scored, not logged
    label, settings = policy_settings(policy)
    if changes:
        settings = with_settings(settings, changes, "--set")
    return key, label, run(scenario, settings, seed, label)


def _check_policies(policies: tuple[str, ...], scenarios: dict[str, Scenario] | None = None) -> tuple[str, ...]:
    """The rows asked for; by default the built-in ones, and default-users for scenarios with users' traffic."""
    try:
        for policy in policies:
            policy_settings(policy)
    except ConfigError as exc:
        raise click.ClickException(f"invalid {exc}") from exc
    if policies:
        return policies
    users = any(s.users.jobs_per_hour for s in (scenarios or {}).values())
    return (*COMPARED, WITHOUT_USERS) if users else COMPARED


def _run_all(scenarios: dict[str, Scenario | Variant], policies: tuple[str, ...], seeds: int,
             workers: int) -> list[tuple[str, str, RunResult]]:
    """Every (scenario, policy, seed) run, in parallel; a progress bar on a terminal only."""
    tasks = [(key, scenario if isinstance(scenario, tuple) else (scenario, {}), policy, seed)
             for key, scenario in scenarios.items() for policy in policies for seed in range(1, seeds + 1)]
    console = make_console(stderr=True)
    with ProcessPoolExecutor(workers) as pool:
        futures = {pool.submit(_one, task): task for task in tasks}
        if not console.is_terminal:
            return [future.result() for future in futures]
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console, transient=True) as progress:
            bar = progress.add_task("simulating", total=len(tasks))
            for future in as_completed(futures):
                key, _, policy, seed = futures[future]
                progress.update(bar, advance=1, description=f"{key} · seed {seed} · {policy}")
        return [future.result() for future in futures]


def _report(scenarios: list[str], results: list[tuple[str, str, RunResult]]) -> dict[str, dict[str, dict]]:
    labels = list(dict.fromkeys(label for _, label, _ in results))
    report = {key: {label: summarize([r for k, l, r in results if k == key and l == label]).as_dict()
                    for label in labels} for key in scenarios}
    if len(scenarios) > 1:
        report["all scenarios"] = {label: summarize([r for _, l, r in results if l == label]).as_dict()
                                   for label in labels}
    return report


def _print_tables(report: dict[str, dict[str, dict]], seeds: int) -> None:
    console = make_console()
    for scenario, by_policy in report.items():
        table = Table(title=f"{scenario} ({seeds} seed{'s' if seeds > 1 else ''})", title_justify="left",
                      header_style="bold")
        table.add_column("Policy", no_wrap=True)
        for _, header in COLUMNS:
            table.add_column(header, justify="right")
        for label, summary in by_policy.items():
            table.add_row(label, *(_fmt(summary[key]) for key, _ in COLUMNS))
        console.print(table)


def _targets(report: dict[str, dict[str, dict]]) -> dict[str, list[Targets]]:
    """Issue 11's targets for every row that is not HammerCloud's, where both of HammerCloud's rows ran."""
    labels = dict.fromkeys(label for rows in report.values() for label in rows)
    return {label: found for label in labels if label not in (HAMMERCLOUD, WITH_SAFETY)
            if (found := targets(report, label))}


def _print_targets(report: dict[str, dict[str, dict]]) -> None:
    console = make_console()
    for label, rows in _targets(report).items():
        table = Table(title=f"{label} against the targets (detection and test jobs at most 0.5x hammercloud's, "
                            f"false exclusions at most hammercloud+safety's, premature re-inclusions at most "
                            f"hammercloud's, none in central outages, faults missed at most hammercloud's)", title_justify="left", header_style="bold")
        for header in ("Scenario", "Detection vs hammercloud", "Test jobs vs hammercloud",
                       "False excl. vs hammercloud+safety", "Premature re-incl. vs hammercloud",
                       "Excl. in central outages", "Missed vs hammercloud", "Short of"):
            table.add_column(header, justify="left" if header in ("Scenario", "Short of") else "right")
        for row in rows:
            detection = "none detected" if not row.detected else _times(row.detection_ratio)
            table.add_row(row.scenario, detection, _times(row.jobs_ratio), "{} vs {}".format(*row.false_exclusions),
                          "{} vs {}".format(*row.premature), str(row.central_exclusions),
                          "{} vs {}".format(*row.missed), ", ".join(row.short) or "-")
        console.print(table)


def _print_points(plot: str, points: list[dict]) -> None:
    table = Table(title=f"The points of {plot}", title_justify="left", header_style="bold")
    for header in ("Policy", "Setting", "Test jobs per queue-day", "Detect. median (min)",
                   "False excl./100 queue-days", "Detected"):
        table.add_column(header, justify="left" if header in ("Policy", "Setting") else "right")
    for p in points:
        table.add_row(p["policy"], p["setting"], _fmt(p["jobs_per_queue_day"]), _fmt(p["detection_median_min"]),
                      _fmt(p["false_per_100_queue_days"]), f"{p['detected']}/{p['faults']}")
    make_console().print(table)


def _times(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.2f}x"


@click.group("policy")
def policy_group() -> None:
    """Exclusion policies: compare them in simulation, replay them on history."""


@policy_group.command("simulate")
@click.argument("scenarios", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--policy", "policies", multiple=True, help=POLICY_HELP)
@click.option("--seeds", type=click.IntRange(1, 100), default=1, show_default=True, help="Random streams per scenario.")
@click.option("--workers", type=click.IntRange(1, 64), default=2, show_default=True, help="Parallel processes.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--plot", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Also write an HTML figure of test jobs per queue-day against median detection latency, "
                   "for hammercloud and default over a few cadence settings (blacklist/tradeoff.py).")
def policy_simulate(scenarios: tuple[str, ...], policies: tuple[str, ...], seeds: int, workers: int,
                    as_json: bool, plot: str | None) -> None:
    """Run SCENARIOS (YAML) with each policy on the same random streams and compare them."""
    try:
        loaded = {Path(path).stem: load_scenario(path) for path in scenarios}
    except ConfigError as exc:
        raise click.ClickException(f"invalid {exc}") from exc
    policies = _check_policies(policies, loaded)
    report = _report(list(loaded), _run_all(loaded, policies, seeds, workers))
    points = []
    if plot:
        from blacklist.tradeoff import write_plot  # noqa: PLC0415 - plotly only when plotting
        points = [point.__dict__ for point in write_plot(plot, list(scenarios), seeds, workers)]
        click.echo(f"wrote {plot}", err=True)
    if as_json:
        click.echo(json.dumps({"seeds": seeds, "given": _given(policies, loaded), "report": report,
                               "targets": {label: [row.as_dict() for row in rows]
                                           for label, rows in _targets(report).items()},
                               **({"plot": points} if plot else {})}, indent=2))
        return
    _print_tables(report, seeds)
    _print_given(policies, loaded)
    _print_targets(report)
    if plot:
        _print_points(plot, points)


def _given(policies: tuple[str, ...], scenarios: dict[str, Scenario]) -> dict[str, str]:
    """What each row was given: every row the same test jobs on the same random streams."""
    traffic = sorted({f"{s.users.jobs_per_hour:g}" for s in scenarios.values()})
    given = {}
    for policy in policies:
        label, settings = policy_settings(policy)
        text = GIVEN.get(policy, f"the settings in {policy}")
        if Policy(settings, ()).hears_users:
            text += f": {' or '.join(traffic)} users' jobs per queue-hour"
        given[label] = text
    return given


def _print_given(policies: tuple[str, ...], scenarios: dict[str, Scenario]) -> None:
    click.echo("Each row: the same scenario, seeds and test-job luck; what it was given:")
    for label, text in _given(policies, scenarios).items():
        click.echo(f"  {label}: {text}")


def _parse_set(text: str) -> tuple[str, list[Any]]:
    """`key=v1,v2,...`: values read as YAML scalars; `0.5%` is 0.005."""
    key, sep, values = text.partition("=")
    if not sep or not key.strip() or not values.strip():
        raise click.BadParameter(f"expected key=v1,v2,... (e.g. noise.user=0.5%,1%,3%), got {text!r}",
                                 param_hint="--set")
    parsed = []
    for value in values.split(","):
        value = value.strip()
        if value.endswith("%"):
            try:
                parsed.append(float(value[:-1]) / 100)
            except ValueError:
                raise click.BadParameter(f"{key.strip()}: {value!r} is not a percentage", param_hint="--set") from None
        else:
            parsed.append(yaml.safe_load(value))
    return key.strip(), parsed


@policy_group.command("sweep")
@click.argument("scenario", type=click.Path(exists=True, dir_okay=False))
@click.option("--set", "sets", multiple=True, required=True, metavar="KEY=V1,V2,...",
              help="A scenario value to vary, by its key path in the YAML (noise.user=0.5%,1%,3%, "
                   "faults[0].probability=0.5,0.9), or a policy setting under blacklist. for every row "
                   "(blacklist.default.stable_gap=30m,1h); repeat it to vary several together (every combination).")
@click.option("--policy", "policies", multiple=True, help=POLICY_HELP)
@click.option("--seeds", type=click.IntRange(1, 100), default=1, show_default=True, help="Random streams per value.")
@click.option("--workers", type=click.IntRange(1, 64), default=2, show_default=True, help="Parallel processes.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def policy_sweep(scenario: str, sets: tuple[str, ...], policies: tuple[str, ...], seeds: int, workers: int,
                 as_json: bool) -> None:
    """Rerun SCENARIO over values of its parameters and print one comparison per value."""
    axes = [_parse_set(text) for text in sets]
    _check_policies(policies)
    try:
        base = load_scenario(scenario)
        variants: dict[str, Variant] = {}
        for values in itertools.product(*(vs for _, vs in axes)):
            changes = {key: value for (key, _), value in zip(axes, values)}
            label = ", ".join(f"{key}={_shown(value)}" for key, value in changes.items())
            policy_changes = {key.removeprefix("blacklist."): value for key, value in changes.items()
                              if key.startswith("blacklist.")}
            variants[label] = (with_values(base, {k: v for k, v in changes.items() if not k.startswith("blacklist.")},
                                           f"{scenario} with --set"), policy_changes)
        # the rows policy simulate gives: default-users too when a value has users' traffic
        scenarios = {label: variant for label, (variant, _) in variants.items()}
        policies = _check_policies(policies, scenarios)
        for _, policy_changes in variants.values():  # every value checked before anything runs
            for policy in policies:
                with_settings(policy_settings(policy)[1], policy_changes, "--set")
    except ConfigError as exc:
        raise click.ClickException(f"invalid {exc}") from exc
    report = {f"{base.name}: {label}": rows for label, rows in
              _report(list(variants), _run_all(dict(variants), policies, seeds, workers)).items()
              if label != "all scenarios"}
    if as_json:
        click.echo(json.dumps({"scenario": base.name, "seeds": seeds, "given": _given(policies, scenarios),
                               "report": report}, indent=2))
        return
    _print_tables(report, seeds)
    _print_given(policies, scenarios)


def _shown(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


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
@click.option("--template", "templates", multiple=True,
              help="Templates whose results count, e.g. jobs filed by `history import` (default: the critical ones).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_context
def policy_replay(ctx: Context, since: timedelta, policy_name: str | None, step: timedelta, tolerance: timedelta,
                  templates: tuple[str, ...], as_json: bool) -> None:
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
    policy = Policy(settings, templates or tuple(config.blacklist.critical_templates or functional))
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

