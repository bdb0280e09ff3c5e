"""Traffic: congestion from detector speeds, and incidents, per intersection or road segment.

Speed fusion: the zone speed is the MEAN of its detectors' latest speeds. Not the minimum: a
detector at a stop line or on a turning lane reads low speeds in normal operation, and one faulty
detector reading 0 would raise orange on its own; congestion worth an alert slows the whole zone.
A reading with no vehicles (flow 0 and occupancy 0) carries no speed (loop detectors report 0 then)
and is left out of the mean; with no vehicles at all the zone is not congested.

The speed maps to blue/yellow/orange below ``TrafficParams`` thresholds, with a hysteresis band of
``hysteresis_kmh`` above each threshold before the level recovers.

Incidents: an ``incident`` detection at or above ``incident_min_confidence`` raises orange for the
zone. It clears when a tick finds none for ``incident_clear_after_s``, or earlier when speeds
recover, meaning: the zone was congested at or after the incident and its speed level has since
cleared. (Recovery alone is not enough: a fresh collision often has not yet slowed the mean.)
The zone's level is the more severe of the speed level and the incident's orange.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, ClassVar

from geo.zones import Zone
from rules.base import AlertChange, Detection, Observation
from rules.hysteresis import anchor_hold, most_severe, resume_hold, step
from rules.levels import Level
from rules.params import TrafficParams

HAZARD = "traffic"
INCIDENT_TYPE = "incident"
INCIDENT_LEVEL = Level.ORANGE


@dataclass(frozen=True, slots=True)
class DetectorReading:
    """The latest reading of one detector; ``speed_kmh`` is ``None`` when no vehicle passed."""

    device_id: str
    ts: datetime
    seq: int
    speed_kmh: float | None

    def evidence(self) -> dict[str, Any]:
        return {"device_id": self.device_id, "seq": self.seq, "ts": self.ts.isoformat(),
                "speed_kmh": self.speed_kmh}


@dataclass(frozen=True, slots=True)
class TrafficState:
    """One zone's state. ``level`` is what was last emitted: the more severe of the two causes."""

    level: Level | None = None
    speed_level: Level | None = None
    detectors: tuple[DetectorReading, ...] = ()  # ordered by device id
    incident_ts: datetime | None = None  # newest qualifying incident while one is active
    incident_congested: bool = False  # the zone was congested at or after that incident
    restored: bool = False
    hold_until: datetime | None = None

    @property
    def speed_kmh(self) -> float | None:
        speeds = [d.speed_kmh for d in self.detectors if d.speed_kmh is not None]
        return sum(speeds) / len(speeds) if speeds else None


def _no_vehicles(values: Mapping[str, float]) -> bool:
    return values.get("flow_veh_h") == 0 and values.get("occupancy_pct") == 0


