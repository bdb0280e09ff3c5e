"""Zone files in other formats and CRSs: GeoPackage, Shapefile, no CRS, 3D; the metric CRS."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import pytest
import shapely
from shapely.geometry import Polygon, box

from geo.crs import to_utm, to_wgs84, utm_crs_for
from geo.errors import ZoneError
from geo.load import load_zones, read_zones
from tests.geometry_catalogue import BOWTIE, CELL, SQUARE

UTM_SQUARE = box(301_000.0, 3_465_000.0, 301_100.0, 3_465_100.0)  # UTM 51N metres, Suzhou


def frame(rows: list[tuple[str, str, object]], crs: str | None) -> gpd.GeoDataFrame:
    return gpd.GeoDataFrame({"id": [r[0] for r in rows], "type": [r[1] for r in rows],
                             "parent_id": [None] * len(rows)},
                            geometry=[r[2] for r in rows], crs=crs)


@pytest.mark.parametrize(("driver", "name"), [("GPKG", "zones.gpkg"),
                                              ("ESRI Shapefile", "zones.shp")])
def test_projected_files_are_reprojected_to_wgs84(tmp_path: Path, driver: str,
                                                  name: str) -> None:
    path = tmp_path / name
    frame([("up-01", "underpass", UTM_SQUARE)], "EPSG:32651").to_file(path, driver=driver)
    loaded = read_zones(path)
    (zone,) = loaded.zones
    assert loaded.source_crs is not None and "32651" in loaded.source_crs
    # Shapefiles turn rings clockwise: compare normalised shapes.
    assert zone.geometry.normalize().equals_exact(to_wgs84(UTM_SQUARE).normalize(),
                                                  tolerance=1e-7)


def test_a_file_without_crs_takes_the_one_named(tmp_path: Path) -> None:
    path = tmp_path / "zones.shp"  # a Shapefile whose .prj went missing
    with pytest.warns(UserWarning, match="'crs' was not provided"):
        frame([("up-01", "underpass", UTM_SQUARE)], None).to_file(path)
    (zone,) = load_zones(path, crs="EPSG:32651")
    assert 120 < zone.geometry.centroid.x < 121


def test_geopackage_layers(tmp_path: Path) -> None:
    path = tmp_path / "city.gpkg"
    frame([("up-01", "underpass", SQUARE)], "EPSG:4326").to_file(path, layer="zones")
    frame([("x", "underpass", CELL)], "EPSG:4326").to_file(path, layer="roads")
    assert [z.id for z in load_zones(path)] == ["up-01"]  # the layer called "zones"
    assert [z.id for z in load_zones(path, layer="roads")] == ["x"]
    other = tmp_path / "other.gpkg"
    frame([("a", "underpass", SQUARE)], "EPSG:4326").to_file(other, layer="a")
    frame([("b", "underpass", CELL)], "EPSG:4326").to_file(other, layer="b")
    with pytest.raises(ZoneError, match="2 layers"):
        load_zones(other)


def test_repairs_in_a_geopackage_and_3d_shapes(tmp_path: Path) -> None:
    path = tmp_path / "zones.gpkg"
    cube_top = Polygon([(x, y, 12.0) for x, y in SQUARE.exterior.coords])
    frame([("up-01", "underpass", BOWTIE), ("up-02", "underpass", cube_top)],
          "EPSG:4326").to_file(path)
    loaded = read_zones(path)
    assert [z.id for z in loaded.zones] == ["up-01", "up-02"]
    assert not shapely.has_z(loaded.zones[1].geometry)
    assert len(loaded.repaired) == 1
    assert "zone 'up-01': repaired invalid geometry" in loaded.repaired[0]


@pytest.mark.parametrize(("lon", "lat", "epsg"), [
    (120.62, 31.31, "EPSG:32651"),  # Suzhou
    (116.40, 39.90, "EPSG:32650"),  # Beijing
    (-70.65, -33.45, "EPSG:32719"),  # Santiago: southern hemisphere
    (179.99, 0.0, "EPSG:32660"),
])
def test_metric_crs_for_a_position(lon: float, lat: float, epsg: str) -> None:
    assert utm_crs_for(lon, lat) == epsg


def test_buffers_are_in_metres() -> None:
    assert to_utm(SQUARE).area == pytest.approx(95 * 111, rel=0.05)
