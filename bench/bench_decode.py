"""Decoder throughput on realistic telemetry: a benchmark, not a test.

Run from the repository root: ``python -m bench.bench_decode [N]`` (default 100,000 messages).
Payloads are built first, so only ``Decoder.decode`` is timed; it prints messages per second.
"""

from __future__ import annotations

import json
import random
import sys
import time
from datetime import UTC, datetime, timedelta

from sensing.decode import Decoder
from sensing.models import Rejection

NOW = datetime(2026, 11, 23, 8, 20, tzinfo=UTC)
# The case-study district: 7 cameras and 42 ground monitors; cameras publish no telemetry stream
# worth timing, so the mix is the ground monitors plus the grid workers' position reports.
FLEET = {
    **{f"wm-{i:03d}": "water" for i in range(20)},
    **{f"rg-{i:03d}": "rain" for i in range(10)},
    **{f"td-{i:03d}": "traffic" for i in range(12)},
    **{f"gw-{i:03d}": "grid" for i in range(40)},
}


def values(kind: str, rng: random.Random) -> dict[str, float]:
    common = {"battery_v": round(rng.uniform(3.3, 4.2), 2), "rssi_dbm": rng.randint(-110, -60)}
    if kind == "water":
        return {"water_depth_cm": round(rng.uniform(0, 60), 1), **common}
    if kind == "rain":
        return {"rain_rate_mm_h": round(rng.uniform(0, 80), 1), "rain_1h_mm": 12.4, **common}
    if kind == "traffic":
        return {
            "flow_veh_h": rng.randint(0, 2400),
            "speed_kmh": round(rng.uniform(0, 80), 1),
            "occupancy_pct": round(rng.uniform(0, 100), 1),
        }
    return {"battery_pct": rng.randint(5, 100)}


def payloads(n: int, seed: int = 7) -> list[tuple[str, bytes]]:
    rng = random.Random(seed)
    devices = sorted(FLEET)
    out = []
    for i in range(n):
        device = rng.choice(devices)
        kind = FLEET[device]
        ts = NOW - timedelta(seconds=n - i, milliseconds=rng.randint(0, 999))
        msg: dict[str, object] = {
            "ts": ts.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "seq": i,
            "values": values(kind, rng),
        }
        if kind == "grid":
            msg["loc"] = [
                round(120.6 + rng.uniform(0, 0.02), 6),
                round(31.3 + rng.uniform(0, 0.02), 6),
            ]
        out.append((f"city/{kind}/{device}/telemetry", json.dumps(msg).encode()))
    return out


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    work = payloads(n)
    decoder = Decoder(FLEET)
    decode = decoder.decode
    start = time.perf_counter()
    results = [decode(topic, payload, NOW) for topic, payload in work]
    elapsed = time.perf_counter() - start
    rejected = [r for r in results if isinstance(r, Rejection)]
    if rejected:  # a benchmark of the reject path would be measuring something else
        raise SystemExit(
            f"{len(rejected)} rejected, first: {rejected[0].reason} {rejected[0].detail}"
        )
    mean_size = sum(len(p) for _, p in work) / n
    print(
        f"decoded {n:,} telemetry messages (mean {mean_size:.0f} bytes) in {elapsed:.2f} s: "
        f"{n / elapsed:,.0f} messages/s, {elapsed / n * 1e6:.1f} us each"
    )


if __name__ == "__main__":
    main()