class TrafficRule:
    name: ClassVar[str] = HAZARD
    params_model: ClassVar[type[TrafficParams]] = TrafficParams

    def __init__(self, params: TrafficParams) -> None:
        self.params = params
        self._thresholds = {Level.BLUE: params.blue_kmh, Level.YELLOW: params.yellow_kmh,
                            Level.ORANGE: params.orange_kmh}
        self._incident_clear_after = timedelta(seconds=params.incident_clear_after_s)

    def check_zone(self, zone: Zone) -> None:
        pass  # one set of speed thresholds serves every traffic zone type

    def initial(self) -> TrafficState:
        return TrafficState()

    def restore(self, level: Level) -> TrafficState:
        # The cause (speed or incident) is not stored; resuming as a speed level lets the next
        # readings confirm or clear it through the usual hysteresis.
        return TrafficState(level=level, speed_level=level, restored=True)

    def level(self, state: TrafficState) -> Level | None:
        return state.level

    def evaluate(
        self, zone: Zone, state: TrafficState, item: Observation | Detection
    ) -> tuple[TrafficState, AlertChange | None]:
        if isinstance(item, Observation):
            if item.kind == "traffic":
                return self._reading(zone, state, item)
        elif item.type == INCIDENT_TYPE:
            return self._incident(zone, state, item)
        return state, None

    def _reading(
        self, zone: Zone, state: TrafficState, obs: Observation
    ) -> tuple[TrafficState, AlertChange | None]:
        speed = obs.values.get("speed_kmh")
        if speed is None or not math.isfinite(speed):
            return state, None
        prev = next((d for d in state.detectors if d.device_id == obs.device_id), None)
        if prev is not None and (obs.ts, obs.seq) <= (prev.ts, prev.seq):
            return state, None  # a redelivery or a reading overtaken by a newer one
        reading = DetectorReading(obs.device_id, obs.ts, obs.seq,
                                  None if _no_vehicles(obs.values) else float(speed))
        detectors = tuple(
            sorted(
                (*(d for d in state.detectors if d.device_id != obs.device_id), reading),
                key=lambda d: d.device_id,
            )
        )
        new = replace(state, detectors=detectors)
        zone_speed = new.speed_kmh
        hold_until = anchor_hold(state.restored, state.hold_until, obs.ts,
                                 self.params.resume_hold_s)
        proposed = (None if zone_speed is None else
                    step(state.speed_level, zone_speed, self._thresholds,
                         self.params.hysteresis_kmh, rising=False))
        speed_level = resume_hold(state.speed_level, proposed, obs.ts, hold_until)

        incident_ts, congested = state.incident_ts, state.incident_congested
        if incident_ts is not None and obs.ts >= incident_ts:  # an older reading proves nothing
            if speed_level is not None:
                congested = True
            elif congested:
                incident_ts, congested = None, False  # traffic built up and has cleared again
        level = most_severe(speed_level, INCIDENT_LEVEL if incident_ts is not None else None)
        new = replace(new, level=level, speed_level=speed_level, incident_ts=incident_ts,
                      incident_congested=congested, hold_until=hold_until)
        if level == state.level:
            return new, None
        shown = "no vehicles" if zone_speed is None else f"{zone_speed:.0f} km/h"
        if level is None:
            title = f"Traffic flowing at {zone.name}: {shown}"
        elif level == speed_level:
            title = f"Traffic {shown} at {zone.name}"
        else:
            title = f"Traffic incident at {zone.name}, {shown}"
        evidence = tuple(d.evidence() for d in detectors)
        return new, AlertChange(zone.id, HAZARD, level, obs.ts, title, evidence)

    def _incident(
        self, zone: Zone, state: TrafficState, det: Detection
    ) -> tuple[TrafficState, AlertChange | None]:
        c = det.confidence
        if c is None or not c >= self.params.incident_min_confidence:  # `not >=` also drops NaN
            return state, None
        if state.incident_ts is None:
            incident_ts, congested = det.ts, state.speed_level is not None
        else:
            # max(): a late-delivered older incident must not shorten the alert's life.
            incident_ts = max(state.incident_ts, det.ts)
            congested = state.incident_congested or state.speed_level is not None
        level = most_severe(state.speed_level, INCIDENT_LEVEL)
        new = replace(state, level=level, incident_ts=incident_ts, incident_congested=congested)
        if level == state.level:
            return new, None
        subtype = det.attrs.get("subtype", "incident")
        title = f"Traffic {subtype} at {zone.name} (confidence {c:.2f})"
        evidence: dict[str, Any] = {"device_id": det.device_id, "event_id": det.event_id,
                                    "ts": det.ts.isoformat(), "confidence": c, "subtype": subtype}
        return new, AlertChange(zone.id, HAZARD, level, det.ts, title, (evidence,))

    def tick(
        self, zone: Zone, state: TrafficState, now: datetime
    ) -> tuple[TrafficState, AlertChange | None]:
        if state.incident_ts is None or now - state.incident_ts < self._incident_clear_after:
            return state, None
        level = state.speed_level
        new = replace(state, level=level, incident_ts=None, incident_congested=False)
        if level == state.level:
            return new, None
        minutes = self.params.incident_clear_after_s / 60
        if level is None:
            title = f"Traffic incident at {zone.name} cleared: none reported for {minutes:g} min"
        else:
            speed = state.speed_kmh
            shown = "no vehicles" if speed is None else f"{speed:.0f} km/h"
            title = f"Traffic {shown} at {zone.name}"
        evidence = ({"last_incident_ts": state.incident_ts.isoformat()},)
        return new, AlertChange(zone.id, HAZARD, level, now, title, evidence)
