"""Analysis payloads run by the robot's test jobs, and the contract they share with the pilot.

Every payload is a module runnable as::

    python -m testjobs.payloads.<name> --input FILE [FILE ...] --max-events N \\
        --output OUT.root --report REPORT.json [--fail-mode MODE]

It writes histograms to OUT.root and a JSON job report to REPORT.json (also on
failure whenever the report path could be parsed)::

    {"exit_code": int, "exit_message": str, "events_read": int, "events_selected": int,
     "files_read": int, "timings": {"open": s, "read": s, "process": s, "write": s},
     "cpu_time": s, "max_rss_kb": int}

``files_read`` counts the input files opened; ``timings`` are wall-clock seconds per
phase, while ``cpu_time`` and ``max_rss_kb`` cover the whole process (imports included).

Exit codes (values follow BSD sysexits.h where one fits):

====  ========================  ===========================================================
0     EXIT_OK                   success
1     EXIT_PAYLOAD_EXCEPTION    unhandled exception in the analysis code (traceback on stderr)
2     EXIT_BAD_ARGUMENTS        invalid command line (argparse's own usage-error code)
65    EXIT_INPUT_CORRUPT        an input file is unreadable: not ROOT, truncated, no tree/branches
66    EXIT_INPUT_NOT_FOUND      an input file does not exist
71    EXIT_OUT_OF_MEMORY        the payload exceeded its memory soft limit
73    EXIT_OUTPUT_WRITE         the output ROOT file or the job report could not be written
-11   (signal)                  killed by SIGSEGV (``--fail-mode crash``); no report is written
====  ========================  ===========================================================

Fault injection (``--fail-mode``), applied after the first chunk of events is processed:

* ``crash``: the process kills itself with SIGSEGV, like a segfaulting native library;
* ``user-error``: the analysis raises a Python exception, like a buggy user job (exit 1);
* ``oom``: the payload allocates memory until it passes a soft limit (capped at
  ``OOM_SOFT_LIMIT_MB``), then gives up with ``EXIT_OUT_OF_MEMORY``.

This module only defines constants, so the robot can import it without uproot/awkward.
"""

import signal

EXIT_OK = 0
EXIT_PAYLOAD_EXCEPTION = 1
EXIT_BAD_ARGUMENTS = 2
EXIT_INPUT_CORRUPT = 65
EXIT_INPUT_NOT_FOUND = 66
EXIT_OUT_OF_MEMORY = 71
EXIT_OUTPUT_WRITE = 73

CRASH_SIGNAL = signal.SIGSEGV

FAIL_MODES = ("crash", "user-error", "oom")
OOM_SOFT_LIMIT_MB = 200

PAYLOADS = ("zmumu", "ttbar")
