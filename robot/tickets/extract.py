"""What a support ticket names: queues, sites, storage endpoints, clouds, PanDA jobs, JEDI tasks and errors.

Pure functions, no I/O. The text is untrusted: it is only searched with precompiled patterns, never
evaluated or rendered, and only its first `MAX_SCAN_CHARS` characters are read.

Names are matched on token boundaries (a token is a maximal run of letters, digits, "_" and "-",
because queue names contain both), by one dictionary lookup per token: a name inside a longer
token ("ANALY_FZK" inside "ANALY_FZK_SHORT", "MWT2" inside "ANALY_MWT2_UCORE") never matches, and
neither does a token that is part of a host name or mail address ("dcache.mwt2.org").

What the ticket says about each place (its stance), sentence by sentence, in the user's messages:

- `fails`: the words nearest the name say something fails or misbehaves there ("jobs at X fail",
  "X is down", "stuck at X", "slow", "No space left", "doesn't work at X", "X is not OK");
- `works`: they say it works ("runs fine at X", "X is OK", "no problems at X", "finished at X") or
  the user left it out ("I excluded X", "except X", "--excludedSite=A,X", "X is excluded");
- `ran`: the sentence says neither (only where a job ran, was sent, or where input is).

Sentences end at ".", "!", "?", ";", a blank line or a line that does not continue the one before
(logs, indented text); they are cut at contrasts ("but", "while", "whereas", "although") and then at
commas. The nearest cue of the smallest piece that has one decides; a negation ("not", "n't",
"never", "no longer") turns "works" into "fails". A place said to fail anywhere fails; else one said
to work works. The support desk's messages (and text quoted after "... wrote:") are not the user's:
a place only they name has no stance and is no complaint. Complaints are `fails` and `ran` (places
a verdict must look at). IDs and errors are found in every message and are always complaints.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from robot.classify import ErrorClass
from robot.topology import Topology

MAX_SCAN_CHARS = 200_000
SNIPPET_CHARS = 80
QUEUE_PREFIX = "ANALY_"

TOPOLOGY_KINDS = ("queue", "site", "endpoint", "cloud")

# --- names ---------------------------------------------------------------------------------------
# letters and digits joined by "_" and "-"; leading and trailing "_" and "-" are not part of the name
TOKEN = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_\-]*[A-Za-z0-9])?")
# "X cloud", "X-cloud", "cloud: X", "cloud=X", "cloud X"; the code itself must be written in capitals
CLOUD = re.compile(r"\b(?P<pre>[A-Z]{2,5})[ \t-]+(?i:clouds?)\b|\b(?i:cloud)[ \t]*[:=]?[ \t]*(?P<post>[A-Z]{2,5})\b")

# --- stances (see the module docstring) ---------------------------------------------------------
_LIST = r"(?:[\w\-]+\s*(?:,|\band\b|\bor\b|&)\s*)*"
LEFT_OUT_BEFORE = re.compile(
    r"(?i)(?:\b(?:i\s+)?(?:have\s+)?(?:excluded?|excluding|except(?:\s+for)?|apart\s+from|besides|other\s+than|"
    r"avoid(?:ing)?|instead\s+of)|--?excluded?sites?\s*[=:]?)"
    r"(?:\s+|(?<=[=:])\s*)(?:the\s+)?(?:(?:site|queue|queues|sites|endpoint|cloud)\s+)?" + _LIST + r"$")
LEFT_OUT_AFTER = re.compile(r"(?i)^\s*(?:\)\s*)?(?:is|was|are|were|has\s+been|have\s+been)\s+(?:already\s+)?excluded\b")
NOT_AT = re.compile(r"(?i)^\W*(?:not|never)\s+(?:at|on|in|with|for|from)\b")
_NEGATION = r"(?:\bnot|n't|\bnever|\bno\s+longer)"
NEGATED_WORKS = re.compile(rf"(?i){_NEGATION}\s+(?:\w+\s+)?(?:work\w*|fine|ok|okay|run\w*|ran|succeed\w*|"
                           r"pass\w*|start\w*|finish\w*|complet\w*|healthy|good|available)\b")
NO_TROUBLE = re.compile(r"(?i)\b(?:no|without(?:\s+any)?|zero|0%?)\s+(?:problems?|issues?|failures?|errors?|trouble)\b"
                        r"|\bnot\s+affected\b")
WORKS = re.compile(r"(?i)\b(?:fine|ok|okay|well|success\w*|succeed\w*|finish(?:ed|es)?|complet(?:ed|es)|passe[sd]|"
                   r"went\s+through|perfect(?:ly)?|works?|worked|working|runs?\s+(?:again|now)|faster|fast|healthy|"
                   r"good)\b")
FAILS = re.compile(
    r"(?i)\b(?:fail\w*|\w*errors?|\w*exceptions?|core\s+dumped|crash\w*|abort\w*|die[sd]?|dying|dead|kill\w*|stuck|hang\w*|hung|timed?[ -]?out|"
    r"timeouts?|slow\w*|broken|down|downtime|problems?|issues?|unavailable|unreachable|refused|denied|cannot|"
    r"can't|could\s+not|couldn't|unable|not\s+found|missing|no\s+such|lost|exceed\w*|segfault\w*|segmentation|"
    r"sig(?:segv|bus|term|kill)|signal\s+\d+|evicted|drain\w*|activated|wait\w*|pending|holding|full|"
    r"no\s+space|corrupt\w*|mismatch|wrong|bad|offline|brokeroff|blacklisted|expired|exit\s+code|empty|invalid|"
    r"not\s+valid|overloaded|limit|reset)\b")
# "it happens at X", "seen at X", "this is from my jobs at X": the sentence before says what happens there
ANAPHORA = re.compile(r"(?i)\b(?:(?:it|this|that|the\s+same)\s+(?:also\s+)?(?:happens?|happened|occurs?|is\s+from|"
                      r"comes\s+from|was\s+at|is\s+at)|seen|saw|same\s+(?:error|problem|thing|issue|failure)s?)\b")
INTRO_END = re.compile(r"(?i)(?::|\b(?:with|by|from|says|said|shows?|reads?|gives?|gets?|see))\s*$")
NOT_PROSE = re.compile(r"[ \t>|*\-\d]")  # indented, quoted, a list or a log line
# (the punctuation first, then the abbreviations it ends looked behind: a fast scan for the punctuation)
SENTENCE_END = re.compile(r"[.!?;](?<!\be\.g.)(?<!\bi\.e.)(?<!\betc.)(?<!\bvs.)(?<!\bca.)(?=\s|$)|\n\s*\n")
CONTRAST = re.compile(r"(?i)\b(?:but|while|whereas|however|although|though)\b")
PIECE = re.compile(r",")
QUOTE_INTRO = re.compile(r"(?im)^.*\bwrote:\s*$|^-+\s*original message\s*-+\s*$")
STANCE_RANK = {"fails": 3, "works": 2, "ran": 1}
CUES = ((NEGATED_WORKS, "fails"), (NO_TROUBLE, "works"), (ANAPHORA, "before"), (FAILS, "fails"), (WORKS, "works"))
# The cue patterns are matched case-sensitively on the lower-cased text: the same matches as ignoring
# case on the text, several times faster, except where the text holds one of the four characters that
# Python's case-insensitive matching takes for ASCII letters (those texts use the patterns as written).
LOWER_CUES = tuple((re.compile(pattern.pattern.removeprefix("(?i)")), stance) for pattern, stance in CUES)
FOLDS_TO_ASCII = re.compile("[\u0130\u0131\u017f\u212a]")  # İ ı ſ K

# --- job and task IDs ----------------------------------------------------------------------------
PANDA_LINK = re.compile(r"(?i)\bpandaid\s*[=:]\s*([1-9]\d{0,11})\b")  # pandaid=0: no job
TASK_LINK = re.compile(r"(?i)(?:\b(?:jedi)?taskid\s*[=:]\s*|/tasks?/)(\d{1,10})\b")
BARE_NUMBER = re.compile(r"\b\d{8,11}\b")
PANDA_CONTEXT = re.compile(r"(?i)panda|job")
TASK_CONTEXT = re.compile(r"(?i)task")
ID_CONTEXT_CHARS = 80

# --- error codes and texts -----------------------------------------------------------------------
PILOT_CODE = re.compile(r"\b1\d{3}\b")
# the number follows "error", "code" or "pilot" (maybe after other codes: "error codes 1098, 1099")
CODE_CONTEXT = re.compile(r"(?i)(?:error|code|pilot)[^\d\n]{0,25}(?:1\d{3}\s*(?:,|/|\bor\b|\band\b)\s*)*$")
CODE_CONTEXT_CHARS = 60

_FAILURE = r"(?:fail\w*|errors?|timed?[ -]?out|timeouts?|problems?|broken|down|not\s+(?:alive|available|mounted|working))"
_CONTAINER = r"(?:singularity|apptainer)"
_CONTAINER_FAILURE = r"(?:fail\w*|errors?|cannot|could\s+not|unable)"
_STAGE = r"stage[- ]?(?:in|out)"


@dataclass(frozen=True)
class ErrorText:
    """A known error text: cheap lower-case triggers, the pattern, and its pilot code by direction."""
    triggers: tuple[str, ...]  # the pattern is only run on texts containing one of these
    pattern: re.Pattern
    code_in: int | None  # stage-in
    code_out: int | None  # stage-out
    code: int | None  # direction unknown


def _error_text(triggers: tuple[str, ...], pattern: str, code_in: int | None, code_out: int | None = None,
                code: int | None = None, *, directional: bool = False) -> ErrorText:
    """The pattern is matched against the lower-cased text (so that literal prefixes are searched fast)."""
    if re.search(r"\\[A-Z]", pattern):
        raise ValueError(f"error-text patterns are lower-cased, so no upper-case escapes: {pattern}")
    if not directional:
        code_out = code = code_in
    return ErrorText(triggers, re.compile(pattern.lower()), code_in, code_out, code)


def _failure_near(thing: str, failure: str) -> str:
    return rf"\b{thing}\b[^\n]{{0,60}}?\b{failure}|\b{failure}\b[^\n]{{0,40}}?\b{thing}\b"


_STAGE_TRIGGER = ("stage",)
ERROR_TEXTS: tuple[ErrorText, ...] = (
    _error_text(("get error:",), r"\bGet error:", 1099),
    _error_text(("put error:",), r"\bPut error:", 1137),
    _error_text(("lfc_creatg",), r"\blfc_creatg failed", None),
    _error_text(("copy command",), r"\bCopy command returned error code \d+", None),
    _error_text(("no space left",), r"\bNo space left on device", 1098, 1333, 1098, directional=True),
    _error_text(("unreachable",), r"\bNetwork is unreachable", 1327),
    _error_text(("not available",), r"\bservice (?:is )?not available\b", 1324),
    _error_text(("tarball",), r"\buser (?:tarball|sandbox) (?:could not|cannot|can't|was not|not)\b[^\n]{0,20}"
                              r"|\bnousertarball\b", 1246),
    _error_text(("rucio",), r"\brucio service (?:is )?(?:not available|unavailable)|\bcannot connect to the rucio server", 1316),
    _error_text(("server responded",), r"\[ERROR\] Server responded with an error", 1362),
    _error_text(("xrdadler32",), r"\bfailed xrdadler32", 1171, 1172, None, directional=True),
    _error_text(("globus_xio:",), r"\bglobus_xio:", 1180, 1181, None, directional=True),
    _error_text(("establish context",), r"\bCould not establish context", 1163),
    _error_text(("cvmfs",), r"\bCVMFSISNOTALIVE\b|" + _failure_near("cvmfs", _FAILURE), 1377),
    _error_text(("singularity", "apptainer"), _failure_near(_CONTAINER, _CONTAINER_FAILURE), 1306),
    _error_text(_STAGE_TRIGGER, rf"\b{_STAGE}\b[^\n.]{{0,40}}?\btime[d ]?[- ]?out", 1151, 1152, None,
                directional=True),
    _error_text(_STAGE_TRIGGER, rf"\b{_STAGE}\b[^\n.]{{0,40}}?\b(?:fail\w*|errors?|problems?)"
                                rf"|\b(?:fail\w*|errors?)\s+(?:\w+\s+){{0,3}}?(?:to|at|during|in|on)\s+{_STAGE}\b",
                1099, 1137, None, directional=True),
)
DIRECTION_MARKERS = {"in": ("get error", "stage-in", "stagein", "stage in"),
                     "out": ("put error", "stage-out", "stageout", "stage out")}
DIRECTION_WINDOW = 300  # characters searched for a direction marker on each side


@dataclass(frozen=True)
class Mention:
    kind: str  # queue | site | endpoint | cloud | panda_id | task_id | error_code | error_text
    value: str  # the text as written (first occurrence)
    queue: str | None = None
    site: str | None = None
    cloud: str | None = None
    complaint: bool = True
    snippet: str = ""
    code: int | None = None  # error codes and error texts mapped to a pilot code
    error_class: ErrorClass | None = None  # from the error table, when known
    stance: str | None = None  # places: fails | works | ran; None when only the support desk names it


class _Seen(NamedTuple):
    """One occurrence of a thing, as a Mention without its snippet (made only for the first occurrence)."""
    kind: str
    value: str
    queue: str | None = None
    site: str | None = None
    cloud: str | None = None
    complaint: bool = True
    code: int | None = None
    error_class: ErrorClass | None = None
    stance: str | None = None


_Found = tuple[int, int, _Seen]  # start, end, what was found there


@dataclass(frozen=True)
class _Target:
    kind: str
    name: str  # canonical name of the queue, site, endpoint or cloud
    queue: str | None
    site: str | None
    cloud: str | None


class TopologyIndex:
    """Resolves names written in tickets to the topology, by one dict lookup per token."""

    def __init__(self, names: Mapping[str, _Target], clouds: Iterable[str]):
        self._names = dict(names)
        self._clouds = {c.upper(): c for c in clouds}

    @classmethod
    def from_topology(cls, topology: Topology, aliases: Mapping[str, str] | None = None) -> TopologyIndex:
        """Index queue, site and endpoint names (case-insensitive) and the configured aliases.

        Precedence when two spellings collide: exact queue, endpoint and site names, then aliases,
        then queue names with the `ANALY_` prefix added or removed.
        """
        site_cloud = {s.name: s.cloud for s in topology.sites}
        for q in topology.queues:
            site_cloud.setdefault(q.site, q.cloud)
        endpoint_site = {e.name: e.site for e in topology.endpoints}
        for q in topology.queues:
            for endpoint in q.endpoints:
                endpoint_site.setdefault(endpoint, q.site)
        clouds = set(site_cloud.values())

        exact: dict[str, _Target] = {}
        for site, cloud in site_cloud.items():
            exact[site.lower()] = _Target("site", site, None, site, cloud)
        for endpoint, site in endpoint_site.items():
            exact[endpoint.lower()] = _Target("endpoint", endpoint, None, site, site_cloud.get(site))
        for q in topology.queues:
            exact[q.name.lower()] = _Target("queue", q.name, q.name, q.site, q.cloud)

        names: dict[str, _Target] = {}
        for q in topology.queues:
            upper = q.name.upper()
            other = q.name[len(QUEUE_PREFIX):] if upper.startswith(QUEUE_PREFIX) else QUEUE_PREFIX + q.name
            if other:
                names[other.lower()] = exact[q.name.lower()]
        for alias, target in (aliases or {}).items():
            resolved = exact.get(target.lower())
            if resolved is None and target.upper() in {c.upper() for c in clouds}:
                cloud = next(c for c in clouds if c.upper() == target.upper())
                resolved = _Target("cloud", cloud, None, None, cloud)
            if resolved is not None and alias.strip():
                names[alias.strip().lower()] = resolved
        names.update(exact)
        return cls(names, clouds)

    def lookup(self, name: str) -> _Target | None:
        """The queue, endpoint or site (or aliased thing) a token names, or None."""
        return self._names.get(name.lower())

    def known(self, tokens: set[str]) -> set[str]:
        """The lower-case tokens that name something."""
        return tokens & self._names.keys()

    def cloud(self, code: str) -> str | None:
        return self._clouds.get(code.upper())


def extract(subject: str, body: str, index: TopologyIndex, error_table: Mapping | None = None) -> list[Mention]:
    """Everything a ticket names (its text all written by the user), one mention per thing."""
    return extract_thread(subject, [(False, body or "")], index, error_table)


def extract_thread(subject: str, messages: Sequence[tuple[bool, str]], index: TopologyIndex,
                   error_table: Mapping | None = None) -> list[Mention]:
    """Everything a thread names, one mention per thing, in order of first appearance.

    `messages`: (from the support desk, body) in order. Only the user's text (the subject, their
    messages, what they forward) gives places a stance; the desk's replies and text quoted after
    "... wrote:" do not.
    """
    parts, desk = [subject or ""], [(0, len(subject or ""), False)]
    used = len(parts[0])
    for from_desk, body in messages:
        body = (body or "")[:MAX_SCAN_CHARS - used] if used < MAX_SCAN_CHARS else ""
        quoted = _quoted_from(body)
        for start, end, is_desk in ((0, quoted, from_desk), (quoted, len(body), True)):
            if end > start:
                desk.append((used + 2 + start, used + 2 + end, is_desk))
        parts.append(body)
        used += 2 + len(body)
    text = "\n\n".join(parts)  # a blank line: no sentence runs from one message into the next
    table = error_table or {}
    found: list[_Found] = []
    lower = _lower(text)
    tokens = set(TOKEN.findall(lower))
    cue_text = None if FOLDS_TO_ASCII.search(text) else lower
    found += _names(text, lower, tokens, index, desk, cue_text)
    found += _clouds(text, lower, index, desk, cue_text)
    found += _ids(text, lower)
    found += _error_codes(text, table)
    found += _error_names(text, lower, tokens, table)
    found += _error_texts(text, lower, table)
    return _deduplicate(text, found)


def _quoted_from(body: str) -> int:
    """Where text quoted from an earlier message starts ("On ... wrote:" and what follows), else the end."""
    if "\n-" not in body and not body.startswith("-") and "wrote:" not in body.lower():
        return len(body)  # QUOTE_INTRO needs one of these (the letters of "wrote" have no other case outside ASCII)
    match = QUOTE_INTRO.search(body)
    return match.start() if match else len(body)


def _by_desk(desk: list[tuple[int, int, bool]], position: int) -> bool:
    return next((is_desk for start, end, is_desk in desk if start <= position < end), False)


# --- topology names ------------------------------------------------------------------------------

def _names(text: str, lower: str, tokens: set[str], index: TopologyIndex,
           desk: list[tuple[int, int, bool]], cue_text: str | None = None) -> Iterator[_Found]:
    """Known names among the tokens (`tokens`: every lower-case token of the text, to skip most texts fast)."""
    hits = index.known(tokens)
    if not hits:
        return
    for token in hits:
        target = index.lookup(token)
        for start in _token_starts(lower, token):
            end = start + len(token)
            if _in_host_or_address(text, start, end):
                continue
            stance = None if _by_desk(desk, start) else stance_at(text, start, end, cue_text)
            yield start, end, _Seen(target.kind, text[start:end], target.queue, target.site, target.cloud,
                                      stance in ("fails", "ran"), stance=stance)
            if stance == "fails":
                break  # the name is said to fail: a later occurrence cannot change its mention


_RUN = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


def _token_starts(lower: str, token: str) -> Iterator[int]:
    """Where `token` stands in `lower` as TOKEN finds it, in order: a run of letters, digits, "_" and "-"
    is one token, less its leading and trailing "_" and "-" (found by str.find, not by reading every token)."""
    at, size = lower.find(token), len(lower)
    while at >= 0:
        before, after = at, at + len(token)
        while before and lower[before - 1] in "_-":
            before -= 1
        while after < size and lower[after] in "_-":
            after += 1
        if (not before or lower[before - 1] not in _RUN) and (after == size or lower[after] not in _RUN):
            yield at
        at = lower.find(token, at + 1)


def _in_host_or_address(text: str, start: int, end: int) -> bool:
    before = text[start - 1] if start else ""
    after = text[end:end + 2]
    return before in (".", "@") or after[:1] == "@" or (after[:1] == "." and after[1:2].isalnum())


def _clouds(text: str, lower: str, index: TopologyIndex, desk: list[tuple[int, int, bool]],
            cue_text: str | None = None) -> Iterator[_Found]:
    if "cloud" not in lower:  # CLOUD needs the word (no letter of it has another case outside ASCII)
        return
    for match in CLOUD.finditer(text):
        group = "pre" if match.group("pre") else "post"
        cloud = index.cloud(match.group(group))
        if cloud is None:
            continue
        start, end = match.start(group), match.end(group)
        stance = None if _by_desk(desk, start) else stance_at(text, start, end, cue_text)
        yield start, end, _Seen("cloud", match.group(group), None, None, cloud, stance in ("fails", "ran"),
                                  stance=stance)


def stance_at(text: str, start: int, end: int, lower: str | None = None) -> str:
    """What the sentence around text[start:end] says about the place named there: fails, works or ran.

    `lower`: the text lower-cased (same length), where the cues are looked for case-sensitively;
    None to look for them in the text ignoring case (see LOWER_CUES)."""
    cues = CUES if lower is None else LOWER_CUES
    subject = text if lower is None else lower
    s_start, s_end = _sentence(text, start, end)
    before, after = text[s_start:start], text[end:s_end]
    if LEFT_OUT_BEFORE.search(before[-CLAUSE_WINDOW:]) or LEFT_OUT_AFTER.search(after):
        return "works"
    c_start, c_end = _cut(text, s_start, s_end, start, end, CONTRAST)
    p_start, p_end = _cut(text, c_start, c_end, start, end, PIECE)
    for lo, hi in ((p_start, p_end), (c_start, c_end), (s_start, s_end)):
        cue = _nearest_cue(subject, lo, hi, start, end, cues)
        if cue == "before":
            return _previous_sentence(text, s_start, subject, cues)
        if cue is not None:
            return cue
    if c_start > s_start and NOT_AT.search(text[c_start:start]):
        return "works"  # "... fail, but not at X"
    return "ran"


CLAUSE_WINDOW = 160


def _sentence(text: str, start: int, end: int) -> tuple[int, int]:
    """The sentence around text[start:end] (at most CLAUSE_WINDOW characters on each side).

    A line break goes on with the sentence when the next line is prose (not indented, quoted, a list
    or a log line); a line ending with ":" or "with", "from", "says" ... takes in the next line.
    """
    lo, hi = max(0, start - CLAUSE_WINDOW), min(len(text), end + CLAUSE_WINDOW)
    s_start = lo
    for match in SENTENCE_END.finditer(text, lo, start):
        s_start = match.end()
    for line in _newlines(text, s_start, start):
        if not _continues(text, line):
            s_start = line + 1
    stop = SENTENCE_END.search(text, end, hi)
    s_end = stop.start() if stop else hi
    for line in _newlines(text, end, s_end):
        if not _continues(text, line):
            s_end = line
            break
        if INTRO_END.search(text[max(0, line - 20):line]):  # takes in this one line only
            after = text.find("\n", line + 1, s_end)
            s_end = after if after >= 0 else s_end
            break
    return s_start, s_end


def _continues(text: str, newline: int) -> bool:
    """Does the sentence go on after this line break?"""
    if INTRO_END.search(text[max(0, newline - 20):newline]):
        return True
    nxt = text[newline + 1:newline + 2]
    return bool(nxt) and nxt not in "\n\r" and not NOT_PROSE.match(nxt)


def _newlines(text: str, lo: int, hi: int) -> Iterator[int]:
    at = text.find("\n", lo, hi)
    while at >= 0:
        yield at
        at = text.find("\n", at + 1, hi)


def _cut(text: str, lo: int, hi: int, start: int, end: int, pattern: re.Pattern) -> tuple[int, int]:
    """The piece of text[lo:hi] around text[start:end] between two matches of `pattern`."""
    c_start, c_end = lo, hi
    for match in pattern.finditer(text, lo, hi):
        if match.end() <= start:
            c_start = match.end()
        elif match.start() >= end:
            c_end = match.start()
            break
    return c_start, c_end


def _previous_sentence(text: str, s_start: int, subject: str, cues: tuple) -> str:
    """What the sentence before says (for "it happens at X"): fails if it says anything fails.
    `subject` and `cues`: where and with which patterns the cues are looked for (see stance_at)."""
    if s_start <= 1:
        return "ran"
    lo, hi = _sentence(text, s_start - 2, s_start - 1)
    negated_works, fails, works = cues[0][0], cues[3][0], cues[4][0]
    if fails.search(subject, lo, hi) or negated_works.search(subject, lo, hi):
        return "fails"
    return "works" if works.search(subject, lo, hi) else "ran"


def _nearest_cue(text: str, lo: int, hi: int, start: int, end: int, patterns: tuple = CUES) -> str | None:
    """The stance of the cue word nearest the name within text[lo:hi] (ties: fails), if any."""
    taken: list[tuple[int, int]] = []
    cues: list[tuple[int, int, str]] = []
    for pattern, stance in patterns:
        for match in pattern.finditer(text, lo, hi):
            a, b = match.start(), match.end()
            if b <= start or a >= end:
                if not any(a < y and x < b for x, y in taken):
                    taken.append((a, b))
                    cues.append((start - b if b <= start else a - end, 0 if stance == "fails" else 1, stance))
    return min(cues)[2] if cues else None


# --- IDs -----------------------------------------------------------------------------------------

def _ids(text: str, lower: str) -> Iterator[_Found]:
    if "pandaid" in lower:
        for match in PANDA_LINK.finditer(text):
            yield _plain("panda_id", text, match.start(1), match.end(1))
    if "taskid" in lower or "/task" in lower:
        for match in TASK_LINK.finditer(text):
            yield _plain("task_id", text, match.start(1), match.end(1))
    for match in BARE_NUMBER.finditer(text):
        start, end = match.start(), match.end()
        context = _line_before(text, start, ID_CONTEXT_CHARS)
        if end - start == 8 and TASK_CONTEXT.search(context):
            yield _plain("task_id", text, start, end)
        elif end - start >= 9 and PANDA_CONTEXT.search(context):
            yield _plain("panda_id", text, start, end)


def _line_before(text: str, start: int, chars: int) -> str:
    window = text[max(0, start - chars):start]
    return window[window.rfind("\n") + 1:]


def _plain(kind: str, text: str, start: int, end: int, code: int | None = None,
           error_class: ErrorClass | None = None) -> tuple[int, int, Mention]:
    return start, end, _Seen(kind, text[start:end], code=code, error_class=error_class)


# --- errors --------------------------------------------------------------------------------------

def _error_codes(text: str, table: Mapping) -> Iterator[_Found]:
    for match in PILOT_CODE.finditer(text):
        start, end = match.start(), match.end()
        if CODE_CONTEXT.search(_line_before(text, start, CODE_CONTEXT_CHARS)):
            code = int(match.group())
            yield _plain("error_code", text, start, end, code, table.get(("pilot", code)))


def _error_names(text: str, lower: str, tokens: set[str], table: Mapping) -> Iterator[_Found]:
    """Symbolic pilot error names from the table written in capitals ("NOLOCALSPACE")."""
    codes = _pilot_names(table)
    hits = tokens & codes.keys()
    if not hits:
        return
    for match in TOKEN.finditer(lower):
        code = codes.get(match.group()) if match.group() in hits else None
        if code is not None and text[match.start():match.end()].isupper():
            yield _plain("error_code", text, match.start(), match.end(), code,
                                        table.get(("pilot", code)))


_pilot_names_cache: list = [None, {}]  # [table, {lower-case name: lowest code}]


def _pilot_names(table: Mapping) -> dict[str, int]:
    if _pilot_names_cache[0] is not table:
        codes: dict[str, int] = {}
        for (source, code), entry in sorted(table.items(), key=lambda item: item[0][1], reverse=True):
            if source == "pilot" and len(entry.name) >= 6:
                codes[entry.name.lower()] = code
        _pilot_names_cache[:] = [table, codes]
    return _pilot_names_cache[1]


TRIGGERS = frozenset(trigger for known in ERROR_TEXTS for trigger in known.triggers)


def _error_texts(text: str, lower: str, table: Mapping) -> Iterator[_Found]:
    present = {trigger for trigger in TRIGGERS if trigger in lower}  # each looked for once, not once per text
    if not present:
        return
    for known in ERROR_TEXTS:
        if present.isdisjoint(known.triggers):
            continue
        for match in known.pattern.finditer(lower):
            start, end = match.start(), match.end()
            direction = _direction(lower, start, end)
            code = known.code_in if direction == "in" else known.code_out if direction == "out" else known.code
            error_class = table.get(("pilot", code)) if code is not None else None
            yield _plain("error_text", text, start, end, code, error_class)


def _direction(lower: str, start: int, end: int) -> str | None:
    """Stage-in or stage-out: the nearest marker on the same line (both sides), else the last one before it."""
    inside = [direction for direction, markers in DIRECTION_MARKERS.items()
              if any(marker in lower[start:end] for marker in markers)]
    if len(inside) == 1:
        return inside[0]
    line_start = max(lower.rfind("\n", 0, start) + 1, start - DIRECTION_WINDOW)
    line_end = lower.find("\n", end, end + DIRECTION_WINDOW)
    line_end = min(len(lower), end + DIRECTION_WINDOW) if line_end < 0 else line_end
    best: tuple[int, str] | None = None
    for direction, markers in DIRECTION_MARKERS.items():
        for marker in markers:
            before = lower.rfind(marker, line_start, start)
            if before >= 0 and (best is None or start - before < best[0]):
                best = (start - before, direction)
            after = lower.find(marker, end, line_end)
            if after >= 0 and (best is None or after - end < best[0]):
                best = (after - end, direction)
    if best is not None:
        return best[1]
    last: tuple[int, str] | None = None
    for direction, markers in DIRECTION_MARKERS.items():
        for marker in markers:
            before = lower.rfind(marker, max(0, line_start - DIRECTION_WINDOW), line_start)
            if before >= 0 and (last is None or before > last[0]):
                last = (before, direction)
    return last[1] if last else None


# --- helpers -------------------------------------------------------------------------------------

_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _lower(text: str) -> str:
    """Lower case with the same length as `text` (str.lower may lengthen some non-ASCII letters)."""
    lower = text.lower()
    return lower if len(lower) == len(text) else text.translate(_ASCII_LOWER)


def _snippet(text: str, start: int, end: int) -> str:
    pad = max(0, (SNIPPET_CHARS - (end - start)) // 2)
    snippet = " ".join(text[max(0, start - pad):end + pad].split())
    if not snippet.isprintable():  # other unprintable characters separate words too
        snippet = " ".join("".join(c if c.isprintable() else " " for c in snippet).split())
    return snippet


def _key(mention: _Seen) -> tuple:
    if mention.kind in TOPOLOGY_KINDS:
        name = {"queue": mention.queue, "site": mention.site, "cloud": mention.cloud}.get(mention.kind)
        return mention.kind, (name or mention.value).lower()
    if mention.kind in ("panda_id", "task_id"):
        return mention.kind, int(mention.value)
    if mention.kind == "error_code":
        return mention.kind, mention.code
    return mention.kind, mention.value.lower(), mention.code


def _deduplicate(text: str, found: list[_Found]) -> list[Mention]:
    """One mention per thing (first occurrence, with its snippet); its stance is the strongest of its
    occurrences (fails, then works, then ran), and it is a complaint if that is fails or ran."""
    merged: dict[tuple, tuple[int, int, _Seen]] = {}
    for start, end, seen in sorted(found, key=lambda item: item[0]):
        key = _key(seen)
        if key not in merged:
            merged[key] = (start, end, seen)
            continue
        first_start, first_end, first = merged[key]
        if first.kind in TOPOLOGY_KINDS and STANCE_RANK.get(seen.stance or "", 0) > STANCE_RANK.get(first.stance or "", 0):
            merged[key] = (first_start, first_end, first._replace(stance=seen.stance,
                                                                  complaint=seen.stance in ("fails", "ran")))
    return [Mention(seen.kind, seen.value, seen.queue, seen.site, seen.cloud, seen.complaint, _snippet(text, start, end),
                    seen.code, seen.error_class, seen.stance)
            for start, end, seen in sorted(merged.values(), key=lambda item: item[0])]

