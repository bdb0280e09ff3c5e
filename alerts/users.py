"""People who may log in, and their tokens, in PostgreSQL.

Passwords are hashed with Argon2id (``argon2-cffi``'s defaults, RFC 9106's second recommended
option). A token or session is an opaque random string handed out once; only its SHA-256 is
stored, so reading the table gives no usable token. Disabling a user deletes its tokens, so the
user is out at its next request. ``alerts.auth`` is the only reader of the token functions.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final, Literal

import psycopg
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from psycopg.rows import dict_row

from alerts.identity import RESERVED_NAMES, ROLES, Identity, IdentityError
from alerts.lifecycle import AlertsError

TokenKind = Literal["bearer", "session"]
MIN_PASSWORD: Final = 10
MAX_PASSWORD: Final = 256  # Argon2 takes any length; a cap keeps a login cheap to refuse

_ROLE_LIST = ", ".join(f"'{r}'" for r in ROLES)
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS users (
    name text PRIMARY KEY,
    role text NOT NULL CHECK (role IN ({_ROLE_LIST})),
    department text,
    team text,
    password_hash text NOT NULL,
    disabled boolean NOT NULL DEFAULT false,
    created timestamptz NOT NULL DEFAULT now(),
    disabled_at timestamptz
);
CREATE TABLE IF NOT EXISTS auth_tokens (
    token_hash bytea PRIMARY KEY,
    user_name text NOT NULL REFERENCES users (name),
    kind text NOT NULL CHECK (kind IN ('bearer', 'session')),
    csrf text,
    created timestamptz NOT NULL DEFAULT now(),
    expires timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS auth_tokens_user ON auth_tokens (user_name);
CREATE INDEX IF NOT EXISTS auth_tokens_expires ON auth_tokens (expires);
"""

_hasher = PasswordHasher()
# Verified against when the user does not exist, so that a wrong name costs as long as a wrong
# password and the answer's timing does not tell which names exist.
_DUMMY_HASH: Final = _hasher.hash(secrets.token_urlsafe(16))


class UserError(AlertsError):
    """A user that cannot be added or changed; the message says why."""


@dataclass(frozen=True, slots=True)
class User:
    name: str
    role: str
    department: str | None
    team: str | None
    disabled: bool
    created: datetime


@dataclass(frozen=True, slots=True)
class Grant:
    """A token just issued: shown to its holder once, never stored in the clear."""

    token: str
    kind: TokenKind
    expires_in: int  # seconds
    csrf: str | None  # sessions only: what the page sends back in X-CSRF-Token


@dataclass(frozen=True, slots=True)
class TokenOwner:
    identity: Identity
    kind: TokenKind
    csrf: str | None


def migrate(conn: psycopg.Connection[Any]) -> None:
    with conn.transaction():
        conn.execute(SCHEMA)


def check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise UserError(f"the password is too short: at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise UserError(f"the password is too long: at most {MAX_PASSWORD} characters")
    if not password.strip():
        raise UserError("the password is blank")


def add_user(conn: psycopg.Connection[Any], identity: Identity, password: str) -> User:
    """Create a user; refuses a name that exists (disabled or not) or is reserved."""
    if identity.user.lower() in RESERVED_NAMES:
        raise UserError(f"{identity.user!r} is reserved for what no person did; pick another "
                        "name")
    check_password(password)
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        cur.execute("INSERT INTO users (name, role, department, team, password_hash) "
                    "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (name) DO NOTHING "
                    "RETURNING name, role, department, team, disabled, created",
                    (identity.user, identity.role, identity.department, identity.team,
                     _hasher.hash(password)))
        row = cur.fetchone()
    if row is None:
        raise UserError(f"user {identity.user!r} exists already")
    return User(**row)


def list_users(conn: psycopg.Connection[Any]) -> list[User]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute("SELECT name, role, department, team, disabled, created FROM users "
                    "ORDER BY name")
        return [User(**r) for r in cur.fetchall()]


def count_active(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT count(*) FROM users WHERE NOT disabled").fetchone()
    return int(row[0]) if row else 0


def disable_user(conn: psycopg.Connection[Any], name: str) -> None:
    """Disable a user and end every token and session it holds, at once."""
    with conn.transaction():
        cur = conn.execute("UPDATE users SET disabled = true, disabled_at = now() "
                           "WHERE name = %s", (name,))
        if cur.rowcount == 0:
            raise UserError(f"no user {name!r}")
        conn.execute("DELETE FROM auth_tokens WHERE user_name = %s", (name,))


def verify_password(conn: psycopg.Connection[Any], name: str, password: str) -> Identity | None:
    """The user's identity when the password is right and the user not disabled."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute("SELECT name, role, department, team, password_hash FROM users "
                    "WHERE name = %s AND NOT disabled", (name,))
        row = cur.fetchone()
    stored = row["password_hash"] if row else _DUMMY_HASH
    try:
        _hasher.verify(stored, password[:MAX_PASSWORD])
    except (VerificationError, InvalidHashError):
        return None
    if row is None:
        return None
    if _hasher.check_needs_rehash(stored):
        conn.execute("UPDATE users SET password_hash = %s WHERE name = %s",
                     (_hasher.hash(password), name))
    return _identity(row)


def _identity(row: dict[str, Any]) -> Identity | None:
    try:
        return Identity(row["name"], row["role"], row["department"], row["team"])
    except IdentityError:
        return None  # a row edited by hand into something impossible: no access


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "replace")).digest()


def issue(conn: psycopg.Connection[Any], user: str, kind: TokenKind, ttl: timedelta) -> Grant:
    token = secrets.token_urlsafe(32)
    csrf = secrets.token_urlsafe(24) if kind == "session" else None
    with conn.transaction():
        # Expired tokens are useless; dropping them here keeps the table small without a job.
        conn.execute("DELETE FROM auth_tokens WHERE expires < now() - interval '1 day'")
        conn.execute("INSERT INTO auth_tokens (token_hash, user_name, kind, csrf, expires) "
                      "VALUES (%s, %s, %s, %s, now() + %s)", (_digest(token), user, kind, csrf,
                                                               ttl))
    return Grant(token, kind, int(ttl.total_seconds()), csrf)


def owner(conn: psycopg.Connection[Any], token: str) -> TokenOwner | None:
    """Whose token this is, if it is known, unexpired and its user not disabled."""
    if not token or len(token) > 512:
        return None
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute("SELECT u.name, u.role, u.department, u.team, t.kind, t.csrf "
                    "FROM auth_tokens t JOIN users u ON u.name = t.user_name "
                    "WHERE t.token_hash = %s AND t.expires > now() AND NOT u.disabled",
                    (_digest(token),))
        row = cur.fetchone()
    if row is None:
        return None
    identity = _identity(row)
    return TokenOwner(identity, row["kind"], row["csrf"]) if identity else None


def revoke(conn: psycopg.Connection[Any], token: str) -> None:
    conn.execute("DELETE FROM auth_tokens WHERE token_hash = %s", (_digest(token),))
