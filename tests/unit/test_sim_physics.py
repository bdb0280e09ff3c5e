"""The simulators' physics: design storms, runoff, traffic flow and free fall, and the real data
they are calibrated against (``../shared/data/sensors``)."""

from __future__ import annotations

import csv
import itertools
import math
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from citywatch.config import Device
from simulators.devices.base import Site
from simulators.devices.water import WaterGauge
from simulators.physics.ballistics import G, ballistic_track, fall_time_s
from simulators.physics.rain import SUZHOU_2025, TIP_MM, ChicagoStorm, StormCell
from simulators.physics.runoff import LOW_ROAD, ROAD, UNDERPASS, Reservoir
from simulators.physics.traffic import (
    CAPACITY_VEH_H_LANE,
    bpr_speed_kmh,
    daily_demand,
    flow_and_density,
    occupancy_pct,
    queue_extent_km,
)
from simulators.scenario import Scenario, ScenarioState
from tests.unit.test_sim_devices import CENTRE, START

SENSORS = Path(__file__).resolve().parents[3] / "shared" / "data" / "sensors"


def read_series(name: str) -> list[float]:
    path = SENSORS / name
    if not path.exists():
        pytest.skip(f"real sensor data not found: {path}")
    with path.open(encoding="utf-8") as f:
        return [float(row["value"]) for row in csv.DictReader(f) if row["value"]]


# -- rain -------------------------------------------------------------------------------------


def test_suzhou_formula_gives_the_published_intensities() -> None:
    # i = 17.969 (1 + 1.24 lg P) / (t + 18.415)^0.785 mm/min
    assert SUZHOU_2025.mean_mm_h(60, 1) == pytest.approx(60 * 17.969 / 78.415 ** 0.785)
    assert SUZHOU_2025.mean_mm_h(180, 20) * 3 == pytest.approx(133.3, abs=0.5)
    rates = [SUZHOU_2025.mean_mm_h(t, 10) for t in (5, 30, 60, 180)]
    assert rates == sorted(rates, reverse=True)  # shorter bursts are more intense


@pytest.mark.parametrize(("period", "minutes", "ratio"), [(2, 60, 0.4), (20, 180, 0.43),
                                                           (50, 120, 0.3)])
def test_chicago_storm_holds_the_formulas_depth_and_peaks_at_r(period: float, minutes: float,
                                                               ratio: float) -> None:
    storm = ChicagoStorm(period, minutes, ratio)
    step = 0.01
    samples = [storm.rate_mm_h(i * step) for i in range(int(minutes / step) + 1)]
    total = sum(samples) * step / 60
    assert total == pytest.approx(storm.depth_mm, rel=0.01)
    peak = max(range(len(samples)), key=samples.__getitem__) * step
    assert peak == pytest.approx(ratio * minutes, abs=0.05)
    # Every window centred on the peak holds the formula's depth for that duration.
    for window in (10, 30):
        lo = peak - ratio * window  # the window holds r of it before the peak
        depth = sum(storm.rate_mm_h(lo + i * step) for i in range(int(window / step))) * step / 60
        assert depth == pytest.approx(SUZHOU_2025.mean_mm_h(window, period) * window / 60,
                                      rel=0.01)
    assert storm.rate_mm_h(-1) == storm.rate_mm_h(minutes + 1) == 0


def test_a_moving_storm_cell_rains_later_downwind_and_less_off_its_track() -> None:
    cell = StormCell(towards_deg=90, speed_km_h=30, width_km=5)
    assert cell.delay_and_factor(0, 0) == (0.0, 1.0)
    delay, factor = cell.delay_and_factor(6, 0)  # 6 km east, on the track
    assert delay == pytest.approx(720)
    assert factor == pytest.approx(1.0)
    delay, factor = cell.delay_and_factor(0, 5)  # 5 km north: one width off the track
    assert delay == pytest.approx(0, abs=1e-9)
    assert factor == pytest.approx(math.exp(-0.5))


def test_the_real_gauge_tips_in_steps_of_0_2_mm() -> None:
    values = read_series("ea_gorple_rainfall_15min.csv")
    assert all(v / TIP_MM == pytest.approx(round(v / TIP_MM), abs=1e-6) for v in values)
    assert max(values) == pytest.approx(3.6)


