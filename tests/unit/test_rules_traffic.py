"""Traffic rule: mean speed of detectors, hysteresis, empty roads, incidents, restore."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import pytest
from hypothesis import given
from hypothesis import strategies as st
from shapely.geometry import box

from geo.zones import Zone
from rules.base import AlertChange, Detection, Observation
from rules.levels import Level
from rules.params import TrafficParams
from rules.traffic import TrafficRule, TrafficState

S = TypeVar("S")


def one(result: tuple[S, list[AlertChange]]) -> tuple[S, AlertChange | None]:
    """A rule's (state, changes) as (state, the change or None): one hazard, one change."""
    state, changes = result
    assert len(changes) <= 1
    return state, changes[0] if changes else None


T0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
ORANGE, YELLOW, BLUE = Level.ORANGE, Level.YELLOW, Level.BLUE
# blue below 35 km/h, yellow below 25, orange below 12; recover 5 km/h above; incidents 30 min.
PARAMS = TrafficParams(
    blue_kmh=35,
    yellow_kmh=25,
    orange_kmh=12,
    hysteresis_kmh=5,
    incident_min_confidence=0.7,
    incident_clear_after_s=1800,
    resume_hold_s=300,
)
CROSSING = Zone(
    "I1", "Renmin Rd / Ganjiang Rd", "intersection", box(120.60, 31.30, 120.601, 31.301)
)

Item = Observation | Detection | datetime  # a datetime stands for a tick


def spd(
    minute: float, speed: float, device: str = "d1", flow: float = 600, occ: float = 20
) -> Observation:
    return Observation(
        device_id=device,
        kind="traffic",
        ts=T0 + timedelta(minutes=minute),
        seq=int(minute * 10),
        values={"flow_veh_h": flow, "speed_kmh": speed, "occupancy_pct": occ},
        position=None,
        zone_ids=("I1",),
    )


def inc(minute: float, confidence: float | None, subtype: str = "collision") -> Detection:
    return Detection(
        device_id="d9",
        kind="traffic",
        ts=T0 + timedelta(minutes=minute),
        event_id=f"d9-{minute:g}",
        type="incident",
        confidence=confidence,
        position=None,
        zone_ids=("I1",),
        attrs={"subtype": subtype},
    )


def tick(minute: float) -> datetime:
    return T0 + timedelta(minutes=minute)


def run(
    rule: TrafficRule, items: list[Item], state: TrafficState | None = None
) -> tuple[list[Level | None], list[AlertChange | None], TrafficState]:
    state = rule.initial() if state is None else state
    levels: list[Level | None] = []
    changes: list[AlertChange | None] = []
    for item in items:
        if isinstance(item, datetime):
            state, change = one(rule.tick(CROSSING, state, item))
        else:
            state, change = one(rule.evaluate(CROSSING, state, item))
        levels.append(state.level)
        changes.append(change)
    return levels, changes, state


def assert_changes_match(
    levels: list[Level | None], changes: list[AlertChange | None], start: Level | None = None
) -> None:
    prev = start
    for level, change in zip(levels, changes, strict=True):
        assert (change is not None) == (level != prev)
        assert change is None or change.level == level
        prev = level


@pytest.mark.parametrize(
    ("items", "expected"),
    [
        pytest.param(
            [spd(0, 40), spd(1, 34), spd(2, 24), spd(3, 11)],
            [None, BLUE, YELLOW, ORANGE],
            id="slows-through-all",
        ),
        pytest.param([spd(0, 35)], [None], id="at-blue-threshold-not-below"),
        pytest.param([spd(0, 34.99)], [BLUE], id="just-below-blue"),
        pytest.param([spd(0, 25)], [BLUE], id="at-yellow-threshold-still-blue"),
        pytest.param([spd(0, 12)], [YELLOW], id="at-orange-threshold-still-yellow"),
        pytest.param(
            [spd(0, 24), spd(1, 29), spd(2, 30), spd(3, 30.01)],
            [YELLOW, YELLOW, YELLOW, BLUE],
            id="yellow-held-within-band",
        ),
        pytest.param(
            [spd(0, 34), spd(1, 40), spd(2, 40.01)], [BLUE, BLUE, None], id="clears-above-band"
        ),
        pytest.param(
            [spd(0, 11), spd(1, 17), spd(2, 17.01)], [ORANGE, ORANGE, YELLOW], id="orange-held"
        ),
        pytest.param([spd(0, 5), spd(1, 60)], [ORANGE, None], id="jam-dissolves-at-once"),
    ],
)
def test_single_detector(items: list[Item], expected: list[Level | None]) -> None:
    levels, changes, _ = run(TrafficRule(PARAMS), items)
    assert levels == expected
    assert_changes_match(levels, changes)


