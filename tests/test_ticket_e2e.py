"""Tickets end to end around a known history: a broken queue, a central outage and healthy queues at
known times (the real loop, exclusion engine and incident recorder), then tickets of every kind
around them, imported and judged through the CLI. Every verdict must be right."""
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
from robot.incidents import CentralIncidents
from robot.tickets import sample
from tests.fakes import T0, ScriptedGrid, make_robot, templates
from tests.test_tickets import SAMPLE_QUEUES

BROKEN = (T0 + timedelta(hours=8), T0 + timedelta(hours=16))  # ANALY_MWT2_UCORE: stage-in failures
OUTAGE = (T0 + timedelta(hours=26), T0 + timedelta(hours=29))  # user tarballs cannot be fetched ...
SPARED = {"ANALY_MANC", "ANALY_LRZ"}  # ... anywhere but here


def h(hours: float):
    return T0 + timedelta(hours=hours)


# (subject, hours after T0, body, the right verdict)
TICKETS = [
    ("stage-in errors at ANALY_MWT2_UCORE", 12, "Hi, all my jobs at ANALY_MWT2_UCORE fail with\n"
     "  Get error: Failed to stage in file\nsince this morning.", "site"),
    ("reading MWT2_DATADISK fails", 13, "Every job of mine reading from MWT2_DATADISK dies in stage-in.", "site"),
    ("KeyError in my code", 12, "My jobs at ANALY_FZK crash with KeyError: 'jet_pt'. Is the site broken?", "not_site"),
    ("crash at two sites", 20, "My analysis crashes at FZK-LCG2 and at BNL-ATLAS with a segmentation violation "
     "in my library.", "not_site"),
    ("NOUSERTARBALL at ANALY_AGLT2", 27, "My jobs at ANALY_AGLT2 fail with NOUSERTARBALL right away.", "central"),
    ("everything fails now", 28, "Right now every job fails at the start: user tarball could not be downloaded.",
     "central"),
    ("segfault at ANALY_MANC", 27.5, "My jobs at ANALY_MANC segfault in my event loop (signal 11).", "not_site"),
    ("ZeroDivisionError", 36, "My jobs at ANALY_DESY-HH fail with ZeroDivisionError: division by zero.", "not_site"),
    ("my jobs failed", 40, "hi, my jobs failed. what should i do?", "not_site"),
    ("failures yesterday", 38, "Yesterday afternoon my jobs at ANALY_BNL_LONG failed with 'user tarball not found'. "
     "Should I just resubmit?", "central"),
    ("first job at ANALY_FZK", 0.5, "My very first job at ANALY_FZK failed, is the queue ok?", "unknown"),
]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("ticket_e2e")
    clock = ManualClock(T0)
    grid = ScriptedGrid(clock, SAMPLE_QUEUES)
    robot = make_robot(tmp_path, grid, templates({"name": "AFT_A"}, {"name": "AFT_B"}))
    # healthy queues tested back to back (stable_gap 0s), so that the outage's edges are seen to the step
    settings = BlacklistSettings.model_validate({"mode": "enforce", "default": {"stall_after": "30d", "stable_gap": "0s"}})
    robot.evaluators += [ExclusionEngine(Policy(settings, ("AFT_A", "AFT_B")), grid), CentralIncidents()]
    robot.run_once(clock.now())
    while clock.now() < h(46):
        now = clock.now()
        for queue in SAMPLE_QUEUES:
            for pid in grid.in_queue(queue):
                if queue == "ANALY_MWT2_UCORE" and BROKEN[0] <= now < BROKEN[1]:
                    grid.finish(pid, wall=600, pilot_error_code=1099, pilot_error_diag="Get error: stage-in failed")
                elif queue not in SPARED and OUTAGE[0] <= now < OUTAGE[1]:
                    grid.finish(pid, wall=60, pilot_error_code=1246, pilot_error_diag="user tarball not found")
                else:
                    grid.finish(pid, wall=600)
        clock.advance(timedelta(minutes=30))
        robot.run_once(clock.now())
    archive = tmp_path / "tickets.mbox"
    sample.write_messages(archive, [
        sample._make(subject, f"user{n}@example.org", sample.SUPPORT, h(hours), f"e2e{n}@example.org", body,
                     False, "", "", None, []) for n, (subject, hours, body, _) in enumerate(TICKETS)])
    config = tmp_path / "robot.yaml"
    config.write_text(f"data_dir: {tmp_path}\ntickets: {{support_address: {sample.SUPPORT}}}\n")
    result = CliRunner().invoke(main, ["--config", str(config), "tickets", "import", str(archive)])
    assert result.exit_code == 0, result.output
    return config


def cli(config, *args):
    result = CliRunner().invoke(main, ["--config", str(config), *args])
    assert result.exit_code == 0, result.output
    return result.output


def test_every_verdict_around_a_known_history_is_right(world):
    tickets = {t["subject"]: t for t in json.loads(cli(world, "tickets", "list", "--json"))}
    got = {subject: tickets[subject]["verdict"] for subject, *_ in TICKETS}
    assert got == {subject: verdict for subject, _, _, verdict in TICKETS}, {
        s: tickets[s]["verdict_reason"] for s in got}


def test_the_outage_was_recorded_with_its_start_and_end(world):
    ticket = next(t for t in json.loads(cli(world, "tickets", "list", "--json")) if t["subject"] == "everything fails now")
    (incident,) = ticket["evidence"]["incidents"]
    assert incident.startswith(f"central_failures from {OUTAGE[0].isoformat()}")
    assert incident.endswith((OUTAGE[1] - timedelta(minutes=30)).isoformat())


def test_why_shows_confidence_reply_and_both_sides(world):
    tickets = {t["subject"]: t for t in json.loads(cli(world, "tickets", "list", "--json"))}
    central = json.loads(cli(world, "why", str(tickets["NOUSERTARBALL at ANALY_AGLT2"]["id"]), "--json"))
    late = json.loads(cli(world, "why", str(tickets["failures yesterday"]["id"]), "--json"))
    user = json.loads(cli(world, "why", str(tickets["KeyError in my code"]["id"]), "--json"))
    assert central["confidence"] >= 0.8 > late["confidence"] and "resubmit" in central["reply"]
    assert any("ANALY_AGLT2 was among the queues it hit" in d for d in central["details"])
    assert any(d.startswith("points away from the site: ANALY_FZK passed") for d in user["details"])
    text = cli(world, "why", str(tickets["stage-in errors at ANALY_MWT2_UCORE"]["id"]))
    assert "points at the site: ANALY_MWT2_UCORE was degraded" in text and "reply: " in text


def test_the_list_shows_how_sure_each_verdict_is(world):
    table = cli(world, "tickets", "list")
    assert "Sure" in table and "90%" in table and "40%" in table
