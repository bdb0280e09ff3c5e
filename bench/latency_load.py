"""The two load processes of ``bench.bench_latency``: background telemetry and the probe.

``python -m bench.latency_load background PORT RATE KIND/ID ...`` publishes until SIGTERM;
``python -m bench.latency_load probe PORT ID ...`` prints the latencies as JSON and exits.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import signal
import sys
import threading
import time
from datetime import UTC, datetime
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from sensing.mqtt import no_delay

PROBE_ZONE = "up-06"


def _iso(ts: datetime) -> str:
    return ts.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _client(port: int, name: str) -> mqtt.Client:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{name}-{secrets.token_hex(3)}",
                    protocol=mqtt.MQTTv5)
    c.on_socket_open = no_delay
    c.max_inflight_messages_set(1000)
    c.max_queued_messages_set(0)
    connected = threading.Event()
    c.on_connect = lambda *_a: connected.set()
    c.connect("127.0.0.1", port)
    c.loop_start()
    if not connected.wait(10):
        raise SystemExit(f"{name}: no CONNACK")
    return c


def background(port: int, devices: list[tuple[str, str]], rate: float,
               stop: threading.Event) -> int:
    """Publish ``rate`` msg/s round robin over ``devices`` until ``stop`` is set."""
    c = _client(port, "bg")
    tick = 0.01
    per_tick = rate * tick
    owed = 0.0
    seq = dict.fromkeys((d for _k, d in devices), 0)
    i = 0
    n = 0
    next_at = time.perf_counter()
    while not stop.is_set():
        owed += per_tick
        now = _iso(datetime.now(UTC))
        while owed >= 1:
            kind, device = devices[i % len(devices)]
            i += 1
            seq[device] += 1
            values: dict[str, float] = (
                {"water_depth_cm": 2.0 + 0.1 * (seq[device] % 5), "battery_v": 3.6}
                if kind == "water" else
                {"rain_rate_mm_h": 1.0 + 0.1 * (seq[device] % 5), "battery_v": 3.6}
                if kind == "rain" else
                {"flow_veh_h": 900.0 + seq[device] % 50, "speed_kmh": 42.0,
                 "occupancy_pct": 12.0, "battery_v": 3.6})
            c.publish(f"city/{kind}/{device}/telemetry", json.dumps(
                {"ts": now, "seq": seq[device], "values": values}), qos=1)
            owed -= 1
            n += 1
        next_at += tick
        delay = next_at - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        else:
            next_at = time.perf_counter()  # behind: do not try to catch up in a burst
    c.loop_stop()
    c.disconnect()
    return n


def probe(port: int, probes: list[str], wait_s: float = 2.0) -> tuple[list[float], int]:
    """Time each probe gauge's 60 cm reading to the zone's retained state showing red."""
    state: dict[str, Any] = {"red": None, "at": 0.0}
    changed = threading.Condition()

    def on_message(_c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        at = time.perf_counter()
        body = json.loads(msg.payload or b"{}")
        if os.environ.get("PROBE_DEBUG"):
            print("probe got", body, file=sys.stderr, flush=True)
        red = body.get("hazards", {}).get("waterlogging") == 1  # CONTRACT: 1 is red
        with changed:
            state["red"], state["at"] = red, at
            changed.notify_all()

    c = _client(port, "probe")
    c.on_message = on_message
    c.subscribe(f"city/alerts/{PROBE_ZONE}", qos=1)
    time.sleep(0.5)
    latencies: list[float] = []
    missed = 0

    def send_and_wait(device: str, seq: int, depth: float, want_red: bool,
                      timeout: float) -> float | None:
        t0 = time.perf_counter()
        c.publish(f"city/water/{device}/telemetry", json.dumps(
            {"ts": _iso(datetime.now(UTC)), "seq": seq,
             "values": {"water_depth_cm": depth, "battery_v": 3.6}}), qos=1)
        with changed:
            ok = changed.wait_for(lambda: state["red"] is want_red and state["at"] >= t0,
                                  timeout)
            return state["at"] - t0 if ok else None

    for device in probes:
        took = send_and_wait(device, 1, 60.0, True, wait_s)
        if took is None:
            missed += 1
        else:
            latencies.append(took)
        send_and_wait(device, 2, 0.0, False, 10.0)
        # Retire the gauge: out of device health's range, it is faulty and out of every
        # fusion, so the next probe's 60 cm is not judged against this one's 0 cm (drift).
        c.publish(f"city/water/{device}/telemetry", json.dumps(
            {"ts": _iso(datetime.now(UTC)), "seq": 3,
             "values": {"water_depth_cm": 500.0, "battery_v": 3.6}}), qos=1)
        time.sleep(random.uniform(0.05, 0.15))
    c.loop_stop()
    c.disconnect()
    return latencies, missed


def main(argv: list[str]) -> int:
    role, port = argv[0], int(argv[1])
    if role == "background":
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_a: stop.set())
        devices = [(d.split("/")[0], d.split("/")[1]) for d in argv[3:]]
        background(port, devices, float(argv[2]), stop)
        return 0
    latencies, missed = probe(port, argv[2:])
    print(json.dumps({"latencies": latencies, "missed": missed}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))