# -- runoff -----------------------------------------------------------------------------------


def flood(reservoir: Reservoir, rain_mm_h: float, minutes: int) -> list[float]:
    depths = []
    for _ in range(minutes):
        reservoir.step(rain_mm_h, 60)
        depths.append(reservoir.depth_cm)
    return depths


def test_depth_rises_with_rain_and_recedes_after() -> None:
    r = Reservoir(UNDERPASS)
    assert flood(r, 0, 10) == [0.0] * 10
    rising = flood(r, 100, 40)
    falling = flood(r, 0, 180)
    assert all(a <= b for a, b in itertools.pairwise(rising))
    assert rising[-1] > 25  # past an underpass's red depth
    assert all(a >= b for a, b in itertools.pairwise(falling))
    assert falling[-1] == 0
    # While deep, the pumps work at capacity: the fall rate is their capacity over the sag.
    per_min = (falling[0] - falling[10]) / 10
    assert per_min == pytest.approx(UNDERPASS.capacity_mm_h / 60 * UNDERPASS.area_ratio / 10,
                                    rel=0.05)


def test_rain_the_drains_can_take_leaves_no_standing_water() -> None:
    for catchment in (UNDERPASS, LOW_ROAD, ROAD):
        assert max(flood(Reservoir(catchment), catchment.capacity_mm_h * 0.5, 120)) == 0


def test_blocked_drains_flood_deeper_and_longer() -> None:
    clear, blocked = Reservoir(UNDERPASS), Reservoir(UNDERPASS)
    for _ in range(30):
        clear.step(100, 60)
        blocked.step(100, 60, capacity_factor=0.5)
    assert blocked.depth_cm > clear.depth_cm + 10


def test_an_ordinary_road_floods_far_less_than_a_low_road_or_an_underpass() -> None:
    depths = {c: max(flood(Reservoir(c), 100, 40)) for c in (UNDERPASS, LOW_ROAD, ROAD)}
    assert depths[ROAD] < 5 < depths[LOW_ROAD] < depths[UNDERPASS]


def test_a_gauge_in_a_storm_sees_the_water_rise_then_recede() -> None:
    sc = Scenario.model_validate({"name": "t", "storms": [
        {"start": "10min", "return_period_years": 10, "duration": "1h", "speed_km_h": 0}]})
    device = Device(id="w", kind="water", position=CENTRE)
    world = ScenarioState.build(sc, START, 1, [device], sites={"w": Site(("u",),
                                                                         frozenset({"underpass"}))})
    gauge = WaterGauge.create(device, Site(("u",), frozenset({"underpass"})), random.Random(1))
    depth = {}
    for minute in range(1, 241):
        gauge.step(START + timedelta(minutes=minute), 60, world)
        depth[minute] = gauge.depth_cm
    assert depth[10] == 0  # dry before the rain
    peak = max(depth, key=depth.__getitem__)
    assert 30 <= peak <= 60  # after the storm's peak (minute 10 + 26), before its end
    assert depth[peak] > 20
    assert depth[240] == 0
    assert world.flood_depth_cm == {"w": 0.0}  # grid workers could see it, dry again


def test_the_real_river_recedes_like_a_linear_reservoir() -> None:
    """After the September 2025 event the level falls exponentially, as dS/dt = -S/k says."""
    level = read_series("ea_hebden_bridge_river_level_15min.csv")
    peak = max(range(len(level)), key=level.__getitem__)
    base = min(level[:peak])
    tail = [v - base for v in level[peak + 4:peak + 4 + 48]]  # 12 hours of recession
    xs = list(range(len(tail)))
    ys = [math.log(v) for v in tail]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = (sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
             / sum((x - mx) ** 2 for x in xs))
    fit = [my + slope * (x - mx) for x in xs]
    ss_res = sum((y - f) ** 2 for y, f in zip(ys, fit, strict=True))
    ss_tot = sum((y - my) ** 2 for y in ys)
    assert 1 - ss_res / ss_tot > 0.95
    k_hours = -1 / slope / 4  # 15-minute steps
    assert 5 < k_hours < 40


