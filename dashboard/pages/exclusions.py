"""Exclusions: every transition with actor, reason and evidence on a timeline; people's overrides and
silences, with forms for operators (written as `healthrobot blacklist exclude|include|clear|silence`
writes them, applied by the robot's next step)."""
from __future__ import annotations

import json
from typing import Any

from dash import Dash, Input, Output, State, dcc, html
from sqlalchemy import select

from blacklist import overrides as people
from dashboard import auth, figures, queries
from dashboard.pages.common import PageContext, cell, heading, message, table, time_range, transition_rows
from robot.durations import parse_duration
from robot.storage.models import Override, Queue, Silence

COLUMNS = [("time", "Time (UTC)"), ("cloud", "Cloud"), ("site", "Site"), ("queue", "Queue"), ("actor", "By"),
           ("decision", "Decision"), ("why", "Why"), ("policy", "Policy"), ("reason", "Policy's reason")]


def layout(ctx: PageContext) -> html.Div:
    with ctx.sessions() as session:
        options = queries.filter_options(session)
    user = ctx.user()
    allowed = auth.can_override(user, ctx.config.stress)
    note = (f"Acting as {user} (operator)." if allowed else
            "Overrides and silences need an operator" + (f"; {user} is not one." if user else ": sign in first."))
    return html.Div([
        heading("Exclusions"),
        html.Div([html.Div([html.Label("Queues"),
                            dcc.Dropdown(id="ex-queues", options=options["queues"], value=[], multi=True,
                                         placeholder="all queues")], className="filter wide"),
                  time_range("ex-range", "7d")], className="filters"),
        dcc.Graph(id="ex-timeline", config={"displaylogo": False}),
        table("ex-table", COLUMNS, page_size=20, sort_by=[{"column_id": "time", "direction": "desc"}]),
        html.P("Select a row to see the evidence behind it.", className="hint"),
        html.Pre(id="ex-evidence", className="evidence"),
        html.H3("People's overrides and silences in force"),
        html.Div(id="ex-active"),
        dcc.Store(id="ex-changed", data=0),
        html.Div([
            html.Div([
                html.H3("Manual override"), html.P(note, className="hint", id="ex-who"),
                field("Queue", dcc.Dropdown(id="ex-o-queue", options=options["queues"], value=None)),
                field("Action", dcc.RadioItems(id="ex-o-action", value="exclude", inline=True, className="radio",
                                               options=[{"label": " exclude", "value": "exclude"},
                                                        {"label": " include (keep online)", "value": "include"},
                                                        {"label": " clear", "value": "clear"}])),
                field("Status of an exclusion", dcc.Dropdown(id="ex-o-status", value="brokeroff", clearable=False,
                                                             options=list(people.EXCLUDE_STATUSES))),
                field("Reason", dcc.Input(id="ex-o-reason", type="text", value="", className="input")),
                field("For (e.g. 4h; empty: until cleared)", dcc.Input(id="ex-o-for", type="text", value="",
                                                                      className="input")),
                html.Button("Apply", id="ex-o-submit", n_clicks=0, className="button"),
                html.Div(id="ex-o-result"),
            ], className="form half"),
            html.Div([
                html.H3("Silence"), html.P("No automatic exclusion and no mail for a queue, site or cloud.",
                                           className="hint"),
                field("Queue, site or cloud", dcc.Input(id="ex-s-name", type="text", value="", className="input")),
                field("For (e.g. 4h)", dcc.Input(id="ex-s-for", type="text", value="4h", className="input")),
                field("Reason", dcc.Input(id="ex-s-reason", type="text", value="", className="input")),
                html.Button("Silence", id="ex-s-submit", n_clicks=0, className="button"),
                html.Div(id="ex-s-result"),
            ], className="form half"),
        ], className="row"),
    ])


def field(label: str, component: Any) -> html.Div:
    return html.Div([html.Label(label), component], className="field")


