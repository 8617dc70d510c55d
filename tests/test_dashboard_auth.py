"""Who may see and change what on the dashboard: the role rules (pure), the secret key file, and the
sign-in, guard, trusted-header and CSRF wiring on a Flask server."""
from __future__ import annotations

import stat

import flask
import pytest

from dashboard import auth
from robot.config import DashboardConfig, RobotConfig, StressConfig

STRESS = StressConfig(operators=["olga"], site_admins={"SITE-A": ["sam", "sue"], "SITE-B": ["sue"]})
PASSWORDS = {"olga": "op-secret", "sam": "admin-secret"}


def fake_authenticate(_session, name: str, password: str) -> str | None:
    return name if PASSWORDS.get(name) == password else None


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


@pytest.mark.parametrize("target,expected", [
    ("/stress", "/stress"), ("/queue/ANALY_A?x=1", "/queue/ANALY_A?x=1"), (None, "/"), ("", "/"),
    ("//evil.example", "/"), ("https://evil.example/", "/"), ("/\\evil.example", "/"), ("javascript:alert(1)", "/"),
])
def test_after_sign_in_only_paths_of_this_server(target, expected):
    assert auth.safe_next(target) == expected


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


# -- the wiring ---------------------------------------------------------------------------------
def server(tmp_path, **settings) -> flask.Flask:
    config = RobotConfig(data_dir=str(tmp_path), stress=STRESS, dashboard=DashboardConfig(**settings))
    app = flask.Flask("auth-test")
    auth.install(app, config, sessions=lambda: _NoSession(), authenticate=fake_authenticate)  # type: ignore[arg-type]

    @app.route("/")
    def page() -> str:
        return f"page for {auth.current_user(config.dashboard)}"

    @app.route("/_dash-layout")
    def layout() -> str:
        return "layout"

    @app.route("/_dash-update-component", methods=["POST"])
    def callback() -> str:
        return f"callback by {auth.current_user(config.dashboard)}"

    return app


class _NoSession:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def csrf(client) -> str:
    client.get("/login")
    return client.get_cookie(auth.CSRF_COOKIE).value


def test_anonymous_people_are_sent_to_sign_in(tmp_path):
    client = server(tmp_path).test_client()
    response = client.get("/?x=1")
    assert response.status_code == 302 and response.headers["Location"] == "/login?next=/?x=1"
    assert client.get("/_dash-layout").status_code == 403
    assert client.get("/login").status_code == 200


def test_anonymous_read_opens_viewing_but_not_the_session(tmp_path):
    client = server(tmp_path, anonymous_read=True).test_client()
    assert client.get("/").text == "page for None"
    assert client.get("/_dash-layout").status_code == 200


def test_sign_in_with_the_stored_password_then_sign_out(tmp_path):
    client = server(tmp_path).test_client()
    token = csrf(client)
    wrong = client.post("/login", data={"name": "<script>x</script>", "password": "nope", "csrf_token": token})
    assert wrong.status_code == 401 and "Unknown user or wrong password" in wrong.text
    assert "<script>x</script>" not in wrong.text and "&lt;script&gt;x&lt;/script&gt;" in wrong.text
    good = client.post("/login", data={"name": "olga", "password": "op-secret", "next": "/?page=2",
                                       "csrf_token": token})
    assert good.status_code == 302 and good.headers["Location"] == "/?page=2"
    assert client.get("/").text == "page for olga"
    assert client.post("/_dash-update-component", headers={auth.CSRF_HEADER: token}).text == "callback by olga"
    client.get("/logout")
    assert client.get("/").status_code == 302


def test_sign_in_never_redirects_elsewhere(tmp_path):
    client = server(tmp_path).test_client()
    response = client.post("/login", data={"name": "sam", "password": "admin-secret", "next": "//evil.example/",
                                           "csrf_token": csrf(client)})
    assert response.status_code == 302 and response.headers["Location"] == "/"


def test_posts_need_the_csrf_token(tmp_path):
    client = server(tmp_path).test_client()
    token = csrf(client)
    assert client.post("/login", data={"name": "olga", "password": "op-secret"}).status_code == 403
    assert client.post("/login", data={"name": "olga", "password": "op-secret", "csrf_token": "forged"}).status_code == 403
    client.post("/login", data={"name": "olga", "password": "op-secret", "csrf_token": token})
    assert client.post("/_dash-update-component").status_code == 403  # signed in, but no token header
    assert client.post("/_dash-update-component", headers={auth.CSRF_HEADER: "forged"}).status_code == 403


def test_a_trusted_proxy_header_signs_people_in(tmp_path):
    client = server(tmp_path, trusted_user_header="X-Remote-User").test_client()
    assert client.get("/", headers={"X-Remote-User": "sue"}).text == "page for sue"
    assert client.get("/", headers={"X-Remote-User": ""}).status_code == 302
    untrusted = server(tmp_path).test_client()  # without the setting, the header means nothing
    assert untrusted.get("/", headers={"X-Remote-User": "sue"}).status_code == 302
