"""Time faults: the whole fleet falls silent for 20 minutes (simulated), and a device's clock is
an hour ahead or an hour behind.

These cases need branch ``time`` (a wall-clock engine tick, an injectable service clock with an
immediate-tick hook, per-device clock handling). Until it is merged they are expected to fail
(``xfail(strict=True)``): once merged, remove ``NEEDS_TIME`` below, and adapt the two adapters
``service_with_clock`` and ``tick_now`` if that branch names its hooks differently.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest

from citywatch.config import Config
from citywatch.service import Endpoints, Service
from tests.fix_faults import (
    NEEDS_TIME_BRANCH,
    EngineProcess,
    FaultBroker,
    Fleet,
    Reading,
    flood_gauges,
    iso,
    storm,
    take_ledger,
    wait_settled,
)

pytestmark = [pytest.mark.integration, pytest.mark.faults]

NEEDS_TIME = pytest.mark.xfail(strict=True, reason=NEEDS_TIME_BRANCH)
GROUND = ("water", "rain", "traffic")  # the monitors whose silence leaves zones unwatched
NORMAL = {"water": {"water_depth_cm": 2.0}, "rain": {"rain_rate_mm_h": 0.0},
          "traffic": {"flow_veh_h": 600, "speed_kmh": 42.0, "occupancy_pct": 12.0}}


class FakeClock:
    """The service's clock, moved by the test."""

    def __init__(self, start: datetime) -> None:
        self._now = start
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            return self._now

    def advance(self, by: timedelta) -> None:
        with self._lock:
            self._now += by


def service_with_clock(config: Config, endpoints: Endpoints,
                       clock: Callable[[], datetime]) -> Service:
    """Adapter to branch time's injectable clock."""
    factory: Any = Service  # the keyword exists only once branch time is merged
    service: Service = factory(config, endpoints, http_port=0,
                               client_id=f"faults-{uuid.uuid4().hex[:8]}", clock=clock)
    return service


def tick_now(service: Service) -> None:
    """Adapter to branch time's immediate-tick hook: run the wall-clock tick now."""
    hook: Any = service
    hook.tick_now()


@pytest.fixture
def clocked_service(fault_broker: FaultBroker, fresh_db_url: str, fault_config: Config
                    ) -> Iterator[tuple[Service, FakeClock]]:
    clock = FakeClock(datetime.now(UTC))
    service = service_with_clock(fault_config, Endpoints(fault_broker.url, fresh_db_url), clock)
    service.start()
    yield service, clock
    service.stop()


def api(service: Service, path: str) -> Any:
    r = httpx.get(service.url + path, timeout=10)
    r.raise_for_status()
    return r.json()


def zone_risk(service: Service) -> dict[str, dict[str, Any]]:
    """What the console shows: GET /api/zones, per zone its risk per hazard."""
    return {f["id"]: f["properties"]["risk"] for f in api(service, "/api/zones")["features"]}


@NEEDS_TIME
def test_whole_fleet_silent_for_20_minutes(
        clocked_service: tuple[Service, FakeClock], fault_broker: FaultBroker,
        fresh_db_url: str, fault_config: Config) -> None:
    """Every ground monitor reports once, normal values; then nothing for 20 minutes of the
    service's clock. The devices are marked offline, every zone they watched is ``unknown``
    (not ``clear``), and no reading was lost or doubled on the way."""
    service, clock = clocked_service
    devices = [d for d in fault_config.devices if d.kind in GROUND]
    now = clock()
    readings = [Reading(d.id, 1, f"city/{d.kind}/{d.id}/telemetry", json.dumps(
        {"ts": iso(now), "seq": 1, "values": NORMAL[d.kind]}).encode()) for d in devices]
    fleet = Fleet(fault_broker.url, readings, rate=200)
    try:
        fleet.publish_all_now()
        wait_settled(fleet, fresh_db_url)
        watched = {z for z, r in zone_risk(service).items() if "waterlogging" in r}
        assert watched, "the gauges should watch the underpasses and low roads"
        assert {zone_risk(service)[z]["waterlogging"] for z in watched} == {"clear"}
        clock.advance(timedelta(minutes=20))
        tick_now(service)
        devs = {f["id"]: f["properties"] for f in api(service, "/api/devices")["features"]}
        silent = sorted(d.id for d in devices if not devs[d.id]["online"])
        risk = zone_risk(service)
        unknown = sorted(z for z in watched if risk[z]["waterlogging"] == "unknown")
        ledger = take_ledger("whole fleet silent 20 min (simulated)", fleet, fresh_db_url,
                             note=f"{len(silent)}/{len(devices)} devices offline, "
                                  f"{len(unknown)}/{len(watched)} watched zones unknown")
    finally:
        fleet.close()
    ledger.check()
    assert silent == sorted(d.id for d in devices)
    assert unknown == sorted(watched)


@NEEDS_TIME
@pytest.mark.parametrize("offset_h", [1, -1], ids=["an hour ahead", "an hour behind"])
def test_device_clock_off_by_an_hour(
        offset_h: int, fault_broker: FaultBroker, fresh_db_url: str, fault_config: Config,
        engine_factory: Callable[..., EngineProcess]) -> None:
    """wl-01's clock is an hour off; wl-03 (another underpass) keeps true time. Both report a
    flood, every message twice (a device resending after a lost PUBACK), and the engine is
    restarted half-way (the broker redelivers). Each reading is stored exactly once, neither is
    refused, wl-01's flood is judged on the server's timeline (its alert is raised now, not an
    hour off, and its order is not born overdue), and wl-03 is not made late or silent by its
    neighbour's clock."""
    zones = flood_gauges(fault_config)
    skewed, honest = zones["up-01"], zones["up-02"]
    engine = engine_factory(fault_broker.url, fresh_db_url)
    engine.start()
    # Live readings: 40 per gauge, half a second apart, up to now (as the devices see it).
    wall = datetime.now(UTC)
    off = storm([skewed], 40, step_s=0.5, end=wall, clock_offset=timedelta(hours=offset_h))
    true = storm([honest], 40, step_s=0.5, end=wall)
    readings = [r for pair in zip(off, true, strict=True) for r in pair for _ in range(2)]
    fleet = Fleet(fault_broker.url, readings, rate=40).start()
    try:
        fleet.wait_published(len(readings) // 2)
        engine.stop()
        engine.start()
        wait_settled(fleet, fresh_db_url)
        ledger = take_ledger(f"device clock {offset_h:+d} h", fleet, fresh_db_url)
    finally:
        fleet.close()
    ledger.check(incidents={"up-01": "waterlogging", "up-02": "waterlogging"})
    assert ledger.rejected == {}, ledger.render()
    with psycopg.connect(fresh_db_url) as conn:
        rows = conn.execute("SELECT a.zone_id, a.raised, w.respond_by FROM alerts a "
                            "JOIN work_orders w ON w.id = a.work_order_id").fetchall()
    for zone_id, raised, respond_by in rows:
        # The readings span 20 s up to `wall`: on the server's timeline every alert is raised
        # within minutes of it, whatever the device's clock says.
        assert abs(raised - wall) < timedelta(minutes=5), (zone_id, raised, wall)
        assert respond_by > wall, f"{zone_id}: the order was born overdue ({respond_by})"
    health = engine.health()
    assert health["faulty_devices"] == [], health["faulty_devices"]
    risk = engine.get("/api/zones")
    up02 = next(f for f in risk["features"] if f["id"] == "up-02")["properties"]["risk"]
    assert up02.get("waterlogging") != "unknown"

