"""The `jobParameters` string of a test job, written the way prun writes it for runGen.

prun sends user analysis jobs with the transformation `runGen-00-00-02` and a parameter string
such as ``-j "" -r ./ -p "zmumu --max-events 5000" -i "['a.root', 'b.root']" --inDS scope:name
-o "{'histograms.root': 'JOB.histograms.root'}"``. The PanDA backend writes it; the embedded grid's
PanDA service reads it back to know which payload to run on which files.
"""
from __future__ import annotations

import argparse
import ast
import shlex
from dataclasses import dataclass
from urllib.parse import unquote

TRANSFORMATION = "http://pandaserver.cern.ch:25080/trf/user/runGen-00-00-02"
OUTPUT_FILE = "histograms.root"
ALL_EVENTS = -1  # no --max-events: the payload reads every event of its inputs
# pilot3 error codes for what a pilot cannot run
TRF_DOWNLOAD_FAILURE = 1149
BAD_TRF_ARGUMENTS = 1349


@dataclass(frozen=True)
class JobParameters:
    payload: str
    max_events: int
    input_lfns: tuple[str, ...]
    input_dataset: str  # scope:name
    outputs: dict[str, str]


def format_job_parameters(params: JobParameters) -> str:
    return " ".join([
        '-j ""', "-r ./",
        "-p", _quote(f"{params.payload} --max-events {params.max_events}"),
        "-i", _quote(repr(list(params.input_lfns))),
        "--inDS", _quote(params.input_dataset),
        "-o", _quote(repr(params.outputs)),
    ])


def _quote(text: str) -> str:
    """Double quotes, as prun writes them (shlex reads back the escaped backslash and quote)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


class BadJobParameters(ValueError):
    pass


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False, exit_on_error=False)
    for flag in ("-j", "-r", "-p", "-i", "-o", "--inDS"):
        parser.add_argument(flag, default="")
    return parser


def parse_job_parameters(text: str) -> JobParameters:
    """Read back what `format_job_parameters` wrote; BadJobParameters names what is wrong."""
    try:
        known, _ = _parser().parse_known_args(shlex.split(text))
    except (ValueError, argparse.ArgumentError) as exc:
        raise BadJobParameters(f"jobParameters do not parse: {exc}") from None
    try:
        command = shlex.split(unquote(known.p))  # prun URL-quotes its --exec string
    except ValueError as exc:
        raise BadJobParameters(f"jobParameters: -p {known.p!r} does not parse: {exc}") from None
    if not command:
        raise BadJobParameters("jobParameters: -p names no payload")
    payload, rest = command[0], command[1:]
    try:
        max_events = int(rest[rest.index("--max-events") + 1]) if "--max-events" in rest else ALL_EVENTS
    except (ValueError, IndexError):
        raise BadJobParameters(f"jobParameters: -p {known.p!r}: --max-events is not followed by a number") from None
    try:
        lfns = ast.literal_eval(known.i) if known.i else []
        outputs = ast.literal_eval(known.o) if known.o else {}
    except (ValueError, SyntaxError):
        raise BadJobParameters("jobParameters: -i must be a list of file names and -o a dict") from None
    if not isinstance(lfns, list) or not all(isinstance(x, str) for x in lfns) or not isinstance(outputs, dict):
        raise BadJobParameters("jobParameters: -i must be a list of file names and -o a dict")
    return JobParameters(payload=payload, max_events=max_events, input_lfns=tuple(lfns),
                         input_dataset=known.inDS, outputs={str(k): str(v) for k, v in outputs.items()})


def runnable(transformation: object, text: object) -> tuple[JobParameters | None, tuple[int, str] | None]:
    """What a pilot of the embedded grid would run for a job PanDA accepted, or the pilot error code
    and message it fails the job with: a transformation other than runGen cannot be fetched here, and
    parameters runGen cannot read are bad transformation arguments."""
    if not isinstance(transformation, str) or "runGen" not in transformation:
        return None, (TRF_DOWNLOAD_FAILURE, f"Failed to download transformation {transformation!r}: not available"
                                            " at this site")
    if not isinstance(text, str) or not text.strip() or text == "NULL":
        return None, (BAD_TRF_ARGUMENTS, "jobParameters: missing")
    try:
        return parse_job_parameters(text), None
    except BadJobParameters as exc:
        return None, (BAD_TRF_ARGUMENTS, str(exc))
