"""Scenarios as data: what happens to the district, when and where.

A :class:`Scenario` is validated from a YAML file in ``simulators/scenarios/`` (or any path): a
timeline in simulated time from the start with design storms, failing drains, traffic demand,
congestion, incidents, people throwing objects from buildings and faulty sensors, plus the seed
and speed it runs with by default. Times are seconds or strings such as ``90s``, ``30min``,
``2h``. A file may start from another one with ``base: NAME`` and override its top-level keys.

:meth:`ScenarioState.build` binds a scenario to a fleet, its zones, a start time and a seed: the
world the devices live in. Devices ask it what the world does to them (rain here now, demand,
incidents, throws in view) and tell it what others can see (standing water). Deterministic for
a seed; no clock, no I/O.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator
from shapely.geometry import Point

from geo.position import Position, metres
from simulators.devices.base import Site
from simulators.devices.camera import detection_confidence, detection_distance_m, is_night
from simulators.errors import ScenarioError
from simulators.physics.ballistics import fall_time_s, release_height_m
from simulators.physics.rain import ChicagoStorm, StormCell, texture
from simulators.physics.traffic import daily_demand, queue_dissolves_s, queue_extent_km

if TYPE_CHECKING:
    from geo.zones import Zone
    from simulators.configured import DeviceConfig

log = logging.getLogger(__name__)

TRAFFIC_ZONE_TYPES = frozenset({"intersection", "road_segment"})
FLOOD_ZONE_TYPES = frozenset({"underpass", "low_road"})
LOCAL_UTC_OFFSET_H = 8  # China Standard Time, no daylight saving
KM_PER_DEG = 111.32
FaultKind = Literal["stuck", "spike", "drift", "silent", "dead_battery", "dropped"]
IncidentKind = Literal["collision", "stalled_vehicle", "wrong_way"]

_DURATION_RE = re.compile(r"\s*(?:(\d+(?:\.\d+)?)\s*h)?\s*(?:(\d+(?:\.\d+)?)\s*min)?"
                          r"\s*(?:(\d+(?:\.\d+)?)\s*s)?\s*")


def parse_duration(value: Any) -> Any:
    """Seconds from a number or a string like ``1h30min``, ``45s``; other values pass through
    to pydantic, which then reports them."""
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return float(value)  # plain seconds
        m = _DURATION_RE.fullmatch(value)
        if m is None or not any(m.groups()):
            raise ValueError(f"{value!r}: expected seconds or a duration like 90s, 30min, 2h")
        h, mins, s = (float(g) if g else 0.0 for g in m.groups())
        return h * 3600 + mins * 60 + s
    return value


Duration = Annotated[float, BeforeValidator(parse_duration), Field(ge=0)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Window(_Model):
    """A trapezoid in simulated time: 0, ramps up to 1, holds, ramps down to 0."""

    start: Duration = Field(description="when the ramp up begins")
    ramp_up: Duration = Field(default=600, description="how long it takes to reach its full level")
    hold: Duration = Field(default=1800, description="how long it stays at its full level")
    ramp_down: Duration = Field(default=600, description="how long it takes to fade out")

    @property
    def end(self) -> float:
        return self.start + self.ramp_up + self.hold + self.ramp_down

    def level(self, s: float) -> float:
        up_end = self.start + self.ramp_up
        if s <= self.start or s >= self.end:
            return 0.0
        if s < up_end:
            return (s - self.start) / self.ramp_up
        if s <= up_end + self.hold:
            return 1.0
        return (self.end - s) / self.ramp_down


class StormSpec(_Model):
    """A Chicago design storm from the Suzhou formula, carried by a moving cell."""

    start: Duration = Field(default=0, description="when it begins to rain at the centre")
    return_period_years: float = Field(ge=1, le=1000, description="how rare the storm is")
    duration: Duration = Field(gt=0, description="how long the design storm lasts")
    peak_ratio: float = Field(default=0.43, gt=0, lt=1, description="peak position (r)")
    towards_deg: float = Field(default=90, description="direction the cell moves (0 north)")
    speed_km_h: float = Field(default=30, ge=0, description="how fast the cell moves")
    width_km: float = Field(default=12, gt=0, description="width of the cell across its track")
    offset_km: float = Field(default=0, description="track to the right of the district centre")

    def hyetograph(self) -> ChicagoStorm:
        return ChicagoStorm(self.return_period_years, self.duration / 60, self.peak_ratio)

    def cell(self) -> StormCell:
        return StormCell(self.towards_deg, self.speed_km_h, self.width_km, self.offset_km)


class DrainFailure(_Model):
    """Drains or pumps at some low points carrying only ``capacity`` of their design flow."""

    capacity: float = Field(ge=0, le=1, description="share of the design capacity left")
    start: Duration = Field(default=0)
    end: Duration | None = Field(default=None, description="none: to the end")
    zones: tuple[str, ...] = Field(default=(), description="zone ids whose gauges are affected")
    devices: tuple[str, ...] = Field(default=(), description="gauge ids")
    count: int = Field(default=0, ge=0, description="else this many underpass gauges, by seed")


class Congestion(_Model):
    """Extra traffic demand (a share of road capacity) at some detectors over ``window``.

    Targets: the detectors in ``zones`` plus ``devices``; if both are empty, ``count`` traffic
    zones (or, without zones, detectors) picked with the seed.
    """

    window: Window
    extra_demand: float = Field(ge=0, description="added to demand over capacity")
    zones: tuple[str, ...] = ()
    devices: tuple[str, ...] = ()
    count: int = Field(default=2, ge=0)


class Incident(_Model):
    """A collision or breakdown at a detector: part of the road is blocked for ``duration``."""

    at: Duration
    duration: Duration = Field(default=1800, description="until the road is cleared")
    subtype: IncidentKind = "collision"
    blocked: float = Field(default=0.6, gt=0, lt=1, description="share of capacity lost")
    zone: str | None = Field(default=None, description="a traffic zone; its first detector")
    device: str | None = Field(default=None, description="the detector at the incident")
    confidence: tuple[float, float] = Field(default=(0.8, 0.95),
                                            description="of the detector's incident event")

    @model_validator(mode="after")
    def _confidence(self) -> Incident:
        lo, hi = self.confidence
        if not 0 <= lo <= hi <= 1:
            raise ValueError("confidence: expected 0 <= low <= high <= 1")
        return self


class Thrower(_Model):
    """Someone dropping objects from a building in view of ``camera`` onto fall zone ``zone``.

    ``throws`` objects land between ``start`` and ``end``. A missing camera or zone is picked
    with the seed (a camera and the fall zone nearest it); without fall zones objects land near
    the camera.
    """

    start: Duration
    end: Duration
    throws: int = Field(default=1, ge=0)
    camera: str | None = None
    zone: str | None = None
    building_id: str | None = None
    floors: tuple[int, int] = Field(default=(6, 24), description="lowest and highest floor")
    large: bool = Field(default=False, description="a flowerpot rather than a bottle: easier "
                        "to detect")

    @model_validator(mode="after")
    def _ordered(self) -> Thrower:
        if self.end < self.start:
            raise ValueError("expected start <= end")
        if not 1 <= self.floors[0] <= self.floors[1]:
            raise ValueError("floors: expected 1 <= lowest <= highest")
        return self


class Fault(_Model):
    """A sensor that goes wrong from ``start`` for ``duration`` (none: to the end)."""

    kind: FaultKind
    start: Duration = 0
    duration: Duration | None = None
    device: str | None = Field(default=None, description="the device; else one is picked")
    device_kind: str | None = Field(default=None, description="pick among this kind")
    magnitude: float | None = Field(default=None, description="drift per hour or spike size, in "
                                    "the value's unit (kind defaults otherwise)")


class Scenario(_Model):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str = ""
    seed: int = Field(default=1, description="default seed")
    speed: float = Field(default=60, gt=0, le=3600,
                         description="default simulated seconds per real second")
    duration: Duration | None = Field(default=None, description="simulated; none: runs on")
    time_of_day: str | None = Field(default=None, pattern=r"^([01]\d|2[0-3]):[0-5]\d$",
                                    description="local time (UTC+8) at the start; none: the "
                                    "start's own")
    demand_scale: float = Field(default=1.0, ge=0, description="scales the daily traffic profile")
    false_detections: float = Field(default=1.0, ge=0,
                                    description="scales the cameras' false-detection rates")
    storms: tuple[StormSpec, ...] = ()
    drains: tuple[DrainFailure, ...] = ()
    congestion: tuple[Congestion, ...] = ()
    incidents: tuple[Incident, ...] = ()
    throwers: tuple[Thrower, ...] = ()
    faults: tuple[Fault, ...] = ()

    @property
    def default_speed(self) -> float:
        return self.speed


# ---- loading -----------------------------------------------------------------------------------

SCENARIO_DIR = "scenarios"


def scenario_names() -> list[str]:
    files = resources.files("simulators").joinpath(SCENARIO_DIR)
    return sorted(p.name.removesuffix(".yaml") for p in files.iterdir()
                  if p.name.endswith(".yaml"))


def _read(name_or_path: str, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    path = Path(name_or_path)
    if name_or_path.endswith((".yaml", ".yml")) or path.is_file():
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ScenarioError(f"scenario file {path}: cannot read: {exc.strerror}") from None
        where = str(path)
    else:
        res = resources.files("simulators").joinpath(SCENARIO_DIR, f"{name_or_path}.yaml")
        if not res.is_file():
            raise ScenarioError(f"scenario {name_or_path!r}: expected one of "
                                f"{', '.join(scenario_names())} or a .yaml file")
        text = res.read_text(encoding="utf-8")
        where = f"scenario {name_or_path}"
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ScenarioError(f"{where}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ScenarioError(f"{where}: expected a mapping of keys")
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str) or base in seen:
        raise ScenarioError(f"{where}: base {base!r}: expected another scenario's name, no cycle")
    return {**_read(base, (*seen, name_or_path)), **data}


def load_scenario(name_or_path: str) -> Scenario:
    """A built-in scenario by name, or a YAML file by path; errors name the key and the value."""
    data = _read(name_or_path)
    data.setdefault("name", Path(name_or_path).stem)
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        lines = [f"scenario {name_or_path}: {exc.error_count()} error(s)"]
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "(top level)"
            lines.append(f"  {where}: {err['msg'].removeprefix('Value error, ')}")
        raise ScenarioError("\n".join(lines)) from None


def get_scenario(name: str) -> Scenario:
    return load_scenario(name)


# ---- the bound world ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Throw:
    """One object that reaches the ground at ``at`` in view of ``camera_id``."""

    at: datetime
    camera_id: str
    zone: Zone | None
    building_id: str
    floor: int
    large: bool
    distance_m: float  # camera to the fall
    confidence: float = 0.0  # of the camera's detection; under 0.3 it misses the fall

    @property
    def height_m(self) -> float:
        return release_height_m(self.floor)

    @property
    def released(self) -> datetime:
        return self.at - timedelta(seconds=fall_time_s(self.height_m))


@dataclass(frozen=True, slots=True)
class BoundIncident:
    spec: Incident
    at: datetime
    end: datetime  # cleared
    device_id: str  # the detector that sees it (automatic incident detection)
    position: Position
    distances_km: Mapping[str, float]  # detector id to distance from the incident
    detected: datetime
    confidence: float

    def in_queue(self, device_id: str, t: datetime) -> bool:
        d = self.distances_km.get(device_id)
        if d is None or t < self.at:
            return False
        if d < 0.05 and t < self.end:
            return True  # at the site until it is cleared
        front, tail = queue_extent_km((t - self.at).total_seconds(),
                                      (self.end - self.at).total_seconds())
        return front <= d < tail

    @property
    def queue_gone(self) -> datetime:
        return self.end + timedelta(seconds=queue_dissolves_s((self.end - self.at).total_seconds()))


@dataclass(frozen=True, slots=True)
class BoundFault:
    device_id: str
    kind: FaultKind
    start: datetime
    end: datetime | None
    magnitude: float | None


@dataclass(slots=True)
class ScenarioState:
    """A scenario bound to a fleet, its zones, a start time and a seed. Build with :meth:`build`."""

    scenario: Scenario
    start: datetime
    seed: int
    origin: Position
    phases: tuple[float, float, float, float]
    tod0_h: float
    storms: list[tuple[ChicagoStorm, StormCell, float]]
    congested: list[tuple[Congestion, frozenset[str]]]
    incidents: list[BoundIncident]
    throws_by_camera: dict[str, list[Throw]]
    drains: list[tuple[DrainFailure, frozenset[str]]]
    faults: list[BoundFault]
    flood_spots: dict[str, Position]  # flood-prone gauges: grid workers watch them in a storm
    flood_depth_cm: dict[str, float] = field(default_factory=dict)  # true depth, by gauge
    _demand: dict[int, float] = field(default_factory=dict)

    @classmethod
    def build(cls, scenario: Scenario, start: datetime, seed: int,
              devices: Sequence[DeviceConfig], zones: Sequence[Zone] = (),
              sites: Mapping[str, Site] | None = None) -> ScenarioState:
        if start.tzinfo is None:
            raise ScenarioError("start: expected a timezone-aware datetime")
        # A string seed hashes the same in every process (unlike hash()), so runs repeat.
        rng = random.Random(f"{seed}:scenario:{scenario.name}")  # noqa: S311 - not security
        positions = [d.position for d in devices] or [(0.0, 0.0)]
        origin = (sum(p[0] for p in positions) / len(positions),
                  sum(p[1] for p in positions) / len(positions))
        phases = (rng.uniform(0, 2 * math.pi), rng.uniform(0, 2 * math.pi),
                  rng.uniform(0.5, 1.5), rng.uniform(0.5, 1.5))
        if scenario.time_of_day is not None:
            hh, mm = scenario.time_of_day.split(":")
            tod0 = int(hh) + int(mm) / 60
        else:
            local = start + timedelta(hours=LOCAL_UTC_OFFSET_H)
            tod0 = local.hour + local.minute / 60 + local.second / 3600
        sites = sites or {}
        prone = {d.id: d.position for d in devices
                 if d.kind == "water" and sites.get(d.id, Site()).zone_types & FLOOD_ZONE_TYPES}
        state = cls(
            scenario=scenario, start=start, seed=seed, origin=origin, phases=phases, tod0_h=tod0,
            storms=[(s.hyetograph(), s.cell(), s.start) for s in scenario.storms],
            congested=[(c, _congestion_targets(c, devices, zones, rng))
                       for c in scenario.congestion],
            incidents=[], throws_by_camera={}, drains=[], faults=[], flood_spots=prone)
        for spec in scenario.incidents:
            bound = _bind_incident(spec, start, devices, zones, rng)
            if bound is not None:
                state.incidents.append(bound)
        cameras = {d.id: d.position for d in devices if d.kind == "camera"}
        for th in scenario.throwers:
            for throw in _throws(th, start, devices, zones, rng):
                conf = detection_confidence(
                    throw.distance_m, night=is_night(state.local_hour(throw.at)),
                    rain_mm_h=state.rain_mm_h(cameras[throw.camera_id], throw.at),
                    large=throw.large, rng=rng)
                state.throws_by_camera.setdefault(throw.camera_id, []).append(
                    replace(throw, confidence=conf))
        for throws in state.throws_by_camera.values():
            throws.sort(key=lambda x: x.at)
        state.drains = [(d, _drain_targets(d, devices, zones, prone, rng))
                        for d in scenario.drains]
        state.faults = _bind_faults(scenario.faults, start, devices, rng)
        return state

    # -- time ----------------------------------------------------------------------------------
    def elapsed_s(self, t: datetime) -> float:
        return (t - self.start).total_seconds()

    def at(self, seconds: float) -> datetime:
        return self.start + timedelta(seconds=seconds)

    def local_hour(self, t: datetime) -> float:
        """Local time of day (0-24) in the simulated world."""
        return (self.tod0_h + self.elapsed_s(t) / 3600) % 24

    @property
    def end(self) -> datetime | None:
        d = self.scenario.duration
        return None if d is None else self.at(d)

    # -- rain and water ------------------------------------------------------------------------
    def xy_km(self, pos: Position) -> tuple[float, float]:
        x = (pos[0] - self.origin[0]) * KM_PER_DEG * math.cos(math.radians(pos[1]))
        return x, (pos[1] - self.origin[1]) * KM_PER_DEG

    def rain_mm_h(self, pos: Position, t: datetime) -> float:
        """Rain rate at ``pos`` and ``t``: each storm's hyetograph, shifted by its cell."""
        if not self.storms:
            return 0.0
        s = self.elapsed_s(t)
        x, y = self.xy_km(pos)
        total = 0.0
        for storm, cell, start in self.storms:
            delay, factor = cell.delay_and_factor(x, y)
            total += storm.rate_mm_h((s - start - delay) / 60) * factor
        return total * texture(x, y, self.phases) if total > 0 else 0.0

    def drain_factor(self, device_id: str, t: datetime) -> float:
        s = self.elapsed_s(t)
        f = 1.0
        for d, ids in self.drains:
            if device_id in ids and d.start <= s and (d.end is None or s < d.end):
                f = min(f, d.capacity)
        return f

    def report_depth(self, device_id: str, depth_cm: float) -> None:
        """A gauge tells the world how deep the water really is (grid workers can see it)."""
        if device_id in self.flood_spots:
            self.flood_depth_cm[device_id] = depth_cm

    # -- traffic -------------------------------------------------------------------------------
    @property
    def demand_scale(self) -> float:
        return self.scenario.demand_scale

    def base_demand(self, t: datetime) -> float:
        """The daily profile now, times the scenario's scale (the same for every detector)."""
        minute = int(self.elapsed_s(t) // 60)
        cached = self._demand.get(minute)
        if cached is None:
            # Per simulated minute: the profile changes over tens of minutes, and thousands of
            # detectors would otherwise each evaluate it every step.
            if len(self._demand) > 10_000:
                self._demand.clear()
            cached = self._demand[minute] = daily_demand(
                (self.tod0_h + minute / 60) % 24) * self.scenario.demand_scale
        return cached

    def extra_demand(self, device_id: str, t: datetime) -> float:
        s = self.elapsed_s(t)
        return sum(c.extra_demand * c.window.level(s) for c, ids in self.congested
                   if device_id in ids)

    def capacity_factor(self, device_id: str, t: datetime) -> float:
        """Share of capacity left at a detector: the incidents whose queue reaches it."""
        f = 1.0
        for inc in self.incidents:
            if inc.in_queue(device_id, t):
                f = min(f, 1 - inc.spec.blocked)
        return f

    def incidents_detected(self, device_id: str, after: datetime,
                           until: datetime) -> list[BoundIncident]:
        return [i for i in self.incidents
                if i.device_id == device_id and after < i.detected <= until]

    def active_incidents(self, t: datetime) -> list[BoundIncident]:
        return [i for i in self.incidents if i.at <= t < i.end]

    @property
    def congested_devices(self) -> frozenset[str]:
        return frozenset().union(*(ids for _, ids in self.congested))

    # -- falls ---------------------------------------------------------------------------------
    def throws(self, camera_id: str, after: datetime, until: datetime) -> list[Throw]:
        """Objects landing in view of ``camera_id`` in ``(after, until]``."""
        return [th for th in self.throws_by_camera.get(camera_id, ()) if after < th.at <= until]

    def all_throws(self) -> list[Throw]:
        return sorted((t for ts in self.throws_by_camera.values() for t in ts),
                      key=lambda x: x.at)

    def impacts(self, after: datetime, until: datetime) -> list[Throw]:
        return [th for ts in self.throws_by_camera.values() for th in ts if after < th.at <= until]


# ---- binding helpers ---------------------------------------------------------------------------


def _known(ids: Sequence[str], zones_by_id: Mapping[str, Zone]) -> list[str]:
    for z in ids:
        if z not in zones_by_id:
            log.warning("scenario names zone %r, which is not in the zones file; ignored", z)
    return [z for z in ids if z in zones_by_id]


def _devices_in(zone: Zone, devices: Sequence[DeviceConfig], kind: str) -> list[str]:
    return sorted(d.id for d in devices
                  if d.kind == kind and zone.geometry.covers(Point(d.position)))


def _congestion_targets(c: Congestion, devices: Sequence[DeviceConfig], zones: Sequence[Zone],
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
    # Whole traffic zones, so that the platform sees congestion per zone as in the field.
    candidates = [(z.id, ids) for z in sorted(zones, key=lambda z: z.id)
                  if z.type in TRAFFIC_ZONE_TYPES and (ids := _devices_in(z, devices, "traffic"))]
    for _, ids in rng.sample(candidates, min(c.count, len(candidates))):
        targets.update(ids)
    picked_zones = min(c.count, len(candidates))
    rest = [d for d in detectors if d not in targets]  # too few zones: single detectors
    targets.update(rng.sample(rest, min(c.count - picked_zones, len(rest))))
    return frozenset(targets)


def _bind_incident(spec: Incident, start: datetime, devices: Sequence[DeviceConfig],
                   zones: Sequence[Zone], rng: random.Random) -> BoundIncident | None:
    detectors = {d.id: d for d in devices if d.kind == "traffic"}
    if not detectors:
        log.warning("incident: no traffic detector in the fleet; skipped")
        return None
    chosen: str | None = None
    if spec.device is not None:
        if spec.device in detectors:
            chosen = spec.device
        else:
            log.warning("incident names detector %r, not in the fleet; picking one", spec.device)
    if chosen is None and spec.zone is not None:
        zone = next((z for z in zones if z.id == spec.zone), None)
        inside = _devices_in(zone, devices, "traffic") if zone is not None else []
        if inside:
            chosen = inside[0]
        else:
            log.warning("incident names zone %r without detectors here; picking one", spec.zone)
    if chosen is None:
        chosen = rng.choice(sorted(detectors))
    pos = detectors[chosen].position
    distances = {d.id: metres(pos, d.position) / 1000 for d in detectors.values()}
    at = start + timedelta(seconds=spec.at)
    # Automatic incident detection needs the queue to form: 30 s to 2 minutes.
    detected = at + timedelta(seconds=rng.uniform(30, 120))
    return BoundIncident(spec, at, at + timedelta(seconds=spec.duration), chosen, pos, distances,
                         detected, rng.uniform(*spec.confidence))


def _throws(th: Thrower, start: datetime, devices: Sequence[DeviceConfig], zones: Sequence[Zone],
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
        c = zone.geometry.centroid
        camera = min(cameras.values(), key=lambda d: metres(d.position, (c.x, c.y)))
    if camera is None and cameras:
        camera = cameras[rng.choice(sorted(cameras))]
    if camera is None:
        log.warning("thrower: no camera in the fleet; no throws")
        return []
    if zone is None and th.zone is None and fall_zones:
        cam_pos = camera.position

        def dist(z: Zone) -> float:
            c = z.geometry.centroid
            return metres(cam_pos, (c.x, c.y))

        zone = min(fall_zones, key=dist)
    building_id = th.building_id or f"B-{rng.randrange(1, 10_000):04d}"
    out = []
    for _ in range(th.throws):
        at = start + timedelta(seconds=rng.uniform(th.start, th.end))
        out.append(Throw(at=at, camera_id=camera.id, zone=zone, building_id=building_id,
                         floor=rng.randint(*th.floors), large=th.large,
                         distance_m=detection_distance_m(camera.position, zone, rng)))
    return sorted(out, key=lambda x: x.at)


def _drain_targets(d: DrainFailure, devices: Sequence[DeviceConfig], zones: Sequence[Zone],
                   prone: Mapping[str, Position], rng: random.Random) -> frozenset[str]:
    zones_by_id = {z.id: z for z in zones}
    targets = {g for zid in _known(d.zones, zones_by_id)
               for g in _devices_in(zones_by_id[zid], devices, "water")}
    targets.update(g for g in d.devices if any(x.id == g for x in devices))
    if not targets and d.count:
        targets.update(rng.sample(sorted(prone), min(d.count, len(prone))))
    return frozenset(targets)


def _bind_faults(faults: Sequence[Fault], start: datetime, devices: Sequence[DeviceConfig],
                 rng: random.Random) -> list[BoundFault]:
    out: list[BoundFault] = []
    ids = {d.id: d for d in devices}
    taken: set[str] = set()
    for f in faults:
        device_id = f.device if f.device in ids else None
        if f.device is not None and device_id is None:
            log.warning("fault names device %r, which is not in the fleet; picking one", f.device)
        if device_id is None:
            # Ground monitors and cameras only: a phone that goes wrong is not a sensor fault.
            kinds = {f.device_kind} if f.device_kind else {"water", "rain", "traffic"}
            pool = sorted(d.id for d in devices if d.kind in kinds and d.id not in taken)
            if not pool:
                log.warning("fault %s: no device of kind %s left; skipped", f.kind, kinds)
                continue
            device_id = rng.choice(pool)
        taken.add(device_id)
        begin = start + timedelta(seconds=f.start)
        end = None if f.duration is None else begin + timedelta(seconds=f.duration)
        out.append(BoundFault(device_id, f.kind, begin, end, f.magnitude))
    return out
