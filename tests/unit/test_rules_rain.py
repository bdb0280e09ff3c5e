"""Rain over the catchment (CMA signals), the rate-of-rise forecast, and noise at thresholds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st
from shapely.geometry import box

from geo.zones import Zone
from rules import rain
from rules.base import DeviceSite, Observation
from rules.engine import Engine, EngineState
from rules.hysteresis import step
from rules.levels import Level
from rules.params import DepthThresholds, RainParams, RulesParams, WaterloggingParams

T0 = datetime(2026, 7, 15, 8, 0, tzinfo=UTC)
RED, ORANGE, YELLOW, BLUE = Level.RED, Level.ORANGE, Level.YELLOW, Level.BLUE
RAIN = RainParams(enabled=True, nowcast_h=1.0, catchment_radius_m=2500)
HOURS = rain.windows(RAIN)
ZONES = {"U1": Zone("U1", "Underpass", "underpass", box(120.600, 31.300, 120.602, 31.302))}
SITES = [DeviceSite("w1", "water", (120.601, 31.301), ("U1",)),
         DeviceSite("r1", "rain", (120.605, 31.305), ())]


def gauge_after(rate_mm_h: float, minutes: float) -> rain.RainGauge:
    g: rain.RainGauge | None = None
    for i in range(int(minutes * 6) + 1):
        g = rain.add_reading(g, "r1", (120.6, 31.3), T0 + timedelta(seconds=10 * i), rate_mm_h,
                             RAIN, HOURS)
    assert g is not None
    return g


def test_accumulation_in_buckets() -> None:
    g = gauge_after(60.0, 60)  # an hour at 60 mm/h
    assert g.fallen_mm(3) == pytest.approx(60.0, abs=0.01)
    assert g.smooth_mm_h == pytest.approx(60.0, rel=0.01)


def test_a_long_gap_adds_no_rain() -> None:
    g = rain.add_reading(None, "r1", None, T0, 30.0, RAIN, HOURS)
    g = rain.add_reading(g, "r1", None, T0 + timedelta(hours=2), 30.0, RAIN, HOURS)
    assert g.fallen_mm(3) == 0.0


@pytest.mark.parametrize(("rate", "minutes", "level", "observed"), [
    (10.0, 60, None, None),  # 10 fallen + 10 nowcast: no signal
    (25.0, 60, ORANGE, None),  # 25 + 25 = 50 within 3 h: orange (all windows hold it)
    (30.0, 30, None, None),  # 15 fallen + 30 nowcast
    (55.0, 60, RED, ORANGE),  # 55 fallen (orange) + 55 more expected: red on the nowcast
    (60.0, 120, RED, RED),  # 120 fallen within 3 h
    (110.0, 60, RED, RED),
])
def test_cma_signals(rate: float, minutes: float, level: Level | None,
                     observed: Level | None) -> None:
    outlook = rain.outlook([gauge_after(rate, minutes)], RAIN)
    assert outlook is not None
    assert (outlook.level, outlook.observed) == (level, observed)


def engine(forecast_s: float = 1800, hold_s: float = 0, margin: float = 0) -> Engine:
    params = RulesParams(waterlogging=WaterloggingParams(
        thresholds={"underpass": DepthThresholds(blue_cm=5, yellow_cm=10, orange_cm=15,
                                                 red_cm=25)},
        forecast_horizon_s=forecast_s, raise_hold_s=hold_s, raise_margin_cm=margin,
        rain=RainParams(enabled=True, raise_to={"red": "yellow"})))
    return Engine(params, ZONES, SITES)


def water(minute: float, depth: float) -> Observation:
    return Observation("w1", "water", T0 + timedelta(minutes=minute), int(minute * 60),
                       {"water_depth_cm": depth}, (120.601, 31.301), ("U1",))


def rain_at(minute: float, rate: float) -> Observation:
    return Observation("r1", "rain", T0 + timedelta(minutes=minute), int(minute * 60),
                       {"rain_rate_mm_h": rate}, (120.605, 31.305), ())


def levels(e: Engine, items: list[Observation]) -> list[tuple[float, Level | None]]:
    _, changes = e.evaluate_many(EngineState(), sorted(items, key=lambda i: i.ts))
    return [(round((c.ts - T0).total_seconds() / 60, 2), c.level) for c in changes]


def test_rate_of_rise_warns_blue_before_the_water_gets_there() -> None:
    # 0.5 cm a minute from dry: blue depth (5 cm) at minute 10, yellow at 20.
    got = levels(engine(), [water(m / 6, round(m / 12, 1)) for m in range(0, 25 * 6)])
    first_blue = got[0]
    assert first_blue[1] == BLUE and first_blue[0] < 6  # forecast, well before 5 cm
    assert (20.0, YELLOW) in got  # 10 cm: yellow, 14 minutes and more after the blue


def test_no_forecast_for_water_that_falls_or_stays() -> None:
    steady = [water(m / 6, 3.0 + 0.1 * (m % 2)) for m in range(0, 60)]
    falling = [water(m / 6, max(0.0, 4.5 - m * 0.05)) for m in range(0, 60)]
    assert levels(engine(), steady) == []
    assert levels(engine(), falling) == []


def test_rain_alone_is_a_blue_watch_and_fallen_rain_raises_a_wet_low_point() -> None:
    items = [rain_at(m / 6, 110.0) for m in range(0, 6 * 65)]
    items += [water(m / 6, 0.0) for m in range(0, 6 * 50)]
    items += [water(50 + m / 6, 6.0 + (m % 2) * 0.1) for m in range(0, 6 * 15)]
    got = levels(engine(forecast_s=0), items)
    assert got[0][1] == BLUE and got[0][0] < 20  # nowcast: 110 mm/h for an hour, no water
    assert (50.0, YELLOW) in got or any(lvl == YELLOW and t >= 50 for t, lvl in got)


@pytest.mark.parametrize(("depths", "hold_s", "margin", "expected"), [
    ([10.1, 9.9, 10.1, 9.8], 60, 1.0, []),  # noise at the threshold: no crossing
    ([10.1] * 8, 60, 1.0, [(1.0, YELLOW)]),  # held a minute: a crossing
    ([11.2], 60, 1.0, [(0.0, YELLOW)]),  # a margin over it: at once
    ([10.1], 0, 0.0, [(0.0, YELLOW)]),  # no hold: at once
])
def test_raise_hold_and_margin(depths: list[float], hold_s: float, margin: float,
                               expected: list[tuple[float, Level]]) -> None:
    items = [water(i / 6, d) for i, d in enumerate(depths)]
    got = [x for x in levels(engine(forecast_s=0, hold_s=hold_s, margin=margin), items)
           if x[1] != BLUE]
    assert got == expected


THRESHOLDS = {BLUE: 5.0, YELLOW: 10.0, ORANGE: 15.0, RED: 25.0}


@given(level=st.sampled_from([BLUE, YELLOW, ORANGE, RED]),
       values=st.lists(st.floats(0, 1.999), min_size=1, max_size=30))
def test_inside_the_hysteresis_band_the_level_never_changes(level: Level,
                                                            values: list[float]) -> None:
    # Reached at t, held down to t - band: anything in [t - band, next threshold) keeps it.
    band = 2.0
    t = THRESHOLDS[level]
    higher = min((v for lvl, v in THRESHOLDS.items() if lvl.more_severe_than(level)),
                 default=1000.0)
    current: Level | None = level
    for v in values:
        depth = min(t - band + v * (higher - t + band) / 2.0, higher - 1e-6)
        current = step(current, depth, THRESHOLDS, band, rising=True)
        assert current == level
