"""Who may see and change what on the dashboard: the role rules and the sign-in throttle (pure), the
secret key file, and the sign-in, session, guard, trusted-header, CSRF and /health wiring of the real
Dash app (its Flask test client) on a real SQLite database with the robot's users."""
from __future__ import annotations

import json
import shutil
import stat
from datetime import timedelta
from pathlib import Path

import flask
import pytest

from dashboard import auth
from robot import users
from robot.clock import ManualClock
from robot.config import DashboardConfig, RobotConfig, StressConfig
from robot.loop import BACKEND_SETTING
from robot.storage.database import make_engine, make_sessionmaker, upgrade
from robot.storage.models import Setting
from tests.fakes import T0

STRESS = StressConfig(operators=["olga"], site_admins={"SITE-A": ["sam", "sue"], "SITE-B": ["sue"]})
PASSWORDS = {"olga": "op-secret-olga", "sam": "admin-secret-sam"}


# -- the rules ------------------------------------------------------------------------------------
def test_viewing_needs_a_user_unless_anonymous_read_is_on():
    assert not auth.can_view(None, DashboardConfig())
    assert auth.can_view("anyone", DashboardConfig())
    assert auth.can_view(None, DashboardConfig(anonymous_read=True))


@pytest.mark.parametrize("user,sites,allowed", [
    ("olga", {"SITE-A", "SITE-Z"}, True),  # an operator anywhere
    ("sam", {"SITE-A"}, True),  # a site admin for their site
    ("sam", {"SITE-A", "SITE-B"}, False),  # ... not for a site they do not administer
    ("sue", {"SITE-A", "SITE-B"}, True),  # ... unless they administer all of them
    ("sam", set(), False),  # no known queue, no site to administer
    ("viewer", {"SITE-A"}, False),
    (None, {"SITE-A"}, False),  # anonymous never
])
def test_stress_requests_need_an_operator_or_the_sites_admin(user, sites, allowed):
    assert auth.can_request_stress(user, sites, STRESS) is allowed


def test_overrides_need_an_operator_and_roles_are_named():
    assert auth.can_override("olga", STRESS)
    assert not auth.can_override("sam", STRESS) and not auth.can_override(None, STRESS)
    assert auth.role_of("olga", STRESS) == "operator"
    assert auth.role_of("sue", STRESS) == "site admin of SITE-A, SITE-B"
    assert auth.role_of("viewer", STRESS) == "viewer" and auth.role_of(None, STRESS) == "anonymous"


BAD_TARGETS = ["//evil.example", "https://evil.example/", "/\\evil.example", "\\/evil.example", "javascript:alert(1)",
               "/\t/evil.example", "/\n/evil.example", "/\r\nSet-Cookie: x=1", "/queue\x00", "/x\x7f", "/x\x85",
               " /stress", "/" + "x" * 3000]


@pytest.mark.parametrize("target,expected", [
    ("/stress", "/stress"), ("/queue/ANALY_A?x=1", "/queue/ANALY_A?x=1"), ("/queue/ANALY_É", "/queue/ANALY_É"),
    (None, "/"), ("", "/"), *[(bad, "/") for bad in BAD_TARGETS],
])
def test_after_sign_in_only_paths_of_this_server(target, expected):
    assert auth.safe_next(target) == expected


def test_sign_in_waits_after_too_many_failures_per_user_or_address():
    rule = auth.Throttle(per_user=3, per_address=5, window=timedelta(minutes=15))
    four = [T0 + timedelta(minutes=m) for m in (0, 1, 2, 3)]
    assert auth.login_wait(four[:2], four, T0 + timedelta(minutes=4), rule) is None
    # three failures for the name: open again when the oldest of the last three leaves the window
    assert auth.login_wait(four[:3], [], T0 + timedelta(minutes=4), rule) == timedelta(minutes=11)
    assert auth.login_wait(four, [], T0 + timedelta(minutes=4), rule) == timedelta(minutes=12)
    assert auth.login_wait(four[:3], [], T0 + timedelta(minutes=15), rule) is None
    five = [T0 + timedelta(seconds=s) for s in range(5)]  # five from one address, whatever the names
    assert auth.login_wait([], five, T0 + timedelta(minutes=1), rule) == timedelta(minutes=14)
    assert auth.login_wait([], five[:4], T0 + timedelta(minutes=1), rule) is None
    ahead = [T0 + timedelta(seconds=5)] * 3  # written by a process whose clock is a little ahead: they count
    assert auth.login_wait(ahead, [], T0, rule) == timedelta(minutes=15, seconds=5)


