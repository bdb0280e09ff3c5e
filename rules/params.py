"""Parameter models of the rules, validated from ``config.yaml`` (``rules:``).

Each hazard module uses its own model; they live together here so that the configuration can be
validated without importing rule logic. Every new field has a default that keeps the behaviour of
the first engine (no reorder window, no holds), so an old config still means what it meant; the
generated ``config.yaml`` sets the tuned values.
"""

from __future__ import annotations

from typing import Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from rules.levels import LevelName


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DepthThresholds(_Strict):
    """Water depth in cm at which each level starts; each must exceed the one before."""

    blue_cm: float = Field(gt=0, description="watch: water is gathering")
    yellow_cm: float = Field(gt=0, description="a threshold is crossed")
    orange_cm: float = Field(gt=0, description="a higher threshold")
    red_cm: float = Field(gt=0, description="danger to life: close it")

    @model_validator(mode="after")
    def _increasing(self) -> Self:
        if not self.blue_cm < self.yellow_cm < self.orange_cm < self.red_cm:
            raise ValueError("expected blue_cm < yellow_cm < orange_cm < red_cm")
        return self


class RainSignal(_Strict):
    """A CMA rainstorm signal: ``mm`` of rain within ``hours`` (observed plus nowcast)."""

    mm: float = Field(gt=0, description="rain amount in mm")
    hours: float = Field(gt=0, le=24, description="within this many hours")


def _cma() -> dict[LevelName, RainSignal]:
    # China Meteorological Administration rainstorm warning signals (blue to red).
    return {"blue": RainSignal(mm=50, hours=12), "yellow": RainSignal(mm=50, hours=6),
            "orange": RainSignal(mm=50, hours=3), "red": RainSignal(mm=100, hours=3)}


class RainParams(_Strict):
    """Rain over a zone's catchment raising the level of low points (CMA rainstorm signals)."""

    enabled: bool = Field(default=False, description="use rain gauges to raise low points")
    signals: dict[LevelName, RainSignal] = Field(
        default_factory=_cma, description="CMA signals: rain within hours, by level")
    nowcast_h: float = Field(
        default=1.0, ge=0, le=12, description="the current rain rate is assumed to go on this "
        "long and counted with the rain already fallen (a persistence nowcast)")
    catchment_radius_m: float = Field(
        default=2500, gt=0, description="rain gauges this close to a zone make its catchment")
    at_risk_types: tuple[str, ...] = Field(
        default=("underpass", "low_road"), description="zone types whose level rain raises")
    raise_to: dict[LevelName, LevelName] = Field(
        default={"blue": "blue", "yellow": "blue", "orange": "yellow", "red": "orange"},
        description="by signal, the least level of an at-risk zone once its water has reached "
        "its blue depth; with less water a signal gives at most blue (a watch)")
    bucket_s: float = Field(default=300, gt=0, le=3600,
                            description="rain accumulations are kept in buckets of this length")
    max_gap_s: float = Field(default=900, gt=0,
                             description="a gap between readings longer than this adds no rain")


class WaterloggingParams(_Strict):
    thresholds: dict[str, DepthThresholds] = Field(
        description="per zone type (underpass, low_road): depth thresholds in cm",
    )
    hysteresis_cm: float = Field(
        default=2.0, ge=0, description="a level clears only when depth falls this far below it"
    )
    resume_hold_s: float = Field(
        default=300,
        ge=0,
        description="after a restart, a restored level only escalates for this long after the "
        "zone's first reading, so that one gauge reporting before the others cannot clear it",
    )
    stale_after_s: float = Field(
        default=900, gt=0, description="a gauge's last reading counts in the zone for this long")
    raise_hold_s: float = Field(
        default=0, ge=0, description="a worse depth level counts once the depth has stayed over "
        "its threshold this long (0: at once); a single noisy reading is not a crossing")
    raise_margin_cm: float = Field(
        default=0, ge=0, description="... or at once when the depth is this far over it")
    forecast_horizon_s: float = Field(
        default=0, ge=0, description="blue when the rise would reach the yellow depth within "
        "this long (0: no forecast)")
    forecast_window_s: float = Field(
        default=600, gt=0, description="the rate of rise is fitted over this much history")
    forecast_min_rise_cm_h: float = Field(
        default=3.0, gt=0, description="slower rises forecast nothing")
    forecast_min_points: int = Field(default=6, ge=2,
                                     description="readings needed before a forecast")
    rain: RainParams = RainParams()


