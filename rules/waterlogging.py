"""Waterlogging: standing-water depth in underpasses and on low roads.

Per zone, the latest reading of each gauge is kept; the zone depth is the deepest of them (the
worst spot decides whether a car can pass). The depth maps to a level through the zone type's
``DepthThresholds`` with a hysteresis band of ``hysteresis_cm``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, ClassVar

from geo.zones import Zone
from rules.base import AlertChange, Detection, Observation
from rules.hysteresis import anchor_hold, resume_hold, step
from rules.levels import Level
from rules.params import DepthThresholds, WaterloggingParams

HAZARD = "waterlogging"
DEPTH_KEY = "water_depth_cm"


@dataclass(frozen=True, slots=True)
class GaugeReading:
    device_id: str
    ts: datetime
    seq: int
    depth_cm: float

    def evidence(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "seq": self.seq,
            "ts": self.ts.isoformat(),
            DEPTH_KEY: self.depth_cm,
        }


@dataclass(frozen=True, slots=True)
class WaterloggingState:
    """One zone's state. ``gauges`` holds the latest reading per gauge, ordered by device id."""

    level: Level | None = None
    gauges: tuple[GaugeReading, ...] = ()
    restored: bool = False
    hold_until: datetime | None = None

    @property
    def depth_cm(self) -> float | None:
        return max((g.depth_cm for g in self.gauges), default=None)


def _levels(t: DepthThresholds) -> dict[Level, float]:
    return {Level.BLUE: t.blue_cm, Level.YELLOW: t.yellow_cm, Level.ORANGE: t.orange_cm,
            Level.RED: t.red_cm}


class WaterloggingRule:
    name: ClassVar[str] = HAZARD
    params_model: ClassVar[type[WaterloggingParams]] = WaterloggingParams

    def __init__(self, params: WaterloggingParams) -> None:
        self.params = params
        self._thresholds = {ztype: _levels(t) for ztype, t in params.thresholds.items()}

    def check_zone(self, zone: Zone) -> None:
        if zone.type not in self._thresholds:
            raise ValueError(
                f"zone {zone.id!r} has type {zone.type!r} but rules.waterlogging.thresholds "
                f"has only {sorted(self._thresholds)}"
            )

    def initial(self) -> WaterloggingState:
        return WaterloggingState()

    def restore(self, level: Level) -> WaterloggingState:
        return WaterloggingState(level=level, restored=True)

    def level(self, state: WaterloggingState) -> Level | None:
        return state.level

    def evaluate(
        self, zone: Zone, state: WaterloggingState, item: Observation | Detection
    ) -> tuple[WaterloggingState, AlertChange | None]:
        if not isinstance(item, Observation) or item.kind != "water":
            return state, None
        depth = item.values.get(DEPTH_KEY)
        if depth is None or not math.isfinite(depth):
            return state, None
        prev = next((g for g in state.gauges if g.device_id == item.device_id), None)
        if prev is not None and (item.ts, item.seq) <= (prev.ts, prev.seq):
            return state, None  # a redelivery or a reading overtaken by a newer one
        reading = GaugeReading(item.device_id, item.ts, item.seq, float(depth))
        gauges = tuple(
            sorted(
                (*(g for g in state.gauges if g.device_id != item.device_id), reading),
                key=lambda g: g.device_id,
            )
        )
        zone_depth = max(g.depth_cm for g in gauges)
        hold_until = anchor_hold(state.restored, state.hold_until, item.ts,
                                 self.params.resume_hold_s)
        proposed = step(state.level, zone_depth, self._thresholds[zone.type],
                        self.params.hysteresis_cm, rising=True)
        level = resume_hold(state.level, proposed, item.ts, hold_until)
        new = replace(state, level=level, gauges=gauges, hold_until=hold_until)
        if level == state.level:
            return new, None
        if level is None:
            title = f"Waterlogging cleared at {zone.name}: {zone_depth:.1f} cm"
        else:
            title = f"Waterlogging {zone_depth:.1f} cm at {zone.name}"
        evidence = tuple(g.evidence() for g in gauges)
        return new, AlertChange(zone.id, HAZARD, level, item.ts, title, evidence)

    def tick(
        self,
        zone: Zone,  # noqa: ARG002 -- the ZoneRule interface
        state: WaterloggingState,
        now: datetime,  # noqa: ARG002
    ) -> tuple[WaterloggingState, AlertChange | None]:
        # Depth changes only with readings; a silent gauge is the device-health rule's business.
        return state, None
