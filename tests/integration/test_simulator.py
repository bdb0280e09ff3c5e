"""The simulated fleet against a real broker: presence with a Last Will per device, telemetry,
a device that drops off, the teams answering dispatches, a plug-in kind, and nothing lost when the
broker restarts (on per-device and on shared connections)."""

from __future__ import annotations

import getpass
import json
import random
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from citywatch.config import Config, parse_config
from simulators.devices.base import offset_m
from simulators.runner import Progress, Simulation
from tests.fix_broker import MqttClientFactory, connect, require_service, subscribe
from tests.unit.test_sim_plugins import readme_example

pytestmark = pytest.mark.integration

CENTRE = (120.62, 31.31)


def small_fleet(prefix: str, *, wind: bool = False, faults: bool = True) -> Config:
    """Two of each kind, with ids unique to this run (the broker may be shared and keeps
    retained status)."""
    devices = [
        {"id": f"{prefix}-{kind}-{i}", "kind": kind,
         "position": list(offset_m(CENTRE, 400 * i - 200, 300 * (j - 2)))}
        for j, kind in enumerate(("water", "rain", "traffic", "camera", "grid"))
        for i in range(2)
    ]
    if wind:
        devices.append({"id": f"{prefix}-wind-0", "kind": "wind", "position": list(CENTRE)})
    return parse_config({
        "zones": {"file": "/nonexistent/zones.geojson"},
        "rules": {"waterlogging": {"thresholds": {"underpass": {
            "blue_cm": 5, "yellow_cm": 10, "orange_cm": 15, "red_cm": 25}}}},
        "departments": [], "teams": [], "routing": [], "devices": devices,
        "plugins": ["wind_gauge:WindGauge"] if wind else [],
    }, env={})


