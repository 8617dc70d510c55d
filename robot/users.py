"""Who may sign in to the dashboard: names and scrypt password hashes in the `user` table.

Roles are not stored here: operators and site admins come from the configuration
(`stress.operators`, `stress.site_admins`). Hashes are `scrypt$n$r$p$salt$hash` (base64), with a
random 16-byte salt per password, compared in constant time.

Each user has a random session stamp, replaced when the password changes or the user is disabled
or enabled; a dashboard session keeps the stamp it was signed in with and ends as soon as
`session_stamp()` gives another one (or none: the user was removed or is disabled). Failed
sign-ins are stored (`login_failure`) so that every dashboard process throttles the same way.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from robot.storage.models import LoginFailure, User

MIN_PASSWORD = 8
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
SALT_BYTES = 16
KEY_BYTES = 32
MAX_NAME = 128


class UserError(ValueError):
    """A request about users that cannot be done: the message says why."""


class UserExists(UserError):
    """The name is taken (the CLI says how to change that user's password)."""


@dataclass(frozen=True)
class UserInfo:
    name: str
    created_at: datetime
    disabled: bool


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=KEY_BYTES,
                          maxmem=256 * n * r + 2**20)


def hash_password(password: str) -> str:
    """`scrypt$n$r$p$salt$hash` for a new password (refused when shorter than MIN_PASSWORD)."""
    check_password(password)
    salt = os.urandom(SALT_BYTES)
    digest = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    return "$".join(["scrypt", str(SCRYPT_N), str(SCRYPT_R), str(SCRYPT_P),
                     base64.b64encode(salt).decode(), base64.b64encode(digest).decode()])


def verify_password(password: str, stored: str) -> bool:
    """Whether `password` matches a stored hash; a malformed hash never matches."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest, validate=True)
        found = _scrypt(password, base64.b64decode(salt, validate=True), int(n), int(r), int(p))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(found, expected)


def check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise UserError(f"a password needs at least {MIN_PASSWORD} characters (got {len(password)})")


def _check_name(name: str) -> str:
    if not name or name != name.strip() or any(c.isspace() for c in name) or len(name) > MAX_NAME:
        raise UserError(f"a user name is 1 to {MAX_NAME} characters without spaces (got {name!r})")
    return name


def _find(session: Session, name: str) -> User:
    user = session.scalars(select(User).where(User.name == name)).first()
    if user is None:
        raise UserError(f"no user {name!r}")
    return user


def add_user(session: Session, name: str, password: str, now: datetime) -> User:
    _check_name(name)
    check_password(password)
    if session.scalars(select(User.id).where(User.name == name)).first() is not None:
        raise UserExists(f"user {name!r} exists already")
    user = User(name=name, password_hash=hash_password(password), created_at=now, disabled=False,
                session_stamp=new_stamp())
    session.add(user)
    session.flush()
    return user


def new_stamp() -> str:
    return secrets.token_hex(16)


def set_password(session: Session, name: str, password: str) -> None:
    """A new password; the user's dashboard sessions end."""
    check_password(password)
    user = _find(session, name)
    user.password_hash, user.session_stamp = hash_password(password), new_stamp()


def set_disabled(session: Session, name: str, disabled: bool) -> None:
    """A disabled user keeps their row but cannot sign in; their dashboard sessions end (also when enabled again)."""
    user = _find(session, name)
    user.disabled, user.session_stamp = disabled, new_stamp()


def session_stamp(session: Session, name: str) -> str | None:
    """The stamp a dashboard session of `name` must carry; None when the user was removed or is disabled."""
    row = session.execute(select(User.session_stamp, User.disabled).where(User.name == name)).first()
    return None if row is None or row.disabled else row.session_stamp


def remove_user(session: Session, name: str) -> None:
    session.delete(_find(session, name))
    session.flush()


# Compared against when the name is unknown, so that a wrong name costs as long as a wrong password.
_DUMMY = "$".join(["scrypt", str(SCRYPT_N), str(SCRYPT_R), str(SCRYPT_P),
                   base64.b64encode(b"\0" * SALT_BYTES).decode(), base64.b64encode(b"\0" * KEY_BYTES).decode()])


def authenticate(session: Session, name: str, password: str) -> str | None:
    """The user's name when the password is theirs and they are not disabled; else None."""
    row = session.execute(select(User.password_hash, User.disabled).where(User.name == name)).first()
    if row is None:
        verify_password(password, _DUMMY)
        return None
    stored, disabled = row
    if not verify_password(password, stored) or disabled:
        return None
    return name


def list_users(session: Session) -> list[UserInfo]:
    return [UserInfo(name, created, disabled) for name, created, disabled in
            session.execute(select(User.name, User.created_at, User.disabled).order_by(User.name))]


# -- failed sign-ins (throttling: the decision is dashboard.auth.login_wait) ------------------------
def login_failures(session: Session, name: str, address: str, since: datetime) -> tuple[list[datetime], list[datetime]]:
    """Times of the failed sign-ins since `since`: for this name, and from this address."""
    recent = select(LoginFailure.time).where(LoginFailure.time >= since)
    by_name = session.scalars(recent.where(LoginFailure.name == name[:MAX_NAME]).order_by(LoginFailure.time))
    by_address = session.scalars(recent.where(LoginFailure.address == address[:64]).order_by(LoginFailure.time))
    return list(by_name), list(by_address)


def record_login_failure(session: Session, name: str, address: str, now: datetime, forget_before: datetime) -> None:
    """One more failed sign-in; failures older than `forget_before` are dropped (they count no more)."""
    session.execute(delete(LoginFailure).where(LoginFailure.time < forget_before))
    session.add(LoginFailure(name=name[:MAX_NAME], address=address[:64], time=now))


def clear_login_failures(session: Session, name: str) -> None:
    """After a good sign-in the user's own count starts again (the address's does not)."""
    session.execute(delete(LoginFailure).where(LoginFailure.name == name[:MAX_NAME]))
