"""Alerts, work orders, their history and the outbox in PostgreSQL.

``apply_changes`` runs inside the caller's transaction, the same one that stored the readings which
caused the changes: either the readings, the alerts, the work orders and the dispatches to send are
all committed, or none is, so a crash anywhere loses nothing and duplicates nothing.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from alerts.lifecycle import NotFound, next_alert_state, next_work_order_state
from alerts.policy import INSTRUCTIONS, deadlines, should_dispatch
from geo.zones import Zone
from rules.base import AlertChange
from rules.levels import Level

log = logging.getLogger(__name__)

SCHEMA = """
CREATE SEQUENCE IF NOT EXISTS alert_seq;
CREATE SEQUENCE IF NOT EXISTS work_order_seq;
CREATE TABLE IF NOT EXISTS alerts (
    id text PRIMARY KEY,
    hazard text NOT NULL,
    severity int NOT NULL CHECK (severity BETWEEN 1 AND 4),
    state text NOT NULL,
    zone_id text NOT NULL,
    raised timestamptz NOT NULL,
    updated timestamptz NOT NULL,
    cleared timestamptz,
    title text NOT NULL,
    evidence jsonb NOT NULL DEFAULT '[]',
    work_order_id text,
    -- 'zone|hazard' while the rule still sees the hazard; the unique index makes a second open
    -- alert for the same zone and hazard impossible, whatever happens around a restart.
    open_key text
);
CREATE UNIQUE INDEX IF NOT EXISTS alerts_open_key ON alerts (open_key);
CREATE INDEX IF NOT EXISTS alerts_raised ON alerts (raised DESC);
CREATE TABLE IF NOT EXISTS work_orders (
    id text PRIMARY KEY,
    alert_ids text[] NOT NULL,
    hazard text NOT NULL,
    severity int NOT NULL,
    zone_id text NOT NULL,
    department text NOT NULL,
    team_id text,
    state text NOT NULL,
    created timestamptz NOT NULL,
    updated timestamptz NOT NULL,
    respond_by timestamptz NOT NULL,
    resolve_by timestamptz NOT NULL,
    duplicates int NOT NULL DEFAULT 0,
    title text NOT NULL
);
CREATE INDEX IF NOT EXISTS work_orders_created ON work_orders (created DESC);
CREATE TABLE IF NOT EXISTS work_order_history (
    id bigserial PRIMARY KEY,
    work_order_id text NOT NULL REFERENCES work_orders (id),
    ts timestamptz NOT NULL,
    from_state text,
    to_state text NOT NULL,
    actor text NOT NULL,
    reason text NOT NULL
);
CREATE INDEX IF NOT EXISTS work_order_history_order ON work_order_history (work_order_id, id);
CREATE TABLE IF NOT EXISTS outbox (
    id bigserial PRIMARY KEY,
    topic text NOT NULL,
    payload text NOT NULL,
    qos int NOT NULL DEFAULT 1,
    retain boolean NOT NULL DEFAULT false,
    created timestamptz NOT NULL DEFAULT now(),
    sent timestamptz
);
CREATE INDEX IF NOT EXISTS outbox_unsent ON outbox (id) WHERE sent IS NULL;
"""


def migrate(conn: psycopg.Connection[Any]) -> None:
    with conn.transaction():
        conn.execute(SCHEMA)


@dataclass(frozen=True, slots=True)
class Route:
    department: str
    team_id: str | None


@dataclass(frozen=True, slots=True)
class Applied:
    """What one batch of changes did, for metrics and the live view."""

    alerts_opened: int = 0
    alerts_updated: int = 0
    alerts_cleared: int = 0
    orders_opened: int = 0
    dispatches: int = 0


def _iso(ts: datetime) -> str:
    return ts.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _json(obj: Any) -> str:
    return json.dumps(obj, default=str, separators=(",", ":"), allow_nan=False)


class AlertStore:
    """Applies rule changes. ``route`` maps (hazard, zone) to a department and team."""

    def __init__(self, zones: Mapping[str, Zone], route: Any) -> None:
        self._zones = zones
        self._route = route

    def apply_changes(self, cur: psycopg.Cursor[Any], changes: Iterable[AlertChange]) -> Applied:
        opened = updated = cleared = orders = dispatches = 0
        touched_zones: dict[str, datetime] = {}
        for ch in changes:
            key = f"{ch.zone_id}|{ch.hazard}"
            cur.execute(
                "SELECT id, severity, work_order_id FROM alerts WHERE open_key = %s FOR UPDATE",
                (key,),
            )
            row = cur.fetchone()
            evidence = [dict(e) for e in ch.evidence]
            if ch.level is None:
                if row is not None:
                    cur.execute(
                        "UPDATE alerts SET state = 'resolved', cleared = %s, updated = %s, "
                        "open_key = NULL, evidence = evidence || %s::jsonb WHERE id = %s",
                        (ch.ts, ch.ts, _json(evidence), row[0]),
                    )
                    cleared += 1
                    touched_zones[ch.zone_id] = ch.ts
                continue
            if row is None:
                dispatches += self._open(cur, ch, key, evidence)
                opened += 1
                orders += 1
            else:
                alert_id, old_sev, order_id = row
                if old_sev == int(ch.level):
                    continue
                cur.execute(
                    "UPDATE alerts SET severity = %s, title = %s, updated = %s, "
                    "evidence = evidence || %s::jsonb WHERE id = %s",
                    (int(ch.level), ch.title, ch.ts, _json(evidence), alert_id),
                )
                updated += 1
                if order_id is not None:
                    dispatches += self._escalate_order(cur, order_id, Level(old_sev), ch)
            touched_zones[ch.zone_id] = ch.ts
        for zone_id, ts in touched_zones.items():
            queue_zone_state(cur, zone_id, ts)
        return Applied(opened, updated, cleared, orders, dispatches)

    def _open(self, cur: psycopg.Cursor[Any], ch: AlertChange, key: str,
              evidence: list[dict[str, Any]]) -> int:
        assert ch.level is not None
        zone = self._zones.get(ch.zone_id)
        route: Route = self._route(ch.hazard, zone.type if zone else "")
        cur.execute("SELECT 'AL-' || lpad(nextval('alert_seq')::text, 6, '0'), "
                    "'WO-' || lpad(nextval('work_order_seq')::text, 6, '0')")
        ids = cur.fetchone()
        assert ids is not None
        alert_id, order_id = ids
        respond_by, resolve_by = deadlines(ch.level, ch.ts)
        cur.execute(
            "INSERT INTO alerts (id, hazard, severity, state, zone_id, raised, updated, title, "
            "evidence, work_order_id, open_key) VALUES (%s,%s,%s,'active',%s,%s,%s,%s,%s,%s,%s)",
            (alert_id, ch.hazard, int(ch.level), ch.zone_id, ch.ts, ch.ts, ch.title,
             _json(evidence), order_id, key),
        )
        cur.execute(
            "INSERT INTO work_orders (id, alert_ids, hazard, severity, zone_id, department, "
            "team_id, state, created, updated, respond_by, resolve_by, title) "
            "VALUES (%s,%s,%s,%s,%s,%s,%s,'open',%s,%s,%s,%s,%s)",
            (order_id, [alert_id], ch.hazard, int(ch.level), ch.zone_id, route.department,
             route.team_id, ch.ts, ch.ts, respond_by, resolve_by, ch.title),
        )
        reason = f"opened for alert {alert_id}; routed to {route.department}"
        self._history(cur, order_id, ch.ts, None, "open", "system", reason)
        if route.team_id is None:
            log.warning("no team for %s in zone %s: work order %s is not dispatched",
                        ch.hazard, ch.zone_id, order_id)
            return 0
        self._dispatch(cur, order_id, route.team_id, ch, zone, respond_by)
        return 1

    def _escalate_order(self, cur: psycopg.Cursor[Any], order_id: str, old: Level,
                        ch: AlertChange) -> int:
        assert ch.level is not None
        cur.execute("SELECT team_id, state, created FROM work_orders WHERE id = %s FOR UPDATE",
                    (order_id,))
        row = cur.fetchone()
        if row is None:
            return 0
        team_id, state, created = row
        worse = should_dispatch(old, ch.level)
        if worse:
            # Deadlines tighten when the level rises; they never relax when it falls.
            respond_by, resolve_by = deadlines(ch.level, created)
            cur.execute("UPDATE work_orders SET severity = %s, updated = %s, "
                        "respond_by = LEAST(respond_by, %s), resolve_by = LEAST(resolve_by, %s) "
                        "WHERE id = %s",
                        (int(ch.level), ch.ts, respond_by, resolve_by, order_id))
        else:
            cur.execute("UPDATE work_orders SET severity = %s, updated = %s WHERE id = %s",
                        (int(ch.level), ch.ts, order_id))
        self._history(cur, order_id, ch.ts, state, state, "system",
                      f"severity {old.colour} -> {ch.level.colour}")
        if not worse or team_id is None or state == "closed":
            return 0
        cur.execute("SELECT respond_by FROM work_orders WHERE id = %s", (order_id,))
        rb = cur.fetchone()
        assert rb is not None
        self._dispatch(cur, order_id, team_id, ch, self._zones.get(ch.zone_id), rb[0])
        return 1

    def _dispatch(self, cur: psycopg.Cursor[Any], order_id: str, team_id: str, ch: AlertChange,
                  zone: Zone | None, respond_by: datetime) -> None:
        assert ch.level is not None
        loc = None
        if zone is not None:
            c = zone.geometry.representative_point()
            loc = [round(c.x, 6), round(c.y, 6)]
        payload = {
            "work_order_id": order_id, "hazard": ch.hazard, "severity": int(ch.level),
            "zone_id": ch.zone_id, "loc": loc, "title": ch.title,
            "instructions": INSTRUCTIONS.get(ch.hazard, "Check on site."),
            "issued": _iso(ch.ts), "respond_by": _iso(respond_by),
        }
        cur.execute("INSERT INTO outbox (topic, payload, qos, retain) VALUES (%s, %s, 1, false)",
                    (f"city/dispatch/{team_id}", _json(payload)))

    @staticmethod
    def _history(cur: psycopg.Cursor[Any], order_id: str, ts: datetime, from_state: str | None,
                 to_state: str, actor: str, reason: str) -> None:
        cur.execute("INSERT INTO work_order_history (work_order_id, ts, from_state, to_state, "
                    "actor, reason) VALUES (%s,%s,%s,%s,%s,%s)",
                    (order_id, ts, from_state, to_state, actor, reason))


def queue_zone_state(cur: psycopg.Cursor[Any], zone_id: str, ts: datetime) -> None:
    """Queue the zone's retained state (CONTRACT section 2) from its open alerts."""
    cur.execute("SELECT hazard, severity FROM alerts WHERE zone_id = %s AND open_key IS NOT "
                "NULL ORDER BY hazard", (zone_id,))
    hazards = dict(cur.fetchall())
    payload = {"zone_id": zone_id, "hazards": hazards, "ts": _iso(ts)}
    cur.execute("INSERT INTO outbox (topic, payload, qos, retain) VALUES (%s, %s, 1, true)",
                (f"city/alerts/{zone_id}", _json(payload)))


