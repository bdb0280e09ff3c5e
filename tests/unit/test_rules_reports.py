"""Grid reports and falling objects across zones: corroboration, alerts of their own, red in a
pedestrian area, a second camera, patterns at one building; traffic ratio, occupancy, holds
and suspected incidents. Table-driven, through the engine."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from shapely.geometry import box

from geo.zones import Zone
from rules.base import FALLING_OBJECT_PATTERN, AlertChange, Detection, Observation
from rules.engine import Engine, EngineState
from rules.levels import Level
from rules.params import (
    DepthThresholds,
    FallingObjectParams,
    ReportParams,
    RulesParams,
    TrafficParams,
    WaterloggingParams,
)

T0 = datetime(2026, 7, 15, 8, 0, tzinfo=UTC)
RED, ORANGE, YELLOW, BLUE = Level.RED, Level.ORANGE, Level.YELLOW, Level.BLUE
# About 190 m x 220 m each; the plaza straddles the fall zone's east edge.
ZONES = {z.id: z for z in (
    Zone("C1", "Grid cell 1", "grid_cell", box(120.59, 31.29, 120.65, 31.31)),
    Zone("U1", "Underpass", "underpass", box(120.600, 31.300, 120.602, 31.302), "C1"),
    Zone("F1", "Tower fall zone", "fall_zone", box(120.610, 31.300, 120.612, 31.302), "C1"),
    Zone("PA", "Tower plaza", "pedestrian_area", box(120.6115, 31.300, 120.6125, 31.302), "C1"),
    Zone("I1", "Crossing", "intersection", box(120.620, 31.300, 120.622, 31.302), "C1"),
    Zone("I2", "Slow crossing", "intersection", box(120.630, 31.300, 120.632, 31.302), "C1"),
)}
PARAMS = RulesParams(
    waterlogging=WaterloggingParams(thresholds={"underpass": DepthThresholds(
        blue_cm=5, yellow_cm=10, orange_cm=15, red_cm=25)}),
    falling_object=FallingObjectParams(corroborate_s=120, corroborate_m=60,
                                       pattern_min_events=3, pattern_window_s=7200),
    traffic=TrafficParams(free_flow_kmh_by_type={}, min_occupancy_pct=15, hold_s=120,
                          clear_hold_s=120, suspect_drop=0.5),
    reports=ReportParams(own_alert_level="blue", corroborate_m=300, corroborate_s=1800,
                         clear_after_s=3600),
)
ENGINE = Engine(PARAMS, ZONES)
IN_F1, IN_PLAZA, NEAR_U1, FAR = (120.6105, 31.301), (120.6118, 31.301), (120.6025, 31.301), \
    (120.640, 31.295)


def at(minute: float) -> datetime:
    return T0 + timedelta(minutes=minute)


def camera(minute: float, conf: float, where: tuple[float, float] = IN_F1, cam: str = "cam1",
           building: str | None = None, n: int = 0) -> Detection:
    zones = tuple(z.id for z in ZONES.values() if z.geometry.covers(_pt(where)))
    attrs: dict[str, Any] = {} if building is None else {"building_id": building}
    return Detection(cam, "camera", at(minute), f"{cam}-{minute}-{n}", "falling_object", conf,
                     where, zones, attrs)


def report(minute: float, category: str, where: tuple[float, float]) -> Detection:
    zones = tuple(z.id for z in ZONES.values() if z.geometry.covers(_pt(where)))
    return Detection("grid-1", "grid", at(minute), f"r-{minute}", "report", None, where, zones,
                     {"category": category, "text": "seen it"})


def water(minute: float, depth: float) -> Observation:
    return Observation("w1", "water", at(minute), int(minute * 60), {"water_depth_cm": depth},
                       None, ("C1", "U1"))


def traffic(minute: float, kmh: float, occ: float, zone: str = "I1",
            device: str = "t1") -> Observation:
    return Observation(device, "traffic", at(minute), int(minute * 60),
                       {"speed_kmh": kmh, "occupancy_pct": occ, "flow_veh_h": 800.0}, None,
                       ("C1", zone))


def _pt(p: tuple[float, float]) -> Any:
    from shapely.geometry import Point

    return Point(p)


def run(items: list[Observation | Detection], until: float | None = None
        ) -> list[tuple[str, str, Level | None]]:
    state, changes = ENGINE.evaluate_many(EngineState(), sorted(items, key=lambda i: i.ts))
    if until is not None:
        state, more = ENGINE.tick(state, at(until))
        changes += more
    return [(c.zone_id, c.hazard, c.level) for c in changes]


@pytest.mark.parametrize(("items", "expected"), [
    pytest.param([camera(0, 0.75)], [("F1", "falling_object", ORANGE)], id="orange"),
    pytest.param([camera(0, 0.95)], [("F1", "falling_object", RED)], id="red-by-confidence"),
    pytest.param([camera(0, 0.75, IN_PLAZA)], [("F1", "falling_object", RED)],
                 id="red-in-a-pedestrian-area"),
    pytest.param([camera(0, 0.5)], [], id="lone-low-confidence-logged-not-alerted"),
    pytest.param([camera(0, 0.6), camera(1, 0.6, cam="cam2")],
                 [("F1", "falling_object", ORANGE)], id="second-camera-corroborates"),
    pytest.param([camera(0, 0.6), camera(5, 0.6, cam="cam2")], [],
                 id="second-camera-too-late-to-corroborate"),
    pytest.param([camera(0, 0.6), camera(1, 0.6)], [], id="same-camera-twice-is-not-a-second"),
    pytest.param([camera(0, 0.55), report(1, "falling_object", IN_F1)],
                 [("F1", "falling_object", ORANGE)], id="grid-report-corroborates"),
    pytest.param([report(0, "falling_object", IN_F1)], [("C1", "falling_object", BLUE)],
                 id="report-alone-is-its-own-alert-in-its-cell"),
])
def test_falling_objects(items: list[Observation | Detection],
                         expected: list[tuple[str, str, Level]]) -> None:
    assert run(items) == expected


def test_repeated_events_at_one_building_make_a_pattern_alert_that_clears() -> None:
    throws = [camera(m, 0.8, building="B-7", n=i) for i, m in enumerate((0, 30, 70))]
    got = run(throws, until=70 + 121)
    assert ("F1", FALLING_OBJECT_PATTERN, ORANGE) in got
    assert got[-1] == ("F1", FALLING_OBJECT_PATTERN, None)
    assert all(h != FALLING_OBJECT_PATTERN for _, h, _ in run(throws[:2]))  # two are not one


@pytest.mark.parametrize(("items", "expected"), [
    pytest.param([water(0, 12.0), report(1, "waterlogging", NEAR_U1)],
                 [("U1", "waterlogging", YELLOW), ("U1", "waterlogging", YELLOW)],
                 id="corroborates-an-active-alert"),
    pytest.param([report(1, "waterlogging", FAR)], [("C1", "waterlogging", BLUE)],
                 id="matches-nothing-becomes-its-own"),
    pytest.param([water(0, 12.0), water(5, 0.0), report(10, "waterlogging", NEAR_U1)],
                 [("U1", "waterlogging", YELLOW), ("U1", "waterlogging", None)],
                 id="just-cleared-a-late-witness"),
    pytest.param([report(1, "other", FAR)], [], id="other-is-logged"),
])
def test_grid_reports(items: list[Observation | Detection],
                      expected: list[tuple[str, str, Level | None]]) -> None:
    assert run(items) == expected


def test_a_report_alert_clears_after_its_quiet_time() -> None:
    got = run([report(0, "traffic", FAR), report(30, "traffic", FAR)], until=200)
    assert got == [("C1", "traffic", BLUE), ("C1", "traffic", None)]


def test_corroboration_carries_the_report_as_evidence() -> None:
    _, changes = ENGINE.evaluate_many(EngineState(), [water(0, 12.0),
                                                      report(1, "waterlogging", NEAR_U1)])
    second: AlertChange = changes[1]
    assert second.evidence[0]["source"] == "grid" and "confirmed" in second.title


def minutes(kmh: float, occ: float, start: float, end: float, zone: str = "I1"
            ) -> list[Observation | Detection]:
    return [traffic(start + i / 6, kmh, occ, zone) for i in range(int((end - start) * 6))]


@pytest.mark.parametrize(("items", "expected"), [
    pytest.param(minutes(45, 10, 0, 5) + minutes(20, 35, 5, 6) + minutes(45, 10, 6, 10), [],
                 id="a-minute-of-slow-traffic-is-not-held"),
    pytest.param(minutes(45, 10, 0, 5) + minutes(20, 35, 5, 10),
                 [("I1", "traffic", YELLOW)], id="held-two-minutes-raises"),
    pytest.param(minutes(10, 5, 0, 10), [], id="slow-but-empty-is-not-a-jam"),
    pytest.param(minutes(20, 35, 0, 5) + minutes(45, 10, 5, 12),
                 [("I1", "traffic", YELLOW), ("I1", "traffic", None)], id="clears-when-it-flows"),
])
def test_traffic(items: list[Observation | Detection],
                 expected: list[tuple[str, str, Level | None]]) -> None:
    assert [x for x in run(items) if x[2] != ORANGE] == expected


def test_suspected_incident_from_a_sudden_drop_with_an_occupancy_jump() -> None:
    # The speed level waits two minutes (hold_s); the suspicion needs a minute of slow readings.
    items = minutes(45, 10, 0, 5) + minutes(15, 45, 5, 6.5)
    _, changes = ENGINE.evaluate_many(EngineState(), items)
    assert [(c.level, c.title.startswith("Suspected")) for c in changes] == [(YELLOW, True)]
    assert changes[0].ts < at(6)


def test_free_flow_speed_by_zone_type_scales_the_thresholds() -> None:
    slow_roads = PARAMS.model_copy(update={"traffic": PARAMS.traffic.model_copy(
        update={"free_flow_kmh_by_type": {"intersection": 30.0}, "hold_s": 0})})
    engine = Engine(slow_roads, ZONES)
    # 20 km/h on a 30 km/h road is a ratio of 0.67: blue (< 0.7), not yellow (< 0.5).
    _, changes = engine.evaluate_many(EngineState(), minutes(20, 35, 0, 1))
    assert [c.level for c in changes] == [BLUE]
