"""Build the default district: ``data/zones/gusu.geojson`` and ``config.yaml``.

Reproducible: the same shared data gives byte-identical files. Run from anywhere:

    python scripts/make_district.py            # write both files
    python scripts/make_district.py --check    # exit 1 if the committed files are out of date

Inputs (read-only, beside the repository): ``../shared/data/suzhou/`` from the repo root.

What it draws, and why:
- ``gusu``: the real Gusu district boundary (DataV, GCJ-02, converted to WGS 84).
- ``sip-cbd``: Gusu has only two structures of 54 m or more (a 151 m tower and the 76 m Beisi
  Pagoda), so the district also takes in the high-rise cluster of the Jinji Lake west CBD of the
  Suzhou Industrial Park, 2 km east: the OSM SIP outline clipped to a box round the towers.
- streets (jiedao): no public polygons exist, so each street is the union of the grid cells whose
  centre is nearest to a hand-placed seed inside the real street's area (so cells nest in streets).
- grid cells: a regular UTM grid clipped to each district; slivers merge into a neighbour; the
  cell size is the first that gives 36 cells in Gusu (plus 4 in the CBD: one per grid worker).
- waterlogging and traffic zones: hand-placed on real roads of the old town (approximate).
- fall zones: footprint of a tall OSM building buffered by max(10 m, 0.3 x height), minus the
  footprint, in UTM 51N.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from shapely.geometry import LineString, Point, Polygon, box, mapping, shape
from shapely.geometry.base import BaseGeometry

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the script runs without installing the package

import rules.registry  # noqa: E402,F401 -- binds the hazards to their zone types
from geo.crs import (  # noqa: E402
    gcj02_to_wgs84_geometry,
    lonlat_to_utm,
    to_utm,
    to_wgs84,
    utm_to_lonlat,
)
from geo.zones import ZONE_TYPE_HAZARDS  # noqa: E402

SHARED = REPO.parent / "shared" / "data" / "suzhou"
ZONES_OUT = REPO / "data" / "zones" / "gusu.geojson"
CONFIG_OUT = REPO / "config.yaml"

PRECISION = 1e-6  # degrees: ~0.1 m, plenty for zones drawn by hand
GUSU_CELLS = 36
CBD_BOX = (120.6565, 31.3095, 120.6790, 31.3260)  # WGS 84, round the Jinji Lake west towers
SLIVER = 0.35  # a clipped piece under this share of a full cell joins a neighbour

# Street seeds (WGS 84), one inside each real jiedao's area; NBS code -> (English name, seed).
STREETS: dict[str, tuple[str, tuple[float, float]]] = {
    "320508017": ("Baiyangwan Subdistrict", (120.556, 31.362)),
    "320508018": ("Pingjiang Subdistrict", (120.632, 31.322)),
    "320508019": ("Jinchang Subdistrict", (120.603, 31.320)),
    "320508020": ("Canglang Subdistrict", (120.590, 31.298)),
    "320508021": ("Shuangta Subdistrict", (120.636, 31.300)),
    "320508022": ("Huqiu Subdistrict", (120.580, 31.335)),
    "320508023": ("Sujin Subdistrict", (120.623, 31.345)),
    "320508024": ("Wumenqiao Subdistrict", (120.605, 31.275)),
}
CBD_STREET_CODE = "320576054"  # Jinjihu Subdistrict (SIP)


@dataclass(frozen=True)
class Drawn:
    """A hand-placed zone: a centreline (or one point) buffered to a width in metres."""

    id: str
    name: str
    type: str
    line: tuple[tuple[float, float], ...]
    width_m: float


# Waterlogging zones on real roads of the old town (approximate WGS 84 positions).
WATERLOGGING = (
    Drawn("up-01", "Renmin Road underpass (north, under the railway)", "underpass",
          ((120.61522, 31.33180), (120.61500, 31.33300)), 20),
    Drawn("up-02", "Guangji Road railway underpass", "underpass",
          ((120.59920, 31.33080), (120.59900, 31.33200)), 20),
    Drawn("up-03", "Tongjing North Road underpass", "underpass",
          ((120.58000, 31.32900), (120.57980, 31.33020)), 20),
    Drawn("up-04", "Xihuan Road underpass at Jinmen Road", "underpass",
          ((120.58800, 31.31180), (120.58800, 31.31300)), 22),
    Drawn("up-05", "Nanmen Road underpass (Renmin Road south)", "underpass",
          ((120.61680, 31.28800), (120.61700, 31.28920)), 20),
    Drawn("up-06", "Pingqi Road railway underpass", "underpass",
          ((120.63000, 31.33350), (120.63000, 31.33450)), 18),
    Drawn("lr-01", "Shiquan Street low section (Wangshi Garden)", "low_road",
          ((120.62900, 31.29850), (120.63050, 31.29850)), 16),
    Drawn("lr-02", "Ganjiang East Road low section (Xiangmen)", "low_road",
          ((120.63700, 31.31030), (120.63830, 31.31030)), 30),
    Drawn("lr-03", "Lindun Road low section (north)", "low_road",
          ((120.62650, 31.31900), (120.62650, 31.32000)), 20),
    Drawn("lr-04", "Shantang Street low section (Changmen)", "low_road",
          ((120.60200, 31.31750), (120.60080, 31.31830)), 12),
    Drawn("lr-05", "Xujiang Road low section (Xumen)", "low_road",
          ((120.59650, 31.30100), (120.59500, 31.30100)), 20),
    Drawn("lr-06", "Baita East Road low section", "low_road",
          ((120.63200, 31.32000), (120.63340, 31.32000)), 20),
)

# Traffic zones on main roads. Intersections are one point: a disc of diameter width_m.
TRAFFIC = (
    Drawn("x-01", "Renmin Road x Ganjiang Road (Leqiao)", "intersection",
          ((120.61580, 31.31030),), 90),
    Drawn("x-02", "Lindun Road x Ganjiang Road", "intersection", ((120.62650, 31.31030),), 80),
    Drawn("x-03", "Renmin Road x Zhuhui Road", "intersection", ((120.61630, 31.29400),), 80),
    Drawn("x-04", "Renmin Road x Baita West Road", "intersection", ((120.61550, 31.32000),), 80),
    Drawn("x-05", "Guangji Road x Jinmen Road", "intersection", ((120.59900, 31.31250),), 80),
    Drawn("rs-01", "Ganjiang Road (Leqiao to Lindun Road)", "road_segment",
          ((120.61750, 31.31030), (120.62500, 31.31030)), 36),
    Drawn("rs-02", "Renmin Road (Guanqian section)", "road_segment",
          ((120.61570, 31.31200), (120.61550, 31.31850)), 30),
    Drawn("rs-03", "Pingjiang Road (historic street)", "road_segment",
          ((120.63180, 31.31150), (120.63180, 31.31900)), 16),
    Drawn("rs-04", "Shiquan Street (Renmin Road to Fenghuang Street)", "road_segment",
          ((120.62150, 31.29850), (120.62800, 31.29850)), 20),
    Drawn("rs-05", "Guangji Road (Changmen section)", "road_segment",
          ((120.59900, 31.31450), (120.59900, 31.32400)), 30),
)

# Second gauge or detector in the longer or busier zones: 12 + 4 water, 10 + 8 traffic.
SECOND_WATER = ("up-01", "up-02", "up-03", "up-04")
SECOND_TRAFFIC = ("rs-01", "rs-02", "rs-03", "rs-04", "rs-05", "x-01", "x-02", "x-05")

# Tall OSM buildings watched for falling objects: (zone id, OSM name, height m, English name).
FALL_BUILDINGS = (
    ("fz-01", "北寺塔", 76.0, "Beisi Pagoda"),
    ("fz-02", "", 151.0, "South Gusu tower (151 m, unnamed in OSM)"),
    ("fz-03", "环球188A座", 282.0, "Global 188 Tower A"),
    ("fz-04", "兆润财富中心A座", 230.0, "Zhaorun Wealth Centre Tower A"),
    ("fz-05", "苏州中心1号楼", 221.6, "Suzhou Centre Tower 1"),
    ("fz-06", "凤凰文化广场东楼", 200.0, "Phoenix Cultural Plaza East Tower"),
    ("fz-07", "苏州中心4号楼", 160.3, "Suzhou Centre Tower 4"),
    ("fz-08", "交通银行大厦", 100.0, "Bank of Communications Building"),
)
# Where people gather at the foot of a watched building: a falling object landing there is red.
# Placed by the project (no public data): a disc straddling the fall zone's edge on the side of
# the entrance, approximately. (id, name, type, fall zone, bearing from its centre in degrees
# clockwise from north, radius m)
SENSITIVE = (
    ("pa-01", "Suzhou Centre plaza (pedestrian area)", "pedestrian_area", "fz-05", 200.0, 45.0),
    ("pa-02", "Global 188 forecourt (pedestrian area)", "pedestrian_area", "fz-03", 180.0, 40.0),
    ("pa-03", "Beisi Pagoda temple square (pedestrian area)", "pedestrian_area", "fz-01", 0.0,
     35.0),
    ("sg-01", "Primary school gate by the Bank of Communications Building (school gate)",
     "school_gate", "fz-08", 90.0, 30.0),
    ("sg-02", "Middle school gate south of the 151 m tower (school gate)", "school_gate",
     "fz-02", 180.0, 30.0),
)
# Cameras and the fall zones each watches; cam-03 stands between two towers.
CAMERAS = (
    ("cam-01", ("fz-01",)), ("cam-02", ("fz-02",)), ("cam-03", ("fz-03", "fz-06")),
    ("cam-04", ("fz-04",)), ("cam-05", ("fz-05",)), ("cam-06", ("fz-07",)),
    ("cam-07", ("fz-08",)),
)
CAMERA_RANGE_M = (50.0, 250.0)  # roof of a neighbour: close enough to see the facade
FALLBACK_M = 120.0


@dataclass
class OutZone:
    id: str
    name: str
    type: str
    geometry: BaseGeometry  # WGS 84, rounded
    parent_id: str | None
    extra: dict[str, Any]


def snap(geom: BaseGeometry) -> BaseGeometry:
    """Round to PRECISION degrees; set_precision keeps the result valid."""
    out: BaseGeometry = shapely.set_precision(geom, PRECISION)
    return out


def read_json(name: str) -> Any:
    with (SHARED / name).open(encoding="utf-8") as f:
        return json.load(f)


def gusu_boundary() -> BaseGeometry:
    features = read_json("gusu_320508_datav.json")  # a bare array of one Feature
    return gcj02_to_wgs84_geometry(shape(features[0]["geometry"]))


def cbd_area(gusu: BaseGeometry) -> BaseGeometry:
    sip = shape(read_json("sip_osm_relation_7363894.geojson")["features"][0]["geometry"])
    # DataV and OSM boundaries disagree by metres; the districts must not overlap.
    return sip.intersection(box(*CBD_BOX)).difference(gusu)


def street_names() -> dict[str, str]:
    with (SHARED / "gusu_sip_subdistricts_nbs2023.csv").open(encoding="utf-8") as f:
        return {row["code"]: row["name"] for row in csv.DictReader(f)}


def grid_pieces(area_utm: BaseGeometry, size: float) -> list[BaseGeometry]:
    """A regular grid of size-metre cells clipped to the area, slivers merged into neighbours."""
    minx, miny, maxx, maxy = area_utm.bounds
    x0, y0 = np.floor(minx / size) * size, np.floor(miny / size) * size
    pieces: list[BaseGeometry] = []
    for y in np.arange(y0, maxy, size):
        for x in np.arange(x0, maxx, size):
            clipped = area_utm.intersection(box(x, y, x + size, y + size))
            pieces.extend(p for p in getattr(clipped, "geoms", [clipped])
                          if p.geom_type == "Polygon" and not p.is_empty)
    big = [p for p in pieces if p.area >= SLIVER * size * size]
    small = sorted((p for p in pieces if p.area < SLIVER * size * size), key=lambda p: -p.area)
    for sliver in small:
        # Join the neighbour sharing the longest border (the nearest one if none touches).
        shared = [sliver.boundary.intersection(b.boundary).length for b in big]
        best = int(np.argmax(shared)) if max(shared) > 0 else int(
            np.argmin([sliver.distance(b) for b in big]))
        big[best] = big[best].union(sliver)
    return big


def row_major(pieces: list[BaseGeometry], size: float) -> list[BaseGeometry]:
    """Grid rows north to south, west to east within a row (by representative point, UTM)."""
    def key(p: BaseGeometry) -> tuple[float, float]:
        c = p.representative_point()
        return (-np.floor(c.y / size), c.x)
    return sorted(pieces, key=key)


def gusu_grid(gusu_utm: BaseGeometry) -> tuple[float, list[BaseGeometry]]:
    for size in np.arange(1300.0, 1800.0, 5.0):
        pieces = grid_pieces(gusu_utm, float(size))
        if len(pieces) == GUSU_CELLS:
            return float(size), row_major(pieces, float(size))
    raise SystemExit(f"no cell size gives {GUSU_CELLS} cells")


def quarters(area_utm: BaseGeometry) -> list[BaseGeometry]:
    minx, miny, maxx, maxy = area_utm.bounds
    mx, my = (minx + maxx) / 2, (miny + maxy) / 2
    boxes = [box(minx, my, mx, maxy), box(mx, my, maxx, maxy),
             box(minx, miny, mx, my), box(mx, miny, maxx, my)]
    return [area_utm.intersection(b) for b in boxes]


def drawn_geometry(d: Drawn) -> BaseGeometry:
    x, y = lonlat_to_utm([p[0] for p in d.line], [p[1] for p in d.line])
    if len(d.line) == 1:
        # An intersection: a 16-sided disc round the centre.
        shape_utm = Point(x[0], y[0]).buffer(d.width_m / 2, quad_segs=4)
    else:
        shape_utm = LineString(np.column_stack([x, y])).buffer(d.width_m / 2, cap_style="flat")
    return to_wgs84(shape_utm)


def load_buildings() -> list[tuple[str, float, Polygon]]:
    """Both OSM building files, duplicates (same footprint) once."""
    seen: set[tuple[float, float]] = set()
    out: list[tuple[str, float, Polygon]] = []
    for name in ("suzhou_osm_buildings_2000_with_height.json",
                 "gusu_oldtown_osm_buildings_8242.json"):
        for b in read_json(name)["buildings"]:
            if len(b["coords"]) < 4:
                continue
            poly = Polygon(b["coords"])
            key = (round(poly.centroid.x, 6), round(poly.centroid.y, 6))
            if key in seen or not poly.is_valid:
                continue
            seen.add(key)
            out.append((b["name"], float(b["height"]), poly))
    return out


def pick_building(buildings: list[tuple[str, float, Polygon]], name: str, height: float,
                  within: BaseGeometry) -> Polygon:
    found = [p for n, h, p in buildings if n == name and h == height and within.contains(p)]
    if len(found) != 1:
        raise SystemExit(f"expected one building {name!r} of {height} m, found {len(found)}")
    return found[0]


def fall_zone(footprint: Polygon, height: float) -> BaseGeometry:
    utm = to_utm(footprint)
    return to_wgs84(utm.buffer(max(10.0, 0.3 * height)).difference(utm))


def sensitive_area(footprint: Polygon, fall: BaseGeometry, bearing_deg: float,
                   radius_m: float) -> BaseGeometry:
    """A disc centred on the fall zone's outer edge, on the ray from the building's centre at
    ``bearing_deg``: half of it in the fall zone, half beyond (people walk up to the door)."""
    centre = to_utm(footprint).centroid
    ring = to_utm(fall).exterior if fall.geom_type == "Polygon" else \
        to_utm(max(fall.geoms, key=lambda g: g.area)).exterior
    a = np.radians(bearing_deg)
    far = Point(centre.x + 2000 * np.sin(a), centre.y + 2000 * np.cos(a))
    hits = LineString([centre, far]).intersection(ring)
    points = [hits] if hits.geom_type == "Point" else list(getattr(hits, "geoms", []))
    edge = max(points, key=centre.distance)  # the outer edge, not the footprint's
    return to_wgs84(edge.buffer(radius_m, quad_segs=4))


def largest_overlap(geom: BaseGeometry, cells: list[OutZone]) -> str:
    areas = [to_utm(geom.intersection(c.geometry)).area if geom.intersects(c.geometry) else 0.0
             for c in cells]
    return cells[int(np.argmax(areas))].id


def along(line: tuple[tuple[float, float], ...], fraction: float) -> tuple[float, float]:
    x, y = lonlat_to_utm([p[0] for p in line], [p[1] for p in line])
    p = LineString(np.column_stack([x, y])).interpolate(fraction, normalized=True)
    lon, lat = utm_to_lonlat(p.x, p.y)
    return float(lon), float(lat)


def offset(pos: tuple[float, float], dx_m: float, dy_m: float) -> tuple[float, float]:
    x, y = lonlat_to_utm(pos[0], pos[1])
    lon, lat = utm_to_lonlat(x + dx_m, y + dy_m)
    return float(lon), float(lat)


def rounded(pos: tuple[float, float]) -> tuple[float, float]:
    return (round(pos[0], 6), round(pos[1], 6))


def build() -> tuple[list[OutZone], list[dict[str, Any]], dict[str, Any]]:
    gusu = snap(gusu_boundary())
    cbd = snap(cbd_area(gusu))
    names_cn = street_names()
    zones: list[OutZone] = [
        OutZone("gusu", "Gusu District (姑苏区)", "district", gusu, None,
                {"source": "DataV GeoAtlas 320508, GCJ-02 converted to WGS 84"}),
        OutZone("sip-cbd", "SIP Jinji Lake west CBD (苏州工业园区湖西CBD)", "district", cbd, None,
                {"source": "OpenStreetMap relation 7363894 clipped to the CBD towers"}),
    ]

    # Grid cells, then streets as unions of cells.
    size, gusu_cells_utm = gusu_grid(to_utm(gusu))
    cbd_cells_utm = quarters(to_utm(cbd))
    codes = list(STREETS)
    seeds_x, seeds_y = lonlat_to_utm([STREETS[c][1][0] for c in codes],
                                     [STREETS[c][1][1] for c in codes])
    street_of_cell: list[str] = []
    for cell in gusu_cells_utm:
        c = cell.centroid
        street_of_cell.append(codes[int(np.argmin(np.hypot(seeds_x - c.x, seeds_y - c.y)))])
    street_of_cell += [CBD_STREET_CODE] * len(cbd_cells_utm)
    street_id = {code: f"st-{i:02d}" for i, code in enumerate([*codes, CBD_STREET_CODE], 1)}

    cells: list[OutZone] = []
    for i, (cell_utm, code) in enumerate(zip([*gusu_cells_utm, *cbd_cells_utm], street_of_cell,
                                             strict=True), 1):
        english = STREETS[code][0] if code in STREETS else "Jinjihu Subdistrict"
        cells.append(OutZone(f"cell-{i:02d}", f"Grid cell {i:02d} ({english.split()[0]})",
                             "grid_cell", snap(to_wgs84(cell_utm)), street_id[code],
                             {"grid_size_m": size if code in STREETS else None}))
    streets: list[OutZone] = []
    for code, sid in street_id.items():
        members = [c.geometry for c in cells if c.parent_id == sid]
        if not members:
            raise SystemExit(f"street {code} got no grid cell: move its seed")
        english = STREETS[code][0] if code in STREETS else "Jinjihu Subdistrict (CBD part)"
        streets.append(OutZone(sid, f"{english} ({names_cn[code]})", "street",
                               snap(shapely.union_all(members)),
                               "gusu" if code in STREETS else "sip-cbd", {"nbs_code": code}))
    zones += streets + cells

    # Hand-drawn hazard zones, parented to the grid cell they overlap most.
    for d in (*WATERLOGGING, *TRAFFIC):
        geom = snap(drawn_geometry(d))
        if not gusu.contains(geom):
            raise SystemExit(f"{d.id} is not inside Gusu")
        zones.append(OutZone(d.id, d.name, d.type, geom, largest_overlap(geom, cells),
                             {"source": "drawn on a real road; approximate"}))

    # Fall zones round tall buildings.
    by_fall: dict[str, OutZone] = {}
    buildings = load_buildings()
    footprints: dict[str, Polygon] = {}
    district_area = gusu.union(cbd)
    for zid, osm_name, height, english in FALL_BUILDINGS:
        footprint = pick_building(buildings, osm_name, height, district_area)
        footprints[zid] = footprint
        geom = snap(fall_zone(footprint, height))
        zones.append(OutZone(zid, f"{english}, fall zone", "fall_zone", geom,
                             largest_overlap(geom, cells),
                             {"height_m": height, "buffer_m": round(max(10.0, 0.3 * height), 1),
                              "source": "OpenStreetMap footprint, buffered"}))
        by_fall[zid] = zones[-1]
    # Pedestrian areas and school gates, half in a fall zone (see SENSITIVE).
    for sid, name, ztype, fz_id, bearing, radius in SENSITIVE:
        geom = snap(sensitive_area(footprints[fz_id], by_fall[fz_id].geometry, bearing, radius))
        zones.append(OutZone(sid, name, ztype, geom, largest_overlap(geom, cells),
                             {"source": "placed by the project at the foot of a watched building; "
                              "approximate"}))
    by_id = {z.id: z for z in zones}

    devices: list[dict[str, Any]] = []
    # Cameras on the tallest neighbouring roof in range of every watched footprint.
    taken = {(round(p.centroid.x, 6), round(p.centroid.y, 6)) for p in footprints.values()}
    for cam_id, watched in CAMERAS:
        targets = [to_utm(footprints[z]) for z in watched]
        best: tuple[float, float, Polygon, str] | None = None
        for name, height, poly in buildings:
            if (round(poly.centroid.x, 6), round(poly.centroid.y, 6)) in taken:
                continue
            if not district_area.contains(poly):
                continue
            c = to_utm(poly.centroid)
            dists = [t.distance(c) for t in targets]
            if not all(CAMERA_RANGE_M[0] <= d <= CAMERA_RANGE_M[1] for d in dists):
                continue
            key = (height, -max(dists))
            if best is None or key > (best[0], best[1]):
                best = (height, -max(dists), poly, name)
        what = " and ".join(FALL_BUILDINGS[int(z[3:]) - 1][3] for z in watched)
        if best is None:
            # OSM maps no neighbour here: a roof FALLBACK_M north of the tower, unmapped.
            c = footprints[watched[0]].centroid
            pos, label = offset((c.x, c.y), 0, FALLBACK_M), "unmapped neighbouring roof"
        else:
            roof = best[2].representative_point()
            taken.add((round(best[2].centroid.x, 6), round(best[2].centroid.y, 6)))  # one a roof
            pos, label = (roof.x, roof.y), f"{best[0]:g} m roof"
        devices.append({"id": cam_id, "kind": "camera", "position": rounded(pos),
                        "name": f"roof camera ({label}) watching {what}"})

    # Water gauges inside waterlogging zones: one in the middle, or two at the thirds.
    n = 0
    for d in WATERLOGGING:
        fractions = (1 / 3, 2 / 3) if d.id in SECOND_WATER else (0.5,)
        for k, f in enumerate(fractions):
            n += 1
            pos = rounded(along(d.line, f))
            assert by_id[d.id].geometry.contains(Point(pos)), (d.id, pos)
            part = f", gauge {k + 1}" if len(fractions) > 1 else ""
            devices.append({"id": f"wl-{n:02d}", "kind": "water", "position": pos,
                            "name": f"{d.name}{part}"})
    # Rain gauges: one per Gusu street, at a point well inside it.
    for i, st in enumerate(streets[: len(STREETS)], 1):
        p = st.geometry.centroid
        if not st.geometry.contains(p):
            p = st.geometry.representative_point()
        devices.append({"id": f"rg-{i:02d}", "kind": "rain", "position": rounded((p.x, p.y)),
                        "name": f"rain gauge, {st.name.split(' (')[0]}"})
    # Traffic detectors inside traffic zones.
    n = 0
    for d in TRAFFIC:
        two = d.id in SECOND_TRAFFIC
        if len(d.line) == 1:
            # Two approaches of an intersection: 15 m west and east of the centre.
            spots = [offset(d.line[0], -15, 0), offset(d.line[0], 15, 0)] if two else [d.line[0]]
        else:
            spots = [along(d.line, 0.25), along(d.line, 0.75)] if two else [along(d.line, 0.5)]
        for k, spot in enumerate(spots):
            n += 1
            pos = rounded(spot)
            assert by_id[d.id].geometry.contains(Point(pos)), (d.id, pos)
            part = f", detector {k + 1}" if len(spots) > 1 else ""
            devices.append({"id": f"tf-{n:02d}", "kind": "traffic", "position": pos,
                            "name": f"{d.name}{part}"})
    # Grid terminals: one per grid cell, at its home position inside the cell.
    for i, cell in enumerate(cells, 1):
        p = cell.geometry.representative_point()
        devices.append({"id": f"grid-{i:02d}", "kind": "grid", "position": rounded((p.x, p.y)),
                        "name": f"grid worker, {cell.name}"})

    summary = {"cell_size_m": size, "streets": {s.id: sum(c.parent_id == s.id for c in cells)
                                                for s in streets}}
    return zones, devices, summary


def fmt_coords(obj: Any) -> Any:
    if isinstance(obj, (list, tuple)):
        if obj and isinstance(obj[0], float):
            return [round(v, 6) for v in obj]
        return [fmt_coords(o) for o in obj]
    return obj


def geojson_text(zones: list[OutZone]) -> str:
    lines = []
    for z in zones:
        geom = mapping(z.geometry)
        feature = {
            "type": "Feature",
            "properties": {"id": z.id, "name": z.name, "type": z.type, "parent_id": z.parent_id,
                           **{k: v for k, v in z.extra.items() if v is not None}},
            "geometry": {"type": geom["type"], "coordinates": fmt_coords(geom["coordinates"])},
        }
        lines.append(json.dumps(feature, ensure_ascii=False, separators=(",", ":")))
    # One feature a line: compact, yet a diff shows which zone changed.
    return ('{"type":"FeatureCollection","features":[\n' + ",\n".join(lines) + "\n]}\n")


CONFIG_HEAD = """\
# citywatch configuration: the default district (Gusu, Suzhou, with the SIP Jinji Lake west CBD).
#
# GENERATED by scripts/make_district.py together with data/zones/gusu.geojson; edit the template
# in that script and re-run it (python scripts/make_district.py), or the next run undoes the edit.
# Schema: citywatch/config.py (unknown keys are rejected). Positions are [lon, lat] in WGS 84.
# Environment variables override: CITYWATCH_BROKER_URL, CITYWATCH_DATABASE_URL, CITYWATCH_HTTP_PORT.

