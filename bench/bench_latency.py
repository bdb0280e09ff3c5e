"""Sensor to warning under a fixed background load: p50, p99 and p99.9 (issue 11).

Run from the repository root: ``python -m bench.bench_latency [--rates 100,600,half]
[--probes N]``.

One tuned Mosquitto and a scratch database, as ``bench.bench_side_by_side``. First the sustained
maximum is measured there (42 ``mosquitto_pub -l`` flat out into citywatch), unless ``--max``
gives it; ``half`` in ``--rates`` is half of it. Then, for each rate, citywatch
(``citywatch.service.Service``, the whole engine) runs with:

- background: a Python publisher (its own process) sending QoS 1 telemetry from the ground
  monitors at the fixed rate, round robin, each reading stamped when sent;
- probe (its own process): a 60 cm reading from a gauge in underpass ``up-06`` at QoS 1, timed
  until the zone's retained state on ``city/alerts/up-06`` shows waterlogging red; then a 0 cm
  reading, until it no longer does; then the next probe after a pause of 50-150 ms.

Each probe uses a gauge of its own (``probe-NNNN``, added to the registry at the zone's centre
for the run): a second 60 cm jump from the same gauge within minutes is, rightly, a spike to
device health, and its reading would be held back. After its 0 cm a probe gauge is retired
with a 500 cm reading (out of device health's range: faulty, out of every fusion), so that the
next probe's 60 cm is not held back as drift against the earlier gauges' 0 cm. The background
is the 18 traffic detectors: with the water and rain gauges reporting ordinary values around
it, device health held most probes' 60 cm back as suspect. Prints the percentiles per rate with the
load average.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.bench_side_by_side import (
    ground_devices,
    load_average,
    run_citywatch,
    running_service,
    tuned_stack,
    with_settings,
    write_fleet,
)
from bench.latency_load import PROBE_ZONE
from citywatch.config import Config, Device, load_config
from geo.load import load_zones

REPO = Path(__file__).resolve().parents[1]


def with_probes(config: Config, n: int) -> tuple[Config, list[str]]:
    zone = next(z for z in load_zones(config.zones_path) if z.id == PROBE_ZONE)
    p = zone.geometry.representative_point()
    ids = [f"probe-{i:05d}" for i in range(n)]
    extra = [Device(id=d, kind="water", position=(p.x, p.y), name="latency probe") for d in ids]
    return config.model_copy(update={"devices": [*config.devices, *extra]}), ids


def percentile(xs: list[float], q: float) -> float:
    """Nearest-rank percentile: the value below which q of the samples lie."""
    s = sorted(xs)
    k = max(0, min(len(s) - 1, round(q * len(s) + 0.5) - 1))
    return s[k]


def run_rate(port: int, db_url: str, config: Config, probe_ids: list[str], rate: float
             ) -> str:
    devices = [(k, d) for k, d in ground_devices(config) if k == "traffic"]
    with running_service(config, f"mqtt://127.0.0.1:{port}", db_url) as service:
        bg = subprocess.Popen([sys.executable, "-m", "bench.latency_load", "background",
                               str(port), str(rate), *(f"{k}/{d}" for k, d in devices)])
        time.sleep(3.0)  # steady state first
        stored0, t0 = service.pipeline.counts.stored, time.perf_counter()
        held0 = service.pipeline.state.counts.held_back
        pr = subprocess.run([sys.executable, "-m", "bench.latency_load", "probe", str(port),
                             *probe_ids], stdout=subprocess.PIPE, check=True, timeout=3600)
        result = json.loads(pr.stdout)
        latencies, missed = result["latencies"], result["missed"]
        stored = service.pipeline.counts.stored - stored0
        held = service.pipeline.state.counts.held_back - held0
        elapsed = time.perf_counter() - t0
        bg.terminate()
        bg.wait(30)
        lag = service.metrics.lag._value.get()
    if not latencies:
        return (f"{rate:>8,.0f} msg/s offered: no probe answered ({missed} missed, {held} "
                "held back by device health)")
    ms = [x * 1000 for x in latencies]
    return (f"{rate:>8,.0f} msg/s offered ({stored / elapsed:,.0f} stored/s during the probes, "
            f"last batch lag {lag * 1000:.0f} ms): {len(ms)} probes, p50 "
            f"{percentile(ms, 0.5):,.0f} ms, p99 {percentile(ms, 0.99):,.0f} ms, p99.9 "
            f"{percentile(ms, 0.999):,.0f} ms, max {max(ms):,.0f} ms, mean "
            f"{statistics.fmean(ms):,.0f} ms; {missed} not red within 2 s ({held} readings "
            f"held back by device health)"
            f"; load {load_average()}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rates", default="100,600,half",
                    help="offered background loads in msg/s; 'half' = half the measured max")
    ap.add_argument("--probes", type=int, default=300, help="probes per rate")
    ap.add_argument("--max", type=float, help="the sustained maximum (skips measuring it)")
    ap.add_argument("--per-device", type=int, default=1000,
                    help="messages per monitor when measuring the maximum")
    ap.add_argument("--receiver", choices=("process", "thread"), default="process",
                    help="citywatch's broker.receiver (default: the shipped configuration's)")
    ap.add_argument("--batch-max", type=int, help="database.batch_max (default: config.yaml's)")
    ap.add_argument("--batch-wait-ms", type=int,
                    help="database.batch_wait_ms (default: config.yaml's)")
    args = ap.parse_args()
    rates_arg = [r.strip() for r in args.rates.split(",") if r.strip()]
    base = load_config(REPO / "config.yaml", env={})
    base = with_settings(base, receiver=args.receiver, batch_max=args.batch_max,
                         batch_wait_ms=args.batch_wait_ms)
    config, ids = with_probes(base, args.probes * len(rates_arg))
    print(f"machine: {os.cpu_count()} cores; load average before: {load_average()}; "
          f"broker.receiver: {args.receiver}; database.batch_max: {base.database.batch_max}, "
          f"batch_wait_ms: {base.database.batch_wait_ms}")
    with tuned_stack("bench-lat-") as stack:
        db_url, port = stack.db_url, stack.port
        top = args.max
        if top is None and "half" in rates_arg:
            fleet = write_fleet(base, args.per_device, stack.work, seq0=50_000_000)
            top = run_citywatch(port, fleet, db_url, base, 300).rate
            print(f"sustained maximum (42 mosquitto_pub -l into citywatch): {top:,.0f} msg/s")
        for n, r in enumerate(rates_arg):
            rate = (top or 0) / 2 if r == "half" else float(r)
            chunk = ids[n * args.probes:(n + 1) * args.probes]
            print(run_rate(port, db_url, config, chunk, rate), flush=True)
    print(f"load average after: {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
