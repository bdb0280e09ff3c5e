"""The administrative hierarchy: every zone, device and alert knows its grid cell and street."""

from __future__ import annotations

import pytest
from shapely.geometry import box

from geo.index import Hierarchy, ZoneIndex
from geo.zones import Zone

DISTRICT = box(120.60, 31.30, 120.64, 31.34)
STREET_W, STREET_E = box(120.60, 31.30, 120.62, 31.34), box(120.62, 31.30, 120.64, 31.34)
CELL_1, CELL_2 = box(120.60, 31.30, 120.62, 31.32), box(120.62, 31.30, 120.64, 31.32)
ZONES = [
    Zone("d", "District", "district", DISTRICT),
    Zone("sw", "West street", "street", STREET_W, "d"),
    Zone("se", "East street", "street", STREET_E, "d"),
    Zone("c1", "Cell 1", "grid_cell", CELL_1, "sw"),
    Zone("c2", "Cell 2", "grid_cell", CELL_2, "se"),
    # An underpass straddling the two cells, filed under the one it overlaps most.
    Zone("u1", "Underpass", "underpass", box(120.618, 31.31, 120.621, 31.311), "c1"),
    Zone("pa", "Plaza", "pedestrian_area", box(120.630, 31.31, 120.631, 31.311), "c2"),
]
INDEX = ZoneIndex(ZONES)


@pytest.mark.parametrize(("where", "point", "expected"), [
    ("in cell 1", (120.61, 31.31), Hierarchy("c1", "sw", "d")),
    ("in cell 2", (120.63, 31.31), Hierarchy("c2", "se", "d")),
    ("north half: a street, no cell", (120.61, 31.33), Hierarchy(None, "sw", "d")),
    ("outside everything", (121.0, 32.0), Hierarchy(None, None, None)),
    ("on the line between the cells: the first", (120.62, 31.31), Hierarchy("c1", "sw", "d")),
])
def test_hierarchy_of_a_position(where: str, point: tuple[float, float],
                                 expected: Hierarchy) -> None:
    assert INDEX.hierarchy_of(*point) == expected, where


@pytest.mark.parametrize(("zone_id", "expected"), [
    ("u1", Hierarchy("c1", "sw", "d")),  # by parent_id, though it pokes into cell 2
    ("pa", Hierarchy("c2", "se", "d")),
    ("c2", Hierarchy("c2", "se", "d")),
    ("se", Hierarchy(None, "se", "d")),
    ("d", Hierarchy(None, None, "d")),
])
def test_hierarchy_of_a_zone(zone_id: str, expected: Hierarchy) -> None:
    assert INDEX.hierarchy_of_zone(zone_id) == expected
    grid_cell, street, district = INDEX.hierarchy_of_zone(zone_id)  # unpacks as a triple
    assert (grid_cell, street, district) == tuple(expected)


def test_admin_chain_names_every_level_found() -> None:
    assert INDEX.admin_chain("u1") == {"grid_cell": "c1", "street": "sw", "district": "d"}
