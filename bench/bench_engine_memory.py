"""Engine state per device with a city-sized registry (issue 11: at most 2 KB per device).

Run from the repository root: ``python -m bench.bench_engine_memory [--devices 100000]``.

The shipped fleet is scaled to ``--devices`` (``simulators.runner.scale_fleet``: the kinds'
shares kept, copies within 300 m of an original), placed in the district's zones and given to
the engine as its registry. Every device that sends telemetry (water, rain and traffic; cameras
and grid workers send events) then reports every ``telemetry_interval_s`` of the config for
``--minutes`` of event time, in dry weather and flowing traffic, through
``Engine.evaluate_many`` in batches as the pipeline feeds it. ``tracemalloc`` measures the
memory the final ``EngineState`` holds (traced after the readings are dropped), divided by the
registered devices and by the reporting ones (the rain signal is off: see ``main``). The
engine object itself (registry, memos) is
measured separately: it is configuration, not state. The baseline, in the same run, is the
state after one reading per device: the steady state adds each device's deduplication window.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import time
import tracemalloc
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from citywatch.config import load_config
from citywatch.placement import Placement
from geo.index import ZoneIndex
from geo.load import load_zones
from rules.base import Observation
from rules.engine import Engine, EngineState
from simulators.runner import scale_fleet

REPO = Path(__file__).resolve().parents[1]
START = datetime(2026, 7, 15, 3, 0, tzinfo=UTC)


def _water(r: random.Random) -> dict[str, float]:
    return {"water_depth_cm": round(r.uniform(0, 1.5), 1), "battery_v": 3.6}


def _rain(r: random.Random) -> dict[str, float]:  # noqa: ARG001 -- dry weather
    return {"rain_rate_mm_h": 0.0, "battery_v": 3.6}


def _traffic(r: random.Random) -> dict[str, float]:
    return {"flow_veh_h": round(r.uniform(600, 1200)), "speed_kmh": round(r.uniform(38, 55), 1),
            "occupancy_pct": round(r.uniform(8, 15), 1)}


VALUES: dict[str, Callable[[random.Random], dict[str, float]]] = {
    "water": _water, "rain": _rain, "traffic": _traffic}


def readings(engine: Engine, reporting: list[str], rounds: int, interval_s: float,
             first: int = 0) -> Iterator[list[Observation]]:
    """One batch per round: every reporting device once, at its own offset in the interval."""
    rng = random.Random(1)
    n = len(reporting)
    for k in range(first, first + rounds):
        batch = []
        for i, d in enumerate(reporting):
            site = engine.registry[d]
            ts = START + timedelta(seconds=k * interval_s + interval_s * i / n)
            batch.append(Observation(d, site.kind, ts, k + 1, VALUES[site.kind](rng),
                                     site.position, site.zone_ids))
        yield batch


def feed(engine: Engine, state: EngineState, batches: Iterator[list[Observation]],
         chunk: int = 2000) -> tuple[EngineState, int, int]:
    n = changes = 0
    for batch in batches:
        for i in range(0, len(batch), chunk):
            part = batch[i:i + chunk]
            state, ch = engine.evaluate_many(state, part, now=part[-1].ts)
            n += len(part)
            changes += len(ch)
    return state, n, changes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=100_000)
    ap.add_argument("--minutes", type=float, default=16.0,
                    help="event time fed: longer than the deduplication window (15 min)")
    args = ap.parse_args()
    cfg = load_config(REPO / "config.yaml", env={})
    zones = load_zones(cfg.zones_path)
    devices = scale_fleet(cfg.devices, args.devices, seed=1)
    interval = cfg.simulator.telemetry_interval_s
    rounds = max(1, int(args.minutes * 60 / interval))

    tracemalloc.start()
    gc.collect()
    t0 = tracemalloc.get_traced_memory()[0]
    placement = Placement(ZoneIndex(zones), {d.id: (d.kind, d.position) for d in devices})
    # The rain signal (a CPU matter, not a memory one) is off: squeezed into one district, a
    # city's 17,000 rain gauges all share the catchments, and every rain reading would average
    # thousands of them. The gauges' state is kept all the same.
    wl = cfg.rules.waterlogging
    params = cfg.rules.model_copy(update={"waterlogging": wl.model_copy(
        update={"rain": wl.rain.model_copy(update={"enabled": False})})})
    engine = Engine(params, {z.id: z for z in zones}, placement.sites())
    gc.collect()
    engine_bytes = tracemalloc.get_traced_memory()[0] - t0
    reporting = [d.id for d in devices if d.kind in VALUES]

    base = tracemalloc.get_traced_memory()[0]
    started = time.perf_counter()
    one, n1, _ = feed(engine, EngineState(), readings(engine, reporting, 1, interval))
    gc.collect()
    one_bytes = tracemalloc.get_traced_memory()[0] - base
    state, n, changes = feed(engine, one, readings(engine, reporting, rounds - 1, interval, 1))
    del one
    gc.collect()
    state_bytes = tracemalloc.get_traced_memory()[0] - base
    elapsed = time.perf_counter() - started
    tracemalloc.stop()

    load = os.getloadavg()
    print(f"engine state with {len(devices):,} registered devices ({len(reporting):,} "
          f"reporting every {interval:g} s, {rounds} readings each, {n1 + n:,} evaluated in "
          f"{elapsed:.0f} s, {changes} alert changes); load {load[0]:.2f} {load[1]:.2f} "
          f"{load[2]:.2f} on {os.cpu_count()} cores")
    print(f"  engine object (registry, memos):      {engine_bytes / len(devices):8.0f} B/device")
    print(f"  state after one reading each:        {one_bytes / len(devices):8.0f} B/device "
          f"(baseline)")
    print(f"  state after {args.minutes:g} min (steady):     {state_bytes / len(devices):8.0f} "
          f"B/device, {state_bytes / len(reporting):.0f} B/reporting device, "
          f"{state_bytes / one_bytes:.2f} x the baseline")
    del state


if __name__ == "__main__":
    main()
