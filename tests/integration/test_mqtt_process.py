"""The engine's MQTT session in a process of its own (``broker.receiver: process``): a killed
MQTT process is replaced with nothing lost or counted twice, and it never outlives the engine."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest

from citywatch.config import load_config
from citywatch.service import Endpoints, Service
from sensing.mqtt_process import ProcessLink
from tests.fix_broker import connect

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
GAUGES = ["wl-05", "wl-06", "wl-07", "wl-08"]  # calm readings: no alert in the way


@pytest.fixture
def service(broker_url: str, fresh_db_url: str) -> Iterator[Service]:
    cfg = load_config(REPO / "config.yaml", env={})
    cfg = cfg.model_copy(update={"broker": cfg.broker.model_copy(update={"receiver": "process"})})
    svc = Service(cfg, Endpoints(broker_url, fresh_db_url), http_port=0,
                  client_id=f"citywatch-proc-{uuid.uuid4().hex[:8]}")
    svc.start()
    try:
        assert svc._link.connected.wait(10), "engine did not connect to the broker"
        yield svc
    finally:
        svc.stop()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_killed_mqtt_process_is_replaced_and_nothing_is_lost_or_counted_twice(
        service: Service, broker_url: str, fresh_db_url: str,
        caplog: pytest.LogCaptureFixture) -> None:
    link = service._link
    assert isinstance(link, ProcessLink)
    caplog.set_level(logging.INFO, logger="sensing.mqtt")
    first = link.pid
    assert first is not None and _alive(first)
    per_gauge = 150
    done = threading.Event()

    def publish() -> None:
        client = connect(broker_url)
        try:
            for seq in range(per_gauge):
                for g in GAUGES:
                    ts = datetime.now(UTC).isoformat(timespec="milliseconds")
                    body = {"ts": ts, "seq": seq, "values": {"water_depth_cm": 1.0 + seq % 3 / 10,
                                                             "battery_v": 3.6}}
                    client.publish(f"city/water/{g}/telemetry", json.dumps(body),
                                   qos=1).wait_for_publish(30)
                time.sleep(0.01)
        finally:
            client.loop_stop()
            client.disconnect()
            done.set()

    publisher = threading.Thread(target=publish, daemon=True)
    publisher.start()
    time.sleep(0.5)  # mid-stream
    os.kill(first, signal.SIGKILL)
    publisher.join(60)
    assert done.is_set(), "the publisher did not finish"

    total = per_gauge * len(GAUGES)
    deadline = time.monotonic() + 30
    rows = -1
    while time.monotonic() < deadline:
        with psycopg.connect(fresh_db_url) as conn:
            row = conn.execute("SELECT count(*), count(DISTINCT (device_id, seq)) FROM telemetry "
                               "WHERE device_id = ANY(%s)", (GAUGES,)).fetchone()
        assert row is not None
        rows, distinct = row
        if distinct >= total:
            break
        time.sleep(0.2)
    assert (rows, distinct) == (total, total), "lost or stored twice across the restart"
    assert link.restarts == 1
    assert link.pid != first and link.pid is not None and _alive(link.pid)
    assert link.connected.wait(10)
    assert service.health()["status"] != "failing"
    # The new MQTT process's own log reaches the engine's log.
    assert any(r.name == "sensing.mqtt" and "connected to broker" in r.getMessage()
               and "(MQTT process)" in r.getMessage() for r in caplog.records)


CHILD = """
import sys, time
from sensing.mqtt_process import LinkSettings, ProcessLink
link = ProcessLink(LinkSettings(sys.argv[1], sys.argv[2], ("city/none",)), lambda m: None)
link.start()
assert link.connected.wait(10)
print(link.pid, flush=True)
time.sleep(120)
"""


def test_the_mqtt_process_ends_with_the_engine(broker_url: str) -> None:
    engine = subprocess.Popen(
        [sys.executable, "-c", CHILD, broker_url, f"citywatch-orphan-{uuid.uuid4().hex[:8]}"],
        cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert engine.stdout is not None
        child = int(engine.stdout.readline())
        assert _alive(child)
        engine.send_signal(signal.SIGKILL)
        engine.wait(10)
        deadline = time.monotonic() + 5
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(child), "the MQTT process outlived the engine"
    finally:
        if engine.poll() is None:
            engine.kill()
            engine.wait(10)
        if engine.stdout is not None:
            engine.stdout.close()