class FallingObjectParams(_Strict):
    min_confidence: float = Field(
        default=0.7, gt=0, le=1, description="detections below this are logged, not alerted"
    )
    red_confidence: float = Field(
        default=0.9, gt=0, le=1, description="at or above this the alert is red, else orange"
    )
    clear_after_s: float = Field(
        default=900, gt=0, description="an alert clears after this long with no new detection"
    )
    sensitive_types: tuple[str, ...] = Field(
        default=("pedestrian_area", "school_gate"),
        description="an impact in a zone of these types is red whatever the confidence")
    corroborate_s: float = Field(
        default=120, ge=0, description="a second camera or a grid report this close in time "
        "raises the confidence (noisy-or of the two)")
    corroborate_m: float = Field(
        default=60, ge=0, description="... and this close to the impact")
    pattern_window_s: float = Field(
        default=86400, gt=0, description="repeated events at one building within this long")
    pattern_min_events: int = Field(
        default=0, ge=0, description="this many qualifying events at one building make a "
        "pattern alert for its management (0: off)")
    pattern_level: LevelName = Field(default="orange", description="level of a pattern alert")

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.red_confidence < self.min_confidence:
            raise ValueError("expected red_confidence >= min_confidence")
        if self.pattern_min_events == 1:
            raise ValueError("expected pattern_min_events 0 (off) or at least 2")
        return self


class TrafficParams(_Strict):
    """Speed in km/h below which each level starts; each must be below the one before.

    The thresholds are for a road whose free-flow speed is ``free_flow_kmh``; a zone type with
    another free-flow speed (``free_flow_kmh_by_type``) scales them: the rule works on the ratio
    of speed to free-flow speed.
    """

    blue_kmh: float = Field(default=35, gt=0, description="watch: traffic is slowing")
    yellow_kmh: float = Field(default=25, gt=0, description="congested")
    orange_kmh: float = Field(default=12, gt=0, description="heavily congested")
    hysteresis_kmh: float = Field(
        default=5, ge=0, description="a level clears only when speed rises this far above it"
    )
    free_flow_kmh: float = Field(default=50, gt=0,
                                 description="the free-flow speed the km/h thresholds are for")
    free_flow_kmh_by_type: dict[str, float] = Field(
        default_factory=dict, description="free-flow speed per zone type, when it differs")
    min_occupancy_pct: float = Field(
        default=0, ge=0, le=100, description="slow traffic is congestion only at or above this "
        "occupancy (a lone slow vehicle on an empty road is not)")
    hold_s: float = Field(default=0, ge=0,
                          description="a worse speed level must hold this long to be raised")
    clear_hold_s: float = Field(default=0, ge=0,
                                description="a better speed level must hold this long")
    incident_min_confidence: float = Field(
        default=0.7, gt=0, le=1, description="an incident at or above this raises orange"
    )
    incident_clear_after_s: float = Field(
        default=1800, gt=0, description="an incident alert clears after this long with no new one"
    )
    suspect_drop: float = Field(
        default=0, ge=0, lt=1, description="a detector's speed falling by this fraction of its "
        "recent mean within suspect_recent_s, with an occupancy jump, is a suspected incident "
        "(0: off)")
    suspect_occupancy_jump_pct: float = Field(default=20, ge=0)
    suspect_baseline_s: float = Field(default=300, gt=0,
                                      description="the recent mean is over this long")
    suspect_recent_s: float = Field(default=60, gt=0)
    suspect_min_baseline_kmh: float = Field(
        default=25, ge=0, description="only a detector that was flowing at least this fast")
    suspect_level: LevelName = Field(default="yellow", description="level of a suspected one")
    resume_hold_s: float = Field(
        default=300,
        ge=0,
        description="after a restart, a restored level only escalates for this long after the "
        "zone's first reading, so that one detector reporting before the others cannot clear it",
    )

    @model_validator(mode="after")
    def _decreasing(self) -> Self:
        if not self.blue_kmh > self.yellow_kmh > self.orange_kmh:
            raise ValueError("expected blue_kmh > yellow_kmh > orange_kmh")
        if self.suspect_recent_s >= self.suspect_baseline_s:
            raise ValueError("expected suspect_recent_s < suspect_baseline_s")
        return self


