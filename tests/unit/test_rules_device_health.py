"""Device health through the engine: faults hold readings back from the hazards, raise one
maintenance alert per zone, and make a zone's risk unknown; table-driven per fault."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest
from shapely.geometry import box

from geo.zones import Zone
from rules.base import DEVICE_FAULT, AlertChange, DeviceSite, Observation
from rules.engine import Engine, EngineState
from rules.levels import Level
from rules.params import DepthThresholds, DeviceHealthParams, RulesParams, WaterloggingParams

T0 = datetime(2026, 7, 15, 8, 0, tzinfo=UTC)
BLUE, YELLOW = Level.BLUE, Level.YELLOW

ZONES = {z.id: z for z in (
    Zone("U1", "Twin-gauge underpass", "underpass", box(120.600, 31.300, 120.602, 31.302), "C1"),
    Zone("U2", "One-gauge underpass", "underpass", box(120.610, 31.300, 120.612, 31.302), "C1"),
    Zone("C1", "Grid cell 1", "grid_cell", box(120.59, 31.29, 120.63, 31.31)),
)}
SITES = [
    DeviceSite("w1", "water", (120.6005, 31.301), ("C1", "U1")),
    DeviceSite("w2", "water", (120.6015, 31.301), ("C1", "U1")),
    DeviceSite("w3", "water", (120.611, 31.301), ("C1", "U2")),
    DeviceSite("r1", "rain", (120.605, 31.305), ("C1",)),
    DeviceSite("r2", "rain", (120.615, 31.305), ("C1",)),
]
POS = {s.device_id: s for s in SITES}
PARAMS = RulesParams(
    waterlogging=WaterloggingParams(
        thresholds={"underpass": DepthThresholds(blue_cm=5, yellow_cm=10, orange_cm=15,
                                                 red_cm=25)}),
    device_health=DeviceHealthParams(enabled=True, silent_after_s=900, stuck_after_s=600,
                                     drift_confirm_s=900, recover_after_s=900,
                                     dry_min_observed_s=1800, battery_low_v=3.5),
)

Reading = tuple[float, str, dict[str, float]]  # (minute, device, values)


def obs(minute: float, device: str, values: dict[str, float]) -> Observation:
    site = POS[device]
    return Observation(device, site.kind, T0 + timedelta(minutes=minute),
                       int(minute * 60), values, site.position, site.zone_ids)


def every(device: str, key: str, value: float | None, start: float, end: float,
          step: float = 1 / 6, rise: float = 0.0) -> list[Reading]:
    """Readings of ``device`` every 10 s from ``start`` to ``end`` minutes (value + rise/min)."""
    out: list[Reading] = []
    m = start
    while m < end:
        out.append((m, device, {} if value is None else {key: round(value + rise * (m - start),
                                                                    1)}))
        m = round(m + step, 6)
    return out


def run(readings: Sequence[Reading], until_min: float | None = None
        ) -> tuple[Engine, EngineState, list[AlertChange]]:
    engine = Engine(PARAMS, ZONES, SITES)
    items = sorted((obs(*r) for r in readings), key=lambda o: (o.ts, o.device_id))
    state, changes = engine.evaluate_many(EngineState(), items)
    if until_min is not None:
        state, more = engine.tick(state, T0 + timedelta(minutes=until_min))
        changes += more
    return engine, state, changes


def kinds(changes: list[AlertChange], hazard: str) -> list[tuple[str, Level | None]]:
    return [(c.zone_id, c.level) for c in changes if c.hazard == hazard]


DRY = every("r1", "rain_rate_mm_h", 0.0, 0, 80) + every("r2", "rain_rate_mm_h", 0.0, 0, 80)
# Rising a little: a real gauge's value is never the same for ten minutes (that is "stuck").
WET = [*every("r1", "rain_rate_mm_h", 60.0, 0, 40, rise=0.1),
       *every("r2", "rain_rate_mm_h", 61.0, 0, 40, rise=0.1)]


@pytest.mark.parametrize(("readings", "faulty", "maintenance", "hazard"), [
    pytest.param([(0, "w3", {"water_depth_cm": 0.0}), (1, "w3", {"water_depth_cm": 420.0})],
                 {"w3": "out_of_range"}, [("U2", BLUE)], [], id="out-of-range"),
    pytest.param([(0, "w3", {"water_depth_cm": 1.0}), (0.2, "w3", {"water_depth_cm": 140.0}),
                  (0.4, "w3", {"water_depth_cm": 1.1}), (0.6, "w3", {"water_depth_cm": 155.0})],
                 {"w3": "spike"}, [("U2", BLUE)], [], id="two-spikes-in-an-hour"),
    pytest.param([(0, "w3", {"water_depth_cm": 1.0}), (0.2, "w3", {"water_depth_cm": 140.0})],
                 {}, [], [], id="one-spike-dropped-not-a-fault"),
    pytest.param(every("w3", "water_depth_cm", 12.3, 0, 12), {"w3": "stuck"}, [("U2", BLUE)],
                 [("U2", YELLOW)], id="stuck-non-zero"),
    pytest.param(every("w3", "water_depth_cm", 0.0, 0, 30), {}, [], [], id="dry-zero-not-stuck"),
    pytest.param(DRY + every("w3", "water_depth_cm", 0.0, 0, 30)
                 + every("w3", "water_depth_cm", 0.5, 30, 80, rise=0.2),
                 {"w3": "drift"}, [("U2", BLUE)], [], id="water-in-dry-weather-never-alerts"),
    pytest.param([*WET, *every("w1", "water_depth_cm", 0.0, 0, 40),
                  *every("w2", "water_depth_cm", 12.0, 0, 40, rise=0.05)],
                 {"w1": "drift"}, [("U1", BLUE)], [("U1", YELLOW)],
                 id="reads-dry-while-its-neighbour-floods-in-heavy-rain"),
    pytest.param([*every("w3", "water_depth_cm", 2.0, 0, 5),
                  (5, "w3", {"water_depth_cm": 2.0, "battery_v": 3.4})],
                 {"w3": "low_battery"}, [("U2", BLUE)], [], id="low-battery-maintenance-only"),
])
def test_faults(readings: list[Reading], faulty: dict[str, str],
                maintenance: list[tuple[str, Level]], hazard: list[tuple[str, Level]]) -> None:
    engine, state, changes = run(readings)
    assert {d: h.fault for d, h in engine.faulty_devices(state).items()} == faulty
    assert kinds(changes, DEVICE_FAULT) == maintenance
    assert kinds(changes, "waterlogging") == hazard
    for c in changes:
        if c.hazard == DEVICE_FAULT:
            named = {e["device_id"]: e["fault"] for e in c.evidence}
            assert named == faulty  # the evidence names the device and its fault


def test_low_battery_readings_still_drive_hazards() -> None:
    _, _, changes = run([(0, "w3", {"water_depth_cm": 12.0, "battery_v": 3.4})])
    assert kinds(changes, "waterlogging") == [("U2", YELLOW)]


def test_silence_needs_a_tick_and_makes_the_zone_unknown() -> None:
    engine, state, _ = run(every("w3", "water_depth_cm", 0.0, 0, 1))
    assert engine.zone_risk(state)["U2"] == {"waterlogging": "clear"}
    assert engine.zone_risk(state)["U1"] == {"waterlogging": "unknown"}  # never heard
    state, ticked = engine.tick(state, T0 + timedelta(minutes=30))
    (fault,) = ticked
    assert (fault.zone_id, fault.hazard, fault.level) == ("U2", DEVICE_FAULT, BLUE)
    # Stamped when it fell due (15 min after the last reading), not when the tick came.
    assert abs(fault.ts - (T0 + timedelta(seconds=50 + 900))) < timedelta(milliseconds=1)
    assert engine.zone_risk(state)["U2"] == {"waterlogging": "unknown"}
    state, back = engine.evaluate(state, obs(31, "w3", {"water_depth_cm": 0.0}))
    assert [(c.hazard, c.level) for c in back] == [(DEVICE_FAULT, None)]
    assert engine.zone_risk(state)["U2"] == {"waterlogging": "clear"}


def test_one_maintenance_alert_per_zone_never_a_flood() -> None:
    readings = [(0, "w1", {"water_depth_cm": 500.0}), (0, "w2", {"water_depth_cm": 600.0})]
    readings += [(m, d, {"water_depth_cm": 700.0}) for m in range(1, 30) for d in ("w1", "w2")]
    _, _, changes = run(readings)
    assert kinds(changes, DEVICE_FAULT) == [("U1", BLUE)]


def test_a_drifted_gauge_is_not_trusted_again_without_evidence() -> None:
    # Drifts in dry weather, then it rains: nothing says the gauge is right again.
    readings = DRY[: len(DRY) // 2] + every("w3", "water_depth_cm", 0.0, 0, 30)
    readings += every("w3", "water_depth_cm", 3.0, 30, 50, rise=0.2)
    readings += every("r1", "rain_rate_mm_h", 40.0, 50, 90)
    readings += every("r2", "rain_rate_mm_h", 40.0, 50, 90)
    readings += every("w3", "water_depth_cm", 8.0, 50, 90, rise=0.3)
    engine, state, changes = run(readings)
    assert engine.faulty_devices(state)["w3"].fault == "drift"
    assert kinds(changes, "waterlogging") == []


def test_a_faulty_gauge_leaves_the_zone_to_the_other_one() -> None:
    # w1 reads 40 cm of nonsense (out of range is 300: use a spike instead), w2 the truth.
    readings = [(0, "w1", {"water_depth_cm": 2.0}), (0, "w2", {"water_depth_cm": 2.0}),
                (0.2, "w1", {"water_depth_cm": 90.0}), (0.3, "w2", {"water_depth_cm": 2.1}),
                (0.4, "w1", {"water_depth_cm": 95.0}), (0.5, "w2", {"water_depth_cm": 2.2})]
    _, _, changes = run(readings)
    assert kinds(changes, "waterlogging") == []
    assert kinds(changes, DEVICE_FAULT) == [("U1", BLUE)]


def test_restored_maintenance_alert_clears_when_its_devices_are_well() -> None:
    engine = Engine(PARAMS, ZONES, SITES)
    state = engine.restore({("U2", DEVICE_FAULT): BLUE})
    assert engine.current_levels(state) == {("U2", DEVICE_FAULT): BLUE}
    state, changes = engine.evaluate(state, obs(0, "w3", {"water_depth_cm": 1.0}))
    assert kinds(changes, DEVICE_FAULT) == [("U2", None)]


def test_a_retired_device_is_forgotten_and_never_falls_silent() -> None:
    """A device retired at run time (the registry API): its silence raises no fault, and its
    zone is judged by the devices left."""
    engine, state, _ = run(every("w3", "water_depth_cm", 0.0, 0, 1))
    assert "w3" in state.health
    state = engine.retire_device(state, "w3")
    assert "w3" not in state.health and "w3" not in engine.registry
    state, ticked = engine.tick(state, T0 + timedelta(minutes=30))
    assert ticked == []
    assert engine.zone_risk(state)["U2"] == {"waterlogging": "unknown"}
    # Registered again (a new gauge in its place): the zone counts it as soon as it reports.
    engine.register_device(DeviceSite("w9", "water", (120.611, 31.301), ("C1", "U2")))
    POS["w9"] = engine.registry["w9"]
    try:
        state, _ = engine.evaluate(state, obs(31, "w9", {"water_depth_cm": 0.0}))
        assert engine.zone_risk(state)["U2"] == {"waterlogging": "clear"}
    finally:
        del POS["w9"]


def test_same_value_across_a_silent_gap_is_not_stuck() -> None:
    """A gauge reading 2 cm, then nothing for an hour (an outage, or its clock corrected by an
    hour), then 2 cm again: its run of equal values starts again after the gap, so it is only
    called stuck once it has read 2 cm for ten minutes of readings actually heard."""
    from rules.device_health import DeviceHealthRule, Peers

    rule = DeviceHealthRule(PARAMS.device_health)
    h = rule.initial("w3", "water")
    times = [T0 + timedelta(seconds=10 * i) for i in range(30)]  # 5 min
    times += [T0 + timedelta(hours=1, seconds=10 * i) for i in range(30)]  # 5 min, an hour on
    for ts in times:
        h, ok = rule.observe(h, ts, {"water_depth_cm": 2.0}, Peers())
        assert ok and h.fault is None, (ts, h.fault_detail)
    for i in range(30, 62):  # past ten minutes heard: now it is stuck
        h, _ = rule.observe(h, T0 + timedelta(hours=1, seconds=10 * i),
                            {"water_depth_cm": 2.0}, Peers())
    assert h.fault == "stuck"


def test_a_device_stamping_an_hour_back_is_heard_with_its_batch() -> None:
    """w3's clock is an hour slow and not yet corrected; its reading arrives in the same batch
    as w1's. Silence counts from when the batch was heard, not from w3's stamp: the fleet moving
    on ten seconds does not make w3 silent."""
    engine = Engine(PARAMS, ZONES, SITES)
    first = [obs(-60, "w3", {"water_depth_cm": 2.0}), obs(0, "w1", {"water_depth_cm": 0.0})]
    state, changes = engine.evaluate_many(EngineState(), first)
    state, more = engine.evaluate_many(state, [obs(1 / 6, "w1", {"water_depth_cm": 0.0})])
    assert engine.faulty_devices(state) == {}
    assert kinds(changes + more, DEVICE_FAULT) == []


@pytest.mark.parametrize("told", [True, False])
def test_a_slow_device_alone_in_its_batch_is_silent_only_after_real_silence(told: bool) -> None:
    """w3's clock is an hour slow and its reading comes alone (the first batch), then w1's in
    true time: on the event timeline w3 last spoke an hour ago. Told the server's clock, the
    engine knows w3 was heard a moment ago: not silent, until 15 real minutes pass without it.
    Not told (a replay), the event timeline is all it has."""
    engine = Engine(PARAMS, ZONES, SITES)
    server = T0 + timedelta(seconds=2)

    def received(at: datetime) -> dict[str, datetime]:
        return {"received": at} if told else {}

    state, changes = engine.evaluate_many(
        EngineState(), [obs(-60, "w3", {"water_depth_cm": 2.0})], **received(server))
    state, more = engine.evaluate_many(
        state, [obs(0, "w1", {"water_depth_cm": 0.0})], **received(server + timedelta(seconds=1)))
    changes += more
    if not told:
        assert faults(engine, state) == {"w3": "silent"}
        return
    assert faults(engine, state) == {}
    state, more = engine.evaluate_many(
        state, [obs(10, "w1", {"water_depth_cm": 0.0})], **received(server + timedelta(minutes=10)))
    changes += more
    assert faults(engine, state) == {}
    state, more = engine.evaluate_many(
        state, [obs(16, "w1", {"water_depth_cm": 0.0})], **received(server + timedelta(minutes=16)))
    changes += more
    assert faults(engine, state) == {"w3": "silent"}
    assert [level for _, level in kinds(changes, DEVICE_FAULT)][-1] is not None


def faults(engine: Engine, state: EngineState) -> dict[str, str | None]:
    return {d: h.fault for d, h in engine.faulty_devices(state).items()}
