"""Who may sign in to the dashboard: names and scrypt password hashes in the `user` table.

Roles are not stored here: operators and site admins come from the configuration
(`stress.operators`, `stress.site_admins`). Hashes are `scrypt$n$r$p$salt$hash` (base64), with a
random 16-byte salt per password, compared in constant time.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import os
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from robot.storage.models import User

MIN_PASSWORD = 8
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
SALT_BYTES = 16
KEY_BYTES = 32
MAX_NAME = 128


class UserError(ValueError):
    """A request about users that cannot be done: the message says why."""


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
        raise UserError(f"user {name!r} exists already (change the password with `healthrobot users passwd`)")
    user = User(name=name, password_hash=hash_password(password), created_at=now, disabled=False)
    session.add(user)
    session.flush()
    return user


def set_password(session: Session, name: str, password: str) -> None:
    check_password(password)
    _find(session, name).password_hash = hash_password(password)


def set_disabled(session: Session, name: str, disabled: bool) -> None:
    """A disabled user keeps their row but cannot sign in."""
    _find(session, name).disabled = disabled


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