@pytest.mark.parametrize(
    ("items", "expected"),
    [
        pytest.param(
            [spd(0, 20, "d1"), spd(1, 40, "d2"), spd(2, 60, "d1")],
            [YELLOW, YELLOW, None],
            id="mean-of-latest-per-detector",
        ),
        pytest.param(
            [spd(0, 60, "d1"), spd(0, 60, "d2"), spd(0, 60, "d3"), spd(1, 5, "d4")],
            [None, None, None, None],
            id="one-slow-detector-alone-raises-nothing",
        ),
        pytest.param([spd(0, 0, flow=0, occ=0)], [None], id="no-vehicles-is-not-a-jam"),
        pytest.param([spd(0, 0, flow=0, occ=90)], [ORANGE], id="standstill-is-a-jam"),
        pytest.param(
            [spd(0, 10), spd(1, 0, flow=0, occ=0)], [ORANGE, None], id="road-empties-clears"
        ),
        pytest.param(
            [spd(0, 20, "d1"), spd(1, 0, "d2", flow=0, occ=0)],
            [YELLOW, YELLOW],
            id="empty-detector-left-out-of-mean",
        ),
        pytest.param(
            [spd(5, 10), spd(4, 60), spd(5, 60)], [ORANGE, ORANGE, ORANGE], id="stale-ignored"
        ),
    ],
)
def test_fusion(items: list[Item], expected: list[Level | None]) -> None:
    levels, changes, _ = run(TrafficRule(PARAMS), items)
    assert levels == expected
    assert_changes_match(levels, changes)


@pytest.mark.parametrize(
    ("items", "expected"),
    [
        pytest.param([inc(0, 0.8)], [ORANGE], id="incident-raises-orange"),
        pytest.param([inc(0, 0.7)], [ORANGE], id="at-min-confidence"),
        pytest.param([inc(0, 0.69)], [None], id="weak-incident-ignored"),
        pytest.param([inc(0, None)], [None], id="no-confidence"),
        pytest.param([inc(0, math.nan)], [None], id="nan-confidence"),
        pytest.param(
            [inc(0, 0.8), tick(29), tick(30)], [ORANGE, ORANGE, None], id="clears-by-tick"
        ),
        pytest.param(
            [inc(0, 0.8), inc(20, 0.8), tick(30), tick(50)],
            [ORANGE, ORANGE, ORANGE, None],
            id="renewed-by-new-incident",
        ),
        pytest.param(
            [inc(0, 0.8), spd(1, 50), spd(2, 50)],
            [ORANGE, ORANGE, ORANGE],
            id="free-flow-alone-does-not-clear",
        ),
        pytest.param(
            [inc(0, 0.8), spd(1, 20), spd(2, 45)],
            [ORANGE, ORANGE, None],
            id="congestion-then-recovery-clears",
        ),
        pytest.param(
            [spd(0, 10), inc(1, 0.8), spd(2, 20), spd(3, 45)],
            [ORANGE, ORANGE, ORANGE, None],
            id="congested-at-incident-then-recovery-clears",
        ),
        pytest.param(
            [spd(0, 20), inc(1, 0.8), tick(31)],
            [YELLOW, ORANGE, YELLOW],
            id="over-yellow-then-back-to-yellow",
        ),
        pytest.param(
            [inc(5, 0.8), spd(2, 20), spd(6, 45)],
            [ORANGE, ORANGE, ORANGE],
            id="reading-older-than-incident-proves-nothing",
        ),
    ],
)
def test_incidents(items: list[Item], expected: list[Level | None]) -> None:
    levels, changes, _ = run(TrafficRule(PARAMS), items)
    assert levels == expected
    assert_changes_match(levels, changes)


