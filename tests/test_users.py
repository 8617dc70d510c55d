"""Dashboard sign-in storage: scrypt hashes, authentication, refusals, and the `healthrobot users` commands."""
from __future__ import annotations

import base64
import hashlib
import json
import subprocess
from datetime import datetime, timedelta, timezone

import pytest
from click.testing import CliRunner
from sqlalchemy import column, func, insert, select, table

from robot import users
from robot.cli import main
from robot.storage.database import make_engine, make_sessionmaker, upgrade
from robot.storage.models import LoginFailure, User

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=timezone.utc)


@pytest.fixture
def session(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'users.db'}")
    upgrade(engine)
    with make_sessionmaker(engine)() as session:
        yield session
    engine.dispose()


def test_passwords_are_stored_as_salted_scrypt_hashes(session):
    users.add_user(session, "alice", "correct horse", NOW)
    users.add_user(session, "bob", "correct horse", NOW)
    alice, bob = (session.scalars(select(User.password_hash).where(User.name == n)).one() for n in ("alice", "bob"))
    scheme, n, r, p, salt, digest = alice.split("$")
    assert (scheme, n, r, p) == ("scrypt", "16384", "8", "1")
    assert len(base64.b64decode(salt)) == 16 and "correct horse" not in alice
    assert base64.b64decode(digest) == hashlib.scrypt(b"correct horse", salt=base64.b64decode(salt), n=16384, r=8,
                                                      p=1, dklen=len(base64.b64decode(digest)))
    assert alice != bob  # a random salt per password


def test_authenticate_returns_the_name_only_for_the_right_password(session):
    users.add_user(session, "alice", "correct horse", NOW)
    assert users.authenticate(session, "alice", "correct horse") == "alice"
    assert users.authenticate(session, "alice", "correct horsE") is None
    assert users.authenticate(session, "alice", "") is None
    assert users.authenticate(session, "mallory", "correct horse") is None


def test_disabled_users_cannot_sign_in(session):
    users.add_user(session, "alice", "correct horse", NOW)
    users.set_disabled(session, "alice", True)
    assert users.authenticate(session, "alice", "correct horse") is None
    assert [(u.name, u.disabled) for u in users.list_users(session)] == [("alice", True)]
    users.set_disabled(session, "alice", False)
    assert users.authenticate(session, "alice", "correct horse") == "alice"


def test_short_passwords_duplicates_and_bad_names_are_refused(session):
    with pytest.raises(users.UserError, match="at least 8 characters"):
        users.add_user(session, "alice", "1234567", NOW)
    users.add_user(session, "alice", "12345678", NOW)
    with pytest.raises(users.UserError, match="exists already"):
        users.add_user(session, "alice", "another password", NOW)
    with pytest.raises(users.UserError, match="without spaces"):
        users.add_user(session, "al ice", "another password", NOW)
    with pytest.raises(users.UserError, match="at least 8"):
        users.set_password(session, "alice", "short")
    assert users.authenticate(session, "alice", "12345678") == "alice"


def test_set_password_and_remove(session):
    users.add_user(session, "alice", "correct horse", NOW)
    users.set_password(session, "alice", "battery staple")
    assert users.authenticate(session, "alice", "correct horse") is None
    assert users.authenticate(session, "alice", "battery staple") == "alice"
    users.remove_user(session, "alice")
    assert users.list_users(session) == [] and users.authenticate(session, "alice", "battery staple") is None
    with pytest.raises(users.UserError, match="no user"):
        users.remove_user(session, "alice")


def test_the_session_stamp_changes_with_the_password_and_with_disabling_and_goes_with_the_user(session):
    users.add_user(session, "alice", "correct horse", NOW)
    users.add_user(session, "bob", "correct horse", NOW)
    seen = [users.session_stamp(session, "alice")]
    assert seen[0] and seen[0] != users.session_stamp(session, "bob")
    assert users.session_stamp(session, "alice") == seen[0]  # reading it changes nothing
    users.set_password(session, "alice", "battery staple")
    seen.append(users.session_stamp(session, "alice"))
    users.set_disabled(session, "alice", True)
    assert users.session_stamp(session, "alice") is None
    users.set_disabled(session, "alice", False)
    seen.append(users.session_stamp(session, "alice"))  # enabled again: the old sessions stay ended
    users.remove_user(session, "alice")
    assert users.session_stamp(session, "alice") is None
    users.add_user(session, "alice", "correct horse", NOW)  # the same name again is someone new
    seen.append(users.session_stamp(session, "alice"))
    assert None not in seen and len(set(seen)) == 4


def test_existing_users_get_a_stamp_each_when_the_schema_is_upgraded(database_url):
    engine = make_engine(database_url)
    upgrade(engine, "0005")
    old = table("user", column("name"), column("password_hash"), column("created_at"), column("disabled"))
    with engine.begin() as connection:
        connection.execute(insert(old), [{"name": name, "password_hash": "x", "created_at": NOW.replace(tzinfo=None),
                                          "disabled": False} for name in ("alice", "bob")])
    upgrade(engine)
    with make_sessionmaker(engine)() as session:
        stamps = {users.session_stamp(session, name) for name in ("alice", "bob")}
    engine.dispose()
    assert None not in stamps and len(stamps) == 2


