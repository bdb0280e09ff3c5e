"""Event time: late and out-of-order readings give the alerts of an in-order run; redeliveries
and readings older than what their device already had evaluated are counted, not evaluated."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from shapely.geometry import box

from geo.zones import Zone
from rules.base import Detection, Observation
from rules.engine import Engine, EngineState
from rules.levels import Level
from rules.params import (
    DepthThresholds,
    EventTimeParams,
    RulesParams,
    TrafficParams,
    WaterloggingParams,
)

T0 = datetime(2026, 7, 15, 8, 0, tzinfo=UTC)
ZONES = {z.id: z for z in (
    Zone("U1", "Underpass", "underpass", box(120.600, 31.300, 120.602, 31.302)),
    Zone("F1", "Fall zone", "fall_zone", box(120.610, 31.300, 120.612, 31.302)),
    Zone("I1", "Crossing", "intersection", box(120.620, 31.300, 120.622, 31.302)),
)}


def params(window: float) -> RulesParams:
    return RulesParams(
        waterlogging=WaterloggingParams(thresholds={"underpass": DepthThresholds(
            blue_cm=5, yellow_cm=10, orange_cm=15, red_cm=25)}),
        traffic=TrafficParams(hold_s=60, clear_hold_s=60),
        event_time=EventTimeParams(reorder_window_s=window))


def water(device: str, minute: float, depth: float, seq: int) -> Observation:
    return Observation(device, "water", T0 + timedelta(minutes=minute), seq,
                       {"water_depth_cm": depth}, None, ("U1",))


def speed(device: str, minute: float, kmh: float, seq: int) -> Observation:
    return Observation(device, "traffic", T0 + timedelta(minutes=minute), seq,
                       {"speed_kmh": kmh, "flow_veh_h": 900.0, "occupancy_pct": 30.0}, None,
                       ("I1",))


def fall(minute: float, event: str) -> Detection:
    return Detection("cam", "camera", T0 + timedelta(minutes=minute), event, "falling_object",
                     0.8, None, ("F1",))


def storyline() -> list[Observation | Detection]:
    """Two gauges filling and draining, a jam, two falling objects: 90 minutes."""
    items: list[Observation | Detection] = []
    for i in range(540):
        m = i / 6
        depth = max(0.0, 20 - abs(m - 45) * 0.6)
        items.append(water("w1", m, round(depth, 1), i))
        items.append(water("w2", m + 0.05, round(depth * 0.8, 1), i))
        kmh = 45.0 if not 30 <= m <= 50 else 15.0
        items.append(speed("t1", m + 0.02, kmh, i))
    items += [fall(12.0, "e1"), fall(40.0, "e2")]
    return sorted(items, key=lambda i: i.ts)


def replay(items: list[Observation | Detection], window: float,
           ticks_every: int = 25) -> list[tuple[str, str, Level | None, datetime, str]]:
    engine = Engine(params(window), ZONES)
    state, changes = EngineState(), []
    newest = T0
    for n, item in enumerate(items):
        state, ch = engine.evaluate(state, item)
        changes += ch
        newest = max(newest, item.ts)
        if n % ticks_every == 0:  # the pipeline ticks after each batch, with the newest ts
            state, ch = engine.tick(state, newest)
            changes += ch
    state, ch = engine.flush(state)
    changes += ch
    state, ch = engine.tick(state, newest + timedelta(hours=2))
    changes += ch
    return [(c.zone_id, c.hazard, c.level, c.ts, c.title) for c in changes]


def delivered(items: list[Observation | Detection], late_s: float, twice: bool,
              seed: int) -> list[Observation | Detection]:
    """Each item up to ``late_s`` after its time, optionally twice: in delivery order."""
    rng = random.Random(seed)
    copies = items * (2 if twice else 1)
    keyed = [(i.ts + timedelta(seconds=rng.uniform(0, late_s)), n, i)
             for n, i in enumerate(copies)]
    return [i for _, _, i in sorted(keyed, key=lambda x: (x[0], x[1]))]


STORY = storyline()
IN_ORDER = replay(STORY, 60)


def test_the_storyline_alerts() -> None:
    hazards = {(z, h) for z, h, _, _, _ in IN_ORDER}
    assert hazards == {("U1", "waterlogging"), ("I1", "traffic"), ("F1", "falling_object")}


@settings(max_examples=5, deadline=None)
@given(seed=st.integers(0, 10_000), twice=st.booleans())
def test_shuffled_within_the_window_and_redelivered_gives_the_same_alerts(
        seed: int, twice: bool) -> None:
    assert replay(delivered(STORY, 60, twice, seed), 60) == IN_ORDER


def test_the_tick_rate_does_not_change_the_alerts() -> None:
    assert replay(STORY, 60, ticks_every=1) == IN_ORDER
    assert replay(STORY, 60, ticks_every=500) == IN_ORDER


def test_without_a_window_redeliveries_and_stale_readings_are_counted_not_evaluated() -> None:
    engine = Engine(params(0), ZONES)
    state, _ = engine.evaluate(EngineState(), water("w1", 1, 12.0, 10))
    state, again = engine.evaluate(state, water("w1", 1, 12.0, 10))
    state, old = engine.evaluate(state, water("w1", 0.5, 30.0, 9))  # overtaken: too late
    assert again == old == []
    assert (state.counts.duplicates, state.counts.too_late, state.counts.evaluated) == (1, 1, 1)


def test_a_device_backlog_behind_the_clock_is_evaluated_at_its_own_time() -> None:
    # w2 was away: its buffered readings arrive after w1 moved the clock on.
    engine = Engine(params(0), ZONES)
    state, _ = engine.evaluate(EngineState(), water("w1", 30, 0.0, 1))
    state, changes = engine.evaluate(state, water("w2", 10, 12.0, 1))
    assert [(c.level, c.ts) for c in changes] == [(Level.YELLOW, T0 + timedelta(minutes=10))]
    assert state.counts.late == 1


def test_held_items_wait_for_the_window_and_flush_releases_them() -> None:
    engine = Engine(params(60), ZONES)
    state, changes = engine.evaluate(EngineState(), water("w1", 0, 30.0, 1))
    assert changes == []  # held: something older may still be on its way
    state, changes = engine.tick(state, T0 + timedelta(seconds=61))
    assert [c.level for c in changes] == [Level.RED]
    state, changes = engine.evaluate(state, water("w1", 2, 31.0, 2))
    state, changes = engine.flush(state)
    assert changes == [] and state.buffer == ()


@pytest.mark.parametrize("window", [0, 60])
def test_old_state_is_untouched(window: float) -> None:
    engine = Engine(params(window), ZONES)
    before, _ = engine.evaluate(EngineState(), water("w1", 0, 12.0, 1))
    snapshot = (dict(before.rules), before.buffer, before.counts)
    engine.evaluate(before, water("w1", 1, 30.0, 2))
    engine.tick(before, T0 + timedelta(hours=1))
    assert (dict(before.rules), before.buffer, before.counts) == snapshot
