"""Shared driver of the analysis payloads: command line, input loop, timing, output and job report.

A payload only supplies an `Analysis` (the branches it reads, a per-chunk `process`
and its histograms) and calls `run_payload`. The command line, exit codes and report
format are documented in `testjobs.payloads`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
import traceback
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import awkward as ak
import numpy as np
import uproot

from testjobs.datasets import TREE_NAME
from testjobs.payloads import (
    EXIT_BAD_ARGUMENTS,
    EXIT_INPUT_CORRUPT,
    EXIT_INPUT_NOT_FOUND,
    EXIT_OK,
    EXIT_OUT_OF_MEMORY,
    EXIT_OUTPUT_WRITE,
    EXIT_PAYLOAD_EXCEPTION,
    FAIL_MODES,
    faults,
)

DEFAULT_MAX_EVENTS = 50_000
STEP_SIZE = 10_000  # entries per chunk read from a file
PHASES = ("open", "read", "process", "write")


class Histogram:
    """Fixed-binning 1D histogram filled chunk by chunk with numpy.histogram."""

    def __init__(self, bins: int, low: float, high: float) -> None:
        self.edges = np.linspace(low, high, bins + 1)
        self.counts = np.zeros(bins)

    def fill(self, values: Any) -> None:
        flat = ak.to_numpy(ak.flatten(values, axis=None))
        self.counts += np.histogram(flat, bins=self.edges)[0]

    def to_numpy(self) -> tuple[np.ndarray, np.ndarray]:
        """The (counts, edges) pair that uproot writes as a TH1D."""
        return self.counts, self.edges


class Analysis(Protocol):
    branches: tuple[str, ...]

    def process(self, events: ak.Array) -> int:
        """Fill the histograms from one chunk of events; return how many events pass the selection."""

    def histograms(self) -> dict[str, Histogram]: ...


class PayloadError(Exception):
    """A failure with a documented exit code."""

    def __init__(self, exit_code: int, message: str) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class JobReport:
    exit_code: int = EXIT_OK
    exit_message: str = "OK"
    events_read: int = 0
    events_selected: int = 0
    files_read: int = 0
    timings: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PHASES, 0.0))
    cpu_time: float = 0.0
    max_rss_kb: int = 0

    def fail(self, exit_code: int, message: str) -> None:
        self.exit_code, self.exit_message = exit_code, message

    @contextmanager
    def timed(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[phase] += time.perf_counter() - start

    def write(self, path: Path) -> None:
        """Record resource usage and write the report atomically (the pilot may poll for it)."""
        usage = resource.getrusage(resource.RUSAGE_SELF)
        self.cpu_time = round(usage.ru_utime + usage.ru_stime, 3)
        self.max_rss_kb = usage.ru_maxrss  # kilobytes on Linux
        self.timings = {phase: round(seconds, 4) for phase, seconds in self.timings.items()}
        partial = path.with_name(path.name + ".part")
        partial.write_text(json.dumps(asdict(self), indent=2) + "\n")
        os.replace(partial, path)


def run_payload(analysis: Analysis, name: str, description: str, argv: Sequence[str] | None = None) -> int:
    """Run `analysis` as the payload `python -m testjobs.payloads.<name>`; returns the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    report = JobReport()
    parser = build_parser(f"python -m testjobs.payloads.{name}", description)
    try:
        args = parser.parse_args(argv)
    except _UsageError as error:
        parser.print_usage(sys.stderr)
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        report.fail(EXIT_BAD_ARGUMENTS, f"bad arguments: {error}")
        return _finish(report, _report_path(argv))

    try:
        _analyse(analysis, args, report)
        with report.timed("write"):
            _write_histograms(args.output, analysis.histograms())
    except PayloadError as error:
        report.fail(error.exit_code, str(error))
    except MemoryError as error:
        report.fail(EXIT_OUT_OF_MEMORY, f"out of memory: {error}")
    except Exception as error:  # a bug in the analysis code: report it like an uncaught exception
        traceback.print_exc()
        report.fail(EXIT_PAYLOAD_EXCEPTION, f"{type(error).__name__}: {_summary(error)}")
    if report.exit_code != EXIT_OK:
        print(f"{parser.prog}: {report.exit_message}", file=sys.stderr)
    return _finish(report, args.report)


