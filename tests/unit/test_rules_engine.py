"""Engine: routing to zones and hazards, immutable state, tick, restore, determinism."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from itertools import pairwise

import pytest
from hypothesis import given
from hypothesis import strategies as st
from shapely.geometry import box

from geo.zones import Zone
from rules.base import AlertChange, Detection, Observation
from rules.engine import Engine, EngineConfigError, EngineState
from rules.levels import Level
from rules.params import DepthThresholds, RulesParams, WaterloggingParams

T0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
RED, ORANGE, YELLOW, BLUE = Level.RED, Level.ORANGE, Level.YELLOW, Level.BLUE

PARAMS = RulesParams(
    waterlogging=WaterloggingParams(
        thresholds={
            "underpass": DepthThresholds(blue_cm=5, yellow_cm=10, orange_cm=20, red_cm=30),
            "low_road": DepthThresholds(blue_cm=3, yellow_cm=8, orange_cm=15, red_cm=25),
        },
        hysteresis_cm=2,
        resume_hold_s=300,
    ),
)


def _zone(zid: str, name: str, ztype: str, x: float) -> Zone:
    # Boxes along a street; U1 and L1 overlap so one gauge can sit in both.
    return Zone(zid, name, ztype, box(120.600 + x, 31.300, 120.602 + x, 31.302), parent_id="D1")


ZONES = {
    z.id: z
    for z in (
        _zone("U1", "Renmin Road underpass (north)", "underpass", 0.000),
        _zone("L1", "Renmin Road low section", "low_road", 0.001),
        _zone("F1", "Tower B-0042 east facade", "fall_zone", 0.010),
        _zone("I1", "Renmin Rd / Ganjiang Rd", "intersection", 0.020),
        _zone("S1", "Ganjiang Rd east", "road_segment", 0.030),
        Zone("D1", "Gusu district", "district", box(120.5, 31.2, 120.7, 31.4)),
    )
}
ENGINE = Engine(PARAMS, ZONES)

Item = Observation | Detection | datetime  # a datetime stands for a tick


def water(
    depth: float, zones: Sequence[str] = ("U1",), minute: float = 0, device: str = "w1"
) -> Observation:
    return Observation(
        device,
        "water",
        T0 + timedelta(minutes=minute),
        int(minute * 10),
        {"water_depth_cm": depth},
        None,
        tuple(zones),
    )


def speed(
    kmh: float, zones: Sequence[str] = ("I1",), minute: float = 0, device: str = "t1"
) -> Observation:
    values = {"flow_veh_h": 600.0, "speed_kmh": kmh, "occupancy_pct": 20.0}
    return Observation(
        device,
        "traffic",
        T0 + timedelta(minutes=minute),
        int(minute * 10),
        values,
        None,
        tuple(zones),
    )


def detection(type_: str, confidence: float, zones: Sequence[str], minute: float = 0) -> Detection:
    ts = T0 + timedelta(minutes=minute)
    return Detection("cam-03", "camera", ts, f"e-{minute:g}", type_, confidence, None, tuple(zones))


def tick(minute: float) -> datetime:
    return T0 + timedelta(minutes=minute)


def feed(
    engine: Engine, items: Sequence[Item], state: EngineState | None = None
) -> tuple[list[list[AlertChange]], EngineState]:
    state = EngineState() if state is None else state
    out: list[list[AlertChange]] = []
    for item in items:
        if isinstance(item, datetime):
            state, changes = engine.tick(state, item)
        else:
            state, changes = engine.evaluate(state, item)
        out.append(changes)
    return out, state


def brief(changes: list[AlertChange]) -> list[tuple[str, str, Level | None]]:
    return [(c.zone_id, c.hazard, c.level) for c in changes]


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        pytest.param(
            water(16, ["U1", "L1"]),
            [("U1", "waterlogging", YELLOW), ("L1", "waterlogging", ORANGE)],
            id="gauge-in-two-zones-counts-for-each-with-its-thresholds",
        ),
        pytest.param(
            water(16, ["D1", "U1"]), [("U1", "waterlogging", YELLOW)], id="district-has-no-hazard"
        ),
        pytest.param(
            water(16, ["U1", "U1"]), [("U1", "waterlogging", YELLOW)], id="duplicate-zone-once"
        ),
        pytest.param(water(16, ["X9"]), [], id="unknown-zone-ignored"),
        pytest.param(water(16, ["I1"]), [], id="water-in-traffic-zone-ignored"),
        pytest.param(
            detection("falling_object", 0.95, ["F1", "D1"]),
            [("F1", "falling_object", RED)],
            id="falling-object",
        ),
        pytest.param(detection("falling_object", 0.95, ["U1"]), [], id="no-fall-zone"),
        pytest.param(
            speed(10, ["I1", "S1"]),
            [("I1", "traffic", ORANGE), ("S1", "traffic", ORANGE)],
            id="speed-in-both-traffic-zone-types",
        ),
        pytest.param(
            detection("incident", 0.8, ["S1"]), [("S1", "traffic", ORANGE)], id="incident"
        ),
        pytest.param(detection("incident", 0.5, ["S1"]), [], id="weak-incident"),
    ],
)
def test_routing(item: Observation | Detection, expected: list[tuple[str, str, Level]]) -> None:
    state, changes = ENGINE.evaluate(EngineState(), item)
    assert brief(changes) == expected
    assert ENGINE.current_levels(state) == {(z, h): lvl for z, h, lvl in expected}


def test_irrelevant_item_leaves_the_rule_states_alone() -> None:
    state, _ = ENGINE.evaluate(EngineState(), water(16))
    new, changes = ENGINE.evaluate(state, water(17, ["I1", "F1", "X9"], minute=1))
    assert new.rules is state.rules  # only the event-time bookkeeping moved on
    assert changes == []


def test_old_state_survives_evaluate_and_tick() -> None:
    # The caller keeps the old state when committing the changes fails.
    old, _ = ENGINE.evaluate(EngineState(), detection("falling_object", 0.8, ["F1"]))
    before = dict(old.rules)
    new, changes = ENGINE.evaluate(old, water(35, ["U1"], minute=1))
    newer, cleared = ENGINE.tick(new, tick(60))
    assert dict(old.rules) == before
    assert ENGINE.current_levels(old) == {("F1", "falling_object"): ORANGE}
    assert brief(changes) == [("U1", "waterlogging", RED)]
    assert brief(cleared) == [("F1", "falling_object", None)]
    assert ENGINE.current_levels(newer) == {("U1", "waterlogging"): RED}
    with pytest.raises(TypeError):
        old.rules[("U1", "waterlogging")] = None  # type: ignore[index]


@pytest.mark.parametrize(
    ("items", "expected"),
    [
        pytest.param(
            [water(12, minute=0), water(9, minute=1), water(7.9, minute=2), water(1, minute=3)],
            [
                [("U1", "waterlogging", YELLOW)],
                [],
                [("U1", "waterlogging", BLUE)],
                [("U1", "waterlogging", None)],
            ],
            id="waterlogging-hysteresis",
        ),
        pytest.param(
            [detection("falling_object", 0.8, ["F1"]), tick(14), tick(15)],
            [[("F1", "falling_object", ORANGE)], [], [("F1", "falling_object", None)]],
            id="falling-object-cleared-by-tick",
        ),
        pytest.param(
            [
                detection("falling_object", 0.8, ["F1"], minute=0),
                detection("incident", 0.8, ["S1", "I1"], minute=1),
                tick(40),
            ],
            [
                [("F1", "falling_object", ORANGE)],
                [("S1", "traffic", ORANGE), ("I1", "traffic", ORANGE)],
                [("F1", "falling_object", None), ("I1", "traffic", None), ("S1", "traffic", None)],
            ],
            id="tick-clears-in-due-order-ties-by-key",
        ),
    ],
)
def test_sequences(items: list[Item], expected: list[list[tuple[str, str, Level | None]]]) -> None:
    out, _ = feed(ENGINE, items)
    assert [brief(c) for c in out] == expected


# --- restore --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("levels", "items", "expected"),
    [
        pytest.param(
            {("U1", "waterlogging"): RED},
            [water(31)],
            [[]],
            id="still-high-reading-opens-no-second-alert",
        ),
        pytest.param(
            {("U1", "waterlogging"): RED},
            [water(0, minute=0), water(0, minute=6)],
            [[], [("U1", "waterlogging", None)]],
            id="falling-reading-clears-restored-alert",
        ),
        pytest.param(
            {("U1", "waterlogging"): YELLOW},
            [water(21)],
            [[("U1", "waterlogging", ORANGE)]],
            id="escalates-restored-alert",
        ),
        pytest.param(
            {("F1", "falling_object"): ORANGE},
            [tick(0), tick(14), tick(15)],
            [[], [], [("F1", "falling_object", None)]],
            id="restored-falling-object-clears-after-quiet-period",
        ),
        pytest.param(
            {("I1", "traffic"): YELLOW},
            [speed(24), speed(50, minute=6)],
            [[], [("I1", "traffic", None)]],
            id="traffic",
        ),
    ],
)
def test_restore(
    levels: dict[tuple[str, str], Level],
    items: list[Item],
    expected: list[list[tuple[str, str, Level | None]]],
) -> None:
    state = ENGINE.restore(levels)
    assert ENGINE.current_levels(state) == levels
    out, _ = feed(ENGINE, items, state)
    assert [brief(c) for c in out] == expected


def test_restore_skips_what_the_zones_do_not_carry() -> None:
    state = ENGINE.restore(
        {
            ("X9", "waterlogging"): RED,  # zone gone from the zone file
            ("U1", "traffic"): RED,  # hazard the zone does not carry
            ("U1", "waterlogging"): BLUE,
        }
    )
    assert ENGINE.current_levels(state) == {("U1", "waterlogging"): BLUE}


def test_restore_round_trip() -> None:
    items: list[Item] = [
        water(16, ["U1", "L1"]),
        detection("falling_object", 0.95, ["F1"]),
        speed(20, ["I1"]),
    ]
    _, state = feed(ENGINE, items)
    levels = ENGINE.current_levels(state)
    assert ENGINE.current_levels(ENGINE.restore(levels)) == levels


# --- construction ---------------------------------------------------------------------------------


def test_zone_type_without_thresholds_is_rejected() -> None:
    params = PARAMS.model_copy(
        update={
            "waterlogging": WaterloggingParams(
                thresholds={
                    "low_road": DepthThresholds(blue_cm=3, yellow_cm=8, orange_cm=15, red_cm=25)
                }
            )
        }
    )
    with pytest.raises(EngineConfigError, match=r"'U1'.*'underpass'"):
        Engine(params, ZONES)


def test_zone_filed_under_another_id_is_rejected() -> None:
    with pytest.raises(EngineConfigError, match="filed under 'U2'"):
        Engine(PARAMS, {"U2": ZONES["U1"]})


# --- properties -----------------------------------------------------------------------------------

_minute = st.floats(0, 180)
_zone_ids = st.lists(st.sampled_from([*ZONES, "X9"]), max_size=3).map(tuple)
_items = st.one_of(
    st.builds(water, st.floats(0, 40), _zone_ids, _minute, st.sampled_from(["w1", "w2"])),
    st.builds(speed, st.floats(0, 80), _zone_ids, _minute, st.sampled_from(["t1", "t2"])),
    st.builds(
        detection,
        st.sampled_from(["falling_object", "incident"]),
        st.floats(0, 1),
        _zone_ids,
        _minute,
    ),
    st.builds(tick, _minute),
)


def _sorted(items: list[Item]) -> list[Item]:
    # Time moves forward for ticks, as it does in the service.
    return sorted(items, key=lambda i: i if isinstance(i, datetime) else i.ts)


@given(st.lists(_items, max_size=40))
def test_engine_is_deterministic(items: list[Item]) -> None:
    items = _sorted(items)
    out_a, state_a = feed(Engine(PARAMS, ZONES), items)
    out_b, state_b = feed(Engine(PARAMS, ZONES), items)
    assert out_a == out_b
    assert state_a == state_b


@given(st.lists(_items, max_size=40))
def test_changes_only_at_transitions(items: list[Item]) -> None:
    out, state = feed(ENGINE, _sorted(items))
    per_key: dict[tuple[str, str], list[Level | None]] = {}
    for change in (c for changes in out for c in changes):
        per_key.setdefault((change.zone_id, change.hazard), []).append(change.level)
    for levels in per_key.values():
        assert levels[0] is not None  # nothing to clear before a first alert
        assert all(a != b for a, b in pairwise(levels))
    final = {key: levels[-1] for key, levels in per_key.items() if levels[-1] is not None}
    assert ENGINE.current_levels(state) == final