# --- readers and operator actions (used by the API and at start) ---------------------------


def open_levels(conn: psycopg.Connection[Any]) -> dict[tuple[str, str], Level]:
    """The levels the rules saw when we stopped, so a restart resumes instead of re-alerting."""
    rows = conn.execute("SELECT zone_id, hazard, severity FROM alerts WHERE open_key IS NOT NULL")
    return {(z, h): Level(s) for z, h, s in rows.fetchall()}


def zone_levels(conn: psycopg.Connection[Any]) -> dict[str, int]:
    rows = conn.execute("SELECT zone_id, min(severity) FROM alerts WHERE state <> 'resolved' "
                        "GROUP BY zone_id")
    return dict(rows.fetchall())


ALERT_COLUMNS = ("id, hazard, severity, state, zone_id, raised, updated, cleared, title, "
                 "evidence, work_order_id")


def _alert_json(row: Mapping[str, Any], with_evidence: bool) -> dict[str, Any]:
    out = {k: row[k] for k in ("id", "hazard", "severity", "state", "zone_id", "title",
                               "work_order_id")}
    for k in ("raised", "updated", "cleared"):
        out[k] = _iso(row[k]) if row[k] is not None else None
    ev = row["evidence"] or []
    out["evidence"] = ev if with_evidence else ev[-3:]
    return out


