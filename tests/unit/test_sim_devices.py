"""Device simulators and the pure side of the runner: contract payloads, physics, the demo."""

from __future__ import annotations

import itertools
import json
import logging
import math
import random
import re
from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from shapely.geometry import Point, box

from citywatch.config import Config, Device, load_config, parse_config
from geo.zones import Zone
from sensing.decode import Decoder
from sensing.models import Rejection
from simulators.devices.base import Site, distance_m, offset_m, rfc3339
from simulators.devices.camera import G, ballistic_track, fall_time_s
from simulators.devices.water import SITES, WaterGauge, site_type
from simulators.runner import Progress, Simulation, scale_fleet
from simulators.scenario import (
    DEMO,
    Scenario,
    ScenarioError,
    ScenarioState,
    Storm,
    Thrower,
    Window,
    get_scenario,
)

START = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
CENTRE = (120.62, 31.31)  # Gusu district
TS_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
VALUE_KEYS = {
    "water": {"water_depth_cm"},
    "rain": {"rain_rate_mm_h"},
    "traffic": {"flow_veh_h", "speed_kmh", "occupancy_pct"},
    "camera": set(),
    "grid": set(),
}


def fleet(water: int = 4, rain: int = 3, traffic: int = 4, camera: int = 2,
          grid: int = 4) -> list[dict[str, Any]]:
    devices = []
    for kind, n in (("water", water), ("rain", rain), ("traffic", traffic), ("camera", camera),
                    ("grid", grid)):
        for i in range(n):
            # A deterministic spread over ~3 km.
            pos = offset_m(CENTRE, 700 * math.cos(i * 2.1 + len(kind)),
                           700 * math.sin(i * 1.3 + len(kind)))
            devices.append({"id": f"{kind}-{i:02d}", "kind": kind, "position": list(pos)})
    return devices


def make_config(devices: list[dict[str, Any]] | None = None) -> Config:
    return parse_config({
        "zones": {"file": "/nonexistent/zones.geojson"},
        "rules": {"waterlogging": {"thresholds": {"underpass": {
            "blue_cm": 5, "yellow_cm": 10, "orange_cm": 15, "red_cm": 25}}}},
        "departments": [], "teams": [], "routing": [],
        "devices": fleet() if devices is None else devices,
    }, env={})


def decoded(sim: Simulation, until: datetime) -> list[tuple[str, str, str, dict[str, Any]]]:
    """(kind, device_id, channel, payload) of every message up to ``until``."""
    out = []
    for topic, body in sim.messages_until(until):
        root, kind, device_id, channel = topic.split("/")
        assert root == "city"
        out.append((kind, device_id, channel, json.loads(body)))
    return out


def demo_messages(seed: int = 1, minutes: float = 30) -> list[tuple[str, str, str, dict[str, Any]]]:
    sim = Simulation(make_config(), "demo", seed, DEMO.default_speed, START, zones=[])
    return decoded(sim, START + timedelta(minutes=minutes))


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _position(v: Any) -> bool:
    return (isinstance(v, list) and len(v) == 2 and all(_number(x) for x in v)
            and -180 <= v[0] <= 180 and -90 <= v[1] <= 90)


def check_contract(kind: str, device_id: str, channel: str, p: dict[str, Any]) -> None:
    assert TS_RE.match(p["ts"]), p["ts"]
    assert datetime.fromisoformat(p["ts"]).utcoffset() == timedelta(0)
    assert isinstance(p["seq"], int)
    assert not isinstance(p["seq"], bool)
    if channel == "telemetry":
        values = p["values"]
        assert VALUE_KEYS[kind] <= values.keys()
        assert all(_number(v) for v in values.values()), values
        assert all(v >= 0 for k, v in values.items() if k != "rssi_dbm"), values
        assert 3.0 <= values["battery_v"] <= 4.25
        if kind == "traffic":
            assert 0 <= values["occupancy_pct"] <= 100
        if kind == "grid":
            assert _position(p["loc"])
    else:
        assert channel == "event"
        assert p["event_id"].startswith(f"{device_id}-")
        if kind == "camera":
            assert p["type"] == "falling_object"
            assert _number(p["confidence"])
            assert 0 <= p["confidence"] <= 1
            assert _position(p["impact"])
            assert all(len(pt) == 4 and all(_number(x) for x in pt) for pt in p["track"])
        elif kind == "grid":
            assert p["type"] == "report"
            assert p["category"] in {"waterlogging", "falling_object", "traffic", "other"}
            assert _position(p["loc"])
            assert isinstance(p["text"], str)
        else:
            pytest.fail(f"unexpected event from {kind}")


