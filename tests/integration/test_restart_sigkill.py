"""Kill the engine with SIGKILL in the middle of a storm and start it again: no reading lost, no
alert lost, no second work order for an incident, no deadline forgotten."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from citywatch.config import load_config
from geo.index import ZoneIndex
from geo.load import load_zones
from tests.fix_broker import connect

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
STEPS = 120  # readings per gauge: depth rises to 40 cm, then falls back to 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Engine:
    """`citywatch serve` as a separate process, as an operator would run it."""

    def __init__(self, broker_url: str, db_url: str, tmp: Path) -> None:
        self.port = free_port()
        self.env = {**os.environ, "CITYWATCH_BROKER_URL": broker_url,
                    "CITYWATCH_DATABASE_URL": db_url, "CITYWATCH_HTTP_PORT": str(self.port)}
        self.log = tmp / "engine.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "citywatch.cli", "serve", "--config",
             str(REPO / "config.yaml"), "--log-file", str(self.log)],
            env=self.env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                h = httpx.get(f"http://127.0.0.1:{self.port}/api/health", timeout=1).json()
                if h["broker"]["connected"]:
                    return
            except httpx.HTTPError:
                pass
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            time.sleep(0.2)
        raise AssertionError("engine did not come up:\n" + self.log.read_text()[-3000:])

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def get(self, path: str) -> Any:
        return httpx.get(f"http://127.0.0.1:{self.port}{path}", timeout=10).json()


@pytest.fixture
def engine(broker_url: str, fresh_db_url: str, tmp_path: Path) -> Iterator[Engine]:
    e = Engine(broker_url, fresh_db_url, tmp_path)
    yield e
    e.stop()


def storm(gauges: list[str]) -> list[tuple[str, bytes]]:
    start = datetime.now(UTC) - timedelta(hours=1)
    out = []
    for i in range(STEPS):
        depth = 40.0 * (1 - abs(i - STEPS / 2) / (STEPS / 2))
        ts = (start + timedelta(seconds=20 * i)).isoformat(timespec="milliseconds")
        for g in gauges:
            body = {"ts": ts.replace("+00:00", "Z"), "seq": i,
                    "values": {"water_depth_cm": round(depth, 1)}}
            out.append((f"city/water/{g}/telemetry", json.dumps(body).encode()))
    return out


def test_sigkill_mid_storm_loses_nothing_and_duplicates_nothing(
        engine: Engine, broker_url: str, fresh_db_url: str) -> None:
    config = load_config(REPO / "config.yaml", env={})
    index = ZoneIndex(load_zones(config.zones_path))
    # One gauge per underpass: each flooded underpass is one incident.
    by_zone: dict[str, str] = {}
    for d in config.devices:
        if d.kind == "water":
            for z in index.zones_at(*d.position):
                if index.get(z).type == "underpass":
                    by_zone.setdefault(z, d.id)
    gauges = sorted(by_zone.values())
    assert len(gauges) >= 4
    messages = storm(gauges)

    engine.start()
    client = connect(broker_url)
    published = threading.Event()

    def publish() -> None:
        for n, (topic, payload) in enumerate(messages):
            client.publish(topic, payload, qos=1).wait_for_publish(10)
            if n % 50 == 0:
                time.sleep(0.05)  # a storm arrives over time, not in one burst
        published.set()

    sender = threading.Thread(target=publish, daemon=True)
    sender.start()
    with psycopg.connect(fresh_db_url, autocommit=True) as conn:
        def stored() -> int:
            row = conn.execute("SELECT count(*) FROM telemetry").fetchone()
            return int(row[0]) if row else 0

        while stored() < len(messages) // 3:
            time.sleep(0.05)
        engine.kill()  # mid-storm: alerts open, orders in flight, batches half-written
        assert stored() < len(messages)
        time.sleep(1.0)  # the storm goes on while the engine is dead
        engine.start()
        sender.join(120)
        assert published.is_set()
        deadline = time.monotonic() + 60
        while stored() < len(messages) and time.monotonic() < deadline:
            time.sleep(0.2)
        client.loop_stop()
        client.disconnect()

        assert conn.execute("SELECT count(*), count(DISTINCT (device_id, seq)) FROM telemetry"
                            ).fetchone() == (len(messages), len(messages))
        orders = conn.execute("SELECT zone_id, count(*) FROM work_orders GROUP BY zone_id"
                              ).fetchall()
        assert dict(orders) == dict.fromkeys(by_zone, 1), "one order per flooded underpass"
        alerts = conn.execute("SELECT zone_id, count(*), bool_and(cleared IS NOT NULL) "
                              "FROM alerts GROUP BY zone_id").fetchall()
        # One alert per incident, cleared once the water went down after the restart.
        assert {z: (n, c) for z, n, c in alerts} == dict.fromkeys(by_zone, (1, True))
        # The orders kept the worst level of their incident: 40 cm in an underpass is red.
        assert conn.execute("SELECT DISTINCT severity FROM work_orders").fetchall() == [(1,)]
        # Every order still carries its deadlines, and every dispatch went out.
        assert conn.execute("SELECT count(*) FROM work_orders WHERE respond_by IS NULL "
                            "OR resolve_by IS NULL").fetchone() == (0,)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            pending = conn.execute("SELECT count(*) FROM outbox WHERE sent IS NULL").fetchone()
            if pending == (0,):
                break
            time.sleep(0.2)
        assert pending == (0,)
    health = engine.get("/api/health")
    assert health["counts"]["work_orders"] == len(by_zone)
