"""Who may see and change what on the dashboard, and how people sign in.

Roles come from the configuration: `stress.operators` may do everything; `stress.site_admins`
(site -> names) may request stress tests for their sites. Viewing needs a signed-in user unless
`dashboard.anonymous_read` is set. The decisions are pure functions of (user, configuration);
`install()` wires them into the Flask server: a sign-in form posting to `/login` (passwords checked
against the robot's stored scrypt hashes), `/logout`, an optional trusted header set by a single
sign-on reverse proxy, a guard in front of every page and callback, and a double-submit CSRF token
that Dash's renderer sends with every callback.
"""
from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path
from collections.abc import Callable
from urllib.parse import quote

import flask
from markupsafe import escape
from sqlalchemy.orm import Session, sessionmaker

from robot.config import DashboardConfig, RobotConfig, StressConfig

SESSION_USER = "user"
CSRF_COOKIE = "_csrf_token"  # the name Dash's renderer reads (Dash(csrf_token_name=...))
CSRF_HEADER = "X-CSRFToken"
# Reachable without signing in: the sign-in form itself, the ops endpoints, and static files.
OPEN_PATHS = ("/login", "/logout", "/health", "/metrics", "/_favicon.ico")
OPEN_PREFIXES = ("/_dash-component-suites/", "/assets/")

Authenticate = Callable[[Session, str, str], "str | None"]


# -- decisions (pure) --------------------------------------------------------------------------
def can_view(user: str | None, settings: DashboardConfig) -> bool:
    return user is not None or settings.anonymous_read


def is_operator(user: str | None, stress: StressConfig) -> bool:
    return user is not None and user in stress.operators


def administered_sites(user: str | None, stress: StressConfig) -> set[str]:
    return {site for site, admins in stress.site_admins.items() if user is not None and user in admins}


def can_request_stress(user: str | None, sites: set[str], stress: StressConfig) -> bool:
    """An operator anywhere; a site admin for queues of the sites they administer (all of them)."""
    if user is None:
        return False
    if is_operator(user, stress):
        return True
    return bool(sites) and sites <= administered_sites(user, stress)


def can_override(user: str | None, stress: StressConfig) -> bool:
    """Manual exclusions, inclusions and silences: operators only."""
    return is_operator(user, stress)


def role_of(user: str | None, stress: StressConfig) -> str:
    if user is None:
        return "anonymous"
    if is_operator(user, stress):
        return "operator"
    sites = administered_sites(user, stress)
    return f"site admin of {', '.join(sorted(sites))}" if sites else "viewer"


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a path on this server only (no open redirect)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def user_from_header(value: str | None) -> str | None:
    """The proxy's user name, if it is a plausible one (no control characters, not empty)."""
    if value is None:
        return None
    value = value.strip()
    if not value or len(value) > 128 or any(ord(c) < 32 for c in value):
        return None
    return value


# -- the secret that signs the session cookie ------------------------------------------------------
def secret_key_path(config: RobotConfig) -> Path:
    if config.dashboard.secret_key_file:
        return config.resolve(config.dashboard.secret_key_file)
    return config.data_path / "dashboard.key"


