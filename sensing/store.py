"""Durable storage of device data in PostgreSQL, with TimescaleDB when the server has it.

One schema, two layouts. ``migrate`` creates the tables and, when the ``timescaledb`` extension can
be used, turns ``telemetry`` and ``events`` into hypertables with compression, retention and a
continuous aggregate ``telemetry_5min``; otherwise it adds BRIN indexes and a plain view of the same
name, and the caller schedules ``apply_retention``. Readers see the same names either way.

Transactions: every function here runs in the caller's transaction and never commits, except
``migrate``, ``apply_retention`` and ``write_batch_and_commit``, which need a connection with no
transaction open and commit their own work. On an autocommit connection outside a transaction block
each call is its own transaction, as any statement would be.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final, Literal

import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus
from psycopg.rows import kwargs_row

from sensing.models import Event, Position, Rejection, Telemetry

log = logging.getLogger(__name__)

SCHEMA_VERSION: Final = 2
PAYLOAD_PREFIX_BYTES: Final = 1024
CHUNK_INTERVAL: Final = timedelta(days=1)
COMPRESS_AFTER: Final = timedelta(days=7)
HYPERTABLES: Final = ("telemetry", "events")
AGGREGATE_VALUES: Final = ("water_depth_cm", "rain_rate_mm_h", "speed_kmh")
# Any constant works: it only serialises concurrent migrate() calls from several processes.
_MIGRATE_LOCK: Final = 0x63697479_77617463  # "citywatc"

Conn = psycopg.Connection[Any]


class StoreError(Exception):
    """Storage was used wrongly or the database is not in a state this code can work with."""


@dataclass(frozen=True, slots=True)
class StorageMode:
    """Which layout ``migrate`` set up, and what of TimescaleDB did not work."""

    backend: Literal["timescaledb", "postgresql"]
    server_version: str
    timescaledb_version: str | None = None
    # What of TimescaleDB failed and was skipped, each "what: error"; empty when all worked.
    # Not having the extension at all is not listed: that is plain PostgreSQL working as meant.
    degraded: tuple[str, ...] = ()

    @property
    def is_timescale(self) -> bool:
        return self.backend == "timescaledb"

    def __str__(self) -> str:
        if self.timescaledb_version is None:
            return f"postgresql {self.server_version}"
        return f"timescaledb {self.timescaledb_version} on postgresql {self.server_version}"


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    """A registry entry as configured: what ``upsert_devices`` writes."""

    id: str
    kind: str
    position: Position | None
    zone_ids: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class DeviceRow:
    """A device as stored, with its presence."""

    id: str
    kind: str
    position: Position | None
    zone_ids: tuple[str, ...]
    online: bool
    last_seen: datetime | None  # newest telemetry ts
    last_status: datetime | None  # when the last status message was applied
    updated: datetime


@dataclass(frozen=True, slots=True)
class BatchResult:
    """What ``write_batch`` stored. Only ``new_*`` should go on to the rules."""

    new_telemetry: tuple[Telemetry, ...]
    new_events: tuple[Event, ...]
    duplicate_telemetry: int
    duplicate_events: int


@dataclass(frozen=True, slots=True)
class RetentionResult:
    """What ``apply_retention`` removed, per table."""

    deleted_rows: Mapping[str, int]  # plain tables, deleted in batches
    dropped_chunks: Mapping[str, int]  # hypertables, whole chunks dropped


@dataclass(frozen=True, slots=True)
class StoreCounts:
    devices: int
    online: int
    telemetry: int
    events: int
    rejections: int


# --- schema ---------------------------------------------------------------------------------

# Append-only: a released migration is never edited, a change is a new entry.
_MIGRATIONS: Final[Mapping[int, tuple[sql.SQL, ...]]] = {
    1: (
        sql.SQL("""
            CREATE TABLE devices (
                id text PRIMARY KEY,
                kind text NOT NULL,
                lon double precision,
                lat double precision,
                zone_ids text[] NOT NULL DEFAULT '{}',
                online boolean NOT NULL DEFAULT false,
                last_seen timestamptz,
                last_status timestamptz,
                updated timestamptz NOT NULL DEFAULT now()
            )"""),
        # The unique keys include ts because a hypertable's unique indexes must hold its time
        # column; a redelivered message carries the same ts, so dedup still works.
        sql.SQL("""
            CREATE TABLE telemetry (
                device_id text NOT NULL,
                kind text NOT NULL,
                ts timestamptz NOT NULL,
                seq bigint NOT NULL,
                received timestamptz NOT NULL DEFAULT now(),
                "values" jsonb NOT NULL,
                lon double precision,
                lat double precision,
                CONSTRAINT telemetry_message_key UNIQUE (device_id, seq, ts)
            )"""),
        sql.SQL("""
            CREATE TABLE events (
                device_id text NOT NULL,
                kind text NOT NULL,
                ts timestamptz NOT NULL,
                seq bigint,  -- optional on events (CONTRACT section 1)
                event_id text NOT NULL,
                type text NOT NULL,
                confidence double precision,
                lon double precision,
                lat double precision,
                body jsonb NOT NULL,
                received timestamptz NOT NULL DEFAULT now(),
                CONSTRAINT events_message_key UNIQUE (device_id, event_id, ts)
            )"""),
        sql.SQL("""
            CREATE TABLE rejections (
                id bigserial PRIMARY KEY,
                received timestamptz NOT NULL DEFAULT now(),
                topic text NOT NULL,
                device_id text,
                kind text,
                reason text NOT NULL,
                detail text NOT NULL,
                payload_prefix bytea NOT NULL
            )"""),
        sql.SQL("CREATE INDEX telemetry_device_ts_idx ON telemetry (device_id, ts DESC)"),
        sql.SQL("CREATE INDEX events_device_ts_idx ON events (device_id, ts DESC)"),
        sql.SQL("CREATE INDEX rejections_received_idx ON rejections (received)"),
    ),
    2: (
        # Devices whose clocks are off, as the engine learned them (citywatch.clocks): kept so
        # that a restart does not judge a slow device's readings by its wrong clock again.
        sql.SQL("""
            CREATE TABLE device_clocks (
                device_id text PRIMARY KEY,
                offset_s double precision NOT NULL,
                since timestamptz
            )"""),
    ),
}


def _aggregate_select(bucket: sql.Composable) -> sql.Composed:
    """The body of ``telemetry_5min``; ``bucket`` is time_bucket or date_bin."""
    columns: list[sql.Composable] = []
    for key in AGGREGATE_VALUES:
        value = sql.SQL("""("values" ->> {})::double precision""").format(sql.Literal(key))
        columns.append(sql.SQL("avg({}) AS {}").format(value, sql.Identifier(f"{key}_avg")))
        columns.append(sql.SQL("max({}) AS {}").format(value, sql.Identifier(f"{key}_max")))
    return sql.SQL(
        "SELECT device_id, {bucket} AS bucket, count(*) AS samples, {columns}"
        " FROM telemetry GROUP BY device_id, {bucket}"
    ).format(bucket=bucket, columns=sql.SQL(", ").join(columns))


_TIME_BUCKET: Final = sql.SQL("time_bucket(INTERVAL '5 minutes', ts)")
# time_bucket's default origin for timestamptz, so both layouts put rows in the same buckets.
_DATE_BIN: Final = sql.SQL(
    "date_bin(INTERVAL '5 minutes', ts, TIMESTAMPTZ '2000-01-03 00:00:00+00')"
)


def migrate(conn: Conn, *, retention_days: int = 90, prefer_timescale: bool = True) -> StorageMode:
    """Create or upgrade the sensing schema; safe to run at every start.

    Uses TimescaleDB when the extension is installed or can be created (unless
    ``prefer_timescale`` is false and the tables are not hypertables already). A Timescale feature
    that fails is logged, listed in ``StorageMode.degraded`` and skipped; the schema still works.
    Commits; needs a connection with no transaction open.
    """
    if retention_days < 1:
        raise ValueError(f"retention_days must be 1 or more, got {retention_days}")
    _require_idle(conn, "migrate")
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATE_LOCK,))
        _require_user_schema(conn)
        _apply_migrations(conn)
        degraded: list[str] = []
        ts_version = _timescale_version(conn, prefer_timescale, degraded)
        if ts_version is not None and not prefer_timescale and not _hypertables(conn):
            ts_version = None
        if ts_version is not None:
            ts_version = _setup_timescale(conn, retention_days, degraded)
        if ts_version is None:
            _setup_plain(conn)
    version = conn.info.server_version
    mode = StorageMode(
        backend="postgresql" if ts_version is None else "timescaledb",
        server_version=f"{version // 10000}.{version % 10000}",
        timescaledb_version=ts_version,
        degraded=tuple(degraded),
    )
    log.info("sensing storage ready: %s (schema version %d)", mode, SCHEMA_VERSION)
    return mode


def _require_user_schema(conn: Conn) -> None:
    # Tables go in the first schema of search_path; never let that be a system schema.
    row = conn.execute("SELECT current_schema()").fetchone()
    schema = None if row is None else row[0]
    if schema is None or schema == "information_schema" or str(schema).startswith("pg_"):
        raise StoreError(
            f"search_path puts the sensing tables in {schema!r}; set it to an application schema"
        )


def _apply_migrations(conn: Conn) -> None:
    conn.execute(
        """CREATE TABLE IF NOT EXISTS schema_version (
               version integer PRIMARY KEY,
               applied timestamptz NOT NULL DEFAULT now())"""
    )
    row = conn.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()
    current = int(row[0]) if row else 0
    if current > SCHEMA_VERSION:
        raise StoreError(
            f"database schema version {current} is newer than this citywatch knows "
            f"({SCHEMA_VERSION}); upgrade citywatch rather than run an old one against it"
        )
    for version in sorted(v for v in _MIGRATIONS if v > current):
        for statement in _MIGRATIONS[version]:
            conn.execute(statement)
        conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (version,))
        log.info("sensing schema migrated to version %d", version)


def _timescale_version(conn: Conn, create: bool, degraded: list[str]) -> str | None:
    """The installed timescaledb version, creating the extension if allowed and possible."""
    row = conn.execute(
        "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'"
    ).fetchone()
    if row is not None:
        return str(row[0])
    if not create:
        return None
    available = conn.execute(
        "SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'"
    ).fetchone()
    if available is None:
        log.info("timescaledb is not installed on the server: using plain PostgreSQL")
        return None
    try:
        # Savepoint: a failure (not preloaded, no privilege) must not abort the migration.
        with conn.transaction():
            conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
    except psycopg.Error as exc:
        log.warning("cannot create extension timescaledb, using plain PostgreSQL: %s", exc)
        degraded.append(f"create extension timescaledb: {type(exc).__name__}: {exc}")
        return None
    return _timescale_version(conn, False, degraded)


def _hypertables(conn: Conn) -> set[str]:
    """Names of hypertables in the current schema; empty without the extension."""
    has_ext = conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'").fetchone()
    if has_ext is None:
        return set()
    rows = conn.execute(
        """SELECT hypertable_name FROM timescaledb_information.hypertables
           WHERE hypertable_schema = current_schema()"""
    ).fetchall()
    return {str(r[0]) for r in rows}


@contextmanager
def _feature(conn: Conn, what: str, degraded: list[str]) -> Iterator[None]:
    """Run one optional Timescale step in a savepoint; on failure log it and carry on."""
    try:
        with conn.transaction():
            yield
    except psycopg.Error as exc:
        message = f"{what}: {type(exc).__name__}: {str(exc).strip()}"
        log.warning("timescaledb feature skipped, %s", message)
        degraded.append(message)


def _setup_timescale(conn: Conn, retention_days: int, degraded: list[str]) -> str | None:
    """Hypertables and their policies. Returns None if even the hypertables failed."""
    try:
        with conn.transaction():
            for table in HYPERTABLES:
                conn.execute(
                    "SELECT create_hypertable(%s::regclass, by_range('ts', %s::interval),"
                    " if_not_exists => TRUE, migrate_data => TRUE)",
                    (table, CHUNK_INTERVAL),
                )
    except psycopg.Error as exc:
        log.warning("cannot create hypertables, using plain PostgreSQL layout: %s", exc)
        degraded.append(f"hypertables: {type(exc).__name__}: {exc}")
        return None
    row = conn.execute(
        "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'"
    ).fetchone()
    version = str(row[0]) if row else "unknown"

    compressed = {
        str(r[0])
        for r in conn.execute(
            """SELECT hypertable_name FROM timescaledb_information.hypertables
               WHERE hypertable_schema = current_schema() AND compression_enabled"""
        ).fetchall()
    }
    retention = timedelta(days=retention_days)
    for table in HYPERTABLES:
        if table not in compressed:
            # Changing these settings later needs all chunks decompressed, so set them once.
            with _feature(conn, f"compression on {table}", degraded):
                conn.execute(
                    sql.SQL(
                        "ALTER TABLE {} SET (timescaledb.compress,"
                        " timescaledb.compress_segmentby = 'device_id',"
                        " timescaledb.compress_orderby = 'ts DESC')"
                    ).format(sql.Identifier(table))
                )
        with _feature(conn, f"compression policy on {table}", degraded):
            conn.execute(
                "SELECT add_compression_policy(%s::regclass, compress_after => %s::interval,"
                " if_not_exists => TRUE)",
                (table, COMPRESS_AFTER),
            )
        with _feature(conn, f"retention policy on {table}", degraded):
            _ensure_retention_policy(conn, table, retention)

    with _feature(conn, "continuous aggregate telemetry_5min", degraded):
        _ensure_continuous_aggregate(conn)
    if not _is_continuous_aggregate(conn, "telemetry_5min"):
        _create_plain_aggregate_view(conn)  # readers still find the name
    else:
        with _feature(conn, "refresh policy on telemetry_5min", degraded):
            conn.execute(
                "SELECT add_continuous_aggregate_policy('telemetry_5min',"
                " start_offset => INTERVAL '1 day', end_offset => INTERVAL '5 minutes',"
                " schedule_interval => INTERVAL '5 minutes', if_not_exists => TRUE)"
            )
    return version


def _ensure_retention_policy(conn: Conn, table: str, retention: timedelta) -> None:
    # add_retention_policy(if_not_exists) keeps an existing policy even if drop_after differs,
    # so a changed retention_days needs the old policy removed first.
    row = conn.execute(
        """SELECT (config ->> 'drop_after')::interval = %s::interval
           FROM timescaledb_information.jobs
           WHERE proc_name = 'policy_retention' AND hypertable_schema = current_schema()
             AND hypertable_name = %s""",
        (retention, table),
    ).fetchone()
    if row is not None and row[0]:
        return
    if row is not None:
        conn.execute("SELECT remove_retention_policy(%s::regclass)", (table,))
    conn.execute(
        "SELECT add_retention_policy(%s::regclass, drop_after => %s::interval)", (table, retention)
    )


def _relation_kind(conn: Conn, name: str) -> str | None:
    """pg_class.relkind of ``name`` in the current schema ('v' for a view), None if absent."""
    row = conn.execute(
        """SELECT c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE c.relname = %s AND n.nspname = current_schema()""",
        (name,),
    ).fetchone()
    return None if row is None else str(row[0])


def _is_continuous_aggregate(conn: Conn, name: str) -> bool:
    row = conn.execute(
        """SELECT 1 FROM timescaledb_information.continuous_aggregates
           WHERE view_schema = current_schema() AND view_name = %s""",
        (name,),
    ).fetchone()
    return row is not None


def _ensure_continuous_aggregate(conn: Conn) -> None:
    if _is_continuous_aggregate(conn, "telemetry_5min"):
        return
    if _relation_kind(conn, "telemetry_5min") == "v":
        conn.execute("DROP VIEW telemetry_5min")  # the plain view from a start without Timescale
    # WITH NO DATA: creating with data cannot run in a transaction; the policy fills it.
    # materialized_only = false: readers also see rows newer than the last refresh, as with
    # the plain view (and where background jobs never run, as in PGlite).
    conn.execute(
        sql.SQL(
            "CREATE MATERIALIZED VIEW telemetry_5min WITH (timescaledb.continuous,"
            " timescaledb.materialized_only = false) AS {} WITH NO DATA"
        ).format(_aggregate_select(_TIME_BUCKET))
    )


def _create_plain_aggregate_view(conn: Conn) -> None:
    conn.execute(
        sql.SQL("CREATE OR REPLACE VIEW telemetry_5min AS {}").format(_aggregate_select(_DATE_BIN))
    )


def _setup_plain(conn: Conn) -> None:
    # BRIN: rows arrive roughly in ts order, so a tiny index prunes old blocks for range scans.
    for table in HYPERTABLES:
        conn.execute(
            sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} USING brin (ts)").format(
                sql.Identifier(f"{table}_ts_brin"), sql.Identifier(table)
            )
        )
    _create_plain_aggregate_view(conn)


def apply_retention(
    conn: Conn, retention_days: int, now: datetime, *, batch_size: int = 10_000
) -> RetentionResult:
    """Remove telemetry, events and rejections older than ``retention_days`` before ``now``.

    Plain tables lose rows in batches of ``batch_size``, each batch its own transaction so locks
    stay short; hypertables lose whole chunks (``drop_chunks``), as their retention policy would.
    Safe in either mode, and where Timescale's background jobs do not run. Commits; needs a
    connection with no transaction open.
    """
    if retention_days < 1 or batch_size < 1:
        raise ValueError("retention_days and batch_size must be 1 or more")
    _require_aware(now, "now")
    _require_idle(conn, "apply_retention")
    cutoff = now - timedelta(days=retention_days)
    with conn.transaction():
        hypertables = _hypertables(conn)
    deleted: dict[str, int] = {}
    dropped: dict[str, int] = {}
    keys = {
        "telemetry": ("ts", ("device_id", "seq", "ts")),
        "events": ("ts", ("device_id", "event_id", "ts")),
        "rejections": ("received", ("id",)),
    }
    for table, (time_column, key) in keys.items():
        if table in hypertables:
            with conn.transaction():
                chunks = conn.execute(
                    "SELECT drop_chunks(%s::regclass, older_than => %s::timestamptz)",
                    (table, cutoff),
                ).fetchall()
            dropped[table] = len(chunks)
            continue
        # Delete by unique key, not ctid: key lookups are safe whatever the table's layout.
        key_cols = sql.SQL(", ").join(map(sql.Identifier, key))
        statement = sql.SQL(
            "DELETE FROM {table} WHERE ({key}) IN"
            " (SELECT {key} FROM {table} WHERE {time} < %s LIMIT %s)"
        ).format(table=sql.Identifier(table), key=key_cols, time=sql.Identifier(time_column))
        total = 0
        while True:
            with conn.transaction():
                count = conn.execute(statement, (cutoff, batch_size)).rowcount
            total += count
            if count < batch_size:
                break
        deleted[table] = total
    log.info("retention before %s: deleted %s, dropped chunks %s", cutoff, deleted, dropped)
    return RetentionResult(deleted_rows=deleted, dropped_chunks=dropped)


# --- writes ---------------------------------------------------------------------------------

_INSERT_TELEMETRY: Final = sql.SQL("""
    INSERT INTO telemetry (device_id, kind, ts, seq, "values", lon, lat)
    SELECT device_id, kind, ts, seq, vals::jsonb, lon, lat
    FROM unnest(%b::text[], %b::text[], %b::timestamptz[], %b::bigint[], %b::text[],
                %b::float8[], %b::float8[]) AS u(device_id, kind, ts, seq, vals, lon, lat)
    ON CONFLICT DO NOTHING
    RETURNING device_id, seq, ts""")

_INSERT_EVENTS: Final = sql.SQL("""
    INSERT INTO events (device_id, kind, ts, seq, event_id, type, confidence, lon, lat, body)
    SELECT device_id, kind, ts, seq, event_id, type, confidence, lon, lat, body::jsonb
    FROM unnest(%b::text[], %b::text[], %b::timestamptz[], %b::bigint[], %b::text[], %b::text[],
                %b::float8[], %b::float8[], %b::float8[], %b::text[])
         AS u(device_id, kind, ts, seq, event_id, type, confidence, lon, lat, body)
    ON CONFLICT DO NOTHING
    RETURNING device_id, event_id, ts""")


def write_batch(conn: Conn, telemetry: Sequence[Telemetry], events: Sequence[Event]) -> BatchResult:
    """Store telemetry and events, one statement per table; duplicates are skipped.

    Runs in the caller's transaction and does not commit, so alert rows can be written in the
    same transaction (on an autocommit connection outside a transaction block it is its own
    transaction). A message delivered twice, in this batch or an earlier one, is new only once.
    Raises ValueError, before touching the database, for naive timestamps or non-finite values.
    """
    t_args = _telemetry_columns(telemetry)
    e_args = _event_columns(events)
    with _atomic(conn):
        t_keys: set[tuple[str, int, datetime]] = set()
        if telemetry:
            t_keys = {(r[0], r[1], r[2]) for r in conn.execute(_INSERT_TELEMETRY, t_args)}
        e_keys: set[tuple[str, str, datetime]] = set()
        if events:
            e_keys = {(r[0], r[1], r[2]) for r in conn.execute(_INSERT_EVENTS, e_args)}
    new_t: list[Telemetry] = []
    for t in telemetry:
        key = (t.device_id, t.seq, t.ts)
        if key in t_keys:
            t_keys.discard(key)  # a repeat within the batch is not new a second time
            new_t.append(t)
    new_e: list[Event] = []
    for e in events:
        ekey = (e.device_id, e.event_id, e.ts)
        if ekey in e_keys:
            e_keys.discard(ekey)
            new_e.append(e)
    return BatchResult(
        new_telemetry=tuple(new_t),
        new_events=tuple(new_e),
        duplicate_telemetry=len(telemetry) - len(new_t),
        duplicate_events=len(events) - len(new_e),
    )


def write_batch_and_commit(
    conn: Conn, telemetry: Sequence[Telemetry], events: Sequence[Event]
) -> BatchResult:
    """``write_batch`` in its own transaction, committed; needs no transaction open."""
    _require_idle(conn, "write_batch_and_commit")
    with conn.transaction():
        return write_batch(conn, telemetry, events)


def record_rejections(conn: Conn, rejections: Sequence[Rejection]) -> int:
    """Store rejected messages (first KB of the payload); returns the number stored."""
    if not rejections:
        return 0
    cur = conn.execute(
        """INSERT INTO rejections (topic, device_id, kind, reason, detail, payload_prefix)
           SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::text[],
                                %s::bytea[])""",
        (
            [r.topic for r in rejections],
            [r.device_id for r in rejections],
            [r.kind for r in rejections],
            [r.reason for r in rejections],
            [r.detail for r in rejections],
            [r.payload[:PAYLOAD_PREFIX_BYTES] for r in rejections],
        ),
    )
    return cur.rowcount


def upsert_devices(conn: Conn, devices: Sequence[DeviceSpec]) -> int:
    """Write the configured registry; keeps each device's presence. Returns rows changed.

    Through COPY into a scratch table and one merge that skips unchanged rows: a city's 100,000
    devices are written in about a second, and a restart with the same registry rewrites none.
    """
    if not devices:
        return 0
    if len(devices) <= _SMALL_UPSERT:
        return _upsert_few(conn, devices)
    with _atomic(conn):
        try:
            with conn.transaction():  # a savepoint: a role without TEMP goes the slow way
                conn.execute("""CREATE TEMP TABLE IF NOT EXISTS devices_in (id text, kind text,
                                lon float8, lat float8, zone_ids text[]) ON COMMIT DROP""")
        except psycopg.errors.InsufficientPrivilege:
            return sum(_upsert_few(conn, devices[i:i + _SLOW_CHUNK])
                       for i in range(0, len(devices), _SLOW_CHUNK))
        conn.execute("TRUNCATE devices_in")
        with conn.cursor().copy(
                "COPY devices_in (id, kind, lon, lat, zone_ids) FROM STDIN") as copy:
            for d in devices:
                copy.write_row((d.id, d.kind, d.position[0] if d.position else None,
                                d.position[1] if d.position else None, list(d.zone_ids)))
        cur = conn.execute(
            """INSERT INTO devices AS d (id, kind, lon, lat, zone_ids)
               SELECT DISTINCT ON (id) id, kind, lon, lat, zone_ids FROM devices_in
               ON CONFLICT (id) DO UPDATE SET kind = excluded.kind, lon = excluded.lon,
                   lat = excluded.lat, zone_ids = excluded.zone_ids, updated = now()
               WHERE (d.kind, d.lon, d.lat, d.zone_ids)
                     IS DISTINCT FROM (excluded.kind, excluded.lon, excluded.lat,
                                       excluded.zone_ids)""")
        return cur.rowcount


# Up to this many (a device added at run time), one statement and no temporary table: the
# service's role may not create temporary tables (the embedded database revokes TEMP).
_SMALL_UPSERT: Final = 100
_SLOW_CHUNK: Final = 5000


def _upsert_few(conn: Conn, devices: Sequence[DeviceSpec]) -> int:
    cur = conn.execute(
        """INSERT INTO devices AS d (id, kind, lon, lat, zone_ids)
           SELECT id, kind, lon, lat, ARRAY(SELECT jsonb_array_elements_text(zones::jsonb))
           FROM unnest(%s::text[], %s::text[], %s::float8[], %s::float8[], %s::text[])
                AS u(id, kind, lon, lat, zones)
           ON CONFLICT (id) DO UPDATE SET kind = excluded.kind, lon = excluded.lon,
               lat = excluded.lat, zone_ids = excluded.zone_ids, updated = now()
           WHERE (d.kind, d.lon, d.lat, d.zone_ids)
                 IS DISTINCT FROM (excluded.kind, excluded.lon, excluded.lat,
                                   excluded.zone_ids)""",
        # zone_ids travel as JSON text: a text[][] would need every device's list the same length.
        (
            [d.id for d in devices],
            [d.kind for d in devices],
            [d.position[0] if d.position else None for d in devices],
            [d.position[1] if d.position else None for d in devices],
            [json.dumps(list(d.zone_ids)) for d in devices],
        ),
    )
    return cur.rowcount


def save_clock_offsets(conn: Conn,
                       offsets: Mapping[str, tuple[timedelta, datetime | None]]) -> None:
    """Record devices' clock offsets (device minus fleet); a zero offset forgets the device."""
    zero = [d for d, (off, _since) in offsets.items() if not off]
    kept = {d: v for d, v in offsets.items() if v[0]}
    if zero:
        conn.execute("DELETE FROM device_clocks WHERE device_id = ANY(%s)", (zero,))
    if kept:
        conn.execute(
            """INSERT INTO device_clocks (device_id, offset_s, since)
               SELECT * FROM unnest(%s::text[], %s::float8[], %s::timestamptz[])
               ON CONFLICT (device_id) DO UPDATE
               SET offset_s = EXCLUDED.offset_s, since = EXCLUDED.since""",
            (list(kept), [off.total_seconds() for off, _ in kept.values()],
             [since for _, since in kept.values()]))