class Inbox:
    """Messages a subscriber received, collected on paho's thread."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.lock = threading.Lock()
        self.status: dict[str, list[str]] = defaultdict(list)
        self.seqs: dict[str, set[int]] = defaultdict(set)
        self.telemetry: dict[str, int] = defaultdict(int)
        self.arrived: dict[tuple[str, int], float] = {}  # (device, seq): when it arrived
        self.status_at: dict[str, list[float]] = defaultdict(list)
        self.acks: list[dict[str, Any]] = []
        self.ahead_s = -1e9  # how far the newest ts ran ahead of the wall clock at arrival

    def on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        parts = msg.topic.split("/")
        if msg.topic.startswith(f"city/dispatch/{self.prefix}") and parts[-1] == "ack":
            with self.lock:
                self.acks.append(json.loads(msg.payload))
            return
        if len(parts) != 4 or not parts[2].startswith(self.prefix) or not msg.payload:
            return
        body = json.loads(msg.payload)
        now = time.monotonic()
        with self.lock:
            if parts[3] == "status":
                self.status[parts[2]].append(body["state"])
                self.status_at[parts[2]].append(now)
            else:
                self.seqs[parts[2]].add(body["seq"])
                self.arrived[parts[2], body["seq"]] = now
                ts = datetime.fromisoformat(body["ts"])
                self.ahead_s = max(self.ahead_s, (ts - datetime.now(UTC)).total_seconds())
                self.telemetry[parts[2]] += parts[3] == "telemetry"

    def wait(self, done: Callable[[], bool], timeout: float = 20.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if done():
                    return True
            time.sleep(0.05)
        with self.lock:
            return done()


def expected_seqs(config: Config, scenario: str, seed: int, start: datetime,
                  until: datetime) -> dict[str, set[int]]:
    """What the run must have published: the pure generator replayed to the same instant."""
    out: dict[str, set[int]] = defaultdict(set)
    sim = Simulation(config, scenario, seed, None, start, zones=[])
    for topic, body in sim.messages_until(until):
        if not topic.endswith("/status"):
            out[topic.split("/")[2]].add(json.loads(body)["seq"])
    return out


def clear_retained(url: str, config: Config) -> None:
    client = connect(url)
    for d in config.devices:
        client.publish(f"city/{d.kind}/{d.id}/status", b"", qos=1, retain=True).wait_for_publish(5)
    client.disconnect()
    client.loop_stop()


@pytest.fixture
def wind_gauge(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    (tmp_path / "wind_gauge.py").write_text(readme_example(), encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    sys.modules.pop("wind_gauge", None)


def test_the_fleet_publishes_presence_telemetry_and_answers_dispatches(
        broker_url: str, mqtt_client_factory: MqttClientFactory, wind_gauge: None) -> None:
    prefix = f"t{uuid.uuid4().hex[:6]}"
    config = small_fleet(prefix, wind=True)
    inbox = Inbox(prefix)
    sub = mqtt_client_factory(on_message=inbox.on_message)
    subscribe(sub, "city/#")  # the teams' answers too
    start = datetime.now(UTC)
    # The mixed scenario at 1200x: a rain gauge drops off 1 s in and is back half a second later.
    sim = Simulation(config, "mixed", 3, 1200, start, zones=[])
    rain = next(f.device_id for f in sim.state.faults)
    progress: list[Progress] = []
    result: list[Progress] = []
    runner = threading.Thread(target=lambda: result.append(sim.run(
        broker_url, threading.Event(), duration_s=5, on_progress=progress.append)))
    try:
        runner.start()
        time.sleep(1.0)
        order = {"work_order_id": f"WO-{prefix}", "hazard": "traffic", "severity": 2,
                 "zone_id": "x-01", "loc": list(CENTRE), "title": "Traffic 9 km/h",
                 "instructions": "Clear it.", "issued": "2026-11-23T08:00:00Z",
                 "respond_by": "2026-11-23T08:30:00Z"}
        sub.publish(f"city/dispatch/{prefix}-team", json.dumps(order), qos=1)
        runner.join(30)
        final = result[0]
        ids = {d.id for d in config.devices}
        assert inbox.wait(lambda: set(inbox.status) == ids
                          and all(s[-1] == "offline" for s in inbox.status.values())
                          and set(inbox.telemetry) == ids)
    finally:
        clear_retained(broker_url, config)
    assert all(s[0] == "online" for s in inbox.status.values())
    # The dropped gauge: its Last Will (published by the broker), then back online.
    assert inbox.status[rain] == ["online", "offline", "online", "offline"]
    assert all(len(s) == 2 for d, s in inbox.status.items() if d != rain)
    assert final.pending == 0
    assert final.connected
    assert set(final.sent) == {"water", "rain", "traffic", "camera", "grid", "wind"}
    assert len(progress) >= 5  # about once a real second, and the final one
    assert (final.sim_time - start).total_seconds() == pytest.approx(5 * 1200, rel=0.1)
    # Stamped with wall-clock time (simulated time compressed by speed), never from the future.
    assert -5 < inbox.ahead_s <= 0.1
    # Everything the generator made up to the end was delivered, the dropped gauge's too:
    # what it measured while away arrived after it was back.
    want = expected_seqs(config, "mixed", 3, start, final.sim_time)
    assert inbox.wait(lambda: inbox.seqs == want)
    back = inbox.status_at[rain][2]
    gone = sim.state.faults[0]
    away = [seq for (d, seq), _ in inbox.arrived.items() if d == rain]
    assert away
    held = sorted(seq for seq in away if inbox.arrived[rain, seq] >= back - 0.05)
    assert len(held) >= (gone.end - gone.start) / timedelta(seconds=10) - 1  # type: ignore[operator]
    # The team answered the dispatch: accepted, on site, resolved, each per the contract.
    assert inbox.wait(lambda: len(inbox.acks) == 3, timeout=5)
    assert [a["status"] for a in inbox.acks] == ["accepted", "on_site", "resolved"]
    for a in inbox.acks:
        assert a["work_order_id"] == f"WO-{prefix}"
        assert datetime.fromisoformat(a["ts"]) <= datetime.now(UTC)
        assert isinstance(a["note"], str)
    assert final.dispatches == 1
    assert final.acks == 3


# -- a broker we can stop and start --------------------------------------------------------


def _free_port() -> int:
    """A free port below the ephemeral range.

    While the broker is down, clients retrying a port in the ephemeral range can connect to
    themselves (TCP simultaneous open) and hold it, so the restarted broker could not listen.
    """
    for port in random.sample(range(20000, 30000), 200):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 20000-29999")


class PrivateBroker:
    """A Mosquitto of our own, with persistence, that the test can stop and restart."""

    def __init__(self, data_dir: Path) -> None:
        binary = shutil.which("mosquitto") or (
            "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
        if binary is None:
            require_service("mosquitto is not installed (apt-get install mosquitto)")
        self.binary = str(binary)
        self.port = _free_port()
        self.url = f"mqtt://127.0.0.1:{self.port}"
        self.conf = data_dir / "mosquitto.conf"
        self.log = data_dir / "mosquitto.log"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\n"
            f"persistence true\npersistence_location {data_dir}/\n"
            "max_queued_messages 100000\nmax_inflight_messages 100\n"
            # Run as root, Mosquitto would switch to its own user and then could not write its
            # persistence file here; staying the current user keeps the session over a restart.
            f"user {getpass.getuser()}\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen([self.binary, "-c", str(self.conf)],
                                         stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"private mosquitto did not start:\n{self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()  # SIGTERM: mosquitto saves its persistence file first
            self.proc.wait(10)
            self.proc = None


@pytest.fixture
def private_broker(tmp_path: Path) -> Iterator[PrivateBroker]:
    broker = PrivateBroker(tmp_path)
    broker.start()
    yield broker
    broker.stop()


@pytest.mark.parametrize("connections", ["per-device", "shared"])
def test_nothing_is_lost_when_the_broker_restarts(private_broker: PrivateBroker,
                                                  connections: Any) -> None:
    prefix = f"r{uuid.uuid4().hex[:6]}"
    config = small_fleet(prefix)
    inbox = Inbox(prefix)
    # A persistent session, so the broker keeps what arrives while the subscriber reconnects.
    sub = connect(private_broker.url, f"sub-{prefix}", clean_start=False, session_expiry_s=600,
                  on_message=inbox.on_message)
    sub.reconnect_delay_set(0, 1)
    subscribe(sub, "city/#")
    start = datetime.now(UTC)
    sim = Simulation(config, "quiet_day", 5, 300, start, zones=[])
    result: list[Progress] = []
    disconnected: list[bool] = []

    def watch(p: Progress) -> None:
        disconnected.append(not p.connected)

    runner = threading.Thread(target=lambda: result.append(sim.run(
        private_broker.url, threading.Event(), duration_s=5, on_progress=watch,
        connections=connections, respond=False)))
    try:
        runner.start()
        time.sleep(1.2)
        private_broker.stop()
        time.sleep(1.5)  # the fleet keeps producing and queues it
        private_broker.start()
        runner.join(30)
        assert not runner.is_alive()
        final = result[0]
        assert any(disconnected)  # the outage was seen
        assert final.connected
        assert final.pending == 0  # everything queued during the outage reached the broker
        want = expected_seqs(config, "quiet_day", 5, start, final.sim_time)
        assert inbox.wait(lambda: inbox.seqs == want), {
            d: sorted(want[d] - inbox.seqs.get(d, set()))[:5] for d in want}
        # seq is per device and gap-free: telemetry and events share one counter.
        for seqs in inbox.seqs.values():
            assert seqs == set(range(1, max(seqs) + 1))
        with inbox.lock:
            assert all(s[0] == "online" and s[-1] == "offline" for s in inbox.status.values())
    finally:
        sub.disconnect()
        sub.loop_stop()
