"""Waterlogging rule: fusion of gauges, thresholds per zone type, hysteresis, restore."""

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
from rules.params import DepthThresholds, WaterloggingParams
from rules.waterlogging import WaterloggingRule, WaterloggingState

S = TypeVar("S")


def one(result: tuple[S, list[AlertChange]]) -> tuple[S, AlertChange | None]:
    """A rule's (state, changes) as (state, the change or None): one hazard, one change."""
    state, changes = result
    assert len(changes) <= 1
    return state, changes[0] if changes else None


T0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
RED, ORANGE, YELLOW, BLUE = Level.RED, Level.ORANGE, Level.YELLOW, Level.BLUE

UNDERPASS_T = DepthThresholds(blue_cm=5, yellow_cm=10, orange_cm=20, red_cm=30)
LOW_ROAD_T = DepthThresholds(blue_cm=3, yellow_cm=8, orange_cm=15, red_cm=25)
HYST = 2.0
PARAMS = WaterloggingParams(
    thresholds={"underpass": UNDERPASS_T, "low_road": LOW_ROAD_T},
    hysteresis_cm=HYST,
    resume_hold_s=300,
)
UNDERPASS = Zone(
    "U1", "Renmin Road underpass (north)", "underpass", box(120.60, 31.30, 120.61, 31.31)
)
LOW_ROAD = Zone("L1", "Canal Street low section", "low_road", box(120.61, 31.30, 120.62, 31.31))


def obs(
    depth: float,
    minute: float = 0,
    device: str = "g1",
    seq: int | None = None,
    kind: str = "water",
    key: str = "water_depth_cm",
) -> Observation:
    return Observation(
        device_id=device,
        kind=kind,
        ts=T0 + timedelta(minutes=minute),
        seq=int(minute * 10) if seq is None else seq,
        values={key: depth},
        position=(120.605, 31.305),
        zone_ids=("U1",),
    )


def run(
    rule: WaterloggingRule,
    zone: Zone,
    readings: list[Observation],
    state: WaterloggingState | None = None,
) -> tuple[list[Level | None], list[AlertChange | None], WaterloggingState]:
    state = rule.initial() if state is None else state
    levels: list[Level | None] = []
    changes: list[AlertChange | None] = []
    for item in readings:
        state, change = one(rule.evaluate(zone, state, item))
        levels.append(state.level)
        changes.append(change)
    return levels, changes, state


def emitted(levels: list[Level | None], start: Level | None = None) -> list[Level | None]:
    """The changes a level sequence should produce: one per transition."""
    out: list[Level | None] = []
    prev = start
    for lvl in levels:
        if lvl != prev:
            out.append(lvl)
        prev = lvl
    return out


# --- one gauge: depth sequence -> level after each reading --------------------------------------


@pytest.mark.parametrize(
    ("depths", "expected"),
    [
        pytest.param([0, 5, 10, 20, 30], [None, BLUE, YELLOW, ORANGE, RED], id="rises-through-all"),
        pytest.param([4.99, 5], [None, BLUE], id="blue-starts-at-threshold"),
        pytest.param([9.99, 10], [BLUE, YELLOW], id="yellow-starts-at-threshold"),
        pytest.param([0, 35], [None, RED], id="jumps-straight-to-red"),
        pytest.param(
            [10, 8.5, 8.0, 7.99], [YELLOW, YELLOW, YELLOW, BLUE], id="yellow-held-within-band"
        ),
        pytest.param(
            [5, 3.5, 3.0, 2.99], [BLUE, BLUE, BLUE, None], id="clears-below-blue-minus-band"
        ),
        pytest.param([30, 28.0, 27.99], [RED, RED, ORANGE], id="red-held-then-orange"),
        pytest.param([30, 15], [RED, YELLOW], id="red-falls-two-levels"),
        pytest.param([30, 0], [RED, None], id="red-clears-at-once"),
        pytest.param(
            [20, 19, 21, 18.5, 25], [ORANGE, ORANGE, ORANGE, ORANGE, ORANGE], id="wobble-at-orange"
        ),
        pytest.param([12, 7, 12], [YELLOW, BLUE, YELLOW], id="falls-then-rises-again"),
    ],
)
def test_single_gauge_levels(depths: list[float], expected: list[Level | None]) -> None:
    rule = WaterloggingRule(PARAMS)
    levels, changes, _ = run(rule, UNDERPASS, [obs(d, minute=i) for i, d in enumerate(depths)])
    assert levels == expected
    assert [c.level for c in changes if c is not None] == emitted(expected)


