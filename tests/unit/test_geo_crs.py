"""GCJ-02 <-> WGS 84 and the UTM 51N helpers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from shapely.geometry import LineString, Point, box

from geo.crs import (
    buffer_m,
    gcj02_to_wgs84,
    gcj02_to_wgs84_arrays,
    gcj02_to_wgs84_geometry,
    lonlat_to_utm,
    to_utm,
    to_wgs84,
    utm_to_lonlat,
    wgs84_to_gcj02,
    wgs84_to_gcj02_arrays,
)
from geo.position import metres as distance_m

# Published test vectors of eviltransform (googollee/eviltransform): (wgs lon, lat), (gcj lon, lat).
VECTORS = [
    ((121.5272106, 31.1774276), (121.531541859215, 31.17530398364597)),  # Shanghai
    ((113.912316, 22.543847), (113.9171764808363, 22.540796131694766)),  # Shenzhen
    ((116.377817, 39.911954), (116.38404722455657, 39.91334545536069)),  # Beijing
]


def metres_between(a: tuple[float, float], b: tuple[float, float]) -> float:
    # Equirectangular is exact enough at metre scale.
    dx = (a[0] - b[0]) * 111_320 * math.cos(math.radians(a[1]))
    dy = (a[1] - b[1]) * 110_574
    return math.hypot(dx, dy)


@pytest.mark.parametrize(("wgs", "gcj"), VECTORS)
def test_forward_matches_published_vectors(wgs: tuple[float, float],
                                           gcj: tuple[float, float]) -> None:
    assert wgs84_to_gcj02(*wgs) == pytest.approx(gcj, abs=1e-9)


@pytest.mark.parametrize(("wgs", "gcj"), VECTORS)
def test_inverse_recovers_published_vectors(wgs: tuple[float, float],
                                            gcj: tuple[float, float]) -> None:
    assert metres_between(gcj02_to_wgs84(*gcj), wgs) < 0.01


def test_suzhou_offset_is_the_documented_one() -> None:
    # data/README: in Suzhou GCJ-02 is about +0.0042 lon and -0.0022 lat from WGS 84.
    lon, lat = 120.62, 31.31
    glon, glat = wgs84_to_gcj02(lon, lat)
    assert glon - lon == pytest.approx(0.0042, abs=0.0005)
    assert glat - lat == pytest.approx(-0.0022, abs=0.0005)


@pytest.mark.parametrize("pos", [(-0.1276, 51.5072), (151.2, -33.87), (-70.65, -33.45)])
def test_outside_china_nothing_moves(pos: tuple[float, float]) -> None:
    assert wgs84_to_gcj02(*pos) == pos
    assert gcj02_to_wgs84(*pos) == pos


@settings(max_examples=300, deadline=None, database=None)
@given(lon=st.floats(73.7, 134.7), lat=st.floats(18.2, 53.5))
def test_round_trip_within_a_metre(lon: float, lat: float) -> None:
    back = gcj02_to_wgs84(*wgs84_to_gcj02(lon, lat))
    assert metres_between(back, (lon, lat)) < 1.0


def test_arrays_agree_with_scalars() -> None:
    lons = np.array([120.55, 120.62, 120.67])
    lats = np.array([31.27, 31.31, 31.36])
    glon, glat = gcj02_to_wgs84_arrays(lons, lats)
    for i in range(3):
        assert (glon[i], glat[i]) == gcj02_to_wgs84(lons[i], lats[i])
    flon, flat = wgs84_to_gcj02_arrays(glon, glat)
    np.testing.assert_allclose(flon, lons, atol=1e-8)
    np.testing.assert_allclose(flat, lats, atol=1e-8)


def test_geometry_moves_every_vertex_and_keeps_its_shape() -> None:
    gcj = box(120.62, 31.31, 120.63, 31.32)
    wgs = gcj02_to_wgs84_geometry(gcj)
    assert wgs.geom_type == "Polygon"
    assert wgs.is_valid
    for (x0, y0), (x1, y1) in zip(gcj.exterior.coords, wgs.exterior.coords, strict=True):
        assert (x1, y1) == gcj02_to_wgs84(x0, y0)
    # GCJ-02 stretches a little as well as shifting: areas agree to a few parts in a thousand.
    assert to_utm(wgs).area == pytest.approx(to_utm(gcj).area, rel=5e-3)


def test_utm_central_meridian_and_round_trip() -> None:
    # Zone 51's central meridian is 123 E: easting 500 000 m there, by definition.
    x, _ = lonlat_to_utm(123.0, 31.3)
    assert float(x) == pytest.approx(500_000.0, abs=1e-6)
    lon, lat = utm_to_lonlat(*lonlat_to_utm(120.62, 31.31))
    assert (float(lon), float(lat)) == pytest.approx((120.62, 31.31), abs=1e-9)


def test_geometry_round_trip_through_utm() -> None:
    line = LineString([(120.61, 31.30), (120.62, 31.31)])
    back = to_wgs84(to_utm(line))
    assert back.equals_exact(line, tolerance=1e-9)


def test_distance_in_metres() -> None:
    # 0.01 degree of latitude at 31 N is about 1 109 m.
    assert distance_m((120.62, 31.30), (120.62, 31.31)) == pytest.approx(1109, rel=0.003)
    assert distance_m((120.62, 31.30), (120.62, 31.30)) == 0.0


def test_buffer_in_metres() -> None:
    disc = buffer_m(Point(120.62, 31.31), 100.0)
    assert to_utm(disc).area == pytest.approx(math.pi * 100.0**2, rel=0.01)
    assert disc.contains(Point(120.62, 31.31))