def load_secret_key(path: Path) -> bytes:
    """The key in `path`; created (random, mode 0600) when the file does not exist."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it first
            pass
        else:
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_hex(32) + "\n")
    key = path.read_text().strip()
    if len(key) < 16:
        raise ValueError(f"{path}: the dashboard's secret key is too short (16 characters at least)")
    return key.encode()


# -- request side --------------------------------------------------------------------------------
def current_user(settings: DashboardConfig) -> str | None:
    """The signed-in user of the current request: the trusted proxy header first, else the session."""
    if settings.trusted_user_header:
        found = user_from_header(flask.request.headers.get(settings.trusted_user_header))
        if found is not None:
            return found
    user = flask.session.get(SESSION_USER)
    return user if isinstance(user, str) else None


def _default_authenticate(session: Session, name: str, password: str) -> str | None:
    from robot.users import authenticate  # the robot's users table (scrypt hashes)

    return authenticate(session, name, password)


def install(server: flask.Flask, config: RobotConfig, sessions: sessionmaker[Session],
            authenticate: Authenticate | None = None) -> None:
    """Sign-in routes, the guard in front of everything else, and the CSRF cookie."""
    settings = config.dashboard
    check_password = authenticate or _default_authenticate
    server.secret_key = load_secret_key(secret_key_path(config))
    server.config.update(SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Lax")

    @server.before_request
    def guard() -> flask.Response | tuple[str, int] | None:
        request = flask.request
        path = request.path
        if request.method == "POST" and not _csrf_ok(request):
            return "missing or wrong CSRF token: reload the page", 403
        if path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
            return None
        if can_view(current_user(settings), settings):
            return None
        if path.startswith("/_"):  # Dash's own requests: layout, dependencies, callbacks
            return "sign in first", 403
        return flask.redirect(f"/login?next={quote(request.full_path.rstrip('?'), safe='/?=&')}")

    @server.after_request
    def csrf_cookie(response: flask.Response) -> flask.Response:
        if not flask.request.cookies.get(CSRF_COOKIE):
            # Double-submit: readable by this origin's scripts (Dash sends it back as a header).
            response.set_cookie(CSRF_COOKIE, csrf_token(), samesite="Strict", httponly=False)
        return response

    @server.route("/login", methods=["GET", "POST"])
    def login() -> flask.Response | str:
        request = flask.request
        target = safe_next(request.values.get("next"))
        if request.method == "GET":
            return _login_page(target, "", current_user(settings))
        name = (request.form.get("name") or "").strip()
        password = request.form.get("password") or ""
        user = None
        if name and password:
            with sessions() as session:
                user = check_password(session, name, password)
        if user is None:
            return flask.Response(_login_page(target, "Unknown user or wrong password.", None, name), status=401,
                                  mimetype="text/html")
        flask.session.clear()
        flask.session[SESSION_USER] = user
        return flask.redirect(target)

    @server.route("/logout", methods=["GET", "POST"])
    def logout() -> flask.Response:
        flask.session.clear()
        return flask.redirect("/login")


def _csrf_ok(request: flask.Request) -> bool:
    cookie = request.cookies.get(CSRF_COOKIE, "")
    sent = request.headers.get(CSRF_HEADER) or request.form.get("csrf_token") or ""
    return bool(cookie) and hmac.compare_digest(cookie, sent)


def csrf_token() -> str:
    """This browser's CSRF token: its cookie, or a new one (set on the response by `install`)."""
    token = flask.request.cookies.get(CSRF_COOKIE) or flask.g.get("csrf_token")
    if not token:
        token = flask.g.csrf_token = secrets.token_urlsafe(32)
    return token


def _login_page(target: str, error: str, signed_in: str | None, name: str = "") -> str:
    """The sign-in form; every value placed in it is escaped."""
    csrf = csrf_token()
    note = f'<p class="note">Signed in as {escape(signed_in)}. <a href="/logout">Sign out</a></p>' if signed_in else ""
    problem = f'<p class="error" id="login-error">{escape(error)}</p>' if error else ""
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Sign in · Queue Health Robot</title>
<style>
body {{ font-family: system-ui, sans-serif; background: #f4f6f8; }}
form {{ max-width: 22rem; margin: 8rem auto; background: white; padding: 2rem; border-radius: 8px;
       box-shadow: 0 1px 4px rgba(0,0,0,.15); }}
label {{ display: block; margin-top: 1rem; }} input {{ width: 100%; padding: .4rem; box-sizing: border-box; }}
button {{ margin-top: 1.5rem; padding: .5rem 1.5rem; }} .error {{ color: #b00020; }} .note {{ color: #555; }}
</style></head><body>
<form method="post" action="/login" id="login-form">
<h2>Queue Health Robot</h2>{note}{problem}
<input type="hidden" name="next" value="{escape(target)}">
<input type="hidden" name="csrf_token" value="{escape(csrf)}">
<label>User <input name="name" id="login-name" autocomplete="username" value="{escape(name)}" autofocus></label>
<label>Password <input name="password" id="login-password" type="password" autocomplete="current-password"></label>
<button type="submit" id="login-submit">Sign in</button>
</form></body></html>"""
    return page
