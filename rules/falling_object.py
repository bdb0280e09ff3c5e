"""Falling objects: camera detections of something falling from a facade into a fall zone.

A detection's confidence is fused (noisy-or) with the sightings of OTHER sources near it in time
and space (``corroborate_s``, ``corroborate_m``): a second camera's detection, or a grid worker's
report of a falling object (counted at ``REPORT_CONFIDENCE``). At or above ``min_confidence`` it
raises orange, at or above ``red_confidence`` red, and red whatever the confidence when the impact
lies in a pedestrian area or at a school gate (``sensitive_types``). Below ``min_confidence`` a
lone detection is only logged (kept for corroboration): a bird is not an alert. A more severe
detection escalates, any qualifying one keeps the alert alive, and it clears ``clear_after_s``
after the last one.

Repeated qualifying events at one building within ``pattern_window_s`` (``pattern_min_events``
of them) raise a separate pattern alert (``falling_object_pattern``) for the building's
management, which clears a window after the last event.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, ClassVar

from geo.position import Position, metres
from geo.zones import Zone
from rules.base import (
    FALLING_OBJECT_PATTERN,
    NO_CONTEXT,
    RESTORED_DUE,
    AlertChange,
    Detection,
    Observation,
    RuleContext,
)
from rules.hazard import AlertKind, Hazard, Label, Metric, Sensing, Service
from rules.levels import Level
from rules.params import FallingObjectParams

HAZARD = "falling_object"
EVENT_TYPE = "falling_object"
REPORT_TYPE = "report"
REPORT_CONFIDENCE = 0.5  # a person saw it fall: good, but not a camera track
CAMERA_RANGE_M = 300.0  # a camera watches the fall zones this close to it


@dataclass(frozen=True, slots=True)
class Sighting:
    ts: datetime
    device_id: str
    event_id: str
    source: str  # "camera" or "grid"
    confidence: float
    position: Position | None
    building_id: str | None
    sensitive: str | None  # the pedestrian area or school gate the impact lies in
    floor: Any = None

    def evidence(self) -> dict[str, Any]:
        ev: dict[str, Any] = {"device_id": self.device_id, "event_id": self.event_id,
                              "ts": self.ts.isoformat(), "confidence": self.confidence,
                              "source": self.source}
        if self.building_id is not None:
            ev["building_id"] = self.building_id
        if self.floor is not None:
            ev["floor"] = self.floor
        if self.position is not None:
            ev["impact"] = list(self.position)
        if self.sensitive is not None:
            ev["in_zone"] = self.sensitive
        return ev


@dataclass(frozen=True, slots=True)
class FallingObjectState:
    """``last_ts`` is the newest qualifying detection; ``None`` after a restore until a tick."""

    level: Level | None = None
    last_ts: datetime | None = None
    sightings: tuple[Sighting, ...] = ()  # recent ones, qualifying or not, for corroboration
    events: tuple[tuple[datetime, str, str], ...] = ()  # qualifying (ts, building, event id)
    pattern_level: Level | None = None
    pattern_last_ts: datetime | None = None
    pattern_building: str | None = None


class FallingObjectRule:
    name: ClassVar[str] = HAZARD
    params_model: ClassVar[type[FallingObjectParams]] = FallingObjectParams

    def __init__(self, params: FallingObjectParams) -> None:
        self.params = params
        self._clear_after = timedelta(seconds=params.clear_after_s)
        self._pattern_window = timedelta(seconds=params.pattern_window_s)
        self._pattern_level = Level[params.pattern_level.upper()]

    def check_zone(self, zone: Zone) -> None:
        pass  # any fall zone works; there are no per-type parameters

    def initial(self) -> FallingObjectState:
        return FallingObjectState()

    def restore(self, level: Level) -> FallingObjectState:
        return FallingObjectState(level=level)

    def restore_pattern(self, state: FallingObjectState, level: Level) -> FallingObjectState:
        return replace(state, pattern_level=level)

    def restore_alert(self, state: FallingObjectState, alert: str, level: Level
                      ) -> FallingObjectState:
        if alert == HAZARD:
            return replace(self.restore(level), pattern_level=state.pattern_level)
        if alert == FALLING_OBJECT_PATTERN:
            return self.restore_pattern(state, level)
        return state

    @property
    def report_radius_m(self) -> float:
        return self.params.corroborate_m

    def corroborate(self, zone: Zone, state: FallingObjectState, report: Detection,
                    ctx: RuleContext) -> tuple[FallingObjectState, list[AlertChange], bool]:
        """A grid worker's report is a sighting of its own (``REPORT_CONFIDENCE``): it raises
        the confidence of a camera's detection near it, and it matches an active alert or a
        camera's sighting close in time."""
        new, changes = self.evaluate(zone, state, report, ctx)
        matched = bool(changes) or state.level is not None or any(
            s.source == "camera" and abs((s.ts - report.ts).total_seconds())
            <= self.params.corroborate_s for s in state.sightings)
        return new, changes, matched

    def level(self, state: FallingObjectState) -> Level | None:
        return state.level

    def levels(self, state: FallingObjectState) -> dict[str, Level]:
        out: dict[str, Level] = {}
        if state.level is not None:
            out[HAZARD] = state.level
        if state.pattern_level is not None:
            out[FALLING_OBJECT_PATTERN] = state.pattern_level
        return out

    def classify(self, confidence: float | None, sensitive: bool = False) -> Level | None:
        """The level a detection of this confidence raises, or ``None`` if it is only logged."""
        p = self.params
        if confidence is None or not confidence >= p.min_confidence:  # `not >=` also drops NaN
            return None
        return Level.RED if sensitive or confidence >= p.red_confidence else Level.ORANGE

    def deadline(self, state: FallingObjectState) -> datetime | None:
        if (state.level is not None and state.last_ts is None) or \
                (state.pattern_level is not None and state.pattern_last_ts is None):
            return RESTORED_DUE  # restored: the first tick starts its quiet period
        dues = []
        if state.level is not None and state.last_ts is not None:
            dues.append(state.last_ts + self._clear_after)
        if state.pattern_level is not None and state.pattern_last_ts is not None:
            dues.append(state.pattern_last_ts + self._pattern_window)
        return min(dues, default=None)

    def sighting(self, item: Detection, ctx: RuleContext) -> Sighting | None:
        """The detection or report as a sighting of a falling object, or None."""
        if item.type == EVENT_TYPE and item.confidence is not None and \
                math.isfinite(item.confidence):
            source, conf = "camera", float(item.confidence)
        elif item.type == REPORT_TYPE and item.attrs.get("category") == HAZARD:
            source, conf = "grid", REPORT_CONFIDENCE
        else:
            return None
        sensitive = next((z for z in item.zone_ids
                          if ctx.zone_type(z) in self.params.sensitive_types), None)
        building = item.attrs.get("building_id")
        return Sighting(item.ts, item.device_id, item.event_id, source, conf, item.position,
                        building if isinstance(building, str) else None, sensitive,
                        item.attrs.get("floor"))

    def evaluate(
        self, zone: Zone, state: FallingObjectState, item: Observation | Detection,
        ctx: RuleContext = NO_CONTEXT,
    ) -> tuple[FallingObjectState, list[AlertChange]]:
        if not isinstance(item, Detection):
            return state, []
        s = self.sighting(item, ctx)
        if s is None:
            return state, []
        p = self.params
        keep = max(p.corroborate_s, 0.0)
        sightings = (*(x for x in state.sightings
                       if abs((item.ts - x.ts).total_seconds()) <= keep
                       or x.ts > item.ts), s)
        # The cluster: this sighting and, per other source, its best one close in time and space.
        best: dict[str, Sighting] = {}
        for x in sightings:
            if x is s or x.device_id == s.device_id:
                continue
            if abs((x.ts - s.ts).total_seconds()) > p.corroborate_s:
                continue
            if x.position is not None and s.position is not None and \
                    metres(x.position, s.position) > p.corroborate_m:
                continue
            if x.device_id not in best or x.confidence > best[x.device_id].confidence:
                best[x.device_id] = x
        cluster = [s, *sorted(best.values(), key=lambda x: x.device_id)]
        miss = 1.0
        for x in cluster:
            miss *= 1.0 - x.confidence
        fused = 1.0 - miss
        sensitive = next((x.sensitive for x in cluster if x.sensitive is not None), None)
        new = replace(state, sightings=sightings)
        raised = self.classify(fused, sensitive is not None)
        if raised is None or not any(x.source == "camera" for x in cluster):
            # Logged, not alerted: a lone weak detection, or reports with no camera behind them
            # (the report rule turns those into alerts of their own).
            return new, []
        # max(): a late-delivered older detection must not shorten the alert's life.
        last_ts = item.ts if state.last_ts is None else max(state.last_ts, item.ts)
        new = replace(new, last_ts=last_ts)
        changes: list[AlertChange] = []
        if raised.more_severe_than(state.level):
            new = replace(new, level=raised)
            changes.append(AlertChange(zone.id, HAZARD, raised, item.ts,
                                       _title(zone, s, fused, sensitive, len(cluster)),
                                       tuple(x.evidence() for x in cluster)))
        return self._pattern(zone, new, s, changes)

    def _pattern(self, zone: Zone, state: FallingObjectState, s: Sighting,
                 changes: list[AlertChange]) -> tuple[FallingObjectState, list[AlertChange]]:
        p = self.params
        if s.building_id is None or s.source != "camera":
            return state, changes
        window = p.pattern_window_s
        events = (*(e for e in state.events if abs((s.ts - e[0]).total_seconds()) <= window
                    or e[0] > s.ts), (s.ts, s.building_id, s.event_id))
        state = replace(state, events=events)
        if p.pattern_min_events < 2:
            return state, changes
        at_building = sorted(e for e in events if e[1] == s.building_id)
        # Any window of pattern_window_s holding enough events (order-insensitive).
        enough = any(sum(1 for f in at_building if 0 <= (f[0] - e[0]).total_seconds() <= window)
                     >= p.pattern_min_events for e in at_building)
        if not enough:
            return state, changes
        last = max(s.ts, state.pattern_last_ts) if state.pattern_last_ts else s.ts
        state = replace(state, pattern_last_ts=last, pattern_building=s.building_id)
        if state.pattern_level is not None:
            return state, changes
        state = replace(state, pattern_level=self._pattern_level)
        hours = window / 3600
        title = (f"Repeated falling objects from {s.building_id} at {zone.name}: "
                 f"{len(at_building)} within {hours:g} h; building management to act")
        evidence = tuple({"building_id": b, "event_id": eid, "ts": ts.isoformat()}
                         for ts, b, eid in at_building)
        changes.append(AlertChange(zone.id, FALLING_OBJECT_PATTERN, self._pattern_level, s.ts,
                                   title, evidence))
        return state, changes

    def reassess(self, zone: Zone, state: FallingObjectState, ts: datetime,  # noqa: ARG002
                 ctx: RuleContext = NO_CONTEXT,  # noqa: ARG002
                 ) -> tuple[FallingObjectState, list[AlertChange]]:
        return state, []

    def tick(
        self, zone: Zone, state: FallingObjectState, now: datetime,
        ctx: RuleContext = NO_CONTEXT,  # noqa: ARG002 -- the ZoneRule interface
    ) -> tuple[FallingObjectState, list[AlertChange]]:
        changes: list[AlertChange] = []
        if state.level is not None and state.last_ts is None:
            # Restored after a restart: the last detection's time is unknown, so the quiet
            # period starts now (the alert lives at most clear_after_s longer than it would have).
            state = replace(state, last_ts=now)
        if state.pattern_level is not None and state.pattern_last_ts is None:
            state = replace(state, pattern_last_ts=now)
        if state.level is not None and state.last_ts is not None and \
                now - state.last_ts >= self._clear_after:
            due = state.last_ts + self._clear_after
            minutes = self.params.clear_after_s / 60
            title = (f"Falling object alert at {zone.name} cleared: none detected for "
                     f"{minutes:g} min")
            changes.append(AlertChange(zone.id, HAZARD, None, due, title,
                                       ({"last_detection_ts": state.last_ts.isoformat()},)))
            state = replace(state, level=None)
        if state.pattern_level is not None and state.pattern_last_ts is not None and \
                now - state.pattern_last_ts >= self._pattern_window:
            due = state.pattern_last_ts + self._pattern_window
            title = (f"Falling-object pattern at {zone.name} cleared: no event from "
                     f"{state.pattern_building or 'the building'} within the window")
            changes.append(AlertChange(zone.id, FALLING_OBJECT_PATTERN, None, due, title,
                                       ({"last_event_ts": state.pattern_last_ts.isoformat()},)))
            state = replace(state, pattern_level=None, pattern_building=None)
        # Forget what can no longer corroborate or count (bounded state).
        keep = timedelta(seconds=max(self.params.corroborate_s, 0.0))
        sightings = tuple(x for x in state.sightings if now - x.ts <= keep)
        events = tuple(e for e in state.events if now - e[0] <= self._pattern_window)
        if sightings != state.sightings or events != state.events:
            state = replace(state, sightings=sightings, events=events)
        return state, changes