def load_clock_offsets(conn: Conn) -> dict[str, tuple[timedelta, datetime | None]]:
    """The clock offsets ``save_clock_offsets`` recorded, by device."""
    rows = conn.execute("SELECT device_id, offset_s, since FROM device_clocks").fetchall()
    return {str(d): (timedelta(seconds=float(off)), since) for d, off, since in rows}


def mark_presence(conn: Conn, device_id: str, online: bool, ts: datetime) -> bool:
    """Apply a status message received at ``ts``.

    Returns False if the device is unknown or a newer status was already applied (a retained
    message redelivered late must not undo a newer state).
    """
    _require_aware(ts, "ts")
    cur = conn.execute(
        """UPDATE devices SET online = %s, last_status = %s, updated = now()
           WHERE id = %s AND (last_status IS NULL OR last_status <= %s)""",
        (online, ts, device_id, ts),
    )
    return cur.rowcount == 1


def touch_last_seen(conn: Conn, seen: Mapping[str, datetime]) -> list[str]:
    """Record the newest telemetry time per device, in one statement.

    Telemetry measured after the last status message means the device is online. Returns the
    ids that were offline and are now online again.
    """
    if not seen:
        return []
    for ts in seen.values():
        _require_aware(ts, "last seen time")
    rows = conn.execute(
        """UPDATE devices d
           SET last_seen = greatest(d.last_seen, s.ts),
               online = d.online OR s.ts >= coalesce(d.last_status, '-infinity'),
               updated = now()
           FROM (SELECT u.id, u.ts, p.online AS was_online
                 FROM unnest(%s::text[], %s::timestamptz[]) AS u(id, ts)
                 JOIN devices p ON p.id = u.id) AS s
           WHERE d.id = s.id
           RETURNING d.id, s.was_online, d.online""",
        (list(seen), list(seen.values())),
    ).fetchall()
    return sorted(str(r[0]) for r in rows if not r[1] and r[2])


