"""City-scale registry (issue 12): how long a city's configuration, zones and devices take to load.

Run from the repository root: ``python -m bench.bench_registry [--repeat N] [--db URL]``.

Two configurations in the same run: the case-study district (``config.yaml``: 89 devices, its
zones) as the baseline, and the synthetic city of ``scripts/make_city.py`` (10,000 zones, 100,000
devices; made in ``var/city`` when missing). Each stage of a start is timed on its own, as the
service runs it (``citywatch.service``): the configuration (YAML and the devices file, validated),
the zones file (read and validated), the spatial index (STRtree), placement of every device in its
zones, the rule engine with its device registry, the decoder, the registry written to PostgreSQL
(a scratch database on ``--db``, first into an empty table, then again unchanged as at a
restart; skipped when none answers), the broker's password and ACL files as a change through the
API rewrites them with every device holding credentials (``write_broker_files``, from the
credentials table) and the broker's password and ACL files
for every device. The best of ``--repeat`` runs is printed per stage, with the city/district ratio,
and the load average (the machine is shared).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from alerts.device_api import NewDevice
from citywatch import broker_access
from citywatch.config import Config, load_config
from citywatch.embedded import start_broker
from citywatch.service import Endpoints, Service, build_decoder, build_engine, build_placement
from geo.index import ZoneIndex
from geo.load import load_zones
from sensing import credentials
from sensing import store as sensing_store
from sensing.access import Member, broker_files
from sensing.credentials import hash_secret

REPO = Path(__file__).resolve().parents[1]
CITY = REPO / "var" / "city" / "city.yaml"


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def stages(config_path: Path, db: str | None) -> dict[str, float]:
    out: dict[str, float] = {}
    out["config (YAML + devices, validated)"], cfg = timed(lambda: load_config(config_path))
    assert isinstance(cfg, Config)
    out["zones file (read + validated)"], zones = timed(lambda: load_zones(cfg.zones_path))
    out["spatial index (STRtree)"], _ = timed(lambda: ZoneIndex(zones))
    out["index + placement of every device"], placement = timed(
        lambda: build_placement(cfg, zones))
    out["rule engine with its registry"], _ = timed(lambda: build_engine(cfg, zones, placement))
    out["decoder"], _ = timed(lambda: build_decoder(cfg))
    rewrite = 0.0
    if db is not None:
        specs = [sensing_store.DeviceSpec(d.id, d.kind, d.position, placement.device_zones(d.id))
                 for d in cfg.devices]
        with psycopg.connect(db, autocommit=True) as conn:
            sensing_store.migrate(conn, prefer_timescale=False)
            conn.execute("TRUNCATE devices")
            out["registry to PostgreSQL (first start)"], _ = timed(
                lambda: sensing_store.upsert_devices(conn, specs))
            out["registry to PostgreSQL (restart)"], _ = timed(
                lambda: sensing_store.upsert_devices(conn, specs))
        with psycopg.connect(db, autocommit=True) as conn:
            rewrite = _rewrite(conn, cfg)
    hashed = hash_secret("bench")  # hashing is per issue, not per start: one for all
    members = [Member(d.id, "device", hashed) for d in cfg.devices]
    kinds = {d.id: d.kind for d in cfg.devices}
    out["broker passwd + acl text"], _ = timed(lambda: broker_files(members, kinds))
    out["total"] = sum(out.values())
    if db is not None:  # not part of a start: what one change through the API costs
        out["broker files rewritten after an API change"] = rewrite
    out["devices"] = len(cfg.devices)
    out["zones"] = len(zones)
    return out


def _rewrite(conn: psycopg.Connection[Any], cfg: Config) -> float:
    """What the running service does after an API change: the password and ACL files again,
    from the credentials table, with every device holding credentials."""
    credentials.migrate(conn)
    conn.execute("TRUNCATE mqtt_credentials")
    hashed = hash_secret("bench")
    with conn.cursor().copy("COPY mqtt_credentials (id, kind, secret_hash, rotated) "
                            "FROM STDIN") as copy:
        for d in cfg.devices:
            copy.write_row((d.id, "device", hashed, "2026-12-05T00:00:00Z"))
    kinds = {d.id: d.kind for d in cfg.devices}
    with tempfile.TemporaryDirectory(prefix="bench-registry-") as tmp:
        took, _ = timed(lambda: broker_access.write_broker_files(conn, cfg, Path(tmp), kinds))
    return took


def service_start(config_path: Path, db: str) -> dict[str, float]:
    """``Service.start()`` as ``citywatch serve`` runs it (a scratch database, our own broker),
    then one device added and retired through the running registry (what the API calls)."""
    cfg = load_config(config_path, env={})
    out: dict[str, float] = {}
    with (tempfile.TemporaryDirectory(prefix="bench-registry-") as tmp,
          start_broker(Path(tmp) / "broker", prefer="mosquitto", fallback=False,
                       anonymous=True) as broker):
        service = Service(cfg, Endpoints(broker.url, db), http_port=0,
                          client_id=f"bench-{uuid.uuid4().hex[:6]}")
        out["Service.start() (first start, empty database)"], _ = timed(service.start)
        try:
            new = NewDevice(id="bench-new", kind="water", position=cfg.devices[0].position)
            out["add one device at run time"], _ = timed(
                lambda: service.devices.add(new, "bench"))
            out["retire it"], _ = timed(lambda: service.devices.retire("bench-new", "bench"))
        finally:
            service.stop()
    return out


def scratch_db(server: str) -> tuple[str, Callable[[], None]] | None:
    name = f"bench_registry_{uuid.uuid4().hex[:8]}"
    try:
        with psycopg.connect(server, autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error as exc:
        print(f"no database ({exc}); skipping the PostgreSQL stage", file=sys.stderr)
        return None
    url = server.rsplit("/", 1)[0] + f"/{name}"

    def drop() -> None:
        with psycopg.connect(server, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return url, drop


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--city", type=Path, default=CITY)
    p.add_argument("--db", default=os.environ.get(
        "CITYWATCH_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres"))
    p.add_argument("--no-db", action="store_true")
    p.add_argument("--service", action="store_true",
                   help="also start the whole service on each (a broker and a scratch database) "
                   "and add and retire a device through its running registry")
    args = p.parse_args()
    if not args.city.exists():
        subprocess.run([sys.executable, str(REPO / "scripts" / "make_city.py"), "--out",
                        str(args.city.parent)], check=True)
    made = None if args.no_db else scratch_db(args.db)
    best: dict[str, dict[str, float]] = {}
    try:
        for _ in range(args.repeat):
            for label, path in (("district", REPO / "config.yaml"), ("city", args.city)):
                got = stages(path, made[0] if made else None)
                mine = best.setdefault(label, got)
                for k, v in got.items():
                    mine[k] = min(mine[k], v)
    finally:
        if made is not None:
            made[1]()
    starts: dict[str, dict[str, float]] = {}
    if args.service and not args.no_db:
        for label, path in (("district", REPO / "config.yaml"), ("city", args.city)):
            made_here = scratch_db(args.db)
            if made_here is None:
                break
            try:
                starts[label] = service_start(path, made_here[0])
            finally:
                made_here[1]()
    d, c = best["district"], best["city"]
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else []
    print(f"bench_registry: best of {args.repeat}; {os.cpu_count()} cores; "
          f"load average {' '.join(load)}")
    print(f"district: {int(d['devices'])} devices, {int(d['zones'])} zones; "
          f"city: {int(c['devices'])} devices, {int(c['zones'])} zones "
          f"({c['devices'] / d['devices']:.0f}x devices, {c['zones'] / d['zones']:.0f}x zones)")
    print(f"{'stage':40} {'district s':>11} {'city s':>9} {'ratio':>7}")
    for k in d:
        if k in ("devices", "zones"):
            continue
        print(f"{k:40} {d[k]:11.3f} {c[k]:9.3f} {c[k] / d[k] if d[k] else float('nan'):7.0f}")
    if starts:
        print("the whole service (--service, once each):")
        sd, sc = starts["district"], starts["city"]
        for k in sd:
            print(f"{k:48} {sd[k]:9.3f} {sc[k]:9.3f} {sc[k] / sd[k]:7.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
