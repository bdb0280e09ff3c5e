"""Ground truth of a run: which hazards physically existed where and when, and which readings
were faults, judged with the thresholds of the configuration the scenario ran with.

- waterlogging: a zone's depth is the deepest true (noise-free) depth of its gauges; the hazard
  lasts while that depth is at or above the zone type's ``yellow_cm``; its peak level comes from
  the same thresholds.
- traffic: a zone's speed is the mean true speed of its detectors (as the rule fuses them); the
  hazard lasts while it is below ``yellow_kmh`` (scaled by the zone type's free-flow speed when
  the rules have one); an incident is a hazard from the collision until its queue is gone, at
  orange (the level an incident raises).
- falling_object: from the release to the landing plus :data:`FALL_WINDOW_S`, in the fall zone;
  red when the camera's detection reaches ``red_confidence`` (or the zone is sensitive), else
  orange; a fall the camera missed is still listed, with a note.

Intervals of one hazard in one zone that overlap are merged. Times are those the devices stamp
(``stamp`` maps simulated time to them when the run stamps wall-clock time).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from simulators.devices.base import Site
from simulators.truth import FaultTruth, GroundTruth, Hazard, HazardTruth

if TYPE_CHECKING:
    from geo.zones import Zone
    from simulators.configured import SimConfig
    from simulators.faults import FaultyDevice
    from simulators.scenario import ScenarioState

RED, ORANGE, YELLOW, BLUE = 1, 2, 3, 4
FALL_WINDOW_S = 60.0  # after the landing: time for a camera's detection to arrive
# Spans of one hazard closer than this are one: a zone mean flickering across the threshold as
# its detectors report in turn is not two jams.
MERGE_GAP = timedelta(minutes=2)
TRAFFIC_TYPES = frozenset({"intersection", "road_segment"})


@dataclass(slots=True)
class _Interval:
    start: datetime
    end: datetime | None
    peak: int
    note: str = ""


@dataclass(slots=True)
class _Zone:
    """One zone's running state: the latest true value per device and the open interval."""

    values: dict[str, float] = field(default_factory=dict)
    open: _Interval | None = None
    closed: list[_Interval] = field(default_factory=list)


