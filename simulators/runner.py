"""The simulated fleet: step-wise message generation, and publishing it over MQTT in real time.

:meth:`Simulation.messages_until` is pure (no broker, no clock): it steps every device up to a
simulated time and yields contract messages in timestamp order. :meth:`Simulation.run` paces that
stream in real time scaled by ``speed`` and publishes it through ONE paho client for the whole
fleet (MQTT 5, QoS 1): one connection per device would not scale to 10,000 devices.

Presence: at start each device's retained ``status`` is set ``online``, and on a clean stop
``offline``. A connection has only one Last Will, so with the shared connection a crash leaves the
devices ``online`` until the platform's silence timeout marks them offline; per-device Last Wills
come with the plug-in issue (devices that connect on their own).
"""

from __future__ import annotations

import contextlib
import heapq
import json
import logging
import random
import socket
import ssl
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode
from shapely.geometry import Point

from citywatch.config import Device
from simulators.devices import FACTORIES, DeviceSim, Payload, Site
from simulators.devices.base import offset_m, rfc3339
from simulators.errors import SimulatorError
from simulators.scenario import Scenario, ScenarioState, get_scenario

if TYPE_CHECKING:
    from citywatch.config import Config
    from geo.zones import Zone

log = logging.getLogger(__name__)

QOS = 1
PROGRESS_EVERY_S = 1.0
TICK_S = 0.05  # the publishing loop wakes this often (real seconds)
DRAIN_TIMEOUT_S = 5.0  # on stop, how long to wait for the broker to acknowledge what is queued
MIN_FLOOD_PRONE = 2  # water gauges treated as underpasses when zones do not say (see _sites)


@dataclass(frozen=True, slots=True)
class Progress:
    """How far a running simulation is; passed to ``on_progress`` about once a second."""

    sim_time: datetime  # simulated time reached
    real_elapsed_s: float
    sent: dict[str, int]  # telemetry and events handed to the MQTT client, per device kind
    pending: int  # published (status included) but not yet acknowledged, e.g. while disconnected
    connected: bool

    @property
    def sent_total(self) -> int:
        return sum(self.sent.values())

    def describe(self) -> str:
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(self.sent.items()))
        return (f"sim {self.sim_time:%Y-%m-%d %H:%M:%S}Z | sent {self.sent_total} ({kinds}) | "
                f"pending {self.pending} | broker {'up' if self.connected else 'DOWN'}")


# Heap entries are plain tuples (fast to compare): by time, then by an index that keeps the
# order deterministic.
_Tick = tuple[datetime, int]  # (when, device index)
_Pending = tuple[datetime, int, str, bytes, str]  # (ts, order, topic, payload, kind)


def status_topic(kind: str, device_id: str) -> str:
    return f"city/{kind}/{device_id}/status"


def _encode(payload: Payload) -> bytes:
    return json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()


def load_zones(path: Path) -> list[Zone]:
    """The zones of the configured file, or none: the fleet can run without them."""
    if not path.exists():
        log.info("zones file %s not found: simulating without zones", path)
        return []
    try:
        # Imported here: geopandas is optional for the simulator and slow to import.
        from geo.errors import GeoError
        from geo.load import load_zones as read_zones
    except ImportError as exc:
        log.warning("cannot load zones (%s): simulating without zones", exc)
        return []
    try:
        return read_zones(path)
    except GeoError as exc:
        log.warning("zones file unusable, simulating without zones: %s", exc)
        return []


def _sites(devices: Sequence[Device], zones: Sequence[Zone]) -> dict[str, Site]:
    sites = {}
    for d in devices:
        inside = [z for z in zones if z.geometry.covers(Point(d.position))]
        sites[d.id] = Site(tuple(z.id for z in inside), frozenset(z.type for z in inside))
    # Without zones (or with too few gauges in underpasses) nothing would flood; the case-study
    # fleet has its gauges in underpasses, so treat the first gauges by id as underpasses.
    gauges = sorted(d.id for d in devices if d.kind == "water")
    prone = [g for g in gauges if "underpass" in sites[g].zone_types]
    for g in gauges:
        if len(prone) >= min(MIN_FLOOD_PRONE, len(gauges)):
            break
        if g not in prone:
            sites[g] = Site(sites[g].zone_ids, sites[g].zone_types | {"underpass"})
            prone.append(g)
            log.info("water gauge %s: not in an underpass zone; simulated as one", g)
    return sites


