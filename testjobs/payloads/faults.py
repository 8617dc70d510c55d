"""Fault injection for ``--fail-mode``: realistic payload failures for the embedded grid."""

from __future__ import annotations

import os
import resource
import sys

import awkward as ak
import numpy as np

from testjobs.payloads import CRASH_SIGNAL, OOM_SOFT_LIMIT_MB

_ALLOCATION_CHUNK_MB = 16


def inject(mode: str, events: ak.Array, events_read: int) -> None:
    """Make the payload fail the way `mode` says; `events` is the chunk just processed."""
    if mode == "crash":
        _segfault(events_read)
    elif mode == "user-error":
        _buggy_user_code(events)
    elif mode == "oom":
        _exhaust_memory(OOM_SOFT_LIMIT_MB)
    else:
        raise ValueError(f"unknown fail mode {mode!r}")


def _segfault(events_read: int) -> None:
    print(f"fail-mode crash: raising SIGSEGV after {events_read} events", file=sys.stderr, flush=True)
    _, hard = resource.getrlimit(resource.RLIMIT_CORE)
    resource.setrlimit(resource.RLIMIT_CORE, (0, hard))  # die like a segfault, but leave no core file
    os.kill(os.getpid(), CRASH_SIGNAL)


def _buggy_user_code(events: ak.Array) -> ak.Array:
    """A typical user bug: the analysis uses a branch that the input format does not have (raises)."""
    return events["mu_ptcone30"] / events["mu_pt"]


def _exhaust_memory(limit_mb: int) -> None:
    """Grow the heap in touched chunks until the soft limit is passed, then fail like an OOM."""
    hoard = []
    while len(hoard) * _ALLOCATION_CHUNK_MB <= limit_mb:
        hoard.append(np.ones(_ALLOCATION_CHUNK_MB * 2**20 // 8))  # np.ones writes, so pages are resident
    allocated_mb = len(hoard) * _ALLOCATION_CHUNK_MB
    raise MemoryError(f"memory soft limit of {limit_mb} MB exceeded: {allocated_mb} MB allocated by the payload")
