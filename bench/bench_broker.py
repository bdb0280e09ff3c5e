"""QoS 1 throughput over loopback, tuned Mosquitto against the same binary with its defaults.

Run from the repository root: ``python -m bench.bench_broker [--messages N] [--seconds S]``.

One paho publisher sends N telemetry messages of about 120 bytes of JSON at QoS 1 to one paho
subscriber (QoS 1), through each of:

- tuned: our shipped configuration, started by ``citywatch.embedded.start_broker``;
- default: the same ``mosquitto`` binary with only a loopback listener (``set_tcp_nodelay false``,
  ``max_inflight_messages 20``);
- nodelay: the defaults plus ``set_tcp_nodelay true``, to show what that one line does.

Then ``mosquitto_pub -l`` into ``mosquitto_sub`` (both QoS 1) as a reference, when installed.
Each run stops after S seconds (default 30) and reports what arrived by then, so a slow broker
yields a rate instead of a hang. Prints messages per second and the tuned/default ratio.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from citywatch.embedded import find_mosquitto, free_port, mqtt_protocol, start_broker

TOPIC = "city/water/wm-001/telemetry"


@dataclass
class Result:
    sent: int
    received: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.received / self.seconds if self.seconds > 0 else 0.0

    def __str__(self) -> str:
        done = "" if self.received == self.sent else f"  (stopped at {self.received}/{self.sent})"
        return f"{self.rate:>10,.0f} msg/s{done}"


def payloads(n: int) -> list[bytes]:
    out = []
    for seq in range(n):
        body = {"ts": "2026-11-23T08:15:00.250Z", "seq": seq,
                "values": {"water_depth_cm": 12.5, "battery_v": 3.61, "rssi_dbm": -71}}
        out.append(json.dumps(body).encode())
    return out


def client(port: int, name: str, inflight: int = 20, nodelay: bool = False) -> mqtt.Client:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=name, protocol=mqtt.MQTTv5)
    c.max_inflight_messages_set(inflight)
    if nodelay:  # paho leaves Nagle on; a client can turn it off on its own socket
        def no_delay(_c: mqtt.Client, _u: Any, sock: Any) -> None:
            if isinstance(sock, socket.socket):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        c.on_socket_open = no_delay
    ready = threading.Event()
    c.on_connect = lambda *_a: ready.set()
    c.connect("127.0.0.1", port, keepalive=30)
    c.loop_start()
    if not ready.wait(10):
        raise SystemExit(f"{name}: no CONNACK from 127.0.0.1:{port}")
    return c


def paho_run(port: int, data: list[bytes], seconds: float, inflight: int,
             nodelay: bool) -> Result:
    received = 0
    last = 0.0
    done = threading.Event()

    def on_message(_c: mqtt.Client, _u: Any, _m: mqtt.MQTTMessage) -> None:
        nonlocal received, last
        received += 1
        last = time.perf_counter()
        if received == len(data):
            done.set()

    sub = client(port, "bench-sub", nodelay=nodelay)
    sub.on_message = on_message
    subscribed = threading.Event()
    sub.on_subscribe = lambda *_a: subscribed.set()
    sub.subscribe("city/+/+/telemetry", qos=1)
    if not subscribed.wait(10):
        raise SystemExit("no SUBACK")
    pub = client(port, "bench-pub", inflight, nodelay)
    start = time.perf_counter()
    deadline = start + seconds
    for i, payload in enumerate(data):
        pub.publish(TOPIC, payload, qos=1)  # queued in paho; sent as the in-flight window allows
        if i % 1000 == 0 and time.perf_counter() > deadline:
            break
    done.wait(max(0.0, deadline - time.perf_counter()))
    got = received
    elapsed = (last if got == len(data) else time.perf_counter()) - start
    for c in (pub, sub):
        c.disconnect()
        c.loop_stop()
    return Result(len(data), got, elapsed)


def cli_run(port: int, data: list[bytes], seconds: float, work: Path) -> Result | None:
    pub_exe, sub_exe = shutil.which("mosquitto_pub"), shutil.which("mosquitto_sub")
    if pub_exe is None or sub_exe is None:
        return None
    lines = work / f"lines-{port}.txt"
    lines.write_bytes(b"\n".join(data) + b"\n")
    out = work / f"received-{port}.txt"
    common = ["-h", "127.0.0.1", "-p", str(port), "-q", "1", "-t", TOPIC]
    with out.open("wb") as sink:
        sub = subprocess.Popen([sub_exe, *common, "-C", str(len(data))], stdout=sink)
        time.sleep(1.0)  # mosquitto_sub has no "subscribed" signal; a second is plenty on loopback
        start = time.perf_counter()
        with lines.open("rb") as source:
            pub = subprocess.Popen([pub_exe, *common, "-l"], stdin=source)
            with contextlib.suppress(subprocess.TimeoutExpired):
                sub.wait(seconds)
            elapsed = time.perf_counter() - start
            for p in (pub, sub):
                p.kill()
                p.wait()
    received = out.read_bytes().count(b"\n")
    return Result(len(data), received, elapsed)


@contextlib.contextmanager
def plain_mosquitto(exe: str, work: Path, name: str, extra: str = "") -> Iterator[int]:
    """The Mosquitto binary with only a loopback listener (plus ``extra``): its defaults."""
    port = free_port()
    conf = work / f"{name}.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n{extra}")
    with (work / f"{name}.log").open("wb") as log:
        proc = subprocess.Popen([exe, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while mqtt_protocol("127.0.0.1", port, 1.0) is None:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"mosquitto ({name}) did not start: {conf}")
            time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=20_000)
    ap.add_argument("--seconds", type=float, default=30.0, help="time limit of each run")
    ap.add_argument("--inflight", type=int, default=20,
                    help="the paho publisher's in-flight window (paho's default is 20)")
    ap.add_argument("--client-nodelay", action="store_true",
                    help="set TCP_NODELAY on the paho clients' sockets too (paho does not)")
    ap.add_argument("--no-cli", action="store_true", help="skip the mosquitto_pub/sub reference")
    args = ap.parse_args()
    exe = find_mosquitto()
    if exe is None:
        print("mosquitto is not installed (apt-get install mosquitto)", file=sys.stderr)
        return 1
    data = payloads(args.messages)
    print(f"{args.messages} messages of {sum(map(len, data)) // len(data)} bytes, QoS 1, "
          f"publisher in-flight window {args.inflight}, client TCP_NODELAY "
          f"{'on' if args.client_nodelay else 'off'}, at most {args.seconds:g} s per run; {exe}")

    def run(port: int) -> tuple[Result, Result | None]:
        paho = paho_run(port, data, args.seconds, args.inflight, args.client_nodelay)
        return paho, None if args.no_cli else cli_run(port, data, args.seconds, work)

    rows: dict[str, tuple[Result, Result | None]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-broker-") as tmp:
        work = Path(tmp)
        with start_broker(work / "tuned", prefer="mosquitto", fallback=False,
                          anonymous=True) as tuned:
            rows["tuned"] = run(tuned.port)
        for name, extra in (("default", ""), ("nodelay", "set_tcp_nodelay true\n")):
            with plain_mosquitto(exe, work, name, extra) as port:
                rows[name] = run(port)
    print(f"{'broker':<10} {'paho -> paho':>28}   {'mosquitto_pub -l -> mosquitto_sub':>34}")
    for name, (paho, cli) in rows.items():
        print(f"{name:<10} {paho!s:>28}   {cli if cli is not None else 'not run'!s:>34}")
    ratio = rows["tuned"][0].rate / max(rows["default"][0].rate, 1e-9)
    print(f"tuned / default (paho): {ratio:,.0f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
