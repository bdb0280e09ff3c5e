"""geo.partitions: streets as partitions, and which partitions a device's messages reach."""

from __future__ import annotations

import pytest

from citywatch.config import load_config
from citywatch.service import build_placement
from geo.load import load_zones
from geo.partitions import HOME, MIRROR, Partitioning, Site, metres, partition, zone_partitions
from geo.zones import Zone
from rules.engine import CAMERA_RANGE_M
from tests.fix_faults import CONFIG

RADIUS = 2500.0


@pytest.fixture(scope="module")
def district() -> tuple[list[Zone], list[Site], Partitioning]:
    cfg = load_config(CONFIG, env={})
    zones = load_zones(cfg.zones_path)
    sites = [Site(s.device_id, s.kind, s.position, s.zone_ids)
             for s in build_placement(cfg, zones).sites()]
    return zones, sites, partition(zones, sites, catchment_radius_m=RADIUS,
                                   camera_range_m=CAMERA_RANGE_M)


def test_every_hazard_zone_is_in_exactly_one_street(
        district: tuple[list[Zone], list[Site], Partitioning]) -> None:
    zones, _sites, parts = district
    by_id = {z.id: z for z in zones}
    for z in zones:
        if z.hazards:
            p = parts.zone_partition[z.id]
            assert p in parts.partitions
            assert by_id[p].type == "street"
    assert len(parts.partitions) >= 2


def test_a_device_is_stored_in_its_own_street(
        district: tuple[list[Zone], list[Site], Partitioning]) -> None:
    zones, sites, parts = district
    hazard = {z.id for z in zones if z.hazards}
    for s in sites:
        route = parts.route(s.device_id, "telemetry")
        assert route[0][1] == HOME
        assert [how for _p, how in route].count(HOME) == 1
        first = next((z for z in s.zone_ids if z in hazard), None)
        if first is not None:
            assert route[0][0] == parts.zone_partition[first]


def test_rain_reaches_every_street_with_a_waterlogging_zone_in_its_catchment(
        district: tuple[list[Zone], list[Site], Partitioning]) -> None:
    zones, sites, parts = district
    gauges = [s for s in sites if s.kind == "rain" and s.position is not None]
    assert gauges
    for g in gauges:
        assert g.position is not None
        want = {parts.zone_partition[z.id] for z in zones if "waterlogging" in z.hazards
                and metres(g.position, (z.geometry.representative_point().x,
                                        z.geometry.representative_point().y)) <= RADIUS}
        got = {p for p, _how in parts.route(g.device_id, "telemetry")}
        assert want <= got
        assert all(how == MIRROR for p, how in parts.route(g.device_id, "telemetry")[1:])
        # Its status and events stay home: only the rain is read across streets.
        assert len(parts.route(g.device_id, "status")) == 1
    assert any(len(parts.route(g.device_id, "telemetry")) > 1 for g in gauges)


def test_grid_reports_reach_every_street(
        district: tuple[list[Zone], list[Site], Partitioning]) -> None:
    _zones, sites, parts = district
    grid = next(s for s in sites if s.kind == "grid")
    assert {p for p, _ in parts.route(grid.device_id, "event")} == set(parts.partitions)
    assert len(parts.route(grid.device_id, "telemetry")) == 1


def test_unknown_device_goes_to_the_first_partition(
        district: tuple[list[Zone], list[Site], Partitioning]) -> None:
    _zones, _sites, parts = district
    assert parts.route("nobody", "telemetry") == [(parts.partitions[0], HOME)]


def test_zone_without_a_street_is_its_top_ancestors() -> None:
    from shapely.geometry import box
    zones = [Zone("d", "District", "district", box(0, 0, 1, 1)),
             Zone("c", "Cell", "grid_cell", box(0, 0, 1, 1), "d"),
             Zone("u", "Underpass", "underpass", box(0, 0, 0.1, 0.1), "c")]
    assert zone_partitions(zones) == {"d": "d", "c": "d", "u": "d"}
