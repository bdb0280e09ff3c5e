"""Scenarios on the case-study district: every message passes the platform's decoder, runs repeat
for a seed, and the ground truth each writes matches what its devices sent."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from shapely.geometry import Point

from citywatch.config import Config, load_config
from geo.zones import Zone
from sensing.decode import Decoder
from sensing.models import Rejection
from simulators.errors import ScenarioError
from simulators.runner import Clock, Simulation, load_zones
from simulators.scenario import load_scenario, scenario_names
from simulators.truth import GroundTruth
from tests.unit.test_sim_devices import START, Message, check_contract

REPO = Path(__file__).resolve().parents[2]
SCENARIOS = {"storm", "rush_hour", "falling_object", "sensor_faults", "quiet_day", "mixed", "demo"}


@pytest.fixture(scope="module")
def case_study() -> tuple[Config, list[Zone]]:
    path = REPO / "config.yaml"
    if not path.exists():
        pytest.skip("config.yaml of the case study is not there")
    cfg = load_config(path, env={})
    zones = load_zones(cfg.zones_path)
    if not zones:
        pytest.skip("the case study's zones file is not there")
    return cfg, zones


def every(cfg: Config, interval_s: float) -> Config:
    return cfg.model_copy(update={"simulator": cfg.simulator.model_copy(
        update={"telemetry_interval_s": interval_s})})


class Run:
    """A scenario run offline to its end, its messages decoded, and its ground truth."""

    def __init__(self, case_study: tuple[Config, list[Zone]], name: str, interval_s: float = 120,
                 seed: int | None = None, config: Config | None = None) -> None:
        cfg, zones = case_study
        self.config = every(config or cfg, interval_s)
        self.zones = {z.id: z for z in zones}
        self.sim = Simulation(self.config, name, seed, None, START, zones=zones)
        assert self.sim.end is not None
        self.raw = list(self.sim.messages_until(self.sim.end))
        self.messages: list[Message] = []
        for topic, body in self.raw:
            _, kind, device_id, channel = topic.split("/")
            self.messages.append((kind, device_id, channel, json.loads(body)))
        self.truth = self.sim.ground_truth()

    def at(self, p: dict[str, Any]) -> datetime:
        return datetime.fromisoformat(p["ts"])

    def zone_series(self, zone_id: str, key: str, fuse: Any) -> Iterator[tuple[datetime, float]]:
        """The zone's fused reading after each of its devices' readings."""
        latest: dict[str, float] = {}
        for _, device_id, channel, p in self.messages:
            if channel == "telemetry" and zone_id in self.sim.sites[device_id].zone_ids \
                    and key in p["values"]:
                latest[device_id] = p["values"][key]
                yield self.at(p), fuse(latest.values())


@pytest.fixture(scope="module")
def runs(case_study: tuple[Config, list[Zone]]) -> dict[str, Run]:
    return {name: Run(case_study, name) for name in sorted(SCENARIOS)}


def test_the_built_in_scenarios_load_with_a_seed_a_speed_and_a_length() -> None:
    assert set(scenario_names()) == SCENARIOS
    for name in SCENARIOS:
        sc = load_scenario(name)
        assert sc.name == name
        assert sc.description
        assert sc.seed == 1
        assert sc.speed >= 60
        assert sc.duration is not None
    assert load_scenario("demo").model_dump(exclude={"name", "description"}) == load_scenario(
        "mixed").model_dump(exclude={"name", "description"})


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_every_message_of_every_scenario_validates_against_the_contract(
        runs: dict[str, Run], name: str) -> None:
    run = runs[name]
    decoder = Decoder({d.id: d.kind for d in run.config.devices})
    rejected = []
    for topic, body in [*run.sim.status_messages("online"), *run.raw]:
        p = json.loads(body)
        now = datetime.fromisoformat(p["ts"]) if "ts" in p else START
        result = decoder.decode(topic, body, now)
        if isinstance(result, Rejection):
            rejected.append((topic, result.reason, result.detail))
    assert rejected == []
    for message in run.messages:
        check_contract(*message)
    telemetry = {d for _, d, ch, _ in run.messages if ch == "telemetry"}
    assert telemetry == {d.id for d in run.config.devices}


def test_the_same_seed_gives_the_same_messages(case_study: tuple[Config, list[Zone]],
                                               runs: dict[str, Run]) -> None:
    again = Run(case_study, "storm")
    assert again.raw == runs["storm"].raw
    assert again.truth == runs["storm"].truth
    other = Run(case_study, "storm", seed=2)
    assert other.raw != again.raw


# -- ground truth ------------------------------------------------------------------------------


def test_ground_truth_round_trips_and_names_its_thresholds(runs: dict[str, Run],
                                                           tmp_path: Path) -> None:
    truth = runs["storm"].truth
    truth.write(tmp_path / "t.json")
    assert GroundTruth.read(tmp_path / "t.json") == GroundTruth.from_json(truth.to_json())
    assert (truth.scenario, truth.seed, truth.start) == ("storm", 1, START)
    assert truth.end == START + timedelta(hours=5)
    assert truth.meta["thresholds"]["waterlogging_yellow_cm"] == {"underpass": 10,
                                                                  "low_road": 15}
    assert truth.meta["timestamps"] == "simulated"


def test_storm_truth_floods_every_underpass_and_matches_the_gauges(runs: dict[str, Run]) -> None:
    run = runs["storm"]
    water = [h for h in run.truth.hazards if h.hazard == "waterlogging"]
    underpasses = {z for z, zone in run.zones.items() if zone.type == "underpass"}
    assert {h.zone_id for h in water if h.peak_level == 1} >= underpasses
    thresholds = run.config.rules.waterlogging.thresholds
    for h in water:
        yellow = thresholds[run.zones[h.zone_id].type].yellow_cm
        series = list(run.zone_series(h.zone_id, "water_depth_cm", max))
        inside = [v for t, v in series if h.start <= t <= h.end]
        assert max(inside) >= yellow, h
        before = [v for t, v in series if t < h.start - timedelta(minutes=5)]
        assert max(before, default=0) < yellow + 1, h  # reading noise is a few mm
        assert START + timedelta(hours=1) < h.start < START + timedelta(hours=2)
        assert h.end < START + timedelta(hours=5)  # it drains after the storm
    assert not [h for h in run.truth.hazards if h.hazard == "falling_object"]


def test_rush_hour_truth_has_the_jams_and_the_collision(runs: dict[str, Run]) -> None:
    run = runs["rush_hour"]
    traffic = [h for h in run.truth.hazards if h.hazard == "traffic"]
    assert {h.hazard for h in run.truth.hazards} == {"traffic"}
    collision = [h for h in traffic if "collision" in h.note]
    assert [h.zone_id for h in collision] == ["x-01"]
    assert collision[0].peak_level <= 2
    yellow = run.config.rules.traffic.yellow_kmh
    for h in traffic:
        if h.note and "still on" not in h.note:
            continue  # an incident is a hazard (orange) whatever the speeds
        series = list(run.zone_series(h.zone_id, "speed_kmh", lambda vs: sum(vs) / len(vs)))
        assert min(v for t, v in series if h.start <= t <= h.end) < yellow * 1.1, h
    jams = {h.zone_id for h in traffic if not h.note}
    assert len(jams) >= 2
    site = [p["values"]["speed_kmh"] for _, d, ch, p in run.messages if d == "tf-01"
            and ch == "telemetry" and collision[0].start <= run.at(p) <= collision[0].end]
    assert min(site) < run.config.rules.traffic.orange_kmh  # the collision's own junction


def test_falling_object_truth_matches_the_camera_detections(runs: dict[str, Run]) -> None:
    run = runs["falling_object"]
    falls = [h for h in run.truth.hazards if h.hazard == "falling_object"]
    assert len(falls) >= 2  # five throws at one tower (some merge as they overlap), one later
    detections = [p for k, _, ch, p in run.messages if ch == "event" and "building_id" in p]
    assert len(detections) == 6
    red = run.config.rules.falling_object.red_confidence
    for p in detections:
        t = run.at(p)
        match = [h for h in falls if h.start <= t <= h.end]
        assert len(match) == 1, p
        assert run.zones[match[0].zone_id].geometry.covers(Point(p["impact"]))
        if p["confidence"] >= red:
            assert match[0].peak_level == 1
    false = [p for k, _, ch, p in run.messages if k == "camera" and ch == "event"
             and "building_id" not in p]
    assert false
    assert max(p["confidence"] for p in false) < run.config.rules.falling_object.min_confidence


def test_sensor_faults_truth_lists_each_fault_and_the_messages_show_them(
        runs: dict[str, Run]) -> None:
    run = runs["sensor_faults"]
    faults = {(f.device_id, f.kind): f for f in run.truth.faults}
    assert set(faults) == {("wl-03", "stuck"), ("wl-07", "spike"), ("wl-12", "drift"),
                           ("rg-04", "silent"), ("wl-15", "dead_battery"), ("tf-09", "dropped")}
    assert faults["wl-07", "spike"].end - faults["wl-07", "spike"].start == timedelta(hours=1)
    assert faults["tf-09", "dropped"].start == START + timedelta(hours=1)
    status: dict[str, list[str]] = defaultdict(list)
    for _, d, ch, p in run.messages:
        if ch == "status":
            status[d].append(p["state"])
    assert status == {"wl-15": ["offline"], "tf-09": ["offline", "online"]}
    silent = faults["rg-04", "silent"]
    assert not [p for _, d, ch, p in run.messages if d == "rg-04" and ch == "telemetry"
                and silent.start <= run.at(p) < silent.end]
    stuck = faults["wl-03", "stuck"]
    assert len({p["values"]["water_depth_cm"] for _, d, ch, p in run.messages
                if d == "wl-03" and ch == "telemetry" and run.at(p) >= stuck.start}) == 1


def test_a_quiet_day_has_nothing_to_find(runs: dict[str, Run]) -> None:
    truth = runs["quiet_day"].truth
    assert truth.hazards == ()
    assert truth.faults == ()


def test_hazards_are_judged_with_the_configs_thresholds(
        case_study: tuple[Config, list[Zone]], runs: dict[str, Run]) -> None:
    cfg, _ = case_study
    rules = cfg.rules.model_copy(update={"waterlogging": cfg.rules.waterlogging.model_copy(
        update={"thresholds": {
            **cfg.rules.waterlogging.thresholds,
            "underpass": cfg.rules.waterlogging.thresholds["underpass"].model_copy(
                update={"blue_cm": 90, "yellow_cm": 100, "orange_cm": 110, "red_cm": 120})}})})
    strict = Run(case_study, "storm", config=cfg.model_copy(update={"rules": rules}))
    zone_type = {z: zone.type for z, zone in strict.zones.items()}
    assert not [h for h in strict.truth.hazards if zone_type[h.zone_id] == "underpass"]
    assert [h for h in runs["storm"].truth.hazards if zone_type[h.zone_id] == "underpass"]


def test_wall_clock_truth_uses_the_runs_timestamps(runs: dict[str, Run]) -> None:
    run = runs["mixed"]
    wall0 = datetime(2030, 1, 1, tzinfo=START.tzinfo)
    clock = Clock(START, wall0, speed=60)
    truth = run.sim.ground_truth(clock.stamp)
    assert truth.start == wall0
    assert truth.end == wall0 + timedelta(hours=3) / 60
    assert [h.start for h in truth.hazards] == [clock.stamp(h.start) for h in run.truth.hazards]
    assert truth.meta["timestamps"] == "wall"


def test_the_demo_raises_all_three_hazards_in_its_first_real_minute(
        case_study: tuple[Config, list[Zone]]) -> None:
    cfg, zones = case_study
    sim = Simulation(cfg, "demo", None, None, START, zones=zones)
    minute = START + timedelta(seconds=60 * sim.speed)
    msgs = list(sim.messages_until(minute))
    first = {h.hazard: h.start for h in reversed(sim.ground_truth().hazards)}
    assert set(first) == {"waterlogging", "traffic", "falling_object"}
    assert max(first.values()) < minute
    flooded = {t.split("/")[2] for t, b in msgs if "/water/" in t
               and json.loads(b)["values"]["water_depth_cm"] > 25}
    jammed = {t.split("/")[2] for t, b in msgs if t.endswith("telemetry") and "/traffic/" in t
              and json.loads(b)["values"]["speed_kmh"] < 12}
    falls = [json.loads(b)["confidence"] for t, b in msgs if "/camera/" in t
             and t.endswith("event")]
    assert len(flooded) >= 4
    assert len(jammed) >= 2
    assert max(falls) >= cfg.rules.falling_object.min_confidence


# -- the YAML ---------------------------------------------------------------------------------


def test_a_scenario_file_can_start_from_another_and_errors_name_the_key(tmp_path: Path) -> None:
    f = tmp_path / "wet_rush.yaml"
    f.write_text("base: rush_hour\nstorms:\n  - {return_period_years: 5, duration: 2h}\n")
    sc = load_scenario(str(f))
    assert sc.name == "wet_rush"
    assert sc.incidents == load_scenario("rush_hour").incidents
    assert sc.storms[0].duration == 7200
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nstorms:\n  - {return_period_years: 5, duration: 2h, colour: red}\n"
                   "faults:\n  - {kind: stuck, start: soon}\n")
    with pytest.raises(ScenarioError) as err:
        load_scenario(str(bad))
    assert "storms.0.colour" in str(err.value)
    assert "faults.0.start" in str(err.value)
    loop = tmp_path / "loop.yaml"
    loop.write_text(f"base: {loop}\n")
    with pytest.raises(ScenarioError, match="no cycle"):
        load_scenario(str(loop))
    with pytest.raises(ScenarioError, match=r"storm or a \.yaml file"):
        load_scenario("tsunami")
