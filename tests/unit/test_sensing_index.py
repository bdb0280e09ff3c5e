"""Which devices sense a zone's hazard (zone risk: unknown without any), answered from an index
built once over the fleet, must be what a scan of every device per zone says."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from citywatch.config import load_config
from geo.load import load_zones
from geo.position import metres, offset
from rules.base import DeviceSite
from rules.engine import Engine
from tests.fix_faults import CONFIG

CFG = load_config(CONFIG)
ZONES = {z.id: z for z in load_zones(CFG.zones_path)}
ENGINE = Engine(CFG.rules, ZONES)
ZONE_IDS = sorted(ZONES)
# Devices near zones (within 700 m of a zone's centre, where the cameras' range ends), some
# inside it, some just beyond.
site = st.builds(
    lambda i, kind, near, east, north, zones: DeviceSite(
        f"d{i}", kind, offset(ENGINE.router.nearby.centre(near), east, north), tuple(zones)),
    st.integers(0, 10**6),
    st.sampled_from(["camera", "camera", "water", "rain", "traffic", "grid"]),  # cameras: range
    st.sampled_from(ZONE_IDS), st.floats(-700, 700), st.floats(-700, 700),
    st.lists(st.sampled_from(ZONE_IDS), max_size=3))


def scan(zone_id: str, hazard: str, sites: dict[str, DeviceSite]) -> set[str]:
    h = ENGINE.router.hazards[hazard]
    kinds, radius = h.sensing.kinds, h.sensing.radius_m
    if radius is None:
        return {d for d, s in sites.items() if s.kind in kinds and zone_id in s.zone_ids}
    c = ENGINE.router.nearby.centre(zone_id)
    return {d for d, s in sites.items() if s.kind in kinds and s.position is not None
            and metres(s.position, c) <= radius}


@settings(max_examples=100, deadline=None)
@given(st.lists(site, min_size=20, max_size=80))
def test_the_index_answers_as_a_scan_does(fleet: list[DeviceSite]) -> None:
    sites = {s.device_id: s for s in fleet}
    index = ENGINE.router.sensing_index(sites)
    for zone in ZONES.values():
        for hazard in zone.hazards:
            assert set(index.devices(zone, hazard)) == scan(zone.id, hazard, sites), \
                (zone.id, hazard)


def test_a_camera_just_inside_and_just_outside_its_range() -> None:
    zone = next(z for z in ZONES.values() if "falling_object" in z.hazards)
    radius = ENGINE.router.hazards["falling_object"].sensing.radius_m
    assert radius is not None
    c = ENGINE.router.nearby.centre(zone.id)
    near = DeviceSite("cam-near", "camera", offset(c, radius - 1, 0), ())
    far = DeviceSite("cam-far", "camera", offset(c, 0, radius + 1), ())
    index = ENGINE.router.sensing_index({"cam-near": near, "cam-far": far})
    assert index.devices(zone, "falling_object") == ["cam-near"]
