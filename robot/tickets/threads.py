"""Group support mail into threads and derive each thread's desk state from its labels.

Grouping (union-find):
1. Message-ID / In-Reply-To / References link messages (also via referenced ids that are missing
   from the archive, so siblings of a lost parent still join).
2. Messages with the same `thread_hint` (Gmail thread id, "ggus:<N>") join.
3. Fallback for truncated References: a *reply* (subject had a "Re:"/"Fwd:"/"AW:"-like prefix, or
   it carries In-Reply-To/References) joins the earlier thread with the same normalised subject if
   it is no later than `window` after that thread's last message so far, unless both threads
   carry different hints (Gmail/GGUS already decided they differ). Fresh, non-reply mails with a
   common subject ("job failed") stay separate.

Key: the thread hint of the earliest message carrying one, else the earliest message's id.
Duplicate Message-IDs (the same mail in two archives) are kept once.

State: the latest message carrying a status label decides: a closed label ("Closed",
"Status/CLOSED", "Status/SOLVED", "GGUS/solved", ...) -> "closed"; "Status/WAITING" (or GGUS
"waiting for submitter's reply", "on hold") -> "waiting"; anything else (Status/ACTIVE,
Status/URGENT, no status label) -> "open". Simple re-open rule: a closed thread whose last message
comes from someone other than the support addresses is "open" again (the user replied).
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Iterable

from robot.tickets.mail import Message

DEFAULT_SUPPORT_ADDRESSES = ("atlas-support@example.org",)

_PREFIX_RE = re.compile(r"^\s*(?:re|fwd?|aw|wg|sv|tr|antw|rif|vs|ref)\s*(?:\[\d+\]|\(\d+\))?\s*:\s*",
                        re.IGNORECASE)
_TAG_RE = re.compile(r"^\s*\[[^\[\]]{1,60}\]\s*")

_CLOSED = {"closed", "solved", "unsolved", "verified", "resolved", "fixed", "done"}
_WAITING = {"waiting", "waiting for submitter's reply", "on hold"}


@dataclass
class Thread:
    key: str
    subject: str
    messages: list[Message] = field(default_factory=list)
    labels: tuple[str, ...] = ()
    state: str = "open"


def normalise_subject(subject: str) -> tuple[str, bool]:
    """(normalised subject, had a reply/forward prefix)."""
    text = subject or ""
    reply = False
    while True:
        before = text
        text = _TAG_RE.sub("", text)
        stripped = _PREFIX_RE.sub("", text)
        if stripped != text:
            reply = True
            text = stripped
        if text == before:
            break
    return re.sub(r"\s+", " ", text).strip().casefold(), reply


@functools.lru_cache(maxsize=1024)  # an archive repeats a few labels
def _status(label: str) -> str | None:
    low = label.strip().casefold()
    if low == "closed":
        return "closed"
    for prefix in ("status/", "ggus/"):
        if low.startswith(prefix):
            value = low[len(prefix):].strip()
            if value in _CLOSED:
                return "closed"
            if value in _WAITING:
                return "waiting"
            return "open"
    return None


def thread_state(messages: list[Message], support_addresses: Iterable[str]) -> str:
    state = "open"
    for msg in messages:  # sorted by date: the latest status-carrying message wins
        found = {s for s in (_status(label) for label in msg.labels) if s}
        if found:
            state = "closed" if "closed" in found else "waiting" if "waiting" in found else "open"
    support = {a.casefold() for a in support_addresses}
    if state == "closed" and messages and messages[-1].sender.casefold() not in support:
        state = "open"
    return state


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        self.parent.setdefault(x, x)
        root = x
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[x] != root:
            self.parent[x], x = root, self.parent[x]
        return root

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra


def thread(messages: Iterable[Message], window: timedelta = timedelta(days=14),
           support_addresses: Iterable[str] = DEFAULT_SUPPORT_ADDRESSES) -> list[Thread]:
    """Group messages into threads, sorted by each thread's first message."""
    unique: dict[str, Message] = {}
    for msg in messages:
        unique.setdefault(msg.message_id, msg)
    ordered = sorted(unique.values(), key=lambda m: (m.date, m.message_id))
    nodes = ["id:" + msg.message_id for msg in ordered]
    uf = _UnionFind()
    for msg, node in zip(ordered, nodes):
        uf.find(node)
        for ref in (*msg.references, *([msg.in_reply_to] if msg.in_reply_to else [])):
            uf.union(node, "id:" + ref)
        if msg.thread_hint:
            uf.union(node, "hint:" + msg.thread_hint)

    hints: dict[str, set[str]] = {}  # root -> thread hints of its messages
    for msg, node in zip(ordered, nodes):
        if msg.thread_hint:
            hints.setdefault(uf.find(node), set()).add(msg.thread_hint)

    # subject fallback, in time order
    by_subject: dict[str, str] = {}  # normalised subject -> a node of the latest such thread
    last_date: dict[str, datetime] = {}  # root -> date of its latest message processed so far
    for msg, node in zip(ordered, nodes):
        mine = uf.find(node)
        dates = [msg.date]
        subject, had_prefix = normalise_subject(msg.subject)
        is_reply = had_prefix or bool(msg.in_reply_to) or bool(msg.references)
        if subject and is_reply and subject in by_subject:
            other = uf.find(by_subject[subject])
            if other != mine and msg.date - last_date[other] <= window:
                ha, hb = hints.get(other, set()), hints.get(mine, set())
                if not (ha and hb and ha.isdisjoint(hb)):
                    uf.union(other, mine)
                    dates.append(last_date.pop(other))
                    merged = hints.pop(other, set()) | hints.pop(mine, set())
                    if merged:
                        hints[uf.find(node)] = merged
        if mine in last_date:
            dates.append(last_date.pop(mine))
        last_date[uf.find(node)] = max(dates)
        if subject:
            by_subject[subject] = node

    groups: dict[str, list[Message]] = {}
    support = {a.casefold() for a in support_addresses}
    for msg, node in zip(ordered, nodes):
        groups.setdefault(uf.find(node), []).append(msg)
    threads = []
    for msgs in groups.values():
        hint = next((m.thread_hint for m in msgs if m.thread_hint), None)
        labels: list[str] = []
        for m in msgs:
            labels.extend(label for label in m.labels if label not in labels)
        subject = next((m.subject for m in msgs if m.subject), "")
        threads.append(Thread(key=hint or msgs[0].message_id, subject=subject, messages=msgs,
                              labels=tuple(labels), state=thread_state(msgs, support)))
    threads.sort(key=lambda t: (t.messages[0].date, t.key))
    return threads
