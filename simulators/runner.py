"""The simulated fleet: step-wise message generation, and publishing it over MQTT in real time.

:meth:`Simulation.messages_until` is pure (no broker, no clock): it steps every device up to a
simulated time and yields contract messages in timestamp order, stamped with simulated time;
:meth:`Simulation.ground_truth` says what really happened meanwhile. :meth:`Simulation.run`
paces the same stream in real time scaled by ``speed`` and publishes it (see
:mod:`simulators.links` for the connections: one per device up to :data:`PER_DEVICE_MAX`
devices, shared beyond), answers dispatched warnings as the teams (:mod:`simulators.teams`) and
writes the ground truth as it goes.
"""

from __future__ import annotations

import heapq
import json
import logging
import os
import queue
import random
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import paho.mqtt.client as mqtt
from paho.mqtt.reasoncodes import ReasonCode

from simulators.configured import DeviceConfig, FleetDevice
from simulators.credentials import FleetCredentials
from simulators.devices import DeviceSim, Payload, Site, factories
from simulators.devices.base import offset_m, rfc3339
from simulators.errors import SimulatorError
from simulators.faults import FaultyDevice
from simulators.groundtruth import TruthRecorder
from simulators.links import (
    DeviceLinks,
    Links,
    SharedLinks,
    paho_client,
    parse_url,
    shared_groups,
    status_topic,
)
from simulators.scenario import Scenario, ScenarioState, load_scenario
from simulators.teams import Responder
from simulators.truth import GroundTruth

if TYPE_CHECKING:
    from geo.zones import Zone
    from sensing.plugins import Plugin
    from simulators.configured import SimConfig

log = logging.getLogger(__name__)

QOS = 1
PROGRESS_EVERY_S = 1.0
TRUTH_EVERY_S = 10.0  # the truth file is rewritten this often, so a killed run still leaves one
TICK_S = 0.05  # the publishing loop wakes this often (real seconds)
DRAIN_TIMEOUT_S = 5.0  # on stop, how long to wait for the broker to acknowledge what is queued
MIN_FLOOD_PRONE = 2  # water gauges treated as underpasses when zones do not say (see _sites)
PER_DEVICE_MAX = 500  # beyond this many devices, connections are shared (see simulators.links)
DISPATCH_FILTER = "city/dispatch/+"
Connections = Literal["auto", "per-device", "shared"]
_WATCHED_KINDS = frozenset({"water", "traffic"})  # whose true values ground truth follows


@dataclass(frozen=True, slots=True)
class Progress:
    """How far a running simulation is; passed to ``on_progress`` about once a second."""

    sim_time: datetime  # simulated time reached
    real_elapsed_s: float
    sent: dict[str, int]  # telemetry and events handed to the connections, per device kind
    pending: int  # published (status included) but not yet acknowledged, e.g. while disconnected
    connected: bool
    dispatches: int = 0  # dispatched warnings received by the teams
    acks: int = 0  # answers the teams sent
    done: float | None = None  # share of the scenario's duration, when it has one
    lag_s: float = 0.0  # how late (real seconds) the last message went out

    @property
    def sent_total(self) -> int:
        return sum(self.sent.values())

    def describe(self) -> str:
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(self.sent.items()))
        done = "" if self.done is None else f" ({self.done:.0%})"
        teams = (f" | dispatches {self.dispatches}, acks {self.acks}"
                 if self.dispatches or self.acks else "")
        # Behind the clock: the fleet is more than this process keeps up with.
        late = f" | behind by {self.lag_s:.2f} s" if self.lag_s >= 0.01 else ""
        return (f"sim {self.sim_time:%Y-%m-%d %H:%M:%S}Z{done} | sent {self.sent_total} "
                f"({kinds}) | pending {self.pending} | broker "
                f"{'up' if self.connected else 'DOWN'}{teams}{late}")


# Heap entries are plain tuples of numbers first (fast to compare): seconds since the start, then
# an order that keeps the sequence deterministic.
_Pending = tuple[float, int, int, str, Payload]  # (ts, order, device index, channel, payload)


# One encoder, built once: json.dumps would rebuild it for every message.
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False, check_circular=False)
_US = timedelta(microseconds=1)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _encode(payload: Payload) -> bytes:
    return _ENCODER.encode(payload).encode()


