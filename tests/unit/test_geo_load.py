"""Zone files to zones: what loads, and that every problem is named with its zone and reason."""

from __future__ import annotations

from pathlib import Path

import pytest
from shapely.geometry import LineString, Point, Polygon, box

from geo.crs import to_wgs84
from geo.errors import GeoError, ZoneError
from geo.load import load_zones, read_zones
from tests.geometry_catalogue import (
    BOWTIE,
    CELL,
    DONUT,
    EMPTY,
    FAR_AWAY,
    MULTI,
    OUT_OF_RANGE,
    SQUARE,
    feature,
    write_geojson,
)

# A ring that runs out and back along one line: make_valid can only make lines of it.
SLIVER = Polygon([(120.620, 31.32), (120.621, 31.32), (120.622, 31.32), (120.621, 31.32),
                  (120.620, 31.32)])


def load_one_bad(tmp_path: Path, bad: dict[str, object]) -> ZoneError:
    path = write_geojson(tmp_path / "zones.geojson", [feature("ok-1", SQUARE), bad])
    with pytest.raises(ZoneError) as info:
        load_zones(path)
    assert len(info.value.problems) == 1, info.value.problems
    return info.value


def test_valid_zones_load_with_their_properties(tmp_path: Path) -> None:
    path = write_geojson(tmp_path / "zones.geojson", [
        feature("cell-01", CELL, "grid_cell", "Cell one"),
        feature("up-01", SQUARE, "underpass", "Renmin Road underpass", parent_id="cell-01"),
        feature("court", DONUT, "fall_zone"),
        feature("two", MULTI, "road_segment"),
        feature("far", FAR_AWAY, "district"),
    ])
    zones = load_zones(path)
    assert [z.id for z in zones] == ["cell-01", "up-01", "court", "two", "far"]
    up = zones[1]
    assert (up.name, up.type, up.parent_id) == ("Renmin Road underpass", "underpass", "cell-01")
    assert up.hazards == ("waterlogging",)
    assert up.geometry.equals(SQUARE)
    assert zones[0].parent_id is None
    assert len(zones[2].geometry.interiors) == 1  # the hole survives
    assert zones[3].geometry.geom_type == "MultiPolygon"


def test_name_defaults_to_the_id(tmp_path: Path) -> None:
    path = write_geojson(tmp_path / "z.geojson", [feature("up-07", SQUARE, name=None)])
    assert load_zones(path)[0].name == "up-07"


def test_numeric_ids_become_strings(tmp_path: Path) -> None:
    path = write_geojson(tmp_path / "z.geojson", [feature(7, SQUARE), feature(8, CELL)])
    assert [z.id for z in load_zones(path)] == ["7", "8"]


def test_parent_may_come_later_in_the_file(tmp_path: Path) -> None:
    path = write_geojson(tmp_path / "z.geojson", [
        feature("up-01", SQUARE, parent_id="cell-01"), feature("cell-01", CELL, "grid_cell")])
    assert [z.parent_id for z in load_zones(path)] == ["cell-01", None]


def test_another_crs_is_reprojected_to_wgs84(tmp_path: Path) -> None:
    utm_square = box(301_000.0, 3_465_000.0, 301_100.0, 3_465_100.0)
    path = write_geojson(tmp_path / "utm.geojson", [feature("up-01", utm_square)],
                         crs="EPSG:32651")
    (zone,) = load_zones(path)
    expected = to_wgs84(utm_square)
    assert zone.geometry.equals_exact(expected, tolerance=1e-7)
    lon, lat = zone.geometry.centroid.coords[0]
    assert 120 < lon < 121
    assert 31 < lat < 32


