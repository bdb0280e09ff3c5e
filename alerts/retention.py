"""What the alert tables keep, and for how long; run by the service's scheduler.

- ``outbox``: a row is deleted ``outbox_keep_days`` after it was sent (it is only there to be
  sent once, and to look at when a team says it never got it); an unsent row is never deleted.
- ``work_orders`` with their history and dispatches, and their alerts: deleted
  ``keep_days`` after the order was last touched, once the order is resolved or closed and its
  alerts are resolved. An order resolved and never closed counts too: left alone that long it is
  as finished as a closed one, and keeping it would defeat the point.
- ``alerts`` without a work order: deleted ``keep_days`` after they were resolved.

Evidence and history are capped per incident as they are written (``alerts.policy``); this job
only ages whole rows out. Each batch is its own short transaction, so the engine's writes never
wait long behind it; rows locked by the engine are skipped and taken on the next run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg

log = logging.getLogger(__name__)

FINISHED_ORDER_STATES = ("resolved", "closed")  # nothing left to do but look it up


@dataclass(frozen=True, slots=True)
class Retention:
    outbox_keep_days: int = 7
    keep_days: int = 1830
    batch_size: int = 500

    def __post_init__(self) -> None:
        if min(self.outbox_keep_days, self.keep_days, self.batch_size) < 1:
            raise ValueError("outbox_keep_days, keep_days and batch_size must be 1 or more")


@dataclass(frozen=True, slots=True)
class Removed:
    outbox: int = 0
    work_orders: int = 0
    history: int = 0
    dispatches: int = 0
    alerts: int = 0


def apply_retention(conn: psycopg.Connection[Any], keep: Retention, now: datetime) -> Removed:
    """Delete what ``keep`` no longer keeps as of ``now``. ``conn`` must have no transaction
    open (an autocommit connection): each batch commits on its own."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    outbox = _outbox(conn, now - timedelta(days=keep.outbox_keep_days), keep.batch_size)
    cutoff = now - timedelta(days=keep.keep_days)
    orders = history = dispatches = alerts = 0
    while True:
        with conn.transaction(), conn.cursor() as cur:
            cur.execute(
                "SELECT w.id FROM work_orders w WHERE w.state = ANY(%(done)s) "
                "AND w.updated < %(cutoff)s AND NOT EXISTS (SELECT 1 FROM alerts a "
                "WHERE a.id = ANY(w.alert_ids) AND (a.state <> 'resolved' "
                "OR a.updated >= %(cutoff)s)) "
                "ORDER BY w.id LIMIT %(n)s FOR UPDATE SKIP LOCKED",
                {"done": list(FINISHED_ORDER_STATES), "cutoff": cutoff, "n": keep.batch_size})
            ids = [r[0] for r in cur.fetchall()]
            if ids:
                history += cur.execute("DELETE FROM work_order_history "
                                       "WHERE work_order_id = ANY(%s)", (ids,)).rowcount
                dispatches += cur.execute("DELETE FROM dispatches WHERE work_order_id = ANY(%s)",
                                          (ids,)).rowcount
                alerts += cur.execute("DELETE FROM alerts WHERE work_order_id = ANY(%s) "
                                      "AND state = 'resolved'", (ids,)).rowcount
                orders += cur.execute("DELETE FROM work_orders WHERE id = ANY(%s)",
                                      (ids,)).rowcount
        if len(ids) < keep.batch_size:
            break
    while True:
        with conn.transaction():
            n = conn.execute(
                "DELETE FROM alerts WHERE id IN (SELECT a.id FROM alerts a "
                "WHERE a.state = 'resolved' AND a.updated < %s AND (a.work_order_id IS NULL "
                "OR NOT EXISTS (SELECT 1 FROM work_orders w WHERE w.id = a.work_order_id)) "
                "ORDER BY a.id LIMIT %s FOR UPDATE SKIP LOCKED)",
                (cutoff, keep.batch_size)).rowcount
        alerts += n
        if n < keep.batch_size:
            break
    removed = Removed(outbox, orders, history, dispatches, alerts)
    if any((outbox, orders, alerts)):
        log.info("alert retention: removed %s", removed)
    return removed


def _outbox(conn: psycopg.Connection[Any], sent_before: datetime, batch: int) -> int:
    total = 0
    while True:
        with conn.transaction():
            n = conn.execute("DELETE FROM outbox WHERE id IN (SELECT id FROM outbox "
                             "WHERE sent < %s ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED)",
                             (sent_before, batch)).rowcount
        total += n
        if n < batch:
            return total


def run(conninfo: str, keep: Retention, now: datetime) -> Removed | None:
    """The scheduler's job: a database that is down skips this run (the next one catches up)."""
    try:
        with psycopg.connect(conninfo, autocommit=True, connect_timeout=10) as conn:
            return apply_retention(conn, keep, now)
    except psycopg.OperationalError as exc:
        log.warning("alert retention skipped: database unavailable (%s)", exc)
        return None
