"""A position and the distance between two: one spelling of each for the whole platform."""

from __future__ import annotations

import math

Position = tuple[float, float]  # (lon, lat) in WGS 84, as in GeoJSON

def _per_degree(lat: float) -> tuple[float, float]:
    """Metres per degree of longitude and of latitude at ``lat`` (WGS 84, standard series)."""
    phi = math.radians(lat)
    return (111_412.84 * math.cos(phi) - 93.5 * math.cos(3 * phi),
            111_132.92 - 559.82 * math.cos(2 * phi) + 1.175 * math.cos(4 * phi))


def offset(position: Position, east_m: float, north_m: float) -> Position:
    """``position`` moved by metres east and north (the inverse of ``metres``)."""
    per_lon, per_lat = _per_degree(position[1])
    return (position[0] + east_m / per_lon, position[1] + north_m / per_lat)


def metres(a: Position, b: Position) -> float:
    """Distance in metres on the WGS 84 ellipsoid, flat over the short span: the lengths of a
    degree of latitude and of longitude at the mean latitude (the standard series), so within
    millimetres per kilometre of the geodesic over a district, and cheap enough for the
    engine's hot path (no projection)."""
    per_lon, per_lat = _per_degree((a[1] + b[1]) / 2)
    return math.hypot((b[0] - a[0]) * per_lon, (b[1] - a[1]) * per_lat)
