"""Issue 11's targets read from a comparison's rows, and `policy simulate`'s all-scenarios row and targets table."""
from __future__ import annotations

from click.testing import CliRunner

from blacklist.targets import targets
from robot.cli import main


def row(detection: float | None = None, jobs: float = 100.0, false: int = 0, premature: int = 0,
        central: int = 0, missed: int = 0) -> dict:
    return {"detection_median_min": detection, "jobs": jobs, "false_exclusions": false,
            "premature_reinclusions": premature, "central_exclusions": central, "missed": missed}


def test_targets_compare_the_policy_with_each_hammercloud_row_it_must_beat():
    report = {
        "met": {"hammercloud": row(60.0, 1000.0, false=9, premature=1), "hammercloud+safety": row(60.0, 1000.0, 2),
                "default": row(30.0, 480.0, false=2, premature=1)},
        "short": {"hammercloud": row(20.0, 1000.0), "hammercloud+safety": row(20.0, 1000.0, false=1),
                  "default": row(25.0, 510.0, false=2, premature=1, central=1)},
        "no fault": {"hammercloud": row(None, 800.0, false=30), "hammercloud+safety": row(None, 800.0, false=5),
                     "default": row(None, 300.0)},
        "missed": {"hammercloud": row(40.0), "hammercloud+safety": row(40.0), "default": row(None, 40.0)},
        "no hammercloud": {"default": row(10.0)},
        "some missed": {"hammercloud": row(60.0, missed=1), "hammercloud+safety": row(60.0),
                        "default": row(20.0, 40.0, missed=4)},  # a fast median of the faults it caught
    }
    met, short, quiet, missed, some = targets(report, "default")
    assert (met.detection_ratio, met.jobs_ratio, met.false_exclusions, met.premature) == (0.5, 0.48, (2, 2), (1, 1))
    assert met.short == ()
    assert short.detection_ratio == 1.25 and short.short == (
        "detection", "test jobs", "false exclusions", "premature re-inclusions", "central outages")
    assert quiet.detection_ratio is None and quiet.detected and quiet.short == ()
    assert missed.detected is False and missed.short == ("detection",)
    assert some.detection_ratio < 0.5 and some.missed == (4, 1) and some.short == ("faults missed",)


def test_simulate_prints_an_all_scenarios_row_and_the_targets_of_several_scenarios(tmp_path):
    paths = []
    for name, onset in (("early", "1h"), ("late", "2h")):
        path = tmp_path / f"{name}.yaml"
        path.write_text(f"name: {name}\nduration: 6h\nqueues: {{count: 4}}\n"
                        f"faults:\n  - {{queues: 1, onset: {onset}, duration: 3h, mode: stagein}}\n")
        paths.append(str(path))
    result = CliRunner().invoke(main, ["policy", "simulate", *paths, "--workers", "1"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "all scenarios (1 seed)" in out and "default against the targets" in out
    # one targets row per scenario and the all-scenarios one, e.g. "│ all scenarios │ 0.50x │ ..."
    lines = out[out.index("default against the targets"):].splitlines()
    assert [name for name in ("early", "late", "all scenarios") if any(f"│ {name} " in line for line in lines)] == [
        "early", "late", "all scenarios"]
