"""The broker's floor, a naive consumer and citywatch, side by side in one run (issue 11).

Run from the repository root: ``python -m bench.bench_side_by_side [--per-device N]``.

One tuned Mosquitto (``citywatch.embedded.start_broker``: ``citywatch/mosquitto.conf``, with
``set_tcp_nodelay true``) and a scratch database on the local PostgreSQL (``CITYWATCH_TEST_PG``).
The load is QoS 1 telemetry from the 42 ground monitors of the shipped ``config.yaml`` (water,
rain and traffic), one ``mosquitto_pub -l`` per device, all started at once. Each run is timed
from starting the publishers until the consumer has the last message:

- floor: into one ``mosquitto_sub`` (QoS 1) that only writes them out;
- paho-only: citywatch's own MQTT link (``sensing.mqtt.MqttLink``: paho, its read buffer) that
  only counts: the ceiling of any consumer built on paho here;
- naive: a paho subscriber as a newcomer would write it: ``json.loads``, shapely ``contains``
  against every zone in a loop, a threshold check, one INSERT (autocommit) per row;
- citywatch: ``citywatch.service.Service``, what ``citywatch serve`` runs, once with each
  ``broker.receiver`` (the MQTT session in a thread, and in a process of its own): validation,
  storage,
  device clocks, every rule, device health, alerts, the outbox and the HTTP API. Counted by the
  pipeline's stored count (what ``GET /api/health`` shows), then checked against the rows in
  the database: zero loss means stored rows == messages published.

Each device's readings are 10 ms apart and end at the start of the run, so every reading is
current: no device's clock is corrected and none falls silent while the publishers, which run at
different speeds, drift apart (10 s apart, as the simulator sends, a replay of hours spreads the
devices by more than the clock tolerance and the silence timeout). The price: the rules' windows
per device hold more readings than live. Values vary a little (no device looks stuck);
they stay below the blue lines, as almost all real traffic does, so no alert is raised.
Prints msg/s for each, the ratios to the floor, paho-only and naive, and the load average.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion
from shapely.geometry import Point

from bench.procstat import cpu_seconds
from citywatch.config import Config, load_config
from citywatch.embedded import start_broker
from citywatch.service import Endpoints, Service
from geo.load import load_zones
from sensing.mqtt import Inbound, MqttLink, no_delay
from sensing.scratch import scratch_database

REPO = Path(__file__).resolve().parents[1]
GROUND_KINDS = ("water", "rain", "traffic")
# Between one device's readings (see the module's docstring for why not the simulator's 10 s).
SPACING = timedelta(milliseconds=10)


@dataclass(frozen=True)
class Fleet:
    """One file of payload lines per device, ready for ``mosquitto_pub -l``."""

    files: dict[str, Path]  # topic -> lines
    per_device: int

    @property
    def total(self) -> int:
        return self.per_device * len(self.files)


def _values(kind: str, i: int, phase: float) -> dict[str, float]:
    wobble = math.sin(i / 7.0 + phase)  # small, smooth: neither stuck nor spiking
    if kind == "water":
        return {"water_depth_cm": round(2.0 + 0.5 * wobble, 2), "battery_v": 3.6}
    if kind == "rain":
        return {"rain_rate_mm_h": round(1.0 + 0.3 * wobble, 2), "battery_v": 3.6}
    return {"flow_veh_h": round(900 + 50 * wobble, 1), "speed_kmh": round(42 + 3 * wobble, 1),
            "occupancy_pct": round(12 + wobble, 2), "battery_v": 3.6}


def ground_devices(config: Config) -> list[tuple[str, str]]:
    return [(d.kind, d.id) for d in config.devices if d.kind in GROUND_KINDS]


def write_fleet(config: Config, per_device: int, work: Path, seq0: int = 0,
                end: datetime | None = None) -> Fleet:
    """``per_device`` readings per ground monitor, stamped up to ``end`` (default: now)."""
    end = end or datetime.now(UTC)
    files: dict[str, Path] = {}
    for n, (kind, device) in enumerate(ground_devices(config)):
        lines = []
        for i in range(per_device):
            ts = end - SPACING * (per_device - 1 - i)
            body = {"ts": ts.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                    "seq": seq0 + i, "values": _values(kind, i, n)}
            lines.append(json.dumps(body, separators=(",", ":")))
        path = work / f"{device}-{seq0}.lines"
        path.write_text("\n".join(lines) + "\n")
        files[f"city/{kind}/{device}/telemetry"] = path
    return Fleet(files, per_device)


def start_publishers(port: int, fleet: Fleet) -> list[subprocess.Popen[bytes]]:
    """One ``mosquitto_pub -l`` per device, QoS 1, all at once."""
    exe = shutil.which("mosquitto_pub")
    if exe is None:
        raise SystemExit("mosquitto_pub is not installed (apt-get install mosquitto-clients)")
    procs = []
    for topic, path in fleet.files.items():
        with path.open("rb") as source:
            procs.append(subprocess.Popen(
                [exe, "-h", "127.0.0.1", "-p", str(port), "-q", "1", "-t", topic, "-l",
                 "-i", f"pub-{secrets.token_hex(4)}"], stdin=source))
    return procs


def wait_all(procs: Sequence[subprocess.Popen[bytes]], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            p.wait(max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def wait_for(count: Callable[[], int], target: int, timeout: float, poll: float = 0.01
             ) -> tuple[int, float]:
    """Poll ``count`` until it reaches ``target``; (count, perf_counter when reached or gave up)."""
    deadline = time.monotonic() + timeout
    got = count()
    while got < target and time.monotonic() < deadline:
        time.sleep(poll)
        got = count()
    return got, time.perf_counter()


@dataclass
class Run:
    name: str
    messages: int
    received: int
    seconds: float
    cpu_s: float | None = None  # this process's CPU time during the run (naive, citywatch)

    @property
    def rate(self) -> float:
        return self.received / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        lost = "" if self.received == self.messages else \
            f"  ({self.received:,} of {self.messages:,}: LOSS)"
        cpu = "" if self.cpu_s is None else \
            f", {self.cpu_s / max(self.received, 1) * 1e6:,.0f} us CPU/msg in the consumer"
        return (f"{self.name:<22} {self.rate:>10,.0f} msg/s  ({self.received:,} msgs in "
                f"{self.seconds:.2f} s{cpu}){lost}")


def _cpu(child: int | None = None) -> float:
    """This process's CPU seconds, plus a running child's (citywatch's MQTT process)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    total = r.ru_utime + r.ru_stime
    return total + (cpu_seconds(child) if child is not None else 0.0)


# ---- (a) the floor ----------------------------------------------------------------------------


def run_floor(port: int, fleet: Fleet, work: Path, timeout: float) -> Run:
    exe = shutil.which("mosquitto_sub")
    if exe is None:
        raise SystemExit("mosquitto_sub is not installed (apt-get install mosquitto-clients)")
    out = work / "floor.out"
    with out.open("wb") as sink:
        sub = subprocess.Popen([exe, "-h", "127.0.0.1", "-p", str(port), "-q", "1",
                                "-t", "city/+/+/telemetry", "-C", str(fleet.total)], stdout=sink)
        time.sleep(1.0)  # mosquitto_sub has no "subscribed" signal; a second is plenty
        t0 = time.perf_counter()
        pubs = start_publishers(port, fleet)
        try:
            sub.wait(timeout)
        except subprocess.TimeoutExpired:
            sub.kill()
            sub.wait()
        elapsed = time.perf_counter() - t0
        wait_all(pubs, 10)
    return Run("floor", fleet.total, out.read_bytes().count(b"\n"), elapsed)


# ---- (b) the naive consumer -------------------------------------------------------------------


NAIVE_TABLE = """CREATE TABLE IF NOT EXISTS naive_telemetry (
    device_id text NOT NULL, seq bigint NOT NULL, ts timestamptz NOT NULL, zones text[],
    "values" jsonb, PRIMARY KEY (device_id, seq))"""


def run_naive(port: int, fleet: Fleet, db_url: str, config: Config, timeout: float) -> Run:
    zones = load_zones(config.zones_path)
    where = {d.id: d.position for d in config.devices}
    warn_cm = 15.0
    conn = psycopg.connect(db_url, autocommit=True)
    conn.execute(NAIVE_TABLE)
    got = 0
    warnings = 0

    def on_message(_c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        nonlocal got, warnings
        body = json.loads(msg.payload)
        device = msg.topic.split("/")[2]
        lon, lat = where[device]
        point = Point(lon, lat)
        inside = [z.id for z in zones if z.geometry.contains(point)]
        if body["values"].get("water_depth_cm", 0.0) >= warn_cm:
            warnings += 1
        conn.execute('INSERT INTO naive_telemetry (device_id, seq, ts, zones, "values") '
                     "VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                     (device, body["seq"], body["ts"], inside, json.dumps(body["values"])))
        got += 1

    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"naive-{secrets.token_hex(4)}",
                    protocol=mqtt.MQTTv5)
    # Nagle off, as on citywatch's own sockets: the baseline differs in the work, not in that.
    c.on_socket_open = no_delay
    c.on_message = on_message
    subscribed = threading.Event()
    c.on_subscribe = lambda *_a: subscribed.set()
    c.connect("127.0.0.1", port)
    c.loop_start()
    c.subscribe("city/+/+/telemetry", qos=1)
    if not subscribed.wait(10):
        raise SystemExit("naive consumer: no SUBACK")
    cpu0, t0 = _cpu(), time.perf_counter()
    pubs = start_publishers(port, fleet)
    received, t1 = wait_for(lambda: got, fleet.total, timeout)
    cpu = _cpu() - cpu0
    wait_all(pubs, 10)
    c.disconnect()
    c.loop_stop()
    stored = conn.execute("SELECT count(*) FROM naive_telemetry").fetchone()
    conn.close()
    return Run("naive", fleet.total, min(received, stored[0] if stored else 0), t1 - t0, cpu)


def run_paho_only(port: int, fleet: Fleet, timeout: float) -> Run:
    """citywatch's own MQTT link (paho with its read buffer, Nagle off, MQTT 5, persistent
    session) with nothing behind it: each message counted and acknowledged at once. The most
    a Python consumer built on paho could take here, whatever it does with the messages."""
    got = 0
    lock = threading.Lock()

    def on_message(_m: Inbound) -> None:
        nonlocal got
        with lock:
            got += 1

    link = MqttLink(f"mqtt://127.0.0.1:{port}", f"paho-only-{secrets.token_hex(4)}",
                    ["city/+/+/telemetry"], on_message, manual_ack=False)
    link.start()
    if not link.connected.wait(10):
        raise SystemExit("paho-only consumer did not connect")
    time.sleep(0.5)  # its SUBACK
    try:
        cpu0, t0 = _cpu(), time.perf_counter()
        pubs = start_publishers(port, fleet)
        received, t1 = wait_for(lambda: got, fleet.total, timeout)
        cpu = _cpu() - cpu0
        wait_all(pubs, 10)
    finally:
        link.stop()
    return Run("paho-only", fleet.total, received, t1 - t0, cpu)


# ---- (c) citywatch ----------------------------------------------------------------------------


def with_settings(config: Config, *, receiver: str | None = None, batch_max: int | None = None,
                  batch_wait_ms: int | None = None) -> Config:
    """``config`` with the benches' knobs (``broker.receiver``, ``database.batch_max`` and
    ``batch_wait_ms``) set where given."""
    if receiver is not None:
        config = config.model_copy(update={"broker": config.broker.model_copy(
            update={"receiver": receiver})})
    db = {k: v for k, v in (("batch_max", batch_max), ("batch_wait_ms", batch_wait_ms))
          if v is not None}
    if db:
        config = config.model_copy(update={"database": config.database.model_copy(update=db)})
    return config


@dataclass(frozen=True)
class Stack:
    work: Path  # scratch files
    db_url: str  # a scratch database
    port: int  # the tuned Mosquitto's
    broker_kind: str


@contextmanager
def tuned_stack(prefix: str) -> Iterator[Stack]:
    """What the hot-path benches run against: our tuned Mosquitto (anonymous, loopback) and a
    scratch database on ``CITYWATCH_TEST_PG`` (default the local server), gone afterwards."""
    server = os.environ.get("CITYWATCH_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
    with (tempfile.TemporaryDirectory(prefix=prefix) as tmp,
          scratch_database(server, "citywatch_bench") as db_url,
          start_broker(Path(tmp) / "broker", anonymous=True, prefer="mosquitto",
                       fallback=False) as broker):
        yield Stack(Path(tmp), db_url, urlsplit(broker.url).port or 1883, broker.kind)


@contextmanager
def running_service(config: Config, broker_url: str, db_url: str) -> Iterator[Service]:
    service = Service(config, Endpoints(broker_url, db_url), http_port=0,
                      client_id=f"bench-engine-{secrets.token_hex(4)}")
    service.start()
    try:
        if not service._link.connected.wait(10):
            raise SystemExit("citywatch did not connect to the broker")
        time.sleep(0.5)  # its SUBACK
        yield service
    finally:
        service.stop()


def stored_rows(db_url: str) -> int:
    with psycopg.connect(db_url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM telemetry").fetchone()
    return int(row[0]) if row else 0


def run_citywatch(port: int, fleet: Fleet, db_url: str, config: Config, timeout: float,
                  profile: str | None = None, name: str = "citywatch") -> Run:
    url = f"mqtt://127.0.0.1:{port}"
    before = stored_rows(db_url) if _has_telemetry(db_url) else 0
    with running_service(config, url, db_url) as service:
        counts = service.pipeline.counts
        base = counts.stored
        spy = _start_py_spy(profile) if profile else None
        child = getattr(service._link, "pid", None)  # broker.receiver: process
        cpu0, t0 = _cpu(child), time.perf_counter()
        pubs = start_publishers(port, fleet)
        got, t1 = wait_for(lambda: counts.stored - base, fleet.total, timeout)
        cpu = _cpu(child) - cpu0
        if spy is not None:
            spy.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
            spy.wait(60)
        wait_all(pubs, 10)
        body = service.health()
        health, rules = body["counts"], body["rules"]
        faulty = body["faulty_devices"]
        corrected = len(body["clocks"]["corrected"])
    rows = stored_rows(db_url) - before
    run = Run(name, fleet.total, min(got, rows), t1 - t0, cpu)
    print(f"  citywatch /api/health counts: stored {health['stored']:,}, duplicates "
          f"{health['duplicates']:,}, rejected {health['rejected']:,}; telemetry rows "
          f"{rows:,} of {fleet.total:,} published")
    print(f"  rules: {rules}; faulty devices {len(faulty)}, clocks corrected {corrected}")
    return run


def _has_telemetry(db_url: str) -> bool:
    with psycopg.connect(db_url, autocommit=True) as conn:
        row = conn.execute("SELECT to_regclass('telemetry') IS NOT NULL").fetchone()
    return bool(row and row[0])


def _start_py_spy(out: str) -> subprocess.Popen[bytes] | None:
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(exe).exists():
        print("py-spy not found; --profile ignored", file=sys.stderr)
        return None
    fmt = "speedscope" if out.endswith(".json") else "raw" if out.endswith(".txt") else "flamegraph"
    proc = subprocess.Popen([exe, "record", "-p", str(os.getpid()), "-o", out, "-f", fmt,
                             "-r", "200", "--threads"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    return proc


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--per-device", type=int, default=1000,
                    help="messages per ground monitor for the floor and citywatch")
    ap.add_argument("--naive-per-device", type=int, default=250,
                    help="messages per ground monitor for the naive consumer (it is slow)")
    ap.add_argument("--timeout", type=float, default=300.0, help="per run, seconds")
    ap.add_argument("--only", choices=("floor", "paho", "naive", "citywatch"), action="append",
                    help="run only these (repeatable); ratios need all three")
    ap.add_argument("--profile", help="py-spy the citywatch run into this file "
                    "(.svg flame graph, .txt collapsed stacks, .json speedscope)")
    ap.add_argument("--receiver", choices=("thread", "process"), action="append",
                    help="citywatch's broker.receiver (repeatable; default both, in turn)")
    ap.add_argument("--batch-max", type=int, help="database.batch_max (default: config.yaml's)")
    ap.add_argument("--batch-wait-ms", type=int,
                    help="database.batch_wait_ms (default: config.yaml's)")
    args = ap.parse_args()
    args.receiver = args.receiver or ["thread", "process"]
    only = set(args.only or ("floor", "paho", "naive", "citywatch"))
    config = load_config(REPO / "config.yaml", env={})
    config = with_settings(config, batch_max=args.batch_max, batch_wait_ms=args.batch_wait_ms)
    runs: dict[str, Run] = {}
    print(f"machine: {os.cpu_count()} cores; load average before: {load_average()}; "
          f"database.batch_max {config.database.batch_max}, "
          f"batch_wait_ms {config.database.batch_wait_ms}")
    with tuned_stack("bench-sbs-") as stack:
        work, db_url, port = stack.work, stack.db_url, stack.port
        n_dev = len(ground_devices(config))
        print(f"broker: {stack.broker_kind} with citywatch/mosquitto.conf on port {port}; "
              f"{n_dev} mosquitto_pub -l at QoS 1")
        if "floor" in only:
            runs["floor"] = run_floor(port, write_fleet(config, args.per_device, work), work,
                                      args.timeout)
            print(runs["floor"].line(), flush=True)
        if "paho" in only:
            fleet = write_fleet(config, args.per_device, work, seq0=5_000_000)
            runs["paho-only"] = run_paho_only(port, fleet, args.timeout)
            print(runs["paho-only"].line(), flush=True)
        if "naive" in only:
            fleet = write_fleet(config, args.naive_per_device, work, seq0=10_000_000)
            runs["naive"] = run_naive(port, fleet, db_url, config, args.timeout)
            print(runs["naive"].line(), flush=True)
        if "citywatch" in only:
            for i, receiver in enumerate(args.receiver):
                # broker.receiver: the MQTT session in the engine's process, or in its own.
                name = "citywatch" if receiver == "thread" else "citywatch+mqtt-process"
                cfg = with_settings(config, receiver=receiver)
                fleet = write_fleet(config, args.per_device, work, seq0=20_000_000 * (i + 1))
                runs[name] = run_citywatch(port, fleet, db_url, cfg, args.timeout,
                                           args.profile, name)
                print(runs[name].line(), flush=True)
    print(f"load average after: {load_average()}")
    if "paho-only" in runs and "floor" in runs:
        print(f"paho-only / floor: {runs['paho-only'].rate / max(runs['floor'].rate, 1e-9):.2f}")
    for name, cw in runs.items():
        if not name.startswith("citywatch"):
            continue
        if "floor" in runs:
            print(f"{name} / floor: {cw.rate / max(runs['floor'].rate, 1e-9):.2f}")
        if "paho-only" in runs:
            print(f"{name} / paho-only: {cw.rate / max(runs['paho-only'].rate, 1e-9):.2f}")
        if "naive" in runs:
            print(f"{name} / naive: {cw.rate / max(runs['naive'].rate, 1e-9):.1f}x")
    lost = [r.name for r in runs.values() if r.received != r.messages]
    if lost:
        print(f"LOSS in: {', '.join(lost)}")
        return 1
    print("zero loss: every run stored/received exactly what was published")
    return 0


if __name__ == "__main__":
    sys.exit(main())
