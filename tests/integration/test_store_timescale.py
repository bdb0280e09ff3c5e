"""sensing.store against TimescaleDB (the hypertable layout).

Needs ``CITYWATCH_TIMESCALE_URL``; for a local one: ``scripts/timescale-server/start.sh`` prints it.
That server (PGlite) takes one connection at a time, so every test here shares one connection.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg import sql

from sensing import store
from sensing.models import Event, Telemetry
from tests.fix_db import redact, truncate_all, unavailable

pytestmark = pytest.mark.timescale

Conn = psycopg.Connection[Any]
NOW = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture(scope="module")
def ts_shared() -> Iterator[tuple[Conn, store.StorageMode]]:
    url = os.environ.get("CITYWATCH_TIMESCALE_URL")
    if not url:
        # Unset is a choice (no Timescale here), so a skip even under CI.
        pytest.skip(
            "CITYWATCH_TIMESCALE_URL not set; start a server with "
            "`export CITYWATCH_TIMESCALE_URL=$(scripts/timescale-server/start.sh)`"
        )
    try:
        conn = psycopg.connect(url, connect_timeout=10)
    except psycopg.OperationalError as exc:
        unavailable(f"TimescaleDB unreachable at {redact(url)} (CITYWATCH_TIMESCALE_URL): {exc}")
    with conn:
        # PGlite keeps one backend session for every client: one that disconnected inside a
        # transaction leaves it open for the next, so start clean.
        conn.rollback()
        mode = store.migrate(conn)
        yield conn, mode
        if not conn.closed:
            conn.rollback()


@pytest.fixture
def ts_conn(ts_shared: tuple[Conn, store.StorageMode]) -> Conn:
    conn, _ = ts_shared
    conn.rollback()  # whatever an earlier failing test left open
    truncate_all(conn)
    return conn


@pytest.fixture
def mode(ts_shared: tuple[Conn, store.StorageMode]) -> store.StorageMode:
    return ts_shared[1]


def tele(device: str, seq: int, ts: datetime, depth: float = 1.0) -> Telemetry:
    return Telemetry(device, "water", ts, seq, {"water_depth_cm": depth})


def event(device: str, event_id: str, ts: datetime) -> Event:
    return Event(device, "camera", ts, 1, event_id, "falling_object", 0.9, (120.6, 31.3), {})


def scalar(conn: Conn, query: Any, params: Any = None) -> Any:
    """One value, read in a transaction of its own so the next write can commit its own."""
    row = conn.execute(query, params).fetchone()
    conn.rollback()
    assert row is not None
    return row[0]


def run_job(conn: Conn, proc_name: str, hypertable: str) -> None:
    """Run a policy's job now: PGlite has no background workers to run it on schedule."""
    job_id = scalar(
        conn,
        "SELECT job_id FROM timescaledb_information.jobs"
        " WHERE proc_name = %s AND hypertable_name = %s",
        (proc_name, hypertable),
    )
    conn.autocommit = True  # CALL run_job commits inside, so no transaction block around it
    try:
        conn.execute("CALL run_job(%s)", (job_id,))
    finally:
        conn.autocommit = False


def test_migrate_reports_timescaledb_and_is_idempotent(
    ts_conn: Conn, mode: store.StorageMode
) -> None:
    again = store.migrate(ts_conn)

    assert mode.backend == "timescaledb"
    assert mode.timescaledb_version is not None
    assert mode.timescaledb_version.startswith("2.")
    assert mode.degraded == (), mode.degraded
    assert again == mode
    assert scalar(ts_conn, "SELECT max(version) FROM schema_version") == store.SCHEMA_VERSION


def test_telemetry_and_events_are_compressed_hypertables(ts_conn: Conn) -> None:
    rows = ts_conn.execute(
        "SELECT hypertable_name, compression_enabled FROM timescaledb_information.hypertables"
        " WHERE hypertable_schema = current_schema() ORDER BY 1"
    ).fetchall()
    assert rows == [("events", True), ("telemetry", True)]
    dims = ts_conn.execute(
        "SELECT hypertable_name, column_name, time_interval FROM timescaledb_information.dimensions"
        " WHERE hypertable_schema = current_schema() ORDER BY 1"
    ).fetchall()
    assert dims == [
        ("events", "ts", store.CHUNK_INTERVAL),
        ("telemetry", "ts", store.CHUNK_INTERVAL),
    ]


def test_policies_exist(ts_conn: Conn) -> None:
    jobs = {
        (p, h): c
        for p, h, c in ts_conn.execute(
            "SELECT proc_name, hypertable_name, config FROM timescaledb_information.jobs"
        ).fetchall()
    }
    for table in ("telemetry", "events"):
        assert jobs["policy_compression", table]["compress_after"] == "7 days"
        assert jobs["policy_retention", table]["drop_after"] == "90 days"
    # TimescaleDB 2.23 names the continuous aggregate here, not its materialization table.
    refresh = jobs["policy_refresh_continuous_aggregate", "telemetry_5min"]
    assert (refresh["start_offset"], refresh["end_offset"]) == ("1 day", "00:05:00")


