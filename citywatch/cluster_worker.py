"""An engine worker past one machine: NATS JetStream in, partitions leased, the same Pipeline.

    python -m citywatch.cluster_worker --nats URL[,URL...] --database URL --worker-id w1 \\
        --mqtt-ports 1883,1884 [--config config.yaml]

Devices speak MQTT to any node of a NATS cluster (scripts/cluster/natscluster.py). A QoS 1
publish is acknowledged by NATS only once it is stored, replicated, in the ``$MQTT_msgs`` stream.
From there (docs/SCALE.md says why each step is so):

1. **Route.** Every worker also runs a router: it pulls from one shared durable consumer on
   ``$MQTT_msgs``, publishes each message to ``cwp.{partition}.{h|m}.{subject}`` in the
   replicated work-queue stream ``CW_PARTS`` (``h``: the device's home partition, stored and
   evaluated there; ``m``: a mirror, evaluated only: rain over a catchment, a camera's impact
   across a street's edge, a grid worker's report), waits for JetStream's acknowledgements and
   only then acknowledges the original. The message id is the original's stream sequence and
   the partition, so a router killed between the two re-publishes into JetStream's duplicate
   window and nothing is routed twice.
2. **Lease.** A partition is owned by the worker holding its key in the replicated KV bucket
   ``cw_leases`` (TTL ``LEASE_TTL_S``, renewed every ``RENEW_S`` with compare-and-set). Workers
   heartbeat there too; each aims at ceil(partitions / live workers), releasing extras and
   claiming free ones. A worker that cannot renew in time stops its pipelines before its lease
   can expire (self-fencing), so a zone's state is live in one worker at a time. Behind that
   fence by time is one by token: a claim takes the partition's next epoch in PostgreSQL and
   every transaction of its pipeline checks it (``citywatch.cluster_fence``), so a worker that
   was paused past its lease cannot commit once it wakes.
3. **Evaluate.** An owned partition runs the single-machine ``Pipeline`` with an ``Engine`` that
   knows only that partition's zones and home devices, its state restored from PostgreSQL (the
   open alerts' levels, the devices' clock offsets) before its first message. The pipeline
   acknowledges its durable consumer ``part-{partition}`` after the commit, as it acknowledges
   MQTT on one machine: a worker killed mid-batch leaves its messages to be redelivered to the
   next owner, and the database recognises the ones already stored.

One worker also holds the ``singleton`` lease: the outbox (dispatches and zone states, published
over MQTT so teams and displays see QoS 1 and retained messages as on one machine), deadlines and
presence.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import nats
import psycopg
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from alerts import appeal_store, users
from alerts import store as alert_store
from alerts.dispatch import OutboxPublisher
from citywatch import clocks, cluster_fence
from citywatch.clocks import ClockParams
from citywatch.cluster_nats import (
    LEASE_TTL_S,
    LEASES,
    MAX_ACK_PENDING,
    MQTT_PREFIX,
    MQTT_STREAM,
    PARTS_STREAM,
    ROUTER,
    RotatingPublisher,
    ensure_topology,
    nats_options,
    touch_mqtt,
)
from citywatch.config import Config, load_config
from citywatch.ingest_queue import IngestQueue
from citywatch.metrics import Metrics
from citywatch.pipeline import Pipeline
from citywatch.service import build_alert_store, build_decoder, build_placement
from geo.load import load_zones
from geo.partitions import HOME, Partitioning, Site, partition
from rules.base import Detection, Observation
from rules.engine import CAMERA_RANGE_M, Engine, EngineState
from sensing import store as sensing_store
from sensing.decode import Decoder
from sensing.models import Event, Rejection, Telemetry
from sensing.mqtt import Inbound
from sensing.topics import deadletter_topic

log = logging.getLogger("citywatch.cluster")

RENEW_S = 1.0  # leases are renewed this often; they live LEASE_TTL_S (citywatch.cluster_nats)
KV_TIMEOUT_S = 2.0
FENCE_S = 7.0  # stop evaluating if no renewal succeeded for this long (< LEASE_TTL_S)
WORKERS_KEY = "workers"  # {worker: unix time of its last round}: one key, no listing
SINGLETON = "singleton"
DEVICE_CHANNELS = ("telemetry", "event", "status")  # sensing.topics.SUBSCRIPTIONS


def subject_to_topic(subject: str) -> str:
    return subject.replace(".", "/")


def part_key(p: str) -> str:
    return f"p.{p}"


@dataclass
class Owned:
    """A partition this worker owns: its pipeline on a thread, and what it has not acked."""

    name: str
    revision: int
    pipeline: Pipeline
    decoder: Decoder
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    fetch: asyncio.Task[None] | None = None
    pending: dict[int, Msg] = field(default_factory=dict)
    next_mid: int = 1
    lock: threading.Lock = field(default_factory=threading.Lock)


class ClusterWorker:
    def __init__(self, cfg: Config, nats_urls: Sequence[str], database_url: str,
                 worker_id: str, mqtt_ports: Sequence[int], mqtt_password: str) -> None:
        self.cfg = cfg
        self.nats_urls = list(nats_urls)
        self.db = database_url
        self.me = worker_id
        self.zones = load_zones(cfg.zones_path)
        self.placement = build_placement(cfg, self.zones)
        self.parts: Partitioning = partition(
            self.zones, [Site(s.device_id, s.kind, s.position, s.zone_ids)
                         for s in self.placement.sites()],
            catchment_radius_m=cfg.rules.waterlogging.rain.catchment_radius_m,
            camera_range_m=CAMERA_RANGE_M)
        self.alert_store, self.locator = build_alert_store(cfg, self.zones)
        self.metrics = Metrics()
        self.owned: dict[str, Owned] = {}
        self.singleton_rev: int | None = None
        self._singleton_stop: threading.Event | None = None
        self._singleton_threads: list[threading.Thread] = []
        self.last_renewed = time.monotonic()
        self.mqtt_ports = list(mqtt_ports)
        self.mqtt_password = mqtt_password
        self.loop: asyncio.AbstractEventLoop | None = None
        self.nc: Any = None
        self.js: JetStreamContext | None = None
        self.kv: KeyValue | None = None
        self._stopping = asyncio.Event()
        self.routed = 0

    # --- set-up ---------------------------------------------------------------------------
    def migrate(self) -> None:
        with psycopg.connect(self.db, autocommit=True) as conn:
            # Workers start together: one migrates at a time.
            conn.execute("SELECT pg_advisory_lock(7212012)")
            try:
                sensing_store.migrate(conn, retention_days=self.cfg.database.retention_days)
                alert_store.migrate(conn)
                appeal_store.migrate(conn)
                cluster_fence.migrate(conn)
                users.migrate(conn)
                sensing_store.upsert_devices(conn, [
                    sensing_store.DeviceSpec(d.id, d.kind, d.position,
                                             self.placement.device_zones(d.id))
                    for d in self.cfg.devices])
            finally:
                conn.execute("SELECT pg_advisory_unlock(7212012)")

    async def ensure_streams(self) -> None:
        js = self.js
        assert js is not None
        # NATS makes its MQTT streams when the first MQTT client connects: be that client.
        if self.mqtt_ports:
            await asyncio.to_thread(touch_mqtt, self.mqtt_ports[0], self.mqtt_password,
                                    f"citywatch-setup-{self.me}")
        # A busy or electing cluster times requests out (seen at start under load): a worker
        # keeps trying, as it does once running, instead of dying before its first lease.
        delay = 0.5
        while True:
            try:
                await ensure_topology(js, self.parts.partitions)
                self.kv = await self.kv_js.key_value(LEASES)
                return
            except (nats.errors.TimeoutError, nats.errors.NoRespondersError,
                    nats.js.errors.ServiceUnavailableError) as exc:
                if self._stopping.is_set():
                    raise
                log.warning("worker %s: JetStream not ready (%s); trying again in %.1f s",
                            self.me, type(exc).__name__, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    # --- routing ---------------------------------------------------------------------------
    async def route_loop(self) -> None:
        js = self.js
        assert js is not None
        sub = await js.pull_subscribe_bind(ROUTER, MQTT_STREAM)
        while not self._stopping.is_set():
            try:
                msgs = await sub.fetch(200, timeout=1)
            except (TimeoutError, nats.errors.TimeoutError):
                continue
            except Exception as exc:  # broker node gone: the client reconnects
                log.warning("router fetch failed (%s); retrying", exc)
                await asyncio.sleep(0.5)
                continue
            try:
                await self.route(js, msgs)
            except Exception as exc:
                # Not acknowledged: redelivered after ACK_WAIT_S, deduplicated by message id.
                log.warning("routing %d messages failed (%s); they come again", len(msgs), exc)
                await asyncio.sleep(0.5)

    async def route(self, js: JetStreamContext, msgs: Sequence[Msg]) -> None:
        sends = []
        for m in msgs:
            subject = m.subject.removeprefix(MQTT_PREFIX)
            parts = subject.split(".")
            seq = m.metadata.sequence.stream
            if len(parts) != 4 or parts[0] != "city":
                continue  # not for the engine (the single-machine engine never subscribes)
            if parts[1] == "dispatch":
                if parts[3] != "ack":
                    continue  # our own dispatches, published by the outbox
                targets = [(self.parts.partitions[0], HOME)]  # a team's answer: not zone state
            elif parts[3] in DEVICE_CHANNELS:
                targets = self.parts.route(parts[2], parts[3])
            else:
                continue  # zone states, dead letters: ours
            for p, how in targets:
                sends.append(js.publish(f"cwp.{p}.{how}.{subject}", m.data, stream=PARTS_STREAM,
                                        headers={"Nats-Msg-Id": f"{seq}.{p}"}))
        await asyncio.gather(*sends)
        await asyncio.gather(*(m.ack() for m in msgs))
        self.routed += len(msgs)

    # --- leases ----------------------------------------------------------------------------
    async def lease_loop(self) -> None:
        while not self._stopping.is_set():
            started = time.monotonic()
            try:
                # A hung round must not carry us past the fence (nor the fence past the TTL).
                left = FENCE_S - (time.monotonic() - self.last_renewed)
                await asyncio.wait_for(self.lease_round(),
                                       max(0.1, min(RENEW_S + 2 * KV_TIMEOUT_S, left)))
                self.last_renewed = started
            except Exception as exc:
                log.warning("lease round failed (%s)", str(exc) or type(exc).__name__)
            if time.monotonic() - self.last_renewed > FENCE_S and (self.owned or
                                                                   self.singleton_rev):
                log.error("leases not renewed for %.1f s: stopping every partition before "
                          "another worker may take them", time.monotonic() - self.last_renewed)
                for p in list(self.owned):
                    await self.release(p, delete=False)
                self.stop_singleton()
            await asyncio.sleep(max(0.0, RENEW_S - (time.monotonic() - started)))

    async def lease_round(self) -> None:
        kv = self.kv
        assert kv is not None
        for p, o in list(self.owned.items()):
            if o.pipeline.fenced:  # another worker took it (we were paused past the lease)
                await self.release(p, delete=False)
                continue
            try:
                o.revision = await kv.update(part_key(p), self.me.encode(), last=o.revision)
            except KeyWrongLastSequenceError:
                log.error("partition %s: lease lost; stopping it", p)
                await self.release(p, delete=False)
        live = await self.heartbeat(kv)
        await self.singleton_round(kv)
        target = math.ceil(len(self.parts.partitions) / max(1, len(live)))
        for p in sorted(self.owned, reverse=True)[: max(0, len(self.owned) - target)]:
            log.info("partition %s: released for balance (%d workers)", p, len(live))
            await self.release(p, delete=True)
        if len(self.owned) >= target:
            return
        for p in self.parts.partitions:
            if p in self.owned:
                continue
            try:
                rev = await kv.create(part_key(p), self.me.encode())
            except KeyWrongLastSequenceError:
                continue  # someone else's
            await self.claim(p, rev)
            if len(self.owned) >= target:
                return

    async def heartbeat(self, kv: KeyValue, leaving: bool = False) -> list[str]:
        """Note this worker alive (or gone) in the workers key; the workers alive."""
        for _ in range(5):
            try:
                entry = await kv.get(WORKERS_KEY)
                seen = json.loads(entry.value or b"{}")
                rev: int | None = entry.revision
            except KeyNotFoundError:
                seen, rev = {}, None
            now = time.time()
            seen = {w: t for w, t in seen.items() if now - t < LEASE_TTL_S}
            if leaving:
                seen.pop(self.me, None)
            else:
                seen[self.me] = now
            body = json.dumps(seen).encode()
            try:
                if rev is None:
                    await kv.create(WORKERS_KEY, body)
                else:
                    await kv.update(WORKERS_KEY, body, last=rev)
                return sorted(seen)
            except KeyWrongLastSequenceError:
                continue  # another worker's heartbeat came first
        return [self.me]

    async def singleton_round(self, kv: KeyValue) -> None:
        if self.singleton_rev is not None:
            try:
                self.singleton_rev = await kv.update(SINGLETON, self.me.encode(),
                                                     last=self.singleton_rev)
            except KeyWrongLastSequenceError:
                self.stop_singleton()
            return
        try:
            self.singleton_rev = await kv.create(SINGLETON, self.me.encode())
        except KeyWrongLastSequenceError:
            return
        self.start_singleton()

    async def claim(self, p: str, revision: int) -> None:
        """Own partition ``p``: restore its state from PostgreSQL, then start consuming."""
        t0 = time.monotonic()
        owned = await asyncio.to_thread(self.build, p, revision)
        self.owned[p] = owned
        owned.thread = threading.Thread(target=owned.pipeline.run, args=(owned.stop,),
                                        name=f"partition-{p}", daemon=True)
        owned.thread.start()
        owned.fetch = asyncio.ensure_future(self.fetch_loop(owned))
        log.info("partition %s: claimed by %s, state restored in %.2f s", p, self.me,
                 time.monotonic() - t0)

    def build(self, p: str, revision: int) -> Owned:
        zone_ids = self.parts.zones_of(p)
        devices = self.parts.devices_of(p)
        engine = Engine(self.cfg.rules, {z.id: z for z in self.zones if z.id in zone_ids},
                        [s for s in self.placement.sites() if s.device_id in devices])
        rain = self.rain_readers(p)
        rain_p = self.cfg.rules.waterlogging.rain
        hours = max((s.hours for s in rain_p.signals.values()), default=0.0)
        with psycopg.connect(self.db) as conn:
            # First the epoch (it waits for a batch of the previous owner under way), then the
            # state that batch left.
            epoch = cluster_fence.claim(conn, p, self.me)
            levels = {k: v for k, v in alert_store.open_levels(conn).items()
                      if k[0] in zone_ids}
            offsets = sensing_store.load_clock_offsets(conn)
            recent = (sensing_store.recent_telemetry(
                conn, rain, datetime.now(UTC) - timedelta(hours=hours))
                if rain and rain_p.enabled else [])
        state = with_rain(engine, engine.restore(levels), self.placement.place_many(recent))
        owned_box: list[Owned] = []
        pipeline = Pipeline(
            conninfo=self.db, decoder=build_decoder(self.cfg), engine=engine,
            state=state, placement=self.placement, alert_store=self.alert_store,
            ack=lambda batch: self.ack(owned_box[0], batch), dead_letter=self.dead_letter,
            on_committed=self.outbox_notify, metrics=self.metrics,
            batch_max=self.cfg.database.batch_max,
            batch_wait_s=self.cfg.database.batch_wait_ms / 1000, workers=self.locator,
            clock_params=ClockParams(timedelta(seconds=self.cfg.clocks.skew_tolerance_s),
                                     timedelta(seconds=self.cfg.clocks.skew_confirm_s)),
            ingest_queue=IngestQueue.for_receive_maximum(MAX_ACK_PENDING),
            fence=cluster_fence.EpochFence(p, epoch))
        pipeline.clocks = clocks.restore(offsets)
        owned = Owned(p, revision, pipeline, build_decoder(self.cfg))
        owned_box.append(owned)
        return owned

    def rain_readers(self, p: str) -> list[str]:
        """The rain gauges whose telemetry partition ``p`` reads (its own and mirrored)."""
        return sorted(s.device_id for s in self.placement.sites() if s.kind == "rain"
                      and any(q == p for q, _how in self.parts.route(s.device_id, "telemetry")))

    async def release(self, p: str, *, delete: bool) -> None:
        owned = self.owned.pop(p, None)
        if owned is None:
            return
        owned.stop.set()
        if owned.fetch is not None:
            owned.fetch.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await owned.fetch
        if owned.thread is not None:
            await asyncio.to_thread(owned.thread.join, 30)
        with owned.lock:
            left = list(owned.pending.values())
            owned.pending.clear()
        # Fetched, not committed: the next owner gets them at once instead of after ACK_WAIT_S.
        for m in left:
            with contextlib.suppress(Exception):
                await m.nak()
        if delete and self.kv is not None:
            with contextlib.suppress(Exception):
                await self.kv.delete(part_key(p), last=owned.revision)

    # --- consuming -------------------------------------------------------------------------
    async def fetch_loop(self, owned: Owned) -> None:
        js = self.js
        assert js is not None
        sub = await js.pull_subscribe_bind(f"part-{owned.name}", PARTS_STREAM)
        while not owned.stop.is_set():
            try:
                msgs = await sub.fetch(250, timeout=1)
            except (TimeoutError, nats.errors.TimeoutError):
                continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("partition %s: fetch failed (%s); retrying", owned.name, exc)
                await asyncio.sleep(0.5)
                continue
            await asyncio.to_thread(self.take, owned, msgs)

    def take(self, owned: Owned, msgs: Sequence[Msg]) -> None:
        now = datetime.now(UTC)
        mirrors: list[Msg] = []
        for m in msgs:
            _cwp, _p, how, subject = m.subject.split(".", 3)
            if how != HOME:
                mirrors.append(m)
                continue
            with owned.lock:
                mid = owned.next_mid
                owned.next_mid += 1
                owned.pending[mid] = m
            owned.pipeline.submit(Inbound(subject_to_topic(subject), m.data, mid, 1, now))
        if mirrors:
            self.evaluate_mirrors(owned, mirrors, now)

    def evaluate_mirrors(self, owned: Owned, msgs: Sequence[Msg], now: datetime) -> None:
        """Readings another partition stores, evaluated here too (rain over a catchment, ...):
        through the rules and the alert store in one transaction, not stored again."""
        readings: list[Telemetry | Event] = []
        for m in msgs:
            subject = m.subject.split(".", 3)[3]
            d = owned.decoder.decode(subject_to_topic(subject), m.data, now)
            if isinstance(d, Telemetry | Event):
                readings.append(d)
        if readings:
            items = sorted(self.placement.place_many(readings), key=lambda i: i.ts)
            # run_local's evaluate is typed for detections (appeals); the engine takes readings
            # as well, through the same evaluate_many.
            try:
                owned.pipeline.run_local(
                    lambda _cur, evaluate: evaluate(items) if evaluate else None)  # type: ignore[arg-type]
            except cluster_fence.Fenced:
                return  # not ours any more: the new owner evaluates them
        self.ack_msgs(msgs)

    def ack(self, owned: Owned, batch: Sequence[Inbound]) -> None:
        with owned.lock:
            msgs = [m for i in batch if (m := owned.pending.pop(i.mid, None)) is not None]
        self.ack_msgs(msgs)

    def ack_msgs(self, msgs: Sequence[Msg]) -> None:
        async def send() -> None:
            for m in msgs:
                with contextlib.suppress(Exception):  # lost: redelivered, recognised as stored
                    await m.ack()
        if self.loop is not None and msgs:
            asyncio.run_coroutine_threadsafe(send(), self.loop)

    def dead_letter(self, rej: Rejection) -> None:
        """Logged, and published on city/deadletter/... as on one machine (the rejection is
        also stored, with the batch)."""
        log.warning("rejected %r from device %s: %s (%s)", rej.topic, rej.device_id or "?",
                    rej.reason, rej.detail)
        body = {"reason": rej.reason, "detail": rej.detail, "topic": rej.topic,
                "payload": rej.payload[:4096].decode("utf-8", "replace"),
                "ts": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")}
        subject = deadletter_topic(rej.kind, rej.device_id).replace("/", ".")
        if self.loop is not None and self.nc is not None:
            asyncio.run_coroutine_threadsafe(
                self.nc.publish(subject, json.dumps(body, ensure_ascii=True).encode()), self.loop)

    def tick_loop(self, stop: threading.Event) -> None:
        allowance = timedelta(seconds=self.cfg.clocks.allowance_s)
        while not stop.wait(self.cfg.clocks.tick_every_s):
            for owned in list(self.owned.values()):
                if may_tick(owned.pipeline, allowance, datetime.now(UTC), time.monotonic()):
                    with contextlib.suppress(Exception):
                        owned.pipeline.tick(allowance)

    # --- the singleton: outbox, deadlines -------------------------------------------------------
    def outbox_notify(self) -> None:
        ob = getattr(self, "_outbox", None)
        if ob is not None:
            ob.notify()

    def start_singleton(self) -> None:
        log.info("singleton (outbox, deadlines) taken by %s", self.me)
        stop = self._singleton_stop = threading.Event()
        link = RotatingPublisher([("127.0.0.1", p) for p in self.mqtt_ports], "engine",
                                 self.mqtt_password, f"citywatch-outbox-{self.me}")
        self._outbox = OutboxPublisher(self.db, link.publish, link.connected.is_set)

        def outbox() -> None:
            try:
                self._outbox.run(stop)
            finally:
                link.stop()

        def deadlines() -> None:
            while not stop.wait(self.cfg.work_orders.check_every_s):
                try:
                    with psycopg.connect(self.db) as conn:
                        applied = self.alert_store.check(conn, datetime.now(UTC))
                    if applied.changed:
                        self._outbox.notify()
                except psycopg.OperationalError as exc:
                    log.warning("deadline check skipped (%s)", exc)

        self._singleton_threads = [threading.Thread(target=f, daemon=True, name=f.__name__)
                                   for f in (outbox, deadlines)]
        for t in self._singleton_threads:
            t.start()

    def stop_singleton(self) -> None:
        if self._singleton_stop is not None:
            self._singleton_stop.set()
        self._singleton_stop, self.singleton_rev = None, None

    # --- running ---------------------------------------------------------------------------
    async def run(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.nc = await nats.connect(**nats_options(self.nats_urls), name=f"citywatch-{self.me}",
                                     max_reconnect_attempts=-1, reconnect_time_wait=0.5,
                                     connect_timeout=2)
        self.js = self.nc.jetstream(timeout=5)
        self.kv_js = self.nc.jetstream(timeout=KV_TIMEOUT_S)
        await self.ensure_streams()
        stop_ticks = threading.Event()
        ticker = threading.Thread(target=self.tick_loop, args=(stop_ticks,), daemon=True)
        ticker.start()
        tasks = [asyncio.ensure_future(self.route_loop()),
                 asyncio.ensure_future(self.lease_loop())]
        log.info("worker %s: %d partitions in the cluster: %s", self.me,
                 len(self.parts.partitions), ", ".join(self.parts.partitions))
        await self._stopping.wait()
        log.info("worker %s stopping: releasing %d partitions", self.me, len(self.owned))
        for t in tasks:
            t.cancel()
        for p in list(self.owned):
            await self.release(p, delete=True)
        self.stop_singleton()
        stop_ticks.set()
        if self.kv is not None:
            with contextlib.suppress(Exception):
                await self.heartbeat(self.kv, leaving=True)
        # Not drain(): it waits on the pull subscriptions' inboxes, which never end here.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.nc.close(), 5)

    def request_stop(self) -> None:
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self._stopping.set)


def may_tick(pipeline: Pipeline, allowance: timedelta, now: datetime, mono: float) -> bool:
    """Whether a partition's rules may move on the server's clock. The pipeline's own test
    (``caught_up``) judges a backlog by the lag of the fleet it sees; a partition sees a few
    devices, and after a move a fresh pipeline judged a draining storm current: its tick found
    the gauges silent (seen in the broker-node kill). So, besides: the partition's rules are
    within ``allowance`` of the server's clock, or nothing was stored for ``allowance``."""
    if pipeline.last_progress is None or mono - pipeline.last_progress >= allowance.total_seconds():
        return True
    clock = pipeline.state.clock
    return clock is None or now - clock <= 2 * allowance


