"""The simulated fleet against a real broker: presence, telemetry, surviving a broker restart."""

from __future__ import annotations

import getpass
import json
import random
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from citywatch.config import Config, parse_config
from simulators.devices.base import offset_m
from simulators.runner import Progress, Simulation
from tests.fix_broker import MqttClientFactory, connect, require_service, subscribe

pytestmark = pytest.mark.integration

CENTRE = (120.62, 31.31)


def small_fleet(prefix: str) -> Config:
    """Two of each kind, with ids unique to this run (the broker may be shared and keeps
    retained status)."""
    devices = [
        {"id": f"{prefix}-{kind}-{i}", "kind": kind,
         "position": list(offset_m(CENTRE, 400 * i - 200, 300 * (j - 2)))}
        for j, kind in enumerate(("water", "rain", "traffic", "camera", "grid"))
        for i in range(2)
    ]
    return parse_config({
        "zones": {"file": "/nonexistent/zones.geojson"},
        "rules": {"waterlogging": {"thresholds": {"underpass": {
            "blue_cm": 5, "yellow_cm": 10, "orange_cm": 15, "red_cm": 25}}}},
        "departments": [], "teams": [], "routing": [], "devices": devices,
    }, env={})


class Inbox:
    """Messages a subscriber received, collected on paho's thread."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.lock = threading.Lock()
        self.status: dict[str, list[str]] = defaultdict(list)
        self.seqs: dict[str, set[int]] = defaultdict(set)
        self.telemetry: dict[str, int] = defaultdict(int)
        self.ahead_s = -1e9  # how far the newest ts ran ahead of the wall clock at arrival

    def on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        parts = msg.topic.split("/")
        if len(parts) != 4 or not parts[2].startswith(self.prefix) or not msg.payload:
            return
        body = json.loads(msg.payload)
        with self.lock:
            if parts[3] == "status":
                self.status[parts[2]].append(body["state"])
            else:
                self.seqs[parts[2]].add(body["seq"])
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


def expected_seqs(config: Config, seed: int, start: datetime,
                  until: datetime) -> dict[str, set[int]]:
    """What the run must have published: the pure generator replayed to the same instant."""
    out: dict[str, set[int]] = defaultdict(set)
    for topic, body in Simulation(config, "demo", seed, 1, start, zones=[]).messages_until(until):
        out[topic.split("/")[2]].add(json.loads(body)["seq"])
    return out


def clear_retained(url: str, config: Config) -> None:
    client = connect(url)
    for d in config.devices:
        client.publish(f"city/{d.kind}/{d.id}/status", b"", qos=1, retain=True).wait_for_publish(5)
    client.disconnect()
    client.loop_stop()


def test_fleet_publishes_presence_and_telemetry(broker_url: str,
                                                mqtt_client_factory: MqttClientFactory) -> None:
    prefix = f"t{uuid.uuid4().hex[:6]}"
    config = small_fleet(prefix)
    inbox = Inbox(prefix)
    sub = mqtt_client_factory(on_message=inbox.on_message)
    subscribe(sub, "city/#")
    start = datetime.now(UTC)
    sim = Simulation(config, "demo", 3, 600, start, zones=[])
    progress: list[Progress] = []
    try:
        final = sim.run(broker_url, threading.Event(), duration_s=3, on_progress=progress.append)
        ids = {d.id for d in config.devices}
        assert inbox.wait(lambda: set(inbox.status) == ids
                          and all(s[-1] == "offline" for s in inbox.status.values())
                          and set(inbox.telemetry) == ids)
    finally:
        clear_retained(broker_url, config)
    assert all(s[0] == "online" for s in inbox.status.values())
    assert final.pending == 0
    assert final.connected
    assert set(final.sent) == {"water", "rain", "traffic", "camera", "grid"}
    assert len(progress) >= 3  # about once a real second, and the final one
    assert (final.sim_time - start).total_seconds() == pytest.approx(3 * 600, rel=0.1)
    # Stamped with wall-clock time (simulated time compressed by speed), never from the future.
    assert -5 < inbox.ahead_s <= 0.1
    # Everything the generator made up to the end was delivered.
    want = expected_seqs(config, 3, start, final.sim_time)
    assert inbox.wait(lambda: inbox.seqs == want)


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


def test_nothing_is_lost_when_the_broker_restarts(private_broker: PrivateBroker) -> None:
    prefix = f"r{uuid.uuid4().hex[:6]}"
    config = small_fleet(prefix)
    inbox = Inbox(prefix)
    # A persistent session, so the broker keeps what arrives while the subscriber reconnects.
    sub = connect(private_broker.url, f"sub-{prefix}", clean_start=False, session_expiry_s=600,
                  on_message=inbox.on_message)
    sub.reconnect_delay_set(0, 1)
    subscribe(sub, "city/#")
    start = datetime.now(UTC)
    sim = Simulation(config, "demo", 5, 300, start, zones=[])
    result: list[Progress] = []
    disconnected: list[bool] = []

    def watch(p: Progress) -> None:
        disconnected.append(not p.connected)

    runner = threading.Thread(
        target=lambda: result.append(sim.run(private_broker.url, threading.Event(),
                                             duration_s=8, on_progress=watch)))
    try:
        runner.start()
        time.sleep(2)
        private_broker.stop()
        time.sleep(2)  # the fleet keeps producing; paho queues it
        private_broker.start()
        runner.join(30)
        assert not runner.is_alive()
        final = result[0]
        assert any(disconnected)  # the outage was seen
        assert final.connected
        assert final.pending == 0  # everything queued during the outage reached the broker
        want = expected_seqs(config, 5, start, final.sim_time)
        assert inbox.wait(lambda: inbox.seqs == want), {
            d: sorted(want[d] - inbox.seqs.get(d, set()))[:5] for d in want}
        # seq is per device and gap-free: telemetry and events share one counter.
        for seqs in inbox.seqs.values():
            assert seqs == set(range(1, max(seqs) + 1))
    finally:
        sub.disconnect()
        sub.loop_stop()
