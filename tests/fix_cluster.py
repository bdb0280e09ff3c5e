"""Past one machine (tests/cluster, bench/bench_cluster.py): a three-node NATS cluster started by
scripts/cluster/natscluster.py, engine workers as processes (``python -m
citywatch.cluster_worker``) that can be SIGKILLed, and devices that speak MQTT 3.1.1 to different
nodes with their own credentials and move to another node when theirs goes away.

``ClusterFleet`` keeps the same books as tests/fix_faults.Fleet (``published``, ``acked``,
``refused``, ``unanswered()``), so ``take_ledger`` closes a case here as it does in the fault
matrix.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from citywatch.config import Config
from tests.fix_faults import CONFIG, REPO, Key, Publishing, Reading, in_ci

SCRIPT = REPO / "scripts" / "cluster" / "natscluster.py"


class NatsCluster:
    def __init__(self, root: Path, info: dict[str, Any], secrets_by_id: dict[str, str]) -> None:
        self.root, self.info, self.secrets = root, info, secrets_by_id

    @property
    def nats_urls(self) -> list[str]:
        return list(self.info["nats_urls"])

    @property
    def mqtt_ports(self) -> list[int]:
        return [int(p) for p in self.info["mqtt_ports"]]

    @property
    def engine_password(self) -> str:
        return str(self.info["engine_password"])

    def _script(self, *args: str) -> None:
        subprocess.run([sys.executable, str(SCRIPT), *args], check=True, timeout=60)

    def kill(self, node: str) -> None:
        self._script("kill", str(self.root), node)

    def restart(self, node: str) -> None:
        self._script("restart", str(self.root), node)

    def stop(self) -> None:
        self._script("stop", str(self.root))


def start_cluster(root: Path, config: Config) -> NatsCluster:
    if shutil.which("nats-server", path=os.environ.get("PATH", "") + ":/usr/sbin") is None:
        if in_ci():
            pytest.fail("nats-server is not installed (CI: a missing service is a failure)")
        pytest.skip("nats-server is not installed")
    creds = {d.id: secrets.token_hex(8) for d in config.devices}
    teams = {t.id: secrets.token_hex(8) for t in config.teams}
    users = root / "users.json"
    root.mkdir(parents=True, exist_ok=True)
    users.write_text(json.dumps({"devices": creds, "teams": teams}), encoding="utf-8")
    subprocess.run([sys.executable, str(SCRIPT), "start", str(root / "nodes"), "--users",
                    str(users)], check=True, timeout=90, stdout=subprocess.DEVNULL)
    info = json.loads((root / "nodes" / "cluster.json").read_text(encoding="utf-8"))
    return NatsCluster(root / "nodes", info, {**creds, **teams})


@pytest.fixture
def nats_cluster(tmp_path: Path, fault_config: Config) -> Iterator[NatsCluster]:
    cluster = start_cluster(tmp_path / "cluster", fault_config)
    yield cluster
    cluster.stop()


class WorkerProcess:
    """One engine worker, a process of its own so that SIGKILL is a real crash."""

    def __init__(self, cluster: NatsCluster, db_url: str, worker_id: str, log_dir: Path,
                 config: Path = CONFIG) -> None:
        self.cluster, self.db_url, self.id = cluster, db_url, worker_id
        self.config = config
        self.log = log_dir / f"worker-{worker_id}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        env = {**os.environ, "CITYWATCH_MQTT_PASSWORD": self.cluster.engine_password}
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "citywatch.cluster_worker", "--config", str(self.config),
                 "--nats", ",".join(self.cluster.nats_urls), "--database", self.db_url,
                 "--worker-id", self.id,
                 "--mqtt-ports", ",".join(str(p) for p in self.cluster.mqtt_ports)],
                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def pause(self) -> None:
        """SIGSTOP: the worker stops mid-whatever (a long GC pause, a stalled VM), holding its
        connections and whatever transaction it had open."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a paused one would not hear SIGTERM
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def owners(cluster: NatsCluster) -> dict[str, str]:
    """{partition: worker} from the lease bucket (the singleton lease as "singleton")."""

    async def read() -> dict[str, str]:
        import nats
        from nats.js.errors import BucketNotFoundError, KeyNotFoundError

        from citywatch.cluster_nats import nats_options

        nc = await nats.connect(**nats_options(cluster.nats_urls), connect_timeout=2,
                                max_reconnect_attempts=2)
        try:
            kv = await nc.jetstream(timeout=3).key_value("cw_leases")
            out: dict[str, str] = {}
            for k in [*(f"p.{p}" for p in partition_names()), "singleton"]:
                with contextlib.suppress(KeyNotFoundError):
                    e = await kv.get(k)
                    if e.value:
                        out[k.removeprefix("p.")] = e.value.decode()
            return out
        except (BucketNotFoundError, nats.errors.Error, TimeoutError):
            return {}
        finally:
            await nc.close()

    return asyncio.run(read())


