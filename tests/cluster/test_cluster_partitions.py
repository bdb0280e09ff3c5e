"""Rain over a catchment crosses a street's edge: rain gauge rg-02 is stored in its own street's
partition (st-02) and mirrored to st-07, whose underpass up-06 is 1.8 km away, within the 2.5 km
catchment. With the two partitions owned by different workers, heavy rain at rg-02 raises a watch
(blue) on up-06 exactly as the single-machine engine does, and the reading is stored once."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from citywatch.config import Config
from tests.fix_cluster import ClusterFleet, NatsCluster, owners
from tests.fix_faults import Reading, iso, take_ledger, wait_for, wait_settled

from .test_cluster_faults import start_workers

pytestmark = [pytest.mark.integration, pytest.mark.cluster]


def test_rain_in_one_street_raises_a_watch_in_the_next(
        nats_cluster: NatsCluster, fresh_db_url: str, fault_config: Config,
        tmp_path: Path) -> None:
    workers = start_workers(nats_cluster, fresh_db_url, tmp_path, 2)
    held = owners(nats_cluster)
    assert held["st-02"] != held["st-07"], held  # the rain is read in another worker
    end = datetime.now(UTC) - timedelta(minutes=1)
    readings = []
    for i in range(90):  # 90 minutes, a reading a minute; the rain ramps up to 60 mm/h
        ts = iso(end - timedelta(minutes=89 - i))
        rate = min(60.0, 15.0 * i)
        readings.append(Reading("rg-02", i, "city/rain/rg-02/telemetry", json.dumps(
            {"ts": ts, "seq": i, "values": {"rain_rate_mm_h": rate, "battery_v": 3.6}}).encode()))
        readings.append(Reading("wl-10", i, "city/water/wl-10/telemetry", json.dumps(
            {"ts": ts, "seq": i, "values": {"water_depth_cm": 1.0, "battery_v": 3.6}}).encode()))
    fleet = ClusterFleet(nats_cluster, readings, rate=100).start()
    try:
        wait_settled(fleet, fresh_db_url)

        def watch() -> tuple[int, list[str]] | None:
            with psycopg.connect(fresh_db_url) as conn:
                row = conn.execute(
                    "SELECT severity, evidence FROM alerts WHERE zone_id = 'up-06' "
                    "AND hazard = 'waterlogging'").fetchone()
            if row is None:
                return None
            gauges = [g for e in row[1] for g in e.get("rain_gauges", [])]
            return int(row[0]), gauges

        severity, gauges = wait_for("a waterlogging watch on up-06", watch, timeout=30)
        ledger = take_ledger("cluster: rain across a street's edge", fleet,
                             fresh_db_url)
    finally:
        fleet.close()
        for w in workers:
            w.stop()
    assert severity == 4  # blue: rain alone is a watch
    assert "rg-02" in gauges
    assert ledger.lost == 0 and ledger.duplicated == 0


def test_a_bad_message_is_dead_lettered_and_the_rest_stored(
        nats_cluster: NatsCluster, fresh_db_url: str, tmp_path: Path) -> None:
    """Through the cluster as on one machine: the rejection is stored with its reason and
    published on city/deadletter/{kind}/{device}; the good readings around it are stored."""
    import threading

    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    workers = start_workers(nats_cluster, fresh_db_url, tmp_path, 1)
    got: list[bytes] = []
    arrived = threading.Event()
    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="dl-watch", protocol=mqtt.MQTTv311)
    sub.username_pw_set("engine", nats_cluster.engine_password)

    def on_message(_c: object, _u: object, m: mqtt.MQTTMessage) -> None:
        got.append(m.payload)
        arrived.set()

    sub.on_message = on_message
    sub.connect("127.0.0.1", nats_cluster.mqtt_ports[2])
    sub.subscribe("city/deadletter/#", qos=1)
    sub.loop_start()
    now = datetime.now(UTC) - timedelta(minutes=1)
    readings = [Reading("wl-01", 0, "city/water/wl-01/telemetry", json.dumps(
                    {"ts": iso(now), "seq": 0, "values": {"water_depth_cm": 1.0}}).encode()),
                Reading("wl-01", 1, "city/water/wl-01/telemetry", b"{not json"),
                Reading("wl-01", 2, "city/water/wl-01/telemetry", json.dumps(
                    {"ts": iso(now + timedelta(seconds=10)), "seq": 2,
                     "values": {"water_depth_cm": 1.1}}).encode())]
    fleet = ClusterFleet(nats_cluster, readings, rate=20).start()
    try:
        fleet.wait_done(30)
        fleet.wait_acked(30)
        wait_for("two readings stored", lambda: _count(fresh_db_url, "telemetry") >= 2,
                 timeout=30)
        wait_for("the rejection stored", lambda: _count(fresh_db_url, "rejections") >= 1,
                 timeout=30)
        assert arrived.wait(30), "no dead letter published"
    finally:
        fleet.close()
        sub.loop_stop()
        sub.disconnect()
        for w in workers:
            w.stop()
    letter = json.loads(got[0])
    assert letter["topic"] == "city/water/wl-01/telemetry"
    assert letter["payload"] == "{not json"
    with psycopg.connect(fresh_db_url) as conn:
        assert conn.execute("SELECT device_id FROM rejections").fetchall() == [("wl-01",)]


def _count(db_url: str, table: str) -> int:
    with psycopg.connect(db_url) as conn:
        row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
    return int(row[0]) if row else 0