def mark_silent_offline(conn: Conn, older_than: datetime) -> list[str]:
    """Mark offline every online device heard from (telemetry or status) before ``older_than``.

    Returns the ids it changed. ``last_status`` is left alone: silence is not a status message.
    """
    _require_aware(older_than, "older_than")
    rows = conn.execute(
        """UPDATE devices SET online = false, updated = now()
           WHERE online AND coalesce(greatest(last_seen, last_status), updated) < %s
           RETURNING id""",
        (older_than,),
    ).fetchall()
    return sorted(str(r[0]) for r in rows)


# --- reads ----------------------------------------------------------------------------------


def _device_row(
    *,
    device_id: str,
    kind: str,
    lon: float | None,
    lat: float | None,
    zone_ids: list[str],
    online: bool,
    last_seen: datetime | None,
    last_status: datetime | None,
    updated: datetime,
) -> DeviceRow:
    return DeviceRow(
        id=device_id,
        kind=kind,
        position=_position(lon, lat),
        zone_ids=tuple(zone_ids),
        online=online,
        last_seen=last_seen,
        last_status=last_status,
        updated=updated,
    )


def _telemetry_row(
    *,
    device_id: str,
    kind: str,
    ts: datetime,
    seq: int,
    values: dict[str, float],
    lon: float | None,
    lat: float | None,
) -> Telemetry:
    # jsonb prints an integral number without a decimal point (1e308 as 1000...0), which json
    # reads back as an int; the model promises floats.
    floats = {k: float(v) for k, v in values.items()}
    return Telemetry(
        device_id=device_id, kind=kind, ts=ts, seq=seq, values=floats, loc=_position(lon, lat)
    )


