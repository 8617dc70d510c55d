"""The exclusion policies and the safety rules, as pure functions over plain values.

No database and no clock: every test builds `Result` and `QueueView` values with fixed UTC times.
Result patterns are written newest first, one letter per job: F failed, C completed.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from unittest.mock import patch

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from blacklist import hammercloud, safety, sequential, userjobs
from blacklist.differential import Spread
from blacklist.model import Action, Decision, QueueView, Result, by_template, evidence_of, failed_codes
from blacklist.policies import Policy
from blacklist.settings import BlacklistSettings, HammerCloudSettings, SafetySettings, SequentialSettings
from robot.durations import format_duration
from robot.userjobs import StoredHour

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
MIN = timedelta(minutes=1)
HOUR = timedelta(hours=1)
_ids = itertools.count(1000)

HC = HammerCloudSettings()
SEQ = SequentialSettings()
SAFE = SafetySettings()
W = sequential.Weights.of(SEQ)


# -- builders ------------------------------------------------------------------------------------

def results(template: str, pattern: str, *, newest: datetime = NOW - 5 * MIN, step: timedelta = 10 * MIN,
            error_class: str | None = "site", classes: tuple[str | None, ...] | None = None) -> list[Result]:
    """One template's results, newest first: pattern[i] ended at newest - i * step.

    Failures get `error_class`, or cycle through `classes` when given.
    """
    cycle = itertools.cycle(classes) if classes else itertools.repeat(error_class)
    out = []
    for i, letter in enumerate(pattern):
        assert letter in "FC", pattern
        failed = letter == "F"
        klass = next(cycle) if failed else None
        out.append(Result(next(_ids), template, newest - i * step, failed, klass,
                          f"ERR_{klass}".upper() if failed else None, 1000 + i if failed else None))
    return out


def view(name: str = "ANALY_A", *res: list[Result], site: str | None = None, cloud: str = "DE",
         status: str = "online", **kw) -> QueueView:
    rs = tuple(sorted((r for rs in res for r in rs), key=lambda r: r.end_time, reverse=True))
    return QueueView(name=name, site=site or f"SITE-{name}", cloud=cloud, status=status, results=rs, **kw)


def ids(rs) -> set[int]:
    return {r.panda_id for r in rs}


def evidence_ids(decision: Decision) -> set[int]:
    return {j["panda_id"] for j in decision.evidence["jobs"]}


# HammerCloud truth tables use templates T1..Tn; mixed error classes on purpose (every failure counts).
MIXED = ("user", "central", "site", "unknown", None)


def hc_results(*patterns: str, **kw) -> tuple[list[str], list[Result]]:
    templates = [f"T{i + 1}" for i in range(len(patterns))]
    rs = [r for t, p in zip(templates, patterns) for r in results(t, p, classes=MIXED, **kw)]
    return templates, rs


# ================================================================================================
# 1. HammerCloud's rules
# ================================================================================================

L1F3, L3F1, L2P1 = "LastOneFromThree", "LastThreeFromOne", "LastTwoPlusOne"


@pytest.mark.parametrize("patterns,expected", [
    # three critical templates
    (("F", "F", "F"), [L1F3]),
    (("FC", "FCC", "F"), [L1F3]),
    (("F", "F", "C"), []),  # latest failed in only 2 templates
    (("F", "F", ""), []),  # a template without results is not a failure
    (("FFF", "C", "C"), [L3F1]),
    (("C", "FFFC", "CF"), [L3F1]),
    (("FCF", "C", "C"), []),  # not 3 in a row
    (("FFCFF", "C", "C"), []),
    (("CFFF", "C", "C"), []),  # the newest completed
    (("FF", "FF", "C"), [L2P1]),  # last 2 failed in 2 templates
    (("FF", "F", "C"), [L2P1]),  # last 2 in one, last 1 in another
    (("C", "FFC", "FC"), [L2P1]),
    (("FF", "C", "C"), []),
    (("FF", "CF", "CF"), []),  # the others' failures are not their latest
    (("FFF", "FF", "F"), [L1F3, L3F1, L2P1]),
    (("FFF", "F", "C"), [L3F1, L2P1]),
    (("FF", "FF", "FF"), [L1F3, L2P1]),
    (("CFF", "CFF", "CFF"), []),
    (("C", "C", "C"), []),
    # two critical templates
    (("FF", "FF"), [L2P1]),
    (("FF", "F"), [L2P1]),
    (("FC", "FF"), [L2P1]),
    (("F", "F"), []),  # LastOneFromThree needs 3 templates
    (("FFF", "C"), [L3F1]),
    (("FFF", "FFF"), [L3F1, L2P1]),
    (("FF", "C"), []),
    (("CF", "FF"), []),
    (("FCF", "FCF"), []),
])
def test_hammercloud_rules_truth_table(patterns, expected):
    templates, rs = hc_results(*patterns)
    fired = hammercloud.fired_rules(by_template(tuple(rs), templates))
    assert [name for name, _ in fired] == expected
    for _, jobs in fired:
        assert jobs and all(r.failed for r in jobs)


@pytest.mark.parametrize("patterns,rule,expected", [
    (("F", "F", "F", "C"), L1F3, {("T1", 0), ("T2", 0), ("T3", 0)}),
    (("C", "FFFF", "C"), L3F1, {("T2", 0), ("T2", 1), ("T2", 2)}),
    (("FF", "C", "F"), L2P1, {("T1", 0), ("T1", 1), ("T3", 0)}),
    (("C", "FF", "FF"), L2P1, {("T2", 0), ("T2", 1), ("T3", 0), ("T3", 1)}),
])
def test_hammercloud_rules_name_the_failed_jobs_that_fire_them(patterns, rule, expected):
    templates, rs = hc_results(*patterns)
    grouped = by_template(tuple(rs), templates)
    jobs = dict(hammercloud.fired_rules(grouped))[rule]
    assert ids(jobs) == {grouped[t][i].panda_id for t, i in expected}


@pytest.mark.parametrize("klass", ["user", "central", "unknown", "site", None])
def test_hammercloud_counts_every_failure_whatever_its_class(klass):
    rs = results("T1", "FFF", error_class=klass) + results("T2", "C")
    decision = hammercloud.decide(view("ANALY_A", rs), ["T1", "T2"], HC, NOW)
    assert decision.action is Action.EXCLUDE
    assert L3F1 in decision.reason


def test_hammercloud_ignores_results_older_than_its_window():
    old = results("T1", "FF", newest=NOW - 10 * MIN, step=HOUR)  # 10 min and 70 min ago
    out_of_window = results("T1", "F", newest=NOW - HC.window - MIN)
    assert hammercloud.decide(view("ANALY_A", old, out_of_window), ["T1"], HC, NOW).action is Action.KEEP
    in_window = results("T1", "F", newest=NOW - HC.window + MIN)
    assert hammercloud.decide(view("ANALY_A", old, in_window), ["T1"], HC, NOW).action is Action.EXCLUDE


def test_hammercloud_ignores_templates_that_are_not_critical():
    rs = results("T1", "C") + results("OTHER", "FFFF")
    assert hammercloud.decide(view("ANALY_A", rs), ["T1", "T2"], HC, NOW).action is Action.KEEP


def test_hammercloud_excludes_an_online_queue_naming_rules_and_failed_jobs():
    templates, rs = hc_results("FF", "F", "C")
    decision = hammercloud.decide(view("ANALY_A", rs), templates, HC, NOW)
    assert decision.action is Action.EXCLUDE and decision.changes_status
    assert decision.policy == "hammercloud"
    assert L2P1 in decision.reason and decision.evidence["rules"] == [L2P1]
    failed = {r.panda_id for r in rs if r.failed}
    assert evidence_ids(decision) == failed
    assert all(str(i) in decision.reason for i in failed)


def test_hammercloud_exclusion_lists_every_rule_that_fires():
    templates, rs = hc_results("FFF", "FF", "F")
    decision = hammercloud.decide(view("ANALY_A", rs), templates, HC, NOW)
    assert decision.action is Action.EXCLUDE
    assert decision.evidence["rules"] == [L1F3, L3F1, L2P1]
    assert all(rule in decision.reason for rule in (L1F3, L3F1, L2P1))
    assert evidence_ids(decision) == {r.panda_id for r in rs if r.failed}


def test_hammercloud_keeps_a_queue_when_nothing_fires():
    templates, rs = hc_results("FC", "CF", "FCF")
    decision = hammercloud.decide(view("ANALY_A", rs), templates, HC, NOW)
    assert decision.action is Action.KEEP and not decision.changes_status


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 240), st.sampled_from([True, True, False]), st.sampled_from(["T1", "T2", "T3", "OTHER"])),
                min_size=2, max_size=16),
       st.sampled_from([["T1"], ["T1", "T2"], ["T1", "T2", "T3"]]), st.sampled_from(["online", "excluded"]),
       st.one_of(st.none(), st.integers(0, 600)))
@example([(5, False, "T1"), (10, True, "T2"), (20, True, "T2"), (30, True, "T2")], ["T1", "T2"], "online", None)
def test_hammercloud_a_queue_no_rule_can_fire_at_is_decided_as_by_every_rule(drawn, templates, state, excluded_ago):
    # the shortcut (no critical template's newest job in the window failed) decides as the rules do
    rs = [Result(next(_ids), template, NOW - minutes * MIN, failed, *(("site", "ERR", 1099) if failed else ()))
          for minutes, failed, template in drawn]
    v = view("ANALY_A", rs, robot_state=state, last_robot_exclusion=None if excluded_ago is None else NOW - excluded_ago * MIN)
    with patch.object(hammercloud, "newest_failed", return_value=True):
        full = hammercloud.decide(v, templates, HC, NOW)
    assert hammercloud.decide(v, templates, HC, NOW) == full


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 240), st.sampled_from([True, False, False]), st.sampled_from(["T1", "T2", "OTHER"])),
                max_size=10),
       st.sampled_from(["online", "excluded"]), st.one_of(st.none(), st.integers(0, 600)), st.integers(0, 300))
def test_hammercloud_a_queue_quiet_on_its_results_alone_is_decided_as_by_every_rule(drawn, state, excluded_ago, later):
    # Policy.quiet (the engine's, its answer kept while the results are the same tuple) keeps a queue
    # the newest job of no critical template of which failed as the rules do, at this step or a later one
    rs = [Result(next(_ids), template, NOW - minutes * MIN, failed, *(("site", "ERR", 1099) if failed else ()))
          for minutes, failed, template in drawn]
    v = view("ANALY_A", rs, robot_state=state, last_robot_exclusion=None if excluded_ago is None else NOW - excluded_ago * MIN)
    policy = Policy(BlacklistSettings(policy="hammercloud"), ("T1", "T2"))
    kept: dict = {}
    quiet = policy.quiet(v, kept)
    assert policy.quiet(replace(v, waiting_since=(NOW,)), kept) == quiet  # the kept answer, for a new view
    if quiet is not None:
        assert quiet == policy.decide(v, NOW + later * MIN, 0) and quiet.reason == hammercloud.QUIET
    newest: dict[str, Result] = {}
    for result in v.results:  # newest first
        newest.setdefault(result.template, result)
    assert (quiet is None) == (state == "excluded" or any(newest[t].failed for t in ("T1", "T2") if t in newest))


@pytest.mark.parametrize("ago,action", [(5 * HOUR, Action.KEEP), (7 * HOUR, Action.EXCLUDE)])
def test_hammercloud_reexclusion_cooldown(ago, action):
    templates, rs = hc_results("FFF", "C")
    decision = hammercloud.decide(view("ANALY_A", rs, last_robot_exclusion=NOW - ago,
                                       last_robot_inclusion=NOW - ago + HOUR), templates, HC, NOW)
    assert decision.action is action
    if action is Action.KEEP:
        assert L3F1 in decision.reason and "excluded less than 6h ago" in decision.reason


def test_hammercloud_excluded_queue_still_failing_is_kept():
    templates, rs = hc_results("FF", "FF")
    decision = hammercloud.decide(view("ANALY_A", rs, status="brokeroff", robot_state="excluded",
                                       excluded_by_robot=True), templates, HC, NOW)
    assert decision.action is Action.KEEP and "still failing" in decision.reason


def test_hammercloud_needs_jobs_in_every_template_before_reinclusion():
    templates, rs = hc_results("CC", "C", "CCC")
    decision = hammercloud.decide(view("ANALY_A", rs, status="brokeroff", robot_state="excluded",
                                       excluded_by_robot=True), templates, HC, NOW)
    assert decision.action is Action.NEEDS_JOBS
    assert "T2" in decision.reason and "T1" not in decision.reason and "T3" not in decision.reason


@pytest.mark.parametrize("patterns,action", [
    (("CC", "CC"), Action.INCLUDE),
    (("CCF", "CCFF", "CC"), Action.INCLUDE),  # only the last 2 matter
    (("CF", "CC"), Action.KEEP),
    (("FC", "CC"), Action.KEEP),
    (("CC", "CCC", "CF"), Action.KEEP),
])
def test_hammercloud_reinclusion_needs_the_last_two_completed_everywhere(patterns, action):
    templates, rs = hc_results(*patterns)
    decision = hammercloud.decide(view("ANALY_A", rs, status="brokeroff", robot_state="excluded",
                                       excluded_by_robot=True), templates, HC, NOW)
    assert decision.action is action
    if action is Action.INCLUDE:
        grouped = by_template(tuple(rs), templates)
        assert evidence_ids(decision) == {r.panda_id for t in templates for r in grouped[t][:2]}
    else:
        bad = [t for t, p in zip(templates, patterns) if "F" in p[:2]]
        assert all(t in decision.reason for t in bad)


# ================================================================================================
# 2. The sequential (default) policy
# ================================================================================================

def seq(pattern: str, state: str = "online", *, extra: list[Result] | tuple = (), recent_exclusions: int = 0,
        **kw) -> Decision:
    status = "brokeroff" if state == "excluded" else "online"
    v = view("ANALY_A", results("T1", pattern), list(extra), status=status,
             robot_state=state, excluded_by_robot=state == "excluded", **kw)
    return sequential.decide(v, SEQ, NOW, recent_exclusions)


def test_sequential_weights_with_default_settings():
    # one site failure makes a queue pending, two of different codes do not exclude it, three do;
    # two of one code rare elsewhere do
    assert 2 * W.failure < W.exclude_at <= 3 * W.failure
    assert W.repeat < W.exclude_at <= 2 * W.repeat
    assert 4 * -W.success < W.failure < 5 * -W.success  # five completed jobs reset one failure


def counted_ids(rs, grid=None, v=None) -> set[int]:
    items = sequential.counted(v or view("ANALY_A", rs), rs, SEQ, grid)
    return {c.result.panda_id for c in items if c.result.failed}


@pytest.mark.parametrize("klass", ["user", "central", "unknown", None])
@pytest.mark.parametrize("state", ["online", "pending"])
def test_sequential_without_a_grid_counts_only_site_class_failures(klass, state):
    # a queue judged alone, with no other queue to compare with: the error table decides
    rs = results("T1", "F" * 12, error_class=klass)
    assert counted_ids(rs) == set()
    assert sequential.cusum(sequential.counted(view("ANALY_A", rs), rs, SEQ, None), W) == (0.0, [])
    decision = sequential.decide(view("ANALY_A", rs, robot_state=state, state_since=NOW - 10 * MIN), SEQ, NOW)
    expected = Action.KEEP if state == "online" else Action.CLEAR
    assert decision.action is expected


def test_sequential_ignored_failures_do_not_break_a_site_failure_streak():
    rs = results("T1", "FFFFF", classes=("site", "user", "site", "central", "site"))
    decision = sequential.decide(view("ANALY_A", rs), SEQ, NOW)
    assert decision.action is Action.EXCLUDE
    assert evidence_ids(decision) == {r.panda_id for r in rs if r.error_class == "site"}


def test_sequential_one_site_failure_makes_an_online_queue_pending():
    rs = results("T1", "FCCC")
    decision = sequential.decide(view("ANALY_A", rs), SEQ, NOW)
    assert decision.action is Action.PEND and not decision.changes_status
    assert str(rs[0].panda_id) in decision.reason
    assert evidence_ids(decision) == {rs[0].panda_id}
    assert decision.evidence["cusum"] == pytest.approx(W.repeat, abs=0.01)  # its code's alternative


def test_sequential_healthy_queue_is_kept():
    decision = seq("CCCCCC")
    assert decision.action is Action.KEEP and decision.reason == "healthy"


@pytest.mark.parametrize("pattern", ["FFF", "FFCF", "FCFF", "FFFCCC"])
def test_sequential_site_failures_close_together_exclude(pattern):
    rs = results("T1", pattern)  # every failure with its own code
    decision = sequential.decide(view("ANALY_A", rs), SEQ, NOW)
    assert decision.action is Action.EXCLUDE and decision.changes_status
    assert decision.policy == "default"
    assert decision.evidence["cusum"] >= decision.evidence["exclude_at"]
    assert evidence_ids(decision) == {r.panda_id for r in rs if r.failed}


def test_sequential_two_site_failures_of_different_codes_are_not_enough():
    decision = seq("FF")
    assert decision.action is Action.PEND
    assert decision.evidence["cusum"] < decision.evidence["exclude_at"]


def same_code(rs: list[Result], code: int = 1099, klass: str | None = "site") -> list[Result]:
    return [replace(r, error_code=code, error_class=klass, error_name=f"E{code}") if r.failed else r for r in rs]


@pytest.mark.parametrize("pattern", ["FF", "FCF", "FCCF"])
def test_sequential_one_code_repeated_excludes(pattern):
    rs = same_code(results("T1", pattern))
    decision = sequential.decide(view("ANALY_A", rs), SEQ, NOW)
    assert decision.action is Action.EXCLUDE
    assert evidence_ids(decision) == {r.panda_id for r in rs if r.failed}


def test_sequential_spread_out_site_failures_do_not_exclude():
    pattern = "F" + "C" * 5 + "F" + "C" * 5 + "F"  # the same 3 failures as "FFF"
    rs = results("T1", pattern)
    score, behind = sequential.cusum(sequential.counted(view("ANALY_A", rs), rs, SEQ, None), W)
    assert score == pytest.approx(W.repeat) and ids(behind) == {rs[0].panda_id}
    decision = sequential.decide(view("ANALY_A", rs), SEQ, NOW)
    assert decision.action is not Action.EXCLUDE
    assert evidence_ids(decision) == {rs[0].panda_id}


def test_sequential_results_older_than_the_window_are_ignored():
    old = results("T1", "FFF", newest=NOW - SEQ.window - MIN)
    assert seq("CC", extra=old).action is Action.KEEP


def test_sequential_pending_queue_whose_probes_complete_is_cleared():
    decision = seq("CCCCCCCF", "pending", state_since=NOW - 50 * MIN)
    assert decision.action is Action.CLEAR and decision.evidence["cusum"] == 0


def test_sequential_pending_queue_in_doubt_waits():
    decision = seq("CCF", "pending", state_since=NOW - 30 * MIN)
    assert decision.action is Action.KEEP and "in doubt" in decision.reason


@pytest.mark.parametrize("pending_for,action", [(SEQ.max_pending + MIN, Action.CLEAR),
                                                (SEQ.max_pending - MIN, Action.KEEP)])
def test_sequential_pending_too_long_is_cleared(pending_for, action):
    decision = seq("CF", "pending", state_since=NOW - pending_for)
    assert decision.action is action
    if action is Action.CLEAR:
        assert f"no verdict within {format_duration(SEQ.max_pending)}: " in decision.reason and ":00:00" not in decision.reason


def test_sequential_pending_queue_confirmed_is_excluded():
    assert seq("FFF", "pending", state_since=NOW - 40 * MIN).action is Action.EXCLUDE


# -- stalls: a queue that starts nothing ---------------------------------------------------------

def stalled_view(waiting: list[timedelta], started: timedelta, state: str = "pending") -> QueueView:
    """A queue whose last job started `started` ago (its jobs completed), with jobs waiting these long."""
    return view("ANALY_A", results("T1", "CC", newest=NOW - started + 40 * MIN), robot_state=state,
                state_since=NOW - 10 * MIN, last_start=NOW - started, waiting_since=tuple(NOW - w for w in waiting))


def test_sequential_probes_at_a_stalled_queue_count_in_proportion_to_their_wait():
    # one job has waited 50 minutes at a queue where nothing started for an hour: it stalled, and the
    # six probe jobs sent then have waited 10 minutes without starting either. 50 + 6 * 10 minutes of
    # waiting in all, each stall_after (45 min) of it one failure: excluded, not 35 minutes later
    # when the probes have each waited stall_after of their own
    decision = sequential.decide(stalled_view([50 * MIN] + [10 * MIN] * 6, HOUR), SEQ, NOW)
    assert decision.action is Action.EXCLUDE and "STALLED" in decision.reason
    assert decision.evidence["cusum"] == pytest.approx(W.repeat * 110 / 45, abs=0.01)
    assert sequential.decide(stalled_view([50 * MIN], HOUR), SEQ, NOW).action is Action.KEEP  # in doubt


def test_sequential_a_wait_counts_only_while_nothing_starts_and_once_the_queue_stalled():
    assert sequential.stalled(stalled_view([40 * MIN] * 9, HOUR), SEQ, NOW) == []  # none waited stall_after
    assert sequential.stalled(stalled_view([50 * MIN] * 2, 30 * MIN), SEQ, NOW) == []  # a job started since
    # the job waiting two hours counts from the last start, 50 minutes ago
    waits = sequential.stalled(stalled_view([2 * HOUR, 5 * MIN], 50 * MIN), SEQ, NOW)
    assert [round(45 * c.code_weight / W.repeat) for c in waits] == [50, 5]
    assert [round(45 * c.any_weight / W.failure) for c in waits] == [50, 5]


# -- differential evidence: the other sites' results ------------------------------------------

def healthy_grid(n: int = 8, pattern: str = "CCCCCC") -> list[QueueView]:
    """n queues at n other sites whose jobs of the same template complete."""
    return [view(f"ANALY_H{i}", results("T1", pattern)) for i in range(n)]


def grid_of(views: list[QueueView]) -> Spread:
    return Spread.of(views, SEQ.spread_window, SEQ.spread_sites, SEQ.spread_fraction)


def decide_in(v: QueueView, others: list[QueueView]) -> Decision:
    return sequential.decide(v, SEQ, NOW, 0, grid_of([v, *others]))


@pytest.mark.parametrize("klass", ["unknown", None])
def test_differential_a_code_failing_at_one_queue_only_points_at_its_site_whatever_its_class(klass):
    # a site fault that reports an unknown-class code (or one the table lacks), while the template completes elsewhere
    rs = same_code(results("T1", "FFCF"), code=1201, klass=klass)
    lone = view("ANALY_A", rs)
    assert sequential.decide(lone, SEQ, NOW).action is Action.KEEP  # the class table alone ignores it
    decision = decide_in(lone, healthy_grid())
    assert decision.action is Action.EXCLUDE
    assert evidence_ids(decision) == {r.panda_id for r in rs if r.failed}
    # the table's class still weighs: two such failures make the queue pending, not excluded,
    # where two of a site-class code rare elsewhere exclude it
    two = rs[:2]
    assert decide_in(view("ANALY_A", two), healthy_grid()).action is Action.PEND
    site = same_code(two, code=1201, klass="site")
    assert decide_in(view("ANALY_A", site), healthy_grid()).action is Action.EXCLUDE


def test_differential_user_class_failures_add_to_a_case_against_the_site_but_never_open_one():
    # user errors at one queue only: alone they are no case (a user wave on a few queues looks the same)
    user = same_code(results("T1", "FFFFFF"), code=1305, klass="user")
    assert decide_in(view("ANALY_A", user), healthy_grid()).action is Action.KEEP
    # after a site-class failure they count as much as one (a site fault reporting user codes part of the time)
    site_first = same_code(results("T1", "F", newest=NOW - 30 * MIN), code=1099)
    mixed = view("ANALY_A", site_first, user[:2])
    decision = decide_in(mixed, healthy_grid())
    assert decision.action is Action.EXCLUDE
    assert evidence_ids(decision) == ids(site_first + user[:2])
    # the class table alone would have kept it in doubt
    assert sequential.decide(mixed, SEQ, NOW).action is Action.PEND


def test_differential_central_class_failures_at_one_queue_add_to_a_case_but_never_open_one():
    # a central outage seen first at one queue (its probes fail at once, the others were not tested
    # again yet): no case against the site, however many
    central = same_code(results("T1", "FFFFFF"), code=1324, klass="central")
    assert decide_in(view("ANALY_A", central), healthy_grid()).action is Action.KEEP
    # after a site-class failure they count as one (a site fault reporting a central code too)
    site_first = same_code(results("T1", "F", newest=NOW - 30 * MIN), code=1099)
    decision = decide_in(view("ANALY_A", site_first, central[:2]), healthy_grid())
    assert decision.action is Action.EXCLUDE and evidence_ids(decision) == ids(site_first + central[:2])


def test_differential_a_crash_only_fault_is_detected():
    # a fault whose only symptom is the payload dying (1203, class unknown): two crashes at one queue
    rs = [Result(i, "T1", NOW - i * 10 * MIN, True, "unknown", "PAYLOADSIGSEGV", 1203) for i in (1, 2, 3)]
    decision = decide_in(view("ANALY_A", rs), healthy_grid())
    assert decision.action is Action.EXCLUDE and "PAYLOADSIGSEGV" in decision.reason


def test_differential_the_same_code_at_many_sites_at_once_points_at_a_shared_cause():
    # a central outage that shows a site-class code (1099) at many queues at the same time
    outage = [view(f"ANALY_Q{i}", same_code(results("T1", "FFFC"))) for i in range(SEQ.spread_sites + 1)]
    grid = grid_of(outage + healthy_grid())
    for v in outage:
        assert sequential.counted(v, list(v.results), SEQ, grid) == [
            sequential.Counted(r) for r in v.results if not r.failed]
        assert sequential.decide(v, SEQ, NOW, 0, grid).action is Action.KEEP
    # the same failures at fewer other sites than spread_sites still point at each site
    few = outage[:SEQ.spread_sites]
    assert sequential.decide(few[0], SEQ, NOW, 0, grid_of(few + healthy_grid())).action is Action.EXCLUDE


def test_differential_failures_at_other_sites_long_before_are_not_at_once():
    others = [view(f"ANALY_Q{i}", same_code(results("T1", "F", newest=NOW - 4 * HOUR))) for i in range(5)]
    rs = same_code(results("T1", "F"))
    assert grid_of([view("ANALY_A", rs), *others]).widespread(rs[0], "SITE-ANALY_A") is False
    at_once = [view(f"ANALY_Q{i}", same_code(results("T1", "F", newest=NOW - 50 * MIN))) for i in range(5)]
    assert grid_of([view("ANALY_A", rs), *at_once]).widespread(rs[0], "SITE-ANALY_A") is True


def test_differential_queues_of_one_site_count_as_one_site():
    # correlated faults at the queues of one site (shared storage) are that site's, not a shared cause
    site = [view(f"ANALY_S{i}", same_code(results("T1", "FF")), site="SITE-S") for i in range(5)]
    grid = grid_of(site + healthy_grid())
    assert all(sequential.decide(v, SEQ, NOW, 0, grid).action is Action.EXCLUDE for v in site)


def test_differential_a_code_common_everywhere_weighs_less():
    # noise: one code fails now and then at every site; at one queue it weighs by its rate elsewhere
    noisy = [view(f"ANALY_N{i}", same_code(results("T1", "C" * 9 + "F", newest=NOW - 3 * HOUR), 1305, "site"))
             for i in range(10)]
    grid = grid_of(noisy)
    rate = grid.baseline(1305, "SITE-ANALY_A")
    assert rate == pytest.approx(0.1)
    assert W.of_code(SEQ, rate) == pytest.approx(math.log(SEQ.p_broken / 0.1))
    assert W.of_code(SEQ, rate) < W.repeat
    rs = same_code(results("T1", "FF"), 1305, "site")
    assert sequential.decide(view("ANALY_A", rs), SEQ, NOW, 0, grid_of([view("ANALY_A", rs), *noisy])).action \
        is Action.PEND



CLASSES = ("site", "user", "central", "unknown", None)


@st.composite
def queues_of_a_grid(draw) -> list[QueueView]:
    """A few online queues (some sharing a site) with results of a few codes, classes and templates, some
    older than the window, some re-included within it."""
    views = []
    for i in range(draw(st.integers(1, 7))):
        drawn = draw(st.lists(st.tuples(st.integers(0, 420), st.booleans(), st.integers(0, 4), st.sampled_from(["T1", "T2"])),
                              max_size=14))
        rs = [Result(next(_ids), template, NOW - minutes * MIN, failed, *((CLASSES[code], f"E{code}", 1000 + code)
                                                                            if failed else ()))
              for minutes, failed, code, template in drawn]
        included = draw(st.one_of(st.none(), st.integers(0, 400)))
        views.append(view(f"ANALY_{i}", rs, site=f"SITE-{draw(st.integers(0, 3))}",
                          last_robot_inclusion=None if included is None else NOW - included * MIN))
    return views


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(queues_of_a_grid(), st.integers(0, 180), st.booleans())
def test_sequential_a_queue_whose_failures_cannot_add_up_is_decided_as_by_the_full_weighing(views, later, compare):
    # `settles` answers "healthy" without comparing with the grid: whatever the grid says, at this step
    # or a later one (fewer results in the window), as weighing every result does
    grid = grid_of(views) if compare else None
    for v in views:
        with patch.object(sequential, "settles", return_value=False):
            full = sequential.decide(v, SEQ, NOW + later * MIN, 0, grid)
        assert sequential.decide(v, SEQ, NOW + later * MIN, 0, grid) == full
        if sequential.settles(v.results, W):
            assert full.action is Action.KEEP and full.reason == sequential.HEALTHY



def test_sequential_a_user_class_failure_in_an_open_case_is_not_forgotten_by_the_shortcut():
    # a site-class failure opens "any code" (2.8) and its code's alternative (4.2); a user-class one then
    # adds 2.8 to "any code" alone: 8 completed jobs (-0.66 each) close the code's case, not that one
    rs = results("T1", "C" * 8 + "FF", classes=("user", "site"))
    decision = decide_in(view("ANALY_A", rs), healthy_grid())
    assert decision.action is Action.PEND  # the user-class failure is still behind it
    assert decision.evidence["cusum"] == pytest.approx(2 * W.failure + 8 * W.success, abs=0.01)
    assert not sequential.settles(tuple(rs), W)


# -- re-inclusion: the queue was excluded 2 h ago, with the failures that excluded it before that --
EXCLUDED_AT = NOW - 2 * HOUR
BEFORE = results("T1", "FFF", newest=EXCLUDED_AT - 5 * MIN)
NEED = math.ceil(math.log(SEQ.relapse_risk) / math.log(1 - SEQ.weak_fault))


def reinclude(pattern: str, recent_exclusions: int = 0, extra: list[Result] | tuple = BEFORE) -> Decision:
    v = view("ANALY_A", results("T1", pattern, step=5 * MIN), list(extra), status="brokeroff",
             robot_state="excluded", excluded_by_robot=True, state_since=EXCLUDED_AT,
             last_robot_exclusion=EXCLUDED_AT)
    return sequential.decide(v, SEQ, NOW, recent_exclusions)


def test_sequential_reinclusion_streak_follows_the_relapse_risk():
    assert NEED == 13  # a 30 % fault shows 13 good jobs in a row less than 1 % of the time
    assert (1 - SEQ.weak_fault) ** NEED < SEQ.relapse_risk < (1 - SEQ.weak_fault) ** (NEED - 1)


@pytest.mark.parametrize("pattern,recent,action", [
    ("C" * NEED, 0, Action.INCLUDE),
    ("C" * NEED + "F", 0, Action.INCLUDE),  # the failure is older than the streak
    ("C" * (NEED - 1), 0, Action.NEEDS_JOBS),
    ("CCC", 0, Action.NEEDS_JOBS),  # a lucky streak is not enough
    ("CCFC", 0, Action.NEEDS_JOBS),
    ("", 0, Action.NEEDS_JOBS),
    ("F" + "C" * NEED, 0, Action.KEEP),
    ("F", 0, Action.KEEP),
    ("C" * NEED, 1, Action.INCLUDE),  # hysteresis: 2 x include_successes, fewer than the streak
    ("C" * NEED, 4, Action.NEEDS_JOBS),  # 5 x include_successes = 15
    ("C" * 15, 4, Action.INCLUDE),
])
def test_sequential_reinclusion_needs_completed_jobs_in_a_row(pattern, recent, action):
    decision = reinclude(pattern, recent)
    assert decision.action is action
    need = max(NEED, SEQ.include_successes * (1 + recent))
    if action is Action.NEEDS_JOBS:
        assert f"of {need}" in decision.reason
    if action is Action.INCLUDE:
        assert len(decision.evidence["jobs"]) == need
        assert all(not j["failed"] for j in decision.evidence["jobs"])


def test_sequential_reinclusion_refused_while_the_fault_signature_persists():
    # a partial fault (40 % of jobs fail with one code): streaks of good jobs come and go; each
    # streak shorter than the one the relapse risk asks for leaves the queue out
    pattern = "CCCCCCFCCCCFCCCCCCCCF"  # newest first: the fault still shows every few jobs
    rs = same_code(results("T1", pattern, step=5 * MIN), 1306)
    decision = reinclude(pattern="", extra=rs + same_code(BEFORE, 1306))
    assert decision.action is Action.NEEDS_JOBS and f"6 of {NEED}" in decision.reason
    # once the code is gone for long enough, the queue comes back
    clean = results("T1", "C" * NEED, newest=NOW, step=MIN)
    assert reinclude(pattern="", extra=clean + rs + same_code(BEFORE, 1306)).action is Action.INCLUDE


def test_sequential_strong_fault_seen_long_needs_the_streak_of_its_own_rate():
    # a fault failing nearly every job for long: the fault as seen (~95 %) asks for fewer than the
    # weak fault bound, so the bound decides; a weaker one seen (20 %) asks for more
    assert sequential.streak_needed(sequential.counted(view("ANALY_A", BEFORE), BEFORE, SEQ, None), SEQ, 0) == NEED
    weak = same_code(results("T1", "FCCCCFCCCCF"), 1306)
    need = sequential.streak_needed(sequential.counted(view("ANALY_A", weak), weak, SEQ, None), SEQ, 0)
    share = (3 + SEQ.p_broken) / (10 + 2)
    assert need == math.ceil(math.log(SEQ.relapse_risk) / math.log(1 - share)) > NEED


def test_sequential_reinclusion_waits_while_the_excluding_code_fails_even_where_it_became_widespread():
    # a queue excluded for a stage-in fault (1099, rare elsewhere then); an hour later other sites
    # fail with 1099 too (their own faults, or noise), so its failures no longer count against the
    # site. It still fails with the code that excluded it: the fault's signature is not gone.
    excluded_for = same_code(BEFORE, 1099)
    since = results("T1", "C" * 6 + "F" + "C" * 2 + "F", step=5 * MIN)
    after = same_code(since, 1099)
    others = [view(f"ANALY_O{i}", same_code(results("T1", "FCFCFCFCFC", step=10 * MIN), 1099))
              for i in range(SEQ.spread_sites)]
    v = view("ANALY_A", after, excluded_for, status="brokeroff", robot_state="excluded", excluded_by_robot=True,
             state_since=EXCLUDED_AT, last_robot_exclusion=EXCLUDED_AT, excluded_for=frozenset({1099}))
    grid = grid_of([v, *others, *healthy_grid()])
    assert all(grid.widespread(r, v.site) for r in after if r.failed)  # none of them counts any more
    decision = sequential.decide(v, SEQ, NOW, 0, grid)
    assert decision.action is Action.NEEDS_JOBS and f"6 of {NEED}" in decision.reason
    # a code the exclusion did not name, failing everywhere, does not hold the queue back
    other_code = sequential.decide(replace(v, excluded_for=frozenset({1324})), SEQ, NOW, 0, grid)
    assert other_code.action is Action.INCLUDE and "8 test jobs" in other_code.reason


def test_sequential_reinclusion_counts_only_jobs_that_started_after_the_last_failure():
    # jobs that passed the broken step before the failure and ended after it say nothing of the fault's end
    failure = Result(next(_ids), "T1", NOW - 70 * MIN, True, "site", "STAGEINFAILED", 1099,
                     start_time=NOW - 80 * MIN)

    def completed(started_before: int) -> list[Result]:
        out = []
        for i in range(NEED):
            end = NOW - i * 4 * MIN
            start = failure.end_time - MIN if i >= NEED - started_before else end - 10 * MIN
            out.append(Result(next(_ids), "T1", end, False, start_time=start))
        return out

    for started_before, action in ((0, Action.INCLUDE), (1, Action.NEEDS_JOBS), (5, Action.NEEDS_JOBS)):
        decision = reinclude("", extra=[failure, *completed(started_before), *BEFORE])
        assert decision.action is action, started_before
        if action is Action.NEEDS_JOBS:
            assert f"{NEED - started_before} of {NEED}" in decision.reason


def test_sequential_reinclusion_is_not_held_back_by_noise_the_exclusion_did_not_name():
    # excluded for a stage-in fault (1151); afterwards the queue completes its jobs but for a user
    # error now and then, as every queue does, and one site-class failure of another code
    fault = same_code(BEFORE, 1151)
    user = same_code(results("T1", "F", newest=NOW - 33 * MIN, error_class="user"), 1305, "user")
    clean = results("T1", "C" * NEED, step=5 * MIN)

    def excluded(*rs: list[Result], signature: frozenset = frozenset({1151})) -> QueueView:
        return view("ANALY_A", *rs, status="brokeroff", robot_state="excluded", excluded_by_robot=True,
                    state_since=EXCLUDED_AT, last_robot_exclusion=EXCLUDED_AT, excluded_for=signature)

    # a user error alone is no case against the site, nor a relapse of a fault it did not report
    assert decide_in(excluded(fault, user, clean), healthy_grid()).action is Action.INCLUDE
    # nor is it part of the signature when it was behind the exclusion: users' own errors show at
    # every queue now and then (a healthy queue excluded on noise with a 1305 among it stayed out 28 h
    # in ddm_outage, seed 4, each 1305 breaking its streak and making the "fault" look 3 % strong)
    evidence = {"jobs": evidence_of([*fault, *user])}
    assert failed_codes(evidence) == {1151}
    # a site-class failure of another code breaks the streak, but the fault as seen is its own
    # failures', not diluted by that one two hours after them: the streak asked for stays
    late = same_code(results("T1", "F", newest=NOW - 2 * MIN), 1213)
    window = sequential.counted(excluded(fault, late, clean), [*fault, *late, *clean], SEQ, None)
    assert sequential.streak_needed(window, SEQ, 0, frozenset({1151})) == NEED
    assert sequential.streak_needed(window, SEQ, 0) > NEED  # read over all failures, the fault looks weaker


def test_sequential_reinclusion_ignores_failures_not_of_the_site():
    rs = results("T1", "C" * 6 + "F" + "C" * 7, classes=("user",), step=5 * MIN)
    decision = sequential.decide(view("ANALY_A", rs, BEFORE, status="brokeroff", robot_state="excluded",
                                      excluded_by_robot=True, state_since=EXCLUDED_AT), SEQ, NOW)
    assert decision.action is Action.INCLUDE


def test_sequential_freshly_reincluded_queue_is_not_reexcluded_for_old_failures():
    old_failures = results("T1", "FFF", newest=NOW - 40 * MIN)  # inside the 6 h window
    fresh = view("ANALY_A", old_failures, last_robot_inclusion=NOW - 30 * MIN)
    assert sequential.decide(fresh, SEQ, NOW).action is Action.KEEP
    # without the inclusion the same evidence excludes, and failures after the inclusion count
    assert sequential.decide(view("ANALY_A", old_failures), SEQ, NOW).action is Action.EXCLUDE
    new_failure = results("T1", "F", newest=NOW - 5 * MIN)
    again = view("ANALY_A", old_failures, new_failure, last_robot_inclusion=NOW - 30 * MIN)
    assert sequential.decide(again, SEQ, NOW).action is Action.PEND


def cad(*res: list[Result], **kw) -> sequential.Cadence:
    return sequential.cadence(view("ANALY_A", *res, **kw), SEQ, NOW)


def test_cadence_pending_queue_gets_probe_jobs():
    c = cad(results("T1", "F"), robot_state="pending", state_since=NOW - 5 * MIN)
    assert c.extra_jobs == SEQ.probes > 0 and c.gap == timedelta(0)


def test_cadence_a_doubt_sends_its_probes_once_and_more_only_while_they_fail():
    began = NOW - 30 * MIN
    back_good = results("T1", "CC", newest=NOW - 5 * MIN, step=5 * MIN)  # the probes' worth, both completed
    assert SEQ.probes == len(back_good)
    c = cad(results("T1", "F", newest=began - MIN), back_good, robot_state="pending", state_since=began)
    assert c.extra_jobs == 0 and c.gap == SEQ.stable_gap  # the doubt is waited out at the stable pace
    one_back = results("T1", "C", newest=NOW - 5 * MIN)
    assert cad(one_back, robot_state="pending", state_since=began).extra_jobs == SEQ.probes
    still_failing = results("T1", "FC", newest=NOW - 5 * MIN, step=5 * MIN)
    assert cad(still_failing, robot_state="pending", state_since=began).extra_jobs == SEQ.probes


def test_cadence_excluded_and_failing_queue_is_tested_slowly():
    c = cad(results("T1", "FFC"), status="brokeroff", robot_state="excluded", state_since=NOW - HOUR)
    assert c.gap == SEQ.broken_gap > timedelta(0) and c.extra_jobs == 0


def test_cadence_excluded_and_recovering_queue_is_confirmed_quickly():
    c = cad(results("T1", "CCF"), status="brokeroff", robot_state="excluded", state_since=NOW - HOUR)
    assert c.extra_jobs == SEQ.probes and c.gap == timedelta(0)


def test_cadence_excluded_queue_with_one_good_job_is_still_tested_slowly():
    c = cad(results("T1", "CFF"), status="brokeroff", robot_state="excluded", state_since=NOW - HOUR)
    assert c.extra_jobs == 0 and c.gap == SEQ.broken_gap


@pytest.mark.parametrize("since", [None, NOW - SEQ.stable_after, NOW - 30 * HOUR])
def test_cadence_long_stable_queue_gets_a_gap(since):
    c = cad(results("T1", "CCCC"), state_since=since)
    assert c.gap == SEQ.stable_gap and c.extra_jobs == 0


def test_cadence_queue_reincluded_recently_has_no_gap_but_a_cleared_doubt_keeps_it():
    # re-included less than stable_after ago: tested in full (a relapse is seen at once)
    back = NOW - SEQ.stable_after + MIN
    assert cad(results("T1", "CCC"), state_since=back, last_robot_inclusion=back) == sequential.Cadence()
    # a doubt cleared a minute ago: its probes settled it, the queue keeps its gap
    assert cad(results("T1", "CCC"), state_since=NOW - MIN, last_robot_inclusion=NOW - 3 * HOUR).gap == SEQ.stable_gap


def test_cadence_user_failures_do_not_unsettle_a_stable_queue():
    c = cad(results("T1", "FFC", error_class="user"), state_since=NOW - 30 * HOUR)
    assert c.gap == SEQ.stable_gap


def test_hammercloud_cadence_is_fixed_whatever_the_queue():
    from blacklist.policies import Policy
    from blacklist.settings import BlacklistSettings
    hc = Policy(BlacklistSettings(policy="hammercloud"), ("T1",))
    assert hc.cadence(view("ANALY_A", results("T1", "FFF"), robot_state="excluded"), NOW) == sequential.Cadence()
    slow = Policy(BlacklistSettings(policy="hammercloud", hammercloud=HammerCloudSettings(job_gap=HOUR)), ("T1",))
    assert slow.cadence(view("ANALY_A"), NOW).gap == HOUR
    assert hc.grid([view("ANALY_A")]) is None


def users_hour(start: datetime, ended: int, site_failures: int = 0, user_failures: int = 0) -> StoredHour:
    codes = tuple({"source": "pilot", "code": code, "name": name, "class": klass, "jobs": jobs}
                  for code, name, klass, jobs in ((1099, "STAGEINFAILED", "site", site_failures),
                                                  (1305, "PAYLOADEXECUTIONFAILURE", "user", user_failures)) if jobs)
    by_class = {"site": site_failures, "user": user_failures, "central": 0, "unknown": 0}
    return StoredHour("ANALY_A", start, ended, site_failures + user_failures, by_class, codes)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(["grow", "next", "drop", "same", "equal", "middle"]),
                          st.integers(1, 40), st.sampled_from([0, 0, 0, 2, 20]), st.sampled_from([0, 3])),
                min_size=1, max_size=30))
def test_users_hours_looked_at_step_by_step_are_judged_as_afresh(steps):
    # Policy.quiet keeps whether a queue's users' hours were inconclusive, and of hours that are those
    # kept but the newest (grown, or a new one after them, the oldest gone) looks only at the newest:
    # at every step its answer is that of userjobs.inconclusive on the hours as they are
    policy = Policy(BlacklistSettings(), ("T1",))
    s, at = policy.settings.user_jobs, sequential.Weights.of(policy.settings.default).exclude_at
    kept: dict = {}
    hours: tuple[StoredHour, ...] = (users_hour(NOW, 10),)
    for what, ended, site, user in steps:
        newest = hours[-1].hour if hours else NOW
        if what == "grow" and hours:
            hours = (*hours[:-1], users_hour(newest, hours[-1].ended + ended, site, user))
        elif what == "next":
            hours = (*hours, users_hour(newest + HOUR, ended, site, user))
        elif what == "drop":
            hours = hours[1:]
        elif what == "equal":  # the same hours, not the same objects
            hours = tuple(replace(h) for h in hours)
        elif what == "middle" and len(hours) > 2:  # an hour read again before the newest
            hours = (hours[0], users_hour(hours[1].hour, ended, site, user), *hours[2:])
        v = view("ANALY_A", user_jobs=hours)
        afresh = userjobs.inconclusive(v, s, at)
        assert policy.quiet(v, kept) == policy.quiet(v, {}) == (Decision("ANALY_A", Action.KEEP, sequential.HEALTHY,
                                                                       policy=sequential.NAME) if afresh else None)
        assert kept["ANALY_A"][2:] == (hours, afresh)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["default", "hammercloud"]), st.sampled_from(["online", "pending", "excluded"]),
       st.sampled_from(["CCCC", "FFC", "CCF", "CF", ""]), st.one_of(st.none(), st.integers(0, 3000)),
       st.one_of(st.none(), st.integers(0, 3000)), st.lists(st.integers(-600, 3000), min_size=1, max_size=4))
def test_a_lasting_cadence_is_the_same_at_every_time(name, state, pattern, since, included, later):
    # the engine keeps a queue's cadence while its view is the same object where Policy.lasting says
    # the time does not change it: it must not, at any later or earlier step
    policy = Policy(BlacklistSettings(policy=name), ("T1",))
    v = view("ANALY_A", results("T1", pattern), robot_state=state, state_since=None if since is None else NOW - since * MIN,
             last_robot_inclusion=None if included is None else NOW - included * MIN)
    if policy.lasting(v):
        assert {policy.cadence(v, NOW + minutes * MIN) for minutes in later} == {policy.cadence(v, NOW)}
    assert policy.lasting(v) == (name == "hammercloud" or state != "online")


# ================================================================================================
# 3. Safety rules
# ================================================================================================

@pytest.mark.parametrize("kw,expected", [
    ({"manual": "exclude"}, "manual exclude"),
    ({"manual": "include", "status": "brokeroff", "robot_state": "excluded"}, "manual include"),
    ({"status": "brokeroff"}, "outside the robot"),
    ({"status": "offline"}, "outside the robot"),
    ({"status": "test", "robot_state": "pending"}, "outside the robot"),
    ({}, None),
    ({"robot_state": "pending"}, None),
    ({"status": "brokeroff", "robot_state": "excluded", "excluded_by_robot": True}, None),
])
def test_hands_off(kw, expected):
    why = safety.hands_off(view("ANALY_A", **kw))
    if expected is None:
        assert why is None
    else:
        assert why and expected in why


@pytest.mark.parametrize("name,site,flag,expected", [
    ("ANALY_CERN", "CERN", False, False),
    ("ANALY_CERN", "CERN", True, True),
    ("ANALY_TEST_X", "X", False, True),
    ("ANALY_X_test", "X", False, True),
    ("ANALY_local_X", "X", False, True),
    ("ANALY_X_LOCAL", "X", False, True),
    ("ANALY_OPTOUT", "OPTED-OUT", False, True),
])
def test_is_exempt(name, site, flag, expected):
    settings = SafetySettings(exempt_sites=["OPTED-OUT"])
    assert safety.is_exempt(view(name, site=site, exempt=flag), settings) is expected


def exclude(name: str, reason: str = "broken") -> Decision:
    return Decision(name, Action.EXCLUDE, reason, policy="test")


def fleet(clouds: dict[str, int], **per_queue) -> dict[str, QueueView]:
    """Queues Q<cloud><i>, per cloud; per_queue maps a queue name to view() overrides ("res": results)."""
    views = {}
    for cloud, n in clouds.items():
        for i in range(n):
            name = f"Q{cloud}{i}"
            kw = dict(per_queue.get(name, {}))
            views[name] = view(name, *kw.pop("res", ()), cloud=cloud, **kw)
    return views


SPREAD = {"CA": 4, "DE": 4, "FR": 4, "IT": 4, "UK": 4}  # 20 queues, 4 per cloud


@pytest.mark.parametrize("override,why", [
    ({"silenced": True}, "silenced"),
    ({"exempt": True}, "exempt"),
])
def test_guard_holds_exclusions_of_silenced_and_exempt_queues(override, why):
    views = fleet(SPREAD, QDE0=override)
    decisions, incidents = safety.guard([exclude("QDE0"), exclude("QFR0")], views, SAFE, NOW)
    held, applied = decisions
    assert held.action is Action.KEEP and held.new_status is None
    assert why in held.reason and "broken" in held.reason
    assert applied.action is Action.EXCLUDE and incidents == []


def test_guard_holds_exempt_by_name_and_by_site():
    views = {v.name: v for v in [view("ANALY_TEST_X"), view("ANALY_B_local"), view("ANALY_C", site="OPT"),
                                 *fleet(SPREAD).values()]}
    settings = SafetySettings(exempt_sites=["OPT"])
    decisions, _ = safety.guard([exclude("ANALY_TEST_X"), exclude("ANALY_B_local"), exclude("ANALY_C")],
                                views, settings, NOW)
    assert all(d.action is Action.KEEP and "exempt" in d.reason for d in decisions)


def test_guard_lets_other_decisions_of_exempt_queues_through():
    views = fleet(SPREAD, QDE0={"exempt": True, "silenced": True})
    decisions = [Decision("QDE0", Action.INCLUDE, "ok"), Decision("QDE1", Action.PEND, "doubt")]
    assert safety.guard(decisions, views, SAFE, NOW) == (decisions, [])


def test_guard_passes_a_step_without_exclusions_as_it_is_whatever_the_grid_holds():
    # the shortcut for steps that exclude nothing: every rule only ever holds an exclusion, even on a
    # grid in a mass event and over the cap
    out = NOW - 10 * MIN
    views = fleet(SPREAD, **{f"Q{c}{i}": {"robot_state": "excluded", "last_robot_exclusion": out, "exempt": i == 3}
                             for c in SPREAD for i in range(4) if c != "UK" or i < 2})
    decisions = [Decision(name, action, "why") for name, action in zip(views, itertools.cycle(
        [a for a in Action if a is not Action.EXCLUDE]))]
    assert safety.guard(decisions, views, SAFE, NOW) == (decisions, [])
    with_one = [*decisions[:-1], exclude(decisions[-1].queue)]
    held, incidents = safety.guard(with_one, views, SAFE, NOW)
    assert held[:-1] == decisions[:-1] and held[-1].action is Action.KEEP and incidents


def test_mass_guard_holds_many_simultaneous_exclusions():
    views = fleet(SPREAD)
    failing = ["QCA0", "QDE0", "QFR0", "QIT0"]  # 4 of 20 = 20 % >= 15 %
    decisions, incidents = safety.guard([exclude(q) for q in failing] + [Decision("QUK0", Action.KEEP, "ok")],
                                        views, SAFE, NOW)
    assert [d.action for d in decisions] == [Action.KEEP] * 5
    assert all("mass failure" in d.reason for d in decisions[:4])
    assert [(i.kind, i.queues) for i in incidents] == [("mass_failure", tuple(sorted(failing)))]


def test_mass_guard_lets_a_few_exclusions_through():
    decisions, incidents = safety.guard([exclude("QCA0"), exclude("QDE0")], fleet(SPREAD), SAFE, NOW)
    assert [d.action for d in decisions] == [Action.EXCLUDE] * 2 and incidents == []


def test_cloud_guard_holds_most_of_one_cloud_but_not_another_cloud():
    views = fleet({"DE": 4, "FR": 12, "IT": 12, "UK": 12})  # 40 queues: 4 failing is below the mass share
    decisions, incidents = safety.guard([exclude("QDE0"), exclude("QDE1"), exclude("QDE2"), exclude("QFR0")],
                                        views, SAFE, NOW)
    assert [d.action for d in decisions] == [Action.KEEP] * 3 + [Action.EXCLUDE]
    assert len(incidents) == 1
    incident = incidents[0]
    assert incident.kind == "cloud_failure" and incident.queues == ("QDE0", "QDE1", "QDE2")
    assert "DE" in incident.message and incident.evidence["cloud"] == "DE"


def test_cloud_guard_needs_the_cloud_share():
    views = fleet({"DE": 8, "FR": 12, "IT": 12, "UK": 12})  # 3 of 8 < 50 %
    decisions, incidents = safety.guard([exclude("QDE0"), exclude("QDE1"), exclude("QDE2")], views, SAFE, NOW)
    assert [d.action for d in decisions] == [Action.EXCLUDE] * 3 and incidents == []


def _central_fleet(central: int, site: int, n: int) -> tuple[dict[str, QueueView], list[str]]:
    """40 queues in 5 clouds; n failing ones in distinct clouds, each with `central` central-class and
    `site` site-class failures behind its exclusion."""
    failing = [f"Q{c}0" for c in ("CA", "DE", "FR", "IT", "UK")[:n]]
    res = {"res": [results("T1", "F" * central, error_class="central"),
                   results("T1", "F" * site, newest=NOW - 2 * MIN)]}
    return fleet({"CA": 8, "DE": 8, "FR": 8, "IT": 8, "UK": 8}, **{q: res for q in failing}), failing


@pytest.mark.parametrize("central,site,n,held", [
    (2, 1, 3, True),
    (1, 1, 3, True),  # exactly the share
    (1, 2, 3, False),
    (3, 0, 2, False),  # too few queues
])
def test_central_errors_hold_exclusions(central, site, n, held):
    views, failing = _central_fleet(central, site, n)
    decisions, incidents = safety.guard([exclude(q) for q in failing], views, SAFE, NOW)
    if held:
        assert all(d.action is Action.KEEP for d in decisions)
        assert [(i.kind, i.queues) for i in incidents] == [("central_errors", tuple(sorted(failing)))]
        assert incidents[0].evidence["classes"]["central"] == central * n
    else:
        assert all(d.action is Action.EXCLUDE for d in decisions) and incidents == []


@pytest.mark.parametrize("first", ["site", "central"])
def test_central_errors_incident_lists_the_classes_in_the_queues_order(first):
    # the stored detail is the same in every run, whatever order a set of names iterates in
    # (it followed string hashing: two runs of one simulation stored different events)
    second = "central" if first == "site" else "site"
    per_queue = {"QCA0": first, "QDE0": second, "QFR0": "central", "QIT0": "central"}
    views = fleet({"CA": 8, "DE": 8, "FR": 8, "IT": 8, "UK": 8},
                  **{q: {"res": [results("T1", "FF", error_class=k)]} for q, k in per_queue.items()})
    _, incidents = safety.guard([exclude(q) for q in reversed(per_queue)], views, SAFE, NOW)
    assert [i.kind for i in incidents] == ["central_errors"]
    assert list(incidents[0].evidence["classes"]) == [first, second]


@pytest.mark.parametrize("cloud_class,other_class,others_held", [
    ("central", "site", False),  # the cloud's central errors do not make the others' site failures central
    ("site", "central", True),  # nor do the cloud's site failures dilute the others' central errors
])
def test_central_share_is_judged_on_the_exclusions_it_would_hold(cloud_class, other_class, others_held):
    cloud = {"res": [results("T1", "FFF", error_class=cloud_class)]}
    other = {"res": [results("T1", "FF", error_class=other_class), results("T1", "F", newest=NOW - HOUR)]}
    in_cloud, others = ["QDE0", "QDE1", "QDE2"], ["QFR0", "QIT0", "QUK0"]
    views = fleet({"DE": 4, "FR": 16, "IT": 16, "UK": 16},  # 52 queues: 6 failing is below the mass share
                  **{q: cloud for q in in_cloud}, **{q: other for q in others})
    decisions, incidents = safety.guard([exclude(q) for q in in_cloud + others], views, SAFE, NOW)
    actions = {d.queue: d.action for d in decisions}
    assert all(actions[q] is Action.KEEP for q in in_cloud)
    expected = Action.KEEP if others_held else Action.EXCLUDE
    assert all(actions[q] is expected for q in others)
    kinds = [(i.kind, i.queues) for i in incidents]
    assert kinds == [("cloud_failure", tuple(in_cloud))] + ([("central_errors", tuple(others))] if others_held else [])
    if others_held:
        assert incidents[1].evidence["classes"] == {"central": 6, "site": 3}


@pytest.mark.parametrize("ago,held", [(30 * MIN, True), (2 * HOUR, False)])
def test_recent_robot_exclusions_count_toward_the_mass_threshold(ago, held):
    views = fleet(SPREAD, QUK0={"status": "brokeroff", "robot_state": "excluded", "excluded_by_robot": True,
                                "last_robot_exclusion": NOW - ago, "state_since": NOW - ago})
    decisions, incidents = safety.guard([exclude("QCA0"), exclude("QDE0")], views, SAFE, NOW)
    if held:
        assert [d.action for d in decisions] == [Action.KEEP] * 2
        assert [(i.kind, i.queues) for i in incidents] == [("mass_failure", ("QCA0", "QDE0", "QUK0"))]
    else:
        assert [d.action for d in decisions] == [Action.EXCLUDE] * 2 and incidents == []


def _mass_scenario(kind: str) -> tuple[dict[str, QueueView], list[str]]:
    if kind == "mass_failure":  # 4 of 20, in 4 clouds
        return fleet(SPREAD), ["QCA0", "QDE0", "QFR0", "QIT0"]
    if kind == "cloud_failure":  # 3 of the 4 queues of DE, of 40
        return fleet({"DE": 4, "FR": 12, "IT": 12, "UK": 12}), ["QDE0", "QDE1", "QDE2"]
    return _central_fleet(2, 1, 3)


@pytest.mark.parametrize("kind", ["mass_failure", "cloud_failure", "central_errors"])
def test_mass_guard_off_disables_every_mass_rule(kind):
    views, failing = _mass_scenario(kind)
    decisions, incidents = safety.guard([exclude(q) for q in failing], views, SAFE, NOW)
    assert all(d.action is Action.KEEP for d in decisions) and [i.kind for i in incidents] == [kind]
    decisions, incidents = safety.guard([exclude(q) for q in failing], views, SafetySettings(mass_guard=False), NOW)
    assert all(d.action is Action.EXCLUDE for d in decisions) and incidents == []


def test_cap_on_the_share_of_excluded_queues():
    views = fleet({"DE": 5, "FR": 5}, QFR4={"status": "brokeroff", "robot_state": "excluded",
                                            "excluded_by_robot": True, "last_robot_exclusion": NOW - 5 * HOUR})
    settings = SafetySettings(mass_guard=False)  # 3 of 10 at once would otherwise be a mass event
    assert settings.max_excluded_fraction == 0.2
    decisions, incidents = safety.guard([exclude("QDE0"), exclude("QDE1"), exclude("QFR0")], views, settings, NOW)
    assert [d.action for d in decisions] == [Action.EXCLUDE, Action.KEEP, Action.KEEP]
    assert all("cap 20%" in d.reason and "2 of 10" in d.reason for d in decisions[1:])
    assert incidents == []


def test_cap_applies_after_the_mass_guard_with_defaults():
    # with the guard on, 3 of 10 at once is a mass event: nothing goes through and nothing is capped
    views = fleet({"DE": 5, "FR": 5})
    decisions, incidents = safety.guard([exclude("QDE0"), exclude("QDE1"), exclude("QFR0")], views, SAFE, NOW)
    assert all(d.action is Action.KEEP and "mass failure" in d.reason for d in decisions)
    assert [i.kind for i in incidents] == ["mass_failure"]


def test_differential_shared_failures_raise_one_incident_per_code():
    from blacklist.policies import Policy
    from blacklist.settings import BlacklistSettings
    outage = [view(f"ANALY_Q{i}", same_code(results("T1", "FC"))) for i in range(SEQ.spread_sites + 1)]
    few = outage[:SEQ.spread_sites]
    policy = Policy(BlacklistSettings(), ("T1",))
    (incident,) = policy.incidents(policy.grid(outage + healthy_grid()), NOW)
    assert incident.kind == "shared_failure" and incident.evidence == {"code": 1099}
    assert set(incident.queues) == {v.name for v in outage}
    assert policy.incidents(policy.grid(few + healthy_grid()), NOW) == []
    assert policy.incidents(policy.grid(outage), NOW + 2 * HOUR) == []  # over


def test_differential_needs_other_sites_that_complete_the_template():
    # user-class failures at one queue, but too few other sites completed the template: the
    # comparison says nothing and the error table decides
    rs = same_code(results("T1", "FFF"), code=1201, klass="unknown")
    few = healthy_grid(SEQ.spread_sites - 1)
    assert decide_in(view("ANALY_A", rs), few).action is Action.KEEP
    other_template = [view(f"ANALY_H{i}", results("T2", "CCCC")) for i in range(8)]
    assert decide_in(view("ANALY_A", rs), few + other_template).action is Action.KEEP
    assert decide_in(view("ANALY_A", rs), healthy_grid(SEQ.spread_sites)).action is Action.EXCLUDE


def test_differential_a_large_grid_needs_a_share_of_its_sites_at_once():
    # 100 sites: a code at 4 other sites at once is a coincidence (or four faults), not a shared cause
    rs = same_code(results("T1", "F"))
    others = [view(f"ANALY_Q{i}", same_code(results("T1", "FC"))) for i in range(4)]
    big = grid_of([view("ANALY_A", rs), *others, *healthy_grid(95)])
    assert big.threshold == 5 and not big.widespread(rs[0], "SITE-ANALY_A")
    small = grid_of([view("ANALY_A", rs), *others, *healthy_grid(15)])
    assert small.threshold == SEQ.spread_sites and small.widespread(rs[0], "SITE-ANALY_A")
