"""Tickets: every support thread with the robot's verdict (site, central, not the site, unknown), its
reason, the queues it names, and the degradation episodes it was linked to. Subjects are shown as
text, whatever they contain."""
from __future__ import annotations

from typing import Any

from dash import Dash, Input, Output, State, dcc, html

from dashboard import queries
from dashboard.pages.common import PageContext, as_dict, heading, rows, table

COLUMNS = [("id", "Ticket"), ("source", "Source"), ("subject", "Subject"), ("state", "State"),
           ("opened", "Opened (UTC)"), ("updated", "Updated (UTC)"), ("verdict", "Verdict"),
           ("verdict_reason", "Why"), ("queues", "Queues")]
VERDICTS = ["site", "central", "not_site", "unknown"]
VERDICT_COLOURS = {"site": "#c62828", "central": "#6a1b9a", "not_site": "#2e7d32", "unknown": "#78909c"}


def layout(ctx: PageContext) -> html.Div:
    return html.Div([
        heading("Tickets"),
        html.Div([html.Div([html.Label("Verdict"),
                            dcc.Checklist(id="tk-verdicts", options=[{"label": f" {v}", "value": v} for v in VERDICTS],
                                          value=[], inline=True, className="checklist")], className="filter"),
                  html.Div([html.Label("State"),
                            dcc.RadioItems(id="tk-state", value="all", inline=True, className="radio",
                                           options=[{"label": " all", "value": "all"},
                                                    {"label": " open", "value": "open"}])], className="filter")],
                 className="filters"),
        table("tk-table", COLUMNS, page_size=25, sort_by=[{"column_id": "updated", "direction": "desc"}],
              style_data_conditional=[{"if": {"filter_query": f'{{verdict}} = "{v}"', "column_id": "verdict"},
                                       "color": c, "fontWeight": "bold"} for v, c in VERDICT_COLOURS.items()]),
        html.P("Select a ticket to see the episodes it was linked to.", className="hint"),
        html.Div(id="tk-episodes"),
    ])


def register(app: Dash, ctx: PageContext) -> None:
    @app.callback(Output("tk-table", "data"), Input("tk-verdicts", "value"), Input("tk-state", "value"),
                  Input("tick", "n_intervals"))
    def refresh(verdicts: list[str], state: str, _tick: int) -> list[dict[str, Any]]:
        with ctx.sessions() as session:
            found = queries.tickets(session)
        if verdicts:
            found = [t for t in found if t.verdict in verdicts]
        if state == "open":
            found = [t for t in found if t.state != "closed"]
        data = []
        for ticket in found:
            row = rows([ticket])[0]
            row.pop("episodes", None)
            row["id"] = ticket.id
            data.append(row)
        return data

    @app.callback(Output("tk-episodes", "children"), Input("tk-table", "active_cell"), State("tk-table", "data"))
    def episodes(active: dict[str, Any] | None, _data: list[dict[str, Any]]) -> Any:
        if not active or active.get("row_id") is None:
            return ""
        try:
            with ctx.sessions() as session:
                ticket = queries.ticket(session, int(active["row_id"]))
        except LookupError:
            return ""
        found = list(ticket.episodes or [])
        title = html.H3(["Ticket ", str(ticket.id), ": ", html.Span(ticket.subject, id="tk-subject")])
        details = html.P([html.B(str(ticket.verdict or "no verdict")), ": ", str(ticket.verdict_reason or "")])
        if not found:
            return html.Div([title, details, html.P("No linked episode.", className="hint")])
        columns = [(key, key.replace("_", " ").capitalize()) for key in as_dict(found[0])]
        return html.Div([title, details, table("tk-episode-table", columns, data=rows(found), page_size=10)])
