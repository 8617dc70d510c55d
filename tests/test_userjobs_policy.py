"""Users' own jobs as evidence for the default policy (blacklist/userjobs.py), as pure functions."""
from __future__ import annotations

from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blacklist import sequential, userjobs
from blacklist.model import Action, Decision, QueueView, Result
from blacklist.policies import Policy
from blacklist.settings import BlacklistSettings, UserJobsSettings
from robot.userjobs import StoredHour

NOW = datetime(2025, 3, 1, 12, 30, tzinfo=UTC)
HOUR = timedelta(hours=1)
ON = Policy(BlacklistSettings(mode="enforce", user_jobs=UserJobsSettings(enabled=True)), ("AFT",))
OFF = Policy(BlacklistSettings(mode="enforce", user_jobs=UserJobsSettings(enabled=False)), ("AFT",))


def hour(queue: str, start: datetime, ended: int, **codes: int) -> StoredHour:
    """codes: c1099=3 (site class STAGEINFAILED), c1305=5 (user class), c1324=2 (central), c1203=4 (unknown)."""
    known = {1099: ("STAGEINFAILED", "site"), 1305: ("PAYLOADEXECUTIONFAILURE", "user"),
             1324: ("SERVICEUNAVAILABLE", "central"), 1137: ("STAGEOUTFAILED", "site"), 1203: ("SIGSEGV", "unknown")}
    entries = tuple({"source": "pilot", "code": int(k[1:]), "name": known[int(k[1:])][0],
                     "class": known[int(k[1:])][1], "jobs": n} for k, n in codes.items())
    by_class = {"site": 0, "user": 0, "central": 0, "unknown": 0}
    for e in entries:
        by_class[e["class"]] += e["jobs"]
    return StoredHour(queue, start, ended, sum(by_class.values()), by_class, entries)


def grid(broken: dict[str, int], *, queues: int = 8, user_failures: int = 4, ended: int = 30,
         results: dict[str, tuple[Result, ...]] | None = None, code: int = 1099) -> list[QueueView]:
    """`queues` queues at their own sites, each with two hours of users' jobs (some failing with their
    own bugs); `broken`: queue -> failures with `code` (stage-in) in each hour."""
    views = []
    for i in range(queues):
        name = f"ANALY_{i}"
        hours = tuple(hour(name, start, ended, c1305=user_failures, **({f"c{code}": broken[name]} if name in broken else {}))
                      for start in (NOW.replace(minute=0) - HOUR, NOW.replace(minute=0)))
        views.append(QueueView(name=name, site=f"SITE-{i}", cloud="DE", status="online", user_jobs=hours,
                               results=(results or {}).get(name, ())))
    return views


def decide(policy: Policy, views: list[QueueView], name: str):
    spread = policy.grid(views)
    users = policy.users(views)
    return policy.decide(next(v for v in views if v.name == name), NOW, 0, spread, users)


def test_a_site_fault_in_users_jobs_opens_a_case_and_names_the_counts_but_never_excludes_alone():
    views = grid({"ANALY_0": 20})
    decision = decide(ON, views, "ANALY_0")
    assert decision.action is Action.PEND and "STAGEINFAILED in users' jobs" in decision.reason
    shown = decision.evidence["user_jobs"]
    assert [(e["code"], e["failures"], e["ended"]) for e in shown] == [(1099, 20, 30), (1099, 20, 30)]
    most = sequential.Weights.of(ON.settings.default).failure  # never more than one test job's failure
    assert all(0 < e["weight"] <= round(most, 2) for e in shown) and shown[0]["baseline"] == 0.02  # nobody else fails with 1099
    assert decision.evidence["jobs"] == []  # no test job behind it: probes go out, nothing is excluded
    assert decide(OFF, views, "ANALY_0").action is Action.KEEP  # the setting off: not heard
    assert decide(ON, views, "ANALY_1").action is Action.KEEP


