"""Who may see and change what on the dashboard, and how people sign in.

Roles come from the configuration: `stress.operators` may do everything; `stress.site_admins`
(site -> names) may request stress tests for their sites. Viewing needs a signed-in user unless
`dashboard.anonymous_read` is set. The decisions are pure functions of (user, configuration, time);
`install()` wires them into the Flask server: a sign-in form posting to `/login` (passwords checked
against the robot's stored scrypt hashes, failures throttled per user and per address), sign-out by
POST to `/logout`, an optional trusted header set by a single sign-on reverse proxy, a guard in
front of every page and callback, and a double-submit CSRF token that Dash's renderer sends with
every callback.

A signed-in session holds the user's name and session stamp (robot.users); the guard compares the
stamp with the stored one at every request, so removing or disabling a user or changing their
password ends their sessions at once, in every dashboard process. The session cookie is HttpOnly,
SameSite=Lax, and Secure unless the server listens on loopback only.
"""
from __future__ import annotations

import hmac
import ipaddress
import logging
import math
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from urllib.parse import quote, urlsplit

import flask
from markupsafe import escape
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from robot import users
from robot.clock import Clock
from robot.config import DashboardConfig, RobotConfig, StressConfig

log = logging.getLogger(__name__)

SESSION_USER = "user"
SESSION_STAMP = "stamp"
CSRF_COOKIE = "_csrf_token"  # the name Dash's renderer reads (Dash(csrf_token_name=...))
CSRF_HEADER = "X-CSRFToken"
# Reachable without signing in: the sign-in and sign-out forms, the ops endpoints, and static files.
OPEN_PATHS = ("/login", "/logout", "/health", "/metrics", "/_favicon.ico")
OPEN_PREFIXES = ("/_dash-component-suites/", "/assets/")
MAX_NEXT = 2000  # characters of a `next=` path


@dataclass(frozen=True)
class Throttle:
    """Sign-in is refused for a name with `per_user` failures, or an address with `per_address`
    failures, within the last `window`; it opens again as the failures age out of the window."""

    per_user: int = 5
    per_address: int = 20
    window: timedelta = timedelta(minutes=15)


THROTTLE = Throttle()


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
    """Where to go after signing in: a path on this server only (no open redirect), else `/`.

    Refused: anything not starting with a single `/` (`//host` and `/\\host` name another host),
    backslashes anywhere, a scheme or host, and control characters (browsers drop tabs and line
    breaks, so `/<tab>/host` would become `//host`; in a header they are an injection).
    """
    if not target or len(target) > MAX_NEXT or any(ord(c) < 32 or 127 <= ord(c) <= 159 for c in target):
        return "/"
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return "/"
    return target


def login_wait(user_failures: Sequence[datetime], address_failures: Sequence[datetime], now: datetime,
               throttle: Throttle = THROTTLE) -> timedelta | None:
    """How long a sign-in must wait given the recent failures for its name and from its address;
    None when it may go ahead."""
    waits = []
    for failures, limit in ((user_failures, throttle.per_user), (address_failures, throttle.per_address)):
        recent = sorted(t for t in failures if now - t < throttle.window)  # one a little ahead (clocks) counts too
        if len(recent) >= limit:  # open again when the failure that makes the count leaves the window
            waits.append(recent[-limit] + throttle.window - now)
    return max(waits) if waits else None


