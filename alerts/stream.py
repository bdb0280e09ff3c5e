"""``GET /api/stream``: every alert and work-order change as Server-Sent Events.

The stream polls the database (about twice a second) rather than listening for notifications, so
that it sees every writer, the engine's batches and operator actions alike, without any of them
knowing about it. Each event carries the row in the shape of the list endpoints::

    event: alert
    data: {"id": "AL-000001", "state": "active", ...}

    event: work_order
    data: {"id": "WO-000001", "state": "open", "history": [...], ...}

``event: hello`` follows once the stream has its baseline: a client that fetches the lists after
it has missed nothing. A comment line every 15 s keeps proxies from closing an idle stream.

Changes are found by ``updated``, which is not a commit order: it is the reading's own time for
the engine's writes (a device's clock may run up to 5 minutes ahead) and the wall clock for
operator actions, and several rows can share one value. So each poll re-reads the
``(id, updated, state, ...)`` of every row updated within a look-back window before the database's
``now()`` and emits those whose fingerprint differs from what this stream last sent. A change
stamped older than the window when it commits (a device replaying a buffer hours late) is not
streamed; clients resynchronise from the list endpoints now and then for that.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Hashable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Final, Literal

import anyio
import psycopg
from fastapi import APIRouter
from fastapi.responses import StreamingResponse
from psycopg_pool import ConnectionPool, PoolClosed, PoolTimeout

from alerts import store
from alerts.lifecycle import NotFound

log = logging.getLogger(__name__)

Kind = Literal["alert", "work_order"]
LIST_EVIDENCE: Final = 3  # the list endpoints show the last three evidence items

# Columns that change whenever something an operator cares about changes, besides ``updated``.
_CHANGED_SQL: Final = """
    SELECT 'alert' AS kind, id, updated, state, severity, coalesce(work_order_id, '') AS extra
      FROM alerts WHERE updated >= now() - %(window)s
    UNION ALL
    SELECT 'work_order', id, updated, state, severity, coalesce(team_id, '')
      FROM work_orders WHERE updated >= now() - %(window)s
    ORDER BY updated, kind, id"""


@dataclass
class ChangeFeed:
    """Rows of ``alerts`` and ``work_orders`` changed since the previous ``poll``.

    The first poll only takes the baseline and returns nothing. Not thread-safe: one per stream.
    """

    lookback: timedelta = timedelta(minutes=2)
    _sent: dict[tuple[str, str], Hashable] = field(default_factory=dict)
    _primed: bool = False

    @property
    def primed(self) -> bool:
        return self._primed

    def poll(self, conn: psycopg.Connection[Any]) -> list[tuple[Kind, dict[str, Any]]]:
        rows = conn.execute(_CHANGED_SQL, {"window": self.lookback}).fetchall()
        changed: list[tuple[Kind, str]] = []
        in_window: dict[tuple[str, str], Hashable] = {}
        for kind, ident, updated, state, severity, extra in rows:
            key = (kind, ident)
            fingerprint = (updated, state, severity, extra)
            in_window[key] = fingerprint
            if self._sent.get(key) != fingerprint:
                changed.append((kind, ident))
        # Rows that left the window are forgotten: the window only moves forward, so they come
        # back only with a newer ``updated``, which is a change anyway.
        self._sent = in_window
        if not self._primed:
            self._primed = True
            return []
        out: list[tuple[Kind, dict[str, Any]]] = []
        for kind, ident in changed:
            try:
                out.append((kind, _read(conn, kind, ident)))
            except NotFound:
                continue  # deleted between the two queries: nothing to show
        return out


def _read(conn: psycopg.Connection[Any], kind: Kind, ident: str) -> dict[str, Any]:
    if kind == "alert":
        row = store.get_alert(conn, ident)
        row["evidence"] = row["evidence"][-LIST_EVIDENCE:]
        return row
    return store.get_work_order(conn, ident)


def sse(event: str, data: Any) -> str:
    """One Server-Sent Event. JSON has no raw newlines, so ``data`` is a single line."""
    return f"event: {event}\ndata: {json.dumps(data, default=str, separators=(',', ':'))}\n\n"


def stream_router(pool: ConnectionPool[psycopg.Connection[Any]], *, poll_s: float = 0.5,
                  heartbeat_s: float = 15.0, lookback: timedelta = timedelta(minutes=2),
                  retry_ms: int = 1000) -> APIRouter:
    """The router serving ``GET /api/stream`` from ``pool``.

    A stream ends by itself when the pool is closed, so that the HTTP server can stop while
    clients are connected (they reconnect, ``retry_ms`` later, to whatever runs next).
    """
    if poll_s <= 0 or heartbeat_s <= 0 or retry_ms < 0:
        raise ValueError("poll_s and heartbeat_s must be positive, retry_ms not negative")
    router = APIRouter()

    def poll(feed: ChangeFeed) -> list[tuple[Kind, dict[str, Any]]]:
        with pool.connection(timeout=2) as conn:
            return feed.poll(conn)

    async def events() -> AsyncIterator[str]:
        feed = ChangeFeed(lookback=lookback)
        yield f"retry: {retry_ms}\n\n"
        last_out = time.monotonic()
        failing = False
        while not pool.closed:
            was_primed = feed.primed
            try:
                changes = await anyio.to_thread.run_sync(poll, feed)
            except PoolClosed:
                return
            except (psycopg.OperationalError, PoolTimeout) as exc:
                if not failing:
                    log.warning("stream: database unavailable, retrying: %s", exc)
                failing = True
                changes = []
            else:
                failing = False
            if feed.primed and not was_primed:
                yield sse("hello", {"poll_s": poll_s})
                last_out = time.monotonic()
            for kind, row in changes:
                yield sse(kind, row)
                last_out = time.monotonic()
            if time.monotonic() - last_out >= heartbeat_s:
                yield ": heartbeat\n\n"
                last_out = time.monotonic()
            await anyio.sleep(poll_s)

    @router.get("/api/stream", response_class=StreamingResponse, responses={
        200: {"content": {"text/event-stream": {}},
              "description": "`event: alert` and `event: work_order`, each with the row as JSON"}})
    def stream() -> StreamingResponse:
        return StreamingResponse(events(), media_type="text/event-stream", headers={
            "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    return router