class ClusterFleet(Publishing):
    """Devices publishing ``readings`` at QoS 1 (MQTT 3.1.1, persistent session), one client
    per device with its own credentials, device i on node i mod n; a device whose node goes
    away reconnects to the next one and sends again what was not acknowledged. ``rate`` is
    messages per second over the whole fleet."""

    def __init__(self, cluster: NatsCluster, readings: Sequence[Reading], rate: float) -> None:
        self.readings = list(readings)
        self.rate = rate
        self.acked: set[Key] = set()
        self.refused: dict[Key, str] = {}
        self.published = 0
        self.done = threading.Event()
        self._pending: dict[tuple[str, int], Key] = {}
        self._early: set[tuple[str, int]] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.nodes = [("127.0.0.1", p) for p in cluster.mqtt_ports]
        self.clients: dict[str, mqtt.Client] = {}
        self.node_of: dict[str, int] = {}
        devices = sorted({r.device_id for r in self.readings})
        for i, d in enumerate(devices):
            self.clients[d] = self._connect(d, cluster.secrets[d], i % len(self.nodes))

    def _connect(self, device_id: str, secret: str, node: int) -> mqtt.Client:
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=device_id,
                        protocol=mqtt.MQTTv311, clean_session=False)
        c.username_pw_set(device_id, secret)
        c.max_queued_messages_set(0)
        c.max_inflight_messages_set(50)
        c.reconnect_delay_set(min_delay=1, max_delay=2)
        self.node_of[device_id] = node
        connected = threading.Event()
        c.on_connect = lambda *_a: connected.set()

        def moved(*_a: Any) -> None:  # to the next node, as a device with a list of brokers
            n = self.node_of[device_id] = (self.node_of[device_id] + 1) % len(self.nodes)
            c._host, c._port = self.nodes[n]

        c.on_disconnect = moved
        c.on_connect_fail = moved  # a node that is down: on to the next one
        c.on_publish = lambda _c, _u, mid, _rc, _p: self._on_publish(device_id, mid)
        c.connect(*self.nodes[node], keepalive=10)
        c.loop_start()
        if not connected.wait(10):
            raise AssertionError(f"device {device_id} could not connect to node {node}")
        return c

    def _on_publish(self, device_id: str, mid: int) -> None:
        with self._lock:
            key = self._pending.pop((device_id, mid), None)
            if key is None:
                self._early.add((device_id, mid))
            else:
                self.acked.add(key)

    def _publish_one(self, r: Reading) -> None:
        info = self.clients[r.device_id].publish(r.topic, r.payload, qos=1)
        with self._lock:
            if (r.device_id, info.mid) in self._early:
                self._early.discard((r.device_id, info.mid))
                self.acked.add(r.key)
            else:
                self._pending[(r.device_id, info.mid)] = r.key
            self.published += 1

    def start(self) -> ClusterFleet:
        self._thread = threading.Thread(target=self._run, name="fleet", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        start = time.monotonic()
        for n, r in enumerate(self.readings):
            if self._stop.is_set():
                return
            delay = start + n / self.rate - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)
            self._publish_one(r)
        self.done.set()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        for c in self.clients.values():
            c.disconnect()
            c.loop_stop()


def partitions_count(config_path: Path = CONFIG) -> int:
    return len(partition_names(config_path))


@functools.cache
def partition_names(config_path: Path = CONFIG) -> tuple[str, ...]:
    """The partitions the district's registry makes (geo.partitions)."""
    from citywatch.config import load_config
    from citywatch.service import build_placement
    from geo.load import load_zones
    from geo.partitions import Site, partition
    from rules.engine import CAMERA_RANGE_M

    cfg = load_config(config_path, env={})
    zones = load_zones(cfg.zones_path)
    sites = [Site(s.device_id, s.kind, s.position, s.zone_ids)
             for s in build_placement(cfg, zones).sites()]
    return partition(zones, sites,
                     catchment_radius_m=cfg.rules.waterlogging.rain.catchment_radius_m,
                     camera_range_m=CAMERA_RANGE_M).partitions