district: "Gusu District, Suzhou (with the SIP Jinji Lake west CBD)"

broker:
  url: embedded          # citywatch runs its own broker; or mqtt://user:pass@host:1883
  receiver: process      # the engine's MQTT session in a process of its own (both cores); or thread
database:
  url: embedded          # citywatch runs its own PostgreSQL; or postgresql://user@host:5432/db
  retention_days: 90     # telemetry, events and rejections older than this are dropped
  outbox_keep_days: 7    # a published dispatch or zone state is deleted 7 days after it was sent;
                         #   one not yet sent is never deleted
  start_wait_s: 300      # at start, wait this long for a database that cannot be reached yet
http:
  host: 127.0.0.1
  port: 8080

zones:
  file: data/zones/gusu.geojson   # relative to this file

presence:
  silence_timeout_s: 180          # no telemetry for 3 minutes: the device counts as offline

rules:
  waterlogging:
    # Depth (cm) at which each level starts, per zone type.
    # low_road: GB 51222-2017 (Technical standard for urban flooding prevention and control)
    #   counts a road as waterlogged when the water on a lane is deeper than 15 cm: yellow at 15.
    # underpass: closed to vehicles well before 27 cm (a common closure depth for underpasses;
    #   a project assumption to confirm with the drainage department): red at 25.
    thresholds:
      underpass: {blue_cm: 5, yellow_cm: 10, orange_cm: 15, red_cm: 25}
      low_road: {blue_cm: 8, yellow_cm: 15, orange_cm: 25, red_cm: 40}
    hysteresis_cm: 2
    stale_after_s: 900              # a silent gauge's last reading stops counting
    raise_hold_s: 60                # just over a threshold: for a minute (six readings), as
    raise_margin_cm: 1              #   gauges jitter by mm; 1 cm over it: at once
    # Blue before the water gets there: the rise over the last 10 min would reach yellow within
    # 30 min.
    forecast_horizon_s: 1800
    forecast_window_s: 600
    forecast_min_rise_cm_h: 3
    rain:
      # CMA rainstorm signals over each low point's catchment (rain gauges within 2.5 km):
      # 50 mm in 12 h blue, 50 mm in 6 h yellow, 50 mm in 3 h orange, 100 mm in 3 h red, counting
      # what has fallen plus the current rate for one more hour.
      enabled: true
      signals:
        blue: {mm: 50, hours: 12}
        yellow: {mm: 50, hours: 6}
        orange: {mm: 50, hours: 3}
        red: {mm: 100, hours: 3}
      nowcast_h: 1
      catchment_radius_m: 2500
      at_risk_types: [underpass, low_road]
      # Rain alone gives a blue watch; with water at the blue depth, at least this level.
      raise_to: {blue: blue, yellow: blue, orange: blue, red: yellow}
  falling_object:
    min_confidence: 0.7             # lower: logged, kept to be corroborated, not alerted
    red_confidence: 0.9
    clear_after_s: 900
    sensitive_types: [pedestrian_area, school_gate]   # an impact there is red
    corroborate_s: 120              # a second camera or a grid report within 2 min and 60 m
    corroborate_m: 60               #   raises the confidence (noisy-or)
    pattern_min_events: 3           # three objects from one building within two hours:
    pattern_window_s: 7200          #   a pattern alert for its management
    pattern_level: orange
  traffic:
    # Speed (km/h) below which each level starts, on a road whose free-flow speed is 50 km/h
    # (ratio 0.7, 0.5, 0.24 of free flow); other free-flow speeds scale them.
    blue_kmh: 35
    yellow_kmh: 25
    orange_kmh: 12
    hysteresis_kmh: 5
    free_flow_kmh: 50
    min_occupancy_pct: 15           # slow but nearly empty is not congestion
    hold_s: 120                     # a worse level must hold 2 minutes,
    clear_hold_s: 180               #   a better one 3 minutes
    incident_min_confidence: 0.7
    incident_clear_after_s: 1800
    suspect_drop: 0.5               # speed halves within a minute while occupancy jumps 20
    suspect_occupancy_jump_pct: 20  #   points: a suspected incident (yellow)
    suspect_level: yellow
  device_health:
    enabled: true
    silent_after_s: 900             # no telemetry for 15 minutes: faulty (silent)
    stuck_after_s: 600              # the same non-zero values for 10 minutes: stuck
    max_rise_per_min: {water_depth_cm: 10, rain_rate_mm_h: 100}
    spike_margin: {water_depth_cm: 20, rain_rate_mm_h: 150}   # 150: two tips of the bucket
    spikes_to_fault: 2
    drift_tolerance: {water_depth_cm: 4}
    dry_max: {water_depth_cm: 2.5}
    dry_window_s: 43200             # water with no rain in the catchment for 12 hours: drift
    drift_confirm_s: 900
    recover_after_s: 900
    battery_low_v: 3.5              # Li-ion cells cut off at 3.3 V
    alert_level: blue               # maintenance: one alert per zone, never a flood
  reports:
    corroborate_m: 300              # a grid report within 300 m of an active alert of its
    corroborate_s: 1800             #   category (or one cleared within 30 min) corroborates it
    own_alert_level: blue           # one that matches nothing: a blue alert in its grid cell
    clear_after_s: 3600
  event_time:
    # 0: evaluate on arrival (no added delay). Per device, an older reading than one already
    # evaluated is counted as too late; a device's late backlog is evaluated in its own order.
    # With N > 0, readings are held N seconds so that any disorder up to N gives exactly the
    # alerts of an in-order run, at the cost of N seconds of delay.
    reorder_window_s: 0