def list_devices(conn: Conn) -> list[DeviceRow]:
    with conn.cursor(row_factory=kwargs_row(_device_row)) as cur:
        cur.execute(
            """SELECT id AS device_id, kind, lon, lat, zone_ids, online, last_seen, last_status,
                      updated
               FROM devices ORDER BY id"""
        )
        return cur.fetchall()


def recent_telemetry(
    conn: Conn, device_ids: Collection[str] | None, since: datetime
) -> list[Telemetry]:
    """Telemetry measured at or after ``since``, oldest first; all devices when ids is None."""
    _require_aware(since, "since")
    with conn.cursor(row_factory=kwargs_row(_telemetry_row)) as cur:
        if device_ids is None:
            cur.execute(
                """SELECT device_id, kind, ts, seq, "values", lon, lat FROM telemetry
                   WHERE ts >= %s ORDER BY ts, device_id, seq""",
                (since,),
            )
        else:
            cur.execute(
                """SELECT device_id, kind, ts, seq, "values", lon, lat FROM telemetry
                   WHERE device_id = ANY(%s::text[]) AND ts >= %s ORDER BY ts, device_id, seq""",
                (list(device_ids), since),
            )
        return cur.fetchall()


def counts(conn: Conn, *, since: datetime | None = None) -> StoreCounts:
    """Exact row counts; with ``since``, only telemetry and events measured (and rejections
    received) from then on, which stays cheap on a large table."""
    if since is not None:
        _require_aware(since, "since")
    row = conn.execute(
        """SELECT (SELECT count(*) FROM devices),
                  (SELECT count(*) FROM devices WHERE online),
                  (SELECT count(*) FROM telemetry WHERE %(since)s::timestamptz IS NULL
                                                     OR ts >= %(since)s),
                  (SELECT count(*) FROM events WHERE %(since)s::timestamptz IS NULL
                                                  OR ts >= %(since)s),
                  (SELECT count(*) FROM rejections WHERE %(since)s::timestamptz IS NULL
                                                      OR received >= %(since)s)""",
        {"since": since},
    ).fetchone()
    assert row is not None  # a SELECT without FROM always returns one row
    return StoreCounts(*(int(v) for v in row))


