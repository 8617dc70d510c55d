"""One queue: failure rate over time with its confidence band, throughput, where time goes, errors,
recent jobs (PanDA IDs and errors), the users' own jobs of the last hours, exclusion history with
reasons, and the tickets that name it."""
from __future__ import annotations

from typing import Any

from dash import Dash, Input, Output, dcc, html

from dashboard import figures, queries
from dashboard.pages.common import PageContext, cell, heading, message, rows, table, time_range, transition_rows
from robot.userjobs import recent_rows

JOB_COLUMNS = [("panda_id", "PanDA ID"), ("template", "Template"), ("status", "Status"),
               ("creation_time", "Created (UTC)"), ("start_time", "Started"), ("end_time", "Ended"),
               ("error_code", "Error"), ("error_diag", "Diagnostic")]
ERROR_COLUMNS = [("code", "Error"), ("message", "Message"), ("count", "Jobs")]
TRANSITION_COLUMNS = [("time", "Time (UTC)"), ("actor", "By"), ("decision", "Decision"), ("why", "Why"),
                      ("policy", "Policy"), ("reason", "Policy's reason")]
TICKET_COLUMNS = [("id", "Ticket"), ("subject", "Subject"), ("state", "State"), ("verdict", "Verdict"),
                  ("verdict_reason", "Why"), ("updated", "Updated (UTC)")]
USER_COLUMNS = [("hour", "Hour (UTC)"), ("ended", "Ended"), ("failed", "Failed"), ("site", "Site class"),
                ("user", "User class"), ("central", "Central"), ("unknown", "Unknown"), ("errors", "Errors"),
                ("not_counted", "Not counted")]
GRAPH = {"displaylogo": False}


def layout(ctx: PageContext, name: str | None) -> html.Div:
    with ctx.sessions() as session:
        names = queries.filter_options(session)["queues"]
    name = name if name in names else (name or (names[0] if names else None))
    return html.Div([
        heading("Queue"),
        html.Div([html.Div([html.Label("Queue"),
                            dcc.Dropdown(id="q-name", options=names, value=name, clearable=False)],
                           className="filter wide"),
                  time_range("q-range")], className="filters"),
        html.Div(id="q-head"),
        html.Div([dcc.Graph(id="q-failure", config=GRAPH, className="half"),
                  dcc.Graph(id="q-eps", config=GRAPH, className="half")], className="row"),
        html.Div([dcc.Graph(id="q-split", config=GRAPH, className="half"),
                  dcc.Graph(id="q-classes", config=GRAPH, className="half")], className="row"),
        html.H3("Top errors"), table("q-errors", ERROR_COLUMNS, numeric=("count",), page_size=10),
        html.H3("Recent jobs"), table("q-jobs", JOB_COLUMNS, page_size=15),
        html.H3("Users' own jobs, last hours"),
        table("q-users", USER_COLUMNS, numeric=("ended", "failed", "site", "user", "central", "unknown"), page_size=6),
        html.H3("Exclusion history"), table("q-transitions", TRANSITION_COLUMNS, page_size=10),
        html.H3("Linked tickets"), table("q-tickets", TICKET_COLUMNS, page_size=10),
    ])


def register(app: Dash, ctx: PageContext) -> None:
    @app.callback(Output("q-head", "children"), Output("q-failure", "figure"), Output("q-eps", "figure"),
                  Output("q-split", "figure"), Output("q-classes", "figure"), Output("q-errors", "data"),
                  Output("q-jobs", "data"), Output("q-transitions", "data"), Output("q-tickets", "data"),
                  Output("q-users", "data"),
                  Input("q-name", "value"), Input("q-range", "value"), Input("tick", "n_intervals"))
    def refresh(name: str | None, range_key: str, _tick: int) -> tuple[Any, ...]:
        blank = figures.empty("Choose a queue.")
        if not name:
            return (message("info", ["No queue known yet: the robot has not read the topology."]),
                    blank, blank, blank, blank, [], [], [], [], [])
        now = ctx.clock.now()
        try:
            with ctx.sessions() as session:
                page = queries.queue_page(session, name, ctx.filters(range_key), now)
                users = recent_rows(session, name, now)
        except LookupError:
            return (message("error", [f"Unknown queue {name}."]), blank, blank, blank, blank, [], [], [], [], [])
        series = page.failure_series
        head = html.Div([html.Span(name, className="queue-name", id="q-title"), " ",
                         html.Span(page.status, className=f"status status-{page.status}"), " ",
                         html.Span(f"{page.site} · {page.cloud}", className="reason"), " · ",
                         html.Span(cell(page.status_reason), className="reason"),
                         html.Div(cell(page.detail), className="reason") if page.detail else ""],
                        className="queue-head")
        return (head,
                figures.failure_rate_over_time([p.start for p in series], [p.rate for p in series],
                                               [p.low for p in series], [p.high for p in series],
                                               [p.jobs for p in series]),
                figures.events_per_second_histogram(page.events_per_second),
                figures.time_split(page.time_split),
                figures.error_classes(page.error_classes),
                rows(page.top_errors), rows(page.recent_jobs), transition_rows(page.transitions),
                [ticket_row(t) for t in page.tickets], users)


def ticket_row(ticket: Any) -> dict[str, Any]:
    found = rows([ticket])[0]
    found.pop("episodes", None)
    return found
