"""High wind at height: a hazard plug-in, one module (``rules.hazard.Hazard``).

Gusts at roof height blow loose things (flower pots, drying racks, scaffolding boards, loose
cladding) off tall buildings into the street. A roof-top wind gauge (``wind_gauge.WindGauge``,
kind ``wind``) feeds the fall zones within ``REACH_M`` of it: the zones below its tower and its
neighbours'. The zone's gust is the strongest of its gauges' latest gusts (``wind_gust_m_s``,
else the mean ``wind_speed_m_s``) that are fresh and trusted; its level follows the gust's
thresholds with a hysteresis band. With no usable gauge the level is held: unknown is not calm.

Thresholds by default are the Beaufort scale's: blue at 10.8 m/s (6, strong breeze: loose light
objects move), yellow at 13.9 (7, near gale), orange at 17.2 (8, gale: twigs and loose tiles go),
red at 24.5 (10, storm: structural damage).

Register it with the gauge, in ``config.yaml``::

    plugins: ["wind_gauge:WindGauge", "wind_hazard:WIND_AT_HEIGHT"]
    rules:
      wind_at_height: {yellow_m_s: 15}      # optional: WindParams, defaults otherwise
    routing:
      - {hazard: wind_at_height, zone_type: fall_zone, department: gusu-building,
         team: building-mgmt-1}

or from an installed package, with entry points ``citywatch.devices`` (``wind``) and
``citywatch.hazards`` (``wind_at_height = "wind_hazard:WIND_AT_HEIGHT"``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from geo.zones import Zone
from rules.base import NO_CONTEXT, AlertChange, Detection, Observation, RuleContext
from rules.hazard import Hazard, HazardRuleBase, Label, Metric, Sensing, Service, level_lines
from rules.hysteresis import step
from rules.levels import Level

HAZARD = "wind_at_height"
KIND = "wind"
GUST_KEY = "wind_gust_m_s"
SPEED_KEY = "wind_speed_m_s"
REACH_M = 250.0  # a roof gauge speaks for the fall zones this close to it


class WindParams(BaseModel):
    """Gust thresholds in m/s (each above the one before)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    blue_m_s: float = Field(default=10.8, gt=0, description="watch: loose light objects move")
    yellow_m_s: float = Field(default=13.9, gt=0, description="near gale")
    orange_m_s: float = Field(default=17.2, gt=0, description="gale")
    red_m_s: float = Field(default=24.5, gt=0, description="storm")
    hysteresis_m_s: float = Field(
        default=2.0, ge=0, description="a level clears only when gusts fall this far below it")
    stale_after_s: float = Field(
        default=900, gt=0, description="a gauge's last reading counts this long")

    @model_validator(mode="after")
    def _increasing(self) -> Self:
        if not self.blue_m_s < self.yellow_m_s < self.orange_m_s < self.red_m_s:
            raise ValueError("expected blue_m_s < yellow_m_s < orange_m_s < red_m_s")
        return self


@dataclass(frozen=True, slots=True)
class GustReading:
    device_id: str
    ts: datetime
    seq: int
    gust_m_s: float

    def evidence(self) -> dict[str, Any]:
        return {"device_id": self.device_id, "seq": self.seq, "ts": self.ts.isoformat(),
                GUST_KEY: self.gust_m_s}


@dataclass(frozen=True, slots=True)
class WindState:
    level: Level | None = None
    gauges: tuple[GustReading, ...] = ()  # the latest per gauge, by device id


