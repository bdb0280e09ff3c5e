"""High-altitude camera watching building facades: falling-object detections.

True detections come from the scenario's throws: the object leaves a window and falls freely
(:mod:`simulators.physics.ballistics`), reaching the ground after sqrt(2h/g); the camera's
tracker reports it every 0.2 s. Confidence falls with distance, at night, in heavy rain and for
small objects; below 0.3 the tracker drops it (a missed fall). False detections (birds by day,
leaves and paper, window reflections around midday, rain streaks in a storm) come at lower
confidence and do not fall like a stone.
"""

from __future__ import annotations

import math
import random
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar

from shapely.geometry import Point

from geo.position import Position, metres
from sensing.decode import BUILTIN_KINDS, KindSpec
from simulators.devices.base import (
    BaseDevice,
    Output,
    offset_m,
    round_pos,
)
from simulators.physics.ballistics import (
    FRAME_S,
    ballistic_track,
    fall_time_s,
    release_height_m,
)

if TYPE_CHECKING:
    from geo.zones import Zone
    from simulators.scenario import ScenarioState, Throw

DETECT_MIN = 0.3  # the tracker drops anything less certain
# False detections per camera per second at full rate, and their confidence ranges.
BIRD_PER_S = 1 / (3 * 3600)  # by day
LEAF_PER_S = 1 / (8 * 3600)  # more in rain
REFLECTION_PER_S = 1 / (4 * 3600)  # 10:00-15:00 without rain
STREAK_PER_S_AT_50 = 1 / 1200  # rain streaks at 50 mm/h


def is_night(local_hour: float) -> bool:
    return local_hour < 6 or local_hour >= 19


def detection_confidence(distance: float, *, night: bool, rain_mm_h: float, large: bool,
                         rng: random.Random) -> float:
    """How sure the camera's detector is of a real falling object (before the 0.3 cut)."""
    c = (0.96 - 0.12 * max(0.0, (distance - 150) / 250) - (0.08 if night else 0.0)
         - 0.08 * min(1.0, rain_mm_h / 100) - (0.0 if large else 0.04) + rng.gauss(0, 0.02))
    return min(0.99, max(0.05, c))


def point_in_zone(zone: Zone, rng: random.Random) -> Position:
    """A uniformly random point inside the zone's polygon."""
    minx, miny, maxx, maxy = zone.geometry.bounds
    for _ in range(100):
        p = (rng.uniform(minx, maxx), rng.uniform(miny, maxy))
        if zone.geometry.contains(Point(p)):
            return p
    rp = zone.geometry.representative_point()  # a sliver the sampler keeps missing
    return (rp.x, rp.y)


def detection_distance_m(camera: Position, zone: Zone | None, rng: random.Random) -> float:
    """Camera to the fall: to the fall zone when known, else a typical 60-150 m."""
    if zone is None:
        return rng.uniform(60, 150)
    c = zone.geometry.centroid
    return metres(camera, (c.x, c.y))


class Camera(BaseDevice):
    kind: ClassVar[str] = "camera"
    spec: ClassVar[KindSpec] = BUILTIN_KINDS["camera"]
    drain_v_per_h: ClassVar[float] = 0.001  # mains powered; only the backup cell ages

    def step(self, t: datetime, dt_s: float, world: ScenarioState) -> list[Output]:
        after = t - timedelta(seconds=dt_s)
        found: list[tuple[datetime, dict[str, Any]]] = []
        for throw in world.throws(self.id, after, t):
            if throw.confidence >= DETECT_MIN:
                found.append((throw.at, self._fall(throw)))
        found.extend(self._false_detections(after, t, dt_s, world))
        self._drain(dt_s)
        out = [self.event(at, "falling_object", fields)
               for at, fields in sorted(found, key=lambda f: f[0])]
        out.append(self.telemetry(t, {}))
        return out

    def _fall(self, throw: Throw) -> dict[str, Any]:
        impact = (point_in_zone(throw.zone, self.rng) if throw.zone is not None
                  else self._near(60, 150))
        h = release_height_m(throw.floor)
        # Thrown or pushed: it leaves the facade at 0.5-2.5 m/s and lands that far out.
        drift = self.rng.uniform(0.5, 2.5) * fall_time_s(h)
        bearing = self.rng.uniform(0, 2 * math.pi)
        release = offset_m(impact, -drift * math.sin(bearing), -drift * math.cos(bearing))
        return {"confidence": round(throw.confidence, 3), "building_id": throw.building_id,
                "floor": throw.floor, "impact": round_pos(impact),
                "track": ballistic_track(release, impact, h)}

    def _near(self, min_m: float, max_m: float) -> Position:
        r = self.rng.uniform(min_m, max_m)
        a = self.rng.uniform(0, 2 * math.pi)
        return offset_m(self.position, r * math.sin(a), r * math.cos(a))

    def _false_detections(self, after: datetime, t: datetime, dt_s: float,
                          world: ScenarioState) -> list[tuple[datetime, dict[str, Any]]]:
        hour = world.local_hour(t)
        rain = world.rain_mm_h(self.position, t)
        scale = world.scenario.false_detections
        rates = {
            "bird": 0.0 if is_night(hour) else BIRD_PER_S,
            "leaf": LEAF_PER_S * (1 + min(3.0, rain / 20)),
            "reflection": REFLECTION_PER_S if 10 <= hour < 15 and rain == 0 else 0.0,
            "streak": STREAK_PER_S_AT_50 * min(rain, 100.0) / 50,
        }
        out = []
        for what, rate in rates.items():
            if rate > 0 and self.rng.random() < rate * scale * dt_s:
                at = after + timedelta(seconds=self.rng.uniform(0, dt_s))
                out.append((at, self._false(what)))
        return out

    def _false(self, what: str) -> dict[str, Any]:
        rng = self.rng
        end = self._near(40, 200)
        if what == "bird":  # glides across the view, no fall
            h0, h1, secs, conf = rng.uniform(20, 60), rng.uniform(10, 60), rng.uniform(1, 3), 0.6
            start = offset_m(end, rng.uniform(-25, 25), rng.uniform(-25, 25))
        elif what == "leaf":  # flutters down at 1-2 m/s
            h0 = rng.uniform(8, 25)
            h1, secs, conf = 0.0, h0 / rng.uniform(1.0, 2.0), 0.55
            start = offset_m(end, rng.uniform(-3, 3), rng.uniform(-3, 3))
        elif what == "reflection":  # a glint that barely moves
            h0 = rng.uniform(10, 80)
            h1, secs, conf, start = h0 - rng.uniform(0, 2), rng.uniform(0.4, 1.5), 0.65, end
        else:  # a rain streak close to the lens: fast and short
            h0, h1, secs, conf, start = rng.uniform(20, 60), 0.0, 2 * FRAME_S, 0.5, end
        track = [[round(start[0], 7), round(start[1], 7), round(h0, 2), 0.0],
                 [round(end[0], 7), round(end[1], 7), round(max(0.0, h1), 2), round(secs, 3)]]
        return {"confidence": round(rng.uniform(DETECT_MIN, conf), 3), "impact": round_pos(end),
                "track": track}


create = Camera.create
