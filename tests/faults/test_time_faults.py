"""Time faults: the whole fleet falls silent for 20 minutes (simulated), and a device's clock is
an hour ahead or an hour behind.

The engine runs in-process with a clock the test moves (``Service(clock=...)``, ``tick()``).
The hour-behind case is an expected failure: the clock offset the engine learns for a slow
device does not survive an engine restart (RELIABILITY.md, holes).
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from citywatch.config import Config
from citywatch.service import Endpoints, Service
from tests.fix_faults import (
    FaultBroker,
    Fleet,
    Reading,
    flood_gauges,
    iso,
    stored_at_least,
    take_ledger,
    wait_for,
    wait_settled,
)
from tests.fix_users import login

pytestmark = [pytest.mark.integration, pytest.mark.faults]

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
                       clock: Callable[[], datetime], client_id: str | None = None) -> Service:
    return Service(config, endpoints, http_port=0,
                   client_id=client_id or f"faults-{uuid.uuid4().hex[:8]}", clock=clock)


def tick_now(service: Service) -> None:
    """Run the rules' wall-clock tick now (``tick()`` is False while messages are in flight)."""
    wait_for("the engine's tick to run", service.tick, timeout=30)


@pytest.fixture
def clocked_service(fault_broker: FaultBroker, fresh_db_url: str, fault_config: Config
                    ) -> Iterator[tuple[Service, FakeClock]]:
    clock = FakeClock(datetime.now(UTC))
    service = service_with_clock(fault_config, Endpoints(fault_broker.url, fresh_db_url), clock)
    service.start()
    yield service, clock
    service.stop()


def api(service: Service, db_url: str, path: str) -> Any:
    """GET ``path`` as a logged-in viewer (every route but health needs a login)."""
    with login(service.url, db_url, "viewer") as viewer:
        return viewer.json_of(path)


def zone_risk(service: Service, db_url: str) -> dict[str, dict[str, Any]]:
    """What the console shows: GET /api/zones, per zone its risk per hazard."""
    zones = api(service, db_url, "/api/zones")["features"]
    return {f["id"]: f["properties"]["risk"] for f in zones}


def test_whole_fleet_silent_for_20_minutes(
        clocked_service: tuple[Service, FakeClock], fault_broker: FaultBroker,
        fresh_db_url: str, fault_config: Config) -> None:
    """Every ground monitor reports once, normal values; then nothing for 20 minutes of the
    service's clock. Every device is judged silent (health's ``faulty_devices``), every zone
    they watched is ``unknown`` (not ``clear``), at most one maintenance alert per zone, and no
    reading was lost or doubled on the way."""
    service, clock = clocked_service
    devices = [d for d in fault_config.devices if d.kind in GROUND]
    now = clock()
    readings = [Reading(d.id, 1, f"city/{d.kind}/{d.id}/telemetry", json.dumps(
        {"ts": iso(now), "seq": 1, "values": NORMAL[d.kind]}).encode()) for d in devices]
    fleet = Fleet(fault_broker.url, readings, rate=200)
    try:
        fleet.publish_all_now()
        wait_settled(fleet, fresh_db_url)
        watched = {z for z, r in zone_risk(service, fresh_db_url).items() if "waterlogging" in r}
        assert watched, "the gauges should watch the underpasses and low roads"
        wait_for("the watched zones known to be clear", lambda: {
            zone_risk(service, fresh_db_url)[z]["waterlogging"] for z in watched} == {"clear"})
        clock.advance(timedelta(minutes=20))
        tick_now(service)
        faulty = set(api(service, fresh_db_url, "/api/health")["faulty_devices"])
        silent = sorted(d.id for d in devices if d.id in faulty)
        risk = zone_risk(service, fresh_db_url)
        unknown = sorted(z for z in watched if risk[z]["waterlogging"] == "unknown")
        ledger = take_ledger("whole fleet silent 20 min (simulated)", fleet, fresh_db_url,
                             note=f"{len(silent)}/{len(devices)} devices judged silent, "
                                  f"{len(unknown)}/{len(watched)} watched zones unknown")
    finally:
        fleet.close()
    ledger.check()
    assert silent == sorted(d.id for d in devices)
    assert unknown == sorted(watched)


