"""``citywatch simulate storm --speed 60 --seed 1`` against a real broker: within 30 seconds
telemetry from all 42 ground monitors, status from all 89 devices and events that pass the
platform's decoder; the values are the seed's; the ground truth is written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from citywatch.config import load_config
from sensing.decode import Decoder
from sensing.models import Rejection
from simulators.runner import Simulation
from simulators.truth import GroundTruth
from tests.fix_broker import MqttClientFactory, connect, subscribe

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
RUN_S = 15  # the storm's collision is detected about 13 simulated minutes in: 13 s at 60x


def test_simulate_storm_at_60x_publishes_the_whole_fleet_within_30_seconds(
        broker_url: str, mqtt_client_factory: MqttClientFactory, tmp_path: Path) -> None:
    config = load_config(REPO / "config.yaml", env={})
    decoder = Decoder({d.id: d.kind for d in config.devices})
    lock = threading.Lock()
    first: dict[tuple[str, str], float] = {}
    values: dict[tuple[str, int], Any] = {}
    events: list[tuple[str, bytes]] = []
    rejected: list[tuple[str, str, str]] = []
    start = [0.0]

    def on_message(_c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        parts = msg.topic.split("/")
        if (len(parts) != 4 or msg.retain or not msg.payload
                or parts[1] in ("dispatch", "alerts", "deadletter")):
            return  # retained status is from earlier runs, empty ones from the clean-up
        result = decoder.decode(msg.topic, msg.payload, datetime.now(UTC) + timedelta(seconds=1))
        with lock:
            first.setdefault((parts[3], parts[2]), time.monotonic() - start[0])
            if isinstance(result, Rejection):
                rejected.append((msg.topic, result.reason, result.detail))
            elif parts[3] == "telemetry":
                body = json.loads(msg.payload)
                values[parts[2], body["seq"]] = body["values"]
            elif parts[3] == "event":
                events.append((msg.topic, msg.payload))

    sub = mqtt_client_factory(on_message=on_message)
    subscribe(sub, "city/#")
    truth_file = tmp_path / "storm-1.json"
    env = {**os.environ, "CITYWATCH_BROKER_URL": broker_url,
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    start[0] = time.monotonic()
    began = datetime.now(UTC)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "citywatch.cli", "simulate", "storm", "--speed", "60",
             "--seed", "1", "--duration", str(RUN_S), "--truth", str(truth_file)],
            env=env, cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr[-2000:]
        time.sleep(0.5)
    finally:
        clear = connect(broker_url)
        for d in config.devices:  # leave no retained presence behind for other tests
            clear.publish(f"city/{d.kind}/{d.id}/status", b"", qos=1, retain=True)
        clear.disconnect()
        clear.loop_stop()
    assert "scenario storm (seed 1, speed 60x, 5 h)" in done.stdout
    monitors = {d.id for d in config.devices if d.kind in ("water", "rain", "traffic")}
    assert len(monitors) == 42
    with lock:
        telemetry = {d: t for (ch, d), t in first.items() if ch == "telemetry"}
        status = {d: t for (ch, d), t in first.items() if ch == "status"}
        assert set(telemetry) >= monitors
        assert max(telemetry[d] for d in monitors) < 30
        assert set(status) == {d.id for d in config.devices}
        assert max(status.values()) < 30
        assert events
        assert rejected == []
    # The values are the seed's: the offline generator, started anywhere, makes the same ones.
    replay = Simulation(config, "storm", 1, None, began)
    want = {}
    for topic, body in replay.messages_until(began + timedelta(minutes=RUN_S)):
        if topic.endswith("/telemetry"):
            p = json.loads(body)
            want[topic.split("/")[2], p["seq"]] = p["values"]
    common = set(want) & set(values)
    assert len(common) > 0.9 * len(values)
    assert all(values[k] == want[k] for k in common)
    # Ground truth, in the run's own (wall-clock) timestamps.
    truth = GroundTruth.read(truth_file)
    assert (truth.scenario, truth.seed, truth.meta["timestamps"]) == ("storm", 1, "wall")
    assert truth.start >= began - timedelta(seconds=5)
    assert timedelta(seconds=RUN_S - 2) <= truth.end - truth.start <= timedelta(seconds=RUN_S + 5)
    assert [h.zone_id for h in truth.hazards if "collision" in h.note] == ["x-01"]


def test_simulate_from_several_processes_drives_every_device_once(
        broker_url: str, mqtt_client_factory: MqttClientFactory, tmp_path: Path) -> None:
    """``--procs 2`` (issue 12: a city's fleet from a few processes): every device of the
    scaled fleet publishes, each from one process only, and each process writes its truth."""
    lock = threading.Lock()
    seen: dict[str, set[int]] = {}

    def on_message(_c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        parts = msg.topic.split("/")
        if len(parts) == 4 and parts[3] == "telemetry" and not msg.retain:
            with lock:
                seen.setdefault(parts[2], set()).add(int(json.loads(msg.payload)["seq"]))

    sub = mqtt_client_factory(on_message=on_message)
    subscribe(sub, "city/+/+/telemetry")
    env = {**os.environ, "CITYWATCH_BROKER_URL": broker_url,
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    truth = tmp_path / "quiet.json"
    config = load_config(REPO / "config.yaml", env={})
    fleet = Simulation(config, "quiet_day", start=datetime.now(UTC), devices=2400)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "citywatch.cli", "simulate", "quiet_day", "--speed", "6",
             "--devices", "2400", "--procs", "2", "--duration", "12", "--truth", str(truth)],
            env=env, cwd=REPO, capture_output=True, text=True, timeout=90, check=False)
        assert done.returncode == 0, done.stderr[-2000:]
        time.sleep(0.5)
    finally:
        # The fleet's retained presence would reach later tests' engines on this broker, which
        # do not know the scaled devices (and dead-letter them).
        clear = connect(broker_url)
        for d in fleet.devices:
            clear.publish(f"city/{d.kind}/{d.id}/status", b"", qos=1, retain=True)
        clear.publish("city/x/x/status", b"", qos=1).wait_for_publish(10)
        clear.disconnect()
        clear.loop_stop()
    with lock:
        heard = set(seen)
    assert heard == {d.id for d in fleet.devices}
    assert "simulating from 2 processes" in done.stdout
    for part in ("1-of-2", "2-of-2"):
        shard_truth = GroundTruth.from_json((tmp_path / f"quiet.json.{part}").read_text())
        assert 0 < shard_truth.meta["devices"] < 2400
