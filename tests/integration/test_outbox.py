"""The outbox under a crash: what was committed is published once the publisher runs again, and
what was published and marked is never sent again."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
import pytest
from shapely.geometry import box

from alerts import store as alert_store
from alerts.dispatch import OutboxPublisher
from alerts.store import AlertStore, Route
from geo.zones import Zone
from rules.base import AlertChange
from rules.levels import Level
from sensing.mqtt import MqttLink
from tests.fix_broker import connect, subscribe

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
ZONES = {f"up-0{i}": Zone(f"up-0{i}", f"Underpass {i}", "underpass",
                          box(120.6 + i / 100, 31.3, 120.601 + i / 100, 31.301))
         for i in range(1, 4)}


@pytest.fixture
def db(fresh_db_url: str) -> str:
    with psycopg.connect(fresh_db_url, autocommit=True) as c:
        alert_store.migrate(c)
    return fresh_db_url


@pytest.fixture
def link(broker_url: str) -> Iterator[MqttLink]:
    link = MqttLink(broker_url, f"outbox-test-{uuid.uuid4().hex[:8]}", (), lambda _m: None)
    link.start()
    assert link.connected.wait(10)
    yield link
    link.stop()


class Received:
    def __init__(self, broker_url: str) -> None:
        self.items: list[tuple[str, dict[str, Any]]] = []
        self._lock = threading.Lock()

        def on_message(_c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
            if msg.retain:
                return  # a retained zone state from an earlier test, not this run's
            with self._lock:
                self.items.append((msg.topic, json.loads(msg.payload)))

        self.client = connect(broker_url, on_message=on_message)
        subscribe(self.client, "city/#")

    def count(self) -> int:
        with self._lock:
            return len(self.items)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def run_publisher(db: str, link: MqttLink, until_sent: int, timeout: float = 10) -> int:
    publisher = OutboxPublisher(db, link.publish, link.connected.is_set)
    stop = threading.Event()
    t = threading.Thread(target=publisher.run, args=(stop,), daemon=True)
    t.start()
    deadline = time.monotonic() + timeout
    while publisher.sent < until_sent and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # long enough for a wrongful second send to show up
    stop.set()
    t.join(5)
    return publisher.sent


def test_committed_dispatches_survive_a_crash_and_go_out_once(db: str, link: MqttLink,
                                                              broker_url: str) -> None:
    s = AlertStore(ZONES, lambda _h, _z, _l: Route("drainage", "drainage-1"))
    with psycopg.connect(db) as conn, conn.transaction(), conn.cursor() as cur:
        s.apply_changes(cur, [AlertChange(z, "waterlogging", Level.RED, T0, f"flood {z}")
                              for z in ZONES])
    # The engine "crashed" here: the changes are committed, nothing was published.
    with psycopg.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM outbox WHERE sent IS NULL").fetchone() == (6,)
    got = Received(broker_url)
    try:
        assert run_publisher(db, link, until_sent=6) == 6
        deadline = time.monotonic() + 5
        while got.count() < 6 and time.monotonic() < deadline:
            time.sleep(0.05)
        topics = sorted(t for t, _p in got.items)
        assert topics == sorted(["city/dispatch/drainage-1"] * 3
                                + [f"city/alerts/{z}" for z in ZONES])
        # A restart of the publisher sends nothing again: every row is marked sent.
        assert run_publisher(db, link, until_sent=1, timeout=1.5) == 0
        assert got.count() == 6
        # A crash after the broker's PUBACK but before the mark: that one row goes out again
        # (teams deduplicate by work_order_id) and nothing else does.
        with psycopg.connect(db, autocommit=True) as conn:
            conn.execute("UPDATE outbox SET sent = NULL WHERE id = (SELECT min(id) FROM outbox "
                         "WHERE topic LIKE 'city/dispatch/%')")
        assert run_publisher(db, link, until_sent=1) == 1
        deadline = time.monotonic() + 5
        while got.count() < 7 and time.monotonic() < deadline:
            time.sleep(0.05)
        orders = [p["work_order_id"] for t, p in got.items if t.startswith("city/dispatch/")]
        assert len(orders) == 4
        assert len(set(orders)) == 3
    finally:
        got.close()
