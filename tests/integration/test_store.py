"""sensing.store against a real PostgreSQL (plain layout)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql

from sensing import store
from sensing.models import Event, Rejection, Telemetry

pytestmark = pytest.mark.integration

Conn = psycopg.Connection[Any]
T0 = datetime(2026, 11, 23, 8, 15, 0, 250_000, tzinfo=UTC)


def tele(device: str, seq: int, ts: datetime = T0, **values: float) -> Telemetry:
    return Telemetry(
        device_id=device, kind="water", ts=ts, seq=seq, values=values or {"water_depth_cm": 1.0}
    )


def event(device: str, event_id: str, ts: datetime = T0, seq: int = 1) -> Event:
    return Event(
        device_id=device,
        kind="camera",
        ts=ts,
        seq=seq,
        event_id=event_id,
        type="falling_object",
        confidence=0.93,
        loc=(120.6203, 31.3121),
        body={"event_id": event_id, "building_id": "B-0042", "floor": 17},
    )


def count(conn: Conn, table: str) -> int:
    row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))).fetchone()
    assert row is not None
    return int(row[0])


def test_migrate_is_idempotent(db_conn: Conn) -> None:
    first = store.migrate(db_conn)
    second = store.migrate(db_conn)

    assert first == second
    assert second.backend == "postgresql"
    assert str(second).startswith("postgresql ")
    versions = db_conn.execute("SELECT version FROM schema_version").fetchall()
    assert versions == [(v,) for v in range(1, store.SCHEMA_VERSION + 1)]
    kinds = dict(
        db_conn.execute(
            "SELECT relname, relkind FROM pg_class WHERE relname = ANY(%s)",
            (["devices", "telemetry", "events", "rejections", "telemetry_5min"],),
        ).fetchall()
    )
    assert kinds == {
        "devices": "r",
        "telemetry": "r",
        "events": "r",
        "rejections": "r",
        "telemetry_5min": "v",
    }
    brin = db_conn.execute(
        "SELECT indexname FROM pg_indexes WHERE indexdef LIKE '%USING brin%' ORDER BY 1"
    ).fetchall()
    assert brin == [("events_ts_brin",), ("telemetry_ts_brin",)]


def test_migrate_needs_no_open_transaction(db_conn: Conn) -> None:
    db_conn.execute("SELECT 1")
    with pytest.raises(store.StoreError, match="no transaction open"):
        store.migrate(db_conn)


def test_write_batch_stores_and_redelivery_counts_once(db_conn: Conn) -> None:
    telemetry = [tele("w-01", seq, T0 + timedelta(seconds=10 * seq)) for seq in range(5)]
    events = [event("cam-03", f"cam-03-{n:06d}", T0 + timedelta(seconds=n)) for n in range(3)]

    first = store.write_batch_and_commit(db_conn, telemetry, events)
    again = store.write_batch_and_commit(db_conn, telemetry, events)

    assert first.new_telemetry == tuple(telemetry)
    assert first.new_events == tuple(events)
    assert (first.duplicate_telemetry, first.duplicate_events) == (0, 0)
    assert again.new_telemetry == ()
    assert again.new_events == ()
    assert (again.duplicate_telemetry, again.duplicate_events) == (5, 3)
    assert (count(db_conn, "telemetry"), count(db_conn, "events")) == (5, 3)


def test_partial_redelivery_reports_only_new_messages(db_conn: Conn) -> None:
    store.write_batch_and_commit(db_conn, [tele("w-01", 1), tele("w-01", 2)], [])
    # Same seq at another ts is a different message (a device that restarted its counter).
    mixed = [tele("w-01", 2), tele("w-01", 3), tele("w-01", 2, T0 + timedelta(hours=1))]

    result = store.write_batch_and_commit(db_conn, mixed, [])

    assert result.new_telemetry == (mixed[1], mixed[2])
    assert result.duplicate_telemetry == 1
    assert count(db_conn, "telemetry") == 4


def test_repeat_within_one_batch_is_new_once(db_conn: Conn) -> None:
    message = tele("w-01", 7)

    result = store.write_batch_and_commit(db_conn, [message, message], [])

    assert result.new_telemetry == (message,)
    assert result.duplicate_telemetry == 1
    assert count(db_conn, "telemetry") == 1


def test_events_dedupe_by_event_id(db_conn: Conn) -> None:
    original = event("cam-03", "cam-03-000077", seq=77)
    # Redelivered with a new MQTT-level seq: still the same event by event_id.
    redelivered = event("cam-03", "cam-03-000077", seq=78)
    other_device = event("cam-04", "cam-03-000077", seq=77)

    first = store.write_batch_and_commit(db_conn, [], [original])
    second = store.write_batch_and_commit(db_conn, [], [redelivered, other_device])

    assert first.new_events == (original,)
    assert second.new_events == (other_device,)
    assert second.duplicate_events == 1
    body = db_conn.execute("SELECT body FROM events WHERE device_id = 'cam-03'").fetchone()
    assert body == ({"event_id": "cam-03-000077", "building_id": "B-0042", "floor": 17},)


def test_write_batch_joins_the_callers_transaction(db_conn: Conn) -> None:
    db_conn.execute("CREATE TEMP TABLE alert_rows (n int)")
    store.write_batch(db_conn, [tele("w-01", 1)], [event("cam-03", "e1")])
    db_conn.execute("INSERT INTO alert_rows VALUES (1)")
    assert db_conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS

    db_conn.rollback()

    assert (count(db_conn, "telemetry"), count(db_conn, "events")) == (0, 0)


def test_write_batch_on_autocommit_connection_is_atomic(db_url: str, db_conn: Conn) -> None:
    bad = Event(
        device_id="cam-03",
        kind="camera",
        ts=T0,
        seq=1,
        event_id="e1",
        type="falling_object",
        confidence=None,
        loc=None,
        body={"text": "\x00"},  # jsonb cannot hold NUL: the events insert fails
    )
    with psycopg.connect(db_url, autocommit=True) as auto:
        with pytest.raises(psycopg.errors.UntranslatableCharacter):
            store.write_batch(auto, [tele("w-01", 1)], [bad])
        assert count(auto, "telemetry") == 0  # the telemetry insert was rolled back with it


def test_write_batch_and_commit_refuses_an_open_transaction(db_conn: Conn) -> None:
    db_conn.execute("SELECT 1")
    with pytest.raises(store.StoreError):
        store.write_batch_and_commit(db_conn, [tele("w-01", 1)], [])


def test_write_batch_rejects_bad_input_before_the_database(db_conn: Conn) -> None:
    naive = tele("w-01", 1, datetime(2026, 11, 23, 8, 15))
    with pytest.raises(ValueError, match="timezone-aware"):
        store.write_batch(db_conn, [naive], [])
    with pytest.raises(ValueError, match="non-finite"):
        store.write_batch(db_conn, [tele("w-01", 1, water_depth_cm=float("nan"))], [])
    assert db_conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


def test_empty_batch_is_a_no_op(db_conn: Conn) -> None:
    result = store.write_batch_and_commit(db_conn, [], [])
    assert result == store.BatchResult((), (), 0, 0)


def test_rejections_are_stored_with_a_payload_prefix(db_conn: Conn) -> None:
    rejections = [
        Rejection(topic="city/water/w-01/telemetry", reason="not_json", detail="x", payload=b"{"),
        Rejection(
            topic="city/water/w-02/telemetry",
            reason="too_large",
            detail="payload over limit",
            payload=b"a" * 5000,
            device_id="w-02",
            kind="water",
        ),
    ]

    assert store.record_rejections(db_conn, rejections) == 2
    db_conn.commit()

    rows = db_conn.execute(
        "SELECT topic, device_id, kind, reason, length(payload_prefix), received IS NOT NULL"
        " FROM rejections ORDER BY id"
    ).fetchall()
    assert rows == [
        ("city/water/w-01/telemetry", None, None, "not_json", 1, True),
        ("city/water/w-02/telemetry", "w-02", "water", "too_large", 1024, True),
    ]
    assert store.record_rejections(db_conn, []) == 0


def test_devices_presence_and_silence(db_conn: Conn) -> None:
    store.upsert_devices(
        db_conn,
        [
            store.DeviceSpec("w-01", "water", (120.61, 31.31), ("Z-1", "Z-2")),
            store.DeviceSpec("g-01", "grid", None),
        ],
    )
    assert [d.online for d in store.list_devices(db_conn)] == [False, False]

    assert store.mark_presence(db_conn, "w-01", True, T0)
    assert not store.mark_presence(db_conn, "w-01", False, T0 - timedelta(minutes=1))  # stale
    assert not store.mark_presence(db_conn, "nobody", True, T0)
    assert store.touch_last_seen(db_conn, {"w-01": T0 + timedelta(seconds=30)}) == []
    assert store.touch_last_seen(db_conn, {"g-01": T0 + timedelta(seconds=5)}) == ["g-01"]
    # An older reading never moves last_seen back.
    store.touch_last_seen(db_conn, {"w-01": T0})

    w01, g01 = sorted(store.list_devices(db_conn), key=lambda d: d.id, reverse=True)
    assert w01 == store.DeviceRow(
        id="w-01",
        kind="water",
        position=(120.61, 31.31),
        zone_ids=("Z-1", "Z-2"),
        online=True,
        last_seen=T0 + timedelta(seconds=30),
        last_status=T0,
        updated=w01.updated,
    )
    assert g01.position is None
    assert g01.online

    silent = store.mark_silent_offline(db_conn, older_than=T0 + timedelta(seconds=10))
    assert silent == ["g-01"]
    assert store.mark_silent_offline(db_conn, older_than=T0 + timedelta(seconds=10)) == []
    assert store.touch_last_seen(db_conn, {"g-01": T0 + timedelta(minutes=5)}) == ["g-01"]

    # Last Will, then a queued reading measured before it: stays offline.
    assert store.mark_presence(db_conn, "w-01", False, T0 + timedelta(minutes=10))
    assert store.touch_last_seen(db_conn, {"w-01": T0 + timedelta(minutes=9)}) == []
    assert store.counts(db_conn).online == 1

    # Re-registering at start keeps presence and updates the position.
    store.upsert_devices(db_conn, [store.DeviceSpec("g-01", "grid", (120.0, 31.0), ("Z-9",))])
    g01 = next(d for d in store.list_devices(db_conn) if d.id == "g-01")
    assert (g01.online, g01.position, g01.zone_ids) == (True, (120.0, 31.0), ("Z-9",))


def test_retention_deletes_only_old_rows(db_conn: Conn) -> None:
    now = datetime(2026, 11, 23, tzinfo=UTC)
    old = [tele("w-01", seq, now - timedelta(days=91, minutes=seq)) for seq in range(25)]
    young = [tele("w-01", 100 + seq, now - timedelta(days=89, minutes=seq)) for seq in range(3)]
    store.write_batch_and_commit(
        db_conn,
        old + young,
        [event("cam-03", "old", now - timedelta(days=95)), event("cam-03", "new", now)],
    )
    store.record_rejections(db_conn, [Rejection("t", "not_json", "x", b"")])
    db_conn.execute("UPDATE rejections SET received = %s", (now - timedelta(days=100),))
    db_conn.commit()

    result = store.apply_retention(db_conn, 90, now, batch_size=10)

    assert result.deleted_rows == {"telemetry": 25, "events": 1, "rejections": 1}
    assert result.dropped_chunks == {}
    remaining = store.recent_telemetry(db_conn, None, now - timedelta(days=365))
    assert sorted(t.seq for t in remaining) == [100, 101, 102]
    assert db_conn.execute("SELECT event_id FROM events").fetchall() == [("new",)]


def test_values_and_timestamps_round_trip(db_conn: Conn) -> None:
    ts = datetime(2026, 11, 23, 8, 15, 0, 123_000, tzinfo=UTC)
    sent = [
        Telemetry(
            device_id="t-01",
            kind="traffic",
            ts=ts,
            seq=2**40,
            values={"flow_veh_h": 1234.0, "speed_kmh": 0.1 + 0.2, "occupancy_pct": 1e-7},
            loc=(120.62031234567, 31.31215),
        ),
        tele("w-01", 1, ts + timedelta(milliseconds=1), water_depth_cm=12.5, battery_v=3.61),
    ]
    store.write_batch_and_commit(db_conn, sent, [])

    got = store.recent_telemetry(db_conn, ["t-01", "w-01"], ts)

    assert got == sent
    assert got[0].ts.utcoffset() == timedelta(0)
    assert store.recent_telemetry(db_conn, ["w-01"], ts + timedelta(milliseconds=2)) == []


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    value=st.floats(allow_nan=False, allow_infinity=False),
    micros=st.integers(min_value=0, max_value=999_999),
)
def test_any_finite_float_round_trips(db_conn: Conn, value: float, micros: int) -> None:
    sent = tele("w-01", 1, T0.replace(microsecond=micros), water_depth_cm=value)
    store.write_batch(db_conn, [sent], [])
    try:
        (got,) = store.recent_telemetry(db_conn, ["w-01"], T0.replace(microsecond=0))
        assert got == sent  # bit-exact, except that jsonb's numeric has no -0.0
        assert type(got.values["water_depth_cm"]) is float
    finally:
        db_conn.rollback()


def test_five_minute_view_buckets_per_device(db_conn: Conn) -> None:
    base = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
    store.write_batch_and_commit(
        db_conn,
        [
            tele("w-01", 1, base + timedelta(minutes=1), water_depth_cm=10.0),
            tele("w-01", 2, base + timedelta(minutes=4), water_depth_cm=20.0),
            tele("w-01", 3, base + timedelta(minutes=6), water_depth_cm=5.0),
            tele("r-01", 1, base + timedelta(minutes=2), rain_rate_mm_h=30.0),
        ],
        [],
    )
    rows = db_conn.execute(
        "SELECT device_id, bucket, samples, water_depth_cm_avg, water_depth_cm_max,"
        " rain_rate_mm_h_max FROM telemetry_5min ORDER BY device_id, bucket"
    ).fetchall()
    assert rows == [
        ("r-01", base, 1, None, None, 30.0),
        ("w-01", base, 2, 15.0, 20.0, None),
        ("w-01", base + timedelta(minutes=5), 1, 5.0, 5.0, None),
    ]


def test_counts(db_conn: Conn) -> None:
    store.upsert_devices(db_conn, [store.DeviceSpec("w-01", "water", (120.6, 31.3))])
    store.write_batch(
        db_conn,
        [tele("w-01", 1, T0 - timedelta(days=2)), tele("w-01", 2)],
        [event("cam-03", "e1")],
    )
    store.record_rejections(db_conn, [Rejection("t", "not_json", "x", b"")])

    assert store.counts(db_conn) == store.StoreCounts(
        devices=1, online=0, telemetry=2, events=1, rejections=1
    )
    recent = store.counts(db_conn, since=T0 - timedelta(days=1))
    assert (recent.telemetry, recent.events) == (1, 1)


def test_migrate_refuses_a_system_schema(db_conn: Conn) -> None:
    db_conn.execute("SET search_path = pg_catalog")
    db_conn.commit()
    with pytest.raises(store.StoreError, match="pg_catalog"):
        store.migrate(db_conn)


def test_a_city_registry_is_written_once_and_a_restart_rewrites_nothing(
        fresh_db_url: str) -> None:
    """The registry by COPY (beyond a hundred devices); the same registry again changes no row;
    a role that may not create temporary tables (the embedded database's service role) gets the
    same result the slow way."""
    specs = [store.DeviceSpec(f"d{i:05d}", "water", (120.0 + i * 1e-5, 31.0), (f"Z{i % 7}",))
             for i in range(1500)]
    with psycopg.connect(fresh_db_url, autocommit=True) as conn:
        store.migrate(conn, prefer_timescale=False)
        assert store.upsert_devices(conn, specs) == 1500
        assert store.upsert_devices(conn, specs) == 0
        moved = [store.DeviceSpec(s.id, s.kind, (121.0, 31.0), ()) for s in specs[:3]]
        assert store.upsert_devices(conn, moved + specs[3:]) == 3
        role = f"cw_notemp_{fresh_db_url.rsplit('_', 1)[-1]}"
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        db = conn.info.dbname
        conn.execute(sql.SQL("REVOKE TEMPORARY ON DATABASE {} FROM PUBLIC").format(
            sql.Identifier(db)))
        conn.execute(sql.SQL("GRANT SELECT, INSERT, UPDATE ON devices TO {}").format(
            sql.Identifier(role)))
    try:
        limited = psycopg.conninfo.make_conninfo(fresh_db_url, user=role)
        try:
            conn = psycopg.connect(limited, autocommit=True)
        except psycopg.OperationalError as exc:  # a server that asks for passwords
            pytest.skip(f"cannot log in as a new role here: {exc}")
        with conn:
            assert conn.execute("SELECT has_database_privilege(current_database(), "
                                "'TEMPORARY')").fetchone() == (False,)
            assert store.upsert_devices(conn, specs) == 3  # the three moved back
            rows = conn.execute("SELECT count(*), min(lon) FROM devices").fetchone()
        assert rows == (1500, 120.0)
    finally:
        with psycopg.connect(fresh_db_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
