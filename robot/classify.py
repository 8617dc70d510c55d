"""From a job's error codes to who is to blame: site, user, central or unknown.

The table is data (robot/data/error_codes.yaml, extendable by configuration); this module only
decides which of a job's error fields speaks first and looks it up.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

import yaml

from robot.yamlconfig import ConfigError, parse_yaml

if TYPE_CHECKING:
    from robot.backends.base import JobReport

DEFAULT_TABLE = Path(__file__).resolve().parent / "data" / "error_codes.yaml"
CLASSES = ("site", "user", "central", "unknown", "none")
SOURCES = ("pilot", "taskbuffer", "jobdispatcher", "ddm", "robot")


@dataclass(frozen=True)
class ErrorClass:
    name: str
    klass: str  # site | user | central | unknown | none (not a verdict, e.g. killed)


@dataclass(frozen=True)
class Verdict:
    source: str  # pilot, exe, ddm, taskbuffer, jobdispatcher, sup, robot
    code: int
    name: str
    klass: str
    diag: str


ErrorTable = Mapping[tuple[str, int], ErrorClass]


def load_table(extra: Path | str | None = None) -> dict[tuple[str, int], ErrorClass]:
    table = _read_table(DEFAULT_TABLE)
    if extra is not None:
        table.update(_read_table(Path(extra)))
    return table


def _read_table(path: Path) -> dict[tuple[str, int], ErrorClass]:
    try:
        raw = parse_yaml(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(path, [f"cannot read the error-code table: {exc}"]) from exc
    table: dict[tuple[str, int], ErrorClass] = {}
    problems = []
    for source, entries in raw.items():
        if source not in SOURCES:
            problems.append(f"{source}: unknown error source, expected one of {', '.join(SOURCES)}")
            continue
        for code, entry in (entries or {}).items():
            where = f"{source}.{code}"
            if not isinstance(code, int) or not isinstance(entry, dict) or set(entry) != {"name", "class"}:
                problems.append(f"{where}: expected an integer code mapped to {{name: ..., class: ...}}")
            elif entry["class"] not in CLASSES:
                problems.append(f"{where}.class: expected one of {', '.join(CLASSES)} (got {entry['class']!r})")
            else:
                table[(source, code)] = ErrorClass(str(entry["name"]), entry["class"])
    if problems:
        raise ConfigError(path, problems)
    return table


def classify(table: ErrorTable, *, pilot: tuple[int, str] = (0, ""), exe: tuple[int, str] = (0, ""),
             ddm: tuple[int, str] = (0, ""), taskbuffer: tuple[int, str] = (0, ""),
             jobdispatcher: tuple[int, str] = (0, ""), sup: int = 0) -> Verdict:
    """The error that speaks for a failed job, and its class.

    The pilot's code names what went wrong where it happened, so it speaks first; then the
    central components; an exe code alone means the payload itself failed (user class).
    """
    for source, (code, diag) in (("pilot", pilot), ("ddm", ddm), ("taskbuffer", taskbuffer),
                                 ("jobdispatcher", jobdispatcher)):
        if code:
            known = table.get((source, code))
            if known is None:
                return Verdict(source, code, f"{source.upper()}_{code}", "unknown", diag)
            return Verdict(source, code, known.name, known.klass, diag)
    if exe[0]:
        return Verdict("exe", exe[0], "EXEERROR", "user", exe[1])
    if sup:
        return Verdict("sup", sup, f"SUP_{sup}", "unknown", "")
    return Verdict("none", 0, "NOERRORCODE", "unknown", "failed without any error code")


def classify_report(table: ErrorTable, report: JobReport) -> Verdict:
    """`classify` on every error field of a job as the backend reported it."""
    return classify(table, pilot=(report.pilot_error_code, report.pilot_error_diag),
                    exe=(report.exe_error_code, report.exe_error_diag),
                    ddm=(report.ddm_error_code, report.ddm_error_diag),
                    taskbuffer=(report.task_buffer_error_code, report.task_buffer_error_diag),
                    jobdispatcher=(report.job_dispatcher_error_code, report.job_dispatcher_error_diag),
                    sup=report.sup_error_code)
