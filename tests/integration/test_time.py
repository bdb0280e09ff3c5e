"""Time on the real broker and database: the rules move when nothing arrives (silence, timed
clears), a backlog is judged in its own time, and devices or teams with wrong clocks neither
move other zones' time nor date alerts, orders and answers wrongly.

The service runs on a ``ShiftedClock`` (tests/fix_clock.py) and devices stamp their readings
with it, so minutes pass at once; the scheduled tick is pushed out of the way and the tests call
``Service.tick()`` themselves.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from alerts import store as alert_store
from citywatch.config import ClocksConfig, Config, load_config
from citywatch.metrics import Metrics
from citywatch.pipeline import Pipeline
from citywatch.service import (
    Endpoints,
    Service,
    build_alert_store,
    build_decoder,
    build_engine,
    build_placement,
)
from geo.load import load_zones
from sensing import store as sensing_store
from sensing.mqtt import Inbound
from tests.fix_broker import connect
from tests.fix_clock import ShiftedClock
from tests.fix_users import Client, login

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]

MIN = timedelta(minutes=1)
HOUR = timedelta(hours=1)
UNDERPASS = "up-01"  # gauged by wl-01 and wl-02; orange from 15 cm, at once from 16
OTHER_UNDERPASS = "up-02"  # gauged by wl-03 and wl-04
FALL_ZONE, IMPACT = "fz-01", [120.61510, 31.32454]  # cam-01 watches it; clears after 15 min
FLEET = ["wl-01", "wl-02", "wl-03", "wl-04", "wl-05", "wl-06"]


@pytest.fixture(scope="module")
def config() -> Config:
    cfg = load_config(REPO / "config.yaml", env={})
    # The tests call tick() themselves; the scheduled one would only blur what each one saw.
    return cfg.model_copy(update={"clocks": ClocksConfig(tick_every_s=3600)})


class Running:
    def __init__(self, config: Config, broker_url: str, db_url: str, clock: ShiftedClock
                 ) -> None:
        self.config, self.broker_url, self.db_url, self.clock = config, broker_url, db_url, clock
        self.client_id = f"citywatch-time-{uuid.uuid4().hex[:8]}"
        self.service: Service | None = None
        self.client: Client | None = None

    def start(self) -> Service:
        self.service = Service(self.config, Endpoints(self.broker_url, self.db_url), http_port=0,
                               client_id=self.client_id, clock=self.clock)
        self.service.start()
        assert self.service._link.connected.wait(10), "engine did not connect to the broker"
        return self.service

    @property
    def svc(self) -> Service:
        assert self.service is not None
        return self.service

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
        if self.service is not None:
            self.service.stop()
            self.service = None

    def get(self, path: str, **params: Any) -> Any:
        """GET as a logged-in viewer (logged in again when the service was started anew)."""
        if self.client is None or str(self.client.base_url).rstrip("/") != self.svc.url:
            if self.client is not None:
                self.client.close()
            self.client = login(self.svc.url, self.db_url, "viewer")
        return self.client.json_of(path, **params)

    def sql(self, query: str, *args: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.db_url) as conn:
            return conn.execute(query, args).fetchall()

    def risk(self, zone_id: str) -> dict[str, Any]:
        zones = self.get("/api/zones")["features"]
        return next(f["properties"]["risk"] for f in zones if f["id"] == zone_id)

    def alerts(self, zone_id: str, hazard: str) -> list[dict[str, Any]]:
        return [a for a in self.get("/api/alerts", zone_id=zone_id) if a["hazard"] == hazard]

    def stored(self, n: int) -> bool:
        return self.sql("SELECT count(*) FROM telemetry")[0][0] >= n


@pytest.fixture
def running(config: Config, broker_url: str, fresh_db_url: str,
            shifted_clock: ShiftedClock) -> Iterator[Running]:
    r = Running(config, broker_url, fresh_db_url, shifted_clock)
    r.start()
    yield r
    r.stop()


def wait_for(what: str, check: Callable[[], Any], timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}; last: {last!r}")


def publish(broker_url: str, items: list[tuple[str, dict[str, Any]]]) -> None:
    client = connect(broker_url)
    try:
        for topic, body in items:
            client.publish(topic, json.dumps(body), qos=1).wait_for_publish(10)
    finally:
        client.loop_stop()
        client.disconnect()


def depth(device_id: str, seq: int, ts: str, cm: float) -> tuple[str, dict[str, Any]]:
    return (f"city/water/{device_id}/telemetry",
            {"ts": ts, "seq": seq, "values": {"water_depth_cm": cm, "battery_v": 3.7}})


def parse(ts: str) -> datetime:
    return datetime.fromisoformat(ts.replace("Z", "+00:00"))


def near(a: datetime, b: datetime, within: timedelta = timedelta(seconds=5)) -> bool:
    return abs(a - b) <= within


def falling_object(clock: ShiftedClock, seq: int) -> tuple[str, dict[str, Any]]:
    return ("city/camera/cam-01/event",
            {"ts": clock.iso(), "seq": seq, "event_id": f"cam-01-{seq:06d}",
             "type": "falling_object", "confidence": 0.95, "impact": IMPACT})


# --- silence ---------------------------------------------------------------------------------


def test_a_silent_fleet_goes_silent_and_its_zones_unknown_then_recovers(
        running: Running, broker_url: str, shifted_clock: ShiftedClock) -> None:
    clock = shifted_clock
    publish(broker_url, [depth(d, 1, clock.iso(), 2.0) for d in FLEET])
    wait_for("the fleet's readings", lambda: running.stored(len(FLEET)))
    wait_for("up-01 known to be clear", lambda: running.risk(UNDERPASS) == {
        "waterlogging": "clear"})

    # A broker partition: nothing arrives for 20 minutes of the server's time.
    clock.advance(20 * MIN)
    assert running.svc.tick()
    assert running.risk(UNDERPASS) == {"waterlogging": "unknown"}
    assert running.risk(OTHER_UNDERPASS) == {"waterlogging": "unknown"}
    health = running.get("/api/health")
    assert set(FLEET) <= set(health["faulty_devices"])
    faults = running.alerts(UNDERPASS, "device_fault")
    assert [a["state"] for a in faults] == ["active"]
    assert "no telemetry for 15 min" in faults[0]["title"]
    # Stamped when the silence began (15 minutes after the last reading), not when it was seen.
    assert near(parse(faults[0]["raised"]), clock() - 5 * MIN, timedelta(seconds=40))

    publish(broker_url, [depth(d, 2, clock.iso(), 2.0) for d in FLEET])
    wait_for("up-01 clear again", lambda: running.risk(UNDERPASS) == {"waterlogging": "clear"})
    assert running.get("/api/health")["faulty_devices"] == []
    assert [a["state"] for a in running.alerts(UNDERPASS, "device_fault")] == ["resolved"]


def test_a_timed_clear_fires_with_no_further_readings(
        running: Running, broker_url: str, shifted_clock: ShiftedClock) -> None:
    clock = shifted_clock
    raised_at = clock()
    publish(broker_url, [falling_object(clock, 1)])
    alert = wait_for("a falling-object alert", lambda: running.alerts(FALL_ZONE,
                                                                       "falling_object"))[0]
    assert alert["state"] == "active"
    clock.advance(14 * MIN)
    assert running.svc.tick()
    assert running.alerts(FALL_ZONE, "falling_object")[0]["state"] == "active"
    clock.advance(2 * MIN)
    assert running.svc.tick()
    cleared = running.alerts(FALL_ZONE, "falling_object")[0]
    assert cleared["state"] == "resolved"
    assert near(parse(cleared["cleared"]), raised_at + 15 * MIN)


# --- device clocks ---------------------------------------------------------------------------


def test_a_device_300_s_ahead_moves_no_other_zones_time(
        running: Running, broker_url: str, shifted_clock: ShiftedClock) -> None:
    clock = shifted_clock
    publish(broker_url, [falling_object(clock, 1)])
    wait_for("a falling-object alert", lambda: running.alerts(FALL_ZONE, "falling_object"))
    clock.advance(11 * MIN)
    ahead = clock.iso(timedelta(seconds=300))
    # Its clock says 16 minutes after the detection: were that the fall zone's time too, the
    # fall-zone alert would clear (after 15 quiet minutes) four minutes early.
    publish(broker_url, [depth("wl-03", 1, ahead, 2.0),
                         *[depth(d, 1, clock.iso(), 2.0) for d in ("wl-05", "wl-06")]])
    wait_for("the readings stored", lambda: running.stored(3))
    assert running.svc.tick()
    assert running.alerts(FALL_ZONE, "falling_object")[0]["state"] == "active"
    # Stored as it was sent.
    assert running.sql("SELECT ts FROM telemetry WHERE device_id = 'wl-03'") == [(parse(ahead),)]


def test_devices_an_hour_ahead_and_behind_are_judged_on_the_servers_time(
        running: Running, broker_url: str, shifted_clock: ShiftedClock) -> None:
    clock = shifted_clock
    skew = {"wl-01": HOUR, "wl-03": -HOUR, "wl-02": timedelta(0), "wl-05": timedelta(0),
            "wl-06": timedelta(0)}
    sent: dict[str, list[str]] = {d: [] for d in skew}
    steps = 9  # 80 s of 2 cm: a slow clock is believed once its offset held for a minute
    for step in range(steps):
        if step:
            clock.advance(timedelta(seconds=10))
        batch = []
        for d, s in skew.items():
            ts = clock.iso(s)
            sent[d].append(ts)
            cm = 22.0 if step == steps - 1 and d in ("wl-01", "wl-03") else 2.0
            batch.append(depth(d, step + 1, ts, cm))
        publish(broker_url, batch + batch[:2])  # two of them redelivered
        n = (step + 1) * len(skew)
        wait_for(f"step {step} stored", lambda n=n: running.stored(n))
    now = clock()

    # Every message stored exactly once, with the device's own time stamp.
    for d, stamps in sent.items():
        rows = running.sql("SELECT ts FROM telemetry WHERE device_id = %s ORDER BY seq", d)
        assert [r[0] for r in rows] == [parse(t) for t in stamps], d

    for zone in (UNDERPASS, OTHER_UNDERPASS):
        alert = wait_for(f"an alert in {zone}", lambda z=zone: running.alerts(z, "waterlogging"))
        assert len(alert) == 1
        assert near(parse(alert[0]["raised"]), now), (zone, alert[0]["raised"], now)
        order = running.get(f"/api/work-orders/{alert[0]['work_order_id']}")
        assert near(parse(order["created"]), now)
        assert parse(order["respond_by"]) > now + 20 * MIN  # orange: half an hour to respond
        running.svc.check_deadlines()
        after = running.get(f"/api/work-orders/{order['id']}")
        assert after["escalation_level"] == order["escalation_level"]
        assert [h["to"] for h in after["history"]] == ["open"]

    corrected = running.get("/api/health")["clocks"]["corrected"]
    assert set(corrected) == {"wl-01", "wl-03"}
    assert abs(corrected["wl-01"]["offset_s"] - 3600) < 60
    assert abs(corrected["wl-03"]["offset_s"] + 3600) < 60
    metrics = httpx.get(running.svc.url + "/metrics", timeout=5).text
    assert "citywatch_devices_clock_corrected 2.0" in metrics

    # A restart resumes with the corrections: the slow clock is not judged by itself again for
    # a minute (its readings an hour old) while the offset is confirmed anew.
    running.stop()
    running.start()
    again = running.get("/api/health")["clocks"]["corrected"]
    assert set(again) == {"wl-01", "wl-03"}
    assert again["wl-03"]["offset_s"] == corrected["wl-03"]["offset_s"]


def test_a_team_answer_is_recorded_at_the_servers_time(
        running: Running, broker_url: str, shifted_clock: ShiftedClock) -> None:
    clock = shifted_clock
    clock.advance(3 * HOUR)  # the server's time, plainly not the system's
    publish(broker_url, [depth("wl-01", 1, clock.iso(), 22.0)])
    alert = wait_for("an alert", lambda: running.alerts(UNDERPASS, "waterlogging"))[0]
    order = running.get(f"/api/work-orders/{alert['work_order_id']}")
    publish(broker_url, [(f"city/dispatch/{order['team_id']}/ack",
                          {"work_order_id": order["id"], "status": "accepted",
                           "ts": "2001-01-01T00:00:00Z", "note": "on our way"})])
    history = wait_for("the answer in the history", lambda: [
        h for h in running.get(f"/api/work-orders/{order['id']}")["history"]
        if h["to"] == "accepted"])
    assert near(parse(history[0]["ts"]), clock())
    assert "on our way" in history[0]["reason"]
    assert "2001-01-01T00:00:00Z" in history[0]["reason"]  # kept, as what the team sent
    assert near(parse(running.get(f"/api/work-orders/{order['id']}")["updated"]), clock())


# --- backlog and database --------------------------------------------------------------------


def test_a_backlog_is_judged_in_its_own_time_without_spurious_silence(
        config: Config, broker_url: str, fresh_db_url: str, shifted_clock: ShiftedClock) -> None:
    clock = shifted_clock
    run = Running(config, broker_url, fresh_db_url, clock)
    gauges = FLEET[:4]
    run.start()
    stop = threading.Event()
    try:
        t0 = clock()
        publish(broker_url, [depth(d, 0, clock.iso(), 2.0) for d in gauges])
        wait_for("the first readings", lambda: run.stored(len(gauges)))
        run.stop()
        # The engine is away for 20 minutes; the broker keeps what the fleet sends meanwhile.
        # wl-01's underpass floods ten minutes in.
        held = []
        for k in range(1, 121):
            ts = (t0 + k * timedelta(seconds=10)).isoformat(timespec="milliseconds")
            for d in gauges:
                cm = (22.0 if d == "wl-01" and k >= 60 else 2.0) + k % 3 / 10  # not stuck
                held.append(depth(d, k, ts.replace("+00:00", "Z"), cm))
        publish(broker_url, held)
        clock.advance(20 * MIN)
        svc = run.service = Service(config, Endpoints(broker_url, fresh_db_url), http_port=0,
                                    client_id=run.client_id, clock=clock)
        ticks: list[bool] = []

        def keep_ticking() -> None:
            # As the scheduled job would, only far more often, from before the start on.
            while not stop.is_set():
                if hasattr(svc, "pipeline"):
                    ticks.append(svc.tick())
                stop.wait(0.005)

        ticker = threading.Thread(target=keep_ticking, daemon=True)
        ticker.start()
        svc.start()
        wait_for("the backlog drained", lambda: run.stored(len(gauges) + len(held)),
                 timeout=60)
        stop.set()
        ticker.join()
        # Ticks came while the backlog drained (and were refused then): how many fit in the
        # drain depends on how fast the engine is, so the count is not asserted.
        assert False in ticks
        assert run.sql("SELECT title FROM alerts WHERE hazard = 'device_fault'") == []
        assert run.get("/api/health")["faulty_devices"] == []
        alert = run.alerts(UNDERPASS, "waterlogging")
        assert len(alert) == 1
        # Raised when the water came (event time), not when the engine caught up.
        assert near(parse(alert[0]["raised"]), t0 + 10 * MIN)
        wait_for("a tick once caught up", svc.tick)
        assert run.get("/api/health")["faulty_devices"] == []
    finally:
        stop.set()
        run.stop()


def make_pipeline(config: Config, db_url: str, clock: ShiftedClock) -> Pipeline:
    """The service's pipeline without broker (as ``citywatch.funnel`` builds it)."""
    zones = load_zones(config.zones_path)
    placement = build_placement(config, zones)
    with psycopg.connect(db_url, autocommit=True) as conn:
        sensing_store.migrate(conn)
        alert_store.migrate(conn)
    engine = build_engine(config, zones, placement)
    alerts, workers = build_alert_store(config, zones)
    return Pipeline(conninfo=db_url, decoder=build_decoder(config), engine=engine,
                    state=engine.restore({}), placement=placement, alert_store=alerts,
                    ack=lambda _mids: None, dead_letter=lambda _r: None,
                    on_committed=lambda: None, metrics=Metrics(), workers=workers, clock=clock)


