"""Extraction and verdicts on the labelled support threads of tests/data/ticket_corpus/.

    .venv/bin/python bench/ticket_corpus.py [--show-misses]

Extraction: every queue, site or storage endpoint the user's messages name, with what they say about
it (fails, works, ran), against the labels; precision and recall of the places found, of the
complaints (fails or ran: a place the verdict must look at) and the share of right stances.

Verdicts: each thread is joined to a robot history that matches its label (`truth`): for `site` its
`broken` queues fail their tests with site errors from 8 h before the first message to 6 h after;
for `central` test jobs fail with central errors at most queues (the named ones among them) for
3 h, ending `incident_ended` hours before the first message (0: still going on then); every other
queue passes (with a few user failures). The verdict is the robot's own (robot.tickets.store.judge_ticket
on the episodes and incidents the robot's pure functions find in that history), printed as a
confusion table, true label by verdict.
"""
from __future__ import annotations

import argparse
import hashlib
import sys
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from robot.classify import load_table  # noqa: E402
from robot.incidents import Ending, central_waves  # noqa: E402
from robot.tickets.episodes import Failure, from_failures  # noqa: E402
from robot.tickets.extract import TopologyIndex, extract_thread  # noqa: E402
from robot.tickets.store import TestResults, judge_ticket, named_from  # noqa: E402
from robot.tickets.verdict import CentralIncident, EpisodeRef, Places  # noqa: E402
from robot.topology import EndpointInfo, QueueInfo, SiteInfo, Topology  # noqa: E402

CORPUS = Path(__file__).resolve().parent.parent / "tests" / "data" / "ticket_corpus"
T0 = datetime(2026, 11, 10, 12, 0, tzinfo=timezone.utc)  # every thread's first message
REPLY_GAP = timedelta(hours=3)
STEP = timedelta(minutes=10)  # one test job ends per queue every 10 minutes
PLACES = ("queue", "site", "endpoint")
VERDICTS = ("site", "central", "not_site", "unknown")


@dataclass
class Corpus:
    topology: Topology
    aliases: dict[str, str]
    threads: list[dict[str, Any]]


def load(folder: Path = CORPUS) -> Corpus:
    raw = yaml.safe_load((folder / "topology.yaml").read_text())
    sites, endpoints, queues = [], [], []
    for site, spec in raw["sites"].items():
        sites.append(SiteInfo(site, spec["cloud"]))
        endpoints += [EndpointInfo(e, site) for e in spec["endpoints"]]
        queues += [QueueInfo(q, site, spec["cloud"], tuple(spec["endpoints"][:1])) for q in spec["queues"]]
    threads = []
    for path in sorted(folder.glob("*.yaml")):
        if path.name != "topology.yaml":
            threads += yaml.safe_load(path.read_text())
    return Corpus(Topology(tuple(sites), tuple(endpoints), tuple(queues)), raw.get("aliases", {}), threads)


def messages(thread: dict[str, Any]) -> list[tuple[bool, str]]:
    """(from the support desk, body) per message."""
    return [(next(iter(m)) == "desk", next(iter(m.values()))) for m in thread["messages"]]


def canonical(mention: Any) -> str:
    return {"queue": mention.queue, "site": mention.site}.get(mention.kind) or mention.value.upper()


# -- extraction ------------------------------------------------------------------------------------
def extraction(corpus: Corpus, index: TopologyIndex, table: Any) -> tuple[dict[str, float], list[str]]:
    """Precision and recall of places, of complaints, and the share of right stances."""
    counts: Counter[str] = Counter()
    misses = []
    endpoints = {e.name.upper(): e.name for e in corpus.topology.endpoints}
    for thread in corpus.threads:
        gold = {(endpoints.get(k.upper(), k)).upper(): v for k, v in (thread.get("places") or {}).items()}
        found = {canonical(m).upper(): m.stance for m in extract_thread(thread["subject"], messages(thread), index,
                                                                         table) if m.kind in PLACES and m.stance}
        for place in gold.keys() | found.keys():
            want, got = gold.get(place), found.get(place)
            counts["place_tp"] += bool(want and got)
            counts["place_fp"] += bool(got and not want)
            counts["place_fn"] += bool(want and not got)
            counts["complaint_tp"] += want in ("fails", "ran") and got in ("fails", "ran")
            counts["complaint_fp"] += want not in ("fails", "ran") and got in ("fails", "ran")
            counts["complaint_fn"] += want in ("fails", "ran") and got not in ("fails", "ran")
            if want and got:
                counts["stance_right"] += want == got
            if want != got:
                misses.append(f"{thread['id']}: {place}: labelled {want or '-'}, found {got or '-'}")
    figures = {
        "place_precision": _ratio(counts["place_tp"], counts["place_tp"] + counts["place_fp"]),
        "place_recall": _ratio(counts["place_tp"], counts["place_tp"] + counts["place_fn"]),
        "complaint_precision": _ratio(counts["complaint_tp"], counts["complaint_tp"] + counts["complaint_fp"]),
        "complaint_recall": _ratio(counts["complaint_tp"], counts["complaint_tp"] + counts["complaint_fn"]),
        "stance_accuracy": _ratio(counts["stance_right"], counts["place_tp"]),
        "places_labelled": counts["place_tp"] + counts["place_fn"],
    }
    return figures, misses