def is_loopback(host: str) -> bool:
    """Whether a listening address is reachable from this machine only."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def secure_cookies(server: flask.Flask, host: str) -> None:
    """Cookies are sent over HTTPS only unless the server listens on loopback only."""
    server.config["SESSION_COOKIE_SECURE"] = not is_loopback(host)


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
    """The signed-in user of the current request: the trusted proxy header first, else the session
    as the guard checked it (a session whose stamp no longer matches the stored one counts for nothing)."""
    if settings.trusted_user_header:
        found = user_from_header(flask.request.headers.get(settings.trusted_user_header))
        if found is not None:
            return found
    user = flask.g.get("session_user")
    return user if isinstance(user, str) else None


def _check_session(sessions: sessionmaker[Session]) -> None:
    """Keep the session's user for this request if their stamp still matches the stored one; end the
    session if it does not (user removed, disabled, or a new password). A database that cannot be
    read leaves the cookie alone but signs nobody in for this request."""
    user, stamp = flask.session.get(SESSION_USER), flask.session.get(SESSION_STAMP)
    if user is None:
        return
    try:
        with sessions() as session:
            stored = users.session_stamp(session, user) if isinstance(user, str) else None
    except SQLAlchemyError as exc:
        log.warning("cannot check the session of %r: %s", user, type(exc).__name__)
        return
    if stored is None or not isinstance(stamp, str) or not hmac.compare_digest(stored, stamp):
        flask.session.clear()
        return
    flask.g.session_user = user


def install(server: flask.Flask, config: RobotConfig, sessions: sessionmaker[Session], clock: Clock,
            throttle: Throttle = THROTTLE) -> None:
    """Sign-in routes, the guard in front of everything else, and the CSRF cookie."""
    settings = config.dashboard
    server.secret_key = load_secret_key(secret_key_path(config))
    server.config.update(SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Lax")
    secure_cookies(server, settings.host)  # DashboardServer sets it again for the address it listens on

    @server.before_request
    def guard() -> flask.Response | tuple[str, int] | None:
        request = flask.request
        path = request.path
        if request.method == "POST" and not _csrf_ok(request):
            return "missing or wrong CSRF token: reload the page", 403
        if path.startswith(OPEN_PREFIXES):  # static files: nothing depends on who asks
            return None
        _check_session(sessions)
        if path in OPEN_PATHS:
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
            response.set_cookie(CSRF_COOKIE, csrf_token(), samesite="Strict", httponly=False,
                                secure=bool(server.config.get("SESSION_COOKIE_SECURE")))
        return response

    @server.route("/login", methods=["GET", "POST"])
    def login() -> flask.Response | str:
        request = flask.request
        target = safe_next(request.values.get("next"))
        if request.method == "GET":
            return _login_page(target, "", current_user(settings))
        name = (request.form.get("name") or "").strip()
        password = request.form.get("password") or ""
        if not name or not password:
            return _html(_login_page(target, "Unknown user or wrong password.", None, name), 401)
        now, address = clock.now(), request.remote_addr or "unknown"
        with sessions() as session:
            wait = login_wait(*users.login_failures(session, name, address, now - throttle.window), now, throttle)
            if wait is not None:
                minutes = max(1, math.ceil(wait.total_seconds() / 60))
                log.warning("sign-in as %r from %s refused: too many failures", name, address)
                response = _html(_login_page(target, f"Too many failed sign-ins for this user or from this address: "
                                                     f"try again in {minutes} min.", None, name), 429)
                response.headers["Retry-After"] = str(math.ceil(wait.total_seconds()))
                return response
            user = users.authenticate(session, name, password)
            stamp = users.session_stamp(session, user) if user is not None else None
            if user is None or stamp is None:
                users.record_login_failure(session, name, address, now, forget_before=now - throttle.window)
                session.commit()
                return _html(_login_page(target, "Unknown user or wrong password.", None, name), 401)
            users.clear_login_failures(session, user)
            session.commit()
        flask.session.clear()
        flask.session[SESSION_USER], flask.session[SESSION_STAMP] = user, stamp
        return flask.redirect(target)

    @server.route("/logout", methods=["GET", "POST"])
    def logout() -> flask.Response | str:
        """POST (with the CSRF token, checked by the guard) signs out; GET only offers the button."""
        if flask.request.method == "GET":
            return _logout_page(current_user(settings))
        flask.session.clear()
        return flask.redirect("/login")


def _html(page: str, status: int) -> flask.Response:
    return flask.Response(page, status=status, mimetype="text/html")


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


PAGE_STYLE = """
body { font-family: system-ui, sans-serif; background: #f4f6f8; }
.box { max-width: 22rem; margin: 8rem auto; background: white; padding: 2rem; border-radius: 8px;
       box-shadow: 0 1px 4px rgba(0,0,0,.15); }
label { display: block; margin-top: 1rem; } input { width: 100%; padding: .4rem; box-sizing: border-box; }
button { margin-top: 1.5rem; padding: .5rem 1.5rem; } .error { color: #b00020; } .note { color: #555; }
form.inline, form.inline button { display: inline; margin: 0; }
"""


def _page(title: str, body: str) -> str:
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{escape(title)} · Queue Health Robot</title>
<style>{PAGE_STYLE}</style></head><body>
{body}
</body></html>"""


def signout_form(button_id: str = "signout-button") -> str:
    """A button that signs out: a POST carrying this browser's CSRF token."""
    return (f'<form method="post" action="/logout" class="inline"><input type="hidden" name="csrf_token" '
            f'value="{escape(csrf_token())}"><button type="submit" id="{escape(button_id)}">Sign out</button></form>')


def _login_page(target: str, error: str, signed_in: str | None, name: str = "") -> str:
    """The sign-in form; every value placed in it is escaped."""
    note = f'<p class="note">Signed in as {escape(signed_in)}. {signout_form()}</p>' if signed_in else ""
    problem = f'<p class="error" id="login-error">{escape(error)}</p>' if error else ""
    return _page("Sign in", f"""<div class="box"><h2>Queue Health Robot</h2>{note}{problem}
<form method="post" action="/login" id="login-form">
<input type="hidden" name="next" value="{escape(target)}">
<input type="hidden" name="csrf_token" value="{escape(csrf_token())}">
<label>User <input name="name" id="login-name" autocomplete="username" value="{escape(name)}" autofocus></label>
<label>Password <input name="password" id="login-password" type="password" autocomplete="current-password"></label>
<button type="submit" id="login-submit">Sign in</button>
</form></div>""")


def _logout_page(signed_in: str | None) -> str:
    """What GET /logout shows: the sign-out button (a link alone must not sign anyone out)."""
    who = f"Signed in as {escape(signed_in)}." if signed_in else "Not signed in."
    return _page("Sign out", f'<div class="box"><h2>Queue Health Robot</h2><p class="note">{who}</p>'
                             f'{signout_form()} <a href="/">Back to the dashboard</a></div>')
