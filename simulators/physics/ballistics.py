"""Objects falling from a facade: free fall, a small horizontal push, air drag neglected.

Drag matters little for dense objects (a bottle, a flowerpot) over tens of metres; light ones
(paper, leaves) flutter down and are among the false detections instead.
"""

from __future__ import annotations

import math

from geo.position import Position

G = 9.81  # m/s^2
FLOOR_HEIGHT_M = 3.0
SILL_M = 1.5  # a hand at a window is this far above its floor
FRAME_S = 0.2  # the camera's tracker reports the object's position this often

TrackPoint = list[float]  # [lon, lat, height_m, seconds_since_first]


def fall_time_s(height_m: float) -> float:
    return math.sqrt(2 * height_m / G)


def release_height_m(floor: int) -> float:
    return (floor - 1) * FLOOR_HEIGHT_M + SILL_M


def ballistic_track(release: Position, impact: Position, height_m: float) -> list[TrackPoint]:
    """Free fall from ``release`` at ``height_m`` to ``impact`` on the ground.

    Horizontal speed is constant, so position moves linearly while height falls as g t^2 / 2;
    the last point is on the ground at exactly sqrt(2h/g).
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
