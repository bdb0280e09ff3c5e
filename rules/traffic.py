"""Traffic: congestion from detector speeds and occupancy, suspected and reported incidents.

**Congestion.** The zone speed is the MEAN of its trusted, fresh detectors' latest speeds. Not the
minimum: a detector at a stop line reads low speeds in normal operation, and congestion worth an
alert slows the whole zone. A reading with no vehicles (flow 0 and occupancy 0) carries no speed
and is left out; with no vehicles at all the zone is not congested. The speed is judged as a ratio
to the zone type's free-flow speed: the km/h thresholds of ``TrafficParams`` are for a road of
``free_flow_kmh``, and scale with ``free_flow_kmh_by_type``. Slow traffic counts only with the
zone's mean occupancy at or above ``min_occupancy_pct`` (one slow vehicle is not a jam). A worse
level is raised once it has held for ``hold_s``, a better one (or clear) once it has held for
``clear_hold_s``, with a hysteresis band of ``hysteresis_kmh`` on top.

**Suspected incident.** At one detector, the speed of the last ``suspect_recent_s`` falls by
``suspect_drop`` of its mean over the ``suspect_baseline_s`` before, while occupancy jumps by
``suspect_occupancy_jump_pct`` points: something stopped the flow there (``suspect_level``).

**Incident events** at or above ``incident_min_confidence`` raise orange.

Both incident kinds clear when a tick finds none for ``incident_clear_after_s``, or earlier when
flow recovers: the zone was congested at or after the incident and its speed level has since
cleared (recovery alone is not enough: a fresh collision often has not yet slowed the mean).
The zone's level is the most severe of the speed level and the incidents'.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from operator import itemgetter
from typing import Any, ClassVar

from geo.zones import Zone
from rules.base import NO_CONTEXT, AlertChange, Detection, Observation, RuleContext
from rules.hazard import Hazard, HazardRuleBase, Label, Metric, Sensing, Service, level_lines
from rules.hysteresis import anchor_hold, most_severe, resume_hold, step
from rules.levels import Level
from rules.params import TrafficParams

HAZARD = "traffic"
INCIDENT_TYPE = "incident"
INCIDENT_LEVEL = Level.ORANGE
STALE_S = 900  # a detector's last reading counts in the zone this long


@dataclass(frozen=True, slots=True)
class DetectorReading:
    """The latest reading of one detector; ``speed_kmh`` is ``None`` when no vehicle passed.

    ``recent`` keeps (ts, speed, occupancy) over the suspect baseline for incident detection.
    """

    device_id: str
    ts: datetime
    seq: int
    speed_kmh: float | None
    occupancy_pct: float | None = None
    recent: tuple[tuple[datetime, float, float], ...] = ()

    def evidence(self) -> dict[str, Any]:
        return {"device_id": self.device_id, "seq": self.seq, "ts": self.ts.isoformat(),
                "speed_kmh": self.speed_kmh, "occupancy_pct": self.occupancy_pct}


@dataclass(frozen=True, slots=True)
class TrafficState:
    """One zone's state. ``level`` is what was last emitted: the most severe of the causes."""

    level: Level | None = None
    speed_level: Level | None = None
    detectors: tuple[DetectorReading, ...] = ()  # ordered by device id
    incident_ts: datetime | None = None  # newest qualifying incident (event or suspected)
    incident_level: Level | None = None
    incident_congested: bool = False  # the zone was congested at or after that incident
    restored: bool = False
    hold_until: datetime | None = None
    raise_since: datetime | None = None  # a worse speed level has been proposed since
    lower_since: datetime | None = None  # a better one has been proposed since

    @property
    def speed_kmh(self) -> float | None:
        speeds = [d.speed_kmh for d in self.detectors if d.speed_kmh is not None]
        return sum(speeds) / len(speeds) if speeds else None


def _no_vehicles(values: Mapping[str, float]) -> bool:
    return values.get("flow_veh_h") == 0 and values.get("occupancy_pct") == 0


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