def test_users_own_bugs_say_nothing_about_the_site():
    views = grid({}, user_failures=25)  # 25 of 30 users' jobs fail with their own code everywhere
    views[0] = QueueView(**{**views[0].__dict__, "user_jobs": tuple(
        hour("ANALY_0", h.hour, 30, c1305=29) for h in views[0].user_jobs)})
    assert decide(ON, views, "ANALY_0").action is Action.KEEP


def test_a_code_failing_in_users_jobs_at_many_sites_at_once_is_a_shared_cause():
    views = grid({f"ANALY_{i}": 15 for i in range(5)})  # a data management outage reports 1099 everywhere
    assert all(decide(ON, views, f"ANALY_{i}").action is Action.KEEP for i in range(5))


def test_on_a_large_grid_a_few_sites_broken_at_once_are_each_their_own_case_as_for_the_test_jobs():
    """200 sites: four storage faults in the same hour are four sites' problems (week_200_queues' four
    stage-in faults were each taken for a shared cause, and their test jobs' failures went unheard for
    8 hours); a code at 5 % of the other sites (spread_fraction) or more is a shared cause."""
    four = grid({f"ANALY_{i}": 15 for i in range(4)}, queues=200)
    assert all(decide(ON, four, f"ANALY_{i}").action is Action.PEND for i in range(4))
    many = grid({f"ANALY_{i}": 15 for i in range(11)}, queues=200)  # 10 other sites: ceil(5 % of 199)
    assert all(decide(ON, many, f"ANALY_{i}").action is Action.KEEP for i in range(11))


def test_a_few_failures_or_a_rate_like_the_others_weigh_nothing():
    assert decide(ON, grid({"ANALY_0": 2}), "ANALY_0").action is Action.KEEP  # fewer than min_failures
    views = grid({f"ANALY_{i}": 3 for i in range(2)}, ended=200)  # 1.5%: below the floor of 2%
    assert decide(ON, views, "ANALY_0").action is Action.KEEP
    # 3 of 30 (10 %) against 2 % elsewhere: not conclusive on its own (users' own wall-time limits, 1213,
    # do that at some queue every few hours)
    assert decide(ON, grid({"ANALY_0": 3}, code=1203), "ANALY_0").action is Action.KEEP
    assert decide(ON, grid({"ANALY_0": 8}, code=1203), "ANALY_0").action is Action.PEND


def test_users_jobs_add_to_a_test_jobs_failure_and_the_exclusion_says_so():
    failure = Result(7001, "AFT", NOW - timedelta(minutes=5), True, "site", "STAGEINFAILED", 1099)
    completed = {f"ANALY_{i}": (Result(8000 + i, "AFT", NOW - timedelta(minutes=20), False),) for i in range(1, 8)}
    alone = decide(ON, grid({}, results={"ANALY_0": (failure,), **completed}), "ANALY_0")
    assert alone.action is Action.PEND and "job 7001" in alone.reason  # one test failure: in doubt only
    both = decide(ON, grid({"ANALY_0": 20}, results={"ANALY_0": (failure,), **completed}), "ANALY_0")
    assert both.action is Action.EXCLUDE
    assert "1 failures and 2 hour(s) of users' jobs pointing at the site" in both.reason
    assert [j["panda_id"] for j in both.evidence["jobs"]] == [7001]
    assert [e["failures"] for e in both.evidence["user_jobs"]] == [20, 20]


def test_a_stable_queue_watched_by_its_users_jobs_is_tested_less_often():
    watched, = grid({}, queues=1)
    stable = QueueView(**{**watched.__dict__, "state_since": NOW - 3 * HOUR})
    stable_gap = ON.settings.default.stable_gap
    assert ON.cadence(stable, NOW).gap == ON.settings.user_jobs.watched_gap > stable_gap
    assert OFF.cadence(stable, NOW).gap == stable_gap  # not heard: every stable queue alike
    quiet = QueueView(**{**stable.__dict__, "user_jobs": tuple(hour("ANALY_0", h.hour, 4) for h in stable.user_jobs)})
    assert ON.cadence(quiet, NOW).gap == stable_gap  # too few users' jobs to stand watch
    pending = QueueView(**{**stable.__dict__, "robot_state": "pending"})
    assert ON.cadence(pending, NOW).extra_jobs == 2  # in doubt: probes, as ever


