"""How long a remote client waits before trying again: exponential back-off with a ceiling."""
from __future__ import annotations

MAX_BACKOFF = 30.0  # seconds


def backoff_delay(retry: int, first: float = 1.0, most: float = MAX_BACKOFF) -> float:
    """Seconds before retry number `retry` (1, 2, 3 ...): first, 2 x first, 4 x first ..., at most `most`."""
    return min(most, first * 2.0 ** (retry - 1))