class ValueRange(_Strict):
    min: float = Field(description="the least value a working device reports")
    max: float = Field(description="the most")

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if not self.min < self.max:
            raise ValueError("expected min < max")
        return self


def _ranges() -> dict[str, ValueRange]:
    return {"water_depth_cm": ValueRange(min=0, max=300),
            "rain_rate_mm_h": ValueRange(min=0, max=500),
            "speed_kmh": ValueRange(min=0, max=200),
            "occupancy_pct": ValueRange(min=0, max=100),
            "flow_veh_h": ValueRange(min=0, max=12000)}


def _watched() -> dict[str, tuple[str, ...]]:
    return {"water": ("water_depth_cm",), "rain": ("rain_rate_mm_h",),
            "traffic": ("speed_kmh", "flow_veh_h", "occupancy_pct"), "camera": ()}


class DeviceHealthParams(_Strict):
    """When a device's readings stop being trusted, and when they are trusted again."""

    enabled: bool = Field(default=False, description="check device health at all")
    watched: dict[str, tuple[str, ...]] = Field(
        default_factory=_watched, description="per device kind, the values whose health is "
        "checked (a kind not listed is not checked; an empty list: silence only)")
    silent_after_s: float = Field(default=900, gt=0,
                                  description="no telemetry this long: faulty (silent)")
    stuck_after_s: float = Field(
        default=1800, gt=0, description="the same non-zero values this long: faulty (stuck)")
    stuck_min_readings: int = Field(default=10, ge=2)
    ranges: dict[str, ValueRange] = Field(default_factory=_ranges,
                                          description="a value outside its range: faulty")
    max_rise_per_min: dict[str, float] = Field(
        default={"water_depth_cm": 10.0, "rain_rate_mm_h": 100.0},
        description="a rise faster than this (per minute, plus spike_margin) is a spike no "
        "physics allows; the reading is dropped. So is a detector reporting vehicles passing "
        "at 0 km/h")
    spike_margin: dict[str, float] = Field(
        default={"water_depth_cm": 20.0, "rain_rate_mm_h": 150.0})
    spikes_to_fault: int = Field(default=2, ge=1,
                                 description="this many spikes within spike_window_s: faulty")
    spike_window_s: float = Field(default=3600, gt=0)
    drift_tolerance: dict[str, float] = Field(
        default={"water_depth_cm": 6.0}, description="disagreement with the median of two or "
        "more neighbours (same kind, same hazard zone) beyond which a device is suspect")
    drift_relative: float = Field(default=0.5, ge=0,
                                  description="... plus this fraction of the larger value")
    dry_max: dict[str, float] = Field(
        default={"water_depth_cm": 2.5},
        description="more than this while the weather is dry makes a device suspect (a water "
        "gauge: no rain in its catchment for dry_window_s; a rain gauge: two or more neighbours "
        "within neighbour_radius_m read none); and, for a water gauge, this or less while a "
        "neighbour in its zone reads more than drift_tolerance in heavy rain")
    neighbour_radius_m: float = Field(default=5000, gt=0,
                                      description="rain gauges this close are neighbours")
    dry_window_s: float = Field(default=43200, gt=0)
    dry_rain_mm: float = Field(default=0.5, ge=0,
                               description="less rain than this in dry_window_s is dry")
    dry_min_observed_s: float = Field(
        default=1800, ge=0, description="rain gauges must have been heard this long before "
        "their silence about rain counts as dry weather")
    drift_confirm_s: float = Field(
        default=600, gt=0, description="a suspect device (readings already held back) is "
        "faulty (drift) when it stays suspect this long")
    recover_after_s: float = Field(
        default=900, gt=0, description="a faulty device is trusted again after this long of "
        "good readings")
    battery_low_v: float = Field(default=0, ge=0,
                                 description="battery under this: maintenance (0: not checked)")
    alert_level: LevelName = Field(default="blue",
                                   description="level of the maintenance alert")


