"""Episodes from exclusions and failure windows, and the verdict on a ticket."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from robot.tickets.episodes import Failure, Move, from_failures, from_transitions
from robot.tickets.verdict import CentralIncident, EpisodeRef, Figures, Named, Places, judge

T = datetime(2026, 11, 20, 10, 0, tzinfo=timezone.utc)


def test_exclusion_episode_runs_from_first_failing_job_to_reinclusion():
    evidence = {"jobs": [{"end_time": (T - timedelta(minutes=25)).isoformat(), "failed": True,
                          "error_class": "site", "panda_id": 11}]}
    episodes = from_transitions([Move("ANALY_X", T, "brokeroff", "3 site failures", evidence),
                                 Move("ANALY_X", T + timedelta(hours=3), "online", "3 good jobs", {}),
                                 Move("ANALY_Y", T, "brokeroff", "broken", {})])
    by_queue = {e.queue: e for e in episodes}
    assert by_queue["ANALY_X"].start == T - timedelta(minutes=25)
    assert by_queue["ANALY_X"].end == T + timedelta(hours=3) and by_queue["ANALY_X"].error_classes == {"site": 1}
    assert by_queue["ANALY_Y"].end is None  # still excluded


def test_an_exclusion_episode_speaks_plain_words_and_keeps_the_policy_s_own_aside():
    evidence = {"jobs": [{"end_time": (T - timedelta(minutes=m)).isoformat(), "failed": True, "error_class": "site",
                          "error": "STAGEINFAILED", "panda_id": m} for m in (30, 10)]}
    policy = "2 failures pointing at the site (STAGEINFAILED) outweigh the completed jobs: CUSUM 7.0 >= 6.2"
    (spec,) = from_transitions([Move("ANALY_X", T, "brokeroff", policy, evidence)])
    assert spec.reason == ("2 site-class failures (STAGEINFAILED) in the last 30m, more than a healthy queue "
                           "would show") and spec.evidence["policy_reason"] == policy
    episode = EpisodeRef(1, "ANALY_X", "SITE-X", "US", spec.start, None, "exclusion", spec.reason,
                         policy_reason=policy)
    result = judge(T, T, [Named("queue", "ANALY_X", "ANALY_X", "SITE-X", "US")], [episode], {}, [])
    assert result.verdict == "site" and "CUSUM" not in result.reason + result.reply + " ".join(result.for_site)
    assert result.reason.startswith("ANALY_X was degraded from ") and "2 site-class failures" in result.reply
    assert result.evidence["policy"] == f"ANALY_X: {policy}"  # the technical reason, as secondary detail


def test_no_reason_repeats_its_verdict():
    site = judge(T, T, [Named("queue", "ANALY_X", "ANALY_X", "SITE-X", "US")], [EPISODE], {}, [])
    job = judge(T, T, [Named("job_error", "4242", "ANALY_Y", "SITE-Y", "DE", error_class="site")], [], {}, [])
    healthy = judge(T, T, [Y], [], {"ANALY_Y": Figures("ANALY_Y", 50, 2, 1)}, [])
    central = judge(T, T, [Y], [], {}, [CentralIncident(T - timedelta(hours=1), T, "mass_failure", "12 of 40 queues "
                                                          "failing at once", ("ANALY_Y",))])
    assert [r.verdict for r in (site, job, healthy, central)] == ["site", "site", "not_site", "central"]
    for result in (site, job, healthy, central):
        assert not result.reason.lower().startswith(("the site", "not the site", "a central problem")), result.reason


def test_unknown_says_how_many_results_there_were_when_too_few():
    few = judge(T, T, [Y], [], {"ANALY_Y": Figures("ANALY_Y", 4, 0, 0)}, [])
    assert few.verdict == "unknown" and few.reason == "only 4 test results at ANALY_Y (5 needed) in that window"


def test_metrics_episode_from_windows_of_site_failures():
    results = [Failure("ANALY_X", T + timedelta(minutes=m), True, "site", "STAGEINFAILED", m) for m in range(0, 110, 10)]
    results += [Failure("ANALY_X", T + timedelta(hours=3, minutes=m), False, None, None, 100 + m) for m in range(0, 50, 10)]
    results += [Failure("ANALY_Z", T + timedelta(minutes=m), True, "user", "EXEERROR", 200 + m) for m in range(0, 60, 10)]
    (episode,) = from_failures(results)
    assert episode.queue == "ANALY_X" and episode.start == T and episode.end == T + timedelta(hours=2)
    assert "STAGEINFAILED" in episode.reason and episode.error_classes == {"site": 11}


EPISODE = EpisodeRef(1, "ANALY_X", "SITE-X", "US", T - timedelta(hours=1), T + timedelta(hours=2), "exclusion",
                     "failed 7 of 9 test jobs (STAGEINFAILED)")


def test_site_verdict_when_a_named_queue_was_degraded():
    result = judge(T, T + timedelta(hours=1), [Named("queue", "ANALY_X", "ANALY_X", "SITE-X", "US")], [EPISODE], {}, [])
    assert result.verdict == "site" and "ANALY_X" in result.reason and result.links[0][:2] == (1, 1.0)


def test_a_pasted_job_or_the_site_name_links_too_but_not_a_mention_that_it_works():
    by_job = judge(T, T, [Named("panda_id", "1234567890", "ANALY_X", "SITE-X", "US")], [EPISODE], {}, [])
    by_site = judge(T, T, [Named("site", "SITE-X", None, "SITE-X", "US")], [EPISODE], {}, [])
    works = judge(T, T, [Named("queue", "ANALY_X", "ANALY_X", "SITE-X", "US", complaint=False)], [EPISODE], {}, [])
    assert by_job.verdict == "site" and "ran at ANALY_X" in by_job.links[0][2]
    assert by_site.verdict == "site" and by_site.links[0][1] == 0.7
    assert works.verdict == "unknown"


def test_not_the_site_when_the_named_queue_passed_its_tests():
    result = judge(T, T, [Named("queue", "ANALY_Y", "ANALY_Y", "SITE-Y", "DE")], [EPISODE],
                   {"ANALY_Y": Figures("ANALY_Y", 50, 2, 1)}, [])
    assert result.verdict == "not_site" and "passed 48 of 50" in result.reason


def test_central_when_an_incident_overlaps_and_unknown_without_tests():
    incident = CentralIncident(T - timedelta(hours=3), T + timedelta(hours=1), "mass_failure",
                               "12 of 40 queues failing at once", ("ANALY_Y", "ANALY_Z"))
    central = judge(T, T, [Named("queue", "ANALY_Y", "ANALY_Y", "SITE-Y", "DE")], [], {}, [incident])
    unknown = judge(T, T, [Named("queue", "ANALY_Y", "ANALY_Y", "SITE-Y", "DE")], [], {}, [])
    nothing = judge(T, T, [], [EPISODE], {}, [])
    assert central.verdict == "central" and "12 of 40" in central.reason and central.confidence >= 0.8
    assert unknown.verdict == "unknown" and "no test results" in unknown.reason
    assert nothing.verdict == "unknown"


Y = Named("queue", "ANALY_Y", "ANALY_Y", "SITE-Y", "DE")
WAVE = CentralIncident(T - timedelta(hours=2), T - timedelta(minutes=30), "central_failures",
                       "central-class failures at 9 queues (40 test jobs: NOUSERTARBALL x40): a central problem",
                       ("ANALY_Y", "ANALY_Z"))


def test_a_central_incident_explains_only_tickets_written_while_it_lasts():
    during = judge(T, T, [], [], {}, [WAVE])
    margin = judge(T + timedelta(minutes=20), T + timedelta(minutes=20), [], [], {}, [WAVE])
    hours_later = judge(T + timedelta(hours=5), T + timedelta(hours=5), [], [], {}, [WAVE])
    day_before = judge(T - timedelta(days=1), T - timedelta(days=1), [], [], {}, [WAVE])
    assert during.verdict == margin.verdict == "central"
    assert hours_later.verdict != "central" and day_before.verdict != "central"


def test_a_central_incident_does_not_explain_a_ticket_that_contradicts_it():
    other_queue = judge(T, T, [Named("queue", "ANALY_W", "ANALY_W", "SITE-W", "US")], [], {}, [WAVE])
    hit_queue = judge(T, T, [Y], [], {}, [WAVE])
    site_error = judge(T, T, [Named("error_text", "Get error:", error_class="site")], [], {}, [WAVE])
    central_error = judge(T, T, [Named("error_code", "1246", error_class="central")], [], {}, [WAVE])
    assert other_queue.verdict != "central" and "did not hit" in " ".join(other_queue.against_site)
    assert hit_queue.verdict == "central" and hit_queue.confidence > 0.8
    assert site_error.verdict != "central"
    assert central_error.verdict == "central"


PLACES = Places({"SITE-Y": ["ANALY_Y", "ANALY_Y2"], "SITE-X": ["ANALY_X"]}, {"site-y_datadisk": ["ANALY_Y2"]})
HEALTHY = {"ANALY_Y": Figures("ANALY_Y", 40, 1, 0), "ANALY_Y2": Figures("ANALY_Y2", 30, 0, 0)}


def test_not_the_site_for_a_named_site_endpoint_or_job_whose_queues_passed():
    site = judge(T, T, [Named("site", "SITE-Y", None, "SITE-Y", "DE")], [], HEALTHY, [], PLACES)
    endpoint = judge(T, T, [Named("endpoint", "SITE-Y_DATADISK", None, "SITE-Y", "DE")], [], HEALTHY, [], PLACES)
    job = judge(T, T, [Named("panda_id", "6400000001", "ANALY_Y", "SITE-Y", "DE")], [], HEALTHY, [], PLACES)
    half = judge(T, T, [Named("site", "SITE-Y", None, "SITE-Y", "DE")], [],
                 {**HEALTHY, "ANALY_Y2": Figures("ANALY_Y2", 30, 20, 20)}, [], PLACES)
    assert site.verdict == "not_site" and "ANALY_Y passed 39 of 40" in site.reason and "ANALY_Y2" in site.reason
    assert endpoint.verdict == "not_site" and "ANALY_Y2 passed 30 of 30" in endpoint.reason
    assert "ANALY_Y " not in endpoint.reason  # an endpoint stands for the queues reading from it
    assert job.verdict == "not_site" and "ANALY_Y passed" in job.reason
    assert half.verdict == "unknown"


def test_a_ticket_naming_nothing_gets_a_weaker_not_the_site_when_the_grid_was_healthy():
    grid = Figures("12 queues", 400, 9, 0)
    healthy = judge(T, T, [], [], {}, [], PLACES, grid)
    degraded = judge(T, T, [], [EPISODE], {}, [], PLACES, grid)
    assert healthy.verdict == "not_site" and "no test failed anywhere in that window" in healthy.reason
    assert healthy.confidence < 0.5
    assert degraded.verdict == "unknown"


def test_a_pasted_job_s_error_from_panda_is_evidence():
    site_error = Named("job_error", "6400000001", "ANALY_Y", "SITE-Y", "DE", error_class="site")
    user_error = Named("job_error", "6400000001", "ANALY_Y", "SITE-Y", "DE", error_class="user")
    job = Named("panda_id", "6400000001", "ANALY_Y", "SITE-Y", "DE")
    site = judge(T, T, [job, site_error], [], {}, [], PLACES)
    user = judge(T, T, [job, user_error], [], HEALTHY, [], PLACES)
    assert site.verdict == "site" and "PanDA" in site.reason and site.confidence <= 0.6
    assert user.verdict == "not_site" and any("user error" in line for line in user.against_site)


def test_every_verdict_has_a_confidence_a_reply_and_evidence_on_both_sides():
    works = Named("queue", "ANALY_Z", "ANALY_Z", "SITE-Z", "UK", complaint=False)
    results = [judge(T, T, [Named("queue", "ANALY_X", "ANALY_X", "SITE-X", "US"), works], [EPISODE], {}, []),
               judge(T, T, [], [], {}, [WAVE]),
               judge(T, T, [Y], [], HEALTHY, [], PLACES),
               judge(T, T, [], [], {}, [])]
    assert [r.verdict for r in results] == ["site", "central", "not_site", "unknown"]
    for result in results:
        assert result.reply.endswith(".") and len(result.reply) > 40
        assert result.evidence["reply"] == result.reply and result.evidence["confidence"] == result.confidence
    assert results[0].for_site and "ANALY_Z works" in " ".join(results[0].against_site)
    assert results[0].confidence > results[2].confidence - 0.5 and results[3].confidence == 0.0
    assert "--excludedSite=ANALY_X" in results[0].reply and "central" in results[1].reply


def test_an_episode_long_before_the_ticket_is_not_linked():
    old = EpisodeRef(2, "ANALY_X", "SITE-X", "US", T - timedelta(days=6), T - timedelta(days=5), "metrics", "old")
    result = judge(T, T, [Named("queue", "ANALY_X", "ANALY_X", "SITE-X", "US")], [old], {}, [])
    assert result.verdict != "site" and result.links == []