# -- contract -------------------------------------------------------------------------------


def test_every_payload_follows_the_contract() -> None:
    msgs = demo_messages(minutes=60)
    assert {k for k, *_ in msgs} == set(VALUE_KEYS)
    for kind, device_id, channel, p in msgs:
        check_contract(kind, device_id, channel, p)


def test_seq_strictly_increases_per_device_and_event_ids_are_unique() -> None:
    seqs: dict[str, list[int]] = defaultdict(list)
    event_ids: dict[str, list[str]] = defaultdict(list)
    for _, device_id, channel, p in demo_messages(minutes=60):
        seqs[device_id].append(p["seq"])
        if channel == "event":
            event_ids[device_id].append(p["event_id"])
    assert len(seqs) == 17
    for device_id, s in seqs.items():
        assert all(a < b for a, b in itertools.pairwise(s)), device_id
    for ids in event_ids.values():
        assert len(ids) == len(set(ids))


def test_messages_come_in_timestamp_order_and_once() -> None:
    sim = Simulation(make_config(), "demo", 3, 30, START, zones=[])
    first = decoded(sim, START + timedelta(minutes=5))
    again = decoded(sim, START + timedelta(minutes=5))
    later = decoded(sim, START + timedelta(minutes=10))
    assert again == []
    stamps = [datetime.fromisoformat(p["ts"]) for *_, p in first + later]
    assert stamps == sorted(stamps)
    assert stamps[-1] <= START + timedelta(minutes=10)
    # Each device reports once per telemetry interval (10 s): 30 per device in 5 minutes.
    per_device = defaultdict(int)
    for _, device_id, channel, _p in first:
        per_device[device_id] += channel == "telemetry"
    assert set(per_device.values()) == {30}


def test_same_seed_same_messages_other_seed_other_messages() -> None:
    a = demo_messages(seed=7, minutes=20)
    b = demo_messages(seed=7, minutes=20)
    c = demo_messages(seed=8, minutes=20)
    assert a == b
    assert a != c


def test_rfc3339_is_utc_with_milliseconds() -> None:
    t = datetime(2026, 11, 23, 16, 15, 0, 250_999, tzinfo=ZoneInfo("Asia/Shanghai"))
    assert rfc3339(t) == "2026-11-23T08:15:00.250Z"
    with pytest.raises(ValueError, match="timezone-aware"):
        rfc3339(datetime(2026, 11, 23, 8, 0))


def test_status_messages_for_every_simulated_device() -> None:
    sim = Simulation(make_config(), "quiet", 1, 30, START, zones=[])
    status = dict(sim.status_messages("online"))
    assert len(status) == 17
    assert status["city/water/water-00/status"] == b'{"state":"online"}'


def test_a_kind_without_simulator_is_skipped_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    devices = [*fleet(1, 0, 0, 0, 0), {"id": "drone-1", "kind": "drone", "position": list(CENTRE)}]
    with caplog.at_level(logging.WARNING, logger="simulators.runner"):
        sim = Simulation(make_config(devices), "quiet", 1, 30, START, zones=[])
    assert [d.id for d in sim.devices] == ["water-00"]
    assert "drone-1" in caplog.text
    assert {d for _, d, _, _ in decoded(sim, START + timedelta(minutes=1))} == {"water-00"}


# -- physics --------------------------------------------------------------------------------


def storm_state(devices: Iterable[Device], window: Window, peak: float) -> ScenarioState:
    scenario = Scenario("t", "test storm", storms=(Storm(window, peak_mm_h=peak),))
    return ScenarioState.build(scenario, START, 1, list(devices))