class Clock:
    """The timestamps a run puts on its messages: simulated time, or wall-clock time.

    ``wall0`` given: simulated time ``sim0 + d`` is stamped ``wall0 + d / speed`` (wall mode).
    :meth:`text` formats like :func:`~simulators.devices.base.rfc3339` at a fifth of the cost
    (integer microseconds, the date and time of day cached per second): at ten thousand
    messages a second, formatting was a tenth of the simulator's time.
    """

    def __init__(self, sim0: datetime, wall0: datetime | None = None, speed: float = 1.0) -> None:
        self.sim0 = sim0
        self.wall0 = wall0
        self.speed = speed
        self._base_us = ((sim0 if wall0 is None else wall0) - _EPOCH) // _US
        self._seconds: dict[int, str] = {}

    def stamp(self, ts: datetime) -> datetime:
        return ts if self.wall0 is None else self.wall0 + (ts - self.sim0) / self.speed

    def text(self, ts: datetime) -> str:
        delta = ts - self.sim0
        if self.wall0 is not None:
            # The same rounding as stamp(): timedelta division rounds to the microsecond.
            delta = delta / self.speed
        us = delta // _US
        sec, rem = divmod(self._base_us + us, 1_000_000)
        prefix = self._seconds.get(sec)
        if prefix is None:
            if len(self._seconds) > 10_000:
                self._seconds.clear()
            prefix = self._seconds[sec] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        return f"{prefix}.{rem // 1000:03d}Z"


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


def _sites(devices: Sequence[DeviceConfig], zones: Sequence[Zone]) -> dict[str, Site]:
    import numpy as np
    import shapely

    sites = {d.id: Site() for d in devices}
    if zones and devices:
        # One bulk query: ten thousand devices against the zones in well under a second.
        tree = shapely.STRtree([z.geometry for z in zones])
        points = shapely.points(np.array([d.position for d in devices], dtype=float))
        dev_idx, zone_idx = tree.query(points, predicate="covered_by")
        found: dict[int, list[int]] = {}
        for di, zi in zip(dev_idx.tolist(), zone_idx.tolist(), strict=True):
            found.setdefault(di, []).append(zi)
        for di, zis in found.items():
            inside = [zones[z] for z in sorted(zis)]
            sites[devices[di].id] = Site(tuple(z.id for z in inside),
                                         frozenset(z.type for z in inside))
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


def scale_fleet(devices: Sequence[DeviceConfig], n: int, seed: int) -> list[DeviceConfig]:
    """``n`` devices in the proportions of kind of ``devices``, for load tests.

    Fewer: the first ones of each kind. More: all of them plus copies placed within 300 m of an
    original, with ids ``{original}-c{number}``.
    """
    if n < 0:
        raise SimulatorError(f"devices {n}: expected 0 or more")
    if n <= len(devices):
        by_kind: dict[str, list[DeviceConfig]] = {}
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
        out.append(FleetDevice(id=f"{orig.id[:56]}-c{i:06d}", kind=orig.kind, name=orig.name,
                          position=offset_m(orig.position, east, north)))
    return out


def shard_of(devices: Sequence[DeviceConfig], index: int, count: int) -> list[DeviceConfig]:
    """The devices one of ``count`` simulator processes drives (``citywatch simulate --procs``):
    whole shared-connection groups, every ``count``-th one, so that a gateway's devices are
    never split between two processes (two connections with one gateway's id would throw each
    other off the broker)."""
    if not 0 <= index < count:
        raise SimulatorError(f"shard {index}/{count}: expected 0 <= index < count")
    groups = len(shared_groups(len(devices)))  # device i is in group i % groups
    return [d for i, d in enumerate(devices) if (i % groups) % count == index]


def default_truth_path(scenario: str, seed: int, base: Path = Path("var")) -> Path:
    return base / "truth" / f"{scenario}-{seed}.json"


