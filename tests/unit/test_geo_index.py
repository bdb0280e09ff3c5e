"""ZoneIndex: point lookups, the bulk assign, and the zone accessors."""

from __future__ import annotations

import math
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st

from geo.errors import GeoError, UnknownZoneError, ZoneError
from geo.index import ZoneIndex
from geo.load import load_zones
from geo.zones import Zone
from tests.geometry_catalogue import (
    CELL,
    POINTS,
    ROAD,
    SQUARE,
    UNDERPASS,
    VALID,
    catalogue_zones,
    vertices,
    zone,
)

GUSU = Path(__file__).resolve().parents[2] / "data" / "zones" / "gusu.geojson"


@cache
def catalogue_index() -> ZoneIndex:
    return ZoneIndex(catalogue_zones())


@cache
def gusu_zones() -> tuple[Zone, ...]:
    return tuple(load_zones(GUSU))


def brute_force(zones: tuple[Zone, ...] | list[Zone], lon: float, lat: float) -> tuple[str, ...]:
    """The definition: every zone that covers the point, in index order."""
    p = shapely.Point(lon, lat)
    return tuple(z.id for z in zones if z.geometry.covers(p))


@pytest.mark.parametrize(("label", "pos", "expected"), POINTS, ids=[p[0] for p in POINTS])
def test_zones_at_catalogue(label: str, pos: tuple[float, float],
                            expected: frozenset[str]) -> None:
    assert set(catalogue_index().zones_at(*pos)) == expected


def test_results_follow_index_order() -> None:
    # Built underpass-first: results come in that order, not by size or tree order.
    index = ZoneIndex([zone("up", UNDERPASS, "underpass"), zone("rs", ROAD, "road_segment"),
                       zone("cell", CELL)])
    assert index.zones_at(120.6050, 31.3050) == ("up", "rs", "cell")
    assert index.assign([120.6050], [31.3050]) == [("up", "rs", "cell")]


def test_assign_agrees_with_zones_at_on_the_catalogue() -> None:
    lons = [p[1][0] for p in POINTS]
    lats = [p[1][1] for p in POINTS]
    index = catalogue_index()
    assert index.assign(lons, lats) == [index.zones_at(x, y) for x, y in zip(lons, lats,
                                                                            strict=True)]


def test_assign_edge_cases() -> None:
    index = catalogue_index()
    assert index.assign([], []) == []
    assert index.assign(np.array([math.nan, 120.6205, math.inf]),
                        np.array([31.3105, 31.3105, 31.3105])) == [(), ("square",), ()]
    # A scalar latitude broadcasts against many longitudes.
    assert index.assign([120.6205, 0.0], 31.3105) == [("square",), ()]


def test_zones_at_non_finite_is_nowhere() -> None:
    assert catalogue_index().zones_at(math.nan, 31.31) == ()
    assert catalogue_index().zones_at(120.62, math.inf) == ()


def test_accessors() -> None:
    index = catalogue_index()
    assert len(index) == len(VALID)
    assert [z.id for z in index] == list(VALID)
    assert index.get("square").geometry.equals(SQUARE)
    assert "donut" in index
    assert "lake" not in index
    assert [z.id for z in index.of_type("grid_cell")] == list(VALID)
    assert index.of_type("underpass") == ()
    minx, miny, maxx, maxy = index.bounds
    assert (minx, miny) == (-70.66, -33.46)  # the far-away zone
    assert (maxx, maxy) == (120.6415, 31.3205)


def test_get_unknown_is_a_key_error_and_a_geo_error() -> None:
    with pytest.raises(UnknownZoneError, match="no zone 'lake'") as info:
        catalogue_index().get("lake")
    assert isinstance(info.value, KeyError)
    assert isinstance(info.value, GeoError)


def test_ancestors_nearest_first() -> None:
    index = ZoneIndex([zone("d", CELL, "district"), zone("s", CELL, "street", "d"),
                       zone("c", CELL, "grid_cell", "s"), zone("u", UNDERPASS, "underpass", "c")])
    assert index.ancestors("u") == ("c", "s", "d")
    assert index.ancestors("d") == ()


def test_duplicate_ids_are_refused() -> None:
    with pytest.raises(ZoneError, match="zone 'a': id appears twice"):
        ZoneIndex([zone("a", CELL), zone("a", SQUARE)])


def test_empty_index() -> None:
    index = ZoneIndex([])
    assert index.zones_at(120.62, 31.31) == ()
    assert index.assign([120.62, 120.63], [31.31, 31.32]) == [(), ()]
    assert all(math.isnan(v) for v in index.bounds)


# Property: the bulk assign is exactly the brute-force covers() over all zones, on the real
# district (nested zones, multipolygons, holes) and on the catalogue.

def _gusu_bounds() -> tuple[float, float, float, float]:
    minx, miny, maxx, maxy = ZoneIndex(gusu_zones()).bounds
    return (minx - 0.002, miny - 0.002, maxx + 0.002, maxy + 0.002)


_B = _gusu_bounds()
gusu_points = st.lists(st.tuples(st.floats(_B[0], _B[2]), st.floats(_B[1], _B[3])),
                       min_size=1, max_size=60)


@settings(max_examples=150, deadline=None, database=None)
@given(points=gusu_points)
def test_assign_matches_brute_force_on_gusu(points: list[tuple[float, float]]) -> None:
    zones = gusu_zones()
    index = ZoneIndex(zones)
    lons, lats = zip(*points, strict=True)
    assert index.assign(lons, lats) == [brute_force(zones, x, y) for x, y in points]


_GUSU_VERTICES = vertices(z.geometry for z in gusu_zones())


@settings(max_examples=150, deadline=None, database=None)
@given(picks=st.lists(st.sampled_from(_GUSU_VERTICES), min_size=1, max_size=40))
def test_vertices_are_inside_their_zones(picks: list[tuple[float, float]]) -> None:
    # Points exactly on boundaries: covers semantics, so a vertex is in every zone it bounds.
    zones = gusu_zones()
    index = ZoneIndex(zones)
    lons, lats = zip(*picks, strict=True)
    got = index.assign(lons, lats)
    assert got == [brute_force(zones, x, y) for x, y in picks]
    assert all(got)


@settings(max_examples=150, deadline=None, database=None)
@given(points=st.lists(st.tuples(st.floats(120.599, 120.6420), st.floats(31.2995, 31.3210)),
                       min_size=1, max_size=40))
def test_assign_matches_brute_force_on_catalogue(points: list[tuple[float, float]]) -> None:
    zones = catalogue_zones()
    lons, lats = zip(*points, strict=True)
    assert catalogue_index().assign(lons, lats) == [brute_force(zones, x, y) for x, y in points]