def test_no_tick_runs_while_a_backlog_drains(config: Config, fresh_db_url: str,
                                             shifted_clock: ShiftedClock) -> None:
    clock = shifted_clock
    allowance = timedelta(seconds=30)
    pipeline = make_pipeline(config, fresh_db_url, clock)
    try:
        assert not pipeline.tick(allowance)  # just started: a waiting backlog comes at once
        t0 = clock() - 20 * MIN
        backlog = [
            Inbound(*depth_message(d, k, t0 + k * timedelta(seconds=10)), mid, 1, clock())
            for mid, (k, d) in enumerate(((k, d) for k in range(121) for d in FLEET), start=1)]
        first, rest = backlog[:120], backlog[120:]  # the first three minutes, then the others
        pipeline.process(first)
        # Twenty minutes on the server's clock, three in the backlog's: a tick now would find
        # every gauge silent for a quarter of an hour, and the rest of the backlog revive them.
        assert not pipeline.tick(allowance)
        pipeline.process(rest)
        assert pipeline.tick(allowance)
        assert pipeline._engine.faulty_devices(pipeline.state) == {}
        with psycopg.connect(fresh_db_url) as conn:
            assert conn.execute("SELECT count(*) FROM alerts").fetchone() == (0,)
        clock.advance(20 * MIN)  # and then the fleet does fall silent
        assert pipeline.tick(allowance)
        assert set(pipeline._engine.faulty_devices(pipeline.state)) == set(FLEET)
    finally:
        pipeline.close()