def test_a_shared_cause_is_seen_from_its_first_failures_elsewhere_but_not_from_single_ones():
    views = grid({"ANALY_0": 20, **{f"ANALY_{i}": 2 for i in (1, 2, 3)}})  # two failures each: it starts elsewhere too
    assert decide(ON, views, "ANALY_0").action is Action.KEEP
    views = grid({"ANALY_0": 20, **{f"ANALY_{i}": 1 for i in (1, 2, 3)}})  # one each: the noise of healthy queues
    assert decide(ON, views, "ANALY_0").action is Action.PEND


def test_a_test_jobs_failure_whose_code_the_users_jobs_show_everywhere_counts_neither_way():
    failure = Result(7001, "AFT", NOW - timedelta(minutes=5), True, "site", "STAGEINFAILED", 1099)
    results = {"ANALY_0": (failure,)}
    alone = grid({}, results=results)
    assert decide(ON, alone, "ANALY_0").action is Action.PEND  # in doubt: probes
    outage = grid({f"ANALY_{i}": 15 for i in range(1, 5)}, results=results)  # the users' jobs fail with it elsewhere
    assert decide(ON, outage, "ANALY_0").action is Action.KEEP
    assert decide(OFF, outage, "ANALY_0").action is Action.PEND  # without users' jobs: nothing to tell


def completed_elsewhere(queues: int = 8) -> dict[str, tuple[Result, ...]]:
    """The template completed at every other queue: the test jobs' failures can be compared."""
    return {f"ANALY_{i}": (Result(8000 + i, "AFT", NOW - timedelta(minutes=20), False),) for i in range(1, queues)}


def test_an_unknown_class_crash_at_one_queues_users_jobs_points_at_the_site_and_adds_to_the_test_jobs_crashes():
    views = grid({"ANALY_0": 15}, code=1203)  # half of its users' jobs die of SIGSEGV, nobody else's
    decision = decide(ON, views, "ANALY_0")
    assert decision.action is Action.PEND and "SIGSEGV in users' jobs" in decision.reason
    assert [(e["code"], e["class"]) for e in decision.evidence["user_jobs"]] == [(1203, "other")] * 2
    assert decide(ON, views, "ANALY_1").action is Action.KEEP
    crash = Result(7001, "AFT", NOW - timedelta(minutes=5), True, "unknown", "SIGSEGV", 1203)
    both = decide(ON, grid({"ANALY_0": 15}, code=1203, results={"ANALY_0": (crash,), **completed_elsewhere()}),
                  "ANALY_0")
    assert both.action is Action.EXCLUDE and "1 failures and 2 hour(s) of users' jobs" in both.reason
    alone = decide(OFF, grid({}, results={"ANALY_0": (crash,), **completed_elsewhere()}), "ANALY_0")
    assert alone.action is Action.PEND  # one crash of the test jobs alone: in doubt only
    views = grid({f"ANALY_{i}": 15 for i in range(5)}, code=1203)  # crashing everywhere: a broken release
    assert decide(ON, views, "ANALY_0").action is Action.KEEP


def test_a_user_class_code_failing_at_one_queue_only_says_nothing_about_the_site():
    # one user's broken task brokered to one queue looks exactly like this: hourly counts cannot tell
    views = grid({})
    views[0] = QueueView(**{**views[0].__dict__, "user_jobs": tuple(
        hour("ANALY_0", h.hour, 30, c1305=25) for h in views[0].user_jobs)})  # 4 of 30 elsewhere
    assert decide(ON, views, "ANALY_0").action is Action.KEEP


