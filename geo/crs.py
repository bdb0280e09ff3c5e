"""Coordinate systems: GCJ-02 to WGS 84, and WGS 84 to and from UTM 51N for work in metres.

GCJ-02 is the obfuscated datum of Chinese web maps (DataV, AMap). Its forward transform
(WGS 84 -> GCJ-02) is public in closed form; the inverse is not, so we invert it by fixed-point
iteration, which converges to well under a millimetre in three steps.

UTM zone 51N (EPSG:32651) covers Suzhou (120-126 E); buffers and distances are computed there.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import numpy as np
import shapely
from numpy.typing import ArrayLike, NDArray
from pyproj import Transformer
from shapely.geometry.base import BaseGeometry

WGS84 = "EPSG:4326"
UTM51N = "EPSG:32651"

# Krasovsky 1940 ellipsoid, as the GCJ-02 algorithm uses.
_A = 6378245.0
_EE = 0.00669342162296594323

# Three fixed-point steps: the first leaves ~1 m, the second ~1 mm, the third far below that.
_INVERSE_STEPS = 3

FloatArray = NDArray[np.float64]


def _in_china(lon: FloatArray, lat: FloatArray) -> NDArray[np.bool_]:
    # Outside this box the published algorithm applies no offset.
    return (lon >= 72.004) & (lon <= 137.8347) & (lat >= 0.8293) & (lat <= 55.8271)


def _offset(lon: FloatArray, lat: FloatArray) -> tuple[FloatArray, FloatArray]:
    """The GCJ-02 offset in degrees (dlon, dlat) at WGS 84 positions."""
    x = lon - 105.0
    y = lat - 35.0
    pi = np.pi
    sqrt_abs_x = np.sqrt(np.abs(x))
    common = (20.0 * np.sin(6.0 * x * pi) + 20.0 * np.sin(2.0 * x * pi)) * 2.0 / 3.0
    dlat = -100.0 + 2.0 * x + 3.0 * y + 0.2 * y * y + 0.1 * x * y + 0.2 * sqrt_abs_x + common
    dlat += (20.0 * np.sin(y * pi) + 40.0 * np.sin(y / 3.0 * pi)) * 2.0 / 3.0
    dlat += (160.0 * np.sin(y / 12.0 * pi) + 320.0 * np.sin(y * pi / 30.0)) * 2.0 / 3.0
    dlon = 300.0 + x + 2.0 * y + 0.1 * x * x + 0.1 * x * y + 0.1 * sqrt_abs_x + common
    dlon += (20.0 * np.sin(x * pi) + 40.0 * np.sin(x / 3.0 * pi)) * 2.0 / 3.0
    dlon += (150.0 * np.sin(x / 12.0 * pi) + 300.0 * np.sin(x / 30.0 * pi)) * 2.0 / 3.0
    rad_lat = lat / 180.0 * pi
    magic = 1.0 - _EE * np.sin(rad_lat) ** 2
    sqrt_magic = np.sqrt(magic)
    dlat = (dlat * 180.0) / ((_A * (1.0 - _EE)) / (magic * sqrt_magic) * pi)
    dlon = (dlon * 180.0) / (_A / sqrt_magic * np.cos(rad_lat) * pi)
    inside = _in_china(lon, lat)
    return np.where(inside, dlon, 0.0), np.where(inside, dlat, 0.0)


def _arrays(lon: ArrayLike, lat: ArrayLike) -> tuple[FloatArray, FloatArray]:
    lon_a, lat_a = np.broadcast_arrays(np.asarray(lon, dtype=np.float64),
                                       np.asarray(lat, dtype=np.float64))
    return lon_a, lat_a


def wgs84_to_gcj02_arrays(lon: ArrayLike, lat: ArrayLike) -> tuple[FloatArray, FloatArray]:
    """WGS 84 to GCJ-02 (the published forward transform), element-wise."""
    lon_a, lat_a = _arrays(lon, lat)
    dlon, dlat = _offset(lon_a, lat_a)
    return lon_a + dlon, lat_a + dlat


def gcj02_to_wgs84_arrays(lon: ArrayLike, lat: ArrayLike) -> tuple[FloatArray, FloatArray]:
    """GCJ-02 to WGS 84, element-wise: invert the forward transform by fixed-point iteration."""
    glon, glat = _arrays(lon, lat)
    wlon, wlat = glon.copy(), glat.copy()
    for _ in range(_INVERSE_STEPS):
        flon, flat = wgs84_to_gcj02_arrays(wlon, wlat)
        wlon -= flon - glon
        wlat -= flat - glat
    return wlon, wlat


def wgs84_to_gcj02(lon: float, lat: float) -> tuple[float, float]:
    """WGS 84 to GCJ-02 for one position."""
    x, y = wgs84_to_gcj02_arrays(lon, lat)
    return float(x), float(y)


def gcj02_to_wgs84(lon: float, lat: float) -> tuple[float, float]:
    """GCJ-02 to WGS 84 for one position; error well under a metre in China."""
    x, y = gcj02_to_wgs84_arrays(lon, lat)
    return float(x), float(y)


def gcj02_to_wgs84_geometry(geom: BaseGeometry) -> BaseGeometry:
    """Every vertex of a GCJ-02 geometry moved to WGS 84 (topology is kept: shifts are tiny)."""
    def _move(xy: FloatArray) -> FloatArray:
        x, y = gcj02_to_wgs84_arrays(xy[:, 0], xy[:, 1])
        return np.column_stack([x, y])

    out: BaseGeometry = shapely.transform(geom, _move)
    return out


@cache
def _transformer(src: str, dst: str) -> Transformer:
    # always_xy: (lon, lat) order as GeoJSON, whatever the CRS's declared axis order.
    return Transformer.from_crs(src, dst, always_xy=True)


def _project(geom: BaseGeometry, src: str, dst: str) -> BaseGeometry:
    tr = _transformer(src, dst)

    def _move(xy: FloatArray) -> FloatArray:
        x, y = tr.transform(xy[:, 0], xy[:, 1])
        return np.column_stack([x, y])

    out: BaseGeometry = shapely.transform(geom, _move)
    return out


def utm_crs_for(lon: float, lat: float) -> str:
    """The UTM zone's EPSG code for a position: the metric CRS for work anywhere (32651 for
    Suzhou). Zones outside 51N can then be buffered in their own zone with ``project``."""
    zone = min(60, max(1, int((lon + 180) // 6) + 1))
    return f"EPSG:{32600 + zone if lat >= 0 else 32700 + zone}"


def project(geom: BaseGeometry, src: str, dst: str) -> BaseGeometry:
    """A geometry from one CRS to another (any pair pyproj knows), (x, y) = (lon, lat) order."""
    return _project(geom, src, dst)


def to_utm(geom: BaseGeometry) -> BaseGeometry:
    """A WGS 84 geometry in UTM 51N metres."""
    return _project(geom, WGS84, UTM51N)


def to_wgs84(geom: BaseGeometry) -> BaseGeometry:
    """A UTM 51N geometry back in WGS 84 degrees."""
    return _project(geom, UTM51N, WGS84)


def lonlat_to_utm(lon: ArrayLike, lat: ArrayLike) -> tuple[FloatArray, FloatArray]:
    """WGS 84 positions to UTM 51N eastings and northings (m), element-wise."""
    x, y = _transformer(WGS84, UTM51N).transform(*_arrays(lon, lat))
    return np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)


def utm_to_lonlat(x: ArrayLike, y: ArrayLike) -> tuple[FloatArray, FloatArray]:
    """UTM 51N eastings and northings (m) to WGS 84 positions, element-wise."""
    lon, lat = _transformer(UTM51N, WGS84).transform(*_arrays(x, y))
    return np.asarray(lon, dtype=np.float64), np.asarray(lat, dtype=np.float64)


def buffer_m(geom: BaseGeometry, metres: float, **kwargs: Any) -> BaseGeometry:
    """A WGS 84 geometry buffered by a distance in metres (computed in UTM 51N)."""
    return to_wgs84(to_utm(geom).buffer(metres, **kwargs))
