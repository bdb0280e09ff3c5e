"""Which zones hold a position: a shapely STRtree over the zone polygons.

Boundary rule: a point on a zone's boundary is in the zone (``intersects``, which for a point and
a polygon is the same as ``covers``). A gauge placed on the kerb line of an underpass polygon, or a
worker standing on the line between two grid cells, then belongs to both sides rather than to
neither; double counting is harmless for warnings, a missed zone is not.

Zones are returned in the order the index was built with (the file's order), so results are
deterministic; a point is often in several zones (an underpass in a road segment in a grid cell).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import NamedTuple

import numpy as np
import shapely
from numpy.typing import ArrayLike, NDArray

from geo.errors import UnknownZoneError, ZoneError
from geo.zones import ADMIN_LEVELS, Zone


class Hierarchy(NamedTuple):
    """Where something is administratively: zone ids, None where the zones have no such level."""

    grid_cell: str | None
    street: str | None
    district: str | None


class ZoneIndex:
    """An immutable spatial index of zones."""

    __slots__ = ("_by_id", "_geoms", "_ids", "_tree", "_zones")

    def __init__(self, zones: Iterable[Zone]) -> None:
        self._zones: tuple[Zone, ...] = tuple(zones)
        self._by_id: dict[str, Zone] = {}
        twice: list[str] = []
        for zone in self._zones:
            if zone.id in self._by_id:
                twice.append(f"zone {zone.id!r}: id appears twice in the index")
            self._by_id[zone.id] = zone
        if twice:
            raise ZoneError(twice)
        self._ids: NDArray[np.object_] = np.array([z.id for z in self._zones], dtype=object)
        self._geoms: NDArray[np.object_] = np.array([z.geometry for z in self._zones],
                                                    dtype=object)
        # Prepared geometries make the exact point-in-polygon tests of intersects_xy fast.
        # (It mutates the geometry objects in place, harmlessly: only a cache is added.)
        shapely.prepare(self._geoms)
        self._tree = shapely.STRtree(self._geoms)

    def zones_at(self, lon: float, lat: float) -> tuple[str, ...]:
        """Ids of all zones that contain or touch (lon, lat); () for a non-finite position."""
        if not (np.isfinite(lon) and np.isfinite(lat)):
            return ()
        candidates = np.sort(self._tree.query(shapely.Point(lon, lat)))
        if candidates.size == 0:
            return ()
        hit = shapely.intersects_xy(self._geoms[candidates], lon, lat)
        return tuple(self._ids[candidates[hit]].tolist())

    def assign(self, lons: ArrayLike, lats: ArrayLike) -> list[tuple[str, ...]]:
        """Zone ids for many positions at once; element i is what ``zones_at`` gives point i.

        The tree finds bounding-box candidates for all points in one call and the exact test runs
        vectorised over the (point, zone) pairs; Python only loops to build the result tuples.
        """
        x, y = np.broadcast_arrays(np.asarray(lons, dtype=np.float64).ravel(),
                                   np.asarray(lats, dtype=np.float64).ravel())
        n = x.shape[0]
        if n == 0:
            return []
        finite = np.isfinite(x) & np.isfinite(y)
        # Non-finite positions become far-away placeholders: GEOS has no use for NaN points.
        points = shapely.points(np.where(finite, x, 0.0), np.where(finite, y, 0.0))
        point_idx, zone_idx = self._tree.query(points)
        keep = finite[point_idx]
        point_idx, zone_idx = point_idx[keep], zone_idx[keep]
        hit = shapely.intersects_xy(self._geoms[zone_idx], x[point_idx], y[point_idx])
        point_idx, zone_idx = point_idx[hit], zone_idx[hit]
        order = np.lexsort((zone_idx, point_idx))
        point_idx, zone_idx = point_idx[order], zone_idx[order]
        ends = np.cumsum(np.bincount(point_idx, minlength=n))
        ids: list[str] = self._ids[zone_idx].tolist()
        out: list[tuple[str, ...]] = []
        start = 0
        for end in ends.tolist():
            out.append(tuple(ids[start:end]))
            start = end
        return out

    def get(self, zone_id: str) -> Zone:
        """The zone with this id; :class:`UnknownZoneError` (a ``KeyError``) if there is none."""
        try:
            return self._by_id[zone_id]
        except KeyError:
            raise UnknownZoneError(f"no zone {zone_id!r}") from None

    def of_type(self, *zone_types: str) -> tuple[Zone, ...]:
        """The zones of the given types, in index order."""
        return tuple(z for z in self._zones if z.type in zone_types)

    def ancestors(self, zone_id: str) -> tuple[str, ...]:
        """Parent, grandparent, ... of a zone, nearest first (for escalation up the hierarchy)."""
        out: list[str] = []
        parent = self.get(zone_id).parent_id
        while parent is not None and parent in self._by_id and parent not in out:
            out.append(parent)
            parent = self._by_id[parent].parent_id
        return tuple(out)

    def admin_chain(self, zone_id: str) -> dict[str, str]:
        """The administrative zones a zone belongs to, by level (``ADMIN_LEVELS``), itself
        included when it is one: through ``parent_id``, so a hazard zone straddling two cells
        belongs to the one it was filed under."""
        out: dict[str, str] = {}
        for zid in (zone_id, *self.ancestors(zone_id)):
            ztype = self._by_id[zid].type
            if ztype in ADMIN_LEVELS:
                out.setdefault(ztype, zid)
        return out

    def hierarchy_of_zone(self, zone_id: str) -> Hierarchy:
        """(grid cell, street, district) of a zone (a device's or alert's zone: routing uses it)."""
        chain = self.admin_chain(zone_id)
        return Hierarchy(chain.get("grid_cell"), chain.get("street"), chain.get("district"))

    def hierarchy_of_zones(self, zone_ids: Iterable[str]) -> Hierarchy:
        """(grid cell, street, district) among the zones of a position (``zones_at``): the first
        of each level; levels missing among them are taken from the parents of those found."""
        found: dict[str, str] = {}
        for zid in zone_ids:
            zone = self._by_id.get(zid)
            if zone is not None and zone.type in ADMIN_LEVELS:
                for level, z in self.admin_chain(zid).items():
                    found.setdefault(level, z)
        return Hierarchy(found.get("grid_cell"), found.get("street"), found.get("district"))

    def hierarchy_of(self, lon: float, lat: float) -> Hierarchy:
        """(grid cell, street, district) of a position; None for a level it is outside of."""
        return self.hierarchy_of_zones(self.zones_at(lon, lat))

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(min lon, min lat, max lon, max lat) of all zones; NaNs when the index is empty."""
        if not self._zones:
            return (np.nan, np.nan, np.nan, np.nan)
        minx, miny, maxx, maxy = shapely.total_bounds(self._geoms).tolist()
        return (minx, miny, maxx, maxy)

    def __iter__(self) -> Iterator[Zone]:
        return iter(self._zones)

    def __len__(self) -> int:
        return len(self._zones)

    def __contains__(self, zone_id: object) -> bool:
        return zone_id in self._by_id

    def __repr__(self) -> str:
        return f"ZoneIndex({len(self._zones)} zones)"