def _ratio(a: int, b: int) -> float:
    return a / b if b else 1.0


# -- verdicts ------------------------------------------------------------------------------------
def history(thread: dict[str, Any], topology: Topology, named_queues: set[str]) -> list[Failure]:
    """Test results of every queue around the thread, matching its truth (see the module docstring)."""
    broken = set(thread.get("broken") or ()) if thread["truth"] == "site" else set()
    outage = None
    if thread["truth"] == "central":
        end = T0 - timedelta(hours=thread.get("incident_ended", 0)) + (timedelta(hours=1) if not thread.get(
            "incident_ended") else timedelta(0))
        outage = (end - timedelta(hours=3), end)
    results = []
    for q in topology.queues:
        seed = int(hashlib.sha256(f"{thread['id']}{q.name}".encode()).hexdigest()[:8], 16)
        hit = outage is not None and (q.name in named_queues or seed % 10 < 6)
        time, n = min(T0 - timedelta(hours=26), outage[0] - timedelta(hours=2) if outage else T0), seed % 7
        while time <= T0 + timedelta(hours=12):
            n += 1
            if q.name in broken and T0 - timedelta(hours=8) <= time <= T0 + timedelta(hours=6) and n % 5:
                results.append(Failure(q.name, time, True, "site", "STAGEINFAILED", None))
            elif hit and outage[0] <= time <= outage[1] and n % 4:
                results.append(Failure(q.name, time, True, "central", "NOUSERTARBALL", None))
            elif n % 25 == 0:
                results.append(Failure(q.name, time, True, "user", "EXEERROR", None))
            else:
                results.append(Failure(q.name, time, False, None, None, None))
            time += STEP
    return results


def verdicts(corpus: Corpus, index: TopologyIndex, table: Any) -> tuple[Counter[tuple[str, str]], list[str]]:
    places = Places.from_topology(corpus.topology)
    where = {q.name: (q.site, q.cloud) for q in corpus.topology.queues}
    table_out: Counter[tuple[str, str]] = Counter()
    wrong = []
    for n, thread in enumerate(corpus.threads):
        mentions = extract_thread(thread["subject"], messages(thread), index, table)
        named = [named_from(m) for m in mentions]
        named_queues = {q for m in named if m.complaint for q in places.queues(m)}
        results = history(thread, corpus.topology, named_queues)
        episodes = [EpisodeRef(i, e.queue, *where[e.queue], e.start, e.end, e.source, e.reason, e.error_classes)
                    for i, e in enumerate(from_failures(results))]
        incidents = [CentralIncident(w.start, w.end, "central_failures", w.message, w.queues)
                     for w in central_waves(Ending(r.queue, r.end, r.failed and r.error_class == "central", r.error)
                                            for r in results)]
        last = T0 + REPLY_GAP * (len(thread["messages"]) - 1)
        result = judge_ticket(T0, last, named, episodes, TestResults.from_rows(
            (r.queue, r.end, r.failed, r.error_class) for r in results), incidents, places)
        table_out[(thread["truth"], result.verdict)] += 1
        if result.verdict != thread["truth"]:
            wrong.append(f"{thread['id']}: {thread['truth']} judged {result.verdict}: {result.reason}")
    return table_out, wrong


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--show-misses", action="store_true", help="List every extraction miss and wrong verdict.")
    args = parser.parse_args()
    corpus = load()
    table = load_table()
    index = TopologyIndex.from_topology(corpus.topology, corpus.aliases)
    figures, misses = extraction(corpus, index, table)
    print(f"{len(corpus.threads)} labelled threads, {figures['places_labelled']} labelled places")
    print(f"places:     precision {figures['place_precision']:.1%}  recall {figures['place_recall']:.1%}")
    print(f"complaints: precision {figures['complaint_precision']:.1%}  recall {figures['complaint_recall']:.1%}")
    print(f"stance (fails / works / ran) right for {figures['stance_accuracy']:.1%} of the places found")
    confusion, wrong = verdicts(corpus, index, table)
    print("\nverdicts (rows: true label, columns: verdict)")
    print(f"{'':>10} " + " ".join(f"{v:>9}" for v in VERDICTS) + "    right")
    for truth in VERDICTS:
        row = [confusion[(truth, v)] for v in VERDICTS]
        if sum(row):
            print(f"{truth:>10} " + " ".join(f"{c:>9}" for c in row) + f"    {confusion[(truth, truth)]}/{sum(row)}")
    right = sum(confusion[(v, v)] for v in VERDICTS)
    print(f"right: {right} of {sum(confusion.values())} ({right / sum(confusion.values()):.1%})")
    if args.show_misses:
        print("\n".join(["", "extraction misses:", *misses, "", "wrong verdicts:", *wrong]))


if __name__ == "__main__":
    main()
