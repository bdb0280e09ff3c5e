"""Scale of the simulator: how many devices one process keeps at one message a second each.

Run from the repository root: ``python -m bench.bench_simulator [--devices N] [--seconds S]``.

The case-study fleet scaled to N devices (default 10,000; ``--devices`` of ``citywatch
simulate``) with a telemetry interval of 1 s, the ``quiet_day`` scenario at speed 1, publishing
QoS 1 from this one process to our tuned broker (``citywatch.embedded.start_broker``) over
shared connections (beyond 500 devices; see ``simulators/links.py``). A plain subscriber in its
own process (``mosquitto_sub`` at QoS 1, else a paho one) counts what arrives. After a warm-up,
the rates over the measured window: messages the simulator generated and handed to its
connections, messages the subscriber received, and the simulator's CPU use. It keeps up when
both rates are N per second and the lag (how late the last message of a tick went out) stays
well under a second.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from citywatch.config import load_config
from citywatch.embedded import find_mosquitto, start_broker
from simulators.runner import Progress, Simulation

FILTERS = ("city/+/+/telemetry", "city/+/+/event")


class Counter:
    """Counts messages a subscriber process prints, one per line."""

    def __init__(self, port: int) -> None:
        exe = shutil.which("mosquitto_sub")
        if exe is not None:
            cmd = [exe, "-h", "127.0.0.1", "-p", str(port), "-q", "1", "-i", "bench-counter"]
            for f in FILTERS:
                cmd += ["-t", f]
            self.kind = "mosquitto_sub (QoS 1)"
        else:
            code = ("import sys, paho.mqtt.client as m\n"
                    "from paho.mqtt.enums import CallbackAPIVersion as V\n"
                    "c = m.Client(V.VERSION2, client_id='bench-counter')\n"
                    "c.on_message = lambda *a: sys.stdout.write('.\\n')\n"
                    f"c.connect('127.0.0.1', {port})\n"
                    + "".join(f"c.subscribe('{f}', qos=1)\n" for f in FILTERS)
                    + "c.loop_forever()\n")
            cmd = [sys.executable, "-c", code]
            self.kind = "paho (QoS 1)"
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE)
        self.count = 0
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        while chunk := self.proc.stdout.read1(1 << 16):
            self.count += chunk.count(b"\n")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", type=int, default=10_000)
    ap.add_argument("--interval", type=float, default=1.0, help="telemetry interval (s)")
    ap.add_argument("--seconds", type=float, default=30.0, help="measured window")
    ap.add_argument("--warmup", type=float, default=10.0)
    ap.add_argument("--scenario", default="quiet_day")
    ap.add_argument("--connections", default="auto", choices=("auto", "per-device", "shared"))
    args = ap.parse_args()
    if find_mosquitto() is None:
        print("mosquitto is not installed (apt-get install mosquitto)", file=sys.stderr)
        return 1
    base = load_config("config.yaml", env={})
    config = base.model_copy(update={"simulator": base.simulator.model_copy(
        update={"telemetry_interval_s": args.interval})})
    t0 = time.perf_counter()
    sim = Simulation(config, args.scenario, seed=1, speed=1.0, start=datetime.now(UTC),
                     devices=args.devices)
    built = time.perf_counter() - t0
    target = len(sim.devices) / args.interval
    print(f"{len(sim.devices):,} devices, one message each per {args.interval:g} s "
          f"(target {target:,.0f} msg/s), scenario {args.scenario}; fleet built in {built:.1f} s")
    samples: list[tuple[float, int, float, float]] = []  # (wall, sent, cpu, lag)

    def on_progress(p: Progress) -> None:
        samples.append((time.monotonic(), p.sent_total, time.process_time(), p.lag_s))

    stop = threading.Event()
    with (tempfile.TemporaryDirectory(prefix="bench-sim-") as tmp,
          start_broker(Path(tmp) / "broker", prefer="mosquitto", fallback=False,
                       anonymous=True) as broker):
        counter = Counter(broker.port)
        time.sleep(1.0)  # the subscriber has no "subscribed" signal; a second is plenty
        result: dict[str, Any] = {}
        runner = threading.Thread(target=lambda: result.update(final=sim.run(
            broker.url, stop, args.warmup + args.seconds, on_progress, respond=False,
            connections=args.connections)))
        runner.start()
        time.sleep(args.warmup)
        w0, c0 = time.monotonic(), counter.count
        s0 = samples[-1] if samples else (w0, 0, time.process_time(), 0.0)
        time.sleep(args.seconds)
        w1, c1 = time.monotonic(), counter.count
        s1 = samples[-1]
        runner.join(60)
        time.sleep(1.0)
        counter.stop()
    lags = [s[3] for s in samples if s[0] >= w0]
    sent_rate = (s1[1] - s0[1]) / (s1[0] - s0[0])
    cpu = (s1[2] - s0[2]) / (s1[0] - s0[0])
    got_rate = (c1 - c0) / (w1 - w0)
    final = result.get("final")
    print(f"generated and published: {sent_rate:>10,.0f} msg/s  (simulator CPU {cpu:.0%} of one "
          f"core)")
    print(f"received by {counter.kind}: {got_rate:>10,.0f} msg/s  over {args.seconds:g} s "
          f"after {args.warmup:g} s warm-up")
    print(f"lag: median {sorted(lags)[len(lags) // 2] if lags else 0:.3f} s, "
          f"max {max(lags, default=0):.3f} s; unacknowledged at the end: "
          f"{final.pending if final else '?'}")
    ok = got_rate >= 0.97 * target and sent_rate >= 0.97 * target
    print(f"{'keeps up' if ok else 'does NOT keep up'}: {got_rate / target:.0%} of the target")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