def test_titles() -> None:
    rule = TrafficRule(PARAMS)
    _, changes, _ = run(rule, [spd(0, 20), inc(1, 0.85), tick(31), spd(32, 50)])
    titles = [c.title for c in changes if c is not None]
    assert titles == [
        "Traffic 20 km/h, occupancy 20 % at Renmin Rd / Ganjiang Rd",
        "Traffic collision at Renmin Rd / Ganjiang Rd (confidence 0.85)",
        "Traffic 20 km/h at Renmin Rd / Ganjiang Rd",
        "Traffic flowing at Renmin Rd / Ganjiang Rd: 50 km/h, occupancy 20 %",
    ]


def test_irrelevant_items_leave_state_alone() -> None:
    rule = TrafficRule(PARAMS)
    state = rule.initial()
    for item in (
        Observation("w1", "water", T0, 1, {"water_depth_cm": 80.0}, None, ("I1",)),
        Observation("d1", "traffic", T0, 1, {"flow_veh_h": 100.0}, None, ("I1",)),
        spd(0, math.nan),
        Detection("cam", "camera", T0, "e1", "falling_object", 0.99, None, ("I1",)),
    ):
        new, change = one(rule.evaluate(CROSSING, state, item))
        assert new is state
        assert change is None


@pytest.mark.parametrize(
    ("restored", "items", "expected"),
    [
        pytest.param(YELLOW, [spd(0, 24)], [YELLOW], id="still-slow-no-second-alert"),
        pytest.param(BLUE, [spd(0, 20)], [YELLOW], id="escalates-at-once"),
        pytest.param(
            ORANGE,
            [spd(0, 50), spd(4, 50), spd(5, 50)],
            [ORANGE, ORANGE, None],
            id="recovery-clears-after-hold",
        ),
        pytest.param(
            ORANGE,
            # mean(60, 5) = 32.5: d1 alone would clear, both together hold blue
            [spd(0, 60, "d1"), spd(1, 5, "d2"), spd(6, 60, "d1")],
            [ORANGE, ORANGE, BLUE],
            id="first-detector-cannot-clear-what-others-hold",
        ),
    ],
)
def test_restore(restored: Level, items: list[Item], expected: list[Level | None]) -> None:
    rule = TrafficRule(PARAMS)
    levels, changes, _ = run(rule, items, state=rule.restore(restored))
    assert levels == expected
    assert_changes_match(levels, changes, start=restored)


# --- properties -----------------------------------------------------------------------------------

ORDER = [BLUE, YELLOW, ORANGE]
THRESH = {BLUE: 35.0, YELLOW: 25.0, ORANGE: 12.0}


@given(level=st.sampled_from(ORDER), data=st.data())
def test_speed_inside_band_never_changes_level(level: Level, data: st.DataObject) -> None:
    lower = THRESH[ORDER[ORDER.index(level) + 1]] if level != ORANGE else 0.0
    reach = data.draw(st.floats(lower, THRESH[level], exclude_max=True))
    band = data.draw(st.lists(st.floats(lower, THRESH[level] + PARAMS.hysteresis_kmh), max_size=30))
    items: list[Item] = [spd(i, s) for i, s in enumerate([reach, *band])]
    levels, changes, _ = run(TrafficRule(PARAMS), items)
    assert set(levels) == {level}
    assert [c.level for c in changes if c is not None] == [level]


_minute = st.floats(0, 240)
_items = st.one_of(
    st.builds(spd, _minute, st.floats(0, 80), st.sampled_from(["d1", "d2", "d3"])),
    st.builds(inc, _minute, st.floats(0, 1)),
    st.builds(tick, _minute),
)


@given(st.lists(_items, max_size=40))
def test_changes_only_at_transitions(items: list[Item]) -> None:
    # Time moves forward, as it does for the engine.
    items.sort(key=lambda i: i if isinstance(i, datetime) else i.ts)
    levels, changes, _ = run(TrafficRule(PARAMS), items)
    assert_changes_match(levels, changes)
