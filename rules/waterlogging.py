"""Waterlogging: standing-water depth in underpasses and on low roads.

Per zone, the latest reading of each gauge is kept. The zone depth fuses the gauges that are
trusted (device health) and fresh (``stale_after_s``): the deepest of them, since the worst spot
decides whether a car can pass; a faulty gauge is out of the fusion, so it can neither raise nor
clear a level. With no usable gauge the depth is unknown and the level is held, never cleared.

The zone's level is the most severe of three causes:

- **depth**: the zone type's ``DepthThresholds`` with a hysteresis band of ``hysteresis_cm``;
- **forecast**: the rate of rise, fitted over ``forecast_window_s``, would bring the water to the
  yellow depth within ``forecast_horizon_s``: blue, before the water gets there;
- **rain**: a CMA rainstorm signal over the zone's catchment (``rules.rain``) for an at-risk zone
  type: blue (a watch) on its own, and ``raise_to[signal]`` once the water is at the blue depth.

It clears when all three have: depth under the blue band, no rise towards yellow, no signal.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, ClassVar

from geo.zones import Zone
from rules.base import NO_CONTEXT, AlertChange, Detection, Observation, RuleContext
from rules.hazard import Hazard, HazardRuleBase, Label, Metric, Sensing, Service, level_lines
from rules.hysteresis import anchor_hold, most_severe, resume_hold, step
from rules.levels import Level
from rules.params import DepthThresholds, WaterloggingParams
from rules.rain import Outlook

HAZARD = "waterlogging"
DEPTH_KEY = "water_depth_cm"
HISTORY_STEP_S = 30.0


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

    level: Level | None = None  # what was last emitted
    gauges: tuple[GaugeReading, ...] = ()
    restored: bool = False
    hold_until: datetime | None = None
    depth_level: Level | None = None
    raise_since: datetime | None = None  # a worse depth level has been read since
    forecast: bool = False
    rain_level: Level | None = None  # the rain signal's floor as last applied
    history: tuple[tuple[datetime, float], ...] = ()  # (ts, fused depth) for the rate of rise
    rain_seen: tuple[Level | None, Level | None] = (None, None)  # the outlook last judged on

    @property
    def depth_cm(self) -> float | None:
        return max((g.depth_cm for g in self.gauges), default=None)


def _levels(t: DepthThresholds) -> dict[Level, float]:
    return {Level.BLUE: t.blue_cm, Level.YELLOW: t.yellow_cm, Level.ORANGE: t.orange_cm,
            Level.RED: t.red_cm}


def rise_cm_h(history: tuple[tuple[datetime, float], ...]) -> float:
    """Least-squares slope of depth over time, in cm per hour (0 with fewer than 2 points)."""
    n = len(history)
    if n < 2:
        return 0.0
    t0 = history[0][0]
    xs = [(t - t0).total_seconds() for t, _ in history]
    ys = [d for _, d in history]
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return 0.0
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx * 3600


class WaterloggingRule(HazardRuleBase):
    name: ClassVar[str] = HAZARD
    params_model: ClassVar[type[WaterloggingParams]] = WaterloggingParams

    def __init__(self, params: WaterloggingParams) -> None:
        self.params = params
        self._thresholds = {ztype: _levels(t) for ztype, t in params.thresholds.items()}
        self._stale = timedelta(seconds=params.stale_after_s)
        self._window = timedelta(seconds=params.forecast_window_s)
        self._raise_to = {Level[k.upper()]: Level[v.upper()]
                          for k, v in params.rain.raise_to.items()}

    def check_zone(self, zone: Zone) -> None:
        if zone.type not in self._thresholds:
            raise ValueError(
                f"zone {zone.id!r} has type {zone.type!r} but rules.waterlogging.thresholds "
                f"has only {sorted(self._thresholds)}"
            )

    def rain_changed(self, state: WaterloggingState, outlook: Outlook | None) -> bool:
        """Whether the zone was last judged on another rain signal (only a changed signal can
        change its level)."""
        seen = (None, None) if outlook is None else (outlook.level, outlook.observed)
        return seen != state.rain_seen

    def initial(self) -> WaterloggingState:
        return WaterloggingState()

    def restore(self, level: Level) -> WaterloggingState:
        return WaterloggingState(level=level, depth_level=level, restored=True)

    def level(self, state: WaterloggingState) -> Level | None:
        return state.level

    def deadline(self, state: WaterloggingState) -> datetime | None:  # noqa: ARG002
        return None  # depth changes only with readings; silence is device health's business

    def evaluate(
        self, zone: Zone, state: WaterloggingState, item: Observation | Detection,
        ctx: RuleContext = NO_CONTEXT,
    ) -> tuple[WaterloggingState, list[AlertChange]]:
        if not isinstance(item, Observation) or item.kind != "water":
            return state, []
        depth = item.values.get(DEPTH_KEY)
        if depth is None or not math.isfinite(depth):
            return state, []
        prev = next((g for g in state.gauges if g.device_id == item.device_id), None)
        if prev is not None and (item.ts, item.seq) <= (prev.ts, prev.seq):
            return state, []  # a redelivery or a reading overtaken by a newer one
        reading = GaugeReading(item.device_id, item.ts, item.seq, float(depth))
        gauges = tuple(
            sorted(
                (*(g for g in state.gauges if g.device_id != item.device_id), reading),
                key=lambda g: g.device_id,
            )
        )
        hold_until = anchor_hold(state.restored, state.hold_until, item.ts,
                                 self.params.resume_hold_s)
        return self._assess(zone, state, item.ts, ctx, gauges, hold_until)

    def reassess(self, zone: Zone, state: WaterloggingState, ts: datetime,
                 ctx: RuleContext = NO_CONTEXT) -> tuple[WaterloggingState, list[AlertChange]]:
        """Recompute the level as of ``ts``: after a reading, a change of a gauge's health, or
        of the rain over the catchment."""
        return self._assess(zone, state, ts, ctx, state.gauges, state.hold_until)

    def _assess(self, zone: Zone, state: WaterloggingState, ts: datetime, ctx: RuleContext,
                gauges: tuple[GaugeReading, ...], hold_until: datetime | None
                ) -> tuple[WaterloggingState, list[AlertChange]]:
        """``reassess`` of ``state`` with these gauges and resume hold (a reading's: one new
        state per reading instead of two)."""
        p = self.params
        thresholds = self._thresholds[zone.type]
        used = [g for g in gauges if ctx.trusted(g.device_id) and ts - g.ts <= self._stale]
        depth = max((g.depth_cm for g in used), default=None)

        depth_level, history, forecast = state.depth_level, state.history, False
        raise_since = state.raise_since
        rise = 0.0
        if depth is not None:
            proposed = step(state.depth_level, depth, thresholds, p.hysteresis_cm, rising=True)
            proposed = resume_hold(state.depth_level, proposed, ts, hold_until)
            depth_level, raise_since = self._held(state, proposed, ts, depth, thresholds)
            # One sample per HISTORY_STEP_S is plenty for a slope over minutes, and bounded.
            if not history or (ts - history[-1][0]).total_seconds() >= HISTORY_STEP_S:
                cut = ts - self._window
                history = (*(h for h in history if h[0] >= cut), (ts, depth))
            forecast, rise = self._forecast(state.forecast, depth, history, thresholds)

        rain_level = None
        outlook = ctx.rain(zone.id) if zone.type in p.rain.at_risk_types else None
        if p.rain.enabled and outlook is not None and outlook.level is not None:
            # Rain alone is a watch (a nowcast may overshoot a short shower); rain that has
            # already fallen, with water already at the blue depth, raises the level.
            rain_level = Level.BLUE
            if depth_level is not None and outlook.observed is not None:
                rain_level = most_severe(rain_level,
                                         self._raise_to.get(outlook.observed, Level.BLUE))

        level = most_severe(depth_level, Level.BLUE if forecast else None, rain_level)
        if depth is None:
            # No usable gauge: unknown is not clear. Hold what was raised until one reports.
            level = most_severe(level, state.level)
        seen = (None, None) if outlook is None else (outlook.level, outlook.observed)
        new = replace(state, level=level, depth_level=depth_level, forecast=forecast,
                      rain_level=rain_level, history=history, raise_since=raise_since,
                      rain_seen=seen, gauges=gauges, hold_until=hold_until)
        if level == state.level:
            return new, []
        title = self._title(zone, level, depth, depth_level, forecast, rise, rain_level,
                            thresholds)
        evidence: list[dict[str, Any]] = [g.evidence() for g in used]
        if depth is not None and (level == depth_level or (forecast and level == Level.BLUE)):
            # The gauge that sets the zone depth (the deepest): the one the alert rests on.
            deepest = max(range(len(used)), key=lambda i: used[i].depth_cm)
            evidence[deepest]["role"] = "deepest"
        if forecast:
            evidence.append({"forecast": "rising", "rise_cm_h": round(rise, 1),
                             "yellow_cm": thresholds[Level.YELLOW]})
        if rain_level is not None and outlook is not None:
            evidence.append({"rain_signal": outlook.level.colour if outlook.level else None,
                             "rain_mm": outlook.projected_mm, "rain_rate_mm_h":
                             outlook.rate_mm_h, "rain_gauges": list(outlook.gauges)})
        return new, [AlertChange(zone.id, HAZARD, level, ts, title, tuple(evidence))]

    def _held(self, state: WaterloggingState, proposed: Level | None, ts: datetime,
              depth: float, thresholds: dict[Level, float]
              ) -> tuple[Level | None, datetime | None]:
        """A worse depth level counts at once ``raise_margin_cm`` over its threshold, and just
        over it once read for ``raise_hold_s``: one noisy reading at a threshold is not a
        crossing. Better levels count at once (the hysteresis band guards them)."""
        current = state.depth_level
        if proposed is None or not proposed.more_severe_than(current):
            return proposed, None
        if depth >= thresholds[proposed] + self.params.raise_margin_cm:
            return proposed, None
        since = state.raise_since or ts
        if (ts - since).total_seconds() >= self.params.raise_hold_s:
            return proposed, None
        return current, since

    def _forecast(self, was: bool, depth: float, history: tuple[tuple[datetime, float], ...],
                  thresholds: dict[Level, float]) -> tuple[bool, float]:
        p = self.params
        yellow = thresholds[Level.YELLOW]
        if p.forecast_horizon_s <= 0 or depth >= yellow or len(history) < p.forecast_min_points:
            return False, 0.0
        if depth <= 0 and all(d <= 0 for _, d in history):
            return False, 0.0  # dry: nothing rises
        rise = rise_cm_h(history)
        # Once on, it holds at half the rise and twice the horizon: no flapping on noise.
        min_rise = p.forecast_min_rise_cm_h * (0.5 if was else 1.0)
        horizon_h = p.forecast_horizon_s / 3600 * (2.0 if was else 1.0)
        if rise < min_rise:
            return False, rise
        return (yellow - depth) / rise <= horizon_h, rise

    @staticmethod
    def _title(zone: Zone, level: Level | None, depth: float | None, depth_level: Level | None,
               forecast: bool, rise: float, rain_level: Level | None,
               thresholds: dict[Level, float]) -> str:
        shown = "depth unknown" if depth is None else f"{depth:.1f} cm"
        if level is None:
            return f"Waterlogging cleared at {zone.name}: {shown}"
        if level == depth_level:
            return f"Waterlogging {shown} at {zone.name}"
        if forecast and level == Level.BLUE:
            yellow = thresholds[Level.YELLOW]
            minutes = (yellow - (depth or 0.0)) / rise * 60 if rise > 0 else math.inf
            return (f"Waterlogging forecast at {zone.name}: {shown}, rising {rise:.0f} cm/h, "
                    f"yellow ({yellow:g} cm) in about {minutes:.0f} min")
        if rain_level is not None:
            return f"Rainstorm over the catchment of {zone.name}: {shown}, low point at risk"
        return f"Waterlogging {shown} at {zone.name} (held: no gauge can be trusted)"

    def tick(
        self,
        zone: Zone,  # noqa: ARG002 -- the ZoneRule interface
        state: WaterloggingState,
        now: datetime,  # noqa: ARG002
        ctx: RuleContext = NO_CONTEXT,  # noqa: ARG002
    ) -> tuple[WaterloggingState, list[AlertChange]]:
        return state, []


def _chart_lines(rules: Mapping[str, Any], zone_type: str) -> dict[str, float]:
    return level_lines(rules.get(HAZARD, {}).get("thresholds", {}).get(zone_type), "cm")


def _appeal(found: frozenset[str]) -> bool:
    # Water, or a drain overflowing onto the street.
    return "water" in found or ("overflow" in found and "drain" in found)


WATERLOGGING = Hazard(
    name=HAZARD,
    params_model=WaterloggingParams,
    rule=WaterloggingRule,
    zone_types=("underpass", "low_road"),
    label=Label("Waterlogging", "积水"),
    # Met ("meteorological, including flood") and Transport: the zones are underpasses and low
    # roads, and the action is closing them.
    cap_event="Urban waterlogging",
    cap_categories=("Met", "Transport"),
    service=Service("Waterlogging", "Standing water on a road or in an underpass, measured by "
                    "water-depth gauges or reported by grid workers.",
                    ("flood", "waterlogging", "standing water", "underpass", "drainage"),
                    "Streets"),
    instruction="Check the water level on site; close the road or underpass to vehicles if "
                "deeper than the posted limit; open drains or start pumps.",
    sensing=Sensing(kinds=("water",)),
    sensor_backed=True,
    metric=Metric(DEPTH_KEY, Label("cm", "厘米"), "above", Label("water", "水深"), _chart_lines),
    resident_words=Label("standing water", "积水"),
    appeal_match=_appeal,
)
