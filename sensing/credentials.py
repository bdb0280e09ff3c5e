"""The MQTT credentials registry (CONTRACT section 6): who may connect to the broker, and as what.

Each identity is an MQTT username: a device (its ``device_id``), a team (its ``team_id``), the
engine (a ``service``) or a ``gateway`` that publishes for a list of devices over one connection.
A secret is shown once when issued; the table keeps only its hash, in the PBKDF2-SHA512 ``$7$``
form that ``mosquitto_passwd`` writes, so the broker's password file is made from the table
without any secret in plain text.

Transactions: ``migrate`` and ``issue`` commit their own work; the readers run in the caller's.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal, get_args

import psycopg
from psycopg.rows import class_row

IdentityKind = Literal["device", "team", "service", "gateway"]
KINDS: Final = get_args(IdentityKind)
# mosquitto_passwd's default. The secrets are 192 random bits, not passwords a person chose, so
# key stretching adds nothing; the broker hashes on every connect, and after a restart a fleet of
# thousands reconnects at once.
ITERATIONS: Final = 101
_SALT_BYTES: Final = 12  # as mosquitto_passwd
_SECRET_BYTES: Final = 24

Conn = psycopg.Connection[Any]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS mqtt_credentials (
    id text PRIMARY KEY,
    kind text NOT NULL CHECK (kind IN ('device', 'team', 'service', 'gateway')),
    secret_hash text NOT NULL,
    rotated timestamptz NOT NULL,
    disabled boolean NOT NULL DEFAULT false,
    devices text[] NOT NULL DEFAULT '{}'
)
"""


class CredentialsError(Exception):
    """A credential was asked for something the registry cannot do; the message says why."""


@dataclass(frozen=True, slots=True)
class Identity:
    """One row of the registry: ``devices`` lists a gateway's devices (empty for the others)."""

    id: str
    kind: str
    secret_hash: str
    rotated: datetime
    disabled: bool
    devices: list[str]


def hash_secret(secret: str, *, salt: bytes | None = None, iterations: int = ITERATIONS) -> str:
    """``$7$iterations$salt$hash`` (base64), the PBKDF2-SHA512 form Mosquitto 2 reads."""
    salt = secrets.token_bytes(_SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", secret.encode(), salt, iterations)
    return (f"$7${iterations}${base64.b64encode(salt).decode()}$"
            f"{base64.b64encode(digest).decode()}")


def verify_secret(secret: str, hashed: str) -> bool:
    """Whether ``secret`` matches a ``$7$`` hash; False for any other or a malformed hash."""
    parts = hashed.split("$")
    if len(parts) != 5 or parts[1] != "7" or not parts[2].isdigit():
        return False
    try:
        salt, want = base64.b64decode(parts[3], validate=True), base64.b64decode(parts[4])
    except ValueError:
        return False
    got = hashlib.pbkdf2_hmac("sha512", secret.encode(), salt, int(parts[2]))
    return hmac.compare_digest(got, want)


def new_secret() -> str:
    return secrets.token_urlsafe(_SECRET_BYTES)


def migrate(conn: Conn) -> None:
    """Create the registry's table; safe to run at every start."""
    with conn.transaction():
        conn.execute(_SCHEMA)


def issue(conn: Conn, identity: str, kind: IdentityKind, now: datetime, *,
          devices: Sequence[str] = ()) -> str:
    """Issue a new secret for ``identity`` (rotating any old one) and return it, in plain text,
    for the caller to hand over once. Enables a disabled identity; for a gateway, ``devices``
    replaces its list."""
    if kind not in KINDS:
        raise CredentialsError(f"{identity}: kind {kind!r} is not one of {', '.join(KINDS)}")
    if kind != "gateway" and devices:
        raise CredentialsError(f"{identity}: only a gateway has devices")
    secret = new_secret()
    with conn.transaction():
        row = conn.execute("SELECT kind FROM mqtt_credentials WHERE id = %s FOR UPDATE",
                           (identity,)).fetchone()
        if row is not None and row[0] != kind:
            raise CredentialsError(f"{identity} is registered as a {row[0]}, not a {kind}")
        conn.execute(
            "INSERT INTO mqtt_credentials (id, kind, secret_hash, rotated, devices) "
            "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (id) DO UPDATE SET "
            "secret_hash = EXCLUDED.secret_hash, rotated = EXCLUDED.rotated, disabled = false, "
            "devices = EXCLUDED.devices",
            (identity, kind, hash_secret(secret), now, list(devices)))
    return secret


def disable(conn: Conn, identity: str) -> bool:
    """Refuse ``identity`` from now on (once the broker reloads); False if it is unknown."""
    with conn.transaction():
        cur = conn.execute("UPDATE mqtt_credentials SET disabled = true WHERE id = %s",
                           (identity,))
        return cur.rowcount > 0


def identities(conn: Conn) -> list[Identity]:
    """Every identity, by id."""
    with conn.cursor(row_factory=class_row(Identity)) as cur:
        return cur.execute("SELECT id, kind, secret_hash, rotated, disabled, devices "
                           "FROM mqtt_credentials ORDER BY id").fetchall()


def find(conn: Conn, identity: str) -> Identity | None:
    with conn.cursor(row_factory=class_row(Identity)) as cur:
        return cur.execute("SELECT id, kind, secret_hash, rotated, disabled, devices "
                           "FROM mqtt_credentials WHERE id = %s", (identity,)).fetchone()


def verify(conn: Conn, identity: str, secret: str) -> bool:
    """Whether ``secret`` is the current secret of an enabled ``identity``."""
    found = find(conn, identity)
    return found is not None and not found.disabled and verify_secret(secret, found.secret_hash)
