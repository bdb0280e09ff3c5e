#!/usr/bin/env python3
"""A three-node NATS cluster on loopback, with JetStream and an MQTT listener on every node.

    python scripts/cluster/natscluster.py start DIR [--nodes 3] [--users users.json]
    python scripts/cluster/natscluster.py stop DIR
    python scripts/cluster/natscluster.py kill DIR NODE      # SIGKILL one node (n1, n2, ...)
    python scripts/cluster/natscluster.py restart DIR NODE   # start a killed node again

``start`` picks free ports, writes one configuration and one JetStream store directory per node
under DIR, starts the nodes, waits until every MQTT listener answers and JetStream has a meta
leader, and prints (and writes to DIR/cluster.json) what clients need: the NATS URLs and the
MQTT ports, one per node. ``stop`` ends the nodes it started (their pids are in cluster.json).

Nobody connects anonymously: the engine (user ``engine``) may do anything; every device and team
in the users file (``{"devices": {"W01": "secret", ...}, "teams": {...}}``) may publish only
under its own topics and read only its own dispatches, as CONTRACT.md section 6 says. The routes
between the nodes authenticate too. Tests use this script (tests/fix_cluster.py); so can you.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

LOOPBACK = "127.0.0.1"
KINDS = ("camera", "water", "rain", "traffic", "grid")


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port(taken: set[int] | None = None) -> int:
    """A port that is free now and outside the kernel's ephemeral range: a port from bind(0)
    can be given to some other process's outgoing connection before nats-server binds it
    (seen in CI with the fault matrix running beside the cluster tests)."""
    low, high = _ephemeral_range()
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randrange(20000, 32000) if low >= 32000 else rng.randrange(high + 1, 65000)
        if taken and port in taken:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((LOOPBACK, port))
            except OSError:
                continue
            if taken is not None:
                taken.add(port)
            return port
    raise SystemExit("no free port found outside the ephemeral range")


def find_server() -> str:
    found = shutil.which("nats-server") or shutil.which("nats-server", path="/usr/sbin:/sbin")
    if found is None:
        raise SystemExit("nats-server is not installed (Debian: apt-get install nats-server)")
    return found


def _q(text: str) -> str:
    return json.dumps(text)  # the NATS configuration format reads JSON strings


def _users_block(engine_password: str, users: dict[str, dict[str, str]]) -> str:
    """Authorization: the engine, and one user per device and team with its own subjects.
    MQTT topic a/b/c is NATS subject a.b.c."""
    entries = [f"{{user: engine, password: {_q(engine_password)}}}"]
    for device_id, secret in sorted(users.get("devices", {}).items()):
        pub = [f"city.{k}.{device_id}.>" for k in KINDS]
        entries.append(
            f"{{user: {_q(device_id)}, password: {_q(secret)}, permissions: {{"
            f"publish: {json.dumps(pub)}, subscribe: [{_q('city.dispatch.' + device_id)}]}}}}")
    for team_id, secret in sorted(users.get("teams", {}).items()):
        entries.append(
            f"{{user: {_q(team_id)}, password: {_q(secret)}, permissions: {{"
            f"publish: [{_q('city.dispatch.' + team_id + '.ack')}], "
            f"subscribe: [{_q('city.dispatch.' + team_id)}]}}}}")
    return "authorization {\n  users: [\n    " + ",\n    ".join(entries) + "\n  ]\n}\n"


def node_config(name: str, ports: dict[str, int], routes: list[int], store: Path,
                route_password: str, users_block: str) -> str:
    route_urls = [f"nats-route://route:{route_password}@{LOOPBACK}:{p}" for p in routes]
    return f"""server_name: {name}