class TrafficRule(HazardRuleBase):
    name: ClassVar[str] = HAZARD
    params_model: ClassVar[type[TrafficParams]] = TrafficParams

    def __init__(self, params: TrafficParams) -> None:
        self.params = params
        self._thresholds = {Level.BLUE: params.blue_kmh, Level.YELLOW: params.yellow_kmh,
                            Level.ORANGE: params.orange_kmh}
        self._incident_clear_after = timedelta(seconds=params.incident_clear_after_s)
        self._stale = timedelta(seconds=STALE_S)
        self._baseline = timedelta(seconds=params.suspect_baseline_s)
        self._recent = timedelta(seconds=params.suspect_recent_s)
        self._suspect_level = Level[params.suspect_level.upper()]

    def check_zone(self, zone: Zone) -> None:
        pass  # one set of ratio thresholds serves every traffic zone type

    def initial(self) -> TrafficState:
        return TrafficState()

    def restore(self, level: Level) -> TrafficState:
        # The cause (speed or incident) is not stored; resuming as a speed level lets the next
        # readings confirm or clear it through the usual hysteresis.
        return TrafficState(level=level, speed_level=level, restored=True)

    def level(self, state: TrafficState) -> Level | None:
        return state.level

    def deadline(self, state: TrafficState) -> datetime | None:
        return None if state.incident_ts is None else \
            state.incident_ts + self._incident_clear_after

    def evaluate(
        self, zone: Zone, state: TrafficState, item: Observation | Detection,
        ctx: RuleContext = NO_CONTEXT,
    ) -> tuple[TrafficState, list[AlertChange]]:
        if isinstance(item, Observation):
            if item.kind == "traffic":
                return self._reading(zone, state, item, ctx)
        elif item.type == INCIDENT_TYPE:
            return self._incident(zone, state, item)
        return state, []

    def _scale(self, zone: Zone) -> float:
        p = self.params
        return p.free_flow_kmh_by_type.get(zone.type, p.free_flow_kmh) / p.free_flow_kmh

    def _reading(
        self, zone: Zone, state: TrafficState, obs: Observation, ctx: RuleContext
    ) -> tuple[TrafficState, list[AlertChange]]:
        speed = obs.values.get("speed_kmh")
        if speed is None or not math.isfinite(speed):
            return state, []
        prev = next((d for d in state.detectors if d.device_id == obs.device_id), None)
        if prev is not None and (obs.ts, obs.seq) <= (prev.ts, prev.seq):
            return state, []  # a redelivery or a reading overtaken by a newer one
        occ = obs.values.get("occupancy_pct")
        occ = float(occ) if occ is not None and math.isfinite(occ) else None
        p = self.params
        # ``recent`` is in time order (older readings were turned away above): cut by bisection,
        # not by a scan of the whole window per reading.
        recent = () if prev is None else prev.recent[bisect.bisect_left(
            prev.recent, obs.ts - self._baseline, key=itemgetter(0)):]
        empty = _no_vehicles(obs.values)
        if not empty:
            recent = (*recent, (obs.ts, float(speed), occ or 0.0))
        reading = DetectorReading(obs.device_id, obs.ts, obs.seq,
                                  None if empty else float(speed), occ, recent)
        detectors = tuple(
            sorted(
                (*(d for d in state.detectors if d.device_id != obs.device_id), reading),
                key=lambda d: d.device_id,
            )
        )
        hold_until = anchor_hold(state.restored, state.hold_until, obs.ts, p.resume_hold_s)
        suspect = self._suspect(reading) if ctx.trusted(obs.device_id) else None
        if suspect is None:  # the common case: one new state per reading, made in _assess
            return self._assess(zone, state, obs.ts, ctx, state.level, None, detectors,
                                hold_until)
        new = replace(state, detectors=detectors, hold_until=hold_until,
                      incident_ts=obs.ts if state.incident_ts is None
                      else max(state.incident_ts, obs.ts),
                      incident_level=most_severe(state.incident_level, self._suspect_level),
                      incident_congested=state.incident_congested
                      or state.speed_level is not None)
        return self._assess(zone, new, obs.ts, ctx, state.level, suspect, detectors, hold_until)

    def _suspect(self, d: DetectorReading) -> str | None:
        p = self.params
        if p.suspect_drop <= 0:
            return None
        split = bisect.bisect_left(d.recent, d.ts - self._recent, key=itemgetter(0))
        before, now = d.recent[:split], d.recent[split:]
        if len(before) < 2 or not now:
            return None
        # map(itemgetter): the same sums, in the same order, without a Python-level loop.
        base_v = sum(map(itemgetter(1), before)) / len(before)
        base_o = sum(map(itemgetter(2), before)) / len(before)
        v = sum(map(itemgetter(1), now)) / len(now)
        o = sum(map(itemgetter(2), now)) / len(now)
        if base_v >= p.suspect_min_baseline_kmh and v <= base_v * (1 - p.suspect_drop) and \
                o >= base_o + p.suspect_occupancy_jump_pct:
            return (f"{d.device_id}: speed {base_v:.0f} -> {v:.0f} km/h, occupancy "
                    f"{base_o:.0f} -> {o:.0f} %")
        return None

    def reassess(self, zone: Zone, state: TrafficState, ts: datetime,
                 ctx: RuleContext = NO_CONTEXT) -> tuple[TrafficState, list[AlertChange]]:
        return self._assess(zone, state, ts, ctx, state.level, None, state.detectors,
                            state.hold_until)

    def _assess(self, zone: Zone, state: TrafficState, ts: datetime, ctx: RuleContext,
                before: Level | None, suspect: str | None,
                detectors: tuple[DetectorReading, ...], hold_until: datetime | None
                ) -> tuple[TrafficState, list[AlertChange]]:
        """The level as of ``ts`` from ``state`` with these detectors and resume hold."""
        p = self.params
        used = [d for d in detectors if ctx.trusted(d.device_id) and ts - d.ts <= self._stale]
        zone_speed = _mean([d.speed_kmh for d in used if d.speed_kmh is not None])
        zone_occ = _mean([d.occupancy_pct for d in used if d.occupancy_pct is not None])
        scale = self._scale(zone)
        speed_level = state.speed_level
        raise_since, lower_since = state.raise_since, state.lower_since
        if used:  # with no usable detector the speed is unknown: the level is held
            proposed = None
            if zone_speed is not None:
                proposed = step(state.speed_level, zone_speed / scale, self._thresholds,
                                p.hysteresis_kmh, rising=False)
                if zone_occ is not None and zone_occ < p.min_occupancy_pct:
                    proposed = None  # slow but empty: not a jam
            proposed = resume_hold(state.speed_level, proposed, ts, hold_until)
            speed_level, raise_since, lower_since = self._held(state, proposed, ts)

        incident_ts, congested = state.incident_ts, state.incident_congested
        incident_level = state.incident_level
        if incident_ts is not None and ts >= incident_ts:  # an older reading proves nothing
            if speed_level is not None:
                congested = True
            elif congested:
                # Traffic built up after the incident and has cleared again: flow recovered.
                incident_ts, congested, incident_level = None, False, None
        level = most_severe(speed_level, incident_level if incident_ts is not None else None)
        new = replace(state, level=level, speed_level=speed_level, incident_ts=incident_ts,
                      incident_level=incident_level, incident_congested=congested,
                      raise_since=raise_since, lower_since=lower_since, detectors=detectors,
                      hold_until=hold_until)
        if level == before:
            return new, []
        shown = "no vehicles" if zone_speed is None else f"{zone_speed:.0f} km/h"
        if zone_occ is not None and zone_speed is not None:
            shown += f", occupancy {zone_occ:.0f} %"
        if level is None:
            title = f"Traffic flowing at {zone.name}: {shown}"
        elif level == speed_level:
            title = f"Traffic {shown} at {zone.name}"
        elif suspect is not None or (level == self._suspect_level and incident_level == level):
            title = f"Suspected traffic incident at {zone.name}: {suspect or shown}"
        else:
            title = f"Traffic incident at {zone.name}, {shown}"
        evidence: list[dict[str, Any]] = [d.evidence() for d in used]
        if suspect is not None:
            evidence.append({"suspected_incident": suspect})
        return new, [AlertChange(zone.id, HAZARD, level, ts, title, tuple(evidence))]

    def _held(self, state: TrafficState, proposed: Level | None, ts: datetime
              ) -> tuple[Level | None, datetime | None, datetime | None]:
        """Apply the minimum durations: (speed level, raise_since, lower_since)."""
        p, current = self.params, state.speed_level
        if proposed == current:
            return current, None, None
        if proposed is not None and proposed.more_severe_than(current):
            since = state.raise_since or ts
            if (ts - since).total_seconds() >= p.hold_s:
                return proposed, None, None
            return current, since, None
        since = state.lower_since or ts
        if (ts - since).total_seconds() >= p.clear_hold_s:
            return proposed, None, None
        return current, None, since

    def _incident(
        self, zone: Zone, state: TrafficState, det: Detection
    ) -> tuple[TrafficState, list[AlertChange]]:
        c = det.confidence
        if c is None or not c >= self.params.incident_min_confidence:  # `not >=` also drops NaN
            return state, []
        if state.incident_ts is None:
            incident_ts, congested = det.ts, state.speed_level is not None
        else:
            # max(): a late-delivered older incident must not shorten the alert's life.
            incident_ts = max(state.incident_ts, det.ts)
            congested = state.incident_congested or state.speed_level is not None
        incident_level = most_severe(state.incident_level, INCIDENT_LEVEL)
        level = most_severe(state.speed_level, incident_level)
        new = replace(state, level=level, incident_ts=incident_ts, incident_level=incident_level,
                      incident_congested=congested)
        if level == state.level:
            return new, []
        subtype = det.attrs.get("subtype", "incident")
        title = f"Traffic {subtype} at {zone.name} (confidence {c:.2f})"
        evidence: dict[str, Any] = {"device_id": det.device_id, "event_id": det.event_id,
                                    "ts": det.ts.isoformat(), "confidence": c, "subtype": subtype}
        return new, [AlertChange(zone.id, HAZARD, level, det.ts, title, (evidence,))]

    def tick(
        self, zone: Zone, state: TrafficState, now: datetime, ctx: RuleContext = NO_CONTEXT,
    ) -> tuple[TrafficState, list[AlertChange]]:
        due = self.deadline(state)
        if due is None or now < due:
            return state, []
        level = state.speed_level
        new = replace(state, level=level, incident_ts=None, incident_level=None,
                      incident_congested=False)
        if level == state.level:
            return new, []
        minutes = self.params.incident_clear_after_s / 60
        if level is None:
            title = f"Traffic incident at {zone.name} cleared: none reported for {minutes:g} min"
        else:
            speed = _mean([d.speed_kmh for d in state.detectors
                           if d.speed_kmh is not None and ctx.trusted(d.device_id)])
            shown = "no vehicles" if speed is None else f"{speed:.0f} km/h"
            title = f"Traffic {shown} at {zone.name}"
        assert state.incident_ts is not None
        evidence = ({"last_incident_ts": state.incident_ts.isoformat()},)
        # Stamped when it became due, not when the tick came: the same whatever the tick rate.
        return new, [AlertChange(zone.id, HAZARD, level, due, title, evidence)]


def _chart_lines(rules: Mapping[str, Any], zone_type: str) -> dict[str, float]:  # noqa: ARG001
    return level_lines(rules.get(HAZARD), "kmh")


def _appeal(found: frozenset[str]) -> bool:
    return bool(found & {"jam", "crash", "signal"}) or ("stuck" in found and "vehicle" in found)


TRAFFIC = Hazard(
    name=HAZARD,
    params_model=TrafficParams,
    rule=TrafficRule,
    zone_types=("intersection", "road_segment"),
    label=Label("Traffic", "交通拥堵"),
    cap_event="Traffic incident",
    cap_categories=("Transport",),
    service=Service("Traffic incident", "A collision, a stalled vehicle, a wrong-way driver or "
                    "heavy congestion, from traffic detectors or grid workers.",
                    ("traffic", "collision", "congestion", "road"), "Streets"),
    instruction="Check the road on site; direct traffic and clear the blockage.",
    sensing=Sensing(kinds=("traffic",)),
    sensor_backed=True,
    metric=Metric("speed_kmh", Label("km/h", "公里/小时"), "below",
                  Label("traffic speed", "车速"), _chart_lines),
    resident_words=Label("a traffic problem", "交通问题"),
    appeal_match=_appeal,
)
