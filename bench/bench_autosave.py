"""What Mosquitto's autosave loses when the broker is killed, and what saving more often costs.

Run from the repository root: ``python -m bench.bench_autosave [--reps N] [--rate R]``.

Mosquitto 2.0 keeps sessions, queued and in-flight QoS 1 messages and retained messages in memory
and writes them all to ``mosquitto.db`` at a clean exit and at each autosave. A SIGKILL (or an
out-of-memory kill, a power cut) loses everything that changed since the last save. What matters
for citywatch is a device message that the broker has PUBACKed to its device (so the device will
never send it again) but not yet handed to the engine: while the engine is live and keeping up
the broker holds almost nothing (the engine holds what was delivered and acknowledges it only
after its commit); while the engine is away, its persistent session queues everything.

For each autosave setting this measures, with the engine's session offline (the worst case):

- loss: a persistent session exists and was saved (the broker was restarted cleanly after it
  subscribed, as in steady operation); a publisher sends telemetry at ``--rate`` msg/s (the
  district in a storm: about 40 msg/s); the broker is SIGKILLed at a moment placed uniformly
  within an autosave period (after a first whole period); restarted, the session is drained and
  the messages the broker acknowledged but no longer has are counted ("lost per kill", with how
  many were acknowledged in that run), and how long before the kill the oldest lost one came
  ("most since save");
- cost: one publisher sends ``--messages`` telemetry messages flat out at QoS 1 into the offline
  session (the queue grows from 0 to that many; each save writes the whole queue): acknowledged
  messages per second within ``--seconds``, how many saves that took, and how long a clean stop
  then took (one more save of the whole queue: "last save").

The settings: ``autosave_interval`` in seconds (``autosave_on_changes false``: 60, the old
shipped value; 5; 1, the new one), and ``autosave_on_changes true`` with a count of changes (100;
1). The engine's session is begun with clean_start=0, as the engine does: Mosquitto 2.0.11 saves
only such sessions (one begun with clean_start=1 and a session expiry is lost at any restart).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pwd
import random
import signal
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
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from citywatch.embedded import (
    SERVICE_USER,
    find_mosquitto,
    free_port,
    mosquitto_config,
    mqtt_protocol,
)

ENGINE = "bench-engine"
SETTINGS: list[tuple[str, dict[str, str]]] = [
    ("every 60 s", {"autosave_on_changes": "false", "autosave_interval": "60"}),
    ("every 5 s", {"autosave_on_changes": "false", "autosave_interval": "5"}),
    ("every 1 s", {"autosave_on_changes": "false", "autosave_interval": "1"}),
    ("every 100 changes", {"autosave_on_changes": "true", "autosave_interval": "100"}),
    ("every change", {"autosave_on_changes": "true", "autosave_interval": "1"}),
]


class Broker:
    """The shipped mosquitto.conf with the autosave lines replaced, on a fixed port and dir."""

    def __init__(self, exe: str, data_dir: Path, overrides: dict[str, str]) -> None:
        self.exe, self.data_dir, self.port = exe, data_dir, free_port()
        data_dir.mkdir(parents=True, exist_ok=True)
        lines = [line for line in mosquitto_config(self.port, data_dir,
                                                    anonymous=True).splitlines()
                 if line.split(" ", 1)[0] not in overrides]
        lines += [f"{k} {v}" for k, v in overrides.items()]
        self.conf = data_dir / "bench.conf"
        self.conf.write_text("\n".join(lines) + "\n", encoding="utf-8")
        # As root, run as the embedded services' account, which owns the data directory (a
        # Mosquitto started as root would switch to user "mosquitto" and could not write it).
        self.account = pwd.getpwnam(SERVICE_USER) if os.geteuid() == 0 else None
        if self.account is not None:
            os.chown(data_dir, self.account.pw_uid, self.account.pw_gid)
            for p in (data_dir, *data_dir.parents):
                p.chmod(p.stat().st_mode | 0o001)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        acct = self.account
        self.proc = subprocess.Popen(
            [self.exe, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT, user=acct.pw_uid if acct else None,
            group=acct.pw_gid if acct else None, extra_groups=[] if acct else None)
        deadline = time.monotonic() + 10
        while mqtt_protocol("127.0.0.1", self.port, 1.0) is None:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"mosquitto did not start with {self.conf}")
            time.sleep(0.02)

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(30)
        self.proc = None

    def saves(self) -> int:
        log = self.data_dir / "mosquitto.log"
        return log.read_text(errors="replace").count("Saving in-memory database")


def connect(port: int, client_id: str, *, clean: bool, on_message: Any = None,
            inflight: int = 1000) -> mqtt.Client:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    c.max_inflight_messages_set(inflight)
    c.max_queued_messages_set(0)
    if on_message is not None:
        c.on_message = on_message
    ready = threading.Event()
    c.on_connect = lambda *_a: ready.set()
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = 86400
    c.connect("127.0.0.1", port, keepalive=30, clean_start=clean, properties=props)
    c.loop_start()
    if not ready.wait(10):
        raise SystemExit(f"{client_id}: no CONNACK")
    return c


def close(c: mqtt.Client) -> None:
    c.disconnect()
    c.loop_stop()


def saved_offline_session(broker: Broker) -> None:
    """The engine's session, subscribed and saved to disk, with the engine away."""
    broker.start()
    # clean_start=0 as the engine does: Mosquitto 2.0.11 saves only such sessions to disk (a
    # session begun with clean_start=1 and an expiry interval is lost at a restart).
    sub = connect(broker.port, ENGINE, clean=False)
    done = threading.Event()
    sub.on_subscribe = lambda *_a: done.set()
    sub.subscribe("city/#", qos=1)
    if not done.wait(10):
        raise SystemExit("no SUBACK")
    close(sub)
    broker.stop()  # a clean stop saves: the session is on disk, as after any earlier autosave
    broker.start()