def test_water_depth_rises_with_rain_and_recedes_after() -> None:
    device = Device(id="w", kind="water", position=CENTRE)
    state = storm_state([device], Window(600, 300, 2100, 300), peak=50)  # rain from 10 to 55 min
    gauge = WaterGauge("w", CENTRE, random.Random(1), SITES["underpass"])
    depth = {}
    for minute in range(1, 301):
        gauge.advance(START + timedelta(minutes=minute), 60, state)
        depth[minute] = gauge.depth_cm
    assert depth[10] == 0  # dry before the rain
    assert depth[20] > 5
    assert depth[40] > depth[20]  # rising while it rains
    peak_minute = max(depth, key=lambda m: depth[m])
    assert 50 <= peak_minute <= 55  # peaks as the rain ends
    after = [depth[m] for m in range(peak_minute, 301)]
    assert all(a >= b for a, b in itertools.pairwise(after))  # recedes after
    assert depth[300] < 0.1 * depth[peak_minute]


def test_an_ordinary_road_floods_far_less_than_an_underpass() -> None:
    device = Device(id="w", kind="water", position=CENTRE)
    state = storm_state([device], Window(0, 0, 1800, 0), peak=100)
    road = WaterGauge("w", CENTRE, random.Random(1), SITES["road"])
    underpass = WaterGauge("w", CENTRE, random.Random(1), SITES["underpass"])
    for g in (road, underpass):
        g.advance(START + timedelta(minutes=30), 1800, state)
    assert road.depth_cm < 5 < 30 < underpass.depth_cm


@pytest.mark.parametrize("height", [1.5, 4.5, 25.5, 51.0, 120.0])
def test_falling_object_track_reaches_the_ground_after_free_fall_time(height: float) -> None:
    release = CENTRE
    impact = offset_m(CENTRE, 2, 1)
    track = ballistic_track(release, impact, height)
    assert track[0][:3] == [round(release[0], 7), round(release[1], 7), height]
    assert track[0][3] == 0
    assert track[-1][2] == 0
    assert track[-1][:2] == [round(impact[0], 7), round(impact[1], 7)]
    assert abs(track[-1][3] - math.sqrt(2 * height / G)) <= 0.05
    heights = [p[2] for p in track]
    times = [p[3] for p in track]
    assert heights == sorted(heights, reverse=True)
    assert times == sorted(times)
    # In between, the object falls as g t^2 / 2.
    for _, _, h, s in track[1:-1]:
        assert h == pytest.approx(height - G * s * s / 2, abs=0.01)


def test_camera_detections_fall_ballistically() -> None:
    falls = [p for kind, _, ch, p in demo_messages(minutes=30)
             if ch == "event" and kind == "camera" and "building_id" in p]
    assert len(falls) == 2
    for p in falls:
        h = p["track"][0][2]
        assert abs(p["track"][-1][3] - fall_time_s(h)) <= 0.05
        assert p["track"][-1][:2] == pytest.approx(p["impact"], abs=1e-6)
        assert 0.8 <= p["confidence"] <= 0.97
        assert isinstance(p["floor"], int)


def test_false_detections_are_low_confidence() -> None:
    sim = Simulation(make_config(fleet(0, 0, 0, 8, 0)), "quiet", 1, 30, START, zones=[])
    events = [p for kind, _, ch, p in decoded(sim, START + timedelta(hours=12))
              if ch == "event" and kind == "camera"]
    assert events  # about one per camera per two hours, never a true detection
    assert all(0.3 <= p["confidence"] <= 0.55 and "building_id" not in p for p in events)


def test_grid_workers_stay_near_their_post() -> None:
    cfg = make_config(fleet(0, 0, 0, 0, 3))
    sim = Simulation(cfg, "quiet", 1, 30, START, zones=[])
    home = {d.id: d.position for d in cfg.devices}
    locs = defaultdict(list)
    for _, device_id, ch, p in decoded(sim, START + timedelta(hours=3)):
        if ch == "telemetry":
            locs[device_id].append(tuple(p["loc"]))
    for device_id, seen in locs.items():
        assert max(distance_m(home[device_id], loc) for loc in seen) <= 310
        assert len(set(seen)) > 10  # they do move


# -- scenarios ------------------------------------------------------------------------------