class WindAtHeightRule(HazardRuleBase):
    name: ClassVar[str] = HAZARD

    def __init__(self, params: WindParams) -> None:
        self.params = params
        self._thresholds = {Level.BLUE: params.blue_m_s, Level.YELLOW: params.yellow_m_s,
                            Level.ORANGE: params.orange_m_s, Level.RED: params.red_m_s}
        self._stale = timedelta(seconds=params.stale_after_s)

    def check_zone(self, zone: Zone) -> None:
        pass  # one set of thresholds for every fall zone

    def initial(self) -> WindState:
        return WindState()

    def restore(self, level: Level) -> WindState:
        return WindState(level=level)

    def deadline(self, state: WindState) -> datetime | None:  # noqa: ARG002
        return None  # gusts change with readings; a silent gauge is device health's business

    def evaluate(self, zone: Zone, state: WindState, item: Observation | Detection,
                 ctx: RuleContext = NO_CONTEXT) -> tuple[WindState, list[AlertChange]]:
        if not isinstance(item, Observation) or item.kind != KIND:
            return state, []
        gust = item.values.get(GUST_KEY, item.values.get(SPEED_KEY))
        if gust is None or not math.isfinite(gust):
            return state, []
        prev = next((g for g in state.gauges if g.device_id == item.device_id), None)
        if prev is not None and (item.ts, item.seq) <= (prev.ts, prev.seq):
            return state, []  # a redelivery or a reading overtaken by a newer one
        reading = GustReading(item.device_id, item.ts, item.seq, float(gust))
        gauges = tuple(sorted((*(g for g in state.gauges if g.device_id != item.device_id),
                               reading), key=lambda g: g.device_id))
        return self.reassess(zone, replace(state, gauges=gauges), item.ts, ctx)

    def reassess(self, zone: Zone, state: WindState, ts: datetime,
                 ctx: RuleContext = NO_CONTEXT) -> tuple[WindState, list[AlertChange]]:
        used = [g for g in state.gauges if ctx.trusted(g.device_id) and ts - g.ts <= self._stale]
        if not used:
            return state, []  # no usable gauge: the level is held
        strongest = max(used, key=lambda g: g.gust_m_s)
        level = step(state.level, strongest.gust_m_s, self._thresholds,
                     self.params.hysteresis_m_s, rising=True)
        new = replace(state, level=level)
        if level == state.level:
            return new, []
        shown = f"gusts {strongest.gust_m_s:.1f} m/s at {strongest.device_id}"
        title = (f"Wind at height easing near {zone.name}: {shown}" if level is None else
                 f"High wind at height near {zone.name}: {shown}; secure loose objects above "
                 "the fall zone")
        evidence = [g.evidence() for g in used]
        evidence[used.index(strongest)]["role"] = "strongest"
        return new, [AlertChange(zone.id, HAZARD, level, ts, title, tuple(evidence))]

    def tick(self, zone: Zone, state: WindState, now: datetime,  # noqa: ARG002
             ctx: RuleContext = NO_CONTEXT) -> tuple[WindState, list[AlertChange]]:  # noqa: ARG002
        return state, []


def _chart_lines(rules: Mapping[str, Any], zone_type: str) -> dict[str, float]:  # noqa: ARG001
    params = rules.get(HAZARD)
    return level_lines(params if isinstance(params, Mapping) else WindParams().model_dump(),
                       "m_s")


WIND_AT_HEIGHT = Hazard(
    name=HAZARD,
    params_model=WindParams,
    rule=WindAtHeightRule,
    zone_types=("fall_zone",),
    label=Label("High wind at height", "高空大风"),
    cap_event="High wind at height",
    cap_categories=("Met", "Safety"),
    service=Service("High wind at height", "Gusts at roof height strong enough to blow loose "
                    "objects off balconies, roofs and scaffolding into the street below, "
                    "measured by roof-top wind gauges.",
                    ("wind", "gust", "high-rise", "falling object"), "Public safety"),
    instruction="Secure or take in loose objects on balconies, roofs and scaffolding; stop "
                "work at height; cordon the fall zone below until the gusts ease.",
    sensing=Sensing(kinds=(KIND,), radius_m=REACH_M, route=True),
    sensor_backed=True,
    metric=Metric(GUST_KEY, Label("m/s", "米/秒"), "above", Label("wind gusts", "阵风"),
                  _chart_lines),
    resident_words=Label("high wind", "大风"),
    # The grid workers' report categories are fixed by CONTRACT section 2 (the decoder's
    # "category" enum): this hazard is sensed only.
    report_category=False,
)