def _title(zone: Zone, s: Sighting, fused: float, sensitive: str | None, sources: int) -> str:
    where = ""
    if s.building_id is not None:
        where = f" from {s.building_id}" + (f" floor {s.floor}" if s.floor is not None else "")
    extra = f", {sources} sources" if sources > 1 else ""
    danger = f"; impact in {sensitive}" if sensitive is not None else ""
    return f"Falling object{where} at {zone.name} (confidence {fused:.2f}{extra}{danger})"


FALLING_OBJECT = Hazard(
    name=HAZARD,
    params_model=FallingObjectParams,
    rule=FallingObjectRule,
    zone_types=("fall_zone",),
    label=Label("Falling object", "高空坠物"),
    cap_event="Falling object from a building",
    cap_categories=("Safety",),  # "general emergency and public safety"
    service=Service("Falling object", "An object falling from a building facade, seen by "
                    "high-altitude cameras or reported by grid workers.",
                    ("falling object", "facade", "building", "high-rise"), "Public safety"),
    instruction="Cordon the area at the foot of the building; find the floor and the source "
                "with building management; keep pedestrians away.",
    sensing=Sensing(kinds=("camera",), radius_m=CAMERA_RANGE_M),
    metric=Metric("confidence", Label("", ""), "above", Label("confidence", "置信度")),
    resident_words=Label("a falling object", "高空坠物"),
    appeal_match=lambda found: "fall" in found and bool(
        found & {"glass", "facade", "highrise", "window", "sign"}),
    extra_alerts=(AlertKind(
        FALLING_OBJECT_PATTERN, Label("Falling-object pattern", "多次高空坠物"),
        "Falling object pattern", ("Other",),
        "Repeated objects from this building: with its management, find the floor and the "
        "person; post notices; keep the area cordoned.", ("fall_zone",)),),
)