def hazards(msgs: list[tuple[str, str, str, dict[str, Any]]]) -> tuple[set[str], set[str], float]:
    flooded = {d for k, d, ch, p in msgs
               if k == "water" and ch == "telemetry" and p["values"]["water_depth_cm"] > 25}
    jammed = {d for k, d, ch, p in msgs
              if k == "traffic" and ch == "telemetry" and p["values"]["speed_kmh"] < 12}
    best = max((p["confidence"] for k, _, ch, p in msgs if k == "camera" and ch == "event"),
               default=0.0)
    return flooded, jammed, best


@pytest.mark.parametrize("seed", [1, 2, 3, 42])
def test_demo_raises_all_three_hazards_in_its_first_real_minute(seed: int) -> None:
    sim = Simulation(make_config(), "demo", seed, DEMO.default_speed, START, zones=[])
    real_minute = START + timedelta(seconds=60 * DEMO.default_speed)
    flooded, jammed, best = hazards(decoded(sim, real_minute))
    assert len(flooded) >= 2
    assert len(jammed) >= 2
    assert best >= 0.9


def test_demo_rain_stops_and_water_recedes() -> None:
    sim = Simulation(make_config(), "demo", 1, 30, START, zones=[])
    decoded(sim, START + timedelta(hours=2, minutes=50))
    last = decoded(sim, START + timedelta(hours=3))
    rain = [p["values"]["rain_rate_mm_h"] for k, _, ch, p in last if k == "rain"]
    depth = [p["values"]["water_depth_cm"] for k, _, ch, p in last if k == "water"]
    speed = [p["values"]["speed_kmh"] for k, _, ch, p in last if k == "traffic"]
    assert rain
    assert max(rain) == 0
    assert max(depth) < 5
    assert min(speed) > 35


def test_quiet_has_nothing_to_alert_on() -> None:
    sim = Simulation(make_config(), "quiet", 1, 30, START, zones=[])
    msgs = decoded(sim, START + timedelta(hours=1))
    flooded, _, best = hazards(msgs)
    assert not flooded
    assert all(p["values"]["water_depth_cm"] == 0 for k, _, ch, p in msgs if k == "water")
    assert all(p["values"]["speed_kmh"] > 35 for k, _, ch, p in msgs if k == "traffic")
    assert best < 0.7


def test_unknown_scenario_and_bad_timelines_are_rejected() -> None:
    with pytest.raises(ScenarioError, match="demo"):
        get_scenario("tsunami")
    with pytest.raises(ScenarioError):
        Window(-1, 0, 0, 0)
    with pytest.raises(ScenarioError):
        Thrower(100, 50)
    with pytest.raises(ScenarioError):
        Thrower(0, 50, confidence=(0.9, 1.2))


# -- zones ----------------------------------------------------------------------------------


def square(pos: tuple[float, float], half_m: float) -> Any:
    lo = offset_m(pos, -half_m, -half_m)
    hi = offset_m(pos, half_m, half_m)
    return box(lo[0], lo[1], hi[0], hi[1])


def test_zones_place_impacts_pick_underpasses_and_congest_traffic_zones() -> None:
    cfg = make_config()
    pos = {d.id: d.position for d in cfg.devices}
    fall = Zone("FZ-1", "Tower forecourt", "fall_zone",
                square(offset_m(pos["camera-01"], 80, 0), 15))
    zones = [
        Zone("UP-1", "Underpass 1", "underpass", square(pos["water-02"], 30)),
        Zone("UP-2", "Underpass 2", "underpass", square(pos["water-03"], 30)),
        Zone("X-1", "Junction 1", "intersection", square(pos["traffic-01"], 40)),
        Zone("X-2", "Junction 2", "intersection", square(pos["traffic-03"], 40)),
        fall,
    ]
    sim = Simulation(cfg, "demo", 5, 30, START, zones=zones)
    assert sim.state.congested_devices == {"traffic-01", "traffic-03"}
    flooded, jammed, _ = hazards(msgs := decoded(sim, START + timedelta(minutes=30)))
    assert flooded == {"water-02", "water-03"}  # the gauges in underpasses, no others
    assert jammed == {"traffic-01", "traffic-03"}
    falls = [p for k, d, ch, p in msgs if ch == "event" and "building_id" in p]
    assert falls
    assert {d for k, d, ch, p in msgs if ch == "event" and "building_id" in p} == {"camera-01"}
    for p in falls:
        assert fall.geometry.contains(Point(p["impact"]))


