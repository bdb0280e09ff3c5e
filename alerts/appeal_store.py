"""Residents' appeals in PostgreSQL: the ``appeals`` table, what an appeal may join, and the facts a
reply is made of.

An appeal row keeps everything the resident sent (contact fields included: to call back, never
shown publicly), who entered it (``actor``: ``resident`` for GeoReport, the operator's user name
for the hotline), the sender's address (for abuse review), the keyed hash of the caller
(``caller_key``: distinct callers are counted without comparing phone numbers), and what it
joined: an incident (``alert_id``, ``work_order_id``) or, when none, a *case* of appeals about one
problem (``case_id``: the first appeal's id; an appeal joining an incident takes the alert id),
with ``how`` it matched and the ``score``.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg.rows import dict_row

from alerts.lifecycle import NotFound
from rules import registry

SCHEMA = """
CREATE SEQUENCE IF NOT EXISTS appeal_seq;
CREATE TABLE IF NOT EXISTS appeal_secret (
    id int PRIMARY KEY CHECK (id = 1),
    salt bytea NOT NULL
);
CREATE TABLE IF NOT EXISTS appeals (
    id text PRIMARY KEY,
    seq bigint NOT NULL,
    source text NOT NULL CHECK (source IN ('open311', 'hotline')),
    category text NOT NULL,
    lon double precision NOT NULL,
    lat double precision NOT NULL,
    zone_ids text[] NOT NULL DEFAULT '{}',
    address text NOT NULL DEFAULT '',
    place text NOT NULL,
    description text NOT NULL DEFAULT '',
    media_url text NOT NULL DEFAULT '',
    contact jsonb NOT NULL DEFAULT '{}',
    caller_key text,
    fingerprint text NOT NULL,
    received timestamptz NOT NULL,
    actor text NOT NULL,
    sender text NOT NULL,
    alert_id text,
    work_order_id text,
    case_id text NOT NULL,
    how text NOT NULL DEFAULT '',
    score real,
    resubmitted int NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS appeals_received ON appeals (received DESC);
CREATE INDEX IF NOT EXISTS appeals_alert ON appeals (alert_id) WHERE alert_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS appeals_case ON appeals (case_id, received);
CREATE INDEX IF NOT EXISTS appeals_fingerprint ON appeals (fingerprint, received DESC);
CREATE INDEX IF NOT EXISTS appeals_open_cases ON appeals (category, received DESC)
    WHERE alert_id IS NULL;
"""

# Serialises the matching of appeals (two appeals about one problem arriving at once must not
# each start a case of their own); a constant key of this module's.
MATCH_LOCK = 0x4150504C  # "APPL"


def migrate(conn: psycopg.Connection[Any]) -> None:
    with conn.transaction():
        conn.execute(SCHEMA)
        conn.execute("INSERT INTO appeal_secret (id, salt) VALUES (1, %s) ON CONFLICT DO NOTHING",
                     (secrets.token_bytes(32),))


def secret(conn: psycopg.Connection[Any]) -> bytes:
    """The key of ``caller_key`` hashes: made once per database, never shown."""
    row = conn.execute("SELECT salt FROM appeal_secret WHERE id = 1").fetchone()
    if row is None:
        raise NotFound("the appeals schema is not migrated (no appeal_secret)")
    return bytes(row[0])


@dataclass(frozen=True, slots=True)
class NewAppeal:
    source: str
    category: str
    lon: float
    lat: float
    zone_ids: tuple[str, ...]
    address: str
    place: str
    description: str
    media_url: str
    contact: dict[str, str]
    caller_key: str | None
    fingerprint: str
    received: datetime
    actor: str
    sender: str


def resubmission(cur: psycopg.Cursor[Any], fingerprint: str, since: datetime) -> str | None:
    """The appeal this one repeats exactly (same fingerprint since ``since``), counted again on
    it; None when it is new. The caller holds ``MATCH_LOCK``."""
    cur.execute("UPDATE appeals SET resubmitted = resubmitted + 1 WHERE id = ("
                "SELECT id FROM appeals WHERE fingerprint = %s AND received >= %s "
                "ORDER BY received DESC LIMIT 1) RETURNING id", (fingerprint, since))
    row = cur.fetchone()
    return None if row is None else str(row[0])


def insert(cur: psycopg.Cursor[Any], a: NewAppeal) -> tuple[str, int]:
    """A new appeal, in a case of its own until matched: (id, sequence number)."""
    cur.execute("SELECT nextval('appeal_seq')")
    row = cur.fetchone()
    assert row is not None
    seq = int(row[0])
    appeal_id = f"AP-{seq:06d}"
    cur.execute(
        "INSERT INTO appeals (id, seq, source, category, lon, lat, zone_ids, address, place, "
        "description, media_url, contact, caller_key, fingerprint, received, actor, sender, "
        "case_id) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)",
        (appeal_id, seq, a.source, a.category, a.lon, a.lat, list(a.zone_ids), a.address,
         a.place, a.description, a.media_url, json.dumps(a.contact), a.caller_key,
         a.fingerprint, a.received, a.actor, a.sender, appeal_id))
    return appeal_id, seq


def link(cur: psycopg.Cursor[Any], appeal_id: str, *, case_id: str, how: str,
         score: float | None, alert_id: str | None = None,
         work_order_id: str | None = None) -> None:
    cur.execute("UPDATE appeals SET case_id = %s, how = %s, score = %s, alert_id = %s, "
                "work_order_id = %s WHERE id = %s",
                (case_id, how, score, alert_id, work_order_id, appeal_id))


@dataclass(frozen=True, slots=True)
class IncidentRow:
    alert_id: str
    work_order_id: str | None
    zone_id: str
    title: str
    live: bool
    last_live: datetime
    texts: tuple[str, ...]
    callers: frozenset[str]


def incidents(cur: psycopg.Cursor[Any], category: str, since: datetime) -> list[IncidentRow]:
    """Incidents an appeal of ``category`` may join: open ones, and those that ended after
    ``since`` whose work order is not closed (after a verified close, an appeal is news)."""
    cur.execute(
        "SELECT a.id, a.work_order_id, a.zone_id, a.title, a.open_key IS NOT NULL, "
        "       COALESCE(a.cleared, a.updated), "
        "       ARRAY(SELECT description FROM appeals p WHERE p.alert_id = a.id "
        "             ORDER BY received DESC LIMIT 5), "
        "       ARRAY(SELECT DISTINCT caller_key FROM appeals p WHERE p.alert_id = a.id "
        "             AND caller_key IS NOT NULL) "
        "FROM alerts a LEFT JOIN work_orders w ON w.id = a.work_order_id "
        "WHERE a.hazard = %s AND (a.open_key IS NOT NULL OR (COALESCE(a.cleared, a.updated) >= %s "
        "      AND COALESCE(w.state, 'open') <> 'closed')) "
        "ORDER BY a.raised DESC LIMIT 200", (category, since))
    return [IncidentRow(r[0], r[1], r[2], r[3], r[4], r[5], tuple(t for t in r[6] if t),
                        frozenset(r[7])) for r in cur.fetchall()]


@dataclass(frozen=True, slots=True)
class CaseRow:
    case_id: str
    positions: tuple[tuple[float, float], ...]
    last: datetime
    texts: tuple[str, ...]
    callers: frozenset[str]


def cases(cur: psycopg.Cursor[Any], category: str, since: datetime,
          exclude: str) -> list[CaseRow]:
    """Recent cases of ``category`` without an incident, from appeals received since ``since``
    (``exclude``: the appeal being matched)."""
    cur.execute(
        "SELECT case_id, array_agg(lon ORDER BY received), array_agg(lat ORDER BY received), "
        "       max(received), (array_agg(description ORDER BY received DESC))[1:5], "
        "       array_remove(array_agg(DISTINCT caller_key), NULL) "
        "FROM appeals WHERE category = %s AND alert_id IS NULL AND received >= %s "
        "AND id <> %s GROUP BY case_id ORDER BY max(received) DESC LIMIT 500",
        (category, since, exclude))
    return [CaseRow(r[0], tuple(zip(r[1], r[2], strict=True)), r[3],
                    tuple(t for t in r[4] if t), frozenset(r[5])) for r in cur.fetchall()]


def opened_for(cur: psycopg.Cursor[Any], event_id: str, since: datetime
               ) -> tuple[str, str | None] | None:
    """The alert (and its order) the rules raised or corroborated with the appeal's report."""
    cur.execute("SELECT id, work_order_id FROM alerts WHERE updated >= %s AND evidence @> %s "
                "ORDER BY raised DESC LIMIT 1",
                (since, json.dumps([{"event_id": event_id}])))
    row = cur.fetchone()
    return None if row is None else (str(row[0]), row[1])


def prune(conn: psycopg.Connection[Any], cutoff: datetime, batch: int = 5000) -> int:
    """Delete appeals received before ``cutoff`` (with their contact details), in batches."""
    total = 0
    while True:
        n = conn.execute("DELETE FROM appeals WHERE id IN (SELECT id FROM appeals WHERE "
                         "received < %s LIMIT %s)", (cutoff, batch)).rowcount
        total += n
        if n < batch:
            return total


# --- readers -----------------------------------------------------------------------------

PUBLIC_COLUMNS = ("id, source, category, lon, lat, zone_ids, address, place, description, "
                  "media_url, caller_key, received, actor, alert_id, work_order_id, case_id, "
                  "how, score, resubmitted")


def get(conn: psycopg.Connection[Any], appeal_id: str) -> dict[str, Any]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(f"SELECT {PUBLIC_COLUMNS}, contact FROM appeals WHERE id = %s",
                    (appeal_id,))
        row = cur.fetchone()
    if row is None:
        raise NotFound(f"no appeal {appeal_id!r}")
    return row


def group_key(row: dict[str, Any]) -> tuple[str, str]:
    """What an appeal is counted with: its incident, else its case."""
    return ("alert_id", row["alert_id"]) if row["alert_id"] else ("case_id", row["case_id"])


def listing(conn: psycopg.Connection[Any], *, alert_id: str | None = None,
            case_id: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
    conds, args = [], []
    if alert_id is not None:
        conds.append("alert_id = %s")
        args.append(alert_id)
    if case_id is not None:
        conds.append("case_id = %s")
        args.append(case_id)
    where = ("WHERE " + " AND ".join(conds)) if conds else ""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(f"SELECT {PUBLIC_COLUMNS}, contact FROM appeals {where} "
                    "ORDER BY received DESC, id DESC LIMIT %s", [*args, limit])
        return cur.fetchall()


def counts(conn: psycopg.Connection[Any], column: str, value: str) -> tuple[int, int]:
    """(appeals, distinct callers) of an incident (``alert_id``) or case (``case_id``); an
    appeal without a caller key counts as a caller of its own."""
    assert column in ("alert_id", "case_id")
    row = conn.execute(
        f"SELECT count(*), count(DISTINCT COALESCE(caller_key, id)) FROM appeals "
        f"WHERE {column} = %s", (value,)).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def by_incident(conn: psycopg.Connection[Any], alert_ids: Sequence[str]
                ) -> dict[str, dict[str, Any]]:
    """Per alert: appeals, distinct callers and the newest appeal's time."""
    rows = conn.execute(
        "SELECT alert_id, count(*), count(DISTINCT COALESCE(caller_key, id)), max(received) "
        "FROM appeals WHERE alert_id = ANY(%s) GROUP BY alert_id", (list(alert_ids),)).fetchall()
    return {r[0]: {"appeals": int(r[1]), "callers": int(r[2]), "latest": r[3]} for r in rows}


def funnel(conn: psycopg.Connection[Any], start: datetime, end: datetime) -> dict[str, int]:
    """The day's appeals -> problems (incidents and cases) -> work orders."""
    if conn.execute("SELECT to_regclass('appeals')").fetchone() in (None, (None,)):
        return {"appeals": 0, "appeal_callers": 0, "appeal_problems": 0,
                "appeal_incidents": 0, "appeal_orders": 0, "appeal_resubmissions": 0}
    row = conn.execute(
        "SELECT count(*), count(DISTINCT COALESCE(caller_key, id)), "
        "count(DISTINCT COALESCE(alert_id, case_id)), count(DISTINCT alert_id), "
        "count(DISTINCT work_order_id), coalesce(sum(resubmitted), 0) "
        "FROM appeals WHERE received >= %s AND received < %s", (start, end)).fetchone()
    assert row is not None
    return {"appeals": int(row[0]), "appeal_callers": int(row[1]),
            "appeal_problems": int(row[2]), "appeal_incidents": int(row[3]),
            "appeal_orders": int(row[4]), "appeal_resubmissions": int(row[5])}


# --- the facts of a reply -------------------------------------------------------------------

def _metric(hazard: str) -> str | None:
    """The reading that shows the hazard in its zone (the registry's; None: no gauge)."""
    h = registry.get(hazard)
    return None if h is None or h.metric is None or not h.metric.unit.en else h.metric.key


def incident_facts(conn: psycopg.Connection[Any], alert_id: str) -> dict[str, Any] | None:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute("SELECT a.id, a.hazard, a.severity, a.zone_id, a.raised, a.cleared, "
                    "a.open_key IS NOT NULL AS live, a.work_order_id, w.state AS order_state "
                    "FROM alerts a LEFT JOIN work_orders w ON w.id = a.work_order_id "
                    "WHERE a.id = %s", (alert_id,))
        inc = cur.fetchone()
        if inc is None:
            return None
        inc["history"] = []
        inc["check_asked"] = False
        if inc["work_order_id"]:
            cur.execute("SELECT ts, action, to_state, actor, reason FROM work_order_history "
                        "WHERE work_order_id = %s ORDER BY id", (inc["work_order_id"],))
            inc["history"] = cur.fetchall()
            cur.execute("SELECT EXISTS (SELECT 1 FROM dispatches WHERE work_order_id = %s "
                        "AND payload::jsonb ->> 'reason' = 'check')", (inc["work_order_id"],))
            got = cur.fetchone()
            inc["check_asked"] = bool(got and got["exists"])
    return inc


def latest_reading(conn: psycopg.Connection[Any], hazard: str, zone_id: str, now: datetime,
                   fresh: timedelta = timedelta(minutes=30)
                   ) -> tuple[str, float, datetime, str | None] | None:
    """The zone's newest reading of the hazard's metric (the worst of its gauges at that time)
    and which way it moves over about ten minutes: (metric, value, at, trend)."""
    metric = _metric(hazard)
    if metric is None:
        return None
    rows = conn.execute(
        "SELECT t.device_id, t.ts, (t.\"values\" ->> %(m)s)::double precision FROM telemetry t "
        "WHERE t.device_id IN (SELECT id FROM devices WHERE %(z)s = ANY(zone_ids)) "
        "AND t.ts >= %(since)s AND t.ts <= %(now)s AND t.\"values\" ? %(m)s "
        "ORDER BY t.ts DESC LIMIT 400",
        {"m": metric, "z": zone_id, "since": now - fresh, "now": now}).fetchall()
    if not rows:
        return None
    worst = max if metric == "water_depth_cm" else min
    newest_at = rows[0][1]
    per_device: dict[str, float] = {}
    for dev, ts, v in rows:
        if newest_at - ts <= timedelta(minutes=1) and dev not in per_device:
            per_device[dev] = v
    value = worst(per_device.values())
    before = [v for _d, ts, v in rows if timedelta(minutes=8) <= newest_at - ts
              <= timedelta(minutes=15)]
    trend = None
    if before:
        earlier = worst(before)
        trend = "rising" if value - earlier > 1.0 else "falling" if earlier - value > 1.0 \
            else "steady"
    return metric, float(value), newest_at, trend