def scale_fleet(devices: Sequence[Device], n: int, seed: int) -> list[Device]:
    """``n`` devices in the proportions of kind of ``devices``, for load tests.

    Fewer: the first ones of each kind. More: all of them plus copies placed within 300 m of an
    original, with ids ``{original}-c{number}``.
    """
    if n < 0:
        raise SimulatorError(f"devices {n}: expected 0 or more")
    if n <= len(devices):
        by_kind: dict[str, list[Device]] = {}
        for d in devices:
            by_kind.setdefault(d.kind, []).append(d)
        # Largest remainder, so the kinds keep their shares and the total is exactly n.
        shares = {k: len(v) * n / len(devices) for k, v in by_kind.items()}
        quota = {k: int(s) for k, s in shares.items()}
        for k in sorted(shares, key=lambda k: quota[k] - shares[k])[:n - sum(quota.values())]:
            quota[k] += 1
        return [d for k, v in by_kind.items() for d in v[:quota[k]]]
    rng = random.Random(f"{seed}:fleet")  # noqa: S311 - simulation, not security
    out = list(devices)
    for i in range(n - len(devices)):
        orig = devices[i % len(devices)]
        east, north = rng.uniform(-300, 300), rng.uniform(-300, 300)
        out.append(Device(id=f"{orig.id[:56]}-c{i:06d}", kind=orig.kind, name=orig.name,
                          position=offset_m(orig.position, east, north)))
    return out