def test_a_central_class_code_in_users_jobs_never_opens_a_case_and_is_a_shared_cause_when_everywhere():
    assert decide(ON, grid({"ANALY_0": 20}, code=1324), "ANALY_0").action is Action.KEEP
    # a data management outage: one stage-in failure of the noise opened a case at ANALY_0, then two
    # failures of the outage's central-class code before the other sites' test jobs showed it
    results = {"ANALY_0": (Result(7001, "AFT", NOW - timedelta(minutes=25), True, "site", "STAGEINFAILED", 1099),
                           Result(7002, "AFT", NOW - timedelta(minutes=15), True, "central", "SERVICEUNAVAILABLE", 1324),
                           Result(7003, "AFT", NOW - timedelta(minutes=10), True, "central", "SERVICEUNAVAILABLE", 1324)),
               **completed_elsewhere()}
    assert decide(OFF, grid({}, results=results), "ANALY_0").action is Action.EXCLUDE
    outage = grid({f"ANALY_{i}": 10 for i in range(1, 5)}, code=1324, results=results)  # users' jobs see it elsewhere
    assert decide(ON, outage, "ANALY_0").action is Action.PEND


def test_a_watched_queue_whose_users_jobs_stopped_ending_is_no_longer_watched():
    later = NOW + timedelta(minutes=15)  # 12:45: 15 minutes of the hour before are within the last 60
    base, = grid({}, queues=1)
    stable = QueueView(**{**base.__dict__, "state_since": NOW - 3 * HOUR})
    before = hour("ANALY_0", NOW.replace(minute=0) - HOUR, 30)
    busy = QueueView(**{**stable.__dict__, "user_jobs": (before, hour("ANALY_0", NOW.replace(minute=0), 20))})
    stuck = QueueView(**{**stable.__dict__, "user_jobs": (before,)})  # nothing ended since 12:00
    watched_gap = ON.settings.user_jobs.watched_gap
    assert ON.cadence(busy, later).gap == watched_gap
    assert ON.cadence(stuck, NOW).gap == watched_gap  # 12:30: half the hour before still counts (15 jobs)
    assert ON.cadence(stuck, later).gap == ON.settings.default.stable_gap  # 7.5 jobs in the last 60 minutes


def test_without_users_jobs_the_policy_decides_and_paces_as_without_the_setting():
    failure = Result(7001, "AFT", NOW - timedelta(minutes=5), True, "site", "STAGEINFAILED", 1099)
    crash = Result(7002, "AFT", NOW - timedelta(minutes=3), True, "unknown", "SIGSEGV", 1203)
    for results in ({}, {"ANALY_0": (failure,)}, {"ANALY_0": (failure, crash), **completed_elsewhere()}):
        views = [QueueView(**{**v.__dict__, "user_jobs": ()}) for v in grid({}, results=results)]
        for state in ("online", "pending", "excluded"):
            view = QueueView(**{**views[0].__dict__, "robot_state": state, "state_since": NOW - 3 * HOUR})
            views[0] = view
            assert decide(ON, views, "ANALY_0") == decide(OFF, views, "ANALY_0")
            assert ON.cadence(view, NOW) == OFF.cadence(view, NOW)


def test_test_jobs_noise_at_a_queue_whose_users_jobs_complete_does_not_exclude_it():
    # A flaky but healthy queue: two random stage-in failures of its test jobs 6 minutes apart (a code
    # rare elsewhere weighs ln(0.5/0.0075) = 4.2 each, 8.4 >= 6.2), while 15 of its users' jobs ended
    # in this hour, none with that code: a fault that made half the test jobs fail would show there too.
    noise = (Result(7001, "AFT", NOW - timedelta(minutes=12), True, "site", "STAGEINFAILED", 1099),
             Result(7002, "AFT", NOW - timedelta(minutes=6), True, "site", "STAGEINFAILED", 1099))
    views = grid({}, results={"ANALY_0": noise, **completed_elsewhere()})
    views[0] = QueueView(**{**views[0].__dict__, "user_jobs": (hour("ANALY_0", NOW.replace(minute=0) - HOUR, 30, c1305=4),
                                                                 hour("ANALY_0", NOW.replace(minute=0), 15, c1305=2))})
    assert decide(OFF, views, "ANALY_0").action is Action.EXCLUDE  # the test jobs alone
    kept = decide(ON, views, "ANALY_0")
    assert kept.action is Action.PEND and "job 7002" in kept.reason  # still in doubt: probes, not an exclusion
    # the same failures of several codes ("broken, whatever the code"), a user-class one adding to the case
    mixed = (noise[0], Result(7002, "AFT", NOW - timedelta(minutes=8), True, "site", "STAGEOUTFAILED", 1137),
             Result(7003, "AFT", NOW - timedelta(minutes=4), True, "user", "PAYLOADEXECUTIONFAILURE", 1305))
    views[0] = QueueView(**{**views[0].__dict__, "results": mixed})
    assert decide(OFF, views, "ANALY_0").action is Action.EXCLUDE
    assert decide(ON, views, "ANALY_0").action is not Action.EXCLUDE
    # a queue whose users' jobs fail with the test jobs' code is excluded as before
    broken = QueueView(**{**views[0].__dict__, "results": noise, "user_jobs": (
        hour("ANALY_0", NOW.replace(minute=0) - HOUR, 30, c1305=4), hour("ANALY_0", NOW.replace(minute=0), 15, c1099=5))})
    assert decide(ON, [broken, *views[1:]], "ANALY_0").action is Action.EXCLUDE