def test_without_zones_impacts_land_near_the_camera() -> None:
    cfg = make_config()
    cams = {d.id: d.position for d in cfg.devices if d.kind == "camera"}
    for kind, d, ch, p in demo_messages(seed=9):
        if kind == "camera" and ch == "event":
            assert distance_m(cams[d], tuple(p["impact"])) <= 210


def test_site_defaults_to_road() -> None:
    assert site_type(Site()) == "road"
    assert site_type(Site(("U",), frozenset({"underpass", "district"}))) == "underpass"


# -- runner options -------------------------------------------------------------------------


def test_speed_defaults_to_the_scenarios() -> None:
    sim = Simulation(make_config(), "demo", 1, None, START, zones=[])
    assert sim.speed == DEMO.default_speed


@pytest.mark.parametrize("n", [0, 5, 17, 40])
def test_scale_fleet_keeps_the_kind_shares(n: int) -> None:
    cfg = make_config()
    scaled = scale_fleet(cfg.devices, n, seed=1)
    assert len(scaled) == n
    assert len({d.id for d in scaled}) == n
    if n >= 17:
        assert scaled[:17] == list(cfg.devices)
        assert sum(d.kind == "water" for d in scaled) >= 4 * (n // 17)
    sim = Simulation(cfg, "quiet", 1, 30, START, zones=[], devices=n)
    assert len(sim.devices) == n


def test_progress_describes_itself() -> None:
    p = Progress(sim_time=START, real_elapsed_s=2.0, sent={"water": 3, "grid": 2}, pending=1,
                 connected=True)
    assert p.sent_total == 5
    assert p.describe() == ("sim 2026-11-23 08:00:00Z | sent 5 (grid 2, water 3) | pending 1 | "
                            "broker up")


def test_demo_on_the_case_study_fleet() -> None:

    path = Path(__file__).resolve().parents[2] / "config.yaml"
    if not path.exists():
        pytest.skip("config.yaml of the case study is not there")
    cfg = load_config(path, env={})
    sim = Simulation(cfg, "demo", cfg.simulator.seed, None, START)
    underpasses = {z.id for z in sim.zones if z.type == "underpass"}
    if not underpasses:
        pytest.skip("the case study's zones file is not there")
    flooded, jammed, best = hazards(decoded(sim, START + timedelta(seconds=60 * sim.speed)))
    assert len(flooded) >= 2
    assert len(jammed) >= 2
    assert best >= 0.9


def test_a_storm_bound_to_a_zone_rains_only_there() -> None:
    inside, outside = CENTRE, offset_m(CENTRE, 2000, 0)
    zone = Zone("UP-9", "Underpass 9", "underpass", square(inside, 100))
    scenario = Scenario("t", "local storm", storms=(Storm(Window(0, 0, 3600, 0), 60, ("UP-9",)),))
    state = ScenarioState.build(scenario, START, 1, [], [zone])
    t = START + timedelta(minutes=30)
    assert 50 <= state.rain_mm_h(inside, t) <= 70
    assert state.rain_mm_h(outside, t) == 0


def test_rain_gauge_totals_the_last_hour() -> None:
    devices = [{"id": "rg", "kind": "rain", "position": list(CENTRE)}]
    scenario = Scenario("t", "steady rain", storms=(Storm(Window(0, 0, 7200, 0), 30),))
    sim = Simulation(make_config(devices), scenario, 1, 30, START, zones=[])
    last = decoded(sim, START + timedelta(hours=1, minutes=30))[-1][3]["values"]
    assert last["rain_1h_mm"] == pytest.approx(last["rain_rate_mm_h"], rel=0.1)


def test_the_platform_decoder_accepts_everything() -> None:
    cfg = make_config()
    sim = Simulation(cfg, "demo", 1, 30, START, zones=[])
    decoder = Decoder({d.id: d.kind for d in cfg.devices})
    until = START + timedelta(hours=1)
    msgs = [*sim.status_messages("online"), *sim.messages_until(until)]
    rejected = [r for topic, body in msgs
                if isinstance(r := decoder.decode(topic, body, until), Rejection)]
    assert rejected == []
