"""``GET /api/stream``: every alert and work-order change as Server-Sent Events.

One poller (``StreamHub``) reads the changes from the database about twice a second, whoever
listens, and fans each event out to every open stream: three hundred open consoles cost the
database what one does. It polls rather than listening for notifications, so that it sees every
writer, the engine's batches and operator actions alike, without any of them knowing about it.
Open streams are capped per user and in all (429 and 503 beyond), and a stream that cannot keep
up (its queue full) is ended: its browser reconnects and resynchronises. Each event carries the
row in the shape of the list endpoints::

    event: alert
    data: {"id": "AL-000001", "state": "active", ...}

    event: work_order
    data: {"id": "WO-000001", "state": "open", "history": [...], ...}

``event: hello`` follows the first poll after the stream opened: a client that fetches the lists
after it has missed nothing. A comment line every 15 s keeps proxies from closing an idle stream.

Changes are found by ``updated``, which is not a commit order: it is the reading's own time for
the engine's writes (a device's clock may run up to 5 minutes ahead) and the wall clock for
operator actions, and several rows can share one value. So each poll re-reads the
``(id, updated, state, ...)`` of every row updated within a look-back window before the database's
``now()`` and emits those whose fingerprint differs from what this stream last sent. A change
stamped older than the window when it commits (a device replaying a buffer hours late) is not
streamed; clients resynchronise from the list endpoints now and then for that.

FastAPI reads the handlers' annotations at run time, including local names: no
``from __future__ import annotations``.
"""

import asyncio
import json
import logging
from collections import Counter
from collections.abc import AsyncIterator, Callable, Hashable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Annotated, Any, Final, Literal

import anyio
import psycopg
from fastapi import APIRouter, Depends, HTTPException
from fastapi.responses import StreamingResponse
from psycopg_pool import ConnectionPool, PoolClosed
from starlette.background import BackgroundTask

from alerts import store
from alerts.identity import Identity
from alerts.lifecycle import AlertsError, NotFound
from alerts.responses import READ, Problem

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

    The first poll only takes the baseline and returns nothing. Not thread-safe: the hub's poller
    is its only user.
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
        row.pop("history", None)  # the list endpoints' shape
        return row
    return store.get_work_order(conn, ident)


def sse(event: str, data: Any) -> str:
    """One Server-Sent Event. JSON has no raw newlines, so ``data`` is a single line."""
    return f"event: {event}\ndata: {json.dumps(data, default=str, separators=(',', ':'))}\n\n"


_END: Final = ""  # put in a stream's queue: the stream ends (the server stops, or it lagged)


class StreamLimit(AlertsError):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass(eq=False)
class Subscriber:
    user: str
    queue: asyncio.Queue[str]
    greeted: bool = False