def test_users_jobs_still_ending_at_a_stalled_queue_do_not_speak_against_the_stall():
    # jobs that started before the queue stalled keep ending; the test jobs waiting there are the evidence
    waiting = QueueView(**{**grid({}, queues=1)[0].__dict__, "last_start": NOW - 2 * HOUR,
                           "waiting_since": (NOW - HOUR, NOW - HOUR, NOW - 50 * timedelta(minutes=1))})
    assert decide(ON, [waiting], "ANALY_0") == decide(OFF, [QueueView(**{**waiting.__dict__, "user_jobs": ()})], "ANALY_0")


CODES = {1099: ("STAGEINFAILED", "site"), 1137: ("STAGEOUTFAILED", "site"), 1305: ("PAYLOADEXECUTIONFAILURE", "user"),
         1324: ("SERVICEUNAVAILABLE", "central"), 1203: ("SIGSEGV", "unknown")}


@st.composite
def grids(draw) -> list[QueueView]:
    """A few queues (two may share a site) with test jobs and users' hours failing with a few codes."""
    views = []
    for i in range(draw(st.integers(2, 6))):
        name = f"ANALY_{i}"
        drawn = draw(st.lists(st.tuples(st.integers(0, 359), st.booleans(), st.sampled_from(sorted(CODES))), max_size=12))
        results = tuple(sorted((Result(1000 * i + j, "AFT", NOW - timedelta(minutes=minutes), failed,
                                       *((CODES[code][1], CODES[code][0], code) if failed else ()))
                                for j, (minutes, failed, code) in enumerate(drawn)), key=lambda r: r.end_time, reverse=True))
        hours = []
        for back in range(draw(st.integers(0, 6))):
            ended = draw(st.integers(0, 40))
            failing = draw(st.dictionaries(st.sampled_from(sorted(CODES)), st.integers(1, 20), max_size=3))
            if sum(failing.values()) > ended:
                failing = {}
            hours.append(hour(name, NOW.replace(minute=0) - back * HOUR, ended, **{f"c{c}": n for c, n in failing.items()}))
        state = draw(st.sampled_from(["online", "online", "pending", "excluded"]))
        views.append(QueueView(name=name, site=f"SITE-{draw(st.integers(0, 4))}", cloud="DE", status="online",
                               robot_state=state, excluded_by_robot=state == "excluded",
                               state_since=NOW - timedelta(minutes=draw(st.integers(0, 300))), results=results,
                               user_jobs=tuple(sorted(hours, key=lambda h: h.hour))))
    return views


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(grids())
def test_a_queue_decided_without_comparing_users_jobs_is_decided_as_with_them(views):
    # The shortcut (users' jobs that can only speak for the queue, every CUSUM at 0 without them)
    # decides every queue as the full weighing does.
    spread, users = ON.grid(views), ON.users(views)
    for view in views:
        unasked = ON.users(views)  # the shortcut is taken only where no queue asked before in the step
        assert ON.decide(view, NOW, 0, spread, unasked) == ON._heard(view, NOW, 0, spread, users) == \
            heard_in_full(view, spread, users) == ON.decide(view, NOW, 0, spread, users)


