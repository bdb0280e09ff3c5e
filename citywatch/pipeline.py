"""The ingest worker: broker messages in, one transaction out, then the acks.

For each batch: decode and validate; in ONE database transaction store the new readings and
events (duplicates recognised by the unique keys), rejections and presence, run the new readings
through the pure rules, and write the resulting alerts, work orders and outbox rows. Only after
the commit are the messages acknowledged to the broker and the new rule state adopted. A crash at
any point therefore either loses nothing (the broker redelivers) or duplicates nothing (the
redelivered messages are recognised as already stored and are not evaluated again).
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from alerts.store import AckRefused, AlertStore, Applied
from citywatch.ingest_queue import IngestQueue
from citywatch.metrics import Metrics
from citywatch.placement import Placement
from rules.base import AlertChange, Detection, Observation
from rules.engine import Engine, EngineState
from rules.levels import HAZARDS as HAZARD_NAMES
from sensing import store
from sensing.decode import Decoder
from sensing.models import DispatchAck, Event, Rejection, Status, Telemetry
from sensing.mqtt import Inbound

log = logging.getLogger(__name__)

Position = tuple[float, float]


@dataclass
class Counts:
    """Running totals for the live status line and the health endpoint."""

    received: int = 0
    stored: int = 0
    duplicates: int = 0
    rejected: int = 0
    alerts_opened: int = 0
    alerts_cleared: int = 0
    orders_opened: int = 0
    last_batch: datetime | None = None
    rejected_by_reason: dict[str, int] = field(default_factory=dict)


class WorkerLocator:
    """Where the grid workers are, from their terminals' telemetry (``loc``), for on-the-spot
    checks. In memory: after a restart it refills within one telemetry interval."""

    def __init__(self, registry: Mapping[str, tuple[str, Position]],
                 fresh_for: timedelta = timedelta(minutes=10)) -> None:
        self._where: dict[str, tuple[Position, datetime | None]] = {
            d: (pos, None) for d, (kind, pos) in registry.items() if kind == "grid"}
        self._fresh_for = fresh_for
        self._newest: datetime | None = None
        self._lock = threading.Lock()

    def saw(self, device_id: str, pos: Position, ts: datetime) -> None:
        with self._lock:
            if device_id in self._where:
                self._where[device_id] = (pos, ts)
                if self._newest is None or ts > self._newest:
                    self._newest = ts

    def nearest(self, lon: float, lat: float) -> tuple[str, float] | None:
        """The nearest worker heard from recently (in event time), and how far in metres."""
        with self._lock:
            if self._newest is None:
                return None
            cutoff = self._newest - self._fresh_for
            best: tuple[str, float] | None = None
            for device_id, ((wlon, wlat), ts) in self._where.items():
                if ts is None or ts < cutoff:
                    continue
                # Equirectangular is exact enough over a district a few km across.
                dx = (wlon - lon) * 111_320 * math.cos(math.radians(lat))
                dy = (wlat - lat) * 110_540
                metres = math.hypot(dx, dy)
                if best is None or metres < best[1]:
                    best = (device_id, metres)
            return best


@dataclass
class BatchOutcome:
    state: EngineState
    applied: Applied
    rejected: list[Rejection]
    new: int
    duplicates: int


class Pipeline:
    def __init__(self, *, conninfo: str, decoder: Decoder, engine: Engine, state: EngineState,
                 placement: Placement, alert_store: AlertStore,
                 ack: Callable[[Sequence[tuple[int, int]]], None],
                 dead_letter: Callable[[Rejection], None], on_committed: Callable[[], None],
                 metrics: Metrics, batch_max: int = 500, batch_wait_s: float = 0.05,
                 workers: WorkerLocator | None = None,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 ingest_queue: IngestQueue | None = None) -> None:
        self._conninfo = conninfo
        self._decoder = decoder
        self._engine = engine
        self.state = state
        self._placement = placement
        self._alerts = alert_store
        self._ack = ack
        self._dead_letter = dead_letter
        self._on_committed = on_committed
        self._metrics = metrics
        self._workers = workers
        self._batch_max = batch_max
        self._batch_wait_s = batch_wait_s
        self._clock = clock
        # Bounded in messages and bytes; what happens when it is full: citywatch.ingest_queue.
        self._queue = ingest_queue or IngestQueue.for_receive_maximum(1000)
        self._held: list[Inbound] = []  # the batch being stored; kept if the worker is restarted
        self.last_progress: float | None = None  # time.monotonic() of the last batch stored
        self._held_since: float | None = None
        self.dropped = 0
        self._drop_logged_at: float | None = None
        self._conn: psycopg.Connection[Any] | None = None
        self._watermark: datetime | None = None
        self.counts = Counts()
        self.idle = threading.Event()
        self._blocked_seen = 0

    @property
    def ingest_queue(self) -> IngestQueue:
        return self._queue

    # paho's network thread calls this: hand on (or drop QoS 0 beyond its budget), nothing else.
    def submit(self, message: Inbound) -> None:
        if self._queue.put(message):
            return
        self.dropped += 1
        self._metrics.ingest_dropped.labels("qos0_queue_full").inc()
        now = time.monotonic()
        if self._drop_logged_at is None or now - self._drop_logged_at >= 10:  # not per message
            self._drop_logged_at = now
            log.warning("ingest queue full: dropped QoS 0 message %s from device %s (%d QoS 0 "
                        "messages dropped so far; the contract asks for QoS 1)", message.topic,
                        _device_of(message.topic), self.dropped)

    def waiting_since(self) -> float | None:
        """``time.monotonic()`` since when work has waited: the held batch or the oldest queued."""
        queued = self._queue.oldest_since()
        if self._held_since is None or queued is None:
            return self._held_since if queued is None else queued
        return min(self._held_since, queued)

    def run(self, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                if not self._held:
                    self._held = self._take_batch()
                    self._held_since = time.monotonic() if self._held else None
                self._metrics.queue_depth.set(self._queue.qsize())
                self._metrics.queue_bytes.set(self._queue.nbytes())
                self._metrics.ingest_backpressure.inc(self._queue.blocked - self._blocked_seen)
                self._blocked_seen = self._queue.blocked
                if not self._held:
                    self.idle.set()
                    continue
                self.idle.clear()
                if self._process_until_stored(self._held, stop):
                    self._held, self._held_since = [], None
                    self.last_progress = time.monotonic()
        finally:
            self.close()  # after a crash too: the supervisor's restart opens a fresh connection
            if stop.is_set():
                self._queue.close()  # paho's thread may be waiting for room: let it end

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _take_batch(self) -> list[Inbound]:
        try:
            first = self._queue.get(timeout=0.2)
        except queue.Empty:
            return []
        batch = [first]
        deadline = time.monotonic() + self._batch_wait_s
        while len(batch) < self._batch_max:
            remaining = deadline - time.monotonic()
            try:
                batch.append(self._queue.get(timeout=max(remaining, 0)) if remaining > 0
                             else self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self._conninfo)
        return self._conn

    def _process_until_stored(self, batch: list[Inbound], stop: threading.Event) -> bool:
        """Retry while the database is down; messages stay unacknowledged meanwhile. False if
        stopped before the batch was stored."""
        delay = 0.5
        while not stop.is_set():
            try:
                self.process(batch)
                return True
            except psycopg.OperationalError as exc:
                self._metrics.db_errors.inc()
                log.warning("database unavailable (%s); %d messages held, retrying in %.1fs",
                            str(exc).strip().splitlines()[0] if str(exc) else exc, len(batch),
                            delay)
                if self._conn is not None:
                    self._conn.close()
                self._conn = None
                stop.wait(delay)
                delay = min(delay * 2, 10.0)
        return False

    def process(self, batch: Sequence[Inbound]) -> None:
        now = self._clock()
        decoded = [(m, self._decoder.decode(m.topic, m.payload, now)) for m in batch]
        conn = self._connection()
        try:
            outcome = self._store_and_evaluate(conn, decoded, now)
        except psycopg.OperationalError:
            raise
        except Exception as exc:
            # Validation let through something the database refuses, or a message trips a bug
            # of ours (in placement, the rules, the alert store). Find the culprit one by one so
            # the good messages around it are stored and acknowledged, and dead-letter it.
            conn.rollback()
            refused = isinstance(exc, psycopg.Error)
            if len(batch) > 1:
                log.error("batch of %d %s (%s: %s); retrying one by one", len(batch),
                          "refused by the database" if refused else "failed",
                          type(exc).__name__, exc, exc_info=not refused)
                for m in batch:
                    self.process([m])
                return
            m, d = decoded[0]
            device = getattr(d, "device_id", None) or getattr(d, "team_id", None)
            kind = "dispatch" if isinstance(d, DispatchAck) else getattr(d, "kind", None)
            reason, detail = (("storage_error", f"the database refused it: {exc}") if refused
                              else ("internal_error", f"{type(exc).__name__}: {exc}"))
            log.error("message %s from device %s dead-lettered: %s", m.topic,
                      device or _device_of(m.topic), detail, exc_info=not refused)
            decoded = [(m, Rejection(m.topic, reason, detail, m.payload[:1024], device, kind))]
            outcome = self._store_and_evaluate(conn, decoded, now)
        self.state = outcome.state
        self._ack([(m.mid, m.qos) for m in batch])
        for rej in outcome.rejected:
            self._dead_letter(rej)
        self._count(decoded, outcome)
        if outcome.applied.changed:
            self._on_committed()

    def _store_and_evaluate(self, conn: psycopg.Connection[Any],
                            decoded: Sequence[tuple[Inbound, object]], now: datetime
                            ) -> BatchOutcome:
        telemetry: list[Telemetry] = []
        events: list[Event] = []
        statuses: list[Status] = []
        acks: list[tuple[Inbound, DispatchAck]] = []
        rejected: list[Rejection] = []
        for m, d in decoded:
            if isinstance(d, Telemetry):
                telemetry.append(d)
            elif isinstance(d, Event):
                events.append(d)
            elif isinstance(d, Status):
                statuses.append(d)
            elif isinstance(d, DispatchAck):
                acks.append((m, d))
            elif isinstance(d, Rejection):
                rejected.append(d)
        with conn.transaction(), conn.cursor() as cur:
            result = store.write_batch(conn, telemetry, events)
            for s in statuses:
                store.mark_presence(conn, s.device_id, s.state == "online", now)
            seen: dict[str, datetime] = {}
            readings: list[Telemetry | Event] = [*telemetry, *events]
            for r in readings:
                if r.device_id not in seen or r.ts > seen[r.device_id]:
                    seen[r.device_id] = r.ts
            if seen:
                store.touch_last_seen(conn, seen)
            if self._workers is not None:
                for t in result.new_telemetry:
                    if t.kind == "grid" and t.loc is not None:
                        self._workers.saw(t.device_id, t.loc, t.ts)
            items = self._placement.place_many([*result.new_telemetry, *result.new_events])
            state, changes = self._evaluate(items)
            applied = self._alerts.apply_changes(cur, changes)
            for item in items:
                category = item.attrs.get("category") if isinstance(item, Detection) else None
                if (isinstance(item, Detection) and item.type == "report"
                        and category in HAZARD_NAMES and self._alerts.attach_report(
                            cur, str(category), item.zone_ids,
                            {"device_id": item.device_id, "event_id": item.event_id,
                             "text": item.attrs.get("text", ""), "ts": item.ts.isoformat()},
                            item.ts)):
                    applied.reports_merged += 1
            for m, ack in acks:
                try:
                    with conn.transaction():
                        more = self._alerts.apply_ack(cur, ack, ack.ts or now)
                    applied.acks += more.acks
                    applied.escalations += more.escalations
                    applied.dispatches += more.dispatches
                except AckRefused as exc:
                    rejected.append(Rejection(m.topic, "ack_refused", str(exc), m.payload,
                                              ack.team_id, "dispatch"))
            if rejected:
                store.record_rejections(conn, rejected)
        new = len(result.new_telemetry) + len(result.new_events)
        return BatchOutcome(state, applied, rejected, new, len(readings) - new)

    def _evaluate(self, placed: Sequence[Observation | Detection]
                  ) -> tuple[EngineState, list[AlertChange]]:
        items = sorted(placed, key=lambda i: i.ts)  # stable: readings before events on ties
        if items and (self._watermark is None or items[-1].ts > self._watermark):
            self._watermark = items[-1].ts
        # One engine call per batch: the engine copies its state once, not once per reading.
        return self._engine.evaluate_many(self.state, items, now=self._watermark)

    def _count(self, decoded: Sequence[tuple[Inbound, object]], outcome: BatchOutcome) -> None:
        m, c, applied = self._metrics, self.counts, outcome.applied
        c.received += len(decoded)
        c.stored += outcome.new
        c.duplicates += outcome.duplicates
        m.duplicates.inc(outcome.duplicates)
        m.stored.labels("all").inc(outcome.new)
        m.batch_size.observe(len(decoded))
        newest: datetime | None = None
        for inbound, d in decoded:
            channel = inbound.topic.rsplit("/", 1)[-1]
            m.messages_in.labels(channel if channel in ("telemetry", "event", "status", "ack")
                                 else "other").inc()
            if isinstance(d, Telemetry | Event) and (newest is None or d.ts > newest):
                newest = d.ts
        for rej in outcome.rejected:
            c.rejected += 1
            c.rejected_by_reason[rej.reason] = c.rejected_by_reason.get(rej.reason, 0) + 1
            m.rejected.labels(rej.reason).inc()
        c.alerts_opened += applied.alerts_opened
        c.alerts_cleared += applied.alerts_cleared
        c.orders_opened += applied.orders_opened
        record_applied(m, applied)
        done = self._clock()
        c.last_batch = done
        m.lag.set(max((done - min(i.received for i, _ in decoded)).total_seconds(), 0.0))
        if newest is not None:
            m.event_lag.set((done - newest).total_seconds())


def _device_of(topic: str) -> str:
    """The device (or team) a topic names, for log lines: city/{kind}/{id}/..., or '?'."""
    parts = topic.split("/")
    return parts[2] if len(parts) > 2 and parts[0] == "city" else "?"


def record_applied(m: Metrics, applied: Applied) -> None:
    for (hazard, change), n in applied.by_hazard.items():
        m.alerts.labels(hazard, change).inc(n)
        if change == "opened":
            m.orders.labels(hazard).inc(n)
    m.policy.labels("dispatch_suppressed").inc(applied.dispatches_suppressed)
    m.policy.labels("alert_reactivated").inc(applied.alerts_reactivated)
    m.policy.labels("order_reopened").inc(applied.orders_reopened)
    m.policy.labels("redispatch").inc(applied.redispatches)
    m.policy.labels("escalation").inc(applied.escalations)
    m.policy.labels("team_answer").inc(applied.acks)
    m.policy.labels("report_merged").inc(applied.reports_merged)