@pytest.mark.parametrize("host,loopback", [
    ("127.0.0.1", True), ("127.0.0.2", True), ("::1", True), ("[::1]", True), ("localhost", True),
    ("0.0.0.0", False), ("", False), ("::", False), ("10.1.2.3", False), ("dashboard.example.org", False),
])
def test_which_listening_addresses_are_loopback(host, loopback):
    assert auth.is_loopback(host) is loopback


def test_proxy_header_values_are_checked():
    assert auth.user_from_header(" alice ") == "alice"
    assert auth.user_from_header("") is None and auth.user_from_header(None) is None
    assert auth.user_from_header("bob\nX-Evil: 1") is None and auth.user_from_header("x" * 200) is None


# -- the secret key -----------------------------------------------------------------------------
def test_secret_key_is_generated_once_with_mode_0600(tmp_path):
    config = RobotConfig(data_dir=str(tmp_path / "data"))
    path = auth.secret_key_path(config)
    assert path == tmp_path / "data" / "dashboard.key"
    first = auth.load_secret_key(path)
    assert len(first) == 64 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert auth.load_secret_key(path) == first


def test_a_configured_secret_key_file_is_used_and_checked(tmp_path):
    (tmp_path / "key").write_text("short\n")
    config = RobotConfig(data_dir=str(tmp_path), base_dir=tmp_path, dashboard=DashboardConfig(secret_key_file="key"))
    assert auth.secret_key_path(config) == tmp_path / "key"
    with pytest.raises(ValueError, match="too short"):
        auth.load_secret_key(tmp_path / "key")


# -- the wiring: the real app on a real database --------------------------------------------------
@pytest.fixture(scope="module")
def migrated(tmp_path_factory) -> Path:
    """A migrated database with the users of PASSWORDS, copied by each test (migrating costs a second)."""
    path = tmp_path_factory.mktemp("template") / "healthrobot.db"
    engine = make_engine(f"sqlite:///{path}")
    upgrade(engine)
    with make_sessionmaker(engine)() as session:
        for name, password in PASSWORDS.items():
            users.add_user(session, name, password, T0)
        session.commit()
    engine.dispose()
    return path


class Site:
    """The dashboard app (as `healthrobot dashboard` builds it) on a migrated SQLite database with users."""

    def __init__(self, tmp_path, clock: ManualClock, migrated: Path, **settings):
        self.config = RobotConfig(data_dir=str(tmp_path), stress=STRESS, dashboard=DashboardConfig(**settings))
        if not (tmp_path / "healthrobot.db").exists():
            shutil.copy(migrated, tmp_path / "healthrobot.db")
        self.engine = make_engine(self.config.database_url)
        self.sessions = make_sessionmaker(self.engine)
        self.clock = clock

    def server(self) -> flask.Flask:
        """A new app on the same database: one more dashboard process."""
        from dashboard.app import create_app

        server = create_app(self.config, self.sessions, self.clock).server
        config = self.config

        @server.route("/whoami-test")
        def page() -> str:
            return f"page for {auth.current_user(config.dashboard)}"

        @server.route("/_test-callback", methods=["POST"])
        def callback() -> str:
            return f"callback by {auth.current_user(config.dashboard)}"

        return server

    def change(self, action, *args) -> None:
        with self.sessions() as session:
            action(session, *args)
            session.commit()


@pytest.fixture
def site(tmp_path, migrated):
    site = Site(tmp_path, ManualClock(T0), migrated)
    yield site
    site.engine.dispose()


def csrf(client) -> str:
    client.get("/login")
    return client.get_cookie(auth.CSRF_COOKIE).value