def list_alerts(conn: psycopg.Connection[Any], state: str | None = None,
                hazard: str | None = None, zone_id: str | None = None,
                limit: int = 500) -> list[dict[str, Any]]:
    where, args = _filters({"state": state, "hazard": hazard, "zone_id": zone_id})
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(f"SELECT {ALERT_COLUMNS} FROM alerts {where} ORDER BY raised DESC, id DESC "
                    "LIMIT %s", [*args, limit])
        return [_alert_json(r, with_evidence=False) for r in cur.fetchall()]


def get_alert(conn: psycopg.Connection[Any], alert_id: str) -> dict[str, Any]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(f"SELECT {ALERT_COLUMNS} FROM alerts WHERE id = %s", (alert_id,))
        row = cur.fetchone()
    if row is None:
        raise NotFound(f"no alert {alert_id!r}")
    return _alert_json(row, with_evidence=True)


def act_on_alert(conn: psycopg.Connection[Any], alert_id: str, action: str,
                 now: datetime) -> dict[str, Any]:
    with conn.transaction(), conn.cursor() as cur:
        cur.execute("SELECT state, zone_id FROM alerts WHERE id = %s FOR UPDATE", (alert_id,))
        row = cur.fetchone()
        if row is None:
            raise NotFound(f"no alert {alert_id!r}")
        new_state = next_alert_state(alert_id, row[0], action)
        # An operator's resolve closes the alert; if the sensors still see the hazard the rule
        # will open a new one on its next change, which is the honest outcome.
        cur.execute("UPDATE alerts SET state = %s, updated = %s, "
                    "open_key = CASE WHEN %s = 'resolved' THEN NULL ELSE open_key END "
                    "WHERE id = %s", (new_state, now, new_state, alert_id))
        if new_state == "resolved":
            queue_zone_state(cur, row[1], now)
    return get_alert(conn, alert_id)