def heard_in_full(view: QueueView, spread, users) -> Decision:
    """Policy._heard with every hour of the queue's users' jobs weighed, also those speaking for an
    excluded queue (which its re-inclusion does not weigh: the policy leaves them out)."""
    view = userjobs.without_shared(view, users)
    items, shown = userjobs.evidence(view, users, ON.settings.default, NOW)
    decision = sequential.decide(view, ON.settings.default, NOW, 0, spread, items)
    return replace(decision, evidence={**decision.evidence, "user_jobs": shown}) if shown and decision.evidence else decision


def test_a_step_of_quiet_queues_compares_no_users_jobs():
    views = grid({}, results=completed_elsewhere())
    users = ON.users(views)
    assert all(ON.decide(v, NOW, 0, ON.grid(views), users).action is Action.KEEP for v in views)
    assert "_counts" not in users.__dict__  # the baseline was never worked out
    views = grid({"ANALY_0": 20})  # a queue whose users' jobs point at its site asks for it
    users = ON.users(views)
    assert ON.decide(views[0], NOW, 0, ON.grid(views), users).action is Action.PEND and "_counts" in users.__dict__


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(grids(), st.integers(0, 180), st.integers(0, 3), st.integers(-1, 120))
def test_a_queue_quiet_on_its_view_alone_is_decided_as_by_the_full_weighing(views, later, flaps, waited):
    # Policy.quiet answers "healthy" from the queue's view alone, its results' answer kept from step to
    # step, without the grid or the other queues' users' jobs: as `decide` does at this step or a later
    # one, whatever the queue's recent exclusions, with users' jobs heard or not
    if waited >= 0:  # a job waiting at the first queue
        views[0] = replace(views[0], waiting_since=(NOW - timedelta(minutes=waited),))
    for policy in (ON, OFF):
        spread, users = policy.grid(views), policy.users(views)
        kept: dict = {}
        for view in views:
            quiet = policy.quiet(view, kept)
            assert policy.quiet(replace(view, user_jobs=view.user_jobs), kept) == quiet  # the kept answer, for a new view
            if quiet is not None:
                assert policy.decide(view, NOW + timedelta(minutes=later), flaps, spread, users) == quiet
                assert quiet.action is Action.KEEP and quiet.reason == sequential.HEALTHY


