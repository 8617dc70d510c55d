"""The dashboard: one Dash app on a Flask server, with sign-in, /health and /metrics beside it.

    app = create_app(config, sessions, clock)
    server = DashboardServer(app.server, "127.0.0.1", 8050).start()   # a thread; server.url
    ...
    server.stop()

Pages (one module each in `dashboard/pages/`) are chosen by a `dcc.Location` router: `/` overview,
`/queue/<name>`, `/stress` and `/stress/<id>`, `/exclusions`, `/tickets`. Every callback opens its
own session, reads through `dashboard.queries` and shows values as text.
"""
from __future__ import annotations

import gc
import logging
import socket
import threading
from collections.abc import Callable
from urllib.parse import quote, unquote

import dash
import flask
from dash import Input, Output, State, dcc, html
from sqlalchemy.orm import Session, sessionmaker
from werkzeug.serving import BaseWSGIServer, make_server

from dashboard import auth, ops
from dashboard.pages import exclusions, overview, queue, stress, tickets
from dashboard.pages.common import PageContext, message
from robot.clock import Clock
from robot.config import RobotConfig

log = logging.getLogger(__name__)

NAVIGATION = [("/", "Overview"), ("/queue", "Queues"), ("/stress", "Stress tests"), ("/exclusions", "Exclusions"),
              ("/tickets", "Tickets")]
PAGES = (overview, queue, stress, exclusions, tickets)

STYLE = """
body { margin: 0; font-family: system-ui, -apple-system, "Segoe UI", sans-serif; background: #f4f6f8; color: #1d252c; }
.topbar { display: flex; align-items: center; gap: 1.2rem; padding: .6rem 1.2rem; background: #1d2b3a; color: white; }
.topbar a { color: #cfe0f5; text-decoration: none; } .topbar a:hover { color: white; }
.brand { font-weight: 600; font-size: 1.1rem; margin-right: 1rem; } .whoami { margin-left: auto; font-size: .9rem; }
.signout-form { display: inline; } .signout { background: none; border: none; padding: 0; color: #cfe0f5; cursor: pointer;
font: inherit; } .signout:hover { color: white; }
main { padding: 1rem 1.5rem 3rem; }
.page-heading { display: flex; align-items: baseline; gap: 1.5rem; } .page-heading h2 { margin: .3rem 0 .8rem; }
.filters { display: flex; flex-wrap: wrap; gap: 1rem 2rem; align-items: flex-end; background: white; padding: .8rem 1rem;
           border-radius: 6px; margin-bottom: .8rem; box-shadow: 0 1px 2px rgba(0,0,0,.08); }
.filter label { display: block; font-size: .8rem; color: #555; margin-bottom: .2rem; } .filter.wide { min-width: 16rem; }
.checklist label, .radio label { margin-right: .8rem; font-size: .9rem; }
.counts { display: flex; gap: .6rem; margin: .6rem 0; }
.count { padding: .25rem .7rem; border-radius: 1rem; background: #e3e8ee; font-size: .9rem; }
.count-online { background: #d8f0d2; } .count-pending { background: #ffe6b3; } .count-excluded { background: #ffd0cc; }
.count-silenced { background: #dde3e8; }
.notice { padding: .5rem 1rem; border-radius: 6px; margin: .6rem 0; background: white; }
.notice-ok { border-left: 4px solid #2e7d32; } .notice-error { border-left: 4px solid #c62828; }
.notice-info { border-left: 4px solid #1565c0; } .notice ul { margin: .2rem 0; padding-left: 1.2rem; }
.row { display: flex; flex-wrap: wrap; gap: 1rem; } .half { flex: 1 1 30rem; min-width: 0; }
.form { background: white; padding: .8rem 1rem; border-radius: 6px; box-shadow: 0 1px 2px rgba(0,0,0,.08); max-width: 46rem; }
.field { margin-bottom: .6rem; } .field label { display: block; font-size: .8rem; color: #555; margin-bottom: .2rem; }
.input { width: 100%; padding: .35rem; box-sizing: border-box; border: 1px solid #c4ccd4; border-radius: 4px; }
.button { padding: .45rem 1.4rem; background: #1565c0; color: white; border: none; border-radius: 4px; cursor: pointer; }
.hint { color: #667; font-size: .85rem; } .evidence { background: white; padding: .6rem; max-height: 24rem; overflow: auto;
white-space: pre-wrap; }
.queue-head { font-size: 1.1rem; margin-bottom: .6rem; } .queue-name { font-weight: 600; }
.status { padding: .1rem .6rem; border-radius: 1rem; background: #e3e8ee; }
.status-online { background: #d8f0d2; } .status-pending { background: #ffe6b3; } .status-excluded { background: #ffd0cc; }
.status-silenced { background: #dde3e8; } .reason { color: #555; }
.facts th { text-align: left; padding-right: 1.5rem; color: #555; font-weight: normal; }
h3 { margin-top: 1.4rem; }
"""