# Deadlines, re-dispatch and escalation keep their defaults (citywatch/config.py). What one
# incident may grow, and how long finished work is kept:
work_orders:
  evidence_keep_first: 20     # an alert keeps its first 20 evidence entries (what raised it) and
  evidence_keep_last: 80      #   its newest 80; those between are counted in evidence_dropped
  history_repeats_max: 50     # repetitive system lines per order (report merged, dispatch repeated,
                              #   level eased); later ones are counted in one summary line
  # A resolved or closed order with its history and alerts is deleted 5 years after it was last
  # touched: longer than the 3-year limitation period for damage claims (PRC Civil Code art. 188).
  keep_days: 1830

# The case study's 53 department offices on four levels: municipal, district, street (jiedao),
# grid. Escalation takes the first office of the next level that answers for the zone, so the
# order within a level matters: the general ones first.
departments:
  - {id: sz-emergency, name: Suzhou Municipal Emergency Management Bureau, level: municipal}
  - {id: sz-fire-rescue, name: Suzhou Fire and Rescue Detachment, level: municipal}
  - {id: sz-water-affairs, name: Suzhou Water Affairs Bureau, level: municipal}
  - {id: sz-traffic-police, name: Suzhou Traffic Police Detachment, level: municipal}
  - {id: sz-housing, name: Suzhou Housing and Urban-Rural Development Bureau, level: municipal}
  - {id: sz-urban-mgmt, name: Suzhou Urban Management Bureau, level: municipal}
  - {id: sz-transport, name: Suzhou Transport Bureau, level: municipal}
  - {id: sz-meteorology, name: Suzhou Meteorological Bureau, level: municipal}
  - {id: sz-big-data, name: Suzhou Big Data Administration, level: municipal}
  - {id: gusu-drainage, name: Gusu District Drainage Department, level: district}
  - {id: gusu-traffic, name: Gusu Traffic Police Brigade, level: district}
  - {id: gusu-urban-mgmt, name: Gusu District Urban Management Bureau, level: district}
  - {id: gusu-building, name: District Building Management Office, level: district}
  - {id: gusu-iot-maint, name: Gusu Urban IoT Operations and Maintenance Centre, level: district}
  - {id: gusu-emergency, name: Gusu District Emergency Management Bureau, level: district}
  - {id: gusu-fire, name: Gusu Fire and Rescue Brigade, level: district}
  - {id: gusu-municipal-works, name: Gusu Municipal Facilities Management Office, level: district}
  - {id: gusu-greening, name: Gusu Landscaping and Greening Management Office, level: district}
  - {id: gusu-public-security, name: Gusu Public Security Branch, level: district}
  - {id: gusu-heritage, name: Gusu Historic City Protection Office, level: district}
  - {id: gusu-command, name: Gusu District City Operations Command Centre, level: district}
  - {id: sip-emergency, name: SIP Emergency Management Bureau, level: district}
  - {id: sip-planning, name: SIP Planning and Construction Committee, level: district}
  - {id: sip-traffic, name: SIP Traffic Police Brigade, level: district}
  - {id: sip-urban-mgmt, name: SIP Urban Management Bureau, level: district}
{street_departments}
  - {id: gusu-grid-centre, name: Gusu District Grid Management Centre, level: grid}
{grid_departments}