def depth_reading(device_id: str, seq: int, ts: datetime, cm: float) -> Reading:
    body = {"ts": iso(ts), "seq": seq, "values": {"water_depth_cm": cm, "battery_v": 3.6}}
    return Reading(device_id, seq, f"city/water/{device_id}/telemetry",
                   json.dumps(body).encode())


# Found by this case (RELIABILITY.md, holes): a slow clock is corrected only once its offset has
# held for a minute; the readings of that minute are judged on the device's clock, and the jump of
# an hour when the correction starts looks to device health like a value stuck for an hour.
@pytest.mark.parametrize("offset_h", [pytest.param(1, id="an hour ahead"),
                                      pytest.param(-1, id="an hour behind")])
def test_device_clock_off_by_an_hour(
        offset_h: int, fault_broker: FaultBroker, fresh_db_url: str,
        fault_config: Config) -> None:
    """wl-01's clock is an hour off; wl-03 (another underpass) keeps true time. Both report every
    10 s of the server's clock: two minutes of dry road, then a flood; every message twice (a
    device resending after a lost PUBACK), and the engine restarted as the water rises (the
    broker redelivers). Each reading is stored exactly once, none is refused, wl-01's flood is
    judged on the server's timeline (its alert raised when the water rose, not an hour off; its
    order not born overdue), and neither device is taken for faulty or silent."""
    zones = flood_gauges(fault_config)
    skewed, honest = zones["up-01"], zones["up-02"]
    clock = FakeClock(datetime.now(UTC))
    start = clock()
    step_s, steps, dry = 10, 24, 12
    readings = []
    for i in range(steps):
        cm = 2.0 if i < dry else 2.0 + 4.0 * (i - dry + 1)  # red (25 cm) from step 18
        ts = start + timedelta(seconds=step_s * i)
        for r in (depth_reading(skewed, i, ts + timedelta(hours=offset_h), cm),
                  depth_reading(honest, i, ts, cm)):
            readings += [r, r]
    endpoints = Endpoints(fault_broker.url, fresh_db_url)
    client_id = f"faults-{uuid.uuid4().hex[:8]}"

    def start_service() -> Service:
        svc = service_with_clock(fault_config, endpoints, clock, client_id)
        svc.start()
        return svc

    service = start_service()
    fleet = Fleet(fault_broker.url, readings, rate=500)
    try:
        for i in range(steps):
            if i:
                clock.advance(timedelta(seconds=step_s))
            if i == dry + 3:  # the water is rising: restart the engine
                service.stop()
                service = start_service()
            fleet.start(until=4 * (i + 1))
            fleet.wait_done(30)
            wait_for(f"step {i} stored", stored_at_least(fresh_db_url, 2 * (i + 1)), timeout=30)
        wait_settled(fleet, fresh_db_url)
        ledger = take_ledger(f"device clock {offset_h:+d} h", fleet, fresh_db_url,
                             note="published counts each message twice (resent)")
        health = api(service, fresh_db_url, "/api/health")
        risk = zone_risk(service, fresh_db_url)
    finally:
        fleet.close()
        service.stop()
    ledger.check(incidents={"up-01": "waterlogging", "up-02": "waterlogging"})
    assert ledger.rejected == {}, ledger.render()
    assert health["faulty_devices"] == [], health["faulty_devices"]
    assert risk["up-02"].get("waterlogging") != "unknown"
    # On the server's clock (stamps carry milliseconds: a second's slack).
    flood = (start + timedelta(seconds=step_s * dry - 1), clock() + timedelta(seconds=1))
    with psycopg.connect(fresh_db_url) as conn:
        rows = conn.execute("SELECT a.zone_id, a.raised, w.respond_by FROM alerts a "
                            "JOIN work_orders w ON w.id = a.work_order_id").fetchall()
    for zone_id, raised, respond_by in rows:
        assert flood[0] <= raised <= flood[1], (zone_id, raised, flood)
        assert respond_by > clock(), f"{zone_id}: the order was born overdue ({respond_by})"