INDEX = """<!DOCTYPE html>
<html lang="en">
    <head>
        {%metas%}
        <title>{%title%}</title>
        {%favicon%}
        {%css%}
        <style>""" + STYLE + """</style>
    </head>
    <body>
        {%app_entry%}
        <footer>
            {%config%}
            {%scripts%}
            {%renderer%}
        </footer>
    </body>
</html>"""


def create_app(config: RobotConfig, sessions: sessionmaker[Session], clock: Clock) -> dash.Dash:
    """The dashboard for this configuration; its Flask server is `app.server`."""
    server = flask.Flask(__name__, static_folder=None)
    auth.install(server, config, sessions, clock)
    ops.install(server, config, sessions, clock,
                show_details=lambda: auth.is_operator(auth.current_user(config.dashboard), config.stress))
    app = dash.Dash(__name__, server=server, title="Queue Health Robot", update_title=None,
                    suppress_callback_exceptions=True, serve_locally=True, index_string=INDEX,
                    csrf_token_name=auth.CSRF_COOKIE, csrf_header_name=auth.CSRF_HEADER)
    ctx = PageContext(config, sessions, clock)
    refresh_ms = max(1000, int(config.dashboard.refresh.total_seconds() * 1000))
    app.layout = html.Div([
        dcc.Location(id="url", refresh="callback-nav"),
        dcc.Interval(id="tick", interval=refresh_ms),
        html.Header([html.Span("Queue Health Robot", className="brand"),
                     *[dcc.Link(label, href=href, id=f"nav-{label.split()[0].lower()}") for href, label in NAVIGATION],
                     html.Span(id="whoami", className="whoami")], className="topbar"),
        html.Main(id="page"),
    ])

    @app.callback(Output("page", "children"), Output("whoami", "children"), Input("url", "pathname"),
                  State("url", "search"))
    def route(pathname: str | None, search: str | None) -> tuple[object, object]:
        return render(ctx, pathname or "/"), whoami(ctx, (pathname or "/") + (search or ""))

    for page in PAGES:
        page.register(app, ctx)
    # The start-up's objects (Dash, Flask, plotly, SQLAlchemy: hundreds of thousands) out of the cyclic
    # collector's reach: a page load's full collections then walk only what requests allocate (at 1,000
    # queues a 3-day heatmap paid ~60 ms every other load for walking them).
    gc.freeze()
    return app


def render(ctx: PageContext, pathname: str) -> object:
    parts = [unquote(p) for p in pathname.strip("/").split("/") if p]
    try:
        if not parts:
            return overview.layout(ctx)
        if parts[0] == "queue" and len(parts) <= 2:
            return queue.layout(ctx, parts[1] if len(parts) == 2 else None)
        if parts[0] == "stress" and len(parts) == 1:
            return stress.layout(ctx)
        if parts[0] == "stress" and len(parts) == 2 and parts[1].isdigit():
            return stress.report_layout(ctx, int(parts[1]))
        if parts == ["exclusions"]:
            return exclusions.layout(ctx)
        if parts == ["tickets"]:
            return tickets.layout(ctx)
    except Exception:  # a page that cannot be drawn says so, and the log has the details
        log.exception("page %s failed", pathname)
        return message("error", [f"This page could not be drawn ({pathname}); the server log has the details."])
    return message("error", [f"No page at {pathname}."])


def whoami(ctx: PageContext, here: str) -> object:
    user = ctx.user()
    if user is None:
        return html.A("Sign in", href=f"/login?next={quote(here, safe='/')}", id="signin-link")
    signout = html.Form([dcc.Input(type="hidden", name="csrf_token", value=auth.csrf_token()),
                         html.Button("Sign out", type="submit", id="signout-button", className="signout")],
                        method="POST", action="/logout", className="signout-form")
    return [html.Span(f"{user} ({auth.role_of(user, ctx.config.stress)})", id="whoami-name"), " · ", signout]


class DashboardServer:
    """The app's WSGI server (werkzeug, threaded) in a daemon thread."""

    def __init__(self, wsgi_app: Callable[..., object], host: str = "127.0.0.1", port: int = 8050):
        if isinstance(wsgi_app, flask.Flask):  # the address it really listens on decides
            auth.secure_cookies(wsgi_app, host)
        # The socket is bound here so that a taken port raises OSError: werkzeug itself would print and exit.
        listener = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
        try:
            self.server: BaseWSGIServer = make_server(host, port, wsgi_app, threaded=True,  # type: ignore[arg-type]
                                                      fd=listener.fileno())
        finally:
            listener.close()  # werkzeug holds its own duplicate of it
        self.thread = threading.Thread(target=self.server.serve_forever, name="dashboard", daemon=True)

    @property
    def url(self) -> str:
        host = self.server.host
        shown = "127.0.0.1" if host in ("0.0.0.0", "") else ("[%s]" % host if ":" in host else host)
        return f"http://{shown}:{self.server.port}"

    def start(self) -> "DashboardServer":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)
