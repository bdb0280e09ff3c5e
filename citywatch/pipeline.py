"""The ingest worker: broker messages in, one transaction out, then the acks.

For each batch: decode and validate; in ONE database transaction store the new readings and
events (duplicates recognised by the unique keys), rejections and presence, run the new readings
through the pure rules, and write the resulting alerts, work orders and outbox rows. Only after
the commit are the messages acknowledged to the broker and the new rule state adopted. A crash at
any point therefore either loses nothing (the broker redelivers) or duplicates nothing (the
redelivered messages are recognised as already stored and are not evaluated again).

Readings are stored with their devices' own time stamps and evaluated on the server's timeline
(``citywatch.clocks``: a device whose clock is off is corrected). When no reading arrives,
``tick`` moves the rules on the server's clock (silence, timed clears), through the same path:
one transaction, then the new state. A lock keeps a tick and a batch from overlapping.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import psycopg

from alerts.store import AckRefused, AlertStore, Applied
from citywatch import clocks
from citywatch.cluster_fence import Fenced
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
T = TypeVar("T")


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

    def track(self, device_id: str, pos: Position | None) -> None:
        """Follow a grid worker added at run time (None: stop following a retired one)."""
        with self._lock:
            if pos is None:
                self._where.pop(device_id, None)
            elif device_id not in self._where:
                self._where[device_id] = (pos, None)

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
    clock_state: clocks.ClockState
    clock_changes: list[clocks.ClockChange]
    newest: datetime | None  # the newest reading, on the server's timeline


class Pipeline:
    def __init__(self, *, conninfo: str, decoder: Decoder, engine: Engine, state: EngineState,
                 placement: Placement, alert_store: AlertStore,
                 ack: Callable[[Sequence[Inbound]], None],
                 dead_letter: Callable[[Rejection], None], on_committed: Callable[[], None],
                 metrics: Metrics, batch_max: int = 500, batch_wait_s: float = 0.0,
                 workers: WorkerLocator | None = None,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 clock_params: clocks.ClockParams = clocks.DEFAULT_PARAMS,
                 ingest_queue: IngestQueue | None = None,
                 fence: Callable[[psycopg.Cursor[Any]], None] | None = None) -> None:
        self._conninfo = conninfo
        # Run first in every transaction; raises Fenced when another owner took over (a
        # cluster partition, citywatch.cluster_fence). Once fenced, the pipeline stops.
        self._fence = fence
        self.fenced = False
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
        self.clocks = clocks.ClockState()
        self._clock_params = clock_params
        # One batch or one tick at a time: both read self.state and replace it after a commit.
        self._lock = threading.RLock()
        self._last_input = clock()  # server time of the last batch (or of the start)
        self._batched = False  # until a batch tells, the fleet's lag is unknown
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
                stored = self._process_until_stored(self._held, stop)
                if self.fenced:
                    return  # unacknowledged: the new owner gets the batch again
                if stored:
                    # unfinished_tasks counts queued and in-flight messages (see caught_up)
                    self._queue.task_done(len(self._held))
                    self._held, self._held_since = [], None
                    self.last_progress = time.monotonic()
        finally:
            self.close()  # after a crash too: the supervisor's restart opens a fresh connection
            if stop.is_set():
                self._queue.close()  # paho's thread may be waiting for room: let it end

    def close(self) -> None:
        with self._lock:  # a tick may be using the connection
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    # --- the server's clock ---------------------------------------------------------------
    def caught_up(self, allowance: timedelta) -> bool:
        """Whether the rules may move on the server's clock: nothing queued or in flight, and
        either nothing arrived for ``allowance`` (since the last batch, or the start: a broker
        sends a waiting backlog at once) or the last batches were current (the fleet's lag
        within ``allowance``). While a backlog drains, its own readings move event time: a tick
        then would find the whole fleet silent and the backlog revive it."""
        if self._queue.unfinished_tasks:
            return False
        return (self._clock() - self._last_input >= allowance
                or (self._batched and self.clocks.fleet_lag <= allowance))

    def tick(self, allowance: timedelta) -> bool:
        """Advance the rules to the server's clock less ``allowance`` (the engine holds its
        reorder window back on top): silence, timed clears, held readings. Like a batch, the
        changes are written in one transaction and only then is the new state adopted; on a
        database error nothing is adopted and the next tick tries again. Returns whether it ran
        (not while a backlog drains, nor when the database refused)."""
        with self._lock:
            if not self.caught_up(allowance):
                self._metrics.ticks.labels("skipped").inc()
                return False
            now = self._clock()
            state, changes = self._engine.tick(self.state, self.tick_target(now, allowance),
                                               received=now)
            applied = Applied()
            if changes:
                try:
                    conn = self._connection()
                    with conn.transaction(), conn.cursor() as cur:
                        self._check_fence(cur)
                        applied = self._alerts.apply_changes(cur, changes, now)
                except Fenced:
                    return False
                except psycopg.Error as exc:
                    self._metrics.ticks.labels("failed").inc()
                    self._metrics.db_errors.inc()
                    log.warning("tick to %s not applied, retried at the next one (%s)",
                                (now - allowance).isoformat(timespec="seconds"),
                                str(exc).strip().splitlines()[0] if str(exc) else exc)
                    self.close()
                    return False
            self.state = state
            self._metrics.ticks.labels("ran").inc()
            c = self.counts
            c.alerts_opened += applied.alerts_opened
            c.alerts_cleared += applied.alerts_cleared
            c.orders_opened += applied.orders_opened
            record_applied(self._metrics, applied)
            if applied.changed:
                self._on_committed()
            return True

    def tick_target(self, now: datetime, allowance: timedelta) -> datetime:
        """How far a tick moves the rules: the server's clock less ``allowance``, but no further
        past the newest reading than the real time that passed since the last batch. When the
        readings' stamps lag the server's clock (a buffered upload, a replayed storm), a short
        quiet spell must not jump the rules forward by the whole lag and call every device
        that spoke a minute ago silent for an hour."""
        target = now - allowance
        newest = self.state.newest
        if newest is None:
            return target
        bound = newest + max(now - self._last_input, timedelta(0))
        if self.state.clock is not None:
            bound = max(bound, self.state.clock)
        return min(target, bound)

    def adopt(self, change: Callable[[EngineState], EngineState]) -> None:
        """Change the rules' state between batches (a device retired at run time)."""
        with self._lock:
            self.state = change(self.state)

    def run_local(self, work: Callable[[psycopg.Cursor[Any],
                                        Callable[[Sequence[Detection]], Applied] | None], T]
                  ) -> T:
        """Run ``work`` in one transaction under the pipeline's lock, giving it ``evaluate``:
        items made here rather than received (a resident's appeal, ``alerts.appeal_desk``) go
        through the rules and the alert store as a batch's would. The rules' new state is
        adopted only after the commit, as for a batch."""
        with self._lock:
            now = self._clock()
            pending = [self.state]
            applied = Applied()

            def evaluate(items: Sequence[Detection]) -> Applied:
                state, changes = self._engine.evaluate_many(pending[0], items)
                pending[0] = state
                more = self._alerts.apply_changes(cur, changes, now)
                for f in fields(Applied):
                    if f.name != "by_hazard":
                        setattr(applied, f.name, getattr(applied, f.name) + getattr(more, f.name))
                applied.by_hazard.update(more.by_hazard)
                return more

            conn = self._connection()
            try:
                with conn.transaction(), conn.cursor() as cur:
                    self._check_fence(cur)
                    result = work(cur, evaluate)
            except psycopg.OperationalError:
                self.close()
                raise
            self.state = pending[0]
            c = self.counts
            c.alerts_opened += applied.alerts_opened
            c.alerts_cleared += applied.alerts_cleared
            c.orders_opened += applied.orders_opened
            record_applied(self._metrics, applied)
            if applied.changed:
                self._on_committed()
            return result

    def _check_fence(self, cur: psycopg.Cursor[Any]) -> None:
        if self._fence is None:
            return
        try:
            self._fence(cur)
        except Fenced as exc:
            if not self.fenced:
                log.error("%s; this pipeline stops without committing", exc)
            self.fenced = True
            raise

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
            except Fenced:
                return False
            except psycopg.OperationalError as exc:
                self._metrics.db_errors.inc()
                log.warning("database unavailable (%s); %d messages held, retrying in %.1fs",
                            str(exc).strip().splitlines()[0] if str(exc) else exc, len(batch),
                            delay)
                self.close()
                stop.wait(delay)
                # Capped at 2 s: after an outage the backlog is caught up within 2 s of the
                # database returning (one connection attempt per 2 s while it is away is nothing).
                delay = min(delay * 2, 2.0)
        return False

    def process(self, batch: Sequence[Inbound]) -> None:
        with self._lock:
            self._process(batch)

    def _process(self, batch: Sequence[Inbound]) -> None:
        now = self._clock()
        decoded = [(m, self._decoder.decode(m.topic, m.payload, now)) for m in batch]
        conn = self._connection()
        try:
            outcome = self._store_and_evaluate(conn, decoded, now)
        except (psycopg.OperationalError, Fenced):
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
                    self._process([m])
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
        self.clocks = outcome.clock_state
        self._last_input = now
        self._batched = self._batched or outcome.newest is not None  # readings: a fleet lag
        self._ack(batch)
        self._clocks_changed(outcome.clock_changes)
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
            self._check_fence(cur)
            result = store.write_batch(conn, telemetry, events)
            for s in statuses:
                store.mark_presence(conn, s.device_id, s.state == "online", now)
            # Stored as sent (above); from here on, on the server's timeline.
            fresh: list[Telemetry | Event] = [*result.new_telemetry, *result.new_events]
            clock_state, times, clock_changes = clocks.observe(
                self.clocks, [(r.device_id, r.ts) for r in fresh], now, self._clock_params)
            if clock_changes:  # kept with the batch, so a restart resumes with them
                store.save_clock_offsets(conn, {
                    ch.device_id: (ch.new, clock_state.devices[ch.device_id].since)
                    for ch in clock_changes})
            seen: dict[str, datetime] = {}
            readings: list[Telemetry | Event] = [*telemetry, *events]
            for r in readings:
                at = clocks.server_time(clock_state, r.device_id, r.ts, now)
                if r.device_id not in seen or at > seen[r.device_id]:
                    seen[r.device_id] = at
            if seen:
                store.touch_last_seen(conn, seen)
            if self._workers is not None:
                for t in result.new_telemetry:
                    if t.kind == "grid" and t.loc is not None:
                        self._workers.saw(t.device_id, t.loc,
                                          clocks.server_time(clock_state, t.device_id, t.ts, now))
            items = [i if i.ts == at else replace(i, ts=at) for i, at in
                     zip(self._placement.place_many(fresh), times, strict=True)]
            state, changes = self._evaluate(items, now)
            applied = self._alerts.apply_changes(cur, changes, now)
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
                        # At the server's time: a team's phone clock must not decide when it
                        # answered (nor make an answer look older than its order).
                        more = self._alerts.apply_ack(cur, self._stated_time(ack, now), now)
                    applied.acks += more.acks
                    applied.escalations += more.escalations
                    applied.dispatches += more.dispatches
                except AckRefused as exc:
                    rejected.append(Rejection(m.topic, "ack_refused", str(exc), m.payload,
                                              ack.team_id, "dispatch"))
            if rejected:
                store.record_rejections(conn, rejected)
        new = len(result.new_telemetry) + len(result.new_events)
        return BatchOutcome(state, applied, rejected, new, len(readings) - new, clock_state,
                            clock_changes, max(times, default=None))

    def _stated_time(self, ack: DispatchAck, now: datetime) -> DispatchAck:
        """The answer, its own time stamp kept in the note when it disagrees with ours."""
        if ack.ts is None or abs(ack.ts - now) <= self._clock_params.tolerance:
            return ack
        said = ack.ts.isoformat(timespec="seconds").replace("+00:00", "Z")
        return replace(ack, note=f"{ack.note} (sent with ts {said})".lstrip())

    def _clocks_changed(self, changes: Sequence[clocks.ClockChange]) -> None:
        for ch in changes:
            if ch.new == timedelta(0):
                log.info("device %s: clock agrees with the fleet again; its readings are "
                         "evaluated at their own time", ch.device_id)
            else:
                s = ch.new.total_seconds()
                log.warning("device %s: clock %.0f s %s the fleet's; its readings are stored as "
                            "sent and evaluated %.0f s %s", ch.device_id, abs(s),
                            "ahead of" if s > 0 else "behind", abs(s),
                            "earlier" if s > 0 else "later")
        if changes:
            self._metrics.clock_corrected.set(len(self.clocks.corrected()))
        self._metrics.clock_corrections.inc(len([c for c in changes if c.new]))

    def _evaluate(self, placed: Sequence[Observation | Detection], received: datetime
                  ) -> tuple[EngineState, list[AlertChange]]:
        items = sorted(placed, key=lambda i: i.ts)  # stable: readings before events on ties
        if items and (self._watermark is None or items[-1].ts > self._watermark):
            self._watermark = items[-1].ts
        # One engine call per batch: the engine copies its state once, not once per reading.
        return self._engine.evaluate_many(self.state, items, now=self._watermark,
                                          received=received)

    def _count(self, decoded: Sequence[tuple[Inbound, object]], outcome: BatchOutcome) -> None:
        m, c, applied = self._metrics, self.counts, outcome.applied
        c.received += len(decoded)
        c.stored += outcome.new
        c.duplicates += outcome.duplicates
        m.duplicates.inc(outcome.duplicates)
        m.stored.labels("all").inc(outcome.new)
        m.batch_size.observe(len(decoded))
        for inbound, _d in decoded:
            channel = inbound.topic.rsplit("/", 1)[-1]
            m.messages_in.labels(channel if channel in ("telemetry", "event", "status", "ack")
                                 else "other").inc()
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
        if outcome.newest is not None:
            m.event_lag.set((done - outcome.newest).total_seconds())


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
