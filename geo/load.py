"""Zone files (GeoJSON, GeoPackage, Shapefile: anything GDAL reads) to validated
:class:`~geo.zones.Zone` objects.

Every feature is checked and every problem is reported at once, so a bad zone file is fixed in one
round: a unique non-empty ``id``, a known ``type``, a non-empty Polygon or MultiPolygon inside the
lon/lat range, and a ``parent_id`` that names another zone of the same file.

A file in another CRS (a GeoPackage in UTM, a Shapefile with a ``.prj`` in CGCS2000) is reprojected
to WGS 84; a file with no CRS is taken as WGS 84 unless the caller names one. An invalid polygon
that ``shapely.make_valid`` can repair (a bow-tie, a ring touching itself) is repaired and the
repair is reported (``LoadedZones.repaired``; ``load_zones`` logs it); one it cannot repair into a
polygon is rejected with the zone's id and the reason.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from os import PathLike
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import pyogrio
import shapely
from pyogrio.errors import DataSourceError
from shapely.geometry.base import BaseGeometry
from shapely.validation import explain_validity

from geo.crs import WGS84
from geo.errors import ZoneError
from geo.zones import ZONE_TYPES, Zone

_POLYGONAL = ("Polygon", "MultiPolygon")
_POLYGONAL_IDS = (shapely.GeometryType.POLYGON, shapely.GeometryType.MULTIPOLYGON)
log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LoadedZones:
    """Zones read from a file, with what was repaired (one line per zone) and the file's CRS."""

    zones: list[Zone]
    repaired: tuple[str, ...]
    source_crs: str | None


def repair(geom: BaseGeometry) -> tuple[BaseGeometry | None, str]:
    """A valid polygonal geometry from an invalid one, and what was wrong; (None, reason) when
    ``make_valid`` leaves no polygon (a polygon collapsed to a line, say)."""
    reason = explain_validity(geom)
    fixed = shapely.make_valid(geom)
    parts = [g for g in getattr(fixed, "geoms", [fixed]) if g.geom_type in _POLYGONAL]
    if not parts:
        return None, f"invalid geometry: {reason}; make_valid leaves no polygon"
    out = parts[0] if len(parts) == 1 else shapely.union_all(parts)
    if out.is_empty or out.geom_type not in _POLYGONAL or not shapely.is_valid(out):
        return None, f"invalid geometry: {reason}; make_valid leaves no valid polygon"
    return out, reason


def _text(value: Any) -> str | None:
    """A property as a stripped string; None for missing, null and NaN (pandas' missing value)."""
    if value is None or value is pd.NA:
        return None
    if isinstance(value, float):
        if math.isnan(value):
            return None
        # GDAL types an all-numeric column as numbers; an id 7.0 means "7".
        if value.is_integer():
            return str(int(value))
    text = str(value).strip()
    return text or None


def _geometry_problem(geom: BaseGeometry | None) -> str | None:
    if geom is None:
        return "no geometry"
    if geom.geom_type not in _POLYGONAL:
        return f"geometry is a {geom.geom_type}; expected Polygon or MultiPolygon"
    if geom.is_empty:
        return "empty geometry"
    minx, miny, maxx, maxy = geom.bounds
    if not (-180 <= minx <= maxx <= 180 and -90 <= miny <= maxy <= 90):
        return (f"coordinates out of lon/lat range: bounds ({minx:g}, {miny:g}, {maxx:g}, "
                f"{maxy:g}); expected lon -180..180, lat -90..90 (is the CRS declared?)")
    return None


def _zone(zone_id: str, zone_type: str, geom: BaseGeometry, row: Any) -> Zone:
    name = _text(getattr(row, "name", None)) or zone_id
    parent = _text(getattr(row, "parent_id", None))
    return Zone(id=zone_id, name=name, type=zone_type, geometry=geom, parent_id=parent)


def _layer(path: str | PathLike[str], layer: str | None) -> str | None:
    """The layer to read: the named one, the only one, or one called ``zones``."""
    if layer is not None:
        return layer
    try:
        layers = [str(row[0]) for row in pyogrio.list_layers(path)]
    except DataSourceError:
        return None  # _read reports it
    if len(layers) <= 1:
        return None
    if "zones" in layers:
        return "zones"
    raise ZoneError([f"{path}: {len(layers)} layers ({', '.join(layers)}); name the one "
                     "holding the zones, or call it 'zones'"])


def _read(path: str | PathLike[str], layer: str | None, crs: str | None) -> tuple[Any, str | None]:
    where = str(path)
    try:
        frame = gpd.read_file(path, layer=_layer(path, layer))
    except (DataSourceError, ValueError) as exc:
        raise ZoneError([f"{where}: cannot read zones: {exc}"]) from None
    if frame.crs is None and crs is not None:
        frame = frame.set_crs(crs)
    source = None if frame.crs is None else str(frame.crs.to_string())
    if frame.crs is not None and not frame.crs.equals(WGS84):
        # Files may declare e.g. UTM; zones are kept in WGS 84 (CONTRACT: positions are lon/lat).
        frame = frame.to_crs(WGS84)
    return frame, source


