"""HammerCloud's auto-exclusion policy, as its code has it (see shared/domain/hammercloud.md).

Input: final results of the critical templates in the window (3 h for analysis), newest first,
every failure counted whatever its cause. Exclude when any rule fires:
  LastOneFromThree   the most recent job failed in 3 or more templates;
  LastThreeFromOne   the last 3 jobs all failed in at least 1 template;
  LastTwoPlusOne     the last 2 failed in at least 2 templates, or the last 2 failed in one template
                     and the last 1 failed in another.
Re-include when no rule fires and the last 2 jobs completed in every critical template; a template
with too few jobs leaves the queue waiting ("needs jobs"). No re-exclusion within 6 h of the last.
"""
from __future__ import annotations

from datetime import datetime

from blacklist.model import Action, Decision, QueueView, Result, by_template, evidence_of
from blacklist.settings import HammerCloudSettings
from robot.durations import format_duration

NAME = "hammercloud"
QUIET = "no exclusion rule fires"


def fired_rules(grouped: dict[str, list[Result]]) -> list[tuple[str, list[Result]]]:
    """Every rule that fires, with the failed jobs that make it fire."""
    last_failed = {t: rs[0] for t, rs in grouped.items() if rs and rs[0].failed}
    two_failed = {t: rs[:2] for t, rs in grouped.items() if len(rs) >= 2 and rs[0].failed and rs[1].failed}
    fired = []
    if len(last_failed) >= 3:
        fired.append(("LastOneFromThree", list(last_failed.values())))
    three = [rs[:3] for rs in grouped.values() if len(rs) >= 3 and all(r.failed for r in rs[:3])]
    if three:
        fired.append(("LastThreeFromOne", three[0]))
    if len(two_failed) >= 2:
        fired.append(("LastTwoPlusOne", [r for rs in list(two_failed.values())[:2] for r in rs]))
    elif len(two_failed) == 1:
        (template, pair), = two_failed.items()
        other = next((r for t, r in last_failed.items() if t != template), None)
        if other is not None:
            fired.append(("LastTwoPlusOne", [*pair, other]))
    return fired


def newest_failed(results: tuple[Result, ...], templates: list[str], start: datetime) -> bool:
    """Whether the newest result from `start` on of a critical template failed (`results` newest first):
    every rule needs one that did."""
    seen: set[str] = set()
    for result in results:
        if result.end_time >= start and result.template in templates and result.template not in seen:
            if result.failed:
                return True
            seen.add(result.template)
            if len(seen) == len(templates):
                break
    return False


def decide(view: QueueView, templates: list[str], settings: HammerCloudSettings, now: datetime) -> Decision:
    start = now - settings.window
    if view.robot_state != "excluded" and not newest_failed(view.results, templates, start):
        return Decision(view.name, Action.KEEP, QUIET, policy=NAME)  # no rule can fire
    recent = tuple(r for r in view.results if r.end_time >= start)
    grouped = by_template(recent, templates)
    fired = fired_rules(grouped)
    if view.robot_state != "excluded":
        if not fired:
            return Decision(view.name, Action.KEEP, QUIET, policy=NAME)
        names = ", ".join(name for name, _ in fired)
        jobs = list({r.panda_id: r for _, rs in fired for r in rs}.values())  # a job behind two rules, once
        if view.last_robot_exclusion and now - view.last_robot_exclusion < settings.reexclusion_cooldown:
            return Decision(view.name, Action.KEEP, f"{names} fires, but the queue was excluded less than "
                            f"{format_duration(settings.reexclusion_cooldown)} ago", evidence={"jobs": evidence_of(jobs)}, policy=NAME)
        return Decision(view.name, Action.EXCLUDE, f"{names}: {_describe(fired)}",
                        evidence={"rules": [n for n, _ in fired], "jobs": evidence_of(jobs)}, policy=NAME)
    if fired:
        return Decision(view.name, Action.KEEP, f"still failing: {', '.join(n for n, _ in fired)}", policy=NAME)
    need = settings.reinclude_successes
    short = [t for t, rs in grouped.items() if len(rs) < need]
    if short:
        return Decision(view.name, Action.NEEDS_JOBS, f"needs jobs: fewer than {need} results in "
                        f"{', '.join(short)}", policy=NAME)
    bad = [t for t, rs in grouped.items() if any(r.failed for r in rs[:need])]
    if bad:
        return Decision(view.name, Action.KEEP, f"the last {need} jobs did not all complete in {', '.join(bad)}",
                        policy=NAME)
    good = [r for rs in grouped.values() for r in rs[:need]]
    return Decision(view.name, Action.INCLUDE, f"the last {need} jobs completed in every critical template",
                    evidence={"jobs": evidence_of(good)}, policy=NAME)


def _describe(fired: list[tuple[str, list[Result]]]) -> str:
    name, jobs = fired[0]
    failed = ", ".join(f"{r.template} {r.panda_id} ({r.error_name or 'failed'})" for r in jobs)
    return f"failed jobs {failed}"
