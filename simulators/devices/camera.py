"""High-altitude camera watching facades: falling-object detections.

True detections come from the scenario's throws: the object leaves a window and falls freely, so it
reaches the ground after sqrt(2h/g); its track is sampled as the camera would see it. Rare false
detections (birds, leaves, rain streaks) come at low confidence.
"""

from __future__ import annotations

import math
import random
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar

from shapely.geometry import Point

from simulators.devices.base import BaseDevice, Output, Position, Site, offset_m, round_pos

if TYPE_CHECKING:
    from citywatch.config import Device
    from geo.zones import Zone
    from simulators.scenario import ScenarioState

G = 9.81  # m/s^2
FLOOR_HEIGHT_M = 3.0
SILL_M = 1.5  # a hand at a window is this far above its floor
FRAME_S = 0.2  # the tracker reports the object's position this often
FALSE_PER_S = 1 / 7200  # one false detection per camera per two simulated hours
FALSE_CONFIDENCE = (0.3, 0.55)

TrackPoint = list[float]  # [lon, lat, height_m, seconds_since_first]


def fall_time_s(height_m: float) -> float:
    return math.sqrt(2 * height_m / G)


def release_height_m(floor: int) -> float:
    return (floor - 1) * FLOOR_HEIGHT_M + SILL_M


def ballistic_track(release: Position, impact: Position, height_m: float) -> list[TrackPoint]:
    """Free fall from ``release`` at ``height_m`` to ``impact`` on the ground.

    Horizontal speed is constant (air drag ignored at these heights), so position moves linearly
    while height falls as g t^2 / 2; the last point is on the ground at exactly sqrt(2h/g).
    """
    total = fall_time_s(height_m)
    times = [i * FRAME_S for i in range(math.ceil(total / FRAME_S))] + [total]
    track = []
    for s in times:
        f = s / total if total > 0 else 1.0
        lon = release[0] + (impact[0] - release[0]) * f
        lat = release[1] + (impact[1] - release[1]) * f
        h = max(0.0, height_m - G * s * s / 2)
        track.append([round(lon, 7), round(lat, 7), round(h, 2), round(s, 3)])
    track[-1][2] = 0.0
    return track


def point_in_zone(zone: Zone, rng: random.Random) -> Position:
    """A uniformly random point inside the zone's polygon."""
    minx, miny, maxx, maxy = zone.geometry.bounds
    for _ in range(100):
        p = (rng.uniform(minx, maxx), rng.uniform(miny, maxy))
        if zone.geometry.contains(Point(p)):
            return p
    # A sliver the sampler keeps missing: any point surely inside will do.
    rp = zone.geometry.representative_point()
    return (rp.x, rp.y)


class Camera(BaseDevice):
    kind: ClassVar[str] = "camera"
    drain_v_per_h: ClassVar[float] = 0.001  # mains powered; only the backup cell ages

    def step(self, t: datetime, dt_s: float, scenario: ScenarioState) -> list[Output]:
        after = t - timedelta(seconds=dt_s)
        found: list[tuple[datetime, str, dict[str, Any]]] = []
        for throw in scenario.throws(self.id, after, t):
            impact = (point_in_zone(throw.zone, self.rng) if throw.zone is not None
                      else self._near(60, 150))
            h = release_height_m(throw.floor)
            # The object leaves the facade with a small push, landing a few metres out.
            drift = self.rng.uniform(0.5, 2.5) * fall_time_s(h)
            bearing = self.rng.uniform(0, 2 * math.pi)
            release = offset_m(impact, -drift * math.sin(bearing), -drift * math.cos(bearing))
            found.append((throw.at, "falling_object", {
                "confidence": round(throw.confidence, 3),
                "building_id": throw.building_id,
                "floor": throw.floor,
                "impact": round_pos(impact),
                "track": ballistic_track(release, impact, h),
            }))
        if self.rng.random() < FALSE_PER_S * dt_s:
            found.append(self._false_detection(after, dt_s))
        self._drain(dt_s)
        out = [self.event(at, type_, fields) for at, type_, fields in sorted(
            found, key=lambda f: f[0])]
        out.append(self.telemetry(t, {}))
        return out

    def _near(self, min_m: float, max_m: float) -> Position:
        r = self.rng.uniform(min_m, max_m)
        a = self.rng.uniform(0, 2 * math.pi)
        return offset_m(self.position, r * math.sin(a), r * math.cos(a))

    def _false_detection(self, after: datetime,
                         dt_s: float) -> tuple[datetime, str, dict[str, Any]]:
        at = after + timedelta(seconds=self.rng.uniform(0, dt_s))
        impact = self._near(40, 200)
        # A bird or a leaf: a short track that does not fall like a stone.
        start = offset_m(impact, self.rng.uniform(-5, 5), self.rng.uniform(-5, 5))
        h = self.rng.uniform(4, 15)
        secs = self.rng.uniform(1.5, 4.0)
        track = [[round(start[0], 7), round(start[1], 7), round(h, 2), 0.0],
                 [round(impact[0], 7), round(impact[1], 7), 0.0, round(secs, 3)]]
        return (at, "falling_object", {"confidence": round(self.rng.uniform(*FALSE_CONFIDENCE), 3),
                                       "impact": round_pos(impact), "track": track})


def create(device: Device, _site: Site, rng: random.Random) -> Camera:
    return Camera(device.id, device.position, rng)
