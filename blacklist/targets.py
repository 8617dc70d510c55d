"""Issue 11's targets for a policy, per scenario and over all of them, read from a comparison's rows.

The policy (`default`, or any row not HammerCloud's) against HammerCloud's rows of the same runs:
median detection at most half `hammercloud`'s, test jobs at most half `hammercloud`'s, false
exclusions no more than `hammercloud+safety`'s, premature re-inclusions no more than `hammercloud`'s,
and no exclusion during a central outage; and, so that a median of the faults it caught cannot hide
the ones it did not, no more faults missed than `hammercloud`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

HAMMERCLOUD, WITH_SAFETY = "hammercloud", "hammercloud+safety"
HALF = 0.5


@dataclass(frozen=True)
class Targets:
    scenario: str
    policy: str
    detection_ratio: float | None  # the policy's median detection / hammercloud's (None: no fault detected by one)
    detected: bool  # the policy detected faults where hammercloud did
    jobs_ratio: float | None
    false_exclusions: tuple[int, int]  # the policy's, hammercloud+safety's (totals over the runs)
    premature: tuple[int, int]  # the policy's, hammercloud's
    missed: tuple[int, int]  # faults missed: the policy's, hammercloud's
    central_exclusions: int
    short: tuple[str, ...]  # the targets not met

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def targets(report: dict[str, dict[str, dict[str, Any]]], policy: str) -> list[Targets]:
    """One row per scenario of the report (and its "all scenarios" row) that has the policy's row
    and both of HammerCloud's."""
    rows = []
    for scenario, by_policy in report.items():
        if not {policy, HAMMERCLOUD, WITH_SAFETY} <= by_policy.keys():
            continue
        ours, hc, safe = by_policy[policy], by_policy[HAMMERCLOUD], by_policy[WITH_SAFETY]
        detection = _ratio(ours["detection_median_min"], hc["detection_median_min"])
        detected = ours["detection_median_min"] is not None or hc["detection_median_min"] is None
        jobs = _ratio(ours["jobs"], hc["jobs"])
        false = (ours["false_exclusions"], safe["false_exclusions"])
        premature = (ours["premature_reinclusions"], hc["premature_reinclusions"])
        missed = (ours["missed"], hc["missed"])
        short = tuple(name for name, met in (
            ("detection", detected and (detection is None or detection <= HALF)),
            ("test jobs", jobs is None or jobs <= HALF),
            ("false exclusions", false[0] <= false[1]),
            ("premature re-inclusions", premature[0] <= premature[1]),
            ("faults missed", missed[0] <= missed[1]),
            ("central outages", ours["central_exclusions"] == 0)) if not met)
        rows.append(Targets(scenario, policy, detection, detected, jobs, false, premature, missed,
                            ours["central_exclusions"], short))
    return rows


def _ratio(ours: float | None, theirs: float | None) -> float | None:
    if ours is None or theirs is None or theirs == 0:
        return None
    return ours / theirs