def register(app: Dash, ctx: PageContext) -> None:
    @app.callback(Output("ex-timeline", "figure"), Output("ex-table", "data"), Output("ex-active", "children"),
                  Input("ex-queues", "value"), Input("ex-range", "value"), Input("tick", "n_intervals"),
                  Input("ex-changed", "data"))
    def refresh(queues: list[str], range_key: str, _tick: int, _changed: int) -> tuple[Any, ...]:
        now = ctx.clock.now()
        with ctx.sessions() as session:
            found = queries.transitions(session, ctx.filters(range_key, queues=queues))
            active = in_force(session, now)
        timeline = figures.transitions_timeline([t.time for t in found], [t.queue for t in found],
                                                [t.new for t in found], [t.old for t in found],
                                                [t.actor for t in found], [t.reason for t in found],
                                                [t.applied for t in found])
        data = transition_rows(found)
        for number, (row, transition) in enumerate(zip(data, found)):
            row["evidence"] = json.dumps(transition.evidence, indent=2, sort_keys=True, default=str)
            row["id"] = str(number)
        return timeline, data, active

    @app.callback(Output("ex-evidence", "children"), Input("ex-table", "active_cell"), State("ex-table", "data"))
    def evidence(active: dict[str, Any] | None, data: list[dict[str, Any]]) -> str:
        if not active:
            return ""
        chosen = next((r for r in data if r.get("id") == active.get("row_id")), None)
        if chosen is None:
            return ""
        return f"{chosen['queue']} {chosen['old']} → {chosen['new']} at {chosen['time']} by {chosen['actor']}\n" \
               f"{chosen['reason']}\n\nevidence:\n{chosen.get('evidence', '')}"

    @app.callback(Output("ex-o-result", "children"), Output("ex-changed", "data", allow_duplicate=True),
                  Input("ex-o-submit", "n_clicks"), State("ex-o-queue", "value"), State("ex-o-action", "value"),
                  State("ex-o-status", "value"), State("ex-o-reason", "value"), State("ex-o-for", "value"),
                  State("ex-changed", "data"), prevent_initial_call=True)
    def override(_clicks: int, queue: str | None, action: str, status: str, reason: str | None, duration: str | None,
                 changed: int) -> tuple[Any, int]:
        kind, lines = apply_override(ctx, ctx.user(), queue, action, status, reason or "", duration or "")
        return message(kind, lines, "ex-o-message"), (changed or 0) + (kind == "ok")

    @app.callback(Output("ex-s-result", "children"), Output("ex-changed", "data", allow_duplicate=True),
                  Input("ex-s-submit", "n_clicks"), State("ex-s-name", "value"), State("ex-s-for", "value"),
                  State("ex-s-reason", "value"), State("ex-changed", "data"), prevent_initial_call=True)
    def silence(_clicks: int, name: str | None, duration: str | None, reason: str | None,
                changed: int) -> tuple[Any, int]:
        kind, lines = apply_silence(ctx, ctx.user(), (name or "").strip(), duration or "", reason or "")
        return message(kind, lines, "ex-s-message"), (changed or 0) + (kind == "ok")


def _duration(text: str, problems: list[str], required: bool) -> Any:
    text = text.strip()
    if not text:
        if required:
            problems.append("for: how long is needed (e.g. 4h)")
        return None
    try:
        return parse_duration(text)
    except (ValueError, TypeError):
        problems.append(f"for: {text!r} is not a duration (e.g. 45m, 4h, 2d)")
        return None


def apply_override(ctx: PageContext, user: str | None, queue: str | None, action: str, status: str, reason: str,
                   duration_text: str) -> tuple[str, list[str]]:
    if not auth.can_override(user, ctx.config.stress):
        return "error", ["Only operators may override the robot" + (": sign in first." if user is None else ".")]
    assert user is not None
    problems: list[str] = []
    if not queue:
        problems.append("queue: choose a queue")
    if action != "clear" and not reason.strip():
        problems.append("reason: say why (it is recorded and mailed)")
    duration = _duration(duration_text, problems, required=False)
    if problems:
        return "error", problems
    now = ctx.clock.now()
    try:
        with ctx.sessions() as session:
            if action == "clear":
                cleared = people.clear_overrides(session, queue or "", user, now)
                session.commit()
                return "ok", [f"{queue}: {cleared} override(s) cleared" if cleared else f"{queue}: no override to clear"]
            people.set_override(session, queue or "", action, status, reason.strip(), user, now, duration)
            session.commit()
    except (people.UnknownName, ValueError) as exc:
        return "error", [str(exc)]
    until = f" until {(now + duration):%Y-%m-%d %H:%M} UTC" if duration else ""
    shown = status if action == "exclude" else "online"
    return "ok", [f"{queue}: manual {action} ({shown}) by {user}{until}; applied at the robot's next step."]


def apply_silence(ctx: PageContext, user: str | None, name: str, duration_text: str,
                  reason: str) -> tuple[str, list[str]]:
    if not auth.can_override(user, ctx.config.stress):
        return "error", ["Only operators may silence the robot" + (": sign in first." if user is None else ".")]
    assert user is not None
    problems: list[str] = []
    if not name:
        problems.append("name: a queue, site or cloud is needed")
    if not reason.strip():
        problems.append("reason: say why (e.g. scheduled downtime)")
    duration = _duration(duration_text, problems, required=True)
    if problems:
        return "error", problems
    now = ctx.clock.now()
    try:
        with ctx.sessions() as session:
            scope = people.add_silence(session, name, duration, reason.strip(), user, now).scope
            session.commit()
    except (people.UnknownName, ValueError) as exc:
        return "error", [str(exc)]
    return "ok", [f"{scope} {name} silenced by {user} until {(now + duration):%Y-%m-%d %H:%M} UTC."]


def in_force(session: Any, now: Any) -> Any:
    """People's overrides and silences in force, as text."""
    found = [f"override: {q} {o.action} ({o.status}) by {o.actor} until "
             f"{cell(o.until) or 'cleared'}: {o.reason}"
             for o, q in session.execute(select(Override, Queue.name).join(Queue, Queue.id == Override.queue_id)
                                         .where(Override.ended_at.is_(None), Override.cleared_at.is_(None))
                                         .order_by(Override.id))]
    found += [f"silence: {s.scope} {s.name} by {s.actor} until {cell(s.until)}: {s.reason}"
              for s in session.scalars(select(Silence).where(Silence.cleared_at.is_(None), Silence.until > now)
                                       .order_by(Silence.id))]
    if not found:
        return html.P("None.", className="hint", id="ex-active-none")
    return html.Ul([html.Li(line) for line in found], id="ex-active-list")
