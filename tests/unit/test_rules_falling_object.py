"""Falling-object rule: confidence to level, escalation, keep-alive, clearing by tick, restore."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Literal, TypeVar

import pytest
from hypothesis import given
from hypothesis import strategies as st
from shapely.geometry import box

from geo.zones import Zone
from rules.base import AlertChange, Detection, Observation
from rules.falling_object import FallingObjectRule, FallingObjectState
from rules.levels import Level
from rules.params import FallingObjectParams

S = TypeVar("S")


def one(result: tuple[S, list[AlertChange]]) -> tuple[S, AlertChange | None]:
    """A rule's (state, changes) as (state, the change or None): one hazard, one change."""
    state, changes = result
    assert len(changes) <= 1
    return state, changes[0] if changes else None


T0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
RED, ORANGE = Level.RED, Level.ORANGE
PARAMS = FallingObjectParams(min_confidence=0.7, red_confidence=0.9, clear_after_s=900)
FALL_ZONE = Zone("F1", "Tower B-0042 east facade", "fall_zone", box(120.62, 31.31, 120.63, 31.32))

# A step is ("det", seconds, confidence) or ("tick", seconds); the expectation per step is
# the emitted level (None = cleared) or NO for "no change".
NO: Literal["-"] = "-"
Step = tuple[str, float] | tuple[str, float, float | None]


def det(
    seconds: float, confidence: float | None, type_: str = "falling_object", **attrs: object
) -> Detection:
    return Detection(
        device_id="cam-03",
        kind="camera",
        ts=T0 + timedelta(seconds=seconds),
        event_id=f"cam-03-{seconds:g}",
        type=type_,
        confidence=confidence,
        position=(120.625, 31.315),
        zone_ids=("F1",),
        attrs=attrs,
    )


def run(
    rule: FallingObjectRule, steps: list[Step], state: FallingObjectState | None = None
) -> tuple[list[Level | str | None], FallingObjectState]:
    state = rule.initial() if state is None else state
    out: list[Level | str | None] = []
    for kind, seconds, *confidence in steps:
        if kind == "det":
            state, change = one(rule.evaluate(FALL_ZONE, state, det(seconds, confidence[0])))
        else:
            state, change = one(rule.tick(FALL_ZONE, state, T0 + timedelta(seconds=seconds)))
        out.append(NO if change is None else change.level)
    return out, state


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        pytest.param([("det", 0, 0.5)], [NO], id="below-min-only-logged"),
        pytest.param([("det", 0, None)], [NO], id="no-confidence"),
        pytest.param([("det", 0, math.nan)], [NO], id="nan-confidence"),
        pytest.param([("det", 0, 0.7)], [ORANGE], id="min-confidence-orange"),
        pytest.param([("det", 0, 0.89)], [ORANGE], id="below-red-orange"),
        pytest.param([("det", 0, 0.9)], [RED], id="red-confidence-red"),
        pytest.param([("det", 0, 0.8), ("det", 5, 0.95)], [ORANGE, RED], id="escalates"),
        pytest.param([("det", 0, 0.95), ("det", 5, 0.8)], [RED, NO], id="never-de-escalates"),
        pytest.param([("det", 0, 0.8), ("det", 5, 0.8)], [ORANGE, NO], id="repeat-no-change"),
        pytest.param(
            [("det", 0, 0.8), ("tick", 899), ("tick", 900)], [ORANGE, NO, None], id="clears-on-time"
        ),
        pytest.param(
            [("det", 0, 0.8), ("det", 600, 0.75), ("tick", 900), ("tick", 1499), ("tick", 1500)],
            [ORANGE, NO, NO, NO, None],
            id="repeat-keeps-alive",
        ),
        pytest.param(
            [("det", 0, 0.8), ("det", 600, 0.5), ("tick", 900)],
            [ORANGE, NO, None],
            id="weak-detection-does-not-keep-alive",
        ),
        pytest.param(
            [("det", 600, 0.8), ("det", 0, 0.8), ("tick", 1499), ("tick", 1500)],
            [ORANGE, NO, NO, None],
            id="late-older-detection-does-not-shorten",
        ),
        pytest.param(
            [("det", 0, 0.8), ("tick", 900), ("tick", 2000), ("det", 2100, 0.8)],
            [ORANGE, None, NO, ORANGE],
            id="raises-again-after-clearing",
        ),
        pytest.param([("tick", 0), ("tick", 10_000)], [NO, NO], id="tick-without-alert"),
    ],
)
def test_sequences(steps: list[Step], expected: list[Level | str | None]) -> None:
    out, _ = run(FallingObjectRule(PARAMS), steps)
    assert out == expected