class Simulation:
    """The configured fleet living through a scenario, from ``start`` in simulated time.

    ``seed`` and ``speed`` (simulated seconds per real second, used by :meth:`run`) default to
    the scenario's. ``zones`` replaces the configured zones file; ``devices`` scales the fleet
    to that many devices (see :func:`scale_fleet`); ``shard`` ``(i, n)`` keeps the part of the
    fleet that process ``i`` of ``n`` drives (see :func:`shard_of`); ``plugins`` replaces the
    plug-ins the config names and the installed entry points provide.
    """

    def __init__(self, config: SimConfig, scenario: str | Scenario, seed: int | None = None,
                 speed: float | None = None, start: datetime | None = None, *,
                 zones: Sequence[Zone] | None = None, devices: int | None = None,
                 plugins: Mapping[str, Plugin] | None = None,
                 shard: tuple[int, int] | None = None) -> None:
        if start is None or start.tzinfo is None:
            raise SimulatorError("start: expected a timezone-aware datetime")
        self.config = config
        self.scenario = load_scenario(scenario) if isinstance(scenario, str) else scenario
        self.speed = self.scenario.speed if speed is None else speed
        if not 0 < self.speed <= 3600:
            raise SimulatorError(f"speed {speed}: expected more than 0, at most 3600")
        self.seed = self.scenario.seed if seed is None else seed
        self.start = start.astimezone(UTC)
        self.interval_s = config.simulator.telemetry_interval_s
        if plugins is None:
            from sensing.plugins import load_plugins

            plugins = load_plugins(config)
        makers = factories(plugins)
        fleet = (list(config.devices) if devices is None
                 else scale_fleet(config.devices, devices, self.seed))
        if shard is not None:
            fleet = shard_of(fleet, *shard)
        known = []
        for d in fleet:
            if d.kind in makers:
                known.append(d)
            else:
                log.warning("device %s: kind %r has no simulator; skipped", d.id, d.kind)
        self.zones = list(load_zones(config.zones_path) if zones is None else zones)
        self.sites = _sites(known, self.zones)
        self.state = ScenarioState.build(self.scenario, self.start, self.seed, known, self.zones,
                                         self.sites)
        self.truth = TruthRecorder(config, self.zones, self.sites)
        faults: dict[str, list[Any]] = {}
        for f in self.state.faults:
            faults.setdefault(f.device_id, []).append(f)
        self.devices: list[DeviceSim] = []
        self.faulty: list[FaultyDevice] = []
        first_s: list[float] = []
        self._last: list[datetime] = []
        for d in known:
            # Per device, so adding a device leaves the others' values alone.
            rng = random.Random(f"{self.seed}:{d.id}")  # noqa: S311 - simulation, not security
            dev = makers[d.kind](d, self.sites[d.id], rng)
            if d.id in faults:
                dev = FaultyDevice(dev, faults[d.id])
                self.faulty.append(dev)
            self.devices.append(dev)
            # Spread first reports over one interval so the fleet does not publish in bursts.
            first_s.append(min(rng.uniform(0, self.interval_s), self.interval_s * 0.999999))
            self._last.append(self.start)
        # Every device reports once per interval, so the order of ticks is the same in every
        # round: sorted by first tick once, it needs no heap (that was a third of the run time).
        self._round_order = sorted(range(len(first_s)), key=lambda i: (first_s[i], i))
        self._next_at = [self.start + timedelta(seconds=s) for s in first_s]
        self._pos = 0
        self._watched = [d.kind in _WATCHED_KINDS for d in self.devices]
        self._topics = [(f"city/{d.kind}/{d.id}/telemetry", f"city/{d.kind}/{d.id}/event")
                        for d in self.devices]
        self._out: list[_Pending] = []  # a heap
        self._in_order: deque[_Pending] = deque()
        self._order = 0
        self.sim_time = self.start
        self._clock = Clock(self.start)

    @property
    def end(self) -> datetime | None:
        """When the scenario's timeline ends (None: it runs on)."""
        return self.state.end

    def status_messages(self, state: str) -> list[tuple[str, bytes]]:
        """Retained presence for every simulated device (CONTRACT section 1, status)."""
        body = _encode({"state": state})
        return [(status_topic(d.kind, d.id), body) for d in self.devices]

    def messages_until(self, t: datetime) -> Iterator[tuple[str, bytes]]:
        """Messages with timestamps up to ``t``, in timestamp order, each once, stamped with
        simulated time. A device that drops off or comes back appears as its ``status``."""
        for _, _, topic, body in self._until(t):
            yield topic, body

    def ground_truth(self, stamp: Callable[[datetime], datetime] | None = None,
                     meta: Mapping[str, Any] | None = None) -> GroundTruth:
        """What really happened up to the simulated time reached (see simulators.groundtruth)."""
        rules = self.config.rules
        info = {"timestamps": "simulated" if stamp is None else "wall", "speed": self.speed,
                "sim_start": rfc3339(self.start), "sim_end": rfc3339(self.sim_time),
                "devices": len(self.devices), "zones": len(self.zones),
                "thresholds": {
                    "waterlogging_yellow_cm": {k: t.yellow_cm for k, t in
                                               rules.waterlogging.thresholds.items()},
                    "traffic_yellow_kmh": rules.traffic.yellow_kmh,
                    "traffic_orange_kmh": rules.traffic.orange_kmh,
                    "falling_object_red_confidence": rules.falling_object.red_confidence},
                **(meta or {})}
        return self.truth.result(self.state, self.sim_time, self.faulty, stamp, info)

    def _until(self, t: datetime, clock: Clock | None = None
               ) -> Iterator[tuple[int, str, str, bytes]]:
        """(device index, channel, topic, body) of everything stamped up to ``t``."""
        # A device reports what happened since its previous tick, stamped when it happened, so
        # step one interval ahead: then nothing stamped before t can still be missing.
        start = self.start
        horizon_s = (t - start).total_seconds() + self.interval_s
        interval = timedelta(seconds=self.interval_s)
        order, next_at, out, devices, last = (self._round_order, self._next_at, self._out,
                                               self.devices, self._last)
        in_order = self._in_order
        observe, watched, state = self.truth.observe, self._watched, self.state
        text = (clock or self._clock).text
        n = len(order)
        while n:
            i = order[self._pos]
            at = next_at[i]
            s = (at - start).total_seconds()
            if s > horizon_s:
                break
            dev = devices[i]
            for channel, payload in dev.step(at, (at - last[i]).total_seconds(), state):
                ts = payload["ts"]
                if ts is not at:
                    if isinstance(ts, str):  # a plug-in may stamp its own
                        ts = payload["ts"] = datetime.fromisoformat(ts.replace("Z", "+00:00"))
                    key = (ts - start).total_seconds()
                else:
                    key = s
                self._order += 1
                item = (key, self._order, i, channel, payload)
                # Most messages come in time order (telemetry at its tick): a queue takes them;
                # only the few stamped earlier (events in the past interval) need the heap.
                if not in_order or key >= in_order[-1][0]:
                    in_order.append(item)
                else:
                    heapq.heappush(out, item)
            if watched[i]:
                observe(dev.kind, dev.id, at, dev.true_values)
            last[i] = at
            next_at[i] = at + interval
            self._pos = (self._pos + 1) % n
        self.sim_time = max(self.sim_time, t)
        until_s = (t - start).total_seconds()
        while True:
            if out and (not in_order or out[0] < in_order[0]):
                if out[0][0] > until_s:
                    break
                _, _, i, channel, payload = heapq.heappop(out)
            elif in_order and in_order[0][0] <= until_s:
                _, _, i, channel, payload = in_order.popleft()
            else:
                break
            dev = devices[i]
            ts = payload["ts"]
            if channel == "status":
                yield i, channel, status_topic(dev.kind, dev.id), _encode(
                    {"state": payload["state"]})
                continue
            payload["ts"] = text(ts)
            topic = self._topics[i][0 if channel == "telemetry" else 1]
            yield i, channel, topic, _encode(payload)

    def run(self, broker_url: str, stop: threading.Event, duration_s: float | None = None,
            on_progress: Callable[[Progress], None] | None = None, *,
            timestamps: Literal["wall", "simulated"] = "wall",
            connections: Connections = "auto", truth_path: Path | None = None,
            respond: bool = True, until_end: bool = False,
            credentials: FleetCredentials | None = None, ca_file: str | None = None
            ) -> Progress:
        """Publish the fleet in real time until ``stop`` is set, ``duration_s`` real seconds pass
        or (with ``until_end``) the scenario's timeline ends.

        ``timestamps="wall"`` (default) stamps each message with the wall-clock time it is due,
        i.e. simulated time compressed by ``speed``: the platform rejects readings from the
        future, and at any speed above 1 simulated time runs ahead of the clock. ``"simulated"``
        stamps simulated time, for replays from a past ``start``. Ground truth (written to
        ``truth_path`` every 10 s and at the end) uses the same timestamps.

        ``respond``: the teams subscribe to ``city/dispatch/+`` and answer each warning.

        ``credentials`` (a broker that authenticates): each device, team and gateway connects as
        itself (see :mod:`simulators.links`); each configured team reads its own dispatches and
        a device its own (a grid worker's checks). ``ca_file``: the CA that signed the broker's
        certificate, for ``mqtts://`` URLs.
        """
        parse_url(broker_url)  # a bad URL fails here, before anything starts
        mode = connections
        if mode == "auto":
            mode = "per-device" if len(self.devices) <= PER_DEVICE_MAX else "shared"
        tag = uuid.uuid4().hex[:6]
        members = [(d.kind, d.id) for d in self.devices]
        teams = (_Teams(broker_url, tag, self.seed, self._centre(),
                        [t.id for t in self.config.teams], credentials, ca_file)
                 if respond else None)
        links: Links = (
            DeviceLinks(broker_url, members, tag, credentials=credentials, ca_file=ca_file,
                        on_dispatch=teams.queue if teams is not None else None)
            if mode == "per-device"
            else SharedLinks(broker_url, members, tag, credentials=credentials, ca_file=ca_file))
        log.info("%d devices on %s connections", len(self.devices), mode)
        index = {d.id: i for i, d in enumerate(self.devices)}

        def device_answer(device_id: str, topic: str, payload: bytes) -> bool:
            i = index.get(device_id)
            if i is None:
                return False
            links.publish(i, topic, payload)
            return True
        sim0 = self.sim_time
        clock = Clock(sim0, datetime.now(UTC), self.speed) if timestamps == "wall" else None
        stamp = clock.stamp if clock is not None else None
        sent: Counter[str] = Counter()
        real0 = time.monotonic()
        lag = 0.0

        def progress() -> Progress:
            end = self.end
            done = None
            if end is not None and end > self.start:
                done = min(1.0, (self.sim_time - self.start) / (end - self.start))
            return Progress(sim_time=self.sim_time, real_elapsed_s=time.monotonic() - real0,
                            sent=dict(sent), pending=links.pending, connected=links.connected,
                            dispatches=teams.responder.received if teams else 0,
                            acks=teams.sent if teams else 0, done=done, lag_s=lag)

        def write_truth() -> None:
            if truth_path is not None:
                truth = self.ground_truth(stamp, {"connections": mode})
                _write_atomic(truth_path, truth.to_json())

        links.start()
        if teams is not None:
            teams.start()
        next_progress = next_truth = 0.0
        try:
            while not stop.is_set():
                elapsed = time.monotonic() - real0
                if duration_s is not None and elapsed >= duration_s:
                    break
                target = sim0 + timedelta(seconds=elapsed * self.speed)
                finished = until_end and self.end is not None and target >= self.end
                if finished and self.end is not None:
                    target = self.end
                if teams is not None:
                    teams.receive(self.sim_time)
                for i, channel, topic, body in self._until(target, clock):
                    if channel == "status":
                        links.set_reachable(i, body == b'{"state":"online"}')
                        continue
                    links.publish(i, topic, body)
                    sent[self.devices[i].kind] += 1
                if teams is not None:
                    teams.answer(target, clock, device_answer)
                links.pump()
                # Lateness: how long after its due time (at speed) this tick's work finished.
                lag = max(0.0, time.monotonic() - real0 - elapsed)
                if on_progress is not None and elapsed >= next_progress:
                    next_progress = elapsed + PROGRESS_EVERY_S
                    on_progress(progress())
                if elapsed >= next_truth:
                    next_truth = elapsed + TRUTH_EVERY_S
                    write_truth()
                if finished:
                    break
                stop.wait(TICK_S)
            links.drain(DRAIN_TIMEOUT_S)
            final = progress()
        finally:
            links.disconnect()
            if teams is not None:
                teams.close()
            write_truth()
        if on_progress is not None:
            on_progress(final)
        return final

    def _centre(self) -> tuple[float, float]:
        pos = [d.position for d in self.config.devices] or [(0.0, 0.0)]
        return (sum(p[0] for p in pos) / len(pos), sum(p[1] for p in pos) / len(pos))


