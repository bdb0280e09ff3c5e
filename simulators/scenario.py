"""Scenarios as data: what happens to the district, when and where.

A :class:`Scenario` is a timeline in simulated seconds from the start: storms, congestion and
falling-object throwers. :meth:`ScenarioState.build` binds it to a fleet, its zones, a start time
and a seed; devices then ask the state what the world does to them (rain here now, extra traffic
demand, throws this camera sees). Deterministic for a seed; no clock, no I/O.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from shapely.geometry import Point

from simulators.devices.base import Position, distance_m
from simulators.errors import ScenarioError

if TYPE_CHECKING:
    from citywatch.config import Device
    from geo.zones import Zone

log = logging.getLogger(__name__)

TRAFFIC_ZONE_TYPES = frozenset({"intersection", "road_segment"})


@dataclass(frozen=True, slots=True)
class Window:
    """A trapezoid in simulated seconds from the start: 0, ramps up to 1, holds, ramps down to 0."""

    start_s: float
    ramp_up_s: float
    hold_s: float
    ramp_down_s: float

    def __post_init__(self) -> None:
        if min(self.start_s, self.ramp_up_s, self.hold_s, self.ramp_down_s) < 0:
            raise ScenarioError(f"{self}: times must be 0 or more")

    @property
    def end_s(self) -> float:
        return self.start_s + self.ramp_up_s + self.hold_s + self.ramp_down_s

    def level(self, s: float) -> float:
        up_end = self.start_s + self.ramp_up_s
        hold_end = up_end + self.hold_s
        if s <= self.start_s or s >= self.end_s:
            return 0.0
        if s < up_end:
            return (s - self.start_s) / self.ramp_up_s
        if s <= hold_end:
            return 1.0
        return (self.end_s - s) / self.ramp_down_s


@dataclass(frozen=True, slots=True)
class Storm:
    """Rain of ``peak_mm_h`` over ``window``; district-wide unless ``zones`` names zone ids."""

    window: Window
    peak_mm_h: float
    zones: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.peak_mm_h < 0:
            raise ScenarioError(f"storm peak_mm_h {self.peak_mm_h}: must be 0 or more")


@dataclass(frozen=True, slots=True)
class Congestion:
    """Extra traffic demand (as a fraction of road capacity) at some detectors over ``window``.

    Targets: the detectors in ``zones``, plus ``devices``; if both are empty, ``count`` traffic
    zones (or, without zones, detectors) picked with the seed.
    """

    window: Window
    extra_demand: float
    zones: tuple[str, ...] = ()
    devices: tuple[str, ...] = ()
    count: int = 2

    def __post_init__(self) -> None:
        if self.extra_demand < 0 or self.count < 0:
            raise ScenarioError(f"{self}: extra_demand and count must be 0 or more")


@dataclass(frozen=True, slots=True)
class Thrower:
    """Someone dropping objects from a building in view of ``camera`` onto fall zone ``zone``.

    ``throws`` objects land between ``start_s`` and ``end_s``. A missing camera or zone is picked
    with the seed (a camera and the fall zone nearest it); without fall zones objects land near
    the camera.
    """

    start_s: float
    end_s: float
    throws: int = 1
    camera: str | None = None
    zone: str | None = None
    floors: tuple[int, int] = (6, 24)
    confidence: tuple[float, float] = (0.8, 0.97)
    building_id: str | None = None

    def __post_init__(self) -> None:
        lo, hi = self.confidence
        if not (0 <= self.start_s <= self.end_s and self.throws >= 0):
            raise ScenarioError(f"{self}: expected 0 <= start_s <= end_s and throws >= 0")
        if not (0 <= lo <= hi <= 1):
            raise ScenarioError(f"confidence {self.confidence}: expected 0 <= low <= high <= 1")
        if not (1 <= self.floors[0] <= self.floors[1]):
            raise ScenarioError(f"floors {self.floors}: expected 1 <= low <= high")


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    description: str
    default_speed: float = 30.0  # simulated seconds per real second for `citywatch run`
    base_demand: float = 0.4  # traffic demand as a fraction of capacity when nothing happens
    storms: tuple[Storm, ...] = ()
    congestions: tuple[Congestion, ...] = ()
    throwers: tuple[Thrower, ...] = ()


@dataclass(frozen=True, slots=True)
class Throw:
    """One object that reaches the ground at ``at`` in view of ``camera_id``."""

    at: datetime
    camera_id: str
    zone: Zone | None
    building_id: str
    floor: int
    confidence: float


# The demo: every hazard within 30 simulated minutes, i.e. 60 real seconds at speed 30 (one
# simulated minute every 2 real seconds). Simulated minutes, as the default fleet behaves:
#   2-6    rain starts and builds to 110 mm/h (a cloudburst); it holds to 18 and stops by 22.
#   9-18   underpass gauges pass 10 cm (~min 9), 25 cm (~min 14) and 30 cm (~min 16); they peak at
#          35-45 cm near minute 22, fall under 25 cm by ~min 40-55 and are dry by about min 120.
#   6-24   two traffic zones jam: demand ramps up over 6-9, speed under 12 km/h from ~min 9,
#          back to free flow by ~min 29.
#   9-14   two objects thrown from floors 12-22 land in a fall zone (confidence 0.90-0.97).
DEMO = Scenario(
    name="demo",
    description=(
        "Cloudburst (110 mm/h, minutes 2-22) floods underpasses past 30 cm, then recedes; two "
        "traffic zones jam (minutes 6-29); objects fall into a fall zone (minutes 9-14). "
        "Run at speed 30: all of it within the first real minute."
    ),
    default_speed=30.0,
    storms=(Storm(Window(120, 240, 720, 240), peak_mm_h=110.0),),
    congestions=(Congestion(Window(360, 180, 900, 300), extra_demand=1.05, count=2),),
    throwers=(Thrower(540, 840, throws=2, floors=(12, 22), confidence=(0.90, 0.97)),),
)

QUIET = Scenario(name="quiet", description="A dry, calm day: nothing happens.", default_speed=30.0)

SCENARIOS: dict[str, Scenario] = {s.name: s for s in (DEMO, QUIET)}


def get_scenario(name: str) -> Scenario:
    try:
        return SCENARIOS[name]
    except KeyError:
        raise ScenarioError(f"scenario {name!r}: expected one of {', '.join(SCENARIOS)}") from None


@dataclass(slots=True)
class _BoundStorm:
    storm: Storm
    geoms: list[Any]  # shapely geometries of its zones; empty: district-wide


@dataclass(slots=True)
class ScenarioState:
    """A scenario bound to a fleet, its zones, a start time and a seed. Build with :meth:`build`."""

    scenario: Scenario
    start: datetime
    seed: int
    _storms: list[_BoundStorm]
    _congested: list[tuple[Congestion, frozenset[str]]]
    _throws: dict[str, list[Throw]]
    _origin: Position
    _phases: tuple[float, float, float, float]
    _in_zone_cache: dict[tuple[int, Position], bool] = field(default_factory=dict)

    @classmethod
    def build(cls, scenario: Scenario, start: datetime, seed: int,
              devices: Sequence[Device], zones: Sequence[Zone] = ()) -> ScenarioState:
        if start.tzinfo is None:
            raise ScenarioError("start: expected a timezone-aware datetime")
        # A string seed hashes the same in every process (unlike hash()), so runs repeat.
        rng = random.Random(f"{seed}:scenario:{scenario.name}")  # noqa: S311 - not security
        zones_by_id = {z.id: z for z in zones}
        positions = [d.position for d in devices] or [(0.0, 0.0)]
        origin = (sum(p[0] for p in positions) / len(positions),
                  sum(p[1] for p in positions) / len(positions))
        phases = (rng.uniform(0, 2 * math.pi), rng.uniform(0, 2 * math.pi),
                  rng.uniform(0.5, 1.5), rng.uniform(0.5, 1.5))
        storms = [_BoundStorm(s, [zones_by_id[z].geometry for z in _known(s.zones, zones_by_id)])
                  for s in scenario.storms]
        congested = [(c, _congestion_targets(c, devices, zones, rng)) for c in scenario.congestions]
        throws: dict[str, list[Throw]] = {}
        for th in scenario.throwers:
            for throw in _throws(th, start, devices, zones, rng):
                throws.setdefault(throw.camera_id, []).append(throw)
        return cls(scenario, start, seed, storms, congested, throws, origin, phases)

    def elapsed_s(self, t: datetime) -> float:
        return (t - self.start).total_seconds()

    def rain_mm_h(self, pos: Position, t: datetime) -> float:
        """Rain rate at ``pos`` and ``t``: the storms' intensity times a smooth spatial pattern."""
        s = self.elapsed_s(t)
        total = 0.0
        for i, b in enumerate(self._storms):
            level = b.storm.window.level(s)
            if level > 0 and (not b.geoms or self._inside(i, b.geoms, pos)):
                total += b.storm.peak_mm_h * level
        return total * self._spatial(pos) if total > 0 else 0.0

    def congestion(self, device_id: str, t: datetime) -> float:
        """Extra traffic demand at a detector, as a fraction of its capacity."""
        s = self.elapsed_s(t)
        return sum(c.extra_demand * c.window.level(s) for c, ids in self._congested
                   if device_id in ids)

    @property
    def base_demand(self) -> float:
        return self.scenario.base_demand

    def throws(self, camera_id: str, after: datetime, until: datetime) -> list[Throw]:
        """Objects landing in view of ``camera_id`` in ``(after, until]``."""
        return [th for th in self._throws.get(camera_id, ()) if after < th.at <= until]

    @property
    def congested_devices(self) -> frozenset[str]:
        return frozenset().union(*(ids for _, ids in self._congested))

    def _spatial(self, pos: Position) -> float:
        # Storm cells are a few km across: a smooth +-12 % pattern over the district, so nearby
        # gauges agree and distant ones differ.
        x_km = (pos[0] - self._origin[0]) * 111.32 * math.cos(math.radians(pos[1]))
        y_km = (pos[1] - self._origin[1]) * 111.32
        p1, p2, k1, k2 = self._phases
        return 1.0 + 0.12 * math.sin(k1 * x_km + p1) * math.cos(k2 * y_km + p2)

    def _inside(self, storm_index: int, geoms: list[Any], pos: Position) -> bool:
        key = (storm_index, pos)
        if key not in self._in_zone_cache:
            if len(self._in_zone_cache) > 100_000:
                self._in_zone_cache.clear()  # workers walk, so their positions never repeat
            p = Point(pos)
            self._in_zone_cache[key] = any(g.covers(p) for g in geoms)
        return self._in_zone_cache[key]


