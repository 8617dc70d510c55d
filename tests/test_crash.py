"""The crash suite: robot processes killed with SIGKILL at random points of real steps, restarted on
the same database and grid; afterwards every job the grid ran is known to the robot with its final
state, and no template ever had more jobs in flight at a queue than its limit (tests/crash_trials.py).
A handful of trials per path here; bench/crash.py runs 100."""
from __future__ import annotations

import pytest

from tests.crash_trials import run_trials

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("path", ["embedded", "panda"])
def test_killed_robots_orphan_nothing_and_never_exceed_a_limit(tmp_path, path):
    outcome = run_trials(tmp_path / path, path, trials=3, seed=12)
    assert outcome.killed == 3  # each process died at its crash point
    assert outcome.grid_jobs > 0 and outcome.not_final == []
    assert outcome.orphaned == [], outcome.as_dict()
    assert outcome.violations == [], outcome.violations