@pytest.mark.parametrize(
    "item",
    [
        pytest.param(det(0, 0.99, type_="report"), id="other-detection-type"),
        pytest.param(
            Observation("w1", "water", T0, 1, {"water_depth_cm": 80.0}, None, ("F1",)),
            id="an-observation",
        ),
    ],
)
def test_irrelevant_items_leave_state_alone(item: Observation | Detection) -> None:
    rule = FallingObjectRule(PARAMS)
    state = rule.initial()
    new, change = one(rule.evaluate(FALL_ZONE, state, item))
    assert new is state
    assert change is None


def test_change_title_and_evidence() -> None:
    rule = FallingObjectRule(PARAMS)
    _, change = one(rule.evaluate(
        FALL_ZONE, rule.initial(), det(2.4, 0.93, building_id="B-0042", floor=17)
    ))
    assert change is not None
    assert (change.zone_id, change.hazard, change.level) == ("F1", "falling_object", RED)
    assert change.ts == T0 + timedelta(seconds=2.4)
    assert (
        change.title == "Falling object from B-0042 floor 17 at Tower B-0042 east facade "
        "(confidence 0.93)"
    )
    (evidence,) = change.evidence
    assert evidence["event_id"] == "cam-03-2.4"
    assert evidence["building_id"] == "B-0042"
    assert evidence["impact"] == [120.625, 31.315]


def test_clear_change_carries_the_time_it_fell_due() -> None:
    # Not the tick's time: the same alerts whatever the tick rate (event time).
    rule = FallingObjectRule(PARAMS)
    state, _ = one(rule.evaluate(FALL_ZONE, rule.initial(), det(0, 0.8)))
    now = T0 + timedelta(hours=1)
    _, change = one(rule.tick(FALL_ZONE, state, now))
    assert change is not None
    assert change.level is None
    assert change.ts == T0 + timedelta(seconds=PARAMS.clear_after_s)
    assert "cleared" in change.title


@pytest.mark.parametrize(
    ("restored", "steps", "expected"),
    [
        pytest.param(
            RED,
            [("tick", 0), ("tick", 899), ("tick", 900)],
            [NO, NO, None],
            id="quiet-period-starts-at-first-tick",
        ),
        pytest.param(ORANGE, [("det", 0, 0.8)], [NO], id="repeat-opens-no-second-alert"),
        pytest.param(ORANGE, [("det", 0, 0.95)], [RED], id="escalates"),
        pytest.param(
            RED,
            [("det", 0, 0.8), ("tick", 899), ("tick", 900)],
            [NO, NO, None],
            id="detection-sets-the-clock",
        ),
    ],
)
def test_restore(restored: Level, steps: list[Step], expected: list[Level | str | None]) -> None:
    rule = FallingObjectRule(PARAMS)
    out, _ = run(rule, steps, state=rule.restore(restored))
    assert out == expected


@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("det"), st.floats(0, 5000), st.floats(0, 1)),
            st.tuples(st.just("tick"), st.floats(0, 5000)),
        ),
        max_size=40,
    )
)
def test_changes_only_at_transitions(steps: list[Step]) -> None:
    # Time moves forward, as it does for the engine.
    steps = sorted(steps, key=lambda s: s[1])
    rule = FallingObjectRule(PARAMS)
    out, state = run(rule, steps)
    emitted = [lvl for lvl in out if lvl != NO]
    assert all(a != b for a, b in pairwise(emitted))
    if emitted:
        assert emitted[-1] == state.level
    else:
        assert state.level is None
