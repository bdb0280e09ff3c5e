"""Zones near a position: by their centres (a camera's fall zones, a rain gauge's catchment, a
roof gauge's fall zones below) and by their outline (a report near a zone).

An STRtree over the zones' representative points (WGS 84) finds the candidates in a box around
the position; the exact test is ``geo.position.metres`` to the centre. Outlines are compared in
UTM 51N (``geo.crs``), so that a distance limit is in metres.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry

from geo.crs import lonlat_to_utm, to_utm
from geo.position import Position, metres, offset
from geo.zones import Zone


class NearbyIndex:
    """An immutable index of zone centres and outlines."""

    def __init__(self, zones: Iterable[Zone]) -> None:
        self._zones: tuple[Zone, ...] = tuple(zones)
        pts = [z.geometry.representative_point() for z in self._zones]
        self.centres: dict[str, Position] = {
            z.id: (p.x, p.y) for z, p in zip(self._zones, pts, strict=True)}
        self._tree = shapely.STRtree(pts)
        self._utm: dict[str, BaseGeometry] = {}

    def centre(self, zone_id: str) -> Position:
        return self.centres[zone_id]

    def centres_within(self, position: Position, radius_m: float,
                       hazard: str | None = None) -> list[tuple[float, str]]:
        """(distance, zone id) of the zones (carrying ``hazard``, if given) whose centre is
        within ``radius_m`` of ``position``, in index order (``min`` gives the nearest)."""
        lon, lat = position
        if not (np.isfinite(lon) and np.isfinite(lat)):
            return []
        west, south = offset(position, -radius_m * 1.01, -radius_m * 1.01)
        east, north = offset(position, radius_m * 1.01, radius_m * 1.01)
        box = shapely.box(west, south, east, north)
        out: list[tuple[float, str]] = []
        for i in np.sort(self._tree.query(box)).tolist():
            z = self._zones[i]
            if hazard is not None and hazard not in z.hazards:
                continue
            d = metres(position, self.centres[z.id])
            if d <= radius_m:
                out.append((d, z.id))
        return out

    def outlines_within(self, position: Position, limit_m: float, hazard: str) -> list[str]:
        """Ids of the zones carrying ``hazard`` whose outline is within ``limit_m`` of
        ``position`` (0 when inside), in index order."""
        x, y = lonlat_to_utm(position[0], position[1])
        point = shapely.Point(float(x), float(y))
        out = []
        for zone in self._zones:
            if hazard not in zone.hazards:
                continue
            g = self._utm.get(zone.id)
            if g is None:
                g = self._utm[zone.id] = to_utm(zone.geometry)
            if g.distance(point) <= limit_m:
                out.append(zone.id)
        return out
