"""Fencing tokens on the real database: a partition's old owner cannot commit once a new owner
has claimed it, and a claim sees what the old owner's last batch committed."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from alerts import store as alert_store
from citywatch import cluster_fence
from citywatch.cluster_fence import EpochFence, Fenced
from citywatch.config import load_config
from citywatch.metrics import Metrics
from citywatch.pipeline import Pipeline
from citywatch.service import build_alert_store, build_decoder, build_engine, build_placement
from geo.load import load_zones
from sensing import store as sensing_store
from sensing.mqtt import Inbound

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def migrated(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        sensing_store.migrate(conn)
        alert_store.migrate(conn)
        cluster_fence.migrate(conn)


def test_each_claim_takes_the_next_epoch_and_fences_the_one_before(fresh_db_url: str) -> None:
    migrated(fresh_db_url)
    with psycopg.connect(fresh_db_url) as conn:
        assert cluster_fence.claim(conn, "street-a", "w1") == 1
        assert cluster_fence.claim(conn, "street-b", "w1") == 1
        assert cluster_fence.claim(conn, "street-a", "w2") == 2
        with conn.transaction(), conn.cursor() as cur:
            EpochFence("street-a", 2)(cur)
            EpochFence("street-b", 1)(cur)
        with pytest.raises(Fenced, match=r"epoch 1 is over \(now 2, owner w2\)"), \
                conn.transaction(), conn.cursor() as cur:
            EpochFence("street-a", 1)(cur)


def test_a_claim_waits_for_the_old_owners_batch_and_sees_what_it_committed(
        fresh_db_url: str) -> None:
    migrated(fresh_db_url)
    with psycopg.connect(fresh_db_url) as old, psycopg.connect(fresh_db_url) as new:
        cluster_fence.claim(old, "street-a", "w1")
        claimed: list[tuple[float, int]] = []
        with old.transaction(), old.cursor() as cur:
            EpochFence("street-a", 1)(cur)  # the old owner's batch is under way
            cur.execute("CREATE TABLE marks (n int)")
            cur.execute("INSERT INTO marks VALUES (1)")
            def claim() -> None:
                epoch = cluster_fence.claim(new, "street-a", "w2")
                claimed.append((time.monotonic(), epoch))
            t = threading.Thread(target=claim)
            t.start()
            time.sleep(0.5)
            assert not claimed, "the claim went ahead of a batch under way"
            committed = time.monotonic()
        t.join(10)
        assert claimed and claimed[0][0] >= committed and claimed[0][1] == 2
        assert new.execute("SELECT n FROM marks").fetchall() == [(1,)]


def test_a_paused_owner_does_not_hold_a_claim_up(fresh_db_url: str) -> None:
    """An owner stopped mid-transaction (SIGSTOP, a long pause) loses its session after the
    fence's idle limit: the claim goes on, the old batch is rolled back."""
    migrated(fresh_db_url)
    with psycopg.connect(fresh_db_url) as old, psycopg.connect(fresh_db_url) as new:
        cluster_fence.claim(old, "street-a", "w1")
        old.execute("BEGIN")
        EpochFence("street-a", 1, idle_s=1.0)(old.cursor())
        t0 = time.monotonic()
        assert cluster_fence.claim(new, "street-a", "w2") == 2
        assert time.monotonic() - t0 < 5.0
        with pytest.raises(psycopg.Error, match="idle-in-transaction timeout"):
            old.execute("SELECT 1")


def depth(device: str, seq: int, ts: datetime, cm: float) -> Inbound:
    body = {"ts": ts.isoformat(timespec="milliseconds"), "seq": seq,
            "values": {"water_depth_cm": cm, "battery_v": 3.7}}
    return Inbound(f"city/water/{device}/telemetry", json.dumps(body).encode(), seq, 1,
                   datetime.now(UTC))


def test_a_fenced_pipeline_stores_nothing_acks_nothing_and_stops(fresh_db_url: str) -> None:
    config = load_config(REPO / "config.yaml", env={})
    zones = load_zones(config.zones_path)
    placement = build_placement(config, zones)
    migrated(fresh_db_url)
    with psycopg.connect(fresh_db_url) as conn:
        epoch = cluster_fence.claim(conn, "street-a", "w1")
    engine = build_engine(config, zones, placement)
    alerts, workers = build_alert_store(config, zones)
    acked: list[int] = []
    pipeline = Pipeline(conninfo=fresh_db_url, decoder=build_decoder(config), engine=engine,
                        state=engine.restore({}), placement=placement, alert_store=alerts,
                        ack=lambda batch: acked.extend(m.mid for m in batch),
                        dead_letter=lambda _r: None, on_committed=lambda: None,
                        metrics=Metrics(), workers=workers,
                        fence=EpochFence("street-a", epoch))
    t0 = datetime.now(UTC) - timedelta(minutes=1)
    try:
        pipeline.process([depth("wl-01", 1, t0, 2.0)])
        assert acked == [1]
        with psycopg.connect(fresh_db_url) as conn:
            cluster_fence.claim(conn, "street-a", "w2")  # another worker took over
        stop = threading.Event()
        pipeline.submit(depth("wl-01", 2, t0 + timedelta(seconds=10), 60.0))
        runner = threading.Thread(target=pipeline.run, args=(stop,))
        runner.start()
        runner.join(10)
        assert not runner.is_alive(), "a fenced pipeline kept running"
        assert pipeline.fenced and acked == [1]
        assert not pipeline.tick(timedelta(0))
        with psycopg.connect(fresh_db_url) as conn:
            assert conn.execute("SELECT seq FROM telemetry").fetchall() == [(1,)]
            assert conn.execute("SELECT count(*) FROM alerts").fetchone() == (0,)
    finally:
        pipeline.close()
