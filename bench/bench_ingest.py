"""The ingest thread's work per message, without a broker: decode, store, rules, alerts, counts.

Run from the repository root: ``python -m bench.bench_ingest [--per-device N] [--profile F]``.

Feeds the fleet of ``bench.bench_side_by_side`` (the 42 ground monitors of ``config.yaml``,
readings 10 ms apart) straight into ``citywatch.pipeline.Pipeline.process`` in batches of the
configured size, against a scratch database on the PostgreSQL named by ``CITYWATCH_TEST_PG``
(default the local server), and prints the ingest thread's CPU and wall time per message, and
the same for the pure part (decode and ``Engine.evaluate_many``, no database) measured in the
same run. ``--profile F`` writes a cProfile of the pipeline run (``python -m pstats F``).
``--fence`` runs the pipeline also with a cluster partition's epoch check in every
transaction (``citywatch.cluster_fence``), each on a fresh database, in turn, and prints the
ratio; ``--batch N`` sets the batch size (a cluster partition's batches are what one fetch
brought, often smaller).

Why: the side-by-side bench says the engine is bound by its one ingest thread; this isolates
that thread's cost from the broker and the publishers, so a lever shows in microseconds.
"""

from __future__ import annotations

import argparse
import cProfile
import math
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import psycopg

from alerts import store as alert_store
from bench.bench_side_by_side import write_fleet
from citywatch import cluster_fence
from citywatch.config import load_config
from citywatch.metrics import Metrics
from citywatch.pipeline import Pipeline
from citywatch.service import build_alert_store, build_decoder, build_engine, build_placement
from geo.load import load_zones
from sensing import store as sensing_store
from sensing.models import Telemetry
from sensing.mqtt import Inbound
from sensing.scratch import scratch_database

REPO = Path(__file__).resolve().parents[1]


def interleaved(files: dict[str, Path]) -> list[tuple[str, bytes]]:
    """The devices' lines in arrival order as the broker would mix them: round robin."""
    per = {t: p.read_bytes().splitlines() for t, p in files.items()}
    n = max(len(v) for v in per.values())
    return [(t, lines[i]) for i in range(n) for t, lines in per.items() if i < len(lines)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--per-device", type=int, default=1000)
    ap.add_argument("--profile", help="write a cProfile of the pipeline run here")
    ap.add_argument("--repeat", type=int, default=5, help="runs of the pure part (best kept)")
    ap.add_argument("--fence", action="store_true",
                    help="also run with a partition's epoch fence, and print the ratio")
    ap.add_argument("--batch", type=int, help="batch size (default: database.batch_max)")
    a = ap.parse_args()
    config = load_config(REPO / "config.yaml", env={})
    server = os.environ.get("CITYWATCH_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
    batch_size = a.batch or config.database.batch_max
    zones = load_zones(config.zones_path)
    placement = build_placement(config, zones)
    with tempfile.TemporaryDirectory() as work:
        fleet = write_fleet(config, a.per_device, Path(work))
        items = interleaved(fleet.files)
    now = datetime.now(UTC)
    inbound = [Inbound(t, p, i + 1, 1, now) for i, (t, p) in enumerate(items)]
    batches = [inbound[i:i + batch_size] for i in range(0, len(inbound), batch_size)]
    print(f"{len(inbound):,} messages from {len(fleet.files)} devices, batches of {batch_size}; "
          f"load {os.getloadavg()[0]:.2f}")

    # The pure part: decode and the rules, no database; the best of --repeat runs (the
    # machine's noise only ever adds time).
    engine = build_engine(config, zones, placement)
    decoder = build_decoder(config)
    n = len(inbound)
    best: list[float] = []
    for _ in range(a.repeat):
        c0 = time.process_time()
        decoded = [decoder.decode(m.topic, m.payload, now) for m in inbound]
        c1 = time.process_time()
        readings = [d for d in decoded if isinstance(d, Telemetry)]
        obs = placement.place_many(readings)
        c2 = time.process_time()
        state = engine.restore({})
        for i in range(0, len(obs), batch_size):
            state, _ = engine.evaluate_many(state, obs[i:i + batch_size])
        c3 = time.process_time()
        run = [(c1 - c0) / n * 1e6, (c2 - c1) / n * 1e6, (c3 - c2) / n * 1e6]
        best = run if not best else [min(x, y) for x, y in zip(best, run, strict=True)]
    print(f"pure (best of {a.repeat}): decode {best[0]:.1f} us/msg, placement {best[1]:.1f}, "
          f"rules {best[2]:.1f}; all {sum(best):.1f} us CPU/msg")

    walls: dict[bool, float] = {}
    # With --fence: plain and fenced in turn, three times each, the best of each kept (the
    # first run of a process also warms its caches, which would favour whichever came second).
    for fenced in (False, True) * 3 if a.fence else (False,):
        with scratch_database(server, "citywatch_bench") as db_url:
            with psycopg.connect(db_url, autocommit=True) as conn:
                sensing_store.migrate(conn)
                alert_store.migrate(conn)
                cluster_fence.migrate(conn)
                epoch = cluster_fence.claim(conn, "bench", "bench")
            engine = build_engine(config, zones, placement)
            alerts, workers = build_alert_store(config, zones)
            pipeline = Pipeline(conninfo=db_url, decoder=build_decoder(config), engine=engine,
                                state=engine.restore({}), placement=placement,
                                alert_store=alerts, ack=lambda _mids: None,
                                dead_letter=lambda _r: None, on_committed=lambda: None,
                                metrics=Metrics(), workers=workers,
                                fence=cluster_fence.EpochFence("bench", epoch) if fenced
                                else None)
            prof = cProfile.Profile() if a.profile and not fenced else None
            try:
                c0, t0 = time.process_time(), time.perf_counter()
                if prof:
                    prof.enable()
                for b in batches:
                    pipeline.process(b)
                if prof:
                    prof.disable()
                c1, t1 = time.process_time(), time.perf_counter()
            finally:
                pipeline.close()
            stored = pipeline.counts.stored
            walls[fenced] = min(walls.get(fenced, math.inf), t1 - t0)
            print(f"pipeline{' (fenced)' if fenced else ''}: {(c1 - c0) / n * 1e6:.1f} us CPU/msg, "
                  f"{(t1 - t0) / n * 1e6:.1f} us wall/msg ({n / (t1 - t0):,.0f} msg/s on one "
                  f"thread); stored {stored:,} of {n:,}")
            if prof and a.profile:
                prof.dump_stats(a.profile)
                print(f"profile: python -m pstats {a.profile}")
            if stored != n:
                return 1
    if a.fence:
        print(f"fenced / plain wall time, best of 3 each: {walls[True] / walls[False]:.3f} "
              f"({len(batches):,} batches of up to {batch_size})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