def load_zones(path: str | PathLike[str], *, layer: str | None = None,
               crs: str | None = None) -> list[Zone]:
    """Read and validate the zones of a file (see :func:`read_zones`); repairs are logged."""
    loaded = read_zones(path, layer=layer, crs=crs)
    for line in loaded.repaired:
        log.warning("%s", line)
    return loaded.zones


def read_zones(path: str | PathLike[str], *, layer: str | None = None,
               crs: str | None = None) -> LoadedZones:
    """Read and validate the zones of a file; raise :class:`ZoneError` listing every problem.

    Properties used: ``id``, ``name`` (defaults to the id), ``type`` (a key of
    ``ZONE_TYPES``), ``parent_id`` (optional). Other properties are ignored. A file that
    declares another CRS is reprojected to WGS 84; one without a CRS is taken as ``crs`` if given,
    else as WGS 84. ``layer`` picks a layer of a GeoPackage (default: the only one, or
    ``zones``). Z coordinates are dropped.
    """
    where = str(path)
    frame, source = _read(path, layer, crs)
    problems: list[str] = []
    repaired: list[str] = []
    if len(frame) == 0:
        raise ZoneError([f"{where}: no zones in the file"])
    columns = set(frame.columns)
    for required in ("id", "type"):
        if required not in columns:
            problems.append(f"{where}: no feature has the property {required!r}")
    if problems:
        raise ZoneError(problems)

    zones: list[Zone] = []
    seen: dict[str, int] = {}
    # The usual case, checked for all geometries at once (a city has ten thousand): valid,
    # polygonal, non-empty, 2-D and inside the lon/lat range. Only the others go through the
    # checks one by one below, which explain what is wrong.
    geoms = frame.geometry.to_numpy()
    bounds = shapely.bounds(geoms)
    fine = (shapely.is_valid(geoms) & ~shapely.is_empty(geoms) & ~shapely.has_z(geoms)
            & np.isin(shapely.get_type_id(geoms), _POLYGONAL_IDS)
            & (bounds[:, 0] >= -180) & (bounds[:, 2] <= 180)
            & (bounds[:, 1] >= -90) & (bounds[:, 3] <= 90))
    for number, row in enumerate(frame.itertuples(index=False), start=1):
        zone_id = _text(row.id)
        label = f"zone {zone_id!r}" if zone_id else f"feature #{number}"
        feature_problems: list[str] = []
        if zone_id is None:
            feature_problems.append("missing id")
        elif zone_id in seen:
            feature_problems.append(f"id appears twice (first as feature #{seen[zone_id]})")
        else:
            seen[zone_id] = number
        zone_type = _text(row.type)
        if zone_type not in ZONE_TYPES:
            known = ", ".join(ZONE_TYPES)
            feature_problems.append(f"unknown type {zone_type!r}; expected one of {known}")
        geom = row.geometry
        if fine[number - 1]:
            problems.extend(f"{where}: {label}: {p}" for p in feature_problems)
            if feature_problems or zone_id is None or zone_type is None:
                continue
            zones.append(_zone(zone_id, zone_type, geom, row))
            continue
        if geom is not None and not geom.is_empty and shapely.has_z(geom):
            geom = shapely.force_2d(geom)
        unrepairable = False
        if geom is not None and geom.geom_type in _POLYGONAL and not geom.is_empty \
                and not shapely.is_valid(geom):
            fixed, why = repair(geom)
            if fixed is None:
                feature_problems.append(why)
                unrepairable = True
            else:
                repaired.append(f"{where}: {label}: repaired invalid geometry ({why}); now a "
                                f"valid {fixed.geom_type}")
                geom = fixed
        if not unrepairable and (reason := _geometry_problem(geom)) is not None:
            feature_problems.append(reason)
        problems.extend(f"{where}: {label}: {p}" for p in feature_problems)
        if feature_problems or zone_id is None or zone_type is None:
            continue
        zones.append(_zone(zone_id, zone_type, geom, row))

    # Parents are checked once all ids are known: a parent may come later in the file.
    for zone in zones:
        if zone.parent_id is not None and zone.parent_id not in seen:
            problems.append(f"{where}: zone {zone.id!r}: parent_id {zone.parent_id!r} is not a "
                            "zone in this file")
    parents = {z.id: z.parent_id for z in zones}
    for zone in zones:
        # A cycle would make escalation up the hierarchy loop forever.
        chain, current = {zone.id}, parents.get(zone.id)
        while current is not None and current not in chain:
            chain.add(current)
            current = parents.get(current)
        if current is not None:
            problems.append(f"{where}: zone {zone.id!r}: parent_id chain loops back to "
                            f"{current!r}")
    if problems:
        raise ZoneError(problems)
    return LoadedZones(zones, tuple(repaired), source)