def sign_in(client, name: str, password: str | None = None, **extra):
    return client.post("/login", data={"name": name, "password": PASSWORDS[name] if password is None else password,
                                       "csrf_token": csrf(client), **extra}, **extra.pop("request", {}))


def whoami(client) -> str:
    response = client.get("/whoami-test")
    return response.text if response.status_code == 200 else f"redirected to {response.headers.get('Location')}"


def test_anonymous_people_are_sent_to_sign_in(site):
    client = site.server().test_client()
    response = client.get("/whoami-test?x=1")
    assert response.status_code == 302 and response.headers["Location"] == "/login?next=/whoami-test?x=1"
    assert client.get("/_dash-layout").status_code == 403
    assert client.get("/login").status_code == 200


def test_anonymous_read_opens_viewing_but_not_the_session(tmp_path, migrated):
    site = Site(tmp_path, ManualClock(T0), migrated, anonymous_read=True)
    client = site.server().test_client()
    assert whoami(client) == "page for None"
    assert client.get("/_dash-layout").status_code == 200


def test_sign_in_with_the_stored_password_then_sign_out(site):
    client = site.server().test_client()
    token = csrf(client)
    wrong = client.post("/login", data={"name": "<script>x</script>", "password": "nope", "csrf_token": token})
    assert wrong.status_code == 401 and "Unknown user or wrong password" in wrong.text
    assert "<script>x</script>" not in wrong.text and "&lt;script&gt;x&lt;/script&gt;" in wrong.text
    good = client.post("/login", data={"name": "olga", "password": PASSWORDS["olga"], "next": "/stress?page=2",
                                       "csrf_token": token})
    assert good.status_code == 302 and good.headers["Location"] == "/stress?page=2"
    assert whoami(client) == "page for olga"
    assert client.post("/_test-callback", headers={auth.CSRF_HEADER: token}).text == "callback by olga"
    assert client.post("/logout", data={"csrf_token": token}).headers["Location"] == "/login"
    assert whoami(client) == "redirected to /login?next=/whoami-test"


def test_sign_out_needs_a_post_with_the_token(site):
    client = site.server().test_client()
    sign_in(client, "olga")
    offered = client.get("/logout")  # a link or an image pointing here signs nobody out ...
    assert offered.status_code == 200 and 'action="/logout"' in offered.text and 'name="csrf_token"' in offered.text
    assert whoami(client) == "page for olga"
    assert client.post("/logout").status_code == 403  # ... nor does a forged form without the token
    assert client.post("/logout", data={"csrf_token": "forged"}).status_code == 403
    assert whoami(client) == "page for olga"
    client.post("/logout", data={"csrf_token": client.get_cookie(auth.CSRF_COOKIE).value})
    assert whoami(client).startswith("redirected to /login")


@pytest.mark.parametrize("change,args", [
    (users.set_password, ("olga", "a brand new password")),
    (users.set_disabled, ("olga", True)),
    (users.remove_user, ("olga",)),
])
def test_sessions_end_when_the_user_is_removed_disabled_or_given_a_new_password(site, change, args):
    first, second = site.server(), site.server()  # two dashboard processes
    here, there = first.test_client(), second.test_client()
    sign_in(here, "olga")
    sign_in(there, "olga")
    other = first.test_client()
    sign_in(other, "sam")
    assert whoami(here) == "page for olga" and whoami(there) == "page for olga"
    site.change(change, *args)
    assert whoami(here) == "redirected to /login?next=/whoami-test"
    assert whoami(there) == "redirected to /login?next=/whoami-test"
    callback = here.post("/_test-callback", headers={auth.CSRF_HEADER: here.get_cookie(auth.CSRF_COOKIE).value})
    assert callback.status_code == 403 and callback.text == "sign in first"  # Dash's callbacks too
    assert whoami(other) == "page for sam"  # other people stay signed in