@pytest.mark.parametrize(
    ("zone", "depth", "expected"),
    [
        pytest.param(UNDERPASS, 8, BLUE, id="underpass-8cm-blue"),
        pytest.param(LOW_ROAD, 8, YELLOW, id="low-road-8cm-yellow"),
        pytest.param(UNDERPASS, 26, ORANGE, id="underpass-26cm-orange"),
        pytest.param(LOW_ROAD, 26, RED, id="low-road-26cm-red"),
    ],
)
def test_thresholds_follow_zone_type(zone: Zone, depth: float, expected: Level) -> None:
    levels, _, _ = run(WaterloggingRule(PARAMS), zone, [obs(depth)])
    assert levels == [expected]


# --- several gauges: zone depth is the max of each gauge's latest reading ---------------------


@pytest.mark.parametrize(
    ("readings", "expected"),
    [
        pytest.param([("g1", 12), ("g2", 3)], [YELLOW, YELLOW], id="deepest-gauge-decides"),
        pytest.param(
            [("g1", 12), ("g2", 3), ("g1", 2)], [YELLOW, YELLOW, BLUE], id="latest-per-gauge"
        ),
        pytest.param(
            [("g1", 2), ("g2", 22), ("g2", 0), ("g1", 0)],
            [None, ORANGE, None, None],
            id="each-gauge-replaced-by-its-latest",
        ),
        pytest.param(
            [("g1", 31), ("g2", 0), ("g3", 0)], [RED, RED, RED], id="dry-gauges-do-not-dilute"
        ),
    ],
)
def test_gauges_fused_by_max(
    readings: list[tuple[str, float]], expected: list[Level | None]
) -> None:
    items = [obs(d, minute=i, device=g) for i, (g, d) in enumerate(readings)]
    levels, _, _ = run(WaterloggingRule(PARAMS), UNDERPASS, items)
    assert levels == expected


def test_older_or_redelivered_reading_is_ignored() -> None:
    rule = WaterloggingRule(PARAMS)
    _, _, state = run(rule, UNDERPASS, [obs(12, minute=5, seq=50)])
    for stale in (obs(0, minute=4, seq=40), obs(0, minute=5, seq=50)):
        new, change = one(rule.evaluate(UNDERPASS, state, stale))
        assert new is state
        assert change is None


def test_device_reboot_with_lower_seq_but_newer_time_counts() -> None:
    rule = WaterloggingRule(PARAMS)
    levels, _, _ = run(rule, UNDERPASS, [obs(12, minute=5, seq=50), obs(0, minute=6, seq=1)])
    assert levels == [YELLOW, None]


@pytest.mark.parametrize(
    "item",
    [
        pytest.param(obs(50, kind="rain"), id="other-kind"),
        pytest.param(obs(50, key="battery_v"), id="no-depth"),
        pytest.param(obs(math.nan), id="nan-depth"),
        pytest.param(obs(math.inf), id="inf-depth"),
        pytest.param(
            Detection("cam", "camera", T0, "e1", "falling_object", 0.99, None, ("U1",)),
            id="a-detection",
        ),
    ],
)
def test_irrelevant_items_leave_state_alone(item: Observation | Detection) -> None:
    rule = WaterloggingRule(PARAMS)
    state = WaterloggingState(level=YELLOW)
    new, change = one(rule.evaluate(UNDERPASS, state, item))
    assert new is state
    assert change is None


def test_change_title_and_evidence() -> None:
    rule = WaterloggingRule(PARAMS)
    _, changes, _ = run(rule, UNDERPASS, [obs(3, device="g2"), obs(18.5, minute=1, device="g1")])
    change = changes[1]
    assert change is not None
    assert change.title == "Waterlogging 18.5 cm at Renmin Road underpass (north)"
    assert (change.zone_id, change.hazard, change.level) == ("U1", "waterlogging", YELLOW)
    assert change.ts == T0 + timedelta(minutes=1)
    assert [e["device_id"] for e in change.evidence] == ["g1", "g2"]
    assert change.evidence[0]["water_depth_cm"] == 18.5


