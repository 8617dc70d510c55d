"""Overview: every queue's state at a glance, grouped by cloud and site, with filters.

Status (online / pending / excluded / silenced), failure rate and events/s on a colour scale in a
sortable, filterable table (built for hundreds of queues); a queue x time heatmap of the success
rate; active incidents. A click on a queue's name opens its page.
"""
from __future__ import annotations

from typing import Any
from urllib.parse import quote

from dash import Dash, Input, Output, dcc, html, no_update

from dashboard import figures, queries
from dashboard.pages.common import PageContext, cell, heading, message, table, time_range

COLUMNS = [("cloud", "Cloud"), ("site", "Site"), ("queue", "Queue"), ("status", "Status"), ("jobs", "Jobs"),
           ("failed", "Failed"), ("failure_rate", "Failure %"), ("events_per_second", "Events/s"),
           ("last_end", "Last job end (UTC)"), ("status_reason", "Why")]
NUMERIC = ("jobs", "failed", "failure_rate", "events_per_second")
LINK_STYLE = {"if": {"column_id": "queue"}, "color": "#0b57d0", "cursor": "pointer", "textDecoration": "underline"}


def layout(ctx: PageContext) -> html.Div:
    with ctx.sessions() as session:
        options = queries.filter_options(session)
    return html.Div([
        heading("Overview"),
        html.Div([
            html.Div([html.Label("Cloud"),
                      dcc.Checklist(id="ov-clouds", options=[{"label": c, "value": c} for c in options["clouds"]],
                                    value=[], inline=True, className="checklist")], className="filter"),
            html.Div([html.Label("Site"),
                      dcc.Dropdown(id="ov-sites", options=options["sites"], value=[], multi=True,
                                   placeholder="all sites")], className="filter wide"),
            html.Div([html.Label("Template"),
                      dcc.Dropdown(id="ov-templates", options=options["templates"], value=[], multi=True,
                                   placeholder="all templates")], className="filter wide"),
            time_range("ov-range"),
        ], className="filters"),
        html.Div(id="ov-counts", className="counts"),
        html.Div(id="ov-incidents"),
        table("ov-table", COLUMNS, numeric=NUMERIC, page_size=50, sort_mode="multi",
              sort_by=[{"column_id": c, "direction": "asc"} for c in ("cloud", "site", "queue")]),
        html.P("Click a queue to open its page. Filter a column by typing in the row under its name "
               "(e.g. > 20 for the failure rate).", className="hint"),
        dcc.Graph(id="ov-heatmap", config={"displaylogo": False}),
    ])


def register(app: Dash, ctx: PageContext) -> None:
    @app.callback(Output("ov-table", "data"), Output("ov-table", "style_data_conditional"),
                  Output("ov-heatmap", "figure"), Output("ov-counts", "children"), Output("ov-incidents", "children"),
                  Input("ov-clouds", "value"), Input("ov-sites", "value"), Input("ov-templates", "value"),
                  Input("ov-range", "value"), Input("tick", "n_intervals"))
    def refresh(clouds: list[str], sites: list[str], templates: list[str], range_key: str,
                _tick: int) -> tuple[Any, ...]:
        now = ctx.clock.now()
        chosen = ctx.filters(range_key, clouds=clouds, sites=sites, templates=templates)
        with ctx.sessions() as session:
            summaries = queries.overview(session, chosen, now)
            heat = queries.success_heatmap(session, chosen)
            incidents = queries.active_incidents(session, now)
        data = [overview_row(s) for s in summaries]
        styles = ([LINK_STYLE] + figures.failure_rate_styles() + figures.rate_styles(r["events_per_second"] or None for r in data)
                  + figures.status_styles())
        heatmap = figures.success_heatmap(heat.queues, heat.starts, heat.success, heat.jobs)
        return data, styles, heatmap, counts(summaries), incident_list(incidents)

    @app.callback(Output("url", "pathname", allow_duplicate=True), Input("ov-table", "active_cell"),
                  prevent_initial_call=True)
    def open_queue(active: dict[str, Any] | None) -> Any:
        if not active or active.get("column_id") != "queue" or not active.get("row_id"):
            return no_update
        return f"/queue/{quote(str(active['row_id']), safe='')}"


def overview_row(summary: Any) -> dict[str, Any]:
    rate = summary.failure_rate
    return {"id": summary.queue, "cloud": summary.cloud, "site": summary.site, "queue": summary.queue,
            "status": summary.status,
            "status_reason": " · ".join(x for x in (cell(getattr(summary, "detail", "")), cell(summary.status_reason)) if x), "jobs": summary.jobs,
            "failed": summary.failed, "failure_rate": None if rate is None else round(100 * rate, 1),
            "events_per_second": None if summary.events_per_second is None else round(summary.events_per_second, 1),
            "last_end": cell(summary.last_end)}


def counts(summaries: list[Any]) -> list[Any]:
    found = figures.status_counts(s.status for s in summaries)
    return [html.Span(f"{n} {status}", className=f"count count-{status}", id=f"ov-count-{status}")
            for status, n in found.items()] + [html.Span(f"{len(summaries)} queues", className="count")]


def incident_list(incidents: list[Any]) -> Any:
    if not incidents:
        return message("ok", ["No active incidents."], "ov-no-incidents")
    return html.Div([html.H4("Active incidents"),
                     html.Ul([html.Li([html.Span(cell(i.time), className="time"), " ",
                                       html.B(i.kind), " ", html.Span(i.subject or ""), ": ", html.Span(i.message)])
                              for i in incidents], id="ov-incident-list")], className="notice notice-error")