teams:
  - {id: emergency-duty-1, name: Municipal emergency duty desk, department: sz-emergency}
  - {id: fire-rescue-1, name: Fire and rescue team (Gusu station), department: sz-fire-rescue}
  - {id: drainage-1, name: Drainage emergency team 1 (mobile pumps), department: gusu-drainage}
  - {id: drainage-2, name: Drainage emergency team 2, department: gusu-drainage}
  - {id: traffic-police-1, name: Traffic police patrol 1, department: gusu-traffic}
  - {id: traffic-police-2, name: Traffic police patrol 2, department: gusu-traffic}
  - {id: urban-mgmt-1, name: Urban management patrol (cordons), department: gusu-urban-mgmt}
  - {id: building-mgmt-1, name: Facade inspection team, department: gusu-building}
  - {id: iot-maint-1, name: Sensor maintenance crew, department: gusu-iot-maint}
  - {id: water-affairs-1, name: Municipal flood control duty desk, department: sz-water-affairs}
  - {id: traffic-detachment-1, name: Municipal traffic command desk, department: sz-traffic-police}
  - {id: housing-safety-1, name: Municipal building safety inspectors, department: sz-housing}
  - {id: city-urban-mgmt-1, name: Municipal urban management duty desk, department: sz-urban-mgmt}
  - {id: transport-1, name: Public transport dispatch desk, department: sz-transport}
  - {id: meteorology-1, name: Weather forecast duty desk, department: sz-meteorology}
  - {id: big-data-1, name: City IoT platform operations desk, department: sz-big-data}
  - {id: gusu-emergency-1, name: District emergency duty desk, department: gusu-emergency}
  - {id: gusu-fire-1, name: Fire station (Pingjiang), department: gusu-fire}
  - {id: municipal-works-1, name: Road and underpass crew, department: gusu-municipal-works}
  - {id: greening-1, name: Tree and greening crew, department: gusu-greening}
  - {id: police-patrol-1, name: Police patrol (Gusu branch), department: gusu-public-security}
  - {id: heritage-1, name: Historic buildings inspectors, department: gusu-heritage}
  - {id: command-desk-1, name: District command centre duty desk, department: gusu-command}
  - {id: sip-emergency-1, name: SIP emergency duty desk, department: sip-emergency}
  - {id: sip-building-1, name: CBD building safety team, department: sip-planning}
  - {id: sip-traffic-1, name: SIP traffic police patrol, department: sip-traffic}
  - {id: sip-urban-mgmt-1, name: SIP urban management patrol, department: sip-urban-mgmt}
{street_teams}
  - {id: grid-centre-1, name: Grid centre dispatch desk, department: gusu-grid-centre}
{grid_teams}

