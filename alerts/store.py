"""Alerts, work orders, their history and the outbox in PostgreSQL.

``apply_changes`` runs inside the caller's transaction, the same one that stored the readings which
caused the changes: either the readings, the alerts, the work orders and the dispatches to send are
all committed, or none is, so a crash anywhere loses nothing and duplicates nothing.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

import psycopg
from psycopg.rows import dict_row

from alerts.lifecycle import (
    ALERT_START,
    OPERATOR_ALERT_ACTIONS,
    OPERATOR_WORK_ORDER_ACTIONS,
    WORK_ORDER_START,
    WORK_ORDER_TRANSITIONS,
    AlertsError,
    NotFound,
    can_move,
    next_alert_state,
    next_work_order_state,
)
from alerts.policy import (
    INSTRUCTIONS,
    SENSOR_BACKED,
    Office,
    Policy,
    cap_evidence,
    escalation_target,
    should_dispatch,
)
from geo.zones import Zone
from rules.base import AlertChange
from rules.levels import Level
from sensing.times import iso_utc

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
ALTER TABLE alerts ADD COLUMN IF NOT EXISTS duplicates int NOT NULL DEFAULT 0;
ALTER TABLE work_orders ADD COLUMN IF NOT EXISTS escalation_level text;
ALTER TABLE work_orders ADD COLUMN IF NOT EXISTS flags text[] NOT NULL DEFAULT '{}';
ALTER TABLE work_orders ADD COLUMN IF NOT EXISTS reopened int NOT NULL DEFAULT 0;
-- A dispatch stays here until the team answers; unanswered ones are resent, then escalated.
CREATE INDEX IF NOT EXISTS alerts_updated ON alerts (updated);
CREATE INDEX IF NOT EXISTS work_orders_updated ON work_orders (updated);
CREATE TABLE IF NOT EXISTS dispatches (
    id bigserial PRIMARY KEY,
    work_order_id text NOT NULL REFERENCES work_orders (id),
    team_id text NOT NULL,
    payload text NOT NULL,
    first_sent timestamptz NOT NULL,
    last_sent timestamptz NOT NULL,
    attempts int NOT NULL DEFAULT 1,
    acked timestamptz,
    ack_status text
);
CREATE UNIQUE INDEX IF NOT EXISTS dispatches_unanswered ON dispatches (work_order_id, team_id)
    WHERE acked IS NULL;
-- Evidence is capped per alert (Policy.evidence_keep_*): what was dropped from the middle is
-- counted here. History names the table action of each state change (NULL for a note); a
-- repetitive system note beyond the cap is counted in work_orders.repeats and folded into one
-- summary line, the row with ``folded`` set.
ALTER TABLE alerts ADD COLUMN IF NOT EXISTS evidence_dropped int NOT NULL DEFAULT 0;
ALTER TABLE work_order_history ADD COLUMN IF NOT EXISTS action text;
ALTER TABLE work_order_history ADD COLUMN IF NOT EXISTS folded int;
ALTER TABLE work_orders ADD COLUMN IF NOT EXISTS repeats int NOT NULL DEFAULT 0;
-- For the retention job (alerts.retention): sent rows by age.
CREATE INDEX IF NOT EXISTS outbox_sent ON outbox (sent) WHERE sent IS NOT NULL;
-- Operators' actions on alerts, as work_order_history holds those on orders. No foreign key: the
-- record of who did what outlives the alert.
CREATE TABLE IF NOT EXISTS alert_history (
    id bigserial PRIMARY KEY,
    alert_id text NOT NULL,
    ts timestamptz NOT NULL,
    from_state text,
    to_state text NOT NULL,
    actor text NOT NULL,
    reason text NOT NULL
);
CREATE INDEX IF NOT EXISTS alert_history_alert ON alert_history (alert_id, id);
-- Audit rows are not rewritten, by us or by anything with our database role: alert_history is
-- append-only; work_order_history refuses updates (its system notes may be pruned).
CREATE OR REPLACE FUNCTION citywatch_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is an audit record: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE OR REPLACE TRIGGER alert_history_append_only BEFORE UPDATE OR DELETE ON alert_history
    FOR EACH ROW EXECUTE FUNCTION citywatch_refuse_change();
CREATE OR REPLACE TRIGGER work_order_history_no_update BEFORE UPDATE ON work_order_history
    FOR EACH ROW EXECUTE FUNCTION citywatch_refuse_change();
"""


def migrate(conn: psycopg.Connection[Any]) -> None:
    with conn.transaction():
        conn.execute(SCHEMA)


@dataclass(frozen=True, slots=True)
class Route:
    department: str
    team_id: str | None


@dataclass
class Applied:
    """What one batch of changes or checks did, for metrics and the live view."""

    alerts_opened: int = 0
    alerts_updated: int = 0
    alerts_cleared: int = 0
    alerts_reactivated: int = 0
    orders_opened: int = 0
    orders_reopened: int = 0
    dispatches: int = 0
    dispatches_suppressed: int = 0
    redispatches: int = 0
    escalations: int = 0
    acks: int = 0
    reports_merged: int = 0
    by_hazard: Counter[tuple[str, str]] = field(default_factory=Counter)

    @property
    def changed(self) -> bool:
        return any((self.alerts_opened, self.alerts_updated, self.alerts_cleared,
                    self.alerts_reactivated, self.orders_reopened, self.dispatches,
                    self.redispatches, self.escalations, self.acks, self.reports_merged))


