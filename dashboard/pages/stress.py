"""Stress tests: the list, a request form (operators anywhere, site admins for their sites), and each
test's report with its plots, beside the queue's functional baseline and, on request, another test."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from dash import Dash, Input, Output, State, dcc, html, no_update

from dashboard import auth, figures, queries
from dashboard.pages.common import PageContext, as_dict, cell, heading, message, rows, table
from robot.durations import format_duration, parse_duration
from robot.storage.models import Test
from robot.stress import StressRequest, StressRequestError, check, queue_facts, request_stress_test
from robot.stress_report import build_report

LIST_COLUMNS = [("id", "Test"), ("template", "Template"), ("queues", "Queues"), ("state", "State"),
                ("requested_by", "Requested by"), ("approved_by", "Approved by"), ("start", "Start (UTC)"),
                ("end", "End (UTC)"), ("jobs", "Jobs ended"), ("failed", "Failed"), ("in_flight", "In flight"),
                ("outcome", "Outcome")]
GRAPH = {"displaylogo": False}


def layout(ctx: PageContext) -> html.Div:
    with ctx.sessions() as session:
        queues = queries.filter_options(session)["queues"]
    templates = [t.name for t in ctx.config.templates if t.category == "stress" and t.active]
    caps = ctx.config.stress
    user = ctx.user()
    who = (f"Requesting as {user} ({auth.role_of(user, caps)})." if user else
           "Sign in to request a stress test (operators, or a site's admins for its queues).")
    return html.Div([
        heading("Stress tests"),
        table("st-table", LIST_COLUMNS, numeric=("id", "jobs", "failed", "in_flight"), page_size=20,
              sort_by=[{"column_id": "id", "direction": "desc"}],
              style_data_conditional=[{"if": {"column_id": "id"}, "color": "#0b57d0", "cursor": "pointer",
                                       "textDecoration": "underline"}]),
        html.P("Click a test's number to open its report.", className="hint"),
        dcc.Store(id="st-changed", data=0),
        html.H3("Request a stress test"),
        html.P(who, className="hint", id="st-who"),
        html.Div([
            field("Queues", dcc.Dropdown(id="st-queues", options=queues, value=[], multi=True,
                                         placeholder="one or more queues")),
            field("Or type queue names (comma-separated)", dcc.Input(id="st-queue-text", type="text", value="",
                                                                      debounce=False, className="input")),
            field("Template", dcc.Dropdown(id="st-template", options=templates,
                                           value=templates[0] if templates else None, clearable=False)),
            field(f"Jobs per queue (1-{caps.max_jobs})", dcc.Input(id="st-jobs", type="text", value="100",
                                                                  className="input")),
            field(f"Concurrency (1-{caps.max_concurrency})", dcc.Input(id="st-concurrency", type="text", value="10",
                                                                      className="input")),
            field(f"Duration (e.g. 2h; at most {format_duration(caps.max_duration)})", dcc.Input(id="st-duration", type="text",
                                                                                 value="2h", className="input")),
            field("Start (UTC, YYYY-MM-DD HH:MM; empty: now)", dcc.Input(id="st-start", type="text", value="",
                                                                         className="input")),
            field("", dcc.Checklist(id="st-allow", options=[{"label": " also run on excluded queues",
                                                             "value": "yes"}], value=[])),
            field("Comment", dcc.Textarea(id="st-comment", value="", className="input", style={"height": "3em"})),
            html.Button("Request", id="st-submit", n_clicks=0, className="button"),
        ], className="form"),
        html.Div(id="st-result"),
    ])


def field(label: str, component: Any) -> html.Div:
    return html.Div([html.Label(label), component], className="field")


def report_layout(ctx: PageContext, test_id: int) -> html.Div:
    try:
        with ctx.sessions() as session:
            detail = queries.stress_test(session, test_id)
            others = [r.id for r in queries.stress_tests(session) if r.id != test_id]
    except LookupError:
        return html.Div([heading("Stress test"), message("error", [f"No stress test {test_id}."])])
    info = as_dict(detail)
    facts = [(label, cell(info.get(key))) for key, label in (
        ("template", "Template"), ("queues", "Queues"), ("state", "State"), ("requested_by", "Requested by"),
        ("approved_by", "Approved by"), ("created", "Requested at (UTC)"), ("start", "Start (UTC)"),
        ("end", "End (UTC)"), ("max_jobs", "Jobs asked per queue"), ("concurrency", "Concurrency"),
        ("jobs", "Jobs ended"), ("failed", "Failed"), ("in_flight", "In flight"), ("comment", "Comment"),
        ("outcome", "Outcome"), ("stop_reasons", "Safety stops")) if key in info]
    return html.Div([
        heading(f"Stress test {test_id}", dcc.Link("← all stress tests", href="/stress")),
        html.Table([html.Tr([html.Th(label), html.Td(value)]) for label, value in facts], className="facts"),
        html.Div([html.Label("Compare with"),
                  dcc.Dropdown(id="sr-compare", options=[{"label": f"test {o}", "value": o} for o in others],
                               value=None, placeholder="another stress test")], className="filter wide"),
        dcc.Store(id="sr-id", data=test_id),
        html.Div(id="sr-body"),
    ])


def register(app: Dash, ctx: PageContext) -> None:
    @app.callback(Output("st-table", "data"), Input("tick", "n_intervals"), Input("st-changed", "data"))
    def refresh(_tick: int, _changed: int) -> list[dict[str, Any]]:
        with ctx.sessions() as session:
            return rows(queries.stress_tests(session), id_field="id")

    @app.callback(Output("url", "pathname", allow_duplicate=True), Input("st-table", "active_cell"),
                  prevent_initial_call=True)
    def open_report(active: dict[str, Any] | None) -> Any:
        if not active or active.get("column_id") != "id" or not active.get("row_id"):
            return no_update
        return f"/stress/{int(active['row_id'])}"

    @app.callback(Output("st-result", "children"), Output("st-changed", "data"),
                  Input("st-submit", "n_clicks"),
                  State("st-queues", "value"), State("st-queue-text", "value"), State("st-template", "value"),
                  State("st-jobs", "value"), State("st-concurrency", "value"), State("st-duration", "value"),
                  State("st-start", "value"), State("st-allow", "value"), State("st-comment", "value"),
                  State("st-changed", "data"), prevent_initial_call=True)
    def submit(_clicks: int, queues: list[str] | None, typed: str | None, template: str | None, jobs: str | None,
               concurrency: str | None, duration: str | None, start: str | None, allow: list[str] | None,
               comment: str | None, changed: int) -> tuple[Any, Any]:
        outcome = request(ctx, ctx.user(), {"queues": queues, "typed": typed, "template": template, "jobs": jobs,
                                            "concurrency": concurrency, "duration": duration, "start": start,
                                            "allow": allow, "comment": comment})
        kind, lines = outcome
        return message(kind, lines, "st-message"), (changed or 0) + (kind == "ok")

    @app.callback(Output("sr-body", "children"), Input("sr-id", "data"), Input("sr-compare", "value"),
                  Input("tick", "n_intervals"))
    def report(test_id: int, compare: int | None, _tick: int) -> Any:
        now = ctx.clock.now()
        with ctx.sessions() as session:
            detail = queries.stress_test(session, test_id)
            found = detail.report
            if found is None or compare is not None:
                test = session.get(Test, test_id)
                other = session.get(Test, compare) if compare is not None else None
                found = build_report(session, test, now, compare=other) if test is not None else None
        return report_body(found, test_id)


def request(ctx: PageContext, user: str | None, form: dict[str, Any]) -> tuple[str, list[str]]:
    """Check who asks and what, then store the request; returns (kind, lines) for the page."""
    if user is None:
        return "error", ["Sign in to request a stress test."]
    problems: list[str] = []
    names = list(form.get("queues") or [])
    names += [n.strip() for n in (form.get("typed") or "").replace(";", ",").split(",") if n.strip()]
    names = list(dict.fromkeys(names))
    jobs = _whole(form.get("jobs"), "jobs", problems)
    concurrency = _whole(form.get("concurrency"), "concurrency", problems)
    duration = None
    if (form.get("duration") or "").strip():
        try:
            duration = parse_duration(form["duration"].strip())
        except (ValueError, TypeError):
            problems.append(f"duration: {form['duration']!r} is not a duration (e.g. 45m, 2h, 1d)")
    start = None
    if (form.get("start") or "").strip():
        try:
            start = datetime.strptime(form["start"].strip(), "%Y-%m-%d %H:%M").replace(tzinfo=timezone.utc)
        except ValueError:
            problems.append(f"start: {form['start']!r} is not a time written YYYY-MM-DD HH:MM (UTC)")
    now = ctx.clock.now()
    with ctx.sessions() as session:
        facts = queue_facts(session)
        sites = {facts[n].site for n in names if n in facts}
        if names and not auth.can_request_stress(user, sites, ctx.config.stress):
            admin = sorted(auth.administered_sites(user, ctx.config.stress))
            return "error", [f"{user} may not request stress tests at {', '.join(sorted(sites)) or 'these queues'}: "
                             "operators may request anywhere, site admins only for their own sites"
                             + (f" ({', '.join(admin)})." if admin else ".")]
        try:
            wanted = StressRequest(queues=tuple(names), template=form.get("template") or "", jobs=jobs or 0,
                                   concurrency=concurrency or 0, requested_by=user, duration=duration, start=start,
                                   allow_excluded="yes" in (form.get("allow") or []),
                                   comment=(form.get("comment") or "").strip())
            if problems:  # the form's own problems, with the request's other checks beside them
                unparsed = tuple(f"{name}:" for name, value in (("jobs", jobs), ("concurrency", concurrency))
                                 if value is None)
                raise StressRequestError(problems + [p for p in check(wanted, ctx.config, facts, now)
                                                     if not p.startswith(unparsed or ("\0",))])
            test = request_stress_test(session, wanted, ctx.config, now)
            session.commit()
        except StressRequestError as exc:
            return "error", list(exc.problems)
        state, approved = test.state, test.approved_by
        test_id = test.id
    if state == "scheduled":
        return "ok", [f"Stress test {test_id} scheduled (approved by {approved}); it starts at "
                      f"{(start or now):%Y-%m-%d %H:%M} UTC."]
    return "ok", [f"Stress test {test_id} requested; it waits for an operator's approval."]


def _whole(value: Any, name: str, problems: list[str]) -> int | None:
    text = str(value if value is not None else "").strip()
    if not text.isdigit():
        problems.append(f"{name}: a whole number is needed (got {text!r})")
        return None
    return int(text)


def report_body(report: dict[str, Any] | None, test_id: int) -> Any:
    if not report:
        return message("info", [f"Stress test {test_id} has no results yet."])
    summary = report.get("summary") or {}
    plots = report.get("plots") or {}
    columns: dict[str, Any] = {f"test {test_id}": summary, "baseline (functional, week before)": report.get("baseline")}
    if report.get("compare"):
        columns[f"test {report['compare'].get('test')}"] = report["compare"].get("summary")
    for queue, per_queue in (report.get("per_queue") or {}).items():
        columns[f"{queue} (this test)"] = per_queue
    compared = figures.comparison_rows(columns)
    top = [{"error": cell(e[0]) if isinstance(e, (list, tuple)) else cell(e),
            "jobs": e[1] if isinstance(e, (list, tuple)) and len(e) > 1 else ""} for e in summary.get("top_errors") or []]
    stops = report.get("stops") or {}
    stops = [f"{queue}: {reason}" for queue, reason in stops.items()] if isinstance(stops, dict) else list(stops)
    return html.Div([
        html.H3("Summary"),
        table("sr-summary", [("measure", "")] + [(name, name) for name in columns], data=compared, page_size=20,
              filter_action="none"),
        html.Div([dcc.Graph(id="sr-time", figure=figures.stress_over_time(plots), config=GRAPH, className="half"),
                  dcc.Graph(id="sr-compare-graph", figure=figures.stress_comparison(columns), config=GRAPH,
                            className="half")], className="row"),
        html.Div([dcc.Graph(id="sr-eps", figure=figures.events_per_second_histogram(
                      plots.get("per_job_events_per_second") or []), config=GRAPH, className="half"),
                  dcc.Graph(id="sr-times", figure=figures.stress_time_distributions(plots.get("times") or {}),
                            config=GRAPH, className="half")], className="row"),
        dcc.Graph(id="sr-classes", figure=figures.error_classes(summary.get("error_classes") or {}), config=GRAPH),
        html.H3("Top errors"), table("sr-errors", [("error", "Error"), ("jobs", "Jobs")], data=top, page_size=10),
        html.H3("Safety stops"),
        html.Ul([html.Li(cell(s)) for s in stops]) if stops else html.P("None.", className="hint"),
    ])