# (hazard, zone type) -> department and team; every zone type that carries a hazard has a route.
# The CBD fall zones go to the same building office: routing keys on zone type, not district.
routing:
  - {hazard: waterlogging, zone_type: underpass, department: gusu-drainage, team: drainage-1}
  - {hazard: waterlogging, zone_type: low_road, department: gusu-drainage, team: drainage-2}
  - {hazard: falling_object, zone_type: fall_zone, department: gusu-building, team: building-mgmt-1}
  - {hazard: traffic, zone_type: intersection, department: gusu-traffic, team: traffic-police-1}
  - {hazard: traffic, zone_type: road_segment, department: gusu-traffic, team: traffic-police-2}
  # Repeated falling objects from one building: its management, through the building office.
  - {hazard: falling_object_pattern, zone_type: fall_zone, department: gusu-building,
     team: building-mgmt-1}
  # Grid workers' reports that match no sensor alert become alerts in their grid cell.
  - {hazard: waterlogging, zone_type: grid_cell, department: gusu-grid-centre, team: grid-centre-1}
  - {hazard: falling_object, zone_type: grid_cell, department: gusu-grid-centre,
     team: grid-centre-1}
  - {hazard: traffic, zone_type: grid_cell, department: gusu-grid-centre, team: grid-centre-1}
  # A faulty device (in whatever zone): maintenance, never the hazard teams.
  - {hazard: device_fault, zone_type: "*", department: gusu-iot-maint, team: iot-maint-1}

