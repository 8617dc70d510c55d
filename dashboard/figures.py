"""Figures and table styles: pure functions of query results (no database, no clock, no request).

Text that people typed (reasons, ticket subjects) never reaches a figure unescaped: Plotly reads a
few HTML-like tags in labels, so `plain()` escapes them first. Tables show text as text.
"""
from __future__ import annotations

import html
import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import plotly.graph_objects as go

# Colour scale of failure rates (percent), green to red; thresholds are the lower bounds.
FAILURE_SCALE: tuple[tuple[float, str], ...] = (
    (0, "#d8f0d2"), (5, "#eef5c6"), (10, "#fff1b8"), (20, "#ffd59e"), (40, "#ffb08a"), (70, "#f47c6f"))
STATUS_COLOURS = {"online": "#2e7d32", "pending": "#b26a00", "excluded": "#c62828", "silenced": "#546e7a",
                  "downtime": "#1565c0"}
CLASS_COLOURS = {"site": "#c62828", "user": "#ef8f00", "central": "#6a1b9a", "unknown": "#78909c",
                 "none": "#b0bec5"}
TRANSITION_COLOURS = {"online": "#2e7d32", "pending": "#ef8f00", "excluded": "#c62828", "brokeroff": "#c62828",
                      "test": "#d84315", "offline": "#4e342e"}
LAYOUT = dict(template="plotly_white", margin=dict(l=60, r=20, t=40, b=40), font=dict(size=12))


def plain(text: Any, limit: int = 300) -> str:
    """Text for a Plotly label: tags escaped (shown, never interpreted), long text cut."""
    value = "" if text is None else str(text)
    if len(value) > limit:
        value = value[: limit - 1] + "…"
    return html.escape(value, quote=False)


def empty(message: str, height: int = 260) -> go.Figure:
    figure = go.Figure(layout=dict(**LAYOUT, height=height))
    figure.add_annotation(text=plain(message), showarrow=False, font=dict(size=14, color="#777"),
                          xref="paper", yref="paper", x=0.5, y=0.5)
    figure.update_xaxes(visible=False)
    figure.update_yaxes(visible=False)
    return figure


# -- overview ----------------------------------------------------------------------------------
def success_heatmap(queues: Sequence[str], starts: Sequence[datetime], success: Sequence[Sequence[float | None]],
                    jobs: Sequence[Sequence[int]] | None = None) -> go.Figure:
    """Queue x time heatmap of the success rate (share of ended jobs that completed)."""
    if not queues or not starts:
        return empty("No test results in this time range.")
    z = [[None if v is None else round(100 * v, 1) for v in row] for row in success]
    figure = go.Figure(go.Heatmap(
        z=z, x=list(starts), y=list(queues), zmin=0, zmax=100, colorscale="RdYlGn", hoverongaps=False,
        customdata=[list(row) for row in jobs] if jobs is not None else None,
        hovertemplate="%{y}<br>%{x}<br>success %{z:.0f}%"
                      + ("<br>%{customdata} jobs" if jobs is not None else "") + "<extra></extra>",
        colorbar=dict(title="success %", thickness=12)))
    rows = len(queues)
    figure.update_layout(**LAYOUT, height=120 + min(max(14 * rows, 200), 1800),
                         title="Success rate per queue over time")
    figure.update_yaxes(autorange="reversed", tickfont=dict(size=10 if rows > 40 else 12),
                        showticklabels=rows <= 120)
    return figure


def failure_rate_styles(column: str = "failure_rate") -> list[dict[str, Any]]:
    """DataTable conditional styles: a cell's colour follows its failure rate (percent)."""
    styles = []
    bounds = [b for b, _ in FAILURE_SCALE] + [math.inf]
    for (low, colour), high in zip(FAILURE_SCALE, bounds[1:]):
        query = f"{{{column}}} >= {low}" + (f" && {{{column}}} < {high}" if high != math.inf else "")
        styles.append({"if": {"filter_query": query, "column_id": column}, "backgroundColor": colour})
    return styles


