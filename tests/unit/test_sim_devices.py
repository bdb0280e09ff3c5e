"""Simulated devices and the pure side of the runner: contract payloads, seq, order, faults, teams.

Helpers here (``fleet``, ``make_config``, ``decoded``) serve the other ``test_sim_*`` modules too.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from citywatch.config import Config, parse_config
from geo.position import metres as distance_m
from simulators.devices.base import offset_m, rfc3339
from simulators.physics.rain import TIP_MM
from simulators.runner import Clock, Progress, Simulation, scale_fleet
from simulators.scenario import Fault, Incident, Scenario, StormSpec, Thrower
from simulators.teams import Responder

START = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
CENTRE = (120.62, 31.31)  # Gusu district
TS_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
VALUE_KEYS = {
    "water": {"water_depth_cm"},
    "rain": {"rain_rate_mm_h", "rain_1h_mm"},
    "traffic": {"flow_veh_h", "speed_kmh", "occupancy_pct"},
    "camera": set(),
    "grid": {"battery_pct"},
}
Message = tuple[str, str, str, dict[str, Any]]  # (kind, device_id, channel, payload)


def fleet(water: int = 4, rain: int = 3, traffic: int = 4, camera: int = 2,
          grid: int = 4) -> list[dict[str, Any]]:
    devices = []
    for kind, n in (("water", water), ("rain", rain), ("traffic", traffic), ("camera", camera),
                    ("grid", grid)):
        for i in range(n):
            # A deterministic spread over ~1.5 km.
            pos = offset_m(CENTRE, 700 * math.cos(i * 2.1 + len(kind)),
                           700 * math.sin(i * 1.3 + len(kind)))
            devices.append({"id": f"{kind}-{i:02d}", "kind": kind, "position": list(pos)})
    return devices


def make_config(devices: list[dict[str, Any]] | None = None, interval_s: float = 10,
                **extra: Any) -> Config:
    return parse_config({
        "zones": {"file": "/nonexistent/zones.geojson"},
        "rules": {"waterlogging": {"thresholds": {
            "underpass": {"blue_cm": 5, "yellow_cm": 10, "orange_cm": 15, "red_cm": 25},
            "low_road": {"blue_cm": 8, "yellow_cm": 15, "orange_cm": 25, "red_cm": 40}}}},
        "departments": [], "teams": [], "routing": [],
        "devices": fleet() if devices is None else devices,
        "simulator": {"telemetry_interval_s": interval_s}, **extra,
    }, env={})


def decoded(sim: Simulation, until: datetime) -> list[Message]:
    """(kind, device_id, channel, payload) of every message up to ``until``."""
    out = []
    for topic, body in sim.messages_until(until):
        root, kind, device_id, channel = topic.split("/")
        assert root == "city"
        out.append((kind, device_id, channel, json.loads(body)))
    return out


def scenario(**fields: Any) -> Scenario:
    return Scenario.model_validate({"name": "t", "time_of_day": "12:00", **fields})


def run(sc: Scenario | str, until: timedelta, *, seed: int = 1,
        devices: list[dict[str, Any]] | None = None, interval_s: float = 10) -> list[Message]:
    sim = Simulation(make_config(devices, interval_s), sc, seed, None, START, zones=[])
    return decoded(sim, START + until)


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _position(v: Any) -> bool:
    return (isinstance(v, list) and len(v) == 2 and all(_number(x) for x in v)
            and -180 <= v[0] <= 180 and -90 <= v[1] <= 90)


def check_contract(kind: str, device_id: str, channel: str, p: dict[str, Any]) -> None:
    if channel == "status":
        assert p in ({"state": "online"}, {"state": "offline"})
        return
    assert TS_RE.match(p["ts"]), p["ts"]
    assert isinstance(p["seq"], int)
    assert not isinstance(p["seq"], bool)
    if channel == "telemetry":
        values = p["values"]
        assert VALUE_KEYS[kind] <= values.keys()
        assert all(_number(v) for v in values.values()), values
        assert all(v >= 0 for v in values.values()), values
        if kind == "grid":
            assert _position(p["loc"])
            assert 0 <= values["battery_pct"] <= 100
        else:
            assert 3.0 <= values["battery_v"] <= 4.25
        if kind == "traffic":
            assert 0 <= values["occupancy_pct"] <= 100
        return
    assert channel == "event"
    assert p["event_id"] == f"{device_id}-{p['seq']:06d}"
    if kind == "camera":
        assert p["type"] == "falling_object"
        assert 0 <= p["confidence"] <= 1
        assert _position(p["impact"])
        assert all(len(pt) == 4 and all(_number(x) for x in pt) for pt in p["track"])
    elif kind == "grid":
        assert p["type"] == "report"
        assert p["category"] in {"waterlogging", "falling_object", "traffic", "other"}
        assert _position(p["loc"])
        assert isinstance(p["text"], str)
    elif kind == "traffic":
        assert p["type"] == "incident"
        assert p["subtype"] in {"collision", "stalled_vehicle", "wrong_way"}
        assert 0 <= p["confidence"] <= 1
    else:
        pytest.fail(f"unexpected event from {kind}")


MIXED = timedelta(minutes=60)


# -- contract, seq, order, determinism ------------------------------------------------------


def test_every_payload_follows_the_contract() -> None:
    msgs = run("mixed", MIXED)
    assert {k for k, *_ in msgs} == set(VALUE_KEYS)
    assert {ch for _, _, ch, _ in msgs} == {"telemetry", "event", "status"}
    for kind, device_id, channel, p in msgs:
        check_contract(kind, device_id, channel, p)


def test_seq_strictly_increases_per_device_and_event_ids_are_unique() -> None:
    seqs: dict[str, list[int]] = defaultdict(list)
    event_ids: dict[str, list[str]] = defaultdict(list)
    for _, device_id, channel, p in run("mixed", MIXED):
        if channel == "status":
            continue
        seqs[device_id].append(p["seq"])
        if channel == "event":
            event_ids[device_id].append(p["event_id"])
    assert len(seqs) == 17
    for device_id, s in seqs.items():
        assert s == list(range(1, len(s) + 1)), device_id  # gap-free: nothing held back
    for ids in event_ids.values():
        assert len(ids) == len(set(ids))


def test_messages_come_in_timestamp_order_and_once() -> None:
    sim = Simulation(make_config(), "mixed", 3, None, START, zones=[])
    first = decoded(sim, START + timedelta(minutes=5))
    again = decoded(sim, START + timedelta(minutes=5))
    later = decoded(sim, START + timedelta(minutes=10))
    assert again == []
    stamps = [datetime.fromisoformat(p["ts"]) for *_, p in first + later if "ts" in p]
    assert stamps == sorted(stamps)
    assert stamps[-1] <= START + timedelta(minutes=10)
    # Each device reports once per telemetry interval (10 s): 30 per device in 5 minutes.
    per_device: dict[str, int] = defaultdict(int)
    for _, device_id, channel, _p in first:
        per_device[device_id] += channel == "telemetry"
    assert set(per_device.values()) == {30}


def test_same_seed_same_messages_other_seed_other_messages() -> None:
    a = run("mixed", timedelta(minutes=20), seed=7)
    b = run("mixed", timedelta(minutes=20), seed=7)
    c = run("mixed", timedelta(minutes=20), seed=8)
    assert a == b
    assert a != c


def test_rfc3339_is_utc_with_milliseconds() -> None:
    t = datetime(2026, 11, 23, 16, 15, 0, 250_999, tzinfo=ZoneInfo("Asia/Shanghai"))
    assert rfc3339(t) == "2026-11-23T08:15:00.250Z"
    with pytest.raises(ValueError, match="timezone-aware"):
        rfc3339(datetime(2026, 11, 23, 8, 0))


@given(st.datetimes(min_value=datetime(2001, 1, 1), max_value=datetime(2090, 1, 1),
                    timezones=st.just(UTC)))
def test_the_runners_clock_formats_as_rfc3339(t: datetime) -> None:
    assert Clock(START).text(t) == rfc3339(t)
    wall = Clock(START, datetime(2030, 1, 1, tzinfo=UTC), speed=60)
    assert wall.text(t) == rfc3339(wall.stamp(t))


def test_status_messages_for_every_simulated_device() -> None:
    sim = Simulation(make_config(), "quiet_day", 1, None, START, zones=[])
    status = dict(sim.status_messages("online"))
    assert len(status) == 17
    assert status["city/water/water-00/status"] == b'{"state":"online"}'


def test_a_kind_without_simulator_is_skipped_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    devices = [*fleet(1, 0, 0, 0, 0), {"id": "drone-1", "kind": "drone", "position": list(CENTRE)}]
    with caplog.at_level(logging.WARNING, logger="simulators.runner"):
        sim = Simulation(make_config(devices), "quiet_day", 1, None, START, zones=[])
    assert [d.id for d in sim.devices] == ["water-00"]
    assert "drone-1" in caplog.text
    assert {d for _, d, _, _ in decoded(sim, START + timedelta(minutes=1))} == {"water-00"}


def test_speed_and_seed_default_to_the_scenarios() -> None:
    sim = Simulation(make_config(), "storm", None, None, START, zones=[])
    assert (sim.speed, sim.seed) == (60, 1)
    assert sim.end == START + timedelta(hours=5)
    assert Simulation(make_config(), "storm", 9, 2.5, START, zones=[]).speed == 2.5


@pytest.mark.parametrize("n", [0, 5, 17, 40])
def test_scale_fleet_keeps_the_kind_shares(n: int) -> None:
    cfg = make_config()
    scaled = scale_fleet(cfg.devices, n, seed=1)
    assert len(scaled) == n
    assert len({d.id for d in scaled}) == n
    if n >= 17:
        assert scaled[:17] == list(cfg.devices)
        assert sum(d.kind == "water" for d in scaled) >= 4 * (n // 17)
    sim = Simulation(cfg, "quiet_day", 1, None, START, zones=[], devices=n)
    assert len(sim.devices) == n


def test_progress_describes_itself() -> None:
    p = Progress(sim_time=START, real_elapsed_s=2.0, sent={"water": 3, "grid": 2}, pending=1,
                 connected=True, dispatches=1, acks=2, done=0.25)
    assert p.sent_total == 5
    assert p.describe() == ("sim 2026-11-23 08:00:00Z (25%) | sent 5 (grid 2, water 3) | "
                            "pending 1 | broker up | dispatches 1, acks 2")


# -- devices ----------------------------------------------------------------------------------


def test_rain_gauge_counts_tips_of_0_2_mm_and_totals_the_last_hour() -> None:
    devices = [{"id": "rg", "kind": "rain", "position": list(CENTRE)}]
    # A long, gentle design storm: nearly steady rain over the hour measured.
    sc = scenario(storms=[{"return_period_years": 1, "duration": "6h", "speed_km_h": 0}])
    msgs = run(sc, timedelta(hours=3), devices=devices)
    values = [p["values"] for *_, p in msgs]
    for v in values:
        # The 5-minute rate and the hour's total are whole tips.
        assert v["rain_1h_mm"] / TIP_MM == pytest.approx(round(v["rain_1h_mm"] / TIP_MM))
        assert v["rain_rate_mm_h"] / (TIP_MM * 12) == pytest.approx(
            round(v["rain_rate_mm_h"] / (TIP_MM * 12)))
    # Over an hour of steady rain, the total matches the mean rate of the last hour.
    hour = values[-360:]
    mean_rate = sum(v["rain_rate_mm_h"] for v in hour) / len(hour)
    assert values[-1]["rain_1h_mm"] == pytest.approx(mean_rate, rel=0.15)


def test_false_detections_are_low_confidence_and_do_not_fall_like_a_stone() -> None:
    msgs = run("quiet_day", timedelta(hours=12), devices=fleet(0, 0, 0, 8, 0), interval_s=60)
    events = [p for _, _, ch, p in msgs if ch == "event"]
    assert len(events) >= 10  # birds, leaves and reflections, a few per camera per day
    for p in events:
        assert 0.3 <= p["confidence"] <= 0.65
        assert "building_id" not in p
        (_, _, h0, _), (_, _, h1, secs) = p["track"]
        assert secs > math.sqrt(2 * max(h0 - h1, 0) / 9.81) * 1.2 or h1 > 0


def test_camera_detections_follow_the_throws_and_fall_ballistically() -> None:
    sc = scenario(throwers=[{"start": "5min", "end": "15min", "throws": 3, "camera": "camera-00",
                             "floors": [10, 20]}])
    msgs = run(sc, timedelta(minutes=20), devices=fleet(0, 0, 0, 2, 0))
    falls = [(d, p) for _, d, ch, p in msgs if ch == "event" and "building_id" in p]
    assert [d for d, _ in falls] == ["camera-00"] * 3
    for _, p in falls:
        h = p["track"][0][2]
        assert h == pytest.approx((p["floor"] - 1) * 3.0 + 1.5)
        assert p["track"][-1][3] == pytest.approx(math.sqrt(2 * h / 9.81), abs=0.002)
        assert p["track"][-1][:2] == pytest.approx(p["impact"], abs=1e-6)
        assert 0.7 <= p["confidence"] <= 0.99


def test_grid_workers_patrol_near_their_post() -> None:
    cfg_devices = fleet(0, 0, 0, 0, 3)
    homes = {d["id"]: tuple(d["position"]) for d in cfg_devices}
    locs: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for _, device_id, ch, p in run("quiet_day", timedelta(hours=3), devices=cfg_devices):
        if ch == "telemetry":
            locs[device_id].append(tuple(p["loc"]))
    for device_id, seen in locs.items():
        assert max(distance_m(homes[device_id], loc) for loc in seen) <= 310
        assert len(set(seen)) > 10  # they do move


def test_in_a_storm_workers_watch_the_flood_points_and_report_them_several_times() -> None:
    msgs = run("storm", timedelta(hours=3), interval_s=30)
    reports = [(d, p) for k, d, ch, p in msgs if ch == "event" and p.get("category") ==
               "waterlogging"]
    by_worker = defaultdict(int)
    for d, _ in reports:
        by_worker[d] += 1
    assert len(by_worker) >= 2  # several workers report the same flooded spot ...
    assert max(by_worker.values()) >= 2  # ... and come back to it
    assert all("cm deep" in p["text"] for _, p in reports)


def test_a_collision_raises_an_incident_event_and_slows_the_detectors_in_its_queue() -> None:
    sc = scenario(incidents=[{"at": "10min", "duration": "20min", "device": "traffic-00",
                              "confidence": [0.9, 0.9]}])
    msgs = run(sc, timedelta(minutes=45), devices=fleet(0, 0, 4, 0, 0))
    events = [(d, p) for _, d, ch, p in msgs if ch == "event"]
    assert [(d, p["subtype"], p["confidence"]) for d, p in events] == [
        ("traffic-00", "collision", 0.9)]
    seen = datetime.fromisoformat(events[0][1]["ts"]) - START
    assert timedelta(seconds=630) <= seen <= timedelta(seconds=720)  # detection takes 30-120 s

    def speed(device: str, minute: int) -> float:
        return next(p["values"]["speed_kmh"] for _, d, ch, p in msgs if d == device
                    and ch == "telemetry" and datetime.fromisoformat(p["ts"]) - START
                    >= timedelta(minutes=minute))

    assert speed("traffic-00", 25) < 0.6 * speed("traffic-00", 9)
    assert speed("traffic-00", 44) > 0.8 * speed("traffic-00", 9)  # cleared, queue gone


def faults_run(*faults: dict[str, Any]) -> list[Message]:
    sc = scenario(storms=[{"return_period_years": 5, "duration": "1h", "start": "10min"}],
                  faults=list(faults))
    return run(sc, timedelta(hours=2), devices=fleet(2, 1, 1, 0, 0))


def series(msgs: Sequence[Message], device: str, key: str) -> list[tuple[float, float]]:
    return [((datetime.fromisoformat(p["ts"]) - START).total_seconds() / 60, p["values"][key])
            for _, d, ch, p in msgs if d == device and ch == "telemetry"]


def test_a_stuck_gauge_repeats_itself_while_its_neighbour_sees_the_flood() -> None:
    msgs = faults_run({"kind": "stuck", "device": "water-00", "start": "5min"})
    stuck = [v for m, v in series(msgs, "water-00", "water_depth_cm") if m >= 5]
    other = [v for m, v in series(msgs, "water-01", "water_depth_cm") if m >= 5]
    assert set(stuck) == {0.0}
    assert max(other) > 10


def test_a_spiking_gauge_jumps_within_its_window_only() -> None:
    msgs = faults_run({"kind": "spike", "device": "water-01", "start": "0", "duration": "8min"})
    s = series(msgs, "water-01", "water_depth_cm")
    spikes = [m for m, v in s if v > 80]
    assert spikes
    assert max(spikes) < 8
    assert all(v < 80 for m, v in s if m >= 8)


def test_a_drifting_gauge_creeps_up_at_its_rate() -> None:
    msgs = faults_run({"kind": "drift", "device": "water-00", "start": "0", "magnitude": 6})
    dry = [(m, v) for m, v in series(msgs, "water-00", "water_depth_cm") if m < 10]
    assert dry[-1][1] == pytest.approx(dry[-1][0] / 60 * 6, abs=0.15)


def test_a_silent_gauge_sends_nothing_in_its_window() -> None:
    msgs = faults_run({"kind": "silent", "device": "rain-00", "start": "20min",
                       "duration": "30min"})
    minutes = [m for m, _ in series(msgs, "rain-00", "rain_rate_mm_h")]
    assert not [m for m in minutes if 20 <= m < 50]
    assert max(minutes) > 100
    assert not [d for _, d, ch, _ in msgs if ch == "status"]  # still connected


def test_a_dead_battery_runs_down_then_the_device_goes_offline_for_good() -> None:
    msgs = faults_run({"kind": "dead_battery", "device": "traffic-00", "start": "10min",
                       "duration": "30min"})
    battery = series(msgs, "traffic-00", "battery_v")
    assert battery[-1][1] <= 3.31
    assert 39 <= battery[-1][0] <= 40.5
    status = [(i, p) for i, (_, d, ch, p) in enumerate(msgs) if d == "traffic-00" and
              ch == "status"]
    assert [p for _, p in status] == [{"state": "offline"}]
    assert all(d != "traffic-00" for _, d, _, _ in msgs[status[0][0] + 1:])


def test_a_dropped_device_goes_offline_and_delivers_what_it_measured_meanwhile() -> None:
    msgs = faults_run({"kind": "dropped", "device": "water-01", "start": "30min",
                       "duration": "10min"})
    states = [p["state"] for _, d, ch, p in msgs if d == "water-01" and ch == "status"]
    assert states == ["offline", "online"]
    minutes = [m for m, _ in series(msgs, "water-01", "water_depth_cm")]
    assert len([m for m in minutes if 30 <= m < 40]) == 60  # buffered, not lost


# -- teams ------------------------------------------------------------------------------------


def dispatch(order: str, hazard: str = "waterlogging", loc: Any = (120.62, 31.31)) -> bytes:
    return json.dumps({"work_order_id": order, "hazard": hazard, "severity": 2, "zone_id": "z",
                       "loc": list(loc), "title": "t", "instructions": "i",
                       "issued": "2026-11-23T08:00:00Z", "respond_by": "2026-11-23T08:30:00Z"}
                      ).encode()


def test_teams_accept_reach_the_site_and_resolve_after_realistic_delays() -> None:
    r = Responder(seed=1, base=CENTRE)
    r.on_dispatch("city/dispatch/drainage-1", dispatch("WO-1", loc=offset_m(CENTRE, 3000, 0)),
                  START)
    r.on_dispatch("city/dispatch/drainage-1", dispatch("WO-1"), START)  # escalated: same order
    r.on_dispatch("city/dispatch/drainage-1", b"not json", START)
    acks = r.due(START + timedelta(hours=6))
    assert [(a.topic, a.payload["status"]) for a in acks] == [
        ("city/dispatch/drainage-1/ack", "accepted"), ("city/dispatch/drainage-1/ack", "on_site"),
        ("city/dispatch/drainage-1/ack", "resolved")]
    accepted, on_site, resolved = (a.at - START for a in acks)
    assert timedelta(seconds=30) <= accepted <= timedelta(seconds=150)
    # 3 km at 20 km/h is 9 minutes, plus 2 to 7 to set off.
    assert timedelta(minutes=11) <= on_site - accepted <= timedelta(minutes=16)
    assert timedelta(minutes=40) <= resolved - on_site <= timedelta(minutes=90)
    assert all(a.payload["work_order_id"] == "WO-1" and a.payload["ts"] == a.at for a in acks)
    again = Responder(seed=1, base=CENTRE)
    again.on_dispatch("city/dispatch/drainage-1", dispatch("WO-1", loc=offset_m(CENTRE, 3000, 0)),
                      START)
    assert [a.at for a in again.due(START + timedelta(hours=6))] == [a.at for a in acks]


def test_scenario_models_reject_bad_input() -> None:
    with pytest.raises(ValueError, match="start <= end"):
        Thrower(start=100, end=50)
    with pytest.raises(ValueError, match="confidence"):
        Incident(at=0, confidence=(0.9, 0.5))
    with pytest.raises(ValueError, match="return_period_years"):
        StormSpec(return_period_years=0.5, duration=3600)
    with pytest.raises(ValueError, match="kind"):
        Fault.model_validate({"kind": "melted"})
    assert Fault.model_validate({"kind": "stuck", "start": "1h30min"}).start == 5400