def test_a_quiet_spell_moves_the_rules_no_further_than_it_lasted(
        config: Config, fresh_db_url: str, shifted_clock: ShiftedClock) -> None:
    """A fleet's upload stamped an hour back (buffered through an outage, say), then a minute
    of quiet: the devices spoke a minute ago, so none is silent; after 20 quiet minutes all are."""
    clock = shifted_clock
    allowance = timedelta(seconds=30)
    pipeline = make_pipeline(config, fresh_db_url, clock)
    try:
        t0 = clock() - HOUR
        upload = [
            Inbound(*depth_message(d, k, t0 + k * timedelta(seconds=10)), mid, 1, clock())
            for mid, (k, d) in enumerate(((k, d) for k in range(30) for d in FLEET), start=1)]
        pipeline.process(upload)
        clock.advance(MIN)
        assert pipeline.tick(allowance)
        assert pipeline._engine.faulty_devices(pipeline.state) == {}
        newest = t0 + 29 * timedelta(seconds=10)
        assert pipeline.state.clock is not None
        assert pipeline.state.clock <= newest + MIN + timedelta(seconds=1)  # not an hour on
        clock.advance(20 * MIN)
        assert pipeline.tick(allowance)
        assert set(pipeline._engine.faulty_devices(pipeline.state)) == set(FLEET)
    finally:
        pipeline.close()


