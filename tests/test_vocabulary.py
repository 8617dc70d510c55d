"""One vocabulary for the robot's decisions: the same words in the CLI table, `why`, `blacklist` and the dashboard."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
import yaml
from click.testing import CliRunner
from sqlalchemy import select, update

from dashboard import queries
from dashboard.pages.common import transition_rows
from dashboard.queries import Filters
from robot.cli import main
from robot.clock import ManualClock, SystemClock
from robot.storage.models import Job, Queue, QueueTransition, Ticket
from robot.vocabulary import decision, plain_reason, queue_state
from tests.fakes import T0, ScriptedGrid, make_robot, templates

NOW = datetime(2026, 11, 1, 14, 0, tzinfo=timezone.utc)
CUSUM = "7 site-class failures (STAGEINFAILED) outweigh the completed jobs: CUSUM 7.0 >= 6.2"
PLAIN = "7 site-class failures (STAGEINFAILED) in the last 2h, more than a healthy queue would show"


def failing(minutes_ago: int, panda_id: int, at: datetime = NOW) -> dict:
    return {"panda_id": panda_id, "template": "AFT", "end_time": (at - timedelta(minutes=minutes_ago)).isoformat(),
            "failed": True, "error_class": "site", "error": "STAGEINFAILED", "code": 1099}


EVIDENCE = {"cusum": 7.0, "exclude_at": 6.2, "jobs": [failing(120 - 20 * k, 100 + k) for k in range(7)]}


def test_the_robots_verdict_and_whether_it_is_applied():
    assert queue_state("online", "online") == "online"
    assert queue_state("online", "excluded") == "online; robot: excluded (dry-run)"
    assert queue_state("brokeroff", "excluded") == "brokeroff; robot: excluded (applied)"
    assert queue_state("online", "pending") == "online; robot: pending"
    assert queue_state("brokeroff", "online") == "brokeroff"  # a person's exclusion: the robot has nothing against it
    assert decision("online", "brokeroff", False) == "excluded (dry-run: would set online -> brokeroff)"
    assert decision("online", "brokeroff", True) == "excluded (applied: online -> brokeroff)"
    assert decision("brokeroff", "online", True) == "online (applied: brokeroff -> online)"
    assert decision("online", "pending", True, kind="state") == "pending"


def test_reasons_in_plain_words_for_a_shifter():
    assert plain_reason(CUSUM, EVIDENCE, NOW, "brokeroff") == PLAIN
    pending = plain_reason("site-class failure STAGEINFAILED (job 106): sending probe jobs",
                           {"jobs": [failing(3, 106)]}, NOW, "pending")
    assert pending == "a site-class failure (STAGEINFAILED, PanDA job 106): probe jobs are sent to check the queue"
    good = [{**failing(k, k), "failed": False} for k in range(3)]
    assert plain_reason("3 test jobs completed in a row since the exclusion", {"jobs": good}, NOW, "online") == \
        "3 test jobs completed in a row: the queue works again"
    # without evidence, the technical part is left out
    assert plain_reason("in doubt (CUSUM 3.2): waiting for probe jobs", {}, NOW, "pending") == \
        "in doubt: waiting for probe jobs"
    assert plain_reason("manual exclusion by alice: downtime", None, NOW, "brokeroff") == "manual exclusion by alice: downtime"


@pytest.fixture
def dry_run_exclusion(tmp_path):
    """ANALY_B excluded by the robot in dry-run: PanDA still has it online."""
    clock = ManualClock(T0)
    grid = ScriptedGrid(clock, {"ANALY_A": ("SITE-A", "DE"), "ANALY_B": ("SITE-B", "US")})
    robot = make_robot(tmp_path, grid, templates({"name": "AFT"}))
    robot.run_once(clock.now())
    when = SystemClock().now() - timedelta(minutes=5)
    evidence = {"cusum": 7.0, "exclude_at": 6.2, "jobs": [failing(120 - 20 * k, 100 + k, when) for k in range(7)]}
    with robot.sessions() as session:
        queue_id = session.scalar(select(Queue.id).where(Queue.name == "ANALY_B"))
        session.execute(update(Queue).where(Queue.id == queue_id).values(robot_state="excluded",
                                                                         robot_state_since=when))
        session.add(QueueTransition(queue_id=queue_id, time=when, kind="status", old="online", new="brokeroff",
                                    reason=CUSUM, evidence=evidence, actor="healthrobot", policy="default",
                                    applied=False))
        session.commit()
    config = tmp_path / "robot.yaml"
    config.write_text(yaml.safe_dump({"data_dir": str(tmp_path), "templates": templates({"name": "AFT"})}))
    return config, robot


def _cli(config, *args: str) -> str:
    result = CliRunner().invoke(main, ["--config", str(config), *args])
    assert result.exit_code == 0, result.output
    return result.output


def test_one_state_in_the_same_words_everywhere(dry_run_exclusion):
    config, robot = dry_run_exclusion
    state = "online; robot: excluded (dry-run)"
    words = "excluded (dry-run: would set online -> brokeroff)"
    assert state in _cli(config, "status")
    assert state in _cli(config, "blacklist", "list") and PLAIN in _cli(config, "blacklist", "list")
    why = _cli(config, "why", "ANALY_B")
    assert why.startswith(f"ANALY_B: {state}: {PLAIN}") and words in why and f"policy: {CUSUM}" in why
    history = _cli(config, "blacklist", "history")
    assert f"healthrobot: {words}: {PLAIN}" in history and CUSUM in history
    with robot.sessions() as session:
        found = queries.transitions(session, Filters(SystemClock().now() - timedelta(days=1), SystemClock().now()))
    (row,) = transition_rows(found)
    assert (row["decision"], row["why"], row["reason"]) == (words, PLAIN, CUSUM)


def test_why_a_site_sums_up_its_queues(dry_run_exclusion):
    config, _ = dry_run_exclusion
    answer = _cli(config, "why", "SITE-B")
    assert answer.startswith("site SITE-B: 1 of its 1 queues not online for the robot")
    assert f"ANALY_B: online; robot: excluded (dry-run): {PLAIN}" in answer
    assert _cli(config, "why", "site:SITE-A").startswith("site SITE-A: all 1 queues online for the robot")


def test_why_a_number_that_is_both_a_ticket_and_a_panda_job_says_which_it_shows(dry_run_exclusion):
    config, robot = dry_run_exclusion
    with robot.sessions() as session:
        panda_id = session.scalar(select(Job.panda_id).where(Job.panda_id.is_not(None)).limit(1))
        session.add(Ticket(id=panda_id, source="mail", key="<1@x>", subject="jobs fail", state="open",
                           first_message_at=T0, last_message_at=T0, verdict="unknown", verdict_reason="nothing known"))
        session.commit()
    both = _cli(config, "why", str(panda_id)).splitlines()
    assert both[0] == (f"{panda_id} is both ticket {panda_id} and PanDA job {panda_id}: this is the ticket "
                       f"(`why job:{panda_id}` for the job)")
    assert both[1].startswith(f"ticket {panda_id} (jobs fail): unknown")
    assert _cli(config, "why", f"job:{panda_id}").startswith(f"PanDA job {panda_id} (a robot test job) at ANALY_")
    assert _cli(config, "why", f"ticket:{panda_id}").startswith(f"ticket {panda_id} (jobs fail)")
    unknown = CliRunner().invoke(main, ["--config", str(config), "why", "NOPE"])
    assert unknown.exit_code == 1 and "'NOPE' is no ticket id, queue, site or PanDA job ID" in unknown.output
