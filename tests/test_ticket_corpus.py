"""Extraction and verdicts on the labelled support threads (tests/data/ticket_corpus/), as
bench/ticket_corpus.py prints them: floors that fail if extraction or the verdicts get worse."""
from __future__ import annotations

import pytest

from bench.ticket_corpus import VERDICTS, extraction, load, verdicts
from robot.classify import load_table
from robot.tickets.extract import TopologyIndex


@pytest.fixture(scope="module")
def corpus():
    corpus = load()
    return corpus, TopologyIndex.from_topology(corpus.topology, corpus.aliases), load_table()


def test_the_corpus_is_large_varied_and_labelled_with_known_names(corpus):
    data, index, _ = corpus
    assert len(data.threads) >= 200 and len({t["id"] for t in data.threads}) == len(data.threads)
    assert {t["truth"] for t in data.threads} == set(VERDICTS)
    assert sum(any("desk" in m for m in t["messages"]) for t in data.threads) >= 90  # replies by the desk
    queues = {q.name for q in data.topology.queues}
    for thread in data.threads:
        for place, stance in (thread.get("places") or {}).items():
            assert index.lookup(place) is not None and stance in ("fails", "works", "ran"), (thread["id"], place)
        assert thread["truth"] != "site" or set(thread["broken"]) <= queues, thread["id"]


def test_extraction_precision_and_recall_hold_their_floors(corpus):
    figures, misses = extraction(*corpus[:1], corpus[1], corpus[2])
    assert figures["place_precision"] >= 0.97 and figures["place_recall"] >= 0.97, misses
    assert figures["complaint_precision"] >= 0.92 and figures["complaint_recall"] >= 0.93, misses
    assert figures["stance_accuracy"] >= 0.85, misses


def test_verdicts_on_the_corpus_hold_their_floors(corpus):
    confusion, wrong = verdicts(*corpus)
    right = {truth: confusion[(truth, truth)] / sum(confusion[(truth, v)] for v in VERDICTS) for truth in VERDICTS}
    assert right["site"] >= 0.95 and right["central"] >= 0.9 and right["not_site"] >= 0.95, wrong
    assert sum(confusion[(v, v)] for v in VERDICTS) >= 0.93 * sum(confusion.values()), wrong
    assert confusion[("not_site", "site")] == 0 and confusion[("central", "site")] == 0, wrong