def test_an_old_session_stays_ended_when_the_user_is_enabled_again_or_added_again(site):
    client = site.server().test_client()
    sign_in(client, "olga")
    cookie = client.get_cookie("session").value
    site.change(users.set_disabled, "olga", True)
    site.change(users.set_disabled, "olga", False)
    client.set_cookie("session", cookie)  # the cookie the browser had before
    assert whoami(client).startswith("redirected to /login")
    sign_in(client, "olga")
    cookie = client.get_cookie("session").value
    site.change(users.remove_user, "olga")
    site.change(users.add_user, "olga", PASSWORDS["olga"], T0)
    client.set_cookie("session", cookie)
    assert whoami(client).startswith("redirected to /login")


def test_sign_in_never_redirects_elsewhere_nor_fails(site):
    client = site.server().test_client()
    for target in BAD_TARGETS + ["/queue/ANALY_\u00e9", "/%0d%0aSet-Cookie:%20x=1", "/?next=//evil"]:
        assert client.get("/login", query_string={"next": target}).status_code == 200, target
        response = sign_in(client, "sam", next=target)
        assert response.status_code == 302, target
        location = response.headers["Location"]
        assert location.startswith("/") and not location.startswith("//"), target
        assert not any(ord(c) < 33 for c in location) and "\\" not in location, target
        if target in BAD_TARGETS:
            assert location == "/", target


def test_posts_need_the_csrf_token(site):
    client = site.server().test_client()
    token = csrf(client)
    assert client.post("/login", data={"name": "olga", "password": PASSWORDS["olga"]}).status_code == 403
    assert client.post("/login", data={"name": "olga", "password": PASSWORDS["olga"],
                                       "csrf_token": "forged"}).status_code == 403
    client.post("/login", data={"name": "olga", "password": PASSWORDS["olga"], "csrf_token": token})
    assert client.post("/_test-callback").status_code == 403  # signed in, but no token header
    assert client.post("/_test-callback", headers={auth.CSRF_HEADER: "forged"}).status_code == 403


def test_a_trusted_proxy_header_signs_people_in(tmp_path, migrated):
    client = Site(tmp_path, ManualClock(T0), migrated, trusted_user_header="X-Remote-User").server().test_client()
    assert client.get("/whoami-test", headers={"X-Remote-User": "sue"}).text == "page for sue"
    assert client.get("/whoami-test", headers={"X-Remote-User": ""}).status_code == 302
    untrusted = Site(tmp_path, ManualClock(T0), migrated).server().test_client()
    # without the setting, the header means nothing
    assert untrusted.get("/whoami-test", headers={"X-Remote-User": "sue"}).status_code == 302


def from_address(address: str) -> dict:
    return {"environ_base": {"REMOTE_ADDR": address}}


def test_sign_in_is_throttled_per_user_across_processes_and_opens_again(site):
    first, second = site.server().test_client(), site.server().test_client()
    for attempt in range(auth.THROTTLE.per_user):  # spread over two dashboard processes and two addresses
        client, address = (first, "10.0.0.1") if attempt % 2 else (second, "10.0.0.2")
        assert sign_in(client, "olga", "wrong password", request=from_address(address)).status_code == 401
        site.clock.advance(timedelta(seconds=30))
    refused = sign_in(first, "olga", request=from_address("10.0.0.3"))  # even the right password, from anywhere
    # the first failure leaves the 15-minute window 12.5 minutes from now
    assert refused.status_code == 429 and refused.headers["Retry-After"] == "750"
    assert "Too many failed sign-ins for this user or from this address: try again in 13 min." in refused.text
    assert whoami(first).startswith("redirected to /login")
    assert sign_in(second, "sam", request=from_address("10.0.0.1")).status_code == 302  # others are not held up
    site.clock.advance(timedelta(seconds=749))
    assert sign_in(first, "olga", request=from_address("10.0.0.3")).status_code == 429
    site.clock.advance(timedelta(seconds=1))
    assert sign_in(first, "olga", request=from_address("10.0.0.3")).status_code == 302
    assert whoami(first) == "page for olga"


def test_sign_in_is_throttled_per_address(site):
    client = site.server().test_client()
    for attempt in range(auth.THROTTLE.per_address):  # a different name each time
        assert client.post("/login", data={"name": f"guess{attempt}", "password": "wrong", "csrf_token": csrf(client)},
                           **from_address("192.0.2.7")).status_code == 401
    assert sign_in(client, "sam", request=from_address("192.0.2.7")).status_code == 429
    assert sign_in(client, "sam", request=from_address("192.0.2.8")).status_code == 302


