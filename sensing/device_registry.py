"""Devices added, changed and retired at run time (the admin's HTTP API), in PostgreSQL.

The configuration (``devices`` and ``devices_file``) is the registry a deployment starts from;
this table is the overlay on top of it: a row replaces the configured device of its id, or adds
one, and a row with ``retired`` set takes the device out. ``device_audit`` keeps every change with
who made it (the logged-in identity), before and after, and is never updated or deleted.

Transactions: ``migrate`` commits its own work; the others run in the caller's transaction, so
that a change, its audit line and its broker credentials commit together.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal

import psycopg
from psycopg.rows import class_row

Action = Literal["add", "change", "retire"]
Conn = psycopg.Connection[Any]

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS device_registry (
    id text PRIMARY KEY,
    kind text NOT NULL,
    lon double precision NOT NULL,
    lat double precision NOT NULL,
    name text NOT NULL DEFAULT '',
    retired timestamptz,
    changed timestamptz NOT NULL,
    changed_by text NOT NULL
);
CREATE TABLE IF NOT EXISTS device_audit (
    id bigserial PRIMARY KEY,
    at timestamptz NOT NULL,
    actor text NOT NULL,
    action text NOT NULL CHECK (action IN ('add', 'change', 'retire')),
    device_id text NOT NULL,
    before jsonb,
    after jsonb
);
CREATE INDEX IF NOT EXISTS device_audit_device ON device_audit (device_id, id);
CREATE OR REPLACE FUNCTION device_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'device_audit is an audit record: % refused', TG_OP;
END $$;
DROP TRIGGER IF EXISTS device_audit_append_only ON device_audit;
CREATE TRIGGER device_audit_append_only BEFORE UPDATE OR DELETE ON device_audit
    FOR EACH ROW EXECUTE FUNCTION device_audit_append_only();
"""


@dataclass(frozen=True, slots=True)
class Entry:
    """One row of the overlay: the device as it is now, or as it was when retired."""

    id: str
    kind: str
    lon: float
    lat: float
    name: str
    retired: datetime | None
    changed: datetime
    changed_by: str

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "position": [self.lon, self.lat],
                "name": self.name}


@dataclass(frozen=True, slots=True)
class AuditLine:
    at: datetime
    actor: str
    action: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None


def migrate(conn: Conn) -> None:
    """Create the tables; safe at every start. Serialised by a lock: several processes
    (workers, the command line) may start at once, and CREATE IF NOT EXISTS is not atomic."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('citywatch.device_registry'))")
        conn.execute(SCHEMA)


def overlay(conn: Conn) -> list[Entry]:
    """Every row, by id: what the running registry applies on top of the configuration."""
    with conn.cursor(row_factory=class_row(Entry)) as cur:
        return cur.execute("SELECT id, kind, lon, lat, name, retired, changed, changed_by "
                           "FROM device_registry ORDER BY id").fetchall()


def find(conn: Conn, device_id: str) -> Entry | None:
    with conn.cursor(row_factory=class_row(Entry)) as cur:
        return cur.execute("SELECT id, kind, lon, lat, name, retired, changed, changed_by "
                           "FROM device_registry WHERE id = %s", (device_id,)).fetchone()


def save(conn: Conn, entry: Entry, action: Action, before: dict[str, Any] | None) -> None:
    """Write ``entry`` (replacing its id's row) and its audit line."""
    conn.execute(
        """INSERT INTO device_registry (id, kind, lon, lat, name, retired, changed, changed_by)
           VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
           ON CONFLICT (id) DO UPDATE SET kind = excluded.kind, lon = excluded.lon,
               lat = excluded.lat, name = excluded.name, retired = excluded.retired,
               changed = excluded.changed, changed_by = excluded.changed_by""",
        (entry.id, entry.kind, entry.lon, entry.lat, entry.name, entry.retired, entry.changed,
         entry.changed_by))
    after = None if action == "retire" else entry.as_json()
    conn.execute(
        "INSERT INTO device_audit (at, actor, action, device_id, before, after) "
        "VALUES (%s, %s, %s, %s, %s, %s)",
        (entry.changed, entry.changed_by, action, entry.id,
         None if before is None else json.dumps(before),
         None if after is None else json.dumps(after)))


def history(conn: Conn, device_id: str) -> list[AuditLine]:
    """The audit lines of a device, oldest first."""
    with conn.cursor(row_factory=class_row(AuditLine)) as cur:
        return cur.execute("SELECT at, actor, action, before, after FROM device_audit "
                           "WHERE device_id = %s ORDER BY id", (device_id,)).fetchall()
