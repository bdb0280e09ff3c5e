"""The shared catalogue of shapes for geometry tests: one place for the awkward cases.

Shapes sit in the Gusu old town (about 100 m across) unless the case is about being elsewhere.
Points come with the shapes they fall in, so index tests can be written as tables.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from shapely.geometry import MultiPolygon, Polygon, box, mapping
from shapely.geometry.base import BaseGeometry

from geo.zones import Zone

# A ~95 m x 111 m square near Leqiao, and a point on each kind of place.
SQUARE = box(120.6200, 31.3100, 120.6210, 31.3110)
# A square with a square hole (a courtyard): the hole is outside the zone.
DONUT = Polygon(
    [(120.6300, 31.3000), (120.6320, 31.3000), (120.6320, 31.3020), (120.6300, 31.3020)],
    holes=[[(120.6305, 31.3005), (120.6315, 31.3005), (120.6315, 31.3015), (120.6305, 31.3015)]],
)
# Two separate parts: one zone.
MULTI = MultiPolygon([box(120.6400, 31.3200, 120.6405, 31.3205),
                      box(120.6410, 31.3200, 120.6415, 31.3205)])
# Nested: a cell, a road segment inside it, an underpass inside that.
CELL = box(120.6000, 31.3000, 120.6100, 31.3100)
ROAD = box(120.6040, 31.3000, 120.6060, 31.3100)
UNDERPASS = box(120.6045, 31.3040, 120.6055, 31.3060)
# Far from Suzhou but a perfectly valid lon/lat (Santiago de Chile).
FAR_AWAY = box(-70.66, -33.46, -70.65, -33.45)
# Invalid: a bow tie crosses itself at its centre.
BOWTIE = Polygon([(120.6200, 31.3200), (120.6210, 31.3210), (120.6210, 31.3200),
                  (120.6200, 31.3210), (120.6200, 31.3200)])
EMPTY = Polygon()
# Projected metres by mistake (UTM 51N numbers read as degrees).
OUT_OF_RANGE = box(300000.0, 3460000.0, 300100.0, 3460100.0)

VALID: dict[str, BaseGeometry] = {
    "square": SQUARE, "donut": DONUT, "multi": MULTI, "cell": CELL, "road": ROAD,
    "underpass": UNDERPASS, "far": FAR_AWAY,
}

# (lon, lat) -> ids of the VALID shapes that cover it (boundary counts as inside).
POINTS: list[tuple[str, tuple[float, float], frozenset[str]]] = [
    ("square centre", (120.6205, 31.3105), frozenset({"square"})),
    ("square edge", (120.6205, 31.3100), frozenset({"square"})),
    ("square corner", (120.6210, 31.3110), frozenset({"square"})),
    ("just outside square", (120.62101, 31.3105), frozenset()),
    ("donut ring", (120.6302, 31.3010), frozenset({"donut"})),
    ("in the hole", (120.6310, 31.3010), frozenset()),
    ("on the hole's edge", (120.6305, 31.3010), frozenset({"donut"})),
    ("multi first part", (120.6402, 31.3202), frozenset({"multi"})),
    ("between multi parts", (120.6407, 31.3202), frozenset()),
    ("underpass in road in cell", (120.6050, 31.3050), frozenset({"cell", "road", "underpass"})),
    ("road, not underpass", (120.6050, 31.3020), frozenset({"cell", "road"})),
    ("cell only", (120.6010, 31.3010), frozenset({"cell"})),
    ("shared edge of road and cell", (120.6040, 31.3000), frozenset({"cell", "road"})),
    ("far away zone", (-70.655, -33.455), frozenset({"far"})),
    ("nowhere", (0.0, 0.0), frozenset()),
]


def zone(zone_id: str, geom: BaseGeometry, zone_type: str = "grid_cell",
         parent_id: str | None = None) -> Zone:
    return Zone(id=zone_id, name=zone_id, type=zone_type, geometry=geom, parent_id=parent_id)


def catalogue_zones() -> list[Zone]:
    """The valid shapes as zones, in a fixed order."""
    return [zone(k, g) for k, g in VALID.items()]


def feature(zone_id: Any, geom: BaseGeometry | None, zone_type: Any = "underpass",
            name: str | None = "a zone", parent_id: str | None = None) -> dict[str, Any]:
    """A GeoJSON Feature; None leaves a property out (zone_id, name) or the geometry null."""
    props: dict[str, Any] = {"type": zone_type, "parent_id": parent_id}
    if zone_id is not None:
        props["id"] = zone_id
    if name is not None:
        props["name"] = name
    if geom is None:
        geometry = None
    elif geom.is_empty:
        # GEOS's mapping() of an empty polygon is not GeoJSON; write what a file would hold.
        geometry = {"type": geom.geom_type, "coordinates": []}
    else:
        geometry = mapping(geom)
    return {"type": "Feature", "properties": props, "geometry": geometry}


def write_geojson(path: Path, features: Iterable[dict[str, Any]],
                  crs: str | None = None) -> Path:
    """A FeatureCollection file; ``crs`` (e.g. "EPSG:32651") adds the legacy crs member."""
    doc: dict[str, Any] = {"type": "FeatureCollection", "features": list(features)}
    if crs is not None:
        code = crs.split(":")[1]
        doc["crs"] = {"type": "name", "properties": {"name": f"urn:ogc:def:crs:EPSG::{code}"}}
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


def vertices(geoms: Iterable[BaseGeometry]) -> list[tuple[float, float]]:
    """Every vertex of the shapes: points exactly on a boundary."""
    out: list[tuple[float, float]] = []
    for g in geoms:
        for part in getattr(g, "geoms", [g]):
            for ring in [part.exterior, *part.interiors]:
                out.extend((float(x), float(y)) for x, y in ring.coords)
    return out


__all__ = ["BOWTIE", "CELL", "DONUT", "EMPTY", "FAR_AWAY", "MULTI", "OUT_OF_RANGE", "POINTS",
           "ROAD", "SQUARE", "UNDERPASS", "VALID", "catalogue_zones", "feature",
           "vertices", "write_geojson", "zone"]