class Simulation:
    """The configured fleet living through a scenario, from ``start`` in simulated time.

    ``speed`` is simulated seconds per real second, used only by :meth:`run` (None: the
    scenario's ``default_speed``). ``zones`` replaces the configured zones file; ``devices``
    scales the configured fleet to that many devices (see :func:`scale_fleet`).
    """

    def __init__(self, config: Config, scenario: str | Scenario, seed: int, speed: float | None,
                 start: datetime, *, zones: Sequence[Zone] | None = None,
                 devices: int | None = None) -> None:
        if start.tzinfo is None:
            raise SimulatorError("start: expected a timezone-aware datetime")
        self.config = config
        self.scenario = get_scenario(scenario) if isinstance(scenario, str) else scenario
        self.speed = self.scenario.default_speed if speed is None else speed
        if self.speed <= 0:
            raise SimulatorError(f"speed {speed}: expected more than 0")
        self.seed = seed
        self.start = start.astimezone(UTC)
        self.interval_s = config.simulator.telemetry_interval_s
        fleet = list(config.devices) if devices is None else scale_fleet(config.devices, devices,
                                                                        seed)
        known = []
        for d in fleet:
            if d.kind in FACTORIES:
                known.append(d)
            else:
                log.warning("device %s: kind %r has no simulator; skipped", d.id, d.kind)
        self.zones = list(load_zones(config.zones_path) if zones is None else zones)
        self.state = ScenarioState.build(self.scenario, self.start, seed, known, self.zones)
        sites = _sites(known, self.zones)
        self.devices: list[DeviceSim] = []
        self._ticks: list[_Tick] = []
        self._last: list[datetime] = []
        for i, d in enumerate(known):
            # Per device, so adding a device leaves the others' values alone.
            rng = random.Random(f"{seed}:{d.id}")  # noqa: S311 - simulation, not security
            self.devices.append(FACTORIES[d.kind](d, sites[d.id], rng))
            # Spread first reports over one interval so the fleet does not publish in bursts.
            first = self.start + timedelta(seconds=rng.uniform(0, self.interval_s))
            self._ticks.append((first, i))
            self._last.append(self.start)
        heapq.heapify(self._ticks)
        self._out: list[_Pending] = []
        self._order = 0
        self.sim_time = self.start

    def status_messages(self, state: str) -> list[tuple[str, bytes]]:
        """Retained presence for every simulated device (CONTRACT section 1, status)."""
        body = _encode({"state": state})
        return [(status_topic(d.kind, d.id), body) for d in self.devices]

    def messages_until(self, t: datetime) -> Iterator[tuple[str, bytes]]:
        """Telemetry and events with timestamps up to ``t``, in timestamp order, each once."""
        for _, _, topic, payload, _ in self._until(t):
            yield topic, payload

    def _until(self, t: datetime,
               stamp: Callable[[datetime], datetime] | None = None) -> Iterator[_Pending]:
        # A device reports what happened since its previous tick, stamped when it happened, so
        # step one interval ahead: then nothing stamped before t can still be missing.
        horizon = t + timedelta(seconds=self.interval_s)
        interval = timedelta(seconds=self.interval_s)
        while self._ticks and self._ticks[0][0] <= horizon:
            at, i = heapq.heappop(self._ticks)
            dev = self.devices[i]
            dt = (at - self._last[i]).total_seconds()
            for channel, payload in dev.step(at, dt, self.state):
                ts = datetime.fromisoformat(payload["ts"])
                if stamp is not None:
                    payload["ts"] = rfc3339(stamp(ts))
                self._order += 1
                heapq.heappush(self._out, (ts, self._order, f"city/{dev.kind}/{dev.id}/{channel}",
                                           _encode(payload), dev.kind))
            self._last[i] = at
            heapq.heappush(self._ticks, (at + interval, i))
        self.sim_time = max(self.sim_time, t)
        while self._out and self._out[0][0] <= t:
            yield heapq.heappop(self._out)

    def run(self, broker_url: str, stop: threading.Event, duration_s: float | None = None,
            on_progress: Callable[[Progress], None] | None = None, *,
            timestamps: Literal["wall", "simulated"] = "wall") -> Progress:
        """Publish the fleet in real time until ``stop`` is set or ``duration_s`` real seconds pass.

        The broker may be down at start or drop later: paho reconnects with backoff and keeps
        QoS 1 messages queued meanwhile, so nothing is lost and every device's seq stays in order.

        ``timestamps="wall"`` (default) stamps each message with the wall-clock time it is due,
        i.e. simulated time compressed by ``speed``: at any speed above 1 simulated time runs ahead
        of the clock, and the platform rejects readings from the future. ``"simulated"`` stamps
        simulated time, for replays from a past ``start`` that stay behind the clock.
        """
        client = _client(broker_url, self.seed)
        counters = _Counters()
        client.on_connect = counters.on_connect
        client.on_disconnect = counters.on_disconnect
        client.on_publish = counters.on_publish
        host, port = _host_port(broker_url)
        client.connect_async(host, port, keepalive=30)
        client.loop_start()
        sent: Counter[str] = Counter()
        published = 0

        def publish(topic: str, payload: bytes, *, retain: bool = False) -> None:
            nonlocal published
            # Never fails for want of a connection: paho queues QoS 1 messages until it has one.
            client.publish(topic, payload, qos=QOS, retain=retain)
            published += 1

        def progress() -> Progress:
            return Progress(sim_time=self.sim_time, real_elapsed_s=time.monotonic() - real0,
                            sent=dict(sent), pending=published - counters.acked,
                            connected=counters.connected)

        real0 = time.monotonic()
        try:
            for topic, body in self.status_messages("online"):
                publish(topic, body, retain=True)
            seen_connects = 1  # the first connection delivers what is queued above
            sim0 = self.sim_time
            wall0 = datetime.now(UTC)

            def wall(ts: datetime) -> datetime:
                return wall0 + (ts - sim0) / self.speed

            stamp = wall if timestamps == "wall" else None
            next_progress = 0.0
            while not stop.is_set():
                elapsed = time.monotonic() - real0
                if duration_s is not None and elapsed >= duration_s:
                    break
                if counters.connects > seen_connects:
                    # A broker restarted without persistence has forgotten retained presence.
                    seen_connects = counters.connects
                    for topic, body in self.status_messages("online"):
                        publish(topic, body, retain=True)
                for _, _, topic, payload, kind in self._until(
                        sim0 + timedelta(seconds=elapsed * self.speed), stamp):
                    publish(topic, payload)
                    sent[kind] += 1
                if on_progress is not None and elapsed >= next_progress:
                    next_progress = elapsed + PROGRESS_EVERY_S
                    on_progress(progress())
                stop.wait(TICK_S)
            for topic, body in self.status_messages("offline"):
                publish(topic, body, retain=True)
            deadline = time.monotonic() + DRAIN_TIMEOUT_S
            while counters.acked < published and time.monotonic() < deadline:
                time.sleep(0.02)
            if counters.acked < published:
                log.warning("stopping with %d messages the broker has not acknowledged",
                            published - counters.acked)
            final = progress()
            if on_progress is not None:
                on_progress(final)
            return final
        finally:
            counters.closing = True
            client.disconnect()
            client.loop_stop()


