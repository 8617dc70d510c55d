"""Tickets end to end: import the sample archive, link it to what the robot saw, answer `why`."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from datetime import timedelta

import pytest
from click.testing import CliRunner

from blacklist.engine import ExclusionEngine
from blacklist.policies import Policy
from blacklist.settings import BlacklistSettings
from robot.cli import main
from robot.cli.demo import ticket_plan
from robot.clock import ManualClock
from robot.classify import load_table
from robot.tickets import sample
from robot.tickets.ingest import import_demo_tickets
from robot.tickets.sample import write_sample_mbox
from tests.fakes import T0, ScriptedGrid, make_robot, templates
from tests.panda_fake import FakePanda

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
    return {"config": str(config), "archive": str(archive), "messages": count, "grid": grid, "robot": robot,
            "clock": clock, "path": tmp_path}


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
    # plain words for the shifter, said once; the policy's own reason only as a detail line
    text = cli(world, "why", f"ticket:{mwt2['id']}")
    first, details = text.splitlines()[0], text.splitlines()[1:]
    assert ": site: ANALY_MWT2_UCORE was degraded from " in first and "the site:" not in first
    assert "site-class failures (STAGEINFAILED)" in first and "CUSUM" not in first and "CUSUM" not in answer["reply"]
    assert [line for line in details if "CUSUM" in line] == [line for line in details if line.startswith("  policy: ")]
    assert any(line.startswith("  policy: ANALY_MWT2_UCORE: ") for line in details)
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


def test_the_demo_s_own_tickets_get_site_for_the_broken_queue_and_not_site_for_a_healthy_one(world):
    end = world["clock"].now()
    with world["robot"].sessions() as session:
        broken, healthy = import_demo_tickets(session, world["robot"].config, load_table(), world["path"] / "demo.mbox",
                                              "ANALY_MWT2_UCORE", "ANALY_FZK", end - timedelta(minutes=3),
                                              end - timedelta(minutes=3), end)
        session.commit()
    assert broken.verdict == "site" and "ANALY_MWT2_UCORE" in broken.verdict_reason
    assert healthy.verdict == "not_site" and "ANALY_FZK passed" in healthy.verdict_reason
    answer = json.loads(cli(world, "why", str(healthy.id), "--json"))
    assert answer["confidence"] >= 0.7 and "ANALY_FZK" in answer["reply"]
    assert any(line.startswith("points away from the site: ANALY_FZK passed") for line in answer["details"])


def test_the_demo_dates_its_tickets_after_what_they_are_about_however_slow_the_run(tmp_path):
    """A slow run: a healthy queue's tests end one every 6 minutes, so its 5th ends 29 minutes in. The demo's
    tickets are dated after the robot's exclusion and after that 5th test (`ticket_plan`), so the verdicts are
    site and not the site; dated at fixed shares of the run they found only 4 tests there: unknown."""
    clock = ManualClock(T0)
    queues = {"ANALY_MWT2_UCORE": ("MWT2", "US"), "ANALY_FZK": ("FZK-LCG2", "DE"), "ANALY_DESY-HH": ("DESY-HH", "DE")}
    grid = ScriptedGrid(clock, queues)
    robot = make_robot(tmp_path, grid, templates({"name": "AFT"}))
    # the pace of a stable queue's tests is not this test's subject: every healthy test is followed by the next
    settings = BlacklistSettings.model_validate({"default": {"stable_gap": "0s"}})
    robot.evaluators.append(ExclusionEngine(Policy(settings, ("AFT",)), grid))
    robot.run_once(clock.now())
    waited = []
    for minute in range(1, 61):
        for queue in queues:
            for pid in grid.in_queue(queue):
                if queue == "ANALY_MWT2_UCORE":
                    grid.finish(pid, wall=50, pilot_error_code=1099, pilot_error_diag="Get error: stage-in failed")
                elif minute % 6 == 0:
                    grid.finish(pid, wall=50)
        clock.advance(timedelta(minutes=1))
        robot.run_once(clock.now())
        with robot.sessions() as session:
            plan = ticket_plan(session, "ANALY_MWT2_UCORE", ["ANALY_MWT2_UCORE"])
        if plan.missing() is None:
            break
        waited.append(plan.missing())
    assert waited[0].startswith("the demo's tickets wait for ") and "5 finished tests at a healthy queue" in waited[-1]
    assert plan.healthy == "ANALY_DESY-HH" and plan.healthy_from == T0 + timedelta(minutes=29)  # the 5th test ended 29 min in
    assert plan.broken_from is not None and plan.broken_from < plan.healthy_from
    end = clock.now()
    with robot.sessions() as session:
        broken, healthy = import_demo_tickets(session, robot.config, load_table(), tmp_path / "demo.mbox", plan.broken,
                                              plan.healthy, plan.broken_from, plan.healthy_from, end)
        session.commit()
    assert (broken.verdict, healthy.verdict) == ("site", "not_site"), (broken.verdict_reason, healthy.verdict_reason)
    assert broken.first_message_at >= plan.broken_from and healthy.first_message_at >= plan.healthy_from
    assert "ANALY_DESY-HH passed 5 of 5 tests" in healthy.verdict_reason


def test_tickets_sample_writes_the_archive(tmp_path, world):
    target = tmp_path / "sample.mbox"
    out = cli(world, "tickets", "sample", str(target))
    assert target.stat().st_size > 10_000 and f"tickets import {target}" in out
    # the command it prints runs as printed (not a bare `healthrobot` that is not on the PATH)
    printed = out.split("import them with: ", 1)[1].strip()
    pasted = subprocess.run(printed, shell=True, capture_output=True, text=True, timeout=300)
    assert pasted.returncode == 0 and f"{target}: 25 threads" in pasted.stdout, (printed, pasted.stderr)
    refused = CliRunner().invoke(main, ["--config", world["config"], "tickets", "sample", str(target)])
    assert refused.exit_code == 1 and "--force" in refused.output
    script = tmp_path / "by_script.mbox"
    subprocess.run([sys.executable, str(Path(sample.__file__)), str(script)], check=True, capture_output=True)
    assert script.read_bytes().count(b"\nFrom ") + 1 == world["messages"]


@pytest.mark.parametrize("make, expected", [
    (lambda p: (p / "random.bin").write_bytes(bytes(range(256)) * 40), "not an mbox file"),
    (lambda p: (p / "README.md").write_text("# Queue Health Robot\n\nA robot.\n"), "not an mbox file"),
    (lambda p: (p / "empty").mkdir(), "not a Maildir folder"),
    (lambda p: (p / "wrong" / "cur").mkdir(parents=True), "new/ missing"),
])
def test_a_file_that_is_not_a_mailbox_is_a_one_line_error(tmp_path, world, make, expected):
    make(tmp_path)
    path = next(tmp_path.iterdir())
    result = CliRunner().invoke(main, ["--config", world["config"], "tickets", "import", str(path)])
    assert result.exit_code == 1 and expected in result.output and str(path) in result.output
    assert "Errno" not in result.output and len(result.output.strip().splitlines()) == 1


def test_an_empty_maildir_and_an_empty_mbox_import_nothing(tmp_path, world):
    for sub in ("cur", "new", "tmp"):
        (tmp_path / "box" / sub).mkdir(parents=True)
    (tmp_path / "empty.mbox").write_bytes(b"")
    for source in ("box", "empty.mbox"):
        assert ": 0 threads" in cli(world, "tickets", "import", str(tmp_path / source))


def _mail(subject: str, body: str, when, n: int, sender: str = "user@example.org"):
    return sample._make(subject, sender, sample.SUPPORT, when, f"pasted{n}@example.org", body, False, "", "", None, [])


def test_pasted_user_jobs_are_asked_of_panda_once_and_their_errors_are_evidence(world, tmp_path):
    """With the PanDA backend, users' jobs the robot never ran are looked up with one batched call
    (panda-client against a server speaking its wire format), and how they failed weighs in."""
    fake = FakePanda()
    try:
        user_error = fake.add_job(computingSite="ANALY_FZK", jobStatus="failed", exeErrorCode=65,
                                  exeErrorDiag="transformation exit code 65", pilotErrorCode=0)
        site_error = fake.add_job(computingSite="ANALY_BNL_LONG", jobStatus="failed", pilotErrorCode=1099,
                                  pilotErrorDiag="Get error: Failed to stage in")
        config = tmp_path / "panda.yaml"
        config.write_text(f"data_dir: {world['path']}\ntickets: {{support_address: atlas-support@example.org}}\n"
                          f"backend: {{kind: panda, panda: {{url: '{fake.url}', auth: none}}}}\n")
        now = world["clock"].now()
        archive = tmp_path / "pasted.mbox"
        sample.write_messages(archive, [
            _mail("my jobs fail", f"Hi, my job https://bigpanda.cern.ch/job?pandaid={user_error} failed, why?", now, 1),
            _mail("stage-in trouble", f"job?pandaid={site_error} failed, is it the site?", now, 2)])
        result = CliRunner().invoke(main, ["--config", str(config), "tickets", "import", str(archive), "--json"])
        assert result.exit_code == 0, result.output
        assert [sorted(c.body["job_ids"]) for c in fake.calls("job/get_description")] == [sorted([user_error, site_error])]
        tickets = {t["subject"]: t for t in json.loads(cli(world, "tickets", "list", "--json"))}
        user, site = tickets["my jobs fail"], tickets["stage-in trouble"]
        assert user["verdict"] == "not_site" and "ANALY_FZK passed" in user["verdict_reason"]
        assert any("user error" in line for line in user["evidence"]["against_site"])
        assert site["verdict"] == "site" and "PanDA" in site["verdict_reason"]
        # a reply re-extracts the thread: what PanDA said is kept, not asked again
        sample.write_messages(archive, [_mail("Re: my jobs fail", f"still failing: pandaid={user_error}", now, 3)])
        assert CliRunner().invoke(main, ["--config", str(config), "tickets", "import", str(archive)]).exit_code == 0
        assert len(fake.calls("job/get_description")) == 1
    finally:
        fake.stop()
