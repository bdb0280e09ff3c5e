"""Parameter models of the rules, validated from ``config.yaml`` (``rules:``).

Each hazard module uses its own model; they live together here so that the configuration can be
validated without importing rule logic.
"""

from __future__ import annotations

from typing import Self

from pydantic import BaseModel, ConfigDict, Field, model_validator


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

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.red_confidence < self.min_confidence:
            raise ValueError("expected red_confidence >= min_confidence")
        return self


class TrafficParams(_Strict):
    """Speed in km/h below which each level starts; each must be below the one before."""

    blue_kmh: float = Field(default=35, gt=0, description="watch: traffic is slowing")
    yellow_kmh: float = Field(default=25, gt=0, description="congested")
    orange_kmh: float = Field(default=12, gt=0, description="heavily congested")
    hysteresis_kmh: float = Field(
        default=5, ge=0, description="a level clears only when speed rises this far above it"
    )
    incident_min_confidence: float = Field(
        default=0.7, gt=0, le=1, description="an incident at or above this raises orange"
    )
    incident_clear_after_s: float = Field(
        default=1800, gt=0, description="an incident alert clears after this long with no new one"
    )
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
        return self


class RulesParams(_Strict):
    waterlogging: WaterloggingParams
    falling_object: FallingObjectParams = FallingObjectParams()
    traffic: TrafficParams = TrafficParams()