@pytest.mark.parametrize(("bad", "zone_label", "reason"), [
    (feature(None, CELL), "feature #2", "missing id"),
    (feature("", CELL), "feature #2", "missing id"),
    (feature("ok-1", CELL), "zone 'ok-1'", "id appears twice (first as feature #1)"),
    (feature("z-9", CELL, "volcano"), "zone 'z-9'", "unknown type 'volcano'"),
    (feature("z-9", CELL, None), "zone 'z-9'", "unknown type None"),
    (feature("z-9", None), "zone 'z-9'", "no geometry"),
    (feature("z-9", EMPTY), "zone 'z-9'", "empty geometry"),
    (feature("z-9", Point(120.62, 31.31)), "zone 'z-9'", "geometry is a Point"),
    (feature("z-9", LineString([(120.62, 31.31), (120.63, 31.31)])), "zone 'z-9'",
     "geometry is a LineString"),
    (feature("z-9", SLIVER), "zone 'z-9'",
     "invalid geometry: Ring Self-intersection[120.621 31.32]; make_valid leaves no polygon"),
    (feature("z-9", OUT_OF_RANGE), "zone 'z-9'", "coordinates out of lon/lat range"),
    (feature("z-9", CELL, parent_id="nowhere"), "zone 'z-9'",
     "parent_id 'nowhere' is not a zone in this file"),
])
def test_each_problem_names_file_zone_and_reason(tmp_path: Path, bad: dict[str, object],
                                                 zone_label: str, reason: str) -> None:
    error = load_one_bad(tmp_path, bad)
    assert str(error).startswith(f"{tmp_path / 'zones.geojson'}: {zone_label}: ")
    assert reason in str(error)


def test_a_bow_tie_is_repaired_and_the_repair_reported(tmp_path: Path) -> None:
    path = write_geojson(tmp_path / "z.geojson", [feature("up-03", BOWTIE)])
    loaded = read_zones(path)
    (zone,) = loaded.zones
    assert zone.geometry.is_valid
    assert zone.geometry.geom_type == "MultiPolygon"  # the two triangles of the bow tie
    # The bow tie crosses itself at its centre: the report says where.
    (line,) = loaded.repaired
    assert "zone 'up-03': repaired invalid geometry (Self-intersection[120.6205 31.3205])" \
        in line


def test_parent_cycle_is_reported(tmp_path: Path) -> None:
    path = write_geojson(tmp_path / "z.geojson", [
        feature("a", CELL, "grid_cell", parent_id="b"),
        feature("b", SQUARE, "street", parent_id="a")])
    with pytest.raises(ZoneError, match="parent_id chain loops back"):
        load_zones(path)


def test_all_problems_are_collected(tmp_path: Path) -> None:
    path = write_geojson(tmp_path / "zones.geojson", [
        feature("up-01", SLIVER),
        feature("up-02", SQUARE, "lake"),
        feature(None, CELL),
        feature("fine", DONUT),
        feature("up-01", EMPTY),
    ])
    with pytest.raises(ZoneError) as info:
        load_zones(path)
    problems = info.value.problems
    assert len(problems) == 5
    assert all(p.startswith(f"{path}: ") for p in problems)
    assert "zone 'up-01': invalid geometry" in problems[0]
    assert "zone 'up-02': unknown type 'lake'" in problems[1]
    assert "feature #3: missing id" in problems[2]
    # Two reasons for one feature, one line each.
    assert "zone 'up-01': id appears twice" in problems[3]
    assert "zone 'up-01': empty geometry" in problems[4]
    assert str(info.value).startswith("5 zone errors:\n")


def test_errors_share_the_geo_root(tmp_path: Path) -> None:
    with pytest.raises(GeoError):
        load_zones(tmp_path / "missing.geojson")


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.geojson"
    with pytest.raises(ZoneError, match=r"missing\.geojson: cannot read zones"):
        load_zones(path)


def test_not_geojson(tmp_path: Path) -> None:
    path = tmp_path / "broken.geojson"
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(ZoneError, match=r"broken\.geojson: cannot read zones"):
        load_zones(path)


def test_no_zones(tmp_path: Path) -> None:
    path = write_geojson(tmp_path / "empty.geojson", [])
    with pytest.raises(ZoneError, match=r"empty\.geojson: no zones in the file"):
        load_zones(path)


def test_no_type_property_anywhere(tmp_path: Path) -> None:
    path = tmp_path / "z.geojson"
    path.write_text('{"type":"FeatureCollection","features":[{"type":"Feature",'
                    '"properties":{"id":"a"},"geometry":{"type":"Polygon","coordinates":'
                    '[[[120.62,31.31],[120.63,31.31],[120.63,31.32],[120.62,31.31]]]}}]}',
                    encoding="utf-8")
    with pytest.raises(ZoneError, match="no feature has the property 'type'"):
        load_zones(path)