# -- traffic ----------------------------------------------------------------------------------


def test_speeds_fall_as_occupancy_rises() -> None:
    points = []
    for i in range(1, 60):
        ratio = i / 20  # 0.05 .. 2.95 of capacity
        v = bpr_speed_kmh(50, ratio)
        flow, density = flow_and_density(ratio, v, CAPACITY_VEH_H_LANE)
        points.append((occupancy_pct(density), v, flow))
    points.sort()
    speeds = [v for _, v, _ in points]
    assert all(a > b for a, b in itertools.pairwise(speeds))
    assert points[0][1] > 49
    assert points[-1][1] < 12 and points[-1][0] > 60
    # In the queue, fewer vehicles get through as it slows (the congested branch).
    assert points[-1][2] < 0.6 * CAPACITY_VEH_H_LANE


def test_bpr_is_free_flow_when_empty_and_classic_at_capacity() -> None:
    assert bpr_speed_kmh(50, 0) == 50
    assert bpr_speed_kmh(50, 1) == pytest.approx(50 / 1.15)
    assert flow_and_density(0.5, 45, 1500) == (750, 750 / 45)
    assert flow_and_density(3, 0, 1500) == (0, 150)  # a standing queue


def test_daily_demand_peaks_in_the_morning_and_evening() -> None:
    by_hour = {h / 4: daily_demand(h / 4) for h in range(96)}
    night, midday = by_hour[3.0], by_hour[12.5]
    morning = max((h for h in by_hour if 6 <= h <= 10), key=by_hour.__getitem__)
    evening = max((h for h in by_hour if 16 <= h <= 20), key=by_hour.__getitem__)
    assert 7.5 <= morning <= 8.5
    assert 17.25 <= evening <= 18.25
    assert night < 0.2 < midday < by_hour[morning] < by_hour[evening] < 1.1


def test_a_queue_grows_behind_an_incident_and_dissolves_from_the_site() -> None:
    assert queue_extent_km(-1, 1200) == (0, 0)
    front, tail = queue_extent_km(600, 1200)
    assert front == 0
    assert tail == pytest.approx(4.0 * 600 / 3600)
    front, tail = queue_extent_km(1260, 1200)  # a minute after the clearance
    assert front == pytest.approx(0.25)
    assert tail == pytest.approx(0.8)
    assert queue_extent_km(1200 + 240, 1200) == (0, 0)


# -- falls ------------------------------------------------------------------------------------


@pytest.mark.parametrize("height", [1.5, 4.5, 25.5, 51.0, 120.0])
def test_a_falling_object_reaches_the_ground_after_free_fall_time(height: float) -> None:
    release, impact = CENTRE, (CENTRE[0] + 2e-5, CENTRE[1] + 1e-5)
    track = ballistic_track(release, impact, height)
    assert track[0][:3] == [round(release[0], 7), round(release[1], 7), height]
    assert track[0][3] == 0
    assert track[-1][2] == 0
    assert track[-1][:2] == [round(impact[0], 7), round(impact[1], 7)]
    assert track[-1][3] == pytest.approx(math.sqrt(2 * height / G), abs=0.001)
    assert fall_time_s(height) == pytest.approx(math.sqrt(2 * height / 9.81))
    heights = [p[2] for p in track]
    assert heights == sorted(heights, reverse=True)
    for _, _, h, s in track[1:-1]:  # in between, it falls as g t^2 / 2
        assert h == pytest.approx(height - G * s * s / 2, abs=0.01)


def test_throws_land_at_their_planned_time_after_release() -> None:
    sc = Scenario.model_validate({"name": "t", "time_of_day": "12:00", "throwers": [
        {"start": 60, "end": 600, "throws": 4, "floors": [5, 30]}]})
    cam = Device(id="cam", kind="camera", position=CENTRE)
    world = ScenarioState.build(sc, datetime(2026, 11, 23, 4, tzinfo=UTC), 3, [cam])
    for throw in world.all_throws():
        assert (throw.at - throw.released).total_seconds() == pytest.approx(
            math.sqrt(2 * throw.height_m / G), abs=1e-5)
        assert 0.7 < throw.confidence < 0.99  # by day, close, no rain