def _reportable() -> tuple[str, ...]:
    from rules import registry  # the registry imports the hazard modules, which import this

    return registry.report_categories()


class ReportParams(_Strict):
    """Grid workers' reports: corroboration of alerts, or alerts of their own."""

    corroborate_m: float = Field(
        default=300, ge=0, description="a report this close to a zone with an active alert "
        "of its category corroborates it")
    corroborate_s: float = Field(
        default=1800, ge=0, description="... while the alert is active or within this long "
        "after it cleared")
    own_alert_level: LevelName | None = Field(
        default=None, description="a report that matches nothing becomes an alert of this "
        "level in the worker's grid cell (null: logged only)")
    clear_after_s: float = Field(
        default=3600, gt=0, description="a report's own alert clears after this long without "
        "another report of the category in the cell")
    categories: tuple[str, ...] = Field(
        default_factory=_reportable,
        description="report categories that are hazards (others are logged only); by default "
        "every registered hazard that can be reported")


class EventTimeParams(_Strict):
    """Rules run on the readings' own time stamps, not on arrival."""

    reorder_window_s: float = Field(
        default=0, ge=0, le=3600, description="readings are held this long (event time) so "
        "that ones arriving out of order by up to this much are evaluated in order; it delays "
        "every alert by as much. 0: evaluate on arrival; per device, an older reading than one "
        "already evaluated is then counted as too late")
    dedup_s: float = Field(default=900, gt=0,
                           description="redelivered readings are recognised this far back")


class RulesParams(_Strict):
    """The ``rules:`` section: one entry per hazard (named after it), device health, grid
    reports and event time. A plug-in hazard's entry is validated by its own ``params_model``
    (``rules.registry``); one with no entry gets its model's defaults."""

    model_config = ConfigDict(extra="allow", frozen=True)

    waterlogging: WaterloggingParams
    falling_object: FallingObjectParams = FallingObjectParams()
    traffic: TrafficParams = TrafficParams()
    device_health: DeviceHealthParams = Field(default_factory=DeviceHealthParams)
    reports: ReportParams = Field(default_factory=ReportParams)
    event_time: EventTimeParams = EventTimeParams()

    @model_validator(mode="after")
    def _plugin_hazards(self) -> Self:
        from rules import registry  # the registry imports the hazard modules, which import this

        extra = self.__pydantic_extra__ if self.__pydantic_extra__ is not None else {}
        for name, raw in list(extra.items()):
            hazard = registry.get(name)
            if hazard is None:
                known = ", ".join((*registry.names(), "device_health", "reports", "event_time"))
                raise ValueError(f"{name!r} is neither a hazard nor a rules section; known: "
                                 f"{known}")
            if not isinstance(raw, hazard.params_model):
                extra[name] = hazard.params_model.model_validate(raw)
        return self

    def of(self, hazard: str) -> BaseModel:
        """The validated parameters of a hazard (a plug-in's defaults when not configured)."""
        own = getattr(self, hazard, None) if hazard in type(self).model_fields else None
        if isinstance(own, BaseModel):
            return own
        extra = self.__pydantic_extra__ or {}
        got = extra.get(hazard)
        if isinstance(got, BaseModel):
            return got
        from rules import registry

        h = registry.get(hazard)
        if h is None:
            raise KeyError(f"no hazard {hazard!r}")
        return h.params_model()
