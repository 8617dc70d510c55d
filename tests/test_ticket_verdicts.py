"""Episodes from exclusions and failure windows, and the verdict on a ticket."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from robot.tickets.episodes import Failure, Move, from_failures, from_transitions
from robot.tickets.verdict import CentralIncident, EpisodeRef, Figures, Named, judge

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
    incident = CentralIncident(T - timedelta(hours=3), "mass_failure", "12 of 40 queues failing at once")
    central = judge(T, T, [Named("queue", "ANALY_Y", "ANALY_Y", "SITE-Y", "DE")], [], {}, [incident])
    unknown = judge(T, T, [Named("queue", "ANALY_Y", "ANALY_Y", "SITE-Y", "DE")], [], {}, [])
    nothing = judge(T, T, [], [EPISODE], {}, [])
    assert central.verdict == "central" and "12 of 40" in central.reason
    assert unknown.verdict == "unknown" and "no test results" in unknown.reason
    assert nothing.verdict == "unknown"


def test_an_episode_long_before_the_ticket_is_not_linked():
    old = EpisodeRef(2, "ANALY_X", "SITE-X", "US", T - timedelta(days=6), T - timedelta(days=5), "metrics", "old")
    result = judge(T, T, [Named("queue", "ANALY_X", "ANALY_X", "SITE-X", "US")], [old], {}, [])
    assert result.verdict != "site" and result.links == []