def rate_styles(values: Iterable[float | None], column: str = "events_per_second") -> list[dict[str, Any]]:
    """A blue scale for throughput, relative to the median of the queues shown (pure)."""
    found = sorted(v for v in values if v is not None and v > 0)
    if not found:
        return []
    median = found[len(found) // 2]
    steps = ((0.0, "#fde0dd"), (0.5, "#f3f6fb"), (0.8, "#dce9f7"), (1.2, "#b9d3ef"))
    styles = []
    bounds = [f for f, _ in steps] + [math.inf]
    for (low, colour), high in zip(steps, bounds[1:]):
        query = f"{{{column}}} >= {low * median:.6g}"
        if high != math.inf:
            query += f" && {{{column}}} < {high * median:.6g}"
        styles.append({"if": {"filter_query": query, "column_id": column}, "backgroundColor": colour})
    return styles


def status_styles(column: str = "status") -> list[dict[str, Any]]:
    return [{"if": {"filter_query": f'{{{column}}} = "{status}"', "column_id": column},
             "color": colour, "fontWeight": "bold"} for status, colour in STATUS_COLOURS.items()]


def status_counts(statuses: Iterable[str]) -> dict[str, int]:
    counts = {status: 0 for status in STATUS_COLOURS}
    for status in statuses:
        counts[status] = counts.get(status, 0) + 1
    return counts


# -- one queue -----------------------------------------------------------------------------------
def failure_rate_over_time(starts: Sequence[datetime], rates: Sequence[float | None], lows: Sequence[float | None],
                           highs: Sequence[float | None], jobs: Sequence[int] | None = None) -> go.Figure:
    """Failure rate per time bin with its 95 % confidence band (Wilson)."""
    if not starts or all(r is None for r in rates):
        return empty("No ended jobs in this time range.")

    def pct(values: Sequence[float | None]) -> list[float | None]:
        return [None if v is None else 100 * v for v in values]

    figure = go.Figure()
    figure.add_trace(go.Scatter(x=list(starts), y=pct(highs), mode="lines", line=dict(width=0), showlegend=False,
                                hoverinfo="skip", connectgaps=False))
    figure.add_trace(go.Scatter(x=list(starts), y=pct(lows), mode="lines", line=dict(width=0), fill="tonexty",
                                fillcolor="rgba(198,40,40,0.15)", name="95% interval", hoverinfo="skip"))
    figure.add_trace(go.Scatter(x=list(starts), y=pct(rates), mode="lines+markers", name="failure rate",
                                line=dict(color="#c62828"), customdata=list(jobs) if jobs is not None else None,
                                hovertemplate="%{x}<br>%{y:.0f}% failed"
                                              + (" of %{customdata} jobs" if jobs is not None else "")
                                              + "<extra></extra>"))
    figure.update_layout(**LAYOUT, height=300, title="Failure rate (95% confidence band)",
                         yaxis=dict(title="%", range=[0, 100]), legend=dict(orientation="h", y=-0.2))
    return figure


def events_per_second_histogram(values: Sequence[float], title: str = "Events per second per job") -> go.Figure:
    if not values:
        return empty("No completed jobs in this time range.")
    figure = go.Figure(go.Histogram(x=list(values), marker_color="#1565c0", nbinsx=min(40, max(5, len(values)))))
    figure.update_layout(**LAYOUT, height=300, title=title, xaxis_title="events/s", yaxis_title="jobs", bargap=0.05)
    return figure


def time_split(medians: Mapping[str, float | None], title: str = "Where the time goes (median seconds)") -> go.Figure:
    """Median seconds per step (queue wait, stage-in, setup, payload, stage-out), one stacked bar."""
    steps = [(name, value) for name, value in medians.items() if value is not None]
    if not steps:
        return empty("No timing information in this time range.")
    figure = go.Figure()
    for name, value in steps:
        figure.add_trace(go.Bar(x=[value], y=["median job"], orientation="h", name=plain(name.replace("_", " ")),
                                hovertemplate=f"{plain(name)}: %{{x:.1f}} s<extra></extra>"))
    figure.update_layout(**LAYOUT, height=200, barmode="stack", title=title, xaxis_title="seconds",
                         legend=dict(orientation="h", y=-0.4, traceorder="normal"))
    return figure


def error_classes(counts: Mapping[str, int], title: str = "Failures by class") -> go.Figure:
    if not counts:
        return empty("No failures in this time range.", height=200)
    names = sorted(counts, key=lambda k: -counts[k])
    figure = go.Figure(go.Bar(x=names, y=[counts[n] for n in names],
                              marker_color=[CLASS_COLOURS.get(n, "#90a4ae") for n in names]))
    figure.update_layout(**LAYOUT, height=260, title=title, yaxis_title="failed jobs")
    return figure


# -- exclusions -----------------------------------------------------------------------------------
def transitions_timeline(times: Sequence[datetime], queues: Sequence[str], news: Sequence[str],
                         olds: Sequence[str], actors: Sequence[str], reasons: Sequence[str],
                         applied: Sequence[bool]) -> go.Figure:
    """One marker per transition: when, which queue, to what; hollow markers for dry-run decisions."""
    if not times:
        return empty("No transitions in this time range.")
    figure = go.Figure()
    for state in sorted(set(news)):
        index = [i for i, n in enumerate(news) if n == state]
        figure.add_trace(go.Scatter(
            x=[times[i] for i in index], y=[queues[i] for i in index], mode="markers", name=plain(state),
            marker=dict(size=11, color=TRANSITION_COLOURS.get(state, "#607d8b"),
                        symbol=["circle" if applied[i] else "circle-open" for i in index], line=dict(width=2)),
            text=[f"{plain(olds[i])} → {plain(news[i])} by {plain(actors[i])}"
                  f"{'' if applied[i] else ' (dry-run)'}<br>{plain(reasons[i], 160)}" for i in index],
            hovertemplate="%{y}<br>%{x}<br>%{text}<extra></extra>"))
    rows = len(set(queues))
    figure.update_layout(**LAYOUT, height=160 + min(max(24 * rows, 140), 900), title="Transitions",
                         legend=dict(orientation="h", y=-0.15))
    figure.update_yaxes(type="category", autorange="reversed")
    return figure


# -- stress tests -----------------------------------------------------------------------------------
def stress_over_time(plots: Mapping[str, Any]) -> go.Figure:
    """Jobs running and events/s over the test (the report's plot data)."""
    times = plots.get("time") or []
    if not times:
        return empty("No jobs ran yet.")
    figure = go.Figure()
    figure.add_trace(go.Scatter(x=times, y=plots.get("running") or [], name="jobs running", mode="lines",
                                line=dict(shape="hv", color="#1565c0")))
    figure.add_trace(go.Scatter(x=times, y=plots.get("events_per_second") or [], name="events/s", mode="lines",
                                yaxis="y2", line=dict(color="#2e7d32")))
    figure.update_layout(**LAYOUT, height=320, title="Jobs running and throughput",
                         yaxis=dict(title="jobs running"),
                         yaxis2=dict(title="events/s", overlaying="y", side="right", showgrid=False),
                         legend=dict(orientation="h", y=-0.2))
    return figure


def stress_time_distributions(times: Mapping[str, Sequence[float]]) -> go.Figure:
    """Box plots of each step's seconds over the test's jobs."""
    steps = [(name, values) for name, values in times.items() if values]
    if not steps:
        return empty("No timing information.")
    figure = go.Figure([go.Box(y=list(values), name=plain(name.replace("_", " ")), boxpoints=False)
                        for name, values in steps])
    figure.update_layout(**LAYOUT, height=320, title="Time per step (s)", showlegend=False, yaxis_type="log")
    return figure


def stress_comparison(columns: Mapping[str, Mapping[str, Any]]) -> go.Figure:
    """The test beside its baseline (and another test): failure rate and median events/s per job."""
    usable = {name: s for name, s in columns.items() if s}
    if not usable:
        return empty("Nothing to compare.")
    names = list(usable)
    failure = [None if s.get("failure_rate") is None else 100 * s["failure_rate"] for s in usable.values()]
    rate = [(s.get("events_per_second_per_job") or {}).get("p50") for s in usable.values()]
    figure = go.Figure()
    figure.add_trace(go.Bar(x=names, y=failure, name="failure rate %", marker_color="#c62828", offsetgroup="a"))
    figure.add_trace(go.Bar(x=names, y=rate, name="median events/s per job", marker_color="#1565c0", yaxis="y2",
                            offsetgroup="b"))
    figure.update_layout(**LAYOUT, height=320, title="Comparison", barmode="group",
                         yaxis=dict(title="failure rate %", rangemode="tozero"),
                         yaxis2=dict(title="events/s per job", overlaying="y", side="right", showgrid=False,
                                     rangemode="tozero"),
                         legend=dict(orientation="h", y=-0.2))
    return figure


def comparison_rows(columns: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Table rows: one per measure, one column per summary (test, baseline, other test)."""
    def pct(v: Any) -> str:
        return "" if v is None else f"{100 * v:.1f}%"

    def num(v: Any) -> str:
        return "" if v is None else f"{v:,.1f}"

    measures: list[tuple[str, Any]] = [
        ("jobs ended", lambda s: s.get("ended")), ("completed", lambda s: s.get("completed")),
        ("failed", lambda s: s.get("failed")), ("failure rate", lambda s: pct(s.get("failure_rate"))),
        ("events/s (total)", lambda s: num(s.get("events_per_second"))),
        ("events/s per job p10", lambda s: num((s.get("events_per_second_per_job") or {}).get("p10"))),
        ("events/s per job p50", lambda s: num((s.get("events_per_second_per_job") or {}).get("p50"))),
        ("events/s per job p90", lambda s: num((s.get("events_per_second_per_job") or {}).get("p90"))),
        ("CPU efficiency", lambda s: "" if s.get("cpu_efficiency") is None else f"{s['cpu_efficiency']:.0f}%"),
    ]
    rows = []
    for label, read in measures:
        row = {"measure": label}
        for name, summary in columns.items():
            row[name] = "" if not summary else read(summary)
        rows.append(row)
    return rows
