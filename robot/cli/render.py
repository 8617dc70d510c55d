"""Terminal rendering of health figures (rich tables) shared by `status` and `demo`."""
from __future__ import annotations

from typing import Iterable

from rich.console import Console
from rich.table import Table

from robot.durations import format_duration
from robot.metrics import Health
from robot.vocabulary import queue_state

# HammerCloud's colours, read as failure rate: grey no test, green healthy, yellow degraded, red broken.
DEGRADED, BROKEN = 0.2, 0.5


def make_console(stderr: bool = False) -> Console:
    """A console for tables; when the output is not a terminal, wide enough not to cut names."""
    console = Console(stderr=stderr)
    return console if console.is_terminal else Console(stderr=stderr, width=200)


def colour(health: Health) -> str:
    if health.failure_rate is None:
        return "grey50"
    if health.failure_rate >= BROKEN:
        return "red"
    return "yellow" if health.failure_rate >= DEGRADED else "green"


def _number(value: float | None, fmt: str = "{:.0f}") -> str:
    return "-" if value is None else fmt.format(value)


def _waiting(h: Health) -> str:
    """Jobs waiting for the site now, and for how long the oldest has: a stuck queue shows here first."""
    if not h.waiting:
        return ""
    return f"{h.waiting} ({format_duration(h.longest_wait)})" if h.longest_wait is not None else str(h.waiting)


def health_table(healths: Iterable[Health], title: str = "") -> Table:
    """One row per queue, site or cloud; a site or cloud table has no (empty) Queue and Status columns."""
    healths = list(healths)
    levels = {h.level for h in healths}
    queues = not levels or "queue" in levels
    sites = queues or "site" in levels
    shown = [True, sites, queues, queues] + [True] * 8
    table = Table(title=title, title_justify="left", header_style="bold")
    for (name, justify), show in zip((("Cloud", "left"), ("Site", "left"), ("Queue", "left"), ("Status", "left"),
                                      ("Jobs", "right"), ("Failed", "right"), ("Failure rate (95% CI)", "right"),
                                      ("Events/s", "right"), ("CPU %", "right"), ("Stage-in s", "right"),
                                      ("Waiting", "right"), ("Errors", "left")), shown):
        if show:
            table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for h in healths:
        style = colour(h)
        rate = ("-" if h.failure_rate is None
                else f"{100 * h.failure_rate:.0f}% ({100 * (h.ci_low or 0):.0f}-{100 * (h.ci_high or 0):.0f})")
        errors = ", ".join(f"{cls} {n}" for cls, n in sorted(h.error_classes.items()))
        if h.top_errors:
            errors += f" [{h.top_errors[0][0]}]"
        status = queue_state(h.status, h.robot_state) if h.status else ""
        cells = (h.cloud or "", h.site or "", h.key if h.level == "queue" else "", status,
                 str(h.total), str(h.failed), f"[{style}]{rate}[/]", _number(h.events_per_second),
                 _number(h.cpu_efficiency), _number(h.stagein_median, "{:.2f}"), _waiting(h), errors)
        table.add_row(*(cell for cell, show in zip(cells, shown) if show))
    return table