def build_parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = _Parser(
        prog=prog,
        description=description,
        epilog="Exit codes and the report format are documented in testjobs.payloads.",
    )
    parser.add_argument("--input", nargs="+", required=True, type=Path, metavar="FILE", help="input ROOT files")
    parser.add_argument(
        "--max-events", type=_event_limit, default=DEFAULT_MAX_EVENTS, metavar="N",
        help=f"stop after N events (-1: all; default {DEFAULT_MAX_EVENTS})",
    )
    parser.add_argument("--output", required=True, type=Path, metavar="OUT.root", help="histogram output file")
    parser.add_argument("--report", required=True, type=Path, metavar="REPORT.json", help="job report for the pilot")
    parser.add_argument("--fail-mode", choices=FAIL_MODES, help="inject a failure (grid emulation)")
    return parser


def _analyse(analysis: Analysis, args: argparse.Namespace, report: JobReport) -> None:
    missing = [path for path in args.input if not path.is_file()]
    if missing:
        raise PayloadError(EXIT_INPUT_NOT_FOUND, f"input file not found: {missing[0]}")
    budget = None if args.max_events < 0 else args.max_events
    for path in args.input:
        remaining = None if budget is None else budget - report.events_read
        if remaining == 0:
            break
        for events in _read_chunks(path, analysis.branches, remaining, report):
            with report.timed("process"):
                report.events_selected += analysis.process(events)
            report.events_read += len(events)
            if args.fail_mode:
                faults.inject(args.fail_mode, events, report.events_read)


def _read_chunks(path: Path, branches: tuple[str, ...], entry_stop: int | None, report: JobReport) -> Iterator[ak.Array]:
    with _decoding(path), report.timed("open"):
        root_file = uproot.open(path)
    with root_file:
        with _decoding(path), report.timed("open"):
            chunks = root_file[TREE_NAME].iterate(branches, step_size=STEP_SIZE, entry_stop=entry_stop, library="ak")
        report.files_read += 1
        while True:
            with _decoding(path), report.timed("read"):
                events = next(chunks, None)
            if events is None:
                return
            yield events


@contextmanager
def _decoding(path: Path) -> Iterator[None]:
    """Report any failure to decode an input file as corrupt input (uproot raises many
    exception types for damaged files: ValueError, OSError, zlib.error, DeserializationError...)."""
    try:
        yield
    except Exception as error:
        message = f"unreadable input {path}: {type(error).__name__}: {_summary(error)}"
        raise PayloadError(EXIT_INPUT_CORRUPT, message) from error


def _write_histograms(path: Path, histograms: dict[str, Histogram]) -> None:
    try:
        with uproot.recreate(path) as output:
            for name, histogram in histograms.items():
                output[name] = histogram.to_numpy()
    except OSError as error:
        raise PayloadError(EXIT_OUTPUT_WRITE, f"cannot write output {path}: {error}") from error


def _finish(report: JobReport, report_path: Path | None) -> int:
    if report_path is None:
        return report.exit_code
    try:
        report.write(report_path)
    except OSError as error:
        print(f"cannot write job report {report_path}: {error}", file=sys.stderr)
        return report.exit_code if report.exit_code != EXIT_OK else EXIT_OUTPUT_WRITE
    return report.exit_code


def _summary(error: Exception) -> str:
    """The first paragraph of an exception message on one line (awkward's messages run long)."""
    paragraph = next((part for part in str(error).split("\n\n") if part.strip()), "")
    return " ".join(paragraph.split())


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """Raises on usage errors instead of exiting, so a report can still be written."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise _UsageError(message)


def _report_path(argv: Sequence[str]) -> Path | None:
    """The --report path from a command line that failed to parse, if it has one."""
    probe = _Parser(add_help=False)
    probe.add_argument("--report", type=Path)
    try:
        known, _ = probe.parse_known_args(argv)
    except _UsageError:
        return None
    return known.report


def _event_limit(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of events: {text!r}") from None
    if value == 0 or value < -1:
        raise argparse.ArgumentTypeError("must be a positive number of events, or -1 for all")
    return value
