"""Threshold levels with a hysteresis band, shared by the measured hazards.

A level is *reached* when the value crosses its threshold and *held* until the value leaves the
band beyond it, so a reading wobbling around a threshold does not open and clear alerts in turn.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime, timedelta

from rules.levels import Level


def step(
    current: Level | None,
    value: float,
    thresholds: Mapping[Level, float],
    band: float,
    *,
    rising: bool,
) -> Level | None:
    """The level after ``value``, given the level held before it.

    ``rising=True`` (water depth): a level is reached at ``value >= threshold`` and held while
    ``value >= threshold - band``. ``rising=False`` (speed): reached at ``value < threshold`` and
    held while ``value <= threshold + band``. ``thresholds`` may hold any subset of the levels.
    """
    if not math.isfinite(value):
        # NaN compares false with everything and would read as "clear"; callers filter it first.
        raise ValueError(f"expected a finite value, got {value!r}")
    order = sorted(thresholds)  # most severe first: Level.RED == 1

    def reached(level: Level) -> bool:
        t = thresholds[level]
        return value >= t if rising else value < t

    def held(level: Level) -> bool:
        t = thresholds[level]
        return value >= t - band if rising else value <= t + band

    raw = next((lvl for lvl in order if reached(lvl)), None)
    if raw is not None and raw.more_severe_than(current):
        return raw
    if current is None:
        return None
    # Falling back: the most severe level no higher than the current one whose band still holds.
    return next((lvl for lvl in order if lvl >= current and held(lvl)), None)


def most_severe(*levels: Level | None) -> Level | None:
    present = [lvl for lvl in levels if lvl is not None]
    return min(present) if present else None


def resume_hold(
    current: Level | None,
    proposed: Level | None,
    ts: datetime,
    hold_until: datetime | None,
) -> Level | None:
    """While a restored level settles (``ts < hold_until``) only escalations pass.

    After a restart the rule knows the level but not the other sensors' readings; the first sensor
    to report must not clear an alert the others would still hold.
    """
    if hold_until is not None and ts < hold_until:
        return proposed if proposed is not None and proposed.more_severe_than(current) else current
    return proposed


def anchor_hold(
    restored: bool, hold_until: datetime | None, ts: datetime, hold_s: float
) -> datetime | None:
    """The end of the settling time: fixed by the first reading after a restore."""
    if restored and hold_until is None:
        return ts + timedelta(seconds=hold_s)
    return hold_until