def test_changed_retention_replaces_the_policy(ts_conn: Conn) -> None:
    query = (
        "SELECT config ->> 'drop_after' FROM timescaledb_information.jobs"
        " WHERE proc_name = 'policy_retention' AND hypertable_name = 'telemetry'"
    )
    try:
        store.migrate(ts_conn, retention_days=30)
        assert scalar(ts_conn, query) == "30 days"
        ts_conn.rollback()
    finally:
        store.migrate(ts_conn, retention_days=90)
    assert scalar(ts_conn, query) == "90 days"


def test_continuous_aggregate_exists_and_answers_in_real_time(ts_conn: Conn) -> None:
    assert (
        scalar(
            ts_conn,
            "SELECT materialized_only FROM timescaledb_information.continuous_aggregates"
            " WHERE view_name = 'telemetry_5min'",
        )
        is False
    )
    base = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
    store.write_batch_and_commit(
        ts_conn,
        [tele("w-01", 1, base + timedelta(minutes=1), 10.0), tele("w-01", 2, base, 20.0)],
        [],
    )
    rows = ts_conn.execute(
        "SELECT device_id, bucket, samples, water_depth_cm_avg, water_depth_cm_max"
        " FROM telemetry_5min"
    ).fetchall()
    assert rows == [("w-01", base, 2, 15.0, 20.0)]


def test_write_batch_dedup(ts_conn: Conn) -> None:
    telemetry = [tele("w-01", seq, NOW - timedelta(minutes=seq)) for seq in range(10)]
    events = [event("cam-03", "e1", NOW), event("cam-03", "e2", NOW)]

    first = store.write_batch_and_commit(ts_conn, telemetry, events)
    again = store.write_batch_and_commit(ts_conn, [*telemetry, telemetry[0]], events)

    assert (len(first.new_telemetry), len(first.new_events)) == (10, 2)
    assert (again.new_telemetry, again.new_events) == ((), ())
    assert (again.duplicate_telemetry, again.duplicate_events) == (11, 2)
    assert store.counts(ts_conn) == store.StoreCounts(0, 0, 10, 2, 0)


def test_redelivery_into_a_compressed_chunk_is_still_a_duplicate(ts_conn: Conn) -> None:
    old = [tele("w-01", seq, NOW - timedelta(days=10, minutes=seq)) for seq in range(5)]
    store.write_batch_and_commit(ts_conn, old, [])
    run_job(ts_conn, "policy_compression", "telemetry")
    compressed = scalar(
        ts_conn,
        "SELECT count(*) FROM timescaledb_information.chunks"
        " WHERE hypertable_name = 'telemetry' AND is_compressed",
    )
    assert compressed >= 1

    again = store.write_batch_and_commit(ts_conn, [*old, tele("w-01", 99, old[0].ts)], [])

    assert again.duplicate_telemetry == 5
    assert [t.seq for t in again.new_telemetry] == [99]
    assert store.counts(ts_conn).telemetry == 6


def test_apply_retention_drops_old_chunks(ts_conn: Conn) -> None:
    store.write_batch_and_commit(
        ts_conn,
        [tele("w-01", 1, NOW - timedelta(days=120)), tele("w-01", 2, NOW - timedelta(hours=1))],
        [event("cam-03", "old", NOW - timedelta(days=120))],
    )

    result = store.apply_retention(ts_conn, 90, NOW)

    assert result.dropped_chunks == {"telemetry": 1, "events": 1}
    assert result.deleted_rows == {"rejections": 0}
    assert [t.seq for t in store.recent_telemetry(ts_conn, None, NOW - timedelta(days=365))] == [2]


def test_retention_policy_job_runs(ts_conn: Conn) -> None:
    store.write_batch_and_commit(
        ts_conn,
        [tele("w-01", 1, NOW - timedelta(days=120)), tele("w-01", 2, NOW - timedelta(hours=1))],
        [],
    )
    run_job(ts_conn, "policy_retention", "telemetry")
    assert store.counts(ts_conn).telemetry == 1


def test_plain_schema_is_converted_when_timescale_arrives(ts_conn: Conn) -> None:
    # A schema of its own, so the shared one keeps its layout for the other tests.
    search_path = scalar(ts_conn, "SHOW search_path")
    ts_conn.execute("DROP SCHEMA IF EXISTS plain_first CASCADE")
    ts_conn.execute("CREATE SCHEMA plain_first")
    ts_conn.execute("SET search_path = plain_first, public")
    ts_conn.commit()
    try:
        plain = store.migrate(ts_conn, prefer_timescale=False)
        store.write_batch_and_commit(ts_conn, [tele("w-01", 1, NOW), tele("w-01", 2, NOW)], [])
        assert plain.backend == "postgresql"

        converted = store.migrate(ts_conn)

        assert converted.backend == "timescaledb"
        assert converted.degraded == ()
        assert store.counts(ts_conn).telemetry == 2
        assert (
            scalar(
                ts_conn,
                "SELECT count(*) FROM timescaledb_information.continuous_aggregates"
                " WHERE view_schema = 'plain_first' AND view_name = 'telemetry_5min'",
            )
            == 1
        )
        # Asked for plain again, the hypertables stay what they are.
        assert store.migrate(ts_conn, prefer_timescale=False).backend == "timescaledb"
    finally:
        ts_conn.rollback()
        # Not RESET: PGlite's session default is pg_catalog alone, not the path clients start with.
        ts_conn.execute(sql.SQL("SET search_path = {}").format(sql.SQL(search_path)))
        ts_conn.execute("DROP SCHEMA plain_first CASCADE")
        ts_conn.commit()