class _Teams:
    """The teams' terminals: dispatches in, acknowledgements out.

    Without credentials, one connection reads ``city/dispatch/+`` and answers for everyone.
    With them, each configured team connects as itself and reads its own dispatches; devices
    read theirs on their own connections (:class:`simulators.links.DeviceLinks`), which
    :meth:`queue` here, and answer through them. The paho callbacks only queue what arrives
    (they run on paho's threads); the runner's loop hands it to the :class:`Responder` and
    publishes the answers when they are due.
    """

    def __init__(self, url: str, tag: str, seed: int, base: tuple[float, float],
                 teams: Sequence[str], credentials: FleetCredentials | None,
                 ca_file: str | None) -> None:
        self.url = url
        self.responder = Responder(seed, base)
        self.inbox: queue.SimpleQueue[tuple[str, bytes]] = queue.SimpleQueue()
        self.clients: dict[str, mqtt.Client] = {}
        if credentials is None:
            self.clients["*"] = self._client(
                paho_client(url, f"citywatch-teams-{tag}", ca_file=ca_file), DISPATCH_FILTER)
        else:
            for team in teams:
                secret = credentials.secrets.get(team)
                if secret is None:
                    log.warning("team %s has no broker credentials: it will not answer", team)
                    continue
                self.clients[team] = self._client(
                    paho_client(url, team, username=team, password=secret, ca_file=ca_file),
                    f"city/dispatch/{team}")
        self.sent = 0
        self._unacked: list[mqtt.MQTTMessageInfo] = []

    def _client(self, client: mqtt.Client, topic: str) -> mqtt.Client:
        def on_connect(c: mqtt.Client, _u: Any, _f: Any, rc: ReasonCode, _p: Any) -> None:
            if not rc.is_failure:
                c.subscribe(topic, qos=QOS)  # again after every reconnect
            else:
                log.warning("broker refused a team's terminal (%s): %s", topic, rc)

        client.on_connect = on_connect
        client.on_message = self._on_message
        return client

    def queue(self, topic: str, payload: bytes) -> None:
        self.inbox.put((topic, payload))  # unbounded: dispatches are few

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        self.queue(msg.topic, bytes(msg.payload))

    def start(self) -> None:
        host, port = parse_url(self.url)[:2]
        for client in self.clients.values():
            client.connect_async(host, port, keepalive=30)
            client.loop_start()

    def receive(self, now: datetime) -> None:
        while True:
            try:
                topic, body = self.inbox.get_nowait()
            except queue.Empty:
                return
            self.responder.on_dispatch(topic, body, now)

    def answer(self, until: datetime, clock: Clock | None,
               device_answer: Callable[[str, str, bytes], bool]) -> None:
        """Publish the answers now due: from the team's connection, or the device's own."""
        for ack in self.responder.due(until):
            payload = dict(ack.payload)
            payload["ts"] = clock.text(ack.at) if clock is not None else rfc3339(ack.at)
            body = _encode(payload)
            client = self.clients.get(ack.team_id) or self.clients.get("*")
            if client is not None:
                self._unacked = [i for i in self._unacked if not i.is_published()]
                self._unacked.append(client.publish(ack.topic, body, qos=QOS))
            elif not device_answer(ack.team_id, ack.topic, body):
                continue
            self.sent += 1

    def close(self, timeout: float = DRAIN_TIMEOUT_S) -> None:
        # A team's last answer must not be lost because the run ends right after it.
        deadline = time.monotonic() + timeout
        while any(not i.is_published() for i in self._unacked) and time.monotonic() < deadline:
            time.sleep(0.02)
        for client in self.clients.values():
            client.disconnect()
        for client in self.clients.values():
            client.loop_stop()


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


__all__ = ["DRAIN_TIMEOUT_S", "PER_DEVICE_MAX", "Progress", "Simulation", "default_truth_path",
           "load_zones", "scale_fleet", "status_topic"]