def body(seq: int) -> bytes:
    return json.dumps({"ts": "2026-11-23T08:15:00.250Z", "seq": seq,
                       "values": {"water_depth_cm": 12.5, "battery_v": 3.61}}).encode()


class Publisher:
    """QoS 1 publisher that remembers which sequence numbers the broker acknowledged."""

    def __init__(self, port: int) -> None:
        self.acked: set[int] = set()
        self._mids: dict[int, int] = {}
        self._early: dict[int, Any] = {}
        self._lock = threading.Lock()
        self.client = connect(port, f"bench-pub-{port}", clean=True)
        self.client.on_publish = self._on_publish

    def _on_publish(self, _c: mqtt.Client, _u: Any, mid: int, rc: Any, _p: Any) -> None:
        with self._lock:
            seq = self._mids.pop(mid, None)
            if seq is None:  # the PUBACK came before publish() returned the mid
                self._early[mid] = rc
            elif not rc.is_failure:
                self.acked.add(seq)

    def publish(self, seq: int) -> None:
        # Not under self._lock: paho calls on_publish holding its own lock, which publish()
        # takes too.
        info = self.client.publish("city/water/wl-01/telemetry", body(seq), qos=1)
        with self._lock:
            early = self._early.pop(info.mid, None)
            if early is None:
                self._mids[info.mid] = seq
            elif not early.is_failure:
                self.acked.add(seq)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            close(self.client)


def drain(port: int, quiet_s: float = 2.0) -> set[int]:
    got: set[int] = set()
    last = [time.monotonic()]

    def on_message(_c: mqtt.Client, _u: Any, m: mqtt.MQTTMessage) -> None:
        got.add(int(json.loads(m.payload)["seq"]))
        last[0] = time.monotonic()

    sub = connect(port, ENGINE, clean=False, on_message=on_message)
    while time.monotonic() - last[0] < quiet_s:
        time.sleep(0.1)
    close(sub)
    return got


@dataclass
class Loss:
    acked: int
    lost: int
    since_save_s: float


