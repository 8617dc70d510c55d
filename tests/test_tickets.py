"""Tickets end to end: import the sample archive, link it to what the robot saw, answer `why`."""
from __future__ import annotations

import json
from datetime import timedelta

import pytest
from click.testing import CliRunner

from blacklist.engine import ExclusionEngine
from blacklist.policies import Policy
from blacklist.settings import BlacklistSettings
from robot.cli import main
from robot.clock import ManualClock
from robot.tickets.sample import write_sample_mbox
from tests.fakes import T0, ScriptedGrid, make_robot, templates

SAMPLE_QUEUES = {"ANALY_MWT2_UCORE": ("MWT2", "US"), "ANALY_FZK": ("FZK-LCG2", "DE"),
                 "ANALY_BNL_SHORT": ("BNL-ATLAS", "US"), "ANALY_BNL_LONG": ("BNL-ATLAS", "US"),
                 "ANALY_IN2P3-CC": ("IN2P3-CC", "FR"), "ANALY_RAL_SL7": ("RAL-LCG2", "UK"),
                 "ANALY_GRIF-LAL": ("GRIF", "FR"), "ANALY_AGLT2": ("AGLT2", "US"), "ANALY_DESY-HH": ("DESY-HH", "DE"),
                 "ANALY_LRZ": ("LRZ-LMU", "DE"), "ANALY_MANC": ("UKI-NORTHGRID-MAN-HEP", "UK")}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Four days of tests in which ANALY_MWT2_UCORE breaks (stage-in) a day in, then the sample mail."""
    tmp_path = tmp_path_factory.mktemp("tickets")
    clock = ManualClock(T0)
    grid = ScriptedGrid(clock, SAMPLE_QUEUES)
    robot = make_robot(tmp_path, grid, templates({"name": "AFT_A"}, {"name": "AFT_B"}))
    settings = BlacklistSettings.model_validate({"mode": "enforce", "default": {"stall_after": "30d"}})
    robot.evaluators.append(ExclusionEngine(Policy(settings, ("AFT_A", "AFT_B")), grid))
    robot.run_once(clock.now())
    for step in range(4 * 48):
        for queue in SAMPLE_QUEUES:
            for pid in grid.in_queue(queue):
                if queue == "ANALY_MWT2_UCORE" and step >= 48:
                    grid.finish(pid, wall=600, pilot_error_code=1099, pilot_error_diag="Get error: stage-in failed")
                else:
                    grid.finish(pid, wall=600)
        clock.advance(timedelta(minutes=30))
        robot.run_once(clock.now())
    archive = tmp_path / "support.mbox"
    count = write_sample_mbox(archive, clock.now())
    config = tmp_path / "robot.yaml"
    config.write_text(f"data_dir: {tmp_path}\ntickets: {{support_address: atlas-support@example.org}}\n")
    return {"config": str(config), "archive": str(archive), "messages": count, "grid": grid}


def cli(world, *args):
    result = CliRunner().invoke(main, ["--config", world["config"], *args])
    assert result.exit_code == 0, result.output
    return result.output


def test_import_is_idempotent_and_links_the_broken_site(world):
    first = json.loads(cli(world, "tickets", "import", world["archive"], "--json"))
    assert first["new_messages"] == world["messages"] and 20 <= first["new_tickets"] <= 30
    again = json.loads(cli(world, "tickets", "import", world["archive"], "--json"))
    assert again["new_messages"] == 0 and again["new_tickets"] == 0
    tickets = {t["subject"]: t for t in json.loads(cli(world, "tickets", "list", "--json"))}
    mwt2 = next(t for s, t in tickets.items() if "ANALY_MWT2_UCORE with stage-in" in s)
    assert mwt2["verdict"] == "site" and "ANALY_MWT2_UCORE" in mwt2["verdict_reason"]
    assert mwt2["links"] and mwt2["links"][0]["queue"] == "ANALY_MWT2_UCORE"
    works = {m["value"] for m in mwt2["mentions"] if not m["complaint"]}
    assert any("FZK" in value for value in works)  # "runs fine at ANALY_FZK" is not a complaint


def test_not_the_site_when_the_named_queue_passed_its_tests(world):
    cli(world, "tickets", "import", world["archive"])
    tickets = json.loads(cli(world, "tickets", "list", "--json"))
    verdicts = {t["verdict"] for t in tickets}
    assert {"site", "not_site"} <= verdicts
    by_queue = json.loads(cli(world, "tickets", "list", "--queue", "ANALY_MWT2_UCORE", "--json"))
    assert by_queue and all(any(m["queue"] == "ANALY_MWT2_UCORE" for m in t["mentions"]) for t in by_queue)


def test_why_answers_for_a_ticket_a_queue_and_a_job(world):
    cli(world, "tickets", "import", world["archive"])
    tickets = json.loads(cli(world, "tickets", "list", "--json"))
    mwt2 = next(t for t in tickets if "ANALY_MWT2_UCORE with stage-in" in t["subject"])
    answer = json.loads(cli(world, "why", str(mwt2["id"]), "--json"))
    assert answer["verdict"] == "site" and answer["links"]
    queue = json.loads(cli(world, "why", "ANALY_MWT2_UCORE", "--json"))
    assert queue["robot_state"] == "excluded" and mwt2["id"] in queue["tickets"]
    failed_job = next(pid for pid, job in world["grid"].jobs.items() if job.pilot_error_code == 1099)
    job = json.loads(cli(world, "why", str(failed_job), "--json"))
    assert "ANALY_MWT2_UCORE" in job["answer"] and "STAGEINFAILED" in job["answer"]
    assert CliRunner().invoke(main, ["--config", world["config"], "why", "NOPE"]).exit_code == 1


def test_a_hostile_subject_is_shown_as_text(world):
    cli(world, "tickets", "import", world["archive"])
    table = cli(world, "tickets", "list")
    assert "<script>alert(1)</script>" in table