def test_a_healthy_queue_is_quiet_and_one_with_a_case_or_a_loud_hour_is_not():
    views = grid({"ANALY_0": 20}, results=completed_elsewhere())
    kept: dict = {}
    assert ON.quiet(views[0], kept) is None  # its users' jobs point at its site
    assert OFF.quiet(views[0], kept) is not None and ON.quiet(views[1], kept) is not None
    pending = replace(views[1], robot_state="pending")
    assert ON.quiet(pending, kept) is None and OFF.quiet(pending, kept) is None
    assert Policy(BlacklistSettings(mode="enforce", policy="hammercloud"), ("AFT",)).quiet(pending, {}).reason == \
        "no exclusion rule fires"  # HammerCloud: no job failed, whatever the queue's state but excluded


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_the_users_sums_kept_between_steps_answer_as_counting_afresh(data):
    # The engine's tally counts only the hours that changed since its last step (an hour read again,
    # one out of the window, a queue retired or moved): it answers as a restarted robot's would.
    tally = ON.tally()
    views: dict[str, QueueView] = {}
    for step in range(data.draw(st.integers(1, 6))):
        for i in range(4):
            name = f"ANALY_{i}"
            kept = views[name].user_jobs if name in views else ()
            if kept and data.draw(st.booleans()):  # an hour read again as it grows, its failures (codes) the same
                i = data.draw(st.integers(0, len(kept) - 1))
                kept = (*kept[:i], replace(kept[i], ended=kept[i].ended + data.draw(st.integers(0, 300))), *kept[i + 1:])
            if kept and data.draw(st.booleans()):  # the hour going on read again with new failures
                failing = data.draw(st.dictionaries(st.sampled_from(sorted(CODES)), st.integers(1, 10), max_size=3))
                grown = hour(name, kept[-1].hour, sum(failing.values()) + data.draw(st.integers(1, 20)),
                             **{f"c{c}": n for c, n in failing.items()})
                kept = (*kept[:-1], grown)
            if data.draw(st.booleans()):
                kept = tuple(h for h in kept if data.draw(st.booleans()))
                failing = data.draw(st.dictionaries(st.sampled_from(sorted(CODES)), st.integers(1, 10), max_size=3))
                new = hour(name, NOW.replace(minute=0) - data.draw(st.integers(0, 3)) * HOUR,
                           sum(failing.values()) + data.draw(st.integers(1, 20)), **{f"c{c}": n for c, n in failing.items()})
                if data.draw(st.booleans()):  # another source calls the crash the site's: 1203 is then site-class
                    new = replace(new, codes=tuple({**e, "class": "site"} if e["code"] == 1203 else e for e in new.codes))
                kept += (new,)
            site = f"SITE-{data.draw(st.integers(0, 2))}"
            views[name] = QueueView(name=name, site=site, cloud="DE", status="online", user_jobs=kept)
            if data.draw(st.integers(0, 9)) == 0:
                del views[name]  # retired
        kept_up, afresh = ON.users(views.values(), tally), ON.users(views.values())
        assert kept_up._counts.excess == afresh._counts.excess  # where each code was in excess, and how often
        for counts in (kept_up._counts, afresh._counts):  # the site-class failures kept as codes turn the site's or not
            site_failed = Counter()
            for code, entries in counts.site_entries.items():
                if entries:
                    site_failed.update(counts.failures[code])
            assert counts.site_failed == site_failed and counts.all_site_failed == sum(site_failed.values())
        for code in CODES:
            for view in views.values():
                assert kept_up.rate(code, view.name) == afresh.rate(code, view.name)
                assert kept_up.site_rate(view.name) == afresh.site_rate(view.name)
                for back in range(4):
                    when = NOW.replace(minute=0) - back * HOUR
                    assert kept_up.shared(code, when, view.site) == afresh.shared(code, when, view.site)


def test_an_excluded_queue_still_failing_with_the_code_that_excluded_it_stays_out_when_users_jobs_show_it_everywhere():
    """storage_outage, seed 5: three sites' storage broke at once; their users' jobs showed 1099 at
    three sites in the hour, a shared cause, and the test jobs' 1099 failures were dropped with it, so
    a queue excluded for them came back on 3 good jobs while still broken. The code that excluded a
    queue is its fault's signature: its failures stay, wherever else the code fails."""
    failure = Result(7001, "AFT", NOW - timedelta(minutes=40), True, "site", "STAGEINFAILED", 1099,
                     start_time=NOW - timedelta(minutes=45))
    good = tuple(Result(7100 + i, "AFT", NOW - timedelta(minutes=3 * i), False, start_time=NOW - timedelta(minutes=3 * i + 5))
                 for i in range(1, 7))
    completed = {f"ANALY_{i}": (Result(8000 + i, "AFT", NOW - timedelta(minutes=20), False),) for i in range(5, 8)}
    views = grid({f"ANALY_{i}": 15 for i in range(5)}, results={"ANALY_0": (*good, failure), **completed})

    def excluded(codes: frozenset) -> list[QueueView]:
        out = QueueView(**{**views[0].__dict__, "status": "brokeroff", "robot_state": "excluded",
                           "excluded_by_robot": True, "state_since": NOW - 2 * HOUR, "excluded_for": codes})
        return [out, *views[1:]]

    decision = decide(ON, excluded(frozenset({1099})), "ANALY_0")
    assert decision.action is Action.NEEDS_JOBS and "6 of 13" in decision.reason
    # excluded for another code, that 1099 is the shared cause's: it neither counts nor holds the queue out
    assert decide(ON, excluded(frozenset({1137})), "ANALY_0").action is Action.INCLUDE