def loss_run(exe: str, work: Path, overrides: dict[str, str], rate: float,
             run_s: float) -> Loss:
    broker = Broker(exe, work, overrides)
    saved_offline_session(broker)
    pub = Publisher(broker.port)
    seq = 0
    start = time.monotonic()
    try:
        while time.monotonic() - start < run_s:
            pub.publish(seq)
            seq += 1
            time.sleep(max(0.0, start + seq / rate - time.monotonic()))
        time.sleep(0.2)  # the last PUBACKs
        acked = set(pub.acked)
        broker.stop(signal.SIGKILL)
    finally:
        pub.close()
    broker.start()
    try:
        got = drain(broker.port)
    finally:
        broker.stop()
    lost = acked - got
    # The oldest lost message tells how long ago the last save was.
    since = (seq - min(lost)) / rate if lost else 0.0
    return Loss(len(acked), len(lost), since)


def cost_run(exe: str, work: Path, overrides: dict[str, str], n: int, seconds: float
             ) -> tuple[float, int, int, float]:
    """Acknowledged msg/s flat out into the offline session; (rate, acked, saves, how long the
    final save of that queue took: a clean stop's duration)."""
    broker = Broker(exe, work, overrides)
    saved_offline_session(broker)
    before = broker.saves()
    pub = Publisher(broker.port)
    start = time.monotonic()
    deadline = start + seconds
    try:
        for seq in range(n):
            pub.publish(seq)
            while seq - len(pub.acked) > 2000 and time.monotonic() < deadline:
                time.sleep(0.001)  # keep paho's own queue short, so the broker sets the pace
            if time.monotonic() > deadline:
                break
        while len(pub.acked) < n and time.monotonic() < deadline:
            time.sleep(0.01)
        elapsed = time.monotonic() - start
        acked = len(pub.acked)
    finally:
        pub.close()
    saves = broker.saves() - before
    t0 = time.monotonic()
    broker.stop()  # writes the whole queue once more
    return acked / elapsed, acked, saves, time.monotonic() - t0


@contextlib.contextmanager
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="bench-autosave-") as tmp:
        yield Path(tmp)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3, help="broker kills per setting")
    ap.add_argument("--rate", type=float, default=40.0, help="device messages per second")
    ap.add_argument("--messages", type=int, default=50_000, help="messages in the cost run")
    ap.add_argument("--seconds", type=float, default=60.0, help="time limit of a cost run")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    exe = find_mosquitto()
    if exe is None:
        print("mosquitto is not installed (apt-get install mosquitto)", file=sys.stderr)
        return 1
    rnd = random.Random(args.seed)
    print(f"Mosquitto {exe}; engine session offline; loss: {args.rate:g} msg/s, SIGKILL at a "
          f"random moment, {args.reps} runs per setting; cost: {args.messages} messages flat "
          f"out, at most {args.seconds:g} s")
    print(f"{'setting':<20} {'lost per kill (acked)':<34} {'most since save':>16} "
          f"{'cost: msg/s (acked, saves)':>30} {'last save':>12}")
    with workdir() as work:
        for n, (name, overrides) in enumerate(SETTINGS):
            losses = []
            period = (float(overrides["autosave_interval"])
                      if overrides["autosave_on_changes"] == "false" else 5.0)
            # Kill at a moment uniformly placed within an autosave period, after a whole period
            # has passed (the broker's first save comes one period after its start); one run
            # only for long periods, to keep the bench short.
            for rep in range(args.reps if period < 30 else 1):
                run_s = period + rnd.uniform(0.0, period) + 0.5
                losses.append(loss_run(exe, work / f"loss-{n}-{rep}", overrides, args.rate,
                                       run_s))
            rate, acked, saves, save_s = cost_run(exe, work / f"cost-{n}", overrides,
                                                  args.messages, args.seconds)
            lost = ", ".join(f"{x.lost} ({x.acked})" for x in losses)
            most = max(x.since_save_s for x in losses)
            print(f"{name:<20} {lost:<34} {most:>14.1f} s {rate:>12,.0f} ({acked}, {saves}) "
                  f"{save_s * 1000:>10,.0f} ms", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