class TruthRecorder:
    """Fed with every device's true values as the simulation steps; :meth:`result` at the end."""

    def __init__(self, config: SimConfig, zones: Iterable[Zone], sites: Mapping[str, Site]) -> None:
        self.rules = config.rules
        self.zones = {z.id: z for z in zones}
        self.sites = sites
        self._water: dict[str, _Zone] = {}
        self._traffic: dict[str, _Zone] = {}

    # -- thresholds ----------------------------------------------------------------------------
    def water_level(self, zone_type: str, depth_cm: float) -> int | None:
        t = self.rules.waterlogging.thresholds.get(zone_type)
        if t is None or depth_cm < t.yellow_cm:
            return None
        return RED if depth_cm >= t.red_cm else ORANGE if depth_cm >= t.orange_cm else YELLOW

    def traffic_level(self, zone_type: str, speed_kmh: float) -> int | None:
        p = self.rules.traffic
        # Newer rules scale the km/h thresholds by the zone type's free-flow speed.
        base = float(getattr(p, "free_flow_kmh", 0) or 0)
        by_type: Mapping[str, float] = getattr(p, "free_flow_kmh_by_type", {}) or {}
        scale = by_type.get(zone_type, base) / base if base else 1.0
        if speed_kmh >= p.yellow_kmh * scale:
            return None
        return ORANGE if speed_kmh < p.orange_kmh * scale else YELLOW

    # -- observations --------------------------------------------------------------------------
    def observe(self, kind: str, device_id: str, t: datetime, values: Mapping[str, float]) -> None:
        if kind == "water" and "water_depth_cm" in values:
            self._update("waterlogging", self._water, device_id, t, values["water_depth_cm"],
                         max, self.water_level)
        elif kind == "traffic" and "speed_kmh" in values:
            self._update("traffic", self._traffic, device_id, t, values["speed_kmh"],
                         lambda vs: sum(vs) / len(vs), self.traffic_level)

    def _update(self, hazard: str, table: dict[str, _Zone], device_id: str, t: datetime,
                value: float, fuse: Callable[[list[float]], float],
                level_of: Callable[[str, float], int | None]) -> None:
        site = self.sites.get(device_id)
        if site is None:
            return
        for zone_id in site.zone_ids:
            zone = self.zones.get(zone_id)
            if zone is None or hazard not in zone.hazards:
                continue
            state = table.setdefault(zone_id, _Zone())
            state.values[device_id] = value
            level = level_of(zone.type, fuse(list(state.values.values())))
            if level is None:
                if state.open is not None:
                    state.open.end = t
                    state.closed.append(state.open)
                    state.open = None
            elif state.open is None:
                state.open = _Interval(t, None, level)
            else:
                state.open.peak = min(state.open.peak, level)

    # -- the result ----------------------------------------------------------------------------
    def result(self, world: ScenarioState, end: datetime, faulty: Iterable[FaultyDevice],
               stamp: Callable[[datetime], datetime] | None = None,
               meta: Mapping[str, Any] | None = None) -> GroundTruth:
        found: dict[tuple[Hazard, str], list[_Interval]] = {}
        tables: tuple[tuple[Hazard, dict[str, _Zone]], ...] = (
            ("waterlogging", self._water), ("traffic", self._traffic))
        for hazard, table in tables:
            for zone_id, state in table.items():
                spans = [*state.closed]
                if state.open is not None:
                    spans.append(_Interval(state.open.start, end, state.open.peak,
                                           "still on at the end"))
                if spans:
                    found.setdefault((hazard, zone_id), []).extend(spans)
        for inc in world.incidents:
            if inc.at > end:
                continue
            note = f"{inc.spec.subtype} at {inc.device_id}"
            for zone_id in self._zones_of(inc.device_id, TRAFFIC_TYPES):
                found.setdefault(("traffic", zone_id), []).append(
                    _Interval(inc.at, min(inc.queue_gone, end), ORANGE, note))
        fo = self.rules.falling_object
        sensitive = frozenset(getattr(fo, "sensitive_types", ()) or ())
        for throw in world.all_throws():
            if throw.zone is None or throw.released > end:
                continue
            red = throw.confidence >= fo.red_confidence or throw.zone.type in sensitive
            note = (f"{throw.building_id} floor {throw.floor} ({throw.height_m:.1f} m), camera "
                    f"{throw.camera_id} confidence {throw.confidence:.2f}")
            if throw.confidence < fo.min_confidence:
                note += " (below min_confidence: the camera alone cannot raise it)"
            landed = throw.at + timedelta(seconds=FALL_WINDOW_S)
            found.setdefault(("falling_object", throw.zone.id), []).append(
                _Interval(throw.released, min(end, landed), RED if red else ORANGE, note))
        s = stamp or (lambda t: t)
        hazards = [HazardTruth(hazard, zone_id, s(i.start), s(i.end or end), i.peak, i.note)
                   for (hazard, zone_id), spans in sorted(found.items())
                   for i in _merge(spans)]
        faults = []
        for dev in faulty:
            for f in dev.faults:
                if f.start > end:
                    continue
                if f.kind == "dead_battery":
                    if dev.died_at is None:
                        continue  # still alive at the end: nothing it sent was wrong
                    faults.append(FaultTruth(dev.id, f.kind, s(dev.died_at), s(end),
                                             f"battery ran down from {s(f.start).isoformat()}"))
                    continue
                stop = end if f.end is None else min(f.end, end)
                note = {"dropped": "readings buffered and delivered on reconnect",
                        "silent": "connected, no readings"}.get(f.kind, "")
                faults.append(FaultTruth(dev.id, f.kind, s(f.start), s(stop), note))
        return GroundTruth(
            scenario=world.scenario.name, seed=world.seed, start=s(world.start), end=s(end),
            hazards=tuple(sorted(hazards, key=lambda h: (h.start, h.hazard, h.zone_id))),
            faults=tuple(sorted(faults, key=lambda f: (f.start, f.device_id))),
            meta=dict(meta or {}))

    def _zones_of(self, device_id: str, types: frozenset[str]) -> list[str]:
        site = self.sites.get(device_id)
        if site is None:
            return []
        return [z for z in site.zone_ids if z in self.zones and self.zones[z].type in types]


def _merge(spans: list[_Interval]) -> list[_Interval]:
    out: list[_Interval] = []
    for i in sorted(spans, key=lambda x: x.start):
        last = out[-1] if out else None
        if last is not None and last.end is not None and i.start <= last.end + MERGE_GAP:
            last.end = max(last.end, i.end) if i.end is not None else None
            last.peak = min(last.peak, i.peak)
            last.note = "; ".join(n for n in (last.note, i.note) if n)
        else:
            out.append(_Interval(i.start, i.end, i.peak, i.note))
    return out
