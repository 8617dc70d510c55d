"""Safety rules over all of a step's decisions: pure, and applied the same whatever the policy.

In order: an active manual override wins; an exclusion by someone else is not the robot's to
touch; exempt and silenced queues are never excluded; a mass event (many queues, most of a
cloud, or evidence made of central-class errors) holds every exclusion and raises one central
incident instead; and the robot never holds more than a capped share of the queues excluded.
"""
from __future__ import annotations

import fnmatch
import math
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from blacklist.model import Action, Decision, QueueView
from blacklist.settings import SafetySettings

MASS_WINDOW = timedelta(hours=1)  # exclusions this recent count towards a mass event


@dataclass(frozen=True)
class Incident:
    kind: str
    message: str
    queues: tuple[str, ...]
    evidence: dict[str, Any] = field(default_factory=dict)


def is_exempt(view: QueueView, settings: SafetySettings) -> bool:
    name = view.name.lower()
    return (view.exempt or view.site in settings.exempt_sites
            or any(fnmatch.fnmatchcase(name, p.lower()) for p in settings.exempt_patterns))


def hands_off(view: QueueView) -> str | None:
    """Why the robot must not act on the queue at all, if it must not."""
    if view.manual:
        return f"manual {view.manual} in force: a person's decision wins"
    if view.downtime:
        return f"{view.downtime}: the site announced it, nothing is judged until it ends"
    if view.status != "online" and view.robot_state != "excluded":
        return f"status {view.status} was set outside the robot: not the robot's to change"
    return None


def guard(decisions: list[Decision], views: dict[str, QueueView], settings: SafetySettings,
          now: datetime) -> tuple[list[Decision], list[Incident]]:
    if not any(decision.action is Action.EXCLUDE for decision in decisions):
        return list(decisions), []  # every rule holds exclusions only (most steps)
    result: list[Decision] = []
    for decision in decisions:
        view = views[decision.queue]
        if decision.action is Action.EXCLUDE and view.silenced:
            decision = _hold(decision, "silenced: no automatic exclusion")
        elif decision.action is Action.EXCLUDE and is_exempt(view, settings):
            decision = _hold(decision, "exempt from automatic exclusion")
        result.append(decision)
    incidents: list[Incident] = []
    if settings.mass_guard:
        result, incidents = _mass_guard(result, views, settings, now)
    return _cap(result, views, settings), incidents


def _hold(decision: Decision, why: str) -> Decision:
    return replace(decision, action=Action.KEEP, new_status=None,
                   reason=f"would exclude ({decision.reason}) but {why}")


def _mass_guard(decisions: list[Decision], views: dict[str, QueueView], settings: SafetySettings,
                now: datetime) -> tuple[list[Decision], list[Incident]]:
    excluding = {d.queue for d in decisions if d.action is Action.EXCLUDE}
    if not excluding:
        return decisions, []
    recent = {v.name for v in views.values()
              if v.last_robot_exclusion and now - v.last_robot_exclusion < MASS_WINDOW and v.robot_state == "excluded"}
    failing = excluding | recent
    total = len(views)
    held: set[str] = set()
    incidents = []
    if len(failing) >= settings.mass_min_queues and len(failing) >= settings.mass_fraction * total:
        held |= excluding
        incidents.append(Incident("mass_failure", f"{len(failing)} of {total} queues failing at once: "
                                  "a central problem, not the sites; exclusions held", tuple(sorted(failing))))
    per_cloud = Counter(views[q].cloud for q in failing)
    cloud_size = Counter(v.cloud for v in views.values())
    for cloud, count in per_cloud.items():
        if count >= settings.mass_min_queues and count >= settings.cloud_fraction * cloud_size[cloud]:
            queues = {q for q in excluding if views[q].cloud == cloud}
            if queues - held:
                held |= queues
                incidents.append(Incident("cloud_failure", f"{count} of {cloud_size[cloud]} queues of cloud {cloud} "
                                          "failing at once: exclusions held", tuple(sorted(queues)), {"cloud": cloud}))
    queues = excluding - held  # the share is judged on the exclusions it would hold, as the incident says
    # in the queues' order, so that the stored detail lists the classes alike in every run
    classes = Counter(r.error_class for q in sorted(queues) for r in views[q].results if r.failed)
    failures = sum(classes.values())
    if (len(queues) >= settings.mass_min_queues and failures
            and classes["central"] / failures >= settings.central_share):
        held |= queues
        incidents.append(Incident("central_errors", f"{classes['central']} of {failures} failures behind these "
                                  "exclusions are central-class errors: exclusions held", tuple(sorted(queues)),
                                  {"classes": dict(classes)}))
    if not held:
        return decisions, incidents
    why = "part of a mass failure (central incident raised)"
    return [(_hold(d, why) if d.queue in held else d) for d in decisions], incidents


def _cap(decisions: list[Decision], views: dict[str, QueueView], settings: SafetySettings) -> list[Decision]:
    # at least one queue, so that a small grid can still exclude; rounded, not truncated (0.29 x 100 = 29)
    limit = max(1, math.floor(settings.max_excluded_fraction * len(views) + 1e-9))
    excluded = sum(1 for v in views.values() if v.robot_state == "excluded")
    capped = []
    for decision in decisions:
        if decision.action is Action.EXCLUDE:
            if excluded >= limit:
                decision = _hold(decision, f"the robot already holds {excluded} of {len(views)} queues excluded "
                                           f"(cap {settings.max_excluded_fraction:.0%})")
            else:
                excluded += 1
        capped.append(decision)
    return capped
