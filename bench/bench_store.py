"""Telemetry write throughput: batched ``write_batch`` against one INSERT and commit per row.

    python bench/bench_store.py [--server URL] [--rows 100000] [--batch 500] [--baseline-rows 5000]

Creates a scratch database ``citywatch_bench_<random>`` on the server (default the local one),
migrates it, measures, and drops it again.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere, uninstalled

from sensing import store
from sensing.models import Telemetry
from sensing.scratch import scratch_database

T0 = datetime(2026, 11, 23, tzinfo=UTC)
DEVICES = 42  # ground monitors in the case-study district


def readings(count: int, first_seq: int = 0) -> Iterator[Telemetry]:
    """Round-robin over the devices, 10 s apart per device, like the simulated fleet."""
    for n in range(first_seq, first_seq + count):
        device, seq = n % DEVICES, n // DEVICES
        yield Telemetry(
            device_id=f"w-{device:02d}",
            kind="water",
            ts=T0 + timedelta(seconds=10 * seq, milliseconds=device),
            seq=seq,
            values={"water_depth_cm": (n % 500) / 10, "battery_v": 3.6},
        )


def bench_batched(conn: psycopg.Connection[Any], rows: int, batch: int) -> float:
    pending = list(readings(rows))
    start = time.perf_counter()
    for i in range(0, rows, batch):
        result = store.write_batch_and_commit(conn, pending[i : i + batch], [])
        assert result.duplicate_telemetry == 0
    return rows / (time.perf_counter() - start)


def bench_row_at_a_time(conn: psycopg.Connection[Any], rows: int) -> float:
    # Disjoint seqs from the batched run, so every row is really inserted.
    pending = list(readings(rows, first_seq=10_000_000))
    start = time.perf_counter()
    for t in pending:
        conn.execute(
            'INSERT INTO telemetry (device_id, kind, ts, seq, "values")'
            " VALUES (%s, %s, %s, %s, %s::jsonb) ON CONFLICT DO NOTHING",
            (t.device_id, t.kind, t.ts, t.seq, json.dumps(dict(t.values))),
        )
        conn.commit()
    return rows / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--baseline-rows", type=int, default=5_000)
    args = parser.parse_args()

    with scratch_database(args.server) as url, psycopg.connect(url) as conn:
        mode = store.migrate(conn)
        print(f"storage: {mode}")
        batched = bench_batched(conn, args.rows, args.batch)
        print(f"write_batch, {args.rows} rows in batches of {args.batch}: {batched:,.0f} rows/s")
        single = bench_row_at_a_time(conn, args.baseline_rows)
        print(f"one INSERT + commit per row, {args.baseline_rows} rows: {single:,.0f} rows/s")
        print(f"ratio: {batched / single:.1f}x")
        total = store.counts(conn).telemetry
        assert total == args.rows + args.baseline_rows, total


if __name__ == "__main__":
    main()
