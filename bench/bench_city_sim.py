"""A city's fleet from a few processes (issue 12): ``citywatch simulate --procs P``.

Run from the repository root: ``python -m bench.bench_city_sim [--procs 1 4] [--seconds S]``.

The synthetic city of ``scripts/make_city.py`` (100,000 devices, made in ``var/city`` when
missing), each reporting once per ``simulator.telemetry_interval_s`` (10 s: 10,000 msg/s in all),
scenario ``quiet_day`` at speed 1, published QoS 1 by ``citywatch simulate ... --procs P`` (the
command line, as a user runs it) to our tuned broker (``citywatch.embedded.start_broker``,
anonymous) over shared connections, a thousand devices each. A plain ``mosquitto_sub`` in its own
process counts what arrives. Each ``--procs`` value runs in turn in the same run, after a warm-up
that covers building the fleet; printed: the rate received over the window, against the target,
and the load average. At the real interval the target is what any of them gives; ``--interval 1``
asks for 100,000 msg/s, more than two cores give, and shows each setting's ceiling.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

from bench.bench_simulator import Counter
from citywatch.config import load_config
from citywatch.embedded import find_mosquitto, start_broker

REPO = Path(__file__).resolve().parents[1]
CITY = REPO / "var" / "city" / "city.yaml"


def measure(config: Path, procs: int, warmup: float, seconds: float) -> tuple[float, float]:
    """Messages per second received over ``seconds`` after ``warmup``, and how far behind its
    clock the furthest process said it was during that window (its progress lines)."""
    with (tempfile.TemporaryDirectory(prefix="bench-city-") as tmp,
          start_broker(Path(tmp) / "broker", prefer="mosquitto", fallback=False,
                       anonymous=True) as broker):
        counter = Counter(broker.port)
        time.sleep(1.0)
        env = {**os.environ, "CITYWATCH_BROKER_URL": broker.url}
        sim = subprocess.Popen(
            [sys.executable, "-m", "citywatch.cli", "simulate", "quiet_day", "--config",
             str(config), "--procs", str(procs), "--speed", "1", "--duration",
             str(warmup + seconds + 5),
             "--truth", str(Path(tmp) / "truth.json"), "--log-file", str(Path(tmp) / "log")],
            env=env, stdout=subprocess.PIPE, text=True)
        behind: list[tuple[float, float]] = []

        def read() -> None:
            assert sim.stdout is not None
            for line in sim.stdout:
                m = re.search(r"behind by ([0-9.]+) s", line)
                behind.append((time.monotonic(), float(m.group(1)) if m else 0.0))

        threading.Thread(target=read, daemon=True).start()
        try:
            time.sleep(warmup)
            w0, c0 = time.monotonic(), counter.count
            time.sleep(seconds)
            w1, c1 = time.monotonic(), counter.count
        finally:
            sim.send_signal(signal.SIGINT)
            try:
                sim.wait(60)
            except subprocess.TimeoutExpired:
                sim.kill()
            counter.stop()
    return (c1 - c0) / (w1 - w0), max((b for t, b in behind if w0 <= t <= w1), default=0.0)


def _with_interval(city: Path, interval: float) -> Path:
    """A copy of the city's configuration with another telemetry interval (beside it, so that
    its relative file names still hold)."""
    data = yaml.safe_load(city.read_text(encoding="utf-8"))
    data.setdefault("simulator", {})["telemetry_interval_s"] = interval
    out = city.with_name(f"{city.stem}-every-{interval:g}s.yaml")
    out.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--procs", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--seconds", type=float, default=30.0, help="measured window")
    ap.add_argument("--warmup", type=float, default=25.0,
                    help="building the fleet and its first round")
    ap.add_argument("--city", type=Path, default=CITY)
    ap.add_argument("--interval", type=float, default=None,
                    help="override simulator.telemetry_interval_s: a shorter one asks for more "
                    "than the processes can give, which shows their ceiling")
    args = ap.parse_args()
    if find_mosquitto() is None:
        print("mosquitto is not installed (apt-get install mosquitto)", file=sys.stderr)
        return 1
    if not args.city.exists():
        subprocess.run([sys.executable, str(REPO / "scripts" / "make_city.py"), "--out",
                        str(args.city.parent)], check=True)
    if args.interval is not None:
        args.city = _with_interval(args.city, args.interval)
    cfg = load_config(args.city, env={})
    target = len(cfg.devices) / cfg.simulator.telemetry_interval_s
    print(f"{len(cfg.devices):,} devices, one message each per "
          f"{cfg.simulator.telemetry_interval_s:g} s: target {target:,.0f} msg/s; "
          f"{os.cpu_count()} cores")
    results = []
    for p in args.procs:
        rate, behind = measure(args.city, p, args.warmup, args.seconds)
        load = Path("/proc/loadavg").read_text().split()[:3]
        results.append((p, rate))
        print(f"--procs {p}: received {rate:>9,.0f} msg/s = {rate / target:.0%} of the target, "
              f"furthest behind its clock {behind:.2f} s (over {args.seconds:g} s after "
              f"{args.warmup:g} s; load {' '.join(load)})", flush=True)
    base = results[0][1]
    for p, rate in results[1:]:
        print(f"--procs {p} / --procs {results[0][0]}: {rate / base:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