def with_rain(engine: Engine, state: EngineState, recent: Sequence[Observation | Detection]
              ) -> EngineState:
    """``state`` with the rain accumulations rebuilt from the gauges' recent readings (their
    longest signal window, from PostgreSQL): a partition's new owner keeps the catchments' rain
    signals instead of starting them from zero. Only the rain is taken from the replay; the
    levels stay those of the open alerts, and nothing the replay would emit is emitted (the old
    owner did that when the readings came)."""
    if not recent:
        return state
    replayed, _ = engine.evaluate_many(engine.restore({}), sorted(recent, key=lambda i: i.ts))
    replayed, _ = engine.flush(replayed)  # the reorder window's held readings too
    return replace(state, rain=replayed.rain)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m citywatch.cluster_worker",
                                 description="an engine worker on a NATS cluster")
    ap.add_argument("--config", type=Path, default=Path("config.yaml"))
    ap.add_argument("--nats", required=True, help="comma-separated nats:// URLs")
    ap.add_argument("--database", default=os.environ.get("CITYWATCH_DATABASE_URL"))
    ap.add_argument("--worker-id", required=True)
    ap.add_argument("--mqtt-ports", default="", help="the nodes' MQTT ports, for the outbox")
    ap.add_argument("--mqtt-password", default=os.environ.get("CITYWATCH_MQTT_PASSWORD", ""))
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not a.database:
        ap.error("--database (or CITYWATCH_DATABASE_URL) is required")
    cfg = load_config(a.config)
    worker = ClusterWorker(cfg, a.nats.split(","), a.database, a.worker_id,
                           [int(p) for p in a.mqtt_ports.split(",") if p], a.mqtt_password)
    worker.migrate()

    def on_signal(_sig: int, _frame: object) -> None:
        worker.request_stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    asyncio.run(worker.run())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