# --- helpers --------------------------------------------------------------------------------


def _position(lon: float | None, lat: float | None) -> Position | None:
    return None if lon is None or lat is None else (lon, lat)


def _require_aware(ts: datetime, what: str) -> None:
    if ts.tzinfo is None or ts.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware, got naive {ts.isoformat()}")


def _require_idle(conn: Conn, what: str) -> None:
    if conn.info.transaction_status != TransactionStatus.IDLE:
        raise StoreError(
            f"{what} commits its own work and needs a connection with no transaction open "
            f"(status {conn.info.transaction_status.name})"
        )


@contextmanager
def _atomic(conn: Conn) -> Iterator[None]:
    """Join the caller's transaction; open one only where statements would autocommit."""
    if conn.autocommit and conn.info.transaction_status == TransactionStatus.IDLE:
        with conn.transaction():
            yield
    else:
        yield


def _json(value: Any) -> str:
    # allow_nan=False: jsonb rejects NaN and Infinity, and the decoder should never pass them.
    def default(obj: object) -> str:
        if isinstance(obj, datetime):
            return obj.isoformat()
        raise TypeError(f"{type(obj).__name__} is not JSON serialisable")

    return json.dumps(value, allow_nan=False, separators=(",", ":"), default=default)


def _telemetry_columns(rows: Sequence[Telemetry]) -> tuple[list[Any], ...]:
    cols: tuple[list[Any], ...] = ([], [], [], [], [], [], [])
    for t in rows:
        _require_aware(t.ts, f"telemetry ts of {t.device_id}/{t.seq}")
        if not all(math.isfinite(v) for v in t.values.values()):
            raise ValueError(f"telemetry {t.device_id}/{t.seq} has a non-finite value")
        cols[0].append(t.device_id)
        cols[1].append(t.kind)
        cols[2].append(t.ts)
        cols[3].append(t.seq)
        cols[4].append(_json(dict(t.values)))
        cols[5].append(t.loc[0] if t.loc else None)
        cols[6].append(t.loc[1] if t.loc else None)
    return cols


def _event_columns(rows: Sequence[Event]) -> tuple[list[Any], ...]:
    cols: tuple[list[Any], ...] = ([], [], [], [], [], [], [], [], [], [])
    for e in rows:
        _require_aware(e.ts, f"event ts of {e.device_id}/{e.event_id}")
        cols[0].append(e.device_id)
        cols[1].append(e.kind)
        cols[2].append(e.ts)
        cols[3].append(e.seq)
        cols[4].append(e.event_id)
        cols[5].append(e.type)
        cols[6].append(e.confidence)
        cols[7].append(e.loc[0] if e.loc else None)
        cols[8].append(e.loc[1] if e.loc else None)
        try:
            cols[9].append(_json(dict(e.body)))
        except ValueError as exc:
            raise ValueError(f"event {e.device_id}/{e.event_id} body: {exc}") from exc
    return cols
