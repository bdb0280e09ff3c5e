"""Devices added, changed and retired through the API while the service runs (issue 12), against
a real authenticating Mosquitto (files from the credentials registry, as ``citywatch run`` makes
them) and PostgreSQL.

Added: the answer gives the device's secret; with it the device connects and publishes, and its
reading is stored and goes through the rules (an alert in its underpass). Retired: the broker
refuses it at once (its files were rewritten and reread) and a message of it that still reaches
the engine is dead-lettered. Only an admin may change the registry; every change is audited with
the admin's name.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from citywatch import broker_access
from citywatch.config import Config, load_config
from citywatch.embedded import find_mosquitto, start_broker
from citywatch.service import Endpoints, Service
from sensing import credentials
from sensing.mqtt import Inbound
from tests.fix_broker import connect, require_service
from tests.fix_users import Logins

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
ENGINE = "citywatch-engine"
WAIT_S = 20.0
NEW_ID = "wl-new-01"
# Inside the Renmin Road underpass (north), beside gauges wl-01 and wl-02.
UNDERPASS = (120.615110, 31.332400)


@pytest.fixture(scope="module")
def config() -> Config:
    return load_config(REPO / "config.yaml", env={})


@pytest.fixture
def live(config: Config, fresh_db_url: str, tmp_path: Path,
         users_of: Callable[[str, str], Logins]) -> Iterator[tuple[Service, Logins, int]]:
    if find_mosquitto() is None:
        require_service("mosquitto is not installed (apt-get install mosquitto)")
    broker_dir = tmp_path / "broker"
    with psycopg.connect(fresh_db_url, autocommit=True) as conn:
        credentials.migrate(conn)
        secret = credentials.issue(conn, ENGINE, "service", datetime.now(UTC))
        broker_access.write_broker_files(conn, config, broker_dir)
    with start_broker(broker_dir, prefer="mosquitto", fallback=False) as broker:
        url = f"mqtt://{ENGINE}:{secret}@127.0.0.1:{broker.port}"
        service = Service(config, Endpoints(url, fresh_db_url, broker_dir=broker_dir),
                          http_port=0, client_id=ENGINE)
        service.start()
        try:
            assert service._link.connected.wait(WAIT_S)
            yield service, users_of(service.url, fresh_db_url), broker.port
        finally:
            service.stop()


def reading(seq: int, depth: float) -> bytes:
    return json.dumps({"ts": datetime.now(UTC).isoformat().replace("+00:00", "Z"), "seq": seq,
                       "values": {"water_depth_cm": depth}}).encode()


def wait_for(what: str, probe: Callable[[], Any]) -> Any:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        got = probe()
        if got:
            return got
        time.sleep(0.1)
    pytest.fail(f"{what} within {WAIT_S:g} s")


def rows(db: str, query: str, *args: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(db) as conn:
        return conn.execute(query, args).fetchall()


def test_a_device_added_through_the_api_publishes_and_is_ruled_then_retired(
        live: tuple[Service, Logins, int], fresh_db_url: str) -> None:
    service, users, port = live
    admin = users["admin"]
    r = admin.post("/api/registry/devices", json={
        "id": NEW_ID, "kind": "water", "position": list(UNDERPASS), "name": "new gauge"})
    assert r.status_code == 201, r.text
    added = r.json()
    secret = added.pop("secret")
    assert added["zone_ids"] and "source" in added and added["source"] == "api"

    # The device connects as itself with the secret it was given, and publishes.
    device = connect(f"mqtt://{NEW_ID}:{secret}@127.0.0.1:{port}", NEW_ID)
    try:
        for seq in (1, 2, 3):
            device.publish(f"city/water/{NEW_ID}/telemetry", reading(seq, 40.0),
                           qos=1).wait_for_publish(WAIT_S)
    finally:
        device.disconnect()
        device.loop_stop()
    wait_for("the new device's readings stored", lambda: len(rows(
        fresh_db_url, "SELECT 1 FROM telemetry WHERE device_id = %s", NEW_ID)) == 3)
    alerts = wait_for("an alert raised on its readings", lambda: [
        a for a in admin.json_of("/api/alerts", hazard="waterlogging")
        if a["zone_id"] in added["zone_ids"]])
    evidence = admin.json_of(f"/api/alerts/{alerts[0]['id']}")["evidence"]
    assert any(e.get("device_id") == NEW_ID for e in evidence)
    listed = admin.json_of("/api/devices")["features"]
    assert any(f["id"] == NEW_ID for f in listed)

    # Retired: the broker refuses it, and a message of it that still arrives is dead-lettered.
    r = admin.delete(f"/api/registry/devices/{NEW_ID}")
    assert r.status_code == 200, r.text
    assert r.json()["retired"]
    wait_for("the broker to refuse the retired device", lambda: _refused(port, secret))
    before = service.health()["rejected_by_reason"].get("unknown_device", 0)
    service.pipeline.process([Inbound(f"city/water/{NEW_ID}/telemetry", reading(4, 41.0), 0, 0,
                                      datetime.now(UTC))])
    assert service.health()["rejected_by_reason"]["unknown_device"] == before + 1
    assert len(rows(fresh_db_url, "SELECT 1 FROM telemetry WHERE device_id = %s", NEW_ID)) == 3
    assert not any(f["id"] == NEW_ID for f in admin.json_of("/api/devices")["features"])
    gone = admin.json_of(f"/api/registry/devices/{NEW_ID}")
    assert gone["retired"] and [h["action"] for h in gone["history"]] == ["add", "retire"]
    assert {h["actor"] for h in gone["history"]} == {admin.user}


def _refused(port: int, secret: str) -> bool:
    try:
        connect(f"mqtt://{NEW_ID}:{secret}@127.0.0.1:{port}", NEW_ID, timeout=5).disconnect()
    except ConnectionError:
        return True
    return False


def test_only_admins_change_the_registry_and_bad_bodies_say_what_was_expected(
        live: tuple[Service, Logins, int]) -> None:
    _service, users, _port = live
    body = {"id": "tf-new", "kind": "traffic", "position": [120.6159, 31.3103]}
    for role in ("viewer", "operator", "dispatcher"):
        r = users[role].post("/api/registry/devices", json=body)
        assert r.status_code == 403, (role, r.text)
        assert "admins manage devices" in r.json()["detail"]
    assert users["operator"].delete("/api/registry/devices/wl-01").status_code == 403
    assert users["viewer"].json_of("/api/registry/devices", limit=5)["devices"]

    admin = users["admin"]
    bad = [({**body, "position": [200, 31]}, "position"),
           ({**body, "kind": "submarine"}, "kind"),
           ({**body, "id": "no spaces"}, "id"),
           ({**body, "colour": "red"}, "colour")]
    for payload, key in bad:
        r = admin.post("/api/registry/devices", json=payload)
        assert r.status_code == 422, (key, r.text)
        detail = r.json()["detail"]
        assert any(key in map(str, d["loc"]) for d in detail), (key, detail)
        assert all(d["msg"] for d in detail)
    submarine = admin.post("/api/registry/devices", json={**body, "kind": "submarine"})
    assert "'camera', 'grid', 'rain', 'traffic' or 'water'" in submarine.json()["detail"][0]["msg"]
    assert admin.post("/api/registry/devices", json={**body, "id": "wl-01"}).status_code == 409
    assert admin.post("/api/registry/devices", json={**body, "id": "drainage-1"}
                      ).status_code == 409
    assert admin.patch("/api/registry/devices/nobody", json={"name": "x"}).status_code == 404


def test_a_change_moves_a_device_and_the_registry_pages(
        live: tuple[Service, Logins, int], config: Config) -> None:
    service, users, _port = live
    admin = users["admin"]
    moved = admin.patch("/api/registry/devices/wl-16", json={"position": list(UNDERPASS)})
    assert moved.status_code == 200, moved.text
    underpass_zones = admin.json_of("/api/registry/devices/wl-01")["zone_ids"]
    assert moved.json()["zone_ids"] == underpass_zones
    assert service._engine.registry["wl-16"].zone_ids == tuple(underpass_zones)
    history = admin.json_of("/api/registry/devices/wl-16")["history"]
    assert history[-1]["action"] == "change" and history[-1]["actor"] == admin.user

    seen: list[str] = []
    after = None
    while True:
        page = admin.json_of("/api/registry/devices", limit=25,
                             **({"after": after} if after else {}))
        seen += [d["id"] for d in page["devices"]]
        after = page["next"]
        if after is None:
            break
    assert seen == sorted(d.id for d in config.devices)
    water = admin.json_of("/api/registry/devices", kind="water", limit=100)["devices"]
    assert len(water) == 16 and {d["kind"] for d in water} == {"water"}


def test_the_next_start_begins_with_the_changes(config: Config, fresh_db_url: str,
                                               live: tuple[Service, Logins, int]) -> None:
    service, users, _port = live
    admin = users["admin"]
    assert admin.post("/api/registry/devices", json={
        "id": "rg-new", "kind": "rain", "position": [120.60, 31.30]}).status_code == 201
    assert admin.delete("/api/registry/devices/rg-08").status_code == 200
    again = Service(config, Endpoints(service.endpoints.broker_url, fresh_db_url),
                    http_port=0, client_id="citywatch-engine-restart")
    kinds = {d.id for d in _registry(again)}
    assert "rg-new" in kinds and "rg-08" not in kinds


def _registry(service: Service) -> Any:
    # What start() would run with: the configuration and the stored overlay.
    from citywatch.device_admin import merge
    from sensing import device_registry

    with psycopg.connect(service.endpoints.database_url) as conn:
        return merge(service.config.devices, device_registry.overlay(conn))