def _known(ids: Sequence[str], zones_by_id: dict[str, Zone]) -> list[str]:
    for z in ids:
        if z not in zones_by_id:
            log.warning("scenario names zone %r, which is not in the zones file; ignored", z)
    return [z for z in ids if z in zones_by_id]


def _devices_in(zone: Zone, devices: Sequence[Device], kind: str) -> list[str]:
    return [d.id for d in devices if d.kind == kind and zone.geometry.covers(Point(d.position))]


def _congestion_targets(c: Congestion, devices: Sequence[Device], zones: Sequence[Zone],
                        rng: random.Random) -> frozenset[str]:
    detectors = sorted(d.id for d in devices if d.kind == "traffic")
    zones_by_id = {z.id: z for z in zones}
    targets: set[str] = set()
    for zid in _known(c.zones, zones_by_id):
        targets.update(_devices_in(zones_by_id[zid], devices, "traffic"))
    for did in c.devices:
        if did in detectors:
            targets.add(did)
        else:
            log.warning("scenario names detector %r, which is not in the fleet; ignored", did)
    if c.zones or c.devices:
        return frozenset(targets)
    # Pick whole traffic zones, so that the platform sees congestion per zone as in the field.
    candidates = [(z.id, ids) for z in sorted(zones, key=lambda z: z.id)
                  if z.type in TRAFFIC_ZONE_TYPES and (ids := _devices_in(z, devices, "traffic"))]
    for _, ids in rng.sample(candidates, min(c.count, len(candidates))):
        targets.update(ids)
    picked_zones = min(c.count, len(candidates))
    # Too few traffic zones (or none loaded): top up with single detectors.
    rest = [d for d in detectors if d not in targets]
    targets.update(rng.sample(rest, min(c.count - picked_zones, len(rest))))
    return frozenset(targets)