listen: {LOOPBACK}:{ports['client']}
http: {LOOPBACK}:{ports['http']}
jetstream {{
  store_dir: {_q(str(store))}
  max_memory_store: 64MB
  max_file_store: 2GB
}}
cluster {{
  name: citywatch
  listen: {LOOPBACK}:{ports['cluster']}
  authorization {{ user: route, password: {_q(route_password)} }}
  routes: {json.dumps(route_urls)}
}}
mqtt {{
  listen: {LOOPBACK}:{ports['mqtt']}
  # A QoS 1 message not acknowledged by a subscriber within this is sent again.
  ack_wait: "10s"
  stream_replicas: 3
}}
{users_block}"""


def _answers(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=0.5):
            return True
    except OSError:
        return False


def _jetstream_ready(http_port: int) -> bool:
    import urllib.request
    try:
        with urllib.request.urlopen(f"http://{LOOPBACK}:{http_port}/jsz", timeout=1) as r:
            body = json.loads(r.read())
    except (OSError, ValueError):
        return False
    meta = body.get("meta_cluster") or {}
    return bool(meta.get("leader"))


def _spawn(server: str, conf: Path, log: Path) -> int:
    with open(log, "ab") as out:
        proc = subprocess.Popen([server, "-c", str(conf)], stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    return proc.pid


def _log_tail(log: Path, lines: int = 15) -> str:
    try:
        return "\n".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def start(root: Path, nodes: int = 3, users: dict[str, dict[str, str]] | None = None,
          timeout: float = 60.0, attempts: int = 3) -> dict[str, Any]:
    """Start the cluster; a node that does not come up (a port taken meanwhile, a slow start on
    a loaded machine) makes a fresh try with new ports, up to ``attempts`` times."""
    for attempt in range(1, attempts + 1):
        try:
            return _start_once(root / f"try{attempt}" if attempt > 1 else root, nodes, users,
                               timeout, root)
        except _NodeDown as down:
            print(f"node {down.node} did not come up (try {attempt} of {attempts}); "
                  f"its log ends:\n{_log_tail(down.log)}", file=sys.stderr)
    raise SystemExit(f"the cluster did not come up in {attempts} tries; logs under {root}")


class _NodeDown(Exception):
    def __init__(self, node: str, log: Path) -> None:
        super().__init__(node)
        self.node, self.log = node, log


def _start_once(base: Path, nodes: int, users: dict[str, dict[str, str]] | None,
                timeout: float, root: Path) -> dict[str, Any]:
    base.mkdir(parents=True, exist_ok=True)
    root.mkdir(parents=True, exist_ok=True)
    server = find_server()
    route_password = secrets.token_hex(12)
    engine_password = secrets.token_hex(12)
    block = _users_block(engine_password, users or {})
    names = [f"n{i + 1}" for i in range(nodes)]
    taken: set[int] = set()
    ports = {n: {k: free_port(taken) for k in ("client", "cluster", "mqtt", "http")}
             for n in names}
    info: dict[str, Any] = {"root": str(root), "engine_password": engine_password, "nodes": {}}
    for n in names:
        store = base / n / "jetstream"
        store.mkdir(parents=True, exist_ok=True)
        conf = base / n / "nats.conf"
        conf.write_text(node_config(n, ports[n], [ports[m]["cluster"] for m in names if m != n],
                                    store, route_password, block), encoding="utf-8")
        conf.chmod(0o600)
        log = base / n / "nats.log"
        info["nodes"][n] = {**ports[n], "conf": str(conf), "log": str(log),
                            "pid": _spawn(server, conf, log)}
    deadline = time.monotonic() + timeout
    for n in names:
        while not (_answers(ports[n]["mqtt"]) and _jetstream_ready(ports[n]["http"])):
            if time.monotonic() > deadline:
                stop(root, info)
                raise _NodeDown(n, base / n / "nats.log")
            time.sleep(0.1)
    info["nats_urls"] = [f"nats://engine:{engine_password}@{LOOPBACK}:{ports[n]['client']}"
                         for n in names]
    info["mqtt_ports"] = [ports[n]["mqtt"] for n in names]
    (root / "cluster.json").write_text(json.dumps(info, indent=1), encoding="utf-8")
    (root / "cluster.json").chmod(0o600)
    return info


def _load(root: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((root / "cluster.json").read_text(encoding="utf-8"))
    return loaded


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (our child, killed, not yet reaped) counts as gone.
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().split(") ", 1)[1][:1] != "Z"
    except OSError:
        return False


def kill(root: Path, node: str, sig: int = signal.SIGKILL) -> None:
    info = _load(root)
    pid = int(info["nodes"][node]["pid"])
    if _alive(pid):
        os.kill(pid, sig)
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)


def restart(root: Path, node: str) -> None:
    info = _load(root)
    n = info["nodes"][node]
    n["pid"] = _spawn(find_server(), Path(n["conf"]), Path(n["log"]))
    (root / "cluster.json").write_text(json.dumps(info, indent=1), encoding="utf-8")
    deadline = time.monotonic() + 30
    while not _answers(int(n["mqtt"])):
        if time.monotonic() > deadline:
            raise SystemExit(f"node {node} did not come back")
        time.sleep(0.1)


def stop(root: Path, info: dict[str, Any] | None = None) -> None:
    info = info or _load(root)
    pids = [int(n["pid"]) for n in info["nodes"].values()]
    for pid in pids:
        if _alive(pid):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    for pid in pids:
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("command", choices=("start", "stop", "kill", "restart"))
    ap.add_argument("dir", type=Path)
    ap.add_argument("node", nargs="?")
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--users", type=Path, help="JSON: {devices: {id: secret}, teams: {...}}")
    a = ap.parse_args(argv)
    if a.command == "start":
        users = json.loads(a.users.read_text(encoding="utf-8")) if a.users else None
        info = start(a.dir, a.nodes, users)
        print(json.dumps({k: info[k] for k in ("nats_urls", "mqtt_ports")}))
    elif a.command == "stop":
        stop(a.dir)
    elif a.node is None:
        ap.error(f"{a.command} needs a node (n1, n2, ...)")
    elif a.command == "kill":
        kill(a.dir, a.node)
    else:
        restart(a.dir, a.node)
    return 0


if __name__ == "__main__":
    sys.exit(main())