simulator:
  speed: 1.0
  telemetry_interval_s: 10
  seed: 1

# Device kinds from plug-ins, as 'package.module:Class' (README: Plugging a device in); kinds
# registered through the citywatch.devices entry-point group load without being listed here.
plugins: []

# {n_devices} devices: {counts}.
devices:
"""

KIND_NOTES = {
    "camera": "high-altitude cameras, each on a roof near a fall zone",
    "water": "water-depth gauges, inside the underpass and low-road zones",
    "rain": "rain gauges, one per Gusu street",
    "traffic": "traffic detectors, inside the intersection and road-segment zones",
    "grid": "grid workers' terminals, one per grid cell (home position)",
}


def _short(street_name: str) -> str:
    """'Pingjiang Subdistrict (...)' -> 'Pingjiang'."""
    return street_name.split(" (", maxsplit=1)[0].removesuffix(" Subdistrict")


def config_text(zones: list[OutZone], devices: list[dict[str, Any]]) -> str:
    streets = [z for z in zones if z.type == "street"]
    street_depts = "\n".join(
        f"  - {{id: office-{s.id}, name: {s.name.split(' (')[0]} Office, level: street, "
        f"zone_id: {s.id}}}"
        for s in streets)
    # A street's urban-management squadron answers for the street too, after its office.
    street_depts += "\n" + "\n".join(
        f"  - {{id: squadron-{s.id}, name: {_short(s.name)} Urban Management Squadron, "
        f"level: street, zone_id: {s.id}}}" for s in streets)
    street_teams = "\n".join(
        f"  - {{id: street-{s.id}-1, name: {s.name.split(' (')[0]} duty team, "
        f"department: office-{s.id}}}" for s in streets)
    street_teams += "\n" + "\n".join(
        f"  - {{id: squadron-{s.id}-1, name: {_short(s.name)} urban management patrol, "
        f"department: squadron-{s.id}}}" for s in streets)
    # Grid workers report to their street's grid workstation, which the district centre leads.
    grid_depts = "\n".join(
        f"  - {{id: grid-{s.id}, name: {s.name.split(' (')[0]} Grid Workstation, level: grid, "
        f"zone_id: {s.id}}}" for s in streets)
    grid_teams = "\n".join(
        f"  - {{id: grid-{s.id}-1, name: {_short(s.name)} grid workstation desk, "
        f"department: grid-{s.id}}}" for s in streets)
    counts: dict[str, int] = {}
    for d in devices:
        counts[d["kind"]] = counts.get(d["kind"], 0) + 1
    head = (CONFIG_HEAD.replace("{street_departments}", street_depts)
            .replace("{street_teams}", street_teams)
            .replace("{grid_departments}", grid_depts)
            .replace("{grid_teams}", grid_teams)
            .replace("{n_devices}", str(len(devices)))
            .replace("{counts}", ", ".join(f"{v} {k}" for k, v in counts.items())))
    out = [head]
    kind = None
    for d in devices:
        if d["kind"] != kind:
            kind = d["kind"]
            out.append(f"  # {counts[kind]} {KIND_NOTES[kind]}\n")
        lon, lat = d["position"]
        out.append(f"  - {{id: {d['id']}, kind: {d['kind']}, position: [{lon:.6f}, {lat:.6f}], "
                   f"name: {json.dumps(d['name'], ensure_ascii=False)}}}\n")
    return "".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--check", action="store_true",
                        help="compare with the committed files instead of writing them")
    args = parser.parse_args(argv)
    zones, devices, summary = build()
    hazard_types = {t for t, h in ZONE_TYPE_HAZARDS.items() if h}
    if missing := hazard_types - {z.type for z in zones}:
        raise SystemExit(f"no zone of type {sorted(missing)}")
    outputs = {ZONES_OUT: geojson_text(zones), CONFIG_OUT: config_text(zones, devices)}
    if args.check:
        stale = [p for p, text in outputs.items()
                 if not p.exists() or p.read_text(encoding="utf-8") != text]
        for p in stale:
            print(f"out of date: {p.relative_to(REPO)}")
        return 1 if stale else 0
    for path, text in outputs.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    types: dict[str, int] = {}
    for z in zones:
        types[z.type] = types.get(z.type, 0) + 1
    print(f"wrote {ZONES_OUT.relative_to(REPO)}: {len(zones)} zones {types}")
    print(f"wrote {CONFIG_OUT.relative_to(REPO)}: {len(devices)} devices")
    print(f"grid cell size {summary['cell_size_m']:g} m; cells per street {summary['streets']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
