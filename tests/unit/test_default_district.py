"""The shipped default district: data/zones/gusu.geojson and config.yaml agree with each other."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from functools import cache
from pathlib import Path

import pytest
import shapely

from citywatch.config import Config, load_config
from geo.crs import to_utm
from geo.index import ZoneIndex
from geo.load import load_zones
from geo.zones import ZONE_TYPE_HAZARDS

REPO = Path(__file__).resolve().parents[2]
WATERLOGGING_TYPES = {t for t, h in ZONE_TYPE_HAZARDS.items() if "waterlogging" in h}
TRAFFIC_TYPES = {t for t, h in ZONE_TYPE_HAZARDS.items() if "traffic" in h}


@cache
def config() -> Config:
    return load_config(REPO / "config.yaml", env={})


@cache
def index() -> ZoneIndex:
    return ZoneIndex(load_zones(config().zones_path))


def devices(kind: str) -> list[tuple[str, tuple[float, float]]]:
    return [(d.id, d.position) for d in config().devices if d.kind == kind]


def test_config_points_at_the_district_file() -> None:
    assert config().zones_path.resolve() == (REPO / "data" / "zones" / "gusu.geojson").resolve()
    assert config().broker.url == "embedded"
    assert config().database.url == "embedded"


def test_zone_counts() -> None:
    counts = Counter(z.type for z in index())
    assert counts["grid_cell"] == 40
    assert counts["street"] >= 8
    assert counts["underpass"] + counts["low_road"] >= 10
    assert counts["intersection"] + counts["road_segment"] >= 8
    assert 6 <= counts["fall_zone"] <= 10
    assert set(counts) <= set(ZONE_TYPE_HAZARDS)


def test_device_counts() -> None:
    kinds = Counter(d.kind for d in config().devices)
    assert kinds["camera"] == 7
    assert kinds["water"] + kinds["rain"] + kinds["traffic"] == 42
    assert kinds["grid"] == 40
    assert min(kinds["water"], kinds["rain"], kinds["traffic"]) > 0


def test_hierarchy() -> None:
    ix = index()
    for z in ix:
        if z.type == "district":
            assert z.parent_id is None
            continue
        assert z.parent_id is not None, z.id
        assert z.parent_id in ix, z.id
        parent = ix.get(z.parent_id)
        expected = {"street": {"district"}, "grid_cell": {"street"}}.get(z.type,
                                                                         {"grid_cell", "street"})
        assert parent.type in expected, (z.id, parent.type)
        if z.type in ("street", "grid_cell"):
            # Nested, to the file's rounding (1e-6 degrees, about 0.1 m).
            assert parent.geometry.buffer(1e-6).covers(z.geometry), z.id
        else:
            # A hazard zone may straddle cells: its parent is the one it overlaps most.
            assert z.geometry.intersects(parent.geometry), z.id


def test_every_position_is_in_the_district() -> None:
    districts = [z.id for z in index().of_type("district")]
    for d in config().devices:
        assert set(index().zones_at(*d.position)) & set(districts), d.id


def test_water_gauges_are_in_waterlogging_zones() -> None:
    ix = index()
    for device_id, pos in devices("water"):
        assert {ix.get(z).type for z in ix.zones_at(*pos)} & WATERLOGGING_TYPES, device_id


def test_every_waterlogging_zone_has_a_gauge() -> None:
    ix = index()
    covered = {z for _, pos in devices("water") for z in ix.zones_at(*pos)}
    assert {z.id for z in ix.of_type(*WATERLOGGING_TYPES)} <= covered


def test_traffic_detectors_are_in_traffic_zones() -> None:
    ix = index()
    for device_id, pos in devices("traffic"):
        assert {ix.get(z).type for z in ix.zones_at(*pos)} & TRAFFIC_TYPES, device_id
    covered = {z for _, pos in devices("traffic") for z in ix.zones_at(*pos)}
    assert {z.id for z in ix.of_type(*TRAFFIC_TYPES)} <= covered


def test_cameras_are_near_fall_zones() -> None:
    fall_zones = [to_utm(z.geometry) for z in index().of_type("fall_zone")]
    watched = set()
    for device_id, (lon, lat) in devices("camera"):
        p = to_utm(shapely.Point(lon, lat))
        distances = [fz.distance(p) for fz in fall_zones]
        assert min(distances) <= 300.0, device_id
        watched |= {i for i, d in enumerate(distances) if d <= 300.0}
    assert watched == set(range(len(fall_zones)))  # no fall zone unwatched


def test_each_grid_terminal_is_in_its_own_cell() -> None:
    ix = index()
    cells_hit = []
    for device_id, pos in devices("grid"):
        cells = [z for z in ix.zones_at(*pos) if ix.get(z).type == "grid_cell"]
        assert len(cells) == 1, device_id
        cells_hit.append(cells[0])
    assert sorted(cells_hit) == sorted(z.id for z in ix.of_type("grid_cell"))


def test_rain_gauges_are_spread_over_streets() -> None:
    ix = index()
    streets = [next(z for z in ix.zones_at(*pos) if ix.get(z).type == "street")
               for _, pos in devices("rain")]
    assert len(set(streets)) == len(streets)


@pytest.mark.parametrize(("hazard", "zone_type"), sorted(
    (h, t) for t, hs in ZONE_TYPE_HAZARDS.items() for h in hs))
def test_every_hazard_zone_type_has_a_route(hazard: str, zone_type: str) -> None:
    route = config().route(hazard, zone_type)
    assert route is not None
    assert route.zone_type == zone_type  # an explicit route, not a wildcard


def test_department_levels() -> None:
    assert {d.level for d in config().departments} == {"municipal", "district", "street", "grid"}


def test_the_case_studys_53_offices_each_with_a_team() -> None:
    cfg = config()
    levels = Counter(d.level for d in cfg.departments)
    assert sum(levels.values()) == 53
    assert levels == {"municipal": 9, "district": 16, "street": 18, "grid": 10}
    assert {d.id for d in cfg.departments} == {t.department for t in cfg.teams}
    streets = {z.id for z in index() if z.type == "street"}
    # Each street has its subdistrict office, urban-management squadron and grid workstation.
    for level, per_street in (("street", 2), ("grid", 1)):
        bound = Counter(d.zone_id for d in cfg.departments if d.level == level and d.zone_id)
        assert bound == dict.fromkeys(streets, per_street), level


def test_waterlogging_thresholds_for_each_type() -> None:
    thresholds = config().rules.waterlogging.thresholds
    assert set(thresholds) == WATERLOGGING_TYPES
    # GB 51222-2017: 15 cm on a road is waterlogging, so a low road is yellow by then.
    assert thresholds["low_road"].yellow_cm <= 15
    assert thresholds["underpass"].red_cm < 27


def test_files_are_up_to_date_with_the_generator() -> None:
    shared = REPO.parent / "shared" / "data" / "suzhou"
    if not shared.is_dir():
        pytest.skip(f"shared data not beside the repository ({shared}): cannot regenerate")
    script = REPO / "scripts" / "make_district.py"
    done = subprocess.run([sys.executable, str(script), "--check"], capture_output=True,
                          text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_pedestrian_areas_and_school_gates_lie_half_in_a_fall_zone() -> None:
    ix = index()
    sensitive = ix.of_type("pedestrian_area", "school_gate")
    assert {z.type for z in sensitive} == {"pedestrian_area", "school_gate"}
    for z in sensitive:
        overlaps = [to_utm(f.geometry.intersection(z.geometry)).area / to_utm(z.geometry).area
                    for f in ix.of_type("fall_zone") if f.geometry.intersects(z.geometry)]
        assert overlaps, z.id
        assert 0.2 < max(overlaps) < 0.8, z.id  # people walk from outside into it
        assert not z.hazards  # no alert of its own: the fall zone's turns red


def test_every_device_and_hazard_zone_knows_its_grid_cell_and_street() -> None:
    ix = index()
    for d in config().devices:
        cell, street, district = ix.hierarchy_of(*d.position)
        assert cell is not None and street is not None and district is not None, d.id
        assert ix.get(cell).parent_id == street
    for z in ix:
        if z.hazards or z.type in ("pedestrian_area", "school_gate"):
            cell, street, district = ix.hierarchy_of_zone(z.id)
            assert (cell, street, district) != (None, None, None), z.id
            assert cell is not None and street is not None, z.id


def test_maintenance_and_report_alerts_have_routes() -> None:
    cfg = config()
    for zone_type in {z.type for z in index()}:
        route = cfg.route("device_fault", zone_type)
        assert route is not None
        assert route.team == "iot-maint-1"
    for hazard in ("waterlogging", "falling_object", "traffic"):
        route = cfg.route(hazard, "grid_cell")  # grid workers' reports of their own
        assert route is not None
        assert route.department == "gusu-grid-centre"
    pattern = cfg.route("falling_object_pattern", "fall_zone")
    assert pattern is not None
    assert pattern.department == "gusu-building"


def test_the_rules_the_district_runs_with() -> None:
    rules = config().rules
    assert rules.device_health.enabled
    assert rules.waterlogging.rain.enabled
    assert rules.waterlogging.forecast_horizon_s >= 600
    # 0 until the live pipeline accepts the delay; `citywatch score --reorder-window` sets it.
    assert rules.event_time.reorder_window_s == 0
