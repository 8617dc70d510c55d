"""Human durations ("90s", "30m", "2h", "1d", "1h30m") to and from timedelta."""
from __future__ import annotations

import re
from datetime import timedelta

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")


def parse_duration(text: str | int | float | timedelta) -> timedelta:
    """Parse "45s", "30m", "2h", "1d", "1h30m" or a number of seconds."""
    if isinstance(text, timedelta):
        return text
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        if text < 0:
            raise ValueError(f"duration must not be negative, got {text}")
        return timedelta(seconds=text)
    if not isinstance(text, str):
        raise ValueError(f"expected a duration like '30m', got {text!r}")
    compact = text.strip().lower().replace(" ", "")
    if not compact:
        raise ValueError("expected a duration like '30m', got an empty string")
    if re.fullmatch(r"\d+(\.\d+)?", compact):
        return timedelta(seconds=float(compact))
    pos, seconds = 0, 0.0
    for match in _PART.finditer(compact):
        if match.start() != pos:
            break
        seconds += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(compact) or pos == 0:
        raise ValueError(f"expected a duration like '45s', '30m', '2h', '1d' or '1h30m', got {text!r}")
    return timedelta(seconds=seconds)


def format_duration(delta: timedelta | float) -> str:
    """Short human form: 95 s -> '1m35s'."""
    seconds = int(round(delta.total_seconds() if isinstance(delta, timedelta) else delta))
    if seconds < 60:
        return f"{seconds}s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        value, seconds = divmod(seconds, size)
        if value:
            parts.append(f"{value}{unit}")
    return "".join(parts)
