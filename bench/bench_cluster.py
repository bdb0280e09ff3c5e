"""Past one machine: engine throughput with 1, 2 and 3 workers on a three-node NATS cluster.

Run from the repository root: ``python -m bench.bench_cluster [--messages N] [--workers 1,2,3]``.

Starts a three-node cluster on loopback (scripts/cluster/natscluster.py) and the streams the
workers use. For each worker count, in one run: a fresh database; a backlog of N telemetry
messages (the district's water, rain and traffic devices, about 150 bytes of JSON each) published
at QoS 1 over MQTT, spread over the three nodes, while no worker runs (the router's durable
consumer keeps them); then that many workers (``python -m citywatch.cluster_worker``, each its own
process) start and drain it. The rate is taken between 10 % and 90 % of the backlog stored, so
start-up (imports, migrations, leases) is not counted. Prints messages per second, the ratio to
one worker, where the CPU went (per process: workers, nats-server nodes, PostgreSQL), and
``uptime``. Also the publish rate: what the cluster accepts (PUBACK after the R3 store).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion

from bench.procstat import cpu_seconds
from citywatch.config import load_config

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "cluster" / "natscluster.py"
PG = os.environ.get("CITYWATCH_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def postgres_pids() -> list[int]:
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if (p / "comm").read_text().strip() in ("postgres", "postmaster"):
                    out.append(int(p.name))
            except OSError:
                pass
    return out


def postgres_cpu() -> float:
    return sum(cpu_seconds(p) for p in postgres_pids())


def messages(n: int) -> list[tuple[str, bytes]]:
    cfg = load_config(REPO / "config.yaml", env={})
    devices = sorted((d.id, d.kind) for d in cfg.devices if d.kind in ("water", "rain", "traffic"))
    per = -(-n // len(devices))
    end = datetime.now(UTC) - timedelta(minutes=1)
    out: list[tuple[str, bytes]] = []
    for seq in range(per):
        ts = (end - timedelta(seconds=10 * (per - 1 - seq))).isoformat(timespec="milliseconds")
        for d, kind in devices:
            if kind == "water":
                values: dict[str, float] = {"water_depth_cm": 1.0 + (seq % 7) * 0.3}
            elif kind == "rain":
                values = {"rain_rate_mm_h": 0.0}
            else:
                values = {"flow_veh_h": 600.0 + seq % 50, "speed_kmh": 38.0 + seq % 5,
                          "occupancy_pct": 12.0}
            values["battery_v"] = 3.6
            body = {"ts": ts.replace("+00:00", "Z"), "seq": seq, "values": values}
            out.append((f"city/{kind}/{d}/telemetry", json.dumps(body).encode()))
    return out[:n]


def publish(ports: list[int], password: str, msgs: list[tuple[str, bytes]]) -> float:
    """Publish at QoS 1 from one client per node (round robin); seconds until all PUBACKed."""
    clients = []
    lock = threading.Lock()
    acked = [0]

    def on_publish(*_a: Any) -> None:
        with lock:
            acked[0] += 1

    for port in ports:
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-{uuid.uuid4().hex[:6]}",
                        protocol=mqtt.MQTTv311)
        c.username_pw_set("engine", password)
        c.max_inflight_messages_set(200)
        c.max_queued_messages_set(0)
        c.on_publish = on_publish
        c.connect("127.0.0.1", port)
        c.loop_start()
        clients.append(c)
    t0 = time.monotonic()
    for i, (topic, payload) in enumerate(msgs):
        clients[i % len(clients)].publish(topic, payload, qos=1)
    while acked[0] < len(msgs):
        time.sleep(0.02)
    took = time.monotonic() - t0
    for c in clients:
        c.disconnect()
        c.loop_stop()
    return took


def stored(db: str) -> int:
    with psycopg.connect(db) as conn:
        row = conn.execute("SELECT count(*) FROM telemetry").fetchone()
    return int(row[0]) if row else 0


def fresh_db() -> str:
    name = f"cwbench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return PG.rsplit("/", 1)[0] + "/" + name


def drop_db(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(PG, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def setup_topology(info: dict[str, Any]) -> None:
    import nats

    from citywatch.cluster_nats import ensure_topology, nats_options, touch_mqtt
    from tests.fix_cluster import partition_names

    touch_mqtt(info["mqtt_ports"][0], info["engine_password"], "bench-setup")

    async def run() -> None:
        nc = await nats.connect(**nats_options(info["nats_urls"]))
        await ensure_topology(nc.jetstream(timeout=5), partition_names())
        await nc.close()

    asyncio.run(run())


def backlog(info: dict[str, Any]) -> tuple[int, int]:
    """Where the backlog waits: (not yet routed, routed but not yet stored and acked)."""
    import nats

    from citywatch.cluster_nats import nats_options
    from tests.fix_cluster import partition_names

    async def run() -> tuple[int, int]:
        nc = await nats.connect(**nats_options(info["nats_urls"]))
        js = nc.jetstream(timeout=5)
        r = await js.consumer_info("$MQTT_msgs", "router")
        parts = 0
        for p in partition_names():
            c = await js.consumer_info("CW_PARTS", f"part-{p}")
            parts += c.num_pending + c.num_ack_pending
        await nc.close()
        return r.num_pending + r.num_ack_pending, parts

    return asyncio.run(run())


def one_run(info: dict[str, Any], n_workers: int, msgs: list[tuple[str, bytes]],
            logs: Path) -> dict[str, Any]:
    db = fresh_db()
    # The schema first (the workers would, but not within the measured window).
    with psycopg.connect(db, autocommit=True) as conn:
        from alerts import store as alert_store
        from sensing import store as sensing_store
        sensing_store.migrate(conn)
        alert_store.migrate(conn)
    pub_s = publish(info["mqtt_ports"], info["engine_password"], msgs)
    env = {**os.environ, "CITYWATCH_MQTT_PASSWORD": info["engine_password"]}
    procs = []
    for i in range(n_workers):
        out = open(logs / f"run{n_workers}-w{i + 1}.log", "wb")  # noqa: SIM115
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "citywatch.cluster_worker", "--nats",
             ",".join(info["nats_urls"]), "--database", db, "--worker-id", f"w{i + 1}",
             "--mqtt-ports", ",".join(str(p) for p in info["mqtt_ports"])],
            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO))
    n = len(msgs)
    marks: dict[str, float] = {}
    cpu0: dict[str, float] = {}
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        have = stored(db)
        now = time.monotonic()
        if "lo" not in marks and have >= n * 0.1:
            marks["lo"], marks["lo_n"] = now, have
            cpu0 = {"workers": sum(cpu_seconds(p.pid) for p in procs),
                    "nats": sum(cpu_seconds(int(v["pid"])) for v in info["nodes"].values()),
                    "postgres": postgres_cpu()}
        if "mid" not in marks and have >= n * 0.5:
            marks["mid"] = now
            waiting = backlog(info)
        if have >= n * 0.9:
            marks["hi"], marks["hi_n"] = now, have
            cpu1 = {"workers": sum(cpu_seconds(p.pid) for p in procs),
                    "nats": sum(cpu_seconds(int(v["pid"])) for v in info["nodes"].values()),
                    "postgres": postgres_cpu()}
            break
        time.sleep(0.1)
    else:
        raise SystemExit(f"{n_workers} workers did not drain the backlog; see {logs}")
    while stored(db) < n and time.monotonic() < deadline:
        time.sleep(0.2)
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait(30)
    drop_db(db)
    window = marks["hi"] - marks["lo"]
    cpu = {k: (cpu1[k] - cpu0[k]) / window for k in cpu0}
    return {"workers": n_workers, "rate": (marks["hi_n"] - marks["lo_n"]) / window,
            "publish_rate": n / pub_s, "cpu": cpu, "waiting": waiting}


def one_machine(n: int) -> float:
    """The single-machine engine (tuned Mosquitto, ``Service``) on the same kind of traffic,
    measured as bench/bench_pipeline.py does: publish N while it runs, until all are stored."""
    from bench.bench_pipeline import messages as pipeline_messages
    from bench.bench_pipeline import pipeline
    from citywatch.embedded import start_broker
    from sensing.scratch import scratch_database

    config = load_config(REPO / "config.yaml", env={})
    with (scratch_database(PG, "citywatch_bench") as db_url,
          tempfile.TemporaryDirectory() as tmp,
          start_broker(Path(tmp), anonymous=True) as broker):
        rate, _ = pipeline(config, broker.url, db_url, pipeline_messages(config, n))
    return rate


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--workers", default="1,2,3")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="cw-bench-cluster-") as tmp:
        root = Path(tmp)
        subprocess.run([sys.executable, str(SCRIPT), "start", str(root / "nodes")], check=True,
                       stdout=subprocess.DEVNULL)
        info = json.loads((root / "nodes" / "cluster.json").read_text())
        try:
            setup_topology(info)
            msgs = messages(a.messages)
            results = [one_run(info, int(w), msgs, root) for w in a.workers.split(",")]
            single = one_machine(a.messages)
        finally:
            subprocess.run([sys.executable, str(SCRIPT), "stop", str(root / "nodes")],
                           check=False)
    base = results[0]["rate"]
    print(f"backlog {a.messages} telemetry messages, 3 NATS nodes (R3), 8 partitions; "
          f"{os.cpu_count()} cores")
    print(f"{'workers':>8} {'msg/s':>8} {'ratio':>6} {'publish msg/s':>14}   CPU cores busy "
          f"(workers / nats x3 / postgres)   at half: to route / routed, not stored")
    for r in results:
        c = r["cpu"]
        print(f"{r['workers']:>8} {r['rate']:>8,.0f} {r['rate'] / base:>6.2f} "
              f"{r['publish_rate']:>14,.0f}   {c['workers']:.2f} / {c['nats']:.2f} / "
              f"{c['postgres']:.2f}   {r['waiting'][0]:>6} / {r['waiting'][1]:>6}")
    print(f"one machine (Mosquitto + one engine, bench_pipeline's measure, publishing while it "
          f"runs): {single:,.0f} msg/s ({single / base:.2f}x one cluster worker)")
    up = subprocess.run(["uptime"], check=False, capture_output=True, text=True)
    print("uptime:", up.stdout.strip())


if __name__ == "__main__":
    main()