def depth_message(device_id: str, seq: int, ts: datetime) -> tuple[str, bytes]:
    cm = 2.0 + seq % 3 / 10  # not stuck
    topic, body = depth(device_id, seq, ts.isoformat(timespec="milliseconds"), cm)
    return topic, json.dumps(body).encode()


def test_a_tick_the_database_refuses_is_retried_and_applied_once(
        running: Running, broker_url: str, shifted_clock: ShiftedClock) -> None:
    clock = shifted_clock
    publish(broker_url, [depth(d, 1, clock.iso(), 2.0) for d in FLEET])
    wait_for("the fleet's readings", lambda: running.stored(len(FLEET)))
    clock.advance(20 * MIN)
    # Cut the engine's database connections, as a failing server would.
    with contextlib.suppress(psycopg.Error):
        running.sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = "
                    "current_database() AND pid <> pg_backend_pid()")
    assert not running.svc.tick()
    assert running.get("/api/health")["faulty_devices"] == []  # the old state was kept
    assert running.sql("SELECT count(*) FROM alerts WHERE hazard = 'device_fault'") == [(0,)]
    assert running.svc.tick()
    faults = running.sql("SELECT zone_id FROM alerts WHERE hazard = 'device_fault'")
    assert faults and len(faults) == len(set(faults))
    assert running.svc.tick()
    assert running.sql("SELECT zone_id FROM alerts WHERE hazard = 'device_fault'") == faults
    orders = running.sql("SELECT count(*) FROM work_orders WHERE hazard = 'device_fault'")
    assert orders == [(len(faults),)]
    assert set(FLEET) <= set(running.get("/api/health")["faulty_devices"])