def test_failed_sign_ins_are_counted_per_name_and_address_and_forgotten(session):
    t = [NOW + timedelta(minutes=i) for i in range(4)]
    users.record_login_failure(session, "alice", "10.0.0.1", t[0], forget_before=t[0])
    users.record_login_failure(session, "mallory", "10.0.0.1", t[1], forget_before=t[0])
    users.record_login_failure(session, "alice", "10.0.0.2", t[2], forget_before=t[0])
    assert users.login_failures(session, "alice", "10.0.0.1", since=t[0]) == ([t[0], t[2]], [t[0], t[1]])
    assert users.login_failures(session, "alice", "10.0.0.1", since=t[1]) == ([t[2]], [t[1]])
    users.record_login_failure(session, "bob", "10.0.0.3", t[3], forget_before=t[2])  # the older two are dropped
    assert session.scalar(select(func.count()).select_from(LoginFailure)) == 2
    users.clear_login_failures(session, "alice")
    assert users.login_failures(session, "alice", "10.0.0.2", since=t[0]) == ([], [])


def test_a_malformed_stored_hash_never_matches():
    assert not users.verify_password("x" * 8, "plain-text")
    assert not users.verify_password("x" * 8, "scrypt$16384$8$1$!!!$!!!")
    assert not users.verify_password("x" * 8, "bcrypt$1$2$3$AAAA$AAAA")


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "robot.yaml"
    path.write_text(f"data_dir: {tmp_path / 'data'}\n")
    assert CliRunner().invoke(main, ["--config", str(path), "db", "upgrade"]).exit_code == 0
    return str(path)


def test_cli_users_add_with_password_stdin_then_list_passwd_and_remove(config, tmp_path):
    run = CliRunner().invoke
    result = run(main, ["--config", config, "users", "add", "alice", "--password-stdin"], input="correct horse\n")
    assert result.exit_code == 0, result.output
    assert "user alice added" in result.output
    listed = json.loads(run(main, ["--config", config, "users", "list", "--json"]).output)
    assert [(u["name"], u["disabled"]) for u in listed] == [("alice", False)]
    engine = make_engine(f"sqlite:///{tmp_path / 'data' / 'healthrobot.db'}")
    with make_sessionmaker(engine)() as session:
        assert users.authenticate(session, "alice", "correct horse") == "alice"
    result = run(main, ["--config", config, "users", "passwd", "alice"], input="battery staple\nbattery staple\n")
    assert result.exit_code == 0, result.output
    with make_sessionmaker(engine)() as session:
        assert users.authenticate(session, "alice", "battery staple") == "alice"
    assert run(main, ["--config", config, "users", "remove", "alice"]).exit_code == 0
    assert json.loads(run(main, ["--config", config, "users", "list", "--json"]).output) == []
    engine.dispose()


def test_cli_users_disable_and_enable_end_the_dashboard_sessions(config, tmp_path):
    run = CliRunner().invoke
    added = run(main, ["--config", config, "users", "add", "alice", "--password-stdin"], input="correct horse\n")
    assert added.exit_code == 0
    engine = make_engine(f"sqlite:///{tmp_path / 'data' / 'healthrobot.db'}")
    with make_sessionmaker(engine)() as session:
        before = users.session_stamp(session, "alice")
    result = run(main, ["--config", config, "users", "disable", "alice"])
    assert result.exit_code == 0 and result.output == "user alice disabled: their dashboard sessions ended\n"
    listed = json.loads(run(main, ["--config", config, "users", "list", "--json"]).output)
    assert [(u["name"], u["disabled"]) for u in listed] == [("alice", True)]
    with make_sessionmaker(engine)() as session:
        assert users.session_stamp(session, "alice") is None
        assert users.authenticate(session, "alice", "correct horse") is None
    assert run(main, ["--config", config, "users", "enable", "alice"]).output == "user alice enabled\n"
    with make_sessionmaker(engine)() as session:
        assert users.authenticate(session, "alice", "correct horse") == "alice"
        assert users.session_stamp(session, "alice") not in (None, before)
    missing = run(main, ["--config", config, "users", "disable", "nobody"])
    assert missing.exit_code == 1 and "no user 'nobody'" in missing.output
    engine.dispose()


def test_cli_refuses_a_short_password_a_mismatch_and_a_duplicate(config):
    run = CliRunner().invoke
    result = run(main, ["--config", config, "users", "add", "bob", "--password-stdin"], input="short\n")
    assert result.exit_code != 0 and "at least 8 characters" in result.output
    result = run(main, ["--config", config, "users", "add", "bob"], input="first password\nsecond password\n"
                                                                        "first password\nfirst password\n")
    assert result.exit_code == 0 and "do not match" in result.output.lower()  # asked again, then accepted
    result = run(main, ["--config", config, "users", "add", "bob", "--password-stdin"], input="whatever123\n")
    assert result.exit_code != 0 and "exists already" in result.output
    # the command it names pastes as it is
    command = result.output.split("change their password with `", 1)[1].split("`", 1)[0]
    changed = subprocess.run(f"{command} --password-stdin", shell=True, input="whatever123\n", capture_output=True,
                             text=True, timeout=120)
    assert changed.returncode == 0, (command, changed.stderr)


@pytest.mark.parametrize("command", [["users", "list"], ["db", "rollup"], ["dashboard", "--port", "0"]])
def test_commands_refuse_a_database_whose_schema_is_not_current(tmp_path, command):
    path = tmp_path / "robot.yaml"
    path.write_text(f"data_dir: {tmp_path / 'data'}\n")  # no `db upgrade`: the database is empty
    result = CliRunner().invoke(main, ["--config", str(path), *command])
    assert result.exit_code == 1 and "db upgrade`" in result.output
