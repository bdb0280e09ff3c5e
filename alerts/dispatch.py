"""The outbox publisher: sends what ``AlertStore`` queued, in order, and marks it sent.

Rows are written in the same transaction as the alert or work-order change, so a crash between
the change and the publish loses nothing. A row is marked sent only after the broker's PUBACK; a
crash after the PUBACK and before the mark resends that one message (teams deduplicate by
``work_order_id``), which is the only duplicate possible.

``run`` ends only when asked to; an unexpected error escapes it for the caller's supervisor to log
and restart it (rows still unsent stay in the table). ``waiting_since`` and ``last_progress`` say
whether queued rows are moving, for the health check.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import psycopg

log = logging.getLogger(__name__)


class PublishHandle(Protocol):
    def is_published(self) -> bool: ...
    def wait_for_publish(self, timeout: float | None = None) -> None: ...


Publish = Callable[[str, str, int, bool], PublishHandle]


class OutboxPublisher:
    def __init__(self, conninfo: str, publish: Publish, is_connected: Callable[[], bool],
                 on_sent: Callable[[str, int], None] | None = None, batch: int = 200) -> None:
        self._conninfo = conninfo
        self._publish = publish
        self._is_connected = is_connected
        self._on_sent = on_sent
        self._batch = batch
        self._wake = threading.Event()
        self._in_flight: dict[int, tuple[str, PublishHandle]] = {}
        self.sent = 0
        # time.monotonic(): since when unsent rows have waited (None: none seen), and when the
        # last one was marked sent or the outbox was found empty.
        self.waiting_since: float | None = None
        self.last_progress: float | None = None

    def notify(self) -> None:
        self._wake.set()

    def run(self, stop: threading.Event) -> None:
        conn: psycopg.Connection[Any] | None = None
        try:
            while not stop.is_set():
                try:
                    if conn is None or conn.closed:
                        conn = psycopg.connect(self._conninfo, autocommit=True)
                    self._drain(conn, stop)
                except psycopg.OperationalError as exc:
                    log.warning("outbox: database unavailable (%s); retrying", exc)
                    if conn is not None:
                        conn.close()
                    conn = None
                    stop.wait(1.0)
                self._wake.wait(0.5)
                self._wake.clear()
        finally:
            if conn is not None:
                conn.close()

    def _drain(self, conn: psycopg.Connection[Any], stop: threading.Event) -> None:
        while not stop.is_set():
            self._settle(conn)
            # Looked at even while the broker is away, so that rows waiting for it show as such.
            rows = conn.execute(
                "SELECT id, topic, payload, qos, retain FROM outbox WHERE sent IS NULL "
                "AND NOT (id = ANY(%s)) ORDER BY id LIMIT %s",
                (list(self._in_flight), self._batch)).fetchall()
            now = time.monotonic()
            if not rows and not self._in_flight:
                self.waiting_since, self.last_progress = None, now
            elif self.waiting_since is None:
                self.waiting_since = now
            if not rows or not self._is_connected():
                return
            for oid, topic, payload, qos, retain in rows:
                self._in_flight[oid] = (topic, self._publish(topic, payload, qos, retain))
            deadline = time.monotonic() + 5.0
            for _topic, handle in list(self._in_flight.values()):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    handle.wait_for_publish(remaining)
                except (RuntimeError, ValueError):
                    break  # not connected: paho keeps it queued; settle later
            self._settle(conn)

    def _settle(self, conn: psycopg.Connection[Any]) -> None:
        done: list[tuple[int, str]] = []
        for oid, (topic, h) in list(self._in_flight.items()):
            try:
                if h.is_published():
                    done.append((oid, topic))
            except (RuntimeError, ValueError) as exc:
                # The client refused it outright: forget the attempt, the row stays unsent and
                # is published again on the next round.
                log.warning("outbox row %s to %s not published (%s); trying again", oid, topic,
                            exc)
                del self._in_flight[oid]
        if not done:
            return
        conn.execute("UPDATE outbox SET sent = now() WHERE id = ANY(%s)",
                     ([oid for oid, _ in done],))
        self.last_progress = time.monotonic()
        for oid, topic in done:
            del self._in_flight[oid]
            self.sent += 1
            if self._on_sent is not None:
                self._on_sent(topic, oid)