def test_a_good_sign_in_clears_the_users_failures(site):
    client = site.server().test_client()
    for _ in range(auth.THROTTLE.per_user - 1):
        sign_in(client, "olga", "wrong password")
    assert sign_in(client, "olga").status_code == 302
    for _ in range(auth.THROTTLE.per_user - 1):
        assert sign_in(client, "olga", "wrong password").status_code == 401
    assert sign_in(client, "olga").status_code == 302


def session_cookie_header(response) -> str:
    return next(h for h in response.headers.getlist("Set-Cookie") if h.startswith("session="))


@pytest.mark.parametrize("host,secure", [("127.0.0.1", False), ("0.0.0.0", True), ("10.1.2.3", True)])
def test_the_session_cookie_is_secure_unless_on_loopback(tmp_path, migrated, host, secure):
    client = Site(tmp_path, ManualClock(T0), migrated, host=host).server().test_client()
    header = session_cookie_header(sign_in(client, "olga"))
    assert "HttpOnly" in header and "SameSite=Lax" in header
    assert ("Secure" in header) is secure
    fresh = client.application.test_client().get("/login")  # a browser without cookies gets its CSRF cookie
    csrf_cookie = next(h for h in fresh.headers.getlist("Set-Cookie") if h.startswith(auth.CSRF_COOKIE))
    assert ("Secure" in csrf_cookie) is secure


def test_the_address_the_server_listens_on_decides_secure_cookies(tmp_path, migrated):
    from dashboard.app import DashboardServer

    site = Site(tmp_path, ManualClock(T0), migrated, host="0.0.0.0")  # configured for every interface ...
    server = site.server()
    running = DashboardServer(server, "127.0.0.1", 0)  # ... but told to listen on loopback (--host)
    try:
        assert "Secure" not in session_cookie_header(sign_in(server.test_client(), "olga"))
    finally:
        running.server.server_close()
    assert auth.is_loopback("0.0.0.0") is False
    auth.secure_cookies(server, "0.0.0.0")
    assert "Secure" in session_cookie_header(sign_in(server.test_client(), "olga"))


PROBLEM = "ConnectionError: HTTPSConnectionPool(host='panda.internal.example', port=25443): Max retries exceeded"


def test_health_shows_exception_texts_to_signed_in_operators_only(site):
    with site.sessions() as session:
        session.merge(Setting(name=BACKEND_SETTING, value=PROBLEM, actor="robot", changed_at=site.clock.now()))
        session.commit()
    server = site.server()
    seen = {}
    for who in (None, "sam", "olga"):
        client = server.test_client()
        if who:
            sign_in(client, who)
        response = client.get("/health")
        assert response.status_code == 503
        seen[who] = response.text
    for who in (None, "sam"):  # anonymous, and a signed-in site admin
        report = json.loads(seen[who])
        assert report["backend"] == {"ok": False, "checked": T0.isoformat(),
                                     "error": "the last step did not reach the backend"}
        assert "panda.internal" not in seen[who] and "ConnectionError" not in seen[who]
    assert json.loads(seen["olga"])["backend"]["detail"] == PROBLEM


def test_health_gives_anonymous_callers_no_database_exception(tmp_path):
    from sqlalchemy import create_engine

    from dashboard import ops

    broken = make_sessionmaker(create_engine(f"sqlite:///{tmp_path / 'missing' / 'robot.db'}"))
    config = RobotConfig(data_dir=str(tmp_path))
    for show, expected in ((False, None), (True, "OperationalError")):
        server = flask.Flask("ops-test")
        ops.install(server, config, broken, ManualClock(T0), show_details=lambda show=show: show)
        response = server.test_client().get("/health")
        assert response.status_code == 503
        database = response.json["database"]
        assert database["error"] == "database not reachable"
        if expected is None:
            assert "detail" not in database and "OperationalError" not in response.text
            assert "unable to open" not in response.text
        else:
            assert expected in database["detail"]
