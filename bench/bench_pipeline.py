"""Messages per second through the whole pipeline: MQTT in, validated, stored, ruled, acked.

Run from the repository root: ``python -m bench.bench_pipeline [--messages N]``.

Starts our tuned Mosquitto (``citywatch.embedded.start_broker``) and uses a scratch database on
the PostgreSQL named by ``CITYWATCH_TEST_PG`` (default the local server), starts the engine
(``citywatch.service.Service``) with the shipped ``config.yaml``, then publishes N telemetry
messages at QoS 1 from the 42 ground monitors with one paho client and times until every one is
stored (counted in the database). Water depths stay below the blue line, so this measures the
ingest path; alerts are rare in real traffic. The baseline, in the same run, is the broker alone:
the same publisher into a plain QoS 1 subscriber that only counts.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion

from citywatch.config import Config, load_config
from citywatch.embedded import start_broker
from citywatch.service import Endpoints, Service
from sensing.scratch import scratch_database

REPO = Path(__file__).resolve().parents[1]


def messages(config: Config, n: int) -> list[tuple[str, bytes]]:
    devices = [d for d in config.devices if d.kind in ("water", "rain", "traffic")]
    start = datetime.now(UTC) - timedelta(hours=1)
    values = {"water": {"water_depth_cm": 1.5}, "rain": {"rain_rate_mm_h": 2.0},
              "traffic": {"flow_veh_h": 900.0, "speed_kmh": 42.0, "occupancy_pct": 12.0}}
    out = []
    for i in range(n):
        d = devices[i % len(devices)]
        ts = start + timedelta(milliseconds=i)
        body = {"ts": ts.isoformat(timespec="milliseconds").replace("+00:00", "Z"), "seq": i,
                "values": {**values[d.kind], "battery_v": 3.6}}
        out.append((f"city/{d.kind}/{d.id}/telemetry", json.dumps(body).encode()))
    return out


def client(url: str) -> mqtt.Client:
    parts = urlsplit(url)
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-{secrets.token_hex(4)}",
                    protocol=mqtt.MQTTv5)
    c.max_inflight_messages_set(1000)
    c.max_queued_messages_set(0)
    c.connect(parts.hostname or "127.0.0.1", parts.port or 1883)
    c.loop_start()
    return c


def publish(url: str, items: list[tuple[str, bytes]]) -> None:
    c = client(url)
    infos = [c.publish(t, p, qos=1) for t, p in items]
    for info in infos:
        info.wait_for_publish(60)
    c.loop_stop()
    c.disconnect()


def broker_only(url: str, items: list[tuple[str, bytes]]) -> float:
    got = 0
    done = threading.Event()
    sub = client(url)

    def on_message(*_a: Any) -> None:
        nonlocal got
        got += 1
        if got >= len(items):
            done.set()

    sub.on_message = on_message
    sub.subscribe("city/+/+/telemetry", qos=1)
    time.sleep(0.3)
    t0 = time.perf_counter()
    publish(url, items)
    done.wait(120)
    elapsed = time.perf_counter() - t0
    sub.loop_stop()
    sub.disconnect()
    return got / elapsed


def pipeline(config: Config, broker_url: str, db_url: str, items: list[tuple[str, bytes]]
             ) -> tuple[float, float]:
    service = Service(config, Endpoints(broker_url, db_url), http_port=0,
                      client_id=f"bench-engine-{secrets.token_hex(4)}")
    service.start()
    service._link.connected.wait(10)
    time.sleep(0.3)
    t0 = time.perf_counter()
    publish(broker_url, items)
    published = time.perf_counter() - t0
    with psycopg.connect(db_url, autocommit=True) as conn:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            row = conn.execute("SELECT count(*) FROM telemetry").fetchone()
            if row is not None and row[0] >= len(items):
                break
            time.sleep(0.05)
    elapsed = time.perf_counter() - t0
    service.stop()
    return len(items) / elapsed, published


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--messages", type=int, default=20_000)
    args = ap.parse_args()
    config = load_config(REPO / "config.yaml", env={})
    items = messages(config, args.messages)
    server = os.environ.get("CITYWATCH_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
    with (scratch_database(server, "citywatch_bench") as db_url,
          tempfile.TemporaryDirectory() as tmp,
          start_broker(Path(tmp), anonymous=True) as broker):
        base = broker_only(broker.url, items)
        rate, _ = pipeline(config, broker.url, db_url, items)
    print(f"machine: {os.cpu_count()} cores; broker: {broker.kind} with citywatch/mosquitto.conf")
    print(f"broker only (publish -> QoS 1 subscriber): {base:,.0f} msg/s")
    print(f"whole pipeline (publish -> stored, ruled, acked): {rate:,.0f} msg/s "
          f"({rate / base:.2f}x the broker-only baseline), {args.messages:,} messages")
    return 0


if __name__ == "__main__":
    sys.exit(main())