ORDER_COLUMNS = ("id, alert_ids, hazard, severity, zone_id, department, team_id, state, created, "
                 "respond_by, resolve_by, duplicates, title")


def _order_json(row: Mapping[str, Any], history: Sequence[Mapping[str, Any]] | None
                ) -> dict[str, Any]:
    out = {k: row[k] for k in ("id", "alert_ids", "hazard", "severity", "zone_id", "department",
                               "team_id", "state", "duplicates", "title")}
    for k in ("created", "respond_by", "resolve_by"):
        out[k] = _iso(row[k])
    if history is not None:
        out["history"] = [{"ts": _iso(h["ts"]), "from": h["from_state"], "to": h["to_state"],
                           "actor": h["actor"], "reason": h["reason"]} for h in history]
    return out


def list_work_orders(conn: psycopg.Connection[Any], state: str | None = None,
                     department: str | None = None, zone_id: str | None = None,
                     limit: int = 500) -> list[dict[str, Any]]:
    where, args = _filters({"state": state, "department": department, "zone_id": zone_id})
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(f"SELECT {ORDER_COLUMNS} FROM work_orders {where} "
                    "ORDER BY created DESC, id DESC LIMIT %s", [*args, limit])
        rows = cur.fetchall()
        ids = [r["id"] for r in rows]
        cur.execute("SELECT * FROM work_order_history WHERE work_order_id = ANY(%s) ORDER BY id",
                    (ids,))
        hist: dict[str, list[dict[str, Any]]] = {}
        for h in cur.fetchall():
            hist.setdefault(h["work_order_id"], []).append(h)
    return [_order_json(r, hist.get(r["id"], [])) for r in rows]


def get_work_order(conn: psycopg.Connection[Any], order_id: str) -> dict[str, Any]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(f"SELECT {ORDER_COLUMNS} FROM work_orders WHERE id = %s", (order_id,))
        row = cur.fetchone()
        if row is None:
            raise NotFound(f"no work order {order_id!r}")
        cur.execute("SELECT * FROM work_order_history WHERE work_order_id = %s ORDER BY id",
                    (order_id,))
        return _order_json(row, cur.fetchall())


def act_on_work_order(conn: psycopg.Connection[Any], order_id: str, action: str, now: datetime,
                      actor: str, reason: str, team_id: str | None = None) -> dict[str, Any]:
    with conn.transaction(), conn.cursor() as cur:
        cur.execute("SELECT state FROM work_orders WHERE id = %s FOR UPDATE", (order_id,))
        row = cur.fetchone()
        if row is None:
            raise NotFound(f"no work order {order_id!r}")
        new_state = next_work_order_state(order_id, row[0], action)
        cur.execute("UPDATE work_orders SET state = %s, updated = %s, "
                    "team_id = COALESCE(%s, team_id) WHERE id = %s",
                    (new_state, now, team_id, order_id))
        AlertStore._history(cur, order_id, now, row[0], new_state, actor,
                            reason or f"{action} by {actor}")
    return get_work_order(conn, order_id)


def _filters(pairs: Mapping[str, str | None]) -> tuple[str, list[Any]]:
    conds, args = [], []
    for col, val in pairs.items():
        if val is not None:
            conds.append(f"{col} = %s")  # column names come from this module, never the caller
            args.append(val)
    return ("WHERE " + " AND ".join(conds)) if conds else "", args


def counts(conn: psycopg.Connection[Any]) -> dict[str, int]:
    row = conn.execute(
        "SELECT (SELECT count(*) FROM alerts), "
        "(SELECT count(*) FROM alerts WHERE state <> 'resolved'), "
        "(SELECT count(*) FROM work_orders), "
        "(SELECT count(*) FROM work_orders WHERE state NOT IN ('resolved', 'closed')), "
        "(SELECT count(*) FROM outbox WHERE sent IS NULL)").fetchone()
    assert row is not None
    return {"alerts": row[0], "alerts_open": row[1], "work_orders": row[2],
            "work_orders_open": row[3], "outbox_pending": row[4]}
