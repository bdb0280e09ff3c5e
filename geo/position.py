"""A position and the distance between two: one spelling of each for the whole platform."""

from __future__ import annotations

import math

Position = tuple[float, float]  # (lon, lat) in WGS 84, as in GeoJSON

M_PER_DEG = 111_320.0  # metres per degree of latitude (and of longitude at the equator)


def metres(a: Position, b: Position) -> float:
    """Equirectangular distance in metres: within centimetres of the geodesic over the few
    kilometres of a district, and cheap enough for the engine's hot path."""
    k = math.cos(math.radians((a[1] + b[1]) / 2))
    return math.hypot((b[0] - a[0]) * M_PER_DEG * k, (b[1] - a[1]) * M_PER_DEG)
