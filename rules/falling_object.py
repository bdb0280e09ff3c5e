"""Falling objects: camera detections of something falling from a facade into a fall zone.

A detection at or above ``min_confidence`` raises orange, at or above ``red_confidence`` red; a
more severe one escalates, any qualifying one keeps the alert alive, and ``tick`` clears it after
``clear_after_s`` without one. Weaker detections change nothing (the event store keeps them).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, ClassVar

from geo.zones import Zone
from rules.base import AlertChange, Detection, Observation
from rules.levels import Level
from rules.params import FallingObjectParams

HAZARD = "falling_object"
EVENT_TYPE = "falling_object"


@dataclass(frozen=True, slots=True)
class FallingObjectState:
    """``last_ts`` is the newest qualifying detection; ``None`` after a restore until a tick."""

    level: Level | None = None
    last_ts: datetime | None = None


class FallingObjectRule:
    name: ClassVar[str] = HAZARD
    params_model: ClassVar[type[FallingObjectParams]] = FallingObjectParams

    def __init__(self, params: FallingObjectParams) -> None:
        self.params = params
        self._clear_after = timedelta(seconds=params.clear_after_s)

    def check_zone(self, zone: Zone) -> None:
        pass  # any fall zone works; there are no per-type parameters

    def initial(self) -> FallingObjectState:
        return FallingObjectState()

    def restore(self, level: Level) -> FallingObjectState:
        return FallingObjectState(level=level)

    def level(self, state: FallingObjectState) -> Level | None:
        return state.level

    def classify(self, confidence: float | None) -> Level | None:
        """The level a detection of this confidence raises, or ``None`` if it is only logged."""
        p = self.params
        if confidence is None or not confidence >= p.min_confidence:  # `not >=` also drops NaN
            return None
        return Level.RED if confidence >= p.red_confidence else Level.ORANGE

    def evaluate(
        self, zone: Zone, state: FallingObjectState, item: Observation | Detection
    ) -> tuple[FallingObjectState, AlertChange | None]:
        if not isinstance(item, Detection) or item.type != EVENT_TYPE:
            return state, None
        raised = self.classify(item.confidence)
        if raised is None:
            return state, None
        # max(): a late-delivered older detection must not shorten the alert's life.
        last_ts = item.ts if state.last_ts is None else max(state.last_ts, item.ts)
        if not raised.more_severe_than(state.level):
            return replace(state, last_ts=last_ts), None
        new = FallingObjectState(level=raised, last_ts=last_ts)
        return new, AlertChange(zone.id, HAZARD, raised, item.ts, _title(zone, item),
                                (_evidence(item),))

    def tick(
        self, zone: Zone, state: FallingObjectState, now: datetime
    ) -> tuple[FallingObjectState, AlertChange | None]:
        if state.level is None:
            return state, None
        if state.last_ts is None:
            # Restored after a restart: the last detection's time is unknown, so the quiet
            # period starts now (the alert lives at most clear_after_s longer than it would have).
            return replace(state, last_ts=now), None
        if now - state.last_ts < self._clear_after:
            return state, None
        minutes = self.params.clear_after_s / 60
        title = f"Falling object alert at {zone.name} cleared: none detected for {minutes:g} min"
        evidence = ({"last_detection_ts": state.last_ts.isoformat()},)
        return (FallingObjectState(level=None, last_ts=state.last_ts),
                AlertChange(zone.id, HAZARD, None, now, title, evidence))


def _title(zone: Zone, det: Detection) -> str:
    where = ""
    building, floor = det.attrs.get("building_id"), det.attrs.get("floor")
    if building is not None:
        where = f" from {building}" + (f" floor {floor}" if floor is not None else "")
    return f"Falling object{where} at {zone.name} (confidence {det.confidence:.2f})"


def _evidence(det: Detection) -> dict[str, Any]:
    ev: dict[str, Any] = {
        "device_id": det.device_id,
        "event_id": det.event_id,
        "ts": det.ts.isoformat(),
        "confidence": det.confidence,
    }
    for key in ("building_id", "floor"):
        if key in det.attrs:
            ev[key] = det.attrs[key]
    if det.position is not None:
        ev["impact"] = list(det.position)
    return ev