class AckLike(Protocol):
    @property
    def team_id(self) -> str: ...
    @property
    def work_order_id(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def note(self) -> str: ...


class NotVerified(AlertsError):
    """The sensors still show the hazard: a close or resolve is refused, with the evidence."""

    def __init__(self, message: str, evidence: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.evidence = evidence


class AckRefused(AlertsError):
    """A team's answer that cannot be applied; it goes to the dead-letter topic with this reason."""


def _iso(ts: datetime) -> str:
    return iso_utc(ts)


def _json(obj: Any) -> str:
    return json.dumps(obj, default=str, separators=(",", ":"), allow_nan=False)


# --- the one way a state changes ------------------------------------------------------------
# ``move_alert`` and ``move_work_order`` are the only writers of ``state`` once a row exists
# (tests/unit/test_state_writes.py scans this package for any other): the transition table
# decides, and the order's history records the action.

_ASSIGNS_STATE = re.compile(r"(^|,|\bSET)\s*state\s*=", re.IGNORECASE)


def _check_extra(extra: str) -> None:
    if _ASSIGNS_STATE.search(extra):
        raise AlertsError(f"a move's extra assignments may not set the state: {extra!r}")


def move_alert(cur: psycopg.Cursor[Any], alert_id: str, state: str, action: str, ts: datetime,
               extra: str = "", params: Mapping[str, Any] | None = None) -> str:
    """Move an alert by ``action`` from ``state`` (read by the caller under FOR UPDATE), writing
    ``updated`` and ``extra`` (``", column = %(name)s ..."`` with ``params``) with it."""
    new_state = next_alert_state(alert_id, state, action)
    _check_extra(extra)
    cur.execute("UPDATE alerts SET state = %(to)s, updated = %(ts)s" + extra
                + " WHERE id = %(id)s AND state = %(from)s",
                {**(params or {}), "to": new_state, "ts": ts, "id": alert_id, "from": state})
    if cur.rowcount != 1:
        raise AlertsError(f"alert {alert_id} is not {state!r} any more: {action} not applied")
    return new_state


def move_work_order(cur: psycopg.Cursor[Any], order_id: str, state: str, action: str,
                    ts: datetime, actor: str, reason: str, extra: str = "",
                    params: Mapping[str, Any] | None = None) -> str:
    """Move a work order by ``action`` from ``state`` (read by the caller under FOR UPDATE),
    writing ``updated`` and ``extra`` as ``move_alert`` does, and the history line."""
    new_state = next_work_order_state(order_id, state, action)
    _check_extra(extra)
    cur.execute("UPDATE work_orders SET state = %(to)s, updated = %(ts)s" + extra
                + " WHERE id = %(id)s AND state = %(from)s",
                {**(params or {}), "to": new_state, "ts": ts, "id": order_id, "from": state})
    if cur.rowcount != 1:
        raise AlertsError(f"work order {order_id} is not {state!r} any more: {action} not "
                          "applied")
    _history(cur, order_id, ts, state, new_state, actor, reason, action)
    return new_state


def _note(cur: psycopg.Cursor[Any], order_id: str, ts: datetime, state: str, actor: str,
          reason: str) -> None:
    """A history line that changes no state."""
    _history(cur, order_id, ts, state, state, actor, reason, None)


def _history(cur: psycopg.Cursor[Any], order_id: str, ts: datetime, from_state: str | None,
             to_state: str, actor: str, reason: str, action: str | None,
             folded: int | None = None) -> None:
    cur.execute("INSERT INTO work_order_history (work_order_id, ts, from_state, to_state, "
                "actor, reason, action, folded) VALUES (%s,%s,%s,%s,%s,%s,%s,%s)",
                (order_id, ts, from_state, to_state, actor, reason, action, folded))


# Appends ``%(ev)s`` (a JSON array) to an alert's evidence, keeping the first and the newest
# entries (``cap_evidence`` in SQL, so the row is never read back) and counting the rest.
_APPEND_EVIDENCE = (
    ", evidence = CASE WHEN jsonb_array_length(evidence || %(ev)s::jsonb) <= %(ev_cap)s "
    "THEN evidence || %(ev)s::jsonb "
    "ELSE jsonb_path_query_array(evidence || %(ev)s::jsonb, %(ev_head)s::jsonpath) "
    "|| jsonb_path_query_array(evidence || %(ev)s::jsonb, %(ev_tail)s::jsonpath) END, "
    "evidence_dropped = evidence_dropped "
    "+ GREATEST(jsonb_array_length(evidence || %(ev)s::jsonb) - %(ev_cap)s, 0)")


class AlertStore:
    """Applies rule changes, team answers and deadlines inside the caller's transaction.

    One incident per (zone, hazard): a hazard that comes back within the reopen window
    reactivates its alert and reopens its work order instead of opening new ones, so a flapping
    zone is one line for the operator and one order for the team.
    """

    def __init__(self, zones: Mapping[str, Zone], route: Callable[[str, str, Level], Route],
                 policy: Policy | None = None, offices: Sequence[Office] = (),
                 nearest_worker: Callable[[float, float], tuple[str, float] | None] | None = None,
                 ) -> None:
        self._zones = zones
        self._route = route
        self.policy = policy or Policy()
        self._offices = tuple(offices)
        self._office_level = {o.id: o.level for o in offices}
        # (lon, lat) -> (grid worker id, metres away) of the nearest worker on patrol
        self._nearest_worker = nearest_worker

    # --- grid reports -------------------------------------------------------------------
    def attach_report(self, cur: psycopg.Cursor[Any], hazard: str, zone_ids: Sequence[str],
                      report: Mapping[str, Any], ts: datetime) -> str | None:
        """A grid worker's report of a hazard that already has an open incident in one of its
        zones is merged into it (counted in ``duplicates``), not opened again. Returns the
        work order it joined, or None when nothing open matched."""
        if not zone_ids:
            return None
        cur.execute("SELECT id, work_order_id FROM alerts WHERE hazard = %s AND zone_id = ANY(%s) "
                    "AND open_key IS NOT NULL ORDER BY severity, raised LIMIT 1 FOR UPDATE",
                    (hazard, list(zone_ids)))
        row = cur.fetchone()
        if row is None:
            return None
        alert_id, order_id = row
        self._update_alert(cur, alert_id, ts, [{"grid_report": dict(report)}],
                           ", duplicates = duplicates + 1")
        if order_id is not None:
            cur.execute("UPDATE work_orders SET duplicates = duplicates + 1, updated = %s "
                        "WHERE id = %s RETURNING state", (ts, order_id))
            got = cur.fetchone()
            if got is not None:
                self._repeat(cur, order_id, ts, got[0], f"grid {report.get('device_id', '?')}",
                             "report merged as a duplicate: "
                             f"{str(report.get('text', ''))[:200]}")
        return str(order_id) if order_id else alert_id

    def merge_appeal(self, cur: psycopg.Cursor[Any], alert_id: str,
                     evidence: Mapping[str, Any], ts: datetime, actor: str,
                     reason: str) -> str | None:
        """A resident's appeal about this incident (``alerts.appeal_desk``): kept as evidence
        and counted in ``duplicates`` of the alert and its order, as a merged grid report is.
        Returns the work order."""
        cur.execute("SELECT work_order_id FROM alerts WHERE id = %s FOR UPDATE", (alert_id,))
        row = cur.fetchone()
        if row is None:
            raise NotFound(f"no alert {alert_id!r}")
        self._update_alert(cur, alert_id, ts, [evidence], ", duplicates = duplicates + 1")
        order_id = row[0]
        if order_id is not None:
            cur.execute("UPDATE work_orders SET duplicates = duplicates + 1, updated = %s "
                        "WHERE id = %s RETURNING state", (ts, order_id))
            got = cur.fetchone()
            if got is not None:
                self._repeat(cur, order_id, ts, got[0], actor, reason)
        return None if order_id is None else str(order_id)

    # --- rule changes -------------------------------------------------------------------
    def apply_changes(self, cur: psycopg.Cursor[Any], changes: Iterable[AlertChange],
                      now: datetime | None = None) -> Applied:
        """``now`` is the server's time: a team can answer only from when it is told, so the
        deadlines of orders opened or raised for a backlog (readings judged in their own, earlier
        time) count from ``now``, not from the readings' time."""
        out = Applied()
        touched_zones: dict[str, datetime] = {}
        for ch in changes:
            key = f"{ch.zone_id}|{ch.hazard}"
            cur.execute("SELECT id, severity, work_order_id, state FROM alerts "
                        "WHERE open_key = %s FOR UPDATE", (key,))
            row = cur.fetchone()
            evidence = [dict(e) for e in ch.evidence]
            if ch.level is None:
                if row is not None:
                    move_alert(cur, row[0], row[3], "clear", ch.ts,
                               ", cleared = %(ts)s, open_key = NULL" + _APPEND_EVIDENCE,
                               self._evidence(evidence))
                    out.alerts_cleared += 1
                    out.by_hazard[ch.hazard, "cleared"] += 1
                    touched_zones[ch.zone_id] = ch.ts
                continue
            start = ch.ts if now is None else max(ch.ts, now)  # deadlines count from here
            if row is None:
                if not self._reactivate(cur, ch, key, evidence, out, start):
                    self._open(cur, ch, key, evidence, out, start)
            else:
                alert_id, old_sev, order_id, _state = row
                if old_sev == int(ch.level):
                    if evidence:  # corroboration (a grid report, a second camera): keep it
                        self._update_alert(cur, alert_id, ch.ts, evidence)
                    continue
                self._update_alert(cur, alert_id, ch.ts, evidence,
                                   ", severity = %(severity)s, title = %(title)s",
                                   {"severity": int(ch.level), "title": ch.title})
                out.alerts_updated += 1
                out.by_hazard[ch.hazard, "updated"] += 1
                if order_id is not None:
                    self._order_level_changed(cur, order_id, ch, out, start)
            touched_zones[ch.zone_id] = ch.ts
        for zone_id, ts in touched_zones.items():
            queue_zone_state(cur, zone_id, ts)
        return out

    def _reactivate(self, cur: psycopg.Cursor[Any], ch: AlertChange, key: str,
                    evidence: list[dict[str, Any]], out: Applied, start: datetime) -> bool:
        """The same hazard back soon after it ended: the same incident, not a new one."""
        assert ch.level is not None
        cutoff = ch.ts - self.policy.reopen_window
        cur.execute(
            "SELECT id, work_order_id, state FROM alerts WHERE zone_id = %s AND hazard = %s "
            "AND open_key IS NULL AND state = 'resolved' AND COALESCE(cleared, updated) >= %s "
            "ORDER BY COALESCE(cleared, updated) DESC LIMIT 1 FOR UPDATE",
            (ch.zone_id, ch.hazard, cutoff))
        row = cur.fetchone()
        if row is None:
            return False
        alert_id, order_id, alert_state = row
        move_alert(cur, alert_id, alert_state, "reactivate", ch.ts,
                   ", open_key = %(key)s, cleared = NULL, severity = %(severity)s, "
                   "title = %(title)s, duplicates = duplicates + 1" + _APPEND_EVIDENCE,
                   {"key": key, "severity": int(ch.level), "title": ch.title,
                    **self._evidence(evidence)})
        out.alerts_reactivated += 1
        out.by_hazard[ch.hazard, "reactivated"] += 1
        if order_id is None:
            return True
        cur.execute("SELECT state, severity, team_id FROM work_orders WHERE id = %s FOR UPDATE",
                    (order_id,))
        order = cur.fetchone()
        if order is None:
            return True
        state, severity, team_id = order
        cur.execute("UPDATE work_orders SET duplicates = duplicates + 1, updated = %s "
                    "WHERE id = %s", (ch.ts, order_id))
        if can_move(WORK_ORDER_TRANSITIONS, state, "reopen"):
            respond_by, resolve_by = self.policy.deadlines(ch.level, start)
            move_work_order(cur, order_id, state, "reopen", ch.ts, "system",
                            f"reopened: {ch.hazard} came back at {ch.zone_id} within "
                            f"{_minutes(self.policy.reopen_window)} of clearing ({ch.title})",
                            ", severity = %(severity)s, respond_by = %(respond_by)s, "
                            "resolve_by = %(resolve_by)s, reopened = reopened + 1",
                            {"severity": int(ch.level), "respond_by": respond_by,
                             "resolve_by": resolve_by})
            out.orders_reopened += 1
            if team_id is not None:
                self._dispatch(cur, order_id, team_id, ch, respond_by, "reopened")
                out.dispatches += 1
        elif should_dispatch(Level(severity), ch.level):
            self._order_level_changed(cur, order_id, ch, out, start)
        else:
            self._repeat(cur, order_id, ch.ts, state, "system",
                         f"{ch.hazard} back at {ch.zone_id}; counted as a duplicate")
            out.dispatches_suppressed += 1
        return True

    def _open(self, cur: psycopg.Cursor[Any], ch: AlertChange, key: str,
              evidence: list[dict[str, Any]], out: Applied, start: datetime) -> None:
        assert ch.level is not None
        zone = self._zones.get(ch.zone_id)
        route = self._route(ch.hazard, zone.type if zone else "", ch.level)
        cur.execute("SELECT 'AL-' || lpad(nextval('alert_seq')::text, 6, '0'), "
                    "'WO-' || lpad(nextval('work_order_seq')::text, 6, '0')")
        ids = cur.fetchone()
        assert ids is not None
        alert_id, order_id = ids
        respond_by, resolve_by = self.policy.deadlines(ch.level, start)
        kept, dropped = cap_evidence(evidence, self.policy.evidence_keep_first,
                                     self.policy.evidence_keep_last)
        cur.execute(
            "INSERT INTO alerts (id, hazard, severity, state, zone_id, raised, updated, title, "
            "evidence, evidence_dropped, work_order_id, open_key) "
            "VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)",
            (alert_id, ch.hazard, int(ch.level), ALERT_START, ch.zone_id, ch.ts, ch.ts, ch.title,
             _json(kept), dropped, order_id, key))
        cur.execute(
            "INSERT INTO work_orders (id, alert_ids, hazard, severity, zone_id, department, "
            "team_id, state, created, updated, respond_by, resolve_by, title, "
            "escalation_level) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)",
            (order_id, [alert_id], ch.hazard, int(ch.level), ch.zone_id, route.department,
             route.team_id, WORK_ORDER_START, ch.ts, ch.ts, respond_by, resolve_by, ch.title,
             self._office_level.get(route.department)))
        _history(cur, order_id, ch.ts, None, WORK_ORDER_START, "system",
                 f"opened for alert {alert_id}; routed to {route.department}"
                 + (f", team {route.team_id}" if route.team_id else ", no team"), None)
        out.alerts_opened += 1
        out.orders_opened += 1
        out.by_hazard[ch.hazard, "opened"] += 1
        if route.team_id is None:
            log.warning("no team for %s in zone %s: work order %s is not dispatched",
                        ch.hazard, ch.zone_id, order_id)
        else:
            self._dispatch(cur, order_id, route.team_id, ch, respond_by, "new")
            out.dispatches += 1
        self._request_check(cur, order_id, zone, ch, respond_by)

    def _request_check(self, cur: psycopg.Cursor[Any], order_id: str, zone: Zone | None,
                       ch: AlertChange, respond_by: datetime) -> None:
        """Ask the nearest grid worker on patrol to look: eyes on site within minutes."""
        if self._nearest_worker is None or zone is None:
            return
        p = zone.geometry.representative_point()
        found = self._nearest_worker(p.x, p.y)
        if found is None:
            return
        worker, metres = found
        _note(cur, order_id, ch.ts, WORK_ORDER_START, "system",
              f"on-the-spot check asked of grid worker {worker}, {metres:.0f} m away")
        self._dispatch(cur, order_id, worker, ch, respond_by, "check")

    def _order_level_changed(self, cur: psycopg.Cursor[Any], order_id: str, ch: AlertChange,
                             out: Applied, start: datetime) -> None:
        assert ch.level is not None
        cur.execute("SELECT team_id, state, severity FROM work_orders WHERE id = %s FOR UPDATE",
                    (order_id,))
        row = cur.fetchone()
        if row is None:
            return
        team_id, state, old = row
        old_level = Level(old)
        if should_dispatch(old_level, ch.level):
            zone = self._zones.get(ch.zone_id)
            wanted = self._route(ch.hazard, zone.type if zone else "", ch.level)
            cur.execute("SELECT department FROM work_orders WHERE id = %s", (order_id,))
            dept_row = cur.fetchone()
            if (wanted.team_id is not None and dept_row is not None
                    and wanted.department != dept_row[0]):
                # The routing table sends this level elsewhere (a red underpass: fire and
                # rescue): hand the order over; the earlier team was told already.
                cur.execute("UPDATE work_orders SET department = %s, team_id = %s, "
                            "escalation_level = %s WHERE id = %s",
                            (wanted.department, wanted.team_id,
                             self._office_level.get(wanted.department), order_id))
                _note(cur, order_id, ch.ts, state, "system",
                      f"re-routed at {ch.level.colour} from {dept_row[0]} to "
                      f"{wanted.department}, team {wanted.team_id}")
                team_id = wanted.team_id
            # Deadlines tighten when the level rises; they never relax when it falls.
            respond_by, resolve_by = self.policy.deadlines(ch.level, start)
            cur.execute("UPDATE work_orders SET severity = %s, updated = %s, "
                        "respond_by = LEAST(respond_by, %s), resolve_by = LEAST(resolve_by, %s) "
                        "WHERE id = %s RETURNING respond_by",
                        (int(ch.level), ch.ts, respond_by, resolve_by, order_id))
            got = cur.fetchone()
            _note(cur, order_id, ch.ts, state, "system",
                  f"severity {old_level.colour} -> {ch.level.colour}")
            if team_id is not None and state != "closed" and got is not None:
                self._dispatch(cur, order_id, team_id, ch, got[0], "worse")
                out.dispatches += 1
            return
        # A falling level is recorded but not dispatched: the team is already on it.
        cur.execute("UPDATE work_orders SET updated = %s WHERE id = %s", (ch.ts, order_id))
        self._repeat(cur, order_id, ch.ts, state, "system",
                     f"{ch.hazard} eased to {ch.level.colour} (order stays "
                     f"{old_level.colour}; no dispatch)")
        out.dispatches_suppressed += 1

    def _dispatch(self, cur: psycopg.Cursor[Any], order_id: str, team_id: str,
                  ch: AlertChange | None, respond_by: datetime, why: str,
                  now: datetime | None = None) -> None:
        """Queue a warning for the team in the outbox, and track it until the team answers."""
        cur.execute("SELECT hazard, severity, zone_id, title FROM work_orders WHERE id = %s",
                    (order_id,))
        row = cur.fetchone()
        assert row is not None
        hazard, severity, zone_id, title = row
        issued = now or (ch.ts if ch is not None else respond_by)
        zone = self._zones.get(zone_id)
        loc = None
        if zone is not None:
            c = zone.geometry.representative_point()
            loc = [round(c.x, 6), round(c.y, 6)]
        payload = {
            "work_order_id": order_id, "hazard": hazard, "severity": severity,
            "zone_id": zone_id, "loc": loc, "title": ch.title if ch is not None else title,
            "instructions": INSTRUCTIONS.get(hazard, "Check on site."),
            "issued": _iso(issued), "respond_by": _iso(respond_by), "reason": why,
        }
        cur.execute("INSERT INTO outbox (topic, payload, qos, retain) VALUES (%s, %s, 1, false)",
                    (f"city/dispatch/{team_id}", _json(payload)))
        cur.execute(
            "INSERT INTO dispatches (work_order_id, team_id, payload, first_sent, last_sent) "
            "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (work_order_id, team_id) WHERE acked IS NULL "
            "DO UPDATE SET payload = EXCLUDED.payload, last_sent = EXCLUDED.last_sent, "
            "attempts = 1", (order_id, team_id, _json(payload), issued, issued))

    # --- team answers -------------------------------------------------------------------
    def apply_ack(self, cur: psycopg.Cursor[Any], ack: AckLike, now: datetime) -> Applied:
        out = Applied()
        cur.execute("SELECT state, team_id, hazard FROM work_orders WHERE id = %s FOR UPDATE",
                    (ack.work_order_id,))
        row = cur.fetchone()
        if row is None:
            raise AckRefused(f"no work order {ack.work_order_id!r}")
        state, team_id, hazard = row
        if team_id != ack.team_id:
            # A grid worker asked for an on-the-spot check answers too: their word is recorded
            # as evidence, but the order stays with its team.
            cur.execute("UPDATE dispatches SET acked = COALESCE(acked, %s), ack_status = %s "
                        "WHERE work_order_id = %s AND team_id = %s RETURNING id",
                        (now, ack.status, ack.work_order_id, ack.team_id))
            if not cur.fetchall():
                raise AckRefused(f"work order {ack.work_order_id} is with team {team_id!r}, "
                                 f"not {ack.team_id!r}")
            _note(cur, ack.work_order_id, now, state, f"grid {ack.team_id}",
                  f"check: {ack.status}" + (f": {ack.note}" if ack.note else ""))
            cur.execute("UPDATE work_orders SET updated = %s WHERE id = %s",
                        (now, ack.work_order_id))
            out.acks += 1
            return out
        cur.execute("UPDATE dispatches SET acked = %s, ack_status = %s WHERE work_order_id = %s "
                    "AND team_id = %s AND acked IS NULL", (now, ack.status, ack.work_order_id,
                                                           ack.team_id))
        out.acks += 1
        note = f": {ack.note}" if ack.note else ""
        actor = f"team {ack.team_id}"
        if ack.status in ("accepted", "on_site"):
            if can_move(WORK_ORDER_TRANSITIONS, state, "accept"):
                move_work_order(cur, ack.work_order_id, state, "accept", now, actor,
                                f"{ack.status}{note}")
            else:
                _note(cur, ack.work_order_id, now, state, actor, f"{ack.status}{note}")
        elif ack.status == "resolved":
            still = self._still_active(cur, ack.work_order_id) if hazard in SENSOR_BACKED else []
            if still:
                _note(cur, ack.work_order_id, now, state, actor,
                      f"reported resolved{note}, but the sensors still show "
                      f"{hazard} ({', '.join(still)}): not resolved")
            elif state in ("assigned", "accepted", "open"):
                if state == "open":
                    state = move_work_order(cur, ack.work_order_id, state, "accept", now, actor,
                                            "implied")
                move_work_order(cur, ack.work_order_id, state, "resolve", now, actor,
                                f"resolved{note}")
        elif ack.status == "rejected":
            _note(cur, ack.work_order_id, now, state, actor, f"rejected{note}")
            self._escalate(cur, ack.work_order_id, now, f"team {ack.team_id} rejected it{note}",
                           out)
        cur.execute("UPDATE work_orders SET updated = %s WHERE id = %s",
                    (now, ack.work_order_id))
        return out

    def _still_active(self, cur: psycopg.Cursor[Any], order_id: str) -> list[str]:
        cur.execute("SELECT a.id || ' ' || a.title FROM alerts a JOIN work_orders w "
                    "ON a.id = ANY(w.alert_ids) WHERE w.id = %s AND a.open_key IS NOT NULL",
                    (order_id,))
        return [r[0] for r in cur.fetchall()]

    # --- deadlines and unanswered dispatches ------------------------------------------------
    def check(self, conn: psycopg.Connection[Any], now: datetime) -> Applied:
        """Resend unanswered dispatches, escalate orders past a deadline. ``now`` is given so a
        test can drive it with its own clock."""
        out = Applied()
        with conn.transaction(), conn.cursor() as cur:
            cutoff = now - self.policy.dispatch_retry
            cur.execute(
                "SELECT d.id, d.work_order_id, d.team_id, d.payload, d.attempts, w.state "
                "FROM dispatches d "
                "JOIN work_orders w ON w.id = d.work_order_id AND w.team_id = d.team_id "
                "WHERE d.acked IS NULL AND d.last_sent <= %s AND w.state IN ('open', 'assigned') "
                "ORDER BY d.id FOR UPDATE OF d", (cutoff,))
            for did, order_id, team_id, payload, attempts, state in cur.fetchall():
                if attempts >= self.policy.dispatch_attempts:
                    cur.execute("UPDATE dispatches SET acked = %s, ack_status = 'unanswered' "
                                "WHERE id = %s", (now, did))
                    self._escalate(cur, order_id, now, f"no answer from team {team_id} after "
                                   f"{attempts} dispatches", out)
                    continue
                body = json.loads(payload)
                body["attempt"] = attempts + 1
                cur.execute("INSERT INTO outbox (topic, payload, qos, retain) "
                            "VALUES (%s, %s, 1, false)", (f"city/dispatch/{team_id}", _json(body)))
                cur.execute("UPDATE dispatches SET attempts = attempts + 1, last_sent = %s "
                            "WHERE id = %s", (now, did))
                self._repeat(cur, order_id, now, state, "system",
                             f"dispatch repeated (attempt {attempts + 1}): no answer from "
                             f"team {team_id}")
                out.redispatches += 1
            cur.execute(
                "SELECT id, CASE WHEN state = 'accepted' THEN 'resolve_by' ELSE 'respond_by' END "
                "FROM work_orders WHERE NOT ('overdue_at_top' = ANY(flags)) AND ("
                "(state IN ('open', 'assigned') AND respond_by <= %s) OR "
                "(state = 'accepted' AND resolve_by <= %s)) ORDER BY id FOR UPDATE",
                (now, now))
            for order_id, which in cur.fetchall():
                self._escalate(cur, order_id, now, f"{which} passed", out)
        return out

    def _escalate(self, cur: psycopg.Cursor[Any], order_id: str, now: datetime, why: str,
                  out: Applied) -> None:
        cur.execute("SELECT state, department, zone_id, severity, escalation_level "
                    "FROM work_orders WHERE id = %s FOR UPDATE", (order_id,))
        row = cur.fetchone()
        assert row is not None
        state, department, zone_id, severity, level = row
        if not can_move(WORK_ORDER_TRANSITIONS, state, "escalate"):
            # A late rejection of an order already resolved or closed: nothing left to hand on.
            _note(cur, order_id, now, state, "system", f"{why}; not escalated: it is {state}")
            return
        current = level or self._office_level.get(department, "district")
        target = escalation_target(current, self._zone_chain(zone_id), self._offices)
        if target is None or target.team_id is None:
            cur.execute("UPDATE work_orders SET flags = CASE WHEN 'overdue_at_top' = ANY(flags) "
                        "THEN flags ELSE array_append(flags, 'overdue_at_top') END, "
                        "updated = %s WHERE id = %s", (now, order_id))
            _note(cur, order_id, now, state, "system",
                  f"{why}; already at the top of the hierarchy ({current}): flagged")
            return
        respond_by, resolve_by = self.policy.deadlines(Level(severity), now)
        move_work_order(cur, order_id, state, "escalate", now, "system",
                        f"{why}: escalated from {department} ({current}) to {target.id} "
                        f"({target.level}), team {target.team_id}",
                        ", department = %(department)s, team_id = %(team_id)s, "
                        "escalation_level = %(level)s, respond_by = %(respond_by)s, "
                        "resolve_by = GREATEST(resolve_by, %(resolve_by)s)",
                        {"department": target.id, "team_id": target.team_id,
                         "level": target.level, "respond_by": respond_by,
                         "resolve_by": resolve_by})
        self._dispatch(cur, order_id, target.team_id, None, respond_by, "escalated", now)
        out.escalations += 1
        out.dispatches += 1

    def _zone_chain(self, zone_id: str) -> list[str]:
        chain: list[str] = []
        current: str | None = zone_id
        while current is not None and current not in chain:
            chain.append(current)
            zone = self._zones.get(current)
            current = zone.parent_id if zone is not None else None
        return chain

    # --- caps on what one incident can grow -------------------------------------------------
    def _evidence(self, items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """Parameters of ``_APPEND_EVIDENCE`` for ``items`` under this policy's cap."""
        first, last = self.policy.evidence_keep_first, self.policy.evidence_keep_last
        return {"ev": _json([dict(e) for e in items]), "ev_cap": first + last,
                "ev_head": f"$[0 to {first - 1}]", "ev_tail": f"$[last - {last - 1} to last]"}

    def _update_alert(self, cur: psycopg.Cursor[Any], alert_id: str, ts: datetime,
                      evidence: Sequence[Mapping[str, Any]], extra: str = "",
                      params: Mapping[str, Any] | None = None) -> None:
        """Evidence (capped) and ``extra`` for an alert whose state stays as it is."""
        _check_extra(extra)
        cur.execute("UPDATE alerts SET updated = %(ts)s" + extra + _APPEND_EVIDENCE
                    + " WHERE id = %(id)s",
                    {**(params or {}), **self._evidence(evidence), "ts": ts, "id": alert_id})

    def _repeat(self, cur: psycopg.Cursor[Any], order_id: str, ts: datetime, state: str,
                actor: str, reason: str) -> None:
        """A note of the kind a busy incident repeats without end (a report merged, a dispatch
        repeated, a level eased, the hazard back while the order is open): the first
        ``history_repeats_max`` are listed; later ones are counted in one summary line, kept
        last, that says how many and what the latest was. State changes and people's answers
        are never folded: they are the audit trail."""
        cur.execute("UPDATE work_orders SET repeats = repeats + 1 WHERE id = %s "
                    "RETURNING repeats", (order_id,))
        got = cur.fetchone()
        cap = self.policy.history_repeats_max
        if got is None or got[0] <= cap:
            _note(cur, order_id, ts, state, actor, reason)
            return
        folded = got[0] - cap
        cur.execute("DELETE FROM work_order_history WHERE work_order_id = %s "
                    "AND folded IS NOT NULL", (order_id,))
        _history(cur, order_id, ts, state, state, "system",
                 f"{folded} more repeated system entries not listed (the first {cap} are); "
                 f"the latest, by {actor}: {reason}", None, folded)


def _minutes(td: timedelta) -> str:
    return f"{td.total_seconds() / 60:g} min"


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
                 "evidence, work_order_id, duplicates, evidence_dropped")


def _alert_json(row: Mapping[str, Any], with_evidence: bool) -> dict[str, Any]:
    out = {k: row[k] for k in ("id", "hazard", "severity", "state", "zone_id", "title",
                               "work_order_id", "duplicates", "evidence_dropped")}
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
    """One alert with all its evidence and the history of what people did to it."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(f"SELECT {ALERT_COLUMNS} FROM alerts WHERE id = %s", (alert_id,))
        row = cur.fetchone()
        if row is None:
            raise NotFound(f"no alert {alert_id!r}")
        cur.execute("SELECT ts, from_state, to_state, actor, reason FROM alert_history "
                    "WHERE alert_id = %s ORDER BY id", (alert_id,))
        history = cur.fetchall()
    out = _alert_json(row, with_evidence=True)
    out["history"] = [{"ts": _iso(h["ts"]), "from": h["from_state"], "to": h["to_state"],
                       "actor": h["actor"], "reason": h["reason"]} for h in history]
    return out


def act_on_alert(conn: psycopg.Connection[Any], alert_id: str, action: str,
                 now: datetime, actor: str = "operator", reason: str = "") -> dict[str, Any]:
    """An operator's action, recorded in the alert's history with ``actor`` (the logged-in
    user). Resolving an alert whose sensors still show the hazard is refused with the evidence,
    as for work orders: a resolve would silence a live hazard."""
    with conn.transaction(), conn.cursor() as cur:
        cur.execute("SELECT state, zone_id, hazard, title, severity, evidence, open_key "
                    "FROM alerts WHERE id = %s FOR UPDATE", (alert_id,))
        row = cur.fetchone()
        if row is None:
            raise NotFound(f"no alert {alert_id!r}")
        _operators_only(action, OPERATOR_ALERT_ACTIONS)
        next_alert_state(alert_id, row[0], action)  # an illegal move is refused first
        _state, _zone, hazard, title, severity, evidence, open_key = row
        if action == "resolve" and hazard in SENSOR_BACKED and open_key is not None:
            raise NotVerified(
                f"alert {alert_id} cannot resolve: the sensors still show {hazard} ({title})",
                [{"alert_id": alert_id, "title": title, "severity": severity,
                  "latest": (evidence or [])[-3:]}])
        # An operator's resolve closes an alert no sensor can vouch for (a falling object, a
        # grid report); if the hazard is seen again the rule opens a new one.
        new_state = move_alert(cur, alert_id, row[0], action, now,
                               ", open_key = NULL" if action == "resolve" else "")
        cur.execute("INSERT INTO alert_history (alert_id, ts, from_state, to_state, actor, "
                    "reason) VALUES (%s, %s, %s, %s, %s, %s)",
                    (alert_id, now, row[0], new_state, actor, reason or f"{action} by {actor}"))
        if new_state == "resolved":
            queue_zone_state(cur, row[1], now)
    return get_alert(conn, alert_id)


ORDER_COLUMNS = ("id, alert_ids, hazard, severity, zone_id, department, team_id, state, created, "
                 "respond_by, resolve_by, duplicates, title, flags, escalation_level, reopened, "
                 "updated")


def _order_json(row: Mapping[str, Any], history: Sequence[Mapping[str, Any]] | None
                ) -> dict[str, Any]:
    out = {k: row[k] for k in ("id", "alert_ids", "hazard", "severity", "zone_id", "department",
                               "team_id", "state", "duplicates", "title", "flags",
                               "escalation_level", "reopened")}
    for k in ("created", "respond_by", "resolve_by", "updated"):
        out[k] = _iso(row[k])
    if history is not None:
        out["history"] = [{"ts": _iso(h["ts"]), "from": h["from_state"], "to": h["to_state"],
                           "actor": h["actor"], "reason": h["reason"], "action": h["action"]}
                          for h in history]
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
                      actor: str, reason: str, team_id: str | None = None,
                      store: AlertStore | None = None) -> dict[str, Any]:
    """An operator's action. Closing or resolving an order whose sensors still show the hazard
    is refused with the evidence (no templated close); a close with nothing to back it is
    flagged for review. ``store`` (when given) dispatches to a newly assigned team."""
    with conn.transaction(), conn.cursor() as cur:
        cur.execute("SELECT state, hazard, team_id, respond_by FROM work_orders WHERE id = %s "
                    "FOR UPDATE", (order_id,))
        row = cur.fetchone()
        if row is None:
            raise NotFound(f"no work order {order_id!r}")
        state, hazard, old_team, respond_by = row
        _operators_only(action, OPERATOR_WORK_ORDER_ACTIONS)
        next_work_order_state(order_id, state, action)  # an illegal move is refused first
        if action in ("resolve", "close") and hazard in SENSOR_BACKED:
            cur.execute(
                "SELECT a.id, a.title, a.severity, a.evidence FROM alerts a JOIN work_orders w ON "
                "a.id = ANY(w.alert_ids) WHERE w.id = %s AND a.open_key IS NOT NULL", (order_id,))
            active = cur.fetchall()
            if active:
                evidence = [{"alert_id": a, "title": t, "severity": sev,
                             "latest": (ev or [])[-3:]} for a, t, sev, ev in active]
                raise NotVerified(
                    f"work order {order_id} cannot {action}: the sensors still show {hazard} "
                    f"({'; '.join(t for _a, t, _s, _e in active)})", evidence)
        extra = ", team_id = COALESCE(%(team_id)s, team_id)"
        flagged = action == "close" and hazard not in SENSOR_BACKED and not reason.strip()
        if flagged:
            # Nothing confirms the problem is gone: no sensor can, and no note or photo does.
            extra += ", flags = array_append(flags, 'review_close_without_evidence')"
        if action == "reopen":
            extra += ", reopened = reopened + 1"
        move_work_order(cur, order_id, state, action, now, actor,
                        (reason or f"{action} by {actor}")
                        + (" [flagged for review: closed without evidence]" if flagged else ""),
                        extra, {"team_id": team_id})
        if action == "assign" and team_id and team_id != old_team and store is not None:
            store._dispatch(cur, order_id, team_id, None, max(respond_by, now), "assigned", now)
    return get_work_order(conn, order_id)


def _operators_only(action: str, allowed: Sequence[str]) -> None:
    if action not in allowed:
        raise AlertsError(f"{action!r} is not an operator's action; expected one of "
                          f"{', '.join(allowed)}")


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