class _Counters:
    """State paho's network thread updates; the callbacks only count (nothing slow there)."""

    def __init__(self) -> None:
        self.connects = 0
        self.connected = False
        self.acked = 0
        self.closing = False  # we are disconnecting on purpose

    def on_connect(self, _client: mqtt.Client, _userdata: Any, _flags: mqtt.ConnectFlags,
                   reason_code: ReasonCode, _properties: Any) -> None:
        if not reason_code.is_failure:
            self.connects += 1
            self.connected = True
            log.info("connected to the broker")
        else:
            log.warning("broker refused the connection: %s", reason_code)

    def on_disconnect(self, _client: mqtt.Client, _userdata: Any,
                      _flags: mqtt.DisconnectFlags, reason_code: ReasonCode,
                      _properties: Any) -> None:
        if self.closing:
            log.info("disconnected from the broker")
        elif self.connected:
            log.warning("disconnected from the broker (%s); reconnecting", reason_code)
        self.connected = False

    def on_publish(self, _client: mqtt.Client, _userdata: Any, _mid: int,
                   _reason_code: ReasonCode, _properties: Any) -> None:
        self.acked += 1  # only this thread writes it; readers tolerate a stale value


def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise SimulatorError(f"broker URL {url!r}: expected mqtt://[user:pass@]host[:port]")
    try:
        port = parts.port
    except ValueError:
        raise SimulatorError(f"broker URL {url!r}: the port is not a number") from None
    return parts.hostname, port or (8883 if parts.scheme == "mqtts" else 1883)


def _no_delay(_client: mqtt.Client, _userdata: object, sock: object) -> None:
    # paho leaves Nagle on; with it, each QoS 1 publish waits on the peer's delayed ACK.
    with contextlib.suppress(AttributeError, OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # type: ignore[attr-defined]


def _client(url: str, seed: int) -> mqtt.Client:
    _host_port(url)  # validate before anything starts
    parts = urlsplit(url)
    # Unique per run: two simulators on one broker must not take over each other's connection.
    client = mqtt.Client(CallbackAPIVersion.VERSION2,
                         client_id=f"citywatch-sim-{seed}-{uuid.uuid4().hex[:8]}",
                         protocol=mqtt.MQTTv5)
    if parts.username:
        client.username_pw_set(unquote(parts.username),
                               unquote(parts.password) if parts.password else None)
    if parts.scheme == "mqtts":
        client.tls_set_context(ssl.create_default_context())
    client.on_socket_open = _no_delay
    client.reconnect_delay_set(min_delay=1, max_delay=30)
    client.max_queued_messages_set(0)  # unbounded: keep everything while the broker is away
    # paho's default of 20 in flight stays: Mosquitto's default receive maximum is 20 too, and paho
    # cannot follow the broker's value once connected.
    return client