def test_clear_change() -> None:
    _, changes, _ = run(WaterloggingRule(PARAMS), UNDERPASS, [obs(12), obs(1, minute=1)])
    clear = changes[1]
    assert clear is not None
    assert clear.level is None
    assert clear.title == "Waterlogging cleared at Renmin Road underpass (north): 1.0 cm"


def test_tick_changes_nothing() -> None:
    rule = WaterloggingRule(PARAMS)
    _, _, state = run(rule, UNDERPASS, [obs(35)])
    assert rule.tick(UNDERPASS, state, T0 + timedelta(days=1)) == (state, [])


def test_zone_type_without_thresholds_is_rejected() -> None:
    rule = WaterloggingRule(WaterloggingParams(thresholds={"underpass": UNDERPASS_T}))
    rule.check_zone(UNDERPASS)
    with pytest.raises(ValueError, match="low_road"):
        rule.check_zone(LOW_ROAD)


# --- restore after a restart ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("restored", "readings", "expected"),
    [
        pytest.param(RED, [("g1", 0, 31)], [RED], id="still-high-no-second-alert"),
        pytest.param(RED, [("g1", 0, 29)], [RED], id="within-band-held"),
        pytest.param(YELLOW, [("g1", 0, 25)], [ORANGE], id="escalates-at-once"),
        pytest.param(
            RED,
            [("g1", 0, 0), ("g1", 4, 0), ("g1", 5, 0)],
            [RED, RED, None],
            id="falling-clears-after-hold",
        ),
        pytest.param(
            RED,
            [("g1", 0, 0), ("g2", 2, 33), ("g1", 6, 0)],
            [RED, RED, RED],
            id="first-gauge-cannot-clear-what-others-hold",
        ),
        pytest.param(
            ORANGE, [("g1", 0, 0), ("g1", 6, 15)], [ORANGE, YELLOW], id="de-escalates-after-hold"
        ),
    ],
)
def test_restore(
    restored: Level, readings: list[tuple[str, float, float]], expected: list[Level | None]
) -> None:
    rule = WaterloggingRule(PARAMS)
    items = [obs(d, minute=m, device=g) for g, m, d in readings]
    levels, changes, _ = run(rule, UNDERPASS, items, state=rule.restore(restored))
    assert levels == expected
    assert [c.level for c in changes if c is not None] == emitted(expected, start=restored)


def test_restore_without_hold_clears_on_first_low_reading() -> None:
    rule = WaterloggingRule(PARAMS.model_copy(update={"resume_hold_s": 0}))
    levels, _, _ = run(rule, UNDERPASS, [obs(0)], state=rule.restore(RED))
    assert levels == [None]


# --- properties -----------------------------------------------------------------------------------

ORDER = [BLUE, YELLOW, ORANGE, RED]
THRESH = {BLUE: 5.0, YELLOW: 10.0, ORANGE: 20.0, RED: 30.0}


@given(
    level=st.sampled_from(ORDER),
    data=st.data(),
)
def test_value_inside_band_never_changes_level(level: Level, data: st.DataObject) -> None:
    upper = THRESH[ORDER[ORDER.index(level) + 1]] if level != RED else 1000.0
    reach = data.draw(st.floats(THRESH[level], upper, exclude_max=True))
    band = data.draw(
        st.lists(st.floats(THRESH[level] - HYST, upper, exclude_max=True), max_size=30)
    )
    rule = WaterloggingRule(PARAMS)
    items = [obs(d, minute=i) for i, d in enumerate([reach, *band])]
    levels, changes, _ = run(rule, UNDERPASS, items)
    assert set(levels) == {level}
    assert [c.level for c in changes if c is not None] == [level]


@given(
    readings=st.lists(st.tuples(st.sampled_from(["g1", "g2", "g3"]), st.floats(0, 40)), max_size=40)
)
def test_changes_only_at_transitions(readings: list[tuple[str, float]]) -> None:
    rule = WaterloggingRule(PARAMS)
    items = [obs(d, minute=i, device=g) for i, (g, d) in enumerate(readings)]
    levels, changes, _ = run(rule, UNDERPASS, items)
    prev: Level | None = None
    for level, change in zip(levels, changes, strict=True):
        assert (change is not None) == (level != prev)
        if change is not None:
            assert change.level == level
        prev = level
