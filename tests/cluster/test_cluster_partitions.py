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
        ledger = take_ledger("cluster: rain across a street's edge", fleet,  # type: ignore[arg-type]
                             fresh_db_url)
    finally:
        fleet.close()
        for w in workers:
            w.stop()
    assert severity == 4  # blue: rain alone is a watch
    assert "rg-02" in gauges
    assert ledger.lost == 0 and ledger.duplicated == 0