def _throws(th: Thrower, start: datetime, devices: Sequence[Device], zones: Sequence[Zone],
            rng: random.Random) -> list[Throw]:
    cameras = {d.id: d for d in devices if d.kind == "camera"}
    fall_zones = sorted((z for z in zones if z.type == "fall_zone"), key=lambda z: z.id)
    zone = next((z for z in zones if z.id == th.zone), None)
    if th.zone is not None and zone is None:
        log.warning("thrower names zone %r, not in the zones file; near its camera", th.zone)
    camera = cameras.get(th.camera) if th.camera is not None else None
    if th.camera is not None and camera is None:
        log.warning("thrower names camera %r, which is not in the fleet; picking one", th.camera)
    if camera is None and zone is not None and cameras:
        centre = zone.geometry.centroid
        camera = min(cameras.values(),
                     key=lambda d: distance_m(d.position, (centre.x, centre.y)))
    if camera is None and cameras:
        camera = cameras[rng.choice(sorted(cameras))]
    if camera is None:
        log.warning("thrower: no camera in the fleet; no throws")
        return []
    if zone is None and th.zone is None and fall_zones:
        cam_pos = camera.position

        def dist(z: Zone) -> float:
            c = z.geometry.centroid
            return distance_m(cam_pos, (c.x, c.y))

        zone = min(fall_zones, key=dist)
    building_id = th.building_id or f"B-{rng.randrange(1, 10_000):04d}"
    out = []
    for _ in range(th.throws):
        at = start + timedelta(seconds=rng.uniform(th.start_s, th.end_s))
        out.append(Throw(at=at, camera_id=camera.id, zone=zone, building_id=building_id,
                         floor=rng.randint(*th.floors), confidence=rng.uniform(*th.confidence)))
    return sorted(out, key=lambda x: x.at)