class StreamHub:
    """One poller for every open stream.

    All of its state is touched from the event loop only (``open``, ``close`` and the poll task);
    the database is read in a worker thread, one poll at a time.
    """

    def __init__(self, pool: ConnectionPool[psycopg.Connection[Any]], *, poll_s: float = 0.5,
                 lookback: timedelta = timedelta(minutes=2), total: int = 500,
                 per_user: int = 10, queue_max: int = 1000, pool_wait_s: float = 2.0) -> None:
        if poll_s <= 0 or total < 1 or per_user < 1 or queue_max < 1 or pool_wait_s <= 0:
            raise ValueError("poll_s and pool_wait_s must be positive; total, per_user and "
                             "queue_max at least 1")
        self._pool = pool
        self.poll_s = poll_s
        self.total = total
        self.per_user = per_user
        self._queue_max = queue_max
        self._wait_s = pool_wait_s
        self._feed = ChangeFeed(lookback=lookback)
        self._subscribers: set[Subscriber] = set()
        self._by_user: Counter[str] = Counter()
        self._task: asyncio.Task[None] | None = None
        self.polls = 0  # how many times the database was asked, for tests and curiosity

    @property
    def open_streams(self) -> int:
        return len(self._subscribers)

    def open(self, user: str) -> Subscriber:
        """A new stream for ``user``; raises ``StreamLimit`` beyond the caps."""
        if self._by_user[user] >= self.per_user:
            raise StreamLimit(429, f"{user} has {self._by_user[user]} event streams open, the "
                                   f"most one user may; close one (another tab?) first")
        if len(self._subscribers) >= self.total:
            raise StreamLimit(503, f"{len(self._subscribers)} event streams are open, the most "
                                   "this server takes; try again later")
        sub = Subscriber(user, asyncio.Queue(self._queue_max))
        self._subscribers.add(sub)
        self._by_user[user] += 1
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="sse-poller")
        return sub

    def close(self, sub: Subscriber) -> None:
        if sub in self._subscribers:
            self._subscribers.discard(sub)
            self._by_user[sub.user] -= 1
            if self._by_user[sub.user] <= 0:
                del self._by_user[sub.user]

    def _poll(self) -> list[tuple[Kind, dict[str, Any]]]:
        with self._pool.connection(timeout=self._wait_s) as conn:
            return self._feed.poll(conn)

    async def _run(self) -> None:
        failing = False
        while self._subscribers and not self._pool.closed:
            waiting = [s for s in self._subscribers if not s.greeted]
            try:
                changes = await anyio.to_thread.run_sync(self._poll)
                self.polls += 1
            except PoolClosed:
                break
            except psycopg.OperationalError as exc:  # PoolTimeout is one too
                if not failing:
                    log.warning("stream: database unavailable, retrying: %s", exc)
                failing = True
            else:
                failing = False
                events = [sse(kind, row) for kind, row in changes]
                for sub in list(self._subscribers):
                    self._deliver(sub, events)
                if self._feed.primed:
                    hello = sse("hello", {"poll_s": self.poll_s})
                    for sub in waiting:
                        if sub in self._subscribers:
                            sub.greeted = True
                            self._deliver(sub, [hello])
            await asyncio.sleep(self.poll_s)
        if self._pool.closed:
            for sub in list(self._subscribers):
                self._end(sub)

    def _deliver(self, sub: Subscriber, events: list[str]) -> None:
        for event in events:
            try:
                sub.queue.put_nowait(event)
            except asyncio.QueueFull:
                # A client that does not read: end its stream rather than hold the events for
                # it; its browser reconnects and fetches the lists after the next hello.
                log.warning("stream of %s ended: %d events unread", sub.user, sub.queue.qsize())
                self._end(sub)
                return

    def _end(self, sub: Subscriber) -> None:
        self.close(sub)
        while True:
            try:
                sub.queue.put_nowait(_END)
                return
            except asyncio.QueueFull:
                sub.queue.get_nowait()  # make room for the end mark


def stream_router(hub: StreamHub, identity: Callable[..., Identity], *,
                  heartbeat_s: float = 15.0, retry_ms: int = 1000) -> APIRouter:
    """The router serving ``GET /api/stream`` from ``hub`` to logged-in users.

    A stream ends by itself when the pool is closed, so that the HTTP server can stop while
    clients are connected (they reconnect, ``retry_ms`` later, to whatever runs next).
    """
    if heartbeat_s <= 0 or retry_ms < 0:
        raise ValueError("heartbeat_s must be positive, retry_ms not negative")
    router = APIRouter()

    async def events(sub: Subscriber) -> AsyncIterator[str]:
        try:
            yield f"retry: {retry_ms}\n\n"
            while True:
                try:
                    event = await asyncio.wait_for(sub.queue.get(), heartbeat_s)
                except TimeoutError:
                    yield ": heartbeat\n\n"
                    continue
                if event == _END:
                    return
                yield event
        finally:
            hub.close(sub)

    @router.get("/api/stream", response_class=StreamingResponse, responses={
        200: {"content": {"text/event-stream": {}},
              "description": "`event: alert` and `event: work_order`, each with the row as JSON"},
        **READ,
        429: {"model": Problem, "description": "this user has too many streams open"},
        503: {"model": Problem, "description": "too many streams open in all, or the database "
                                               "unavailable"}})
    async def stream(who: Annotated[Identity, Depends(identity)]) -> StreamingResponse:
        try:
            sub = hub.open(who.user)
        except StreamLimit as exc:
            headers = {"Retry-After": "30"} if exc.status == 503 else None
            raise HTTPException(exc.status, exc.detail, headers=headers) from None
        async def closed() -> None:  # also when the response ends before the stream started
            hub.close(sub)

        return StreamingResponse(events(sub), media_type="text/event-stream", headers={
            "Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            background=BackgroundTask(closed))

    return router
