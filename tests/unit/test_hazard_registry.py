"""A hazard is one module: the registry, and everything that reads it (config, CAP, Open311,
policy, console, appeals, engine), with the README's wind-at-height plug-in registered for a
while and gone again afterwards."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from alerts import appeal_intake, appeal_reply, cap, open311, policy
from alerts.console_api import hazards_document, thresholds_for
from citywatch.config import Config, ConfigError, load_config, parse_config
from geo.zones import ZONE_TYPE_HAZARDS, Zone
from rules import registry
from rules.base import DEVICE_FAULT, FALLING_OBJECT_PATTERN, Detection, Observation
from rules.engine import Engine, EngineState
from rules.hazard import Hazard, Rule
from rules.levels import Level
from rules.params import RulesParams
from rules.reports import ReportRule

REPO = Path(__file__).resolve().parents[2]
WIND_DIR = REPO / "examples" / "wind"
BUILTIN = ("waterlogging", "falling_object", "traffic")
ROOF = (120.665166, 31.315827)  # the README's wind-01, on the Global 188 roof
T0 = datetime(2026, 7, 15, 8, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def cfg() -> Config:
    """The district's configuration, read before any plug-in is registered (it routes none)."""
    return load_config(REPO / "config.yaml", env={})


@pytest.fixture
def wind() -> Iterator[Hazard]:
    """The example's hazard, registered for one test (its module on sys.path meanwhile)."""
    sys.path.insert(0, str(WIND_DIR))
    try:
        import wind_hazard

        with registry.registered(wind_hazard.WIND_AT_HEIGHT):
            yield wind_hazard.WIND_AT_HEIGHT
    finally:
        sys.path.remove(str(WIND_DIR))
        sys.modules.pop("wind_hazard", None)


def test_the_built_in_hazards_are_registered_with_their_zone_types() -> None:
    assert registry.names() == BUILTIN
    assert ZONE_TYPE_HAZARDS["underpass"] == ("waterlogging",)
    assert ZONE_TYPE_HAZARDS["fall_zone"] == ("falling_object",)
    assert ZONE_TYPE_HAZARDS["road_segment"] == ("traffic",)
    assert set(registry.alert_kinds()) == {*BUILTIN, FALLING_OBJECT_PATTERN, DEVICE_FAULT}


def test_every_rule_has_the_one_rule_interface(cfg: Config) -> None:
    params = cfg.rules
    rules: list[Rule[Any]] = [h.rule(params.of(h.name)) for h in registry.hazards()]
    rules.append(ReportRule(params.reports))
    for rule in rules:
        for method in ("check_zone", "initial", "restore_alert", "levels", "deadline",
                       "evaluate", "corroborate", "reassess", "tick"):
            assert callable(getattr(rule, method)), (rule.name, method)
        assert rule.levels(rule.initial()) == {}


def test_what_the_platform_says_of_a_hazard_comes_from_its_module() -> None:
    assert cap.EVENTS["waterlogging"] == "Urban waterlogging"
    assert cap.CATEGORIES["falling_object"] == ("Safety",)
    assert list(open311.SERVICES) == list(BUILTIN)
    assert policy.INSTRUCTIONS[DEVICE_FAULT].startswith("Inspect the device")
    assert set(policy.SENSOR_BACKED) == {"waterlogging", "traffic"}
    assert appeal_intake.categories() == (*BUILTIN, "other")
    assert appeal_intake.classify("water in the underpass, cars stuck") == "waterlogging"
    assert appeal_reply.HAZARD_WORDS["falling_object"] == ("a falling object", "高空坠物")
    labels = {h["name"]: h["label"] for h in hazards_document()["hazards"]}
    assert labels["traffic"] == {"en": "Traffic", "zh": "交通拥堵"}


def test_a_registered_plug_in_is_everywhere_and_gone_again_after(wind: Hazard) -> None:
    assert registry.names() == (*BUILTIN, "wind_at_height")
    assert ZONE_TYPE_HAZARDS["fall_zone"] == ("falling_object", "wind_at_height")
    assert cap.EVENTS["wind_at_height"] == "High wind at height"
    assert cap.CATEGORIES["wind_at_height"] == ("Met", "Safety")
    assert "wind_at_height" in policy.SENSOR_BACKED
    assert policy.INSTRUCTIONS["wind_at_height"].startswith("Secure or take in")
    assert "wind_at_height" not in open311.SERVICES  # sensed only: no report category
    assert ("wind_at_height", "fall_zone") in registry.required_routes()
    doc = {h["name"]: h for h in hazards_document()["hazards"]}
    assert doc["wind_at_height"]["label"] == {"en": "High wind at height", "zh": "高空大风"}
    assert doc["wind_at_height"]["metric"] == {"key": "wind_gust_m_s", "unit": "m/s",
                                               "crossing": "above"}
    fall = Zone("fz-x", "Tower", "fall_zone", __import__("shapely").Point(*ROOF).buffer(1e-4))
    assert thresholds_for(fall, {})["wind_gust_m_s"] == {
        "red": 24.5, "orange": 17.2, "yellow": 13.9, "blue": 10.8}
    # The same module object twice counts once; another hazard of a taken name is refused.
    registry.register(wind)
    with pytest.raises(registry.HazardError, match="taken"):
        registry.register(Hazard(**{**{f: getattr(wind, f) for f in wind.__dataclass_fields__},
                                    "extra_alerts": ()}))


def test_the_plug_in_is_gone_after_the_test() -> None:
    assert "wind_at_height" not in registry.names()
    assert "wind_at_height" not in ZONE_TYPE_HAZARDS["fall_zone"]
    assert "wind_at_height" not in cap.EVENTS


def test_rules_parameters_of_a_plug_in_are_validated_by_its_own_model(cfg: Config,
                                                                      wind: Hazard) -> None:
    base = cfg.rules.model_dump()
    params = RulesParams.model_validate({**base, "wind_at_height": {"yellow_m_s": 15}})
    assert params.of("wind_at_height").yellow_m_s == 15  # type: ignore[attr-defined]
    assert RulesParams.model_validate(base).of("wind_at_height") == wind.params_model()
    with pytest.raises(ValueError, match="yellow_m_s"):
        RulesParams.model_validate({**base, "wind_at_height": {"yellow_m_s": 50}})
    with pytest.raises(ValueError, match="neither a hazard"):
        RulesParams.model_validate({**base, "windd": {}})


def test_a_route_must_name_a_known_hazard() -> None:
    import yaml

    data = yaml.safe_load((REPO / "config.yaml").read_text(encoding="utf-8"))
    data["routing"][0]["hazard"] = "flooding"
    with pytest.raises(ConfigError, match="'flooding' is no hazard"):
        parse_config(data, "config.yaml", REPO, {})


def test_a_config_listing_the_plug_in_registers_it_and_needs_its_routes() -> None:
    import yaml

    data = yaml.safe_load((REPO / "config.yaml").read_text(encoding="utf-8"))
    data["plugins"] = ["wind_gauge:WindGauge", "wind_hazard:WIND_AT_HEIGHT"]
    sys.path.insert(0, str(WIND_DIR))
    try:
        with pytest.raises(ConfigError, match="no route for wind_at_height in fall_zone"):
            parse_config(data, "config.yaml", REPO, {})
        data["routing"].insert(0, {"hazard": "wind_at_height", "zone_type": "fall_zone",
                                   "department": "gusu-building", "team": "building-mgmt-1"})
        cfg = parse_config(data, "config.yaml", REPO, {})
        assert "wind_at_height" in registry.names()
        assert cfg.route("wind_at_height", "fall_zone", "red") is not None
    finally:
        registry.unregister("wind_at_height")
        sys.path.remove(str(WIND_DIR))
        for m in ("wind_hazard", "wind_gauge"):
            sys.modules.pop(m, None)


def _engine(cfg: Config) -> tuple[Engine, dict[str, Zone]]:
    from geo.load import load_zones

    zones = {z.id: z for z in load_zones(cfg.zones_path)}
    return Engine(cfg.rules, zones), zones


def _gust(seq: int, gust: float, minutes: float = 0) -> Observation:
    return Observation("wind-01", "wind", T0 + timedelta(minutes=minutes), seq,
                       {"wind_speed_m_s": gust / 1.4, "wind_gust_m_s": gust}, ROOF, ())


def test_gusts_on_a_roof_warn_the_fall_zones_below_and_ease_again(cfg: Config,
                                                                   wind: Hazard) -> None:
    engine, zones = _engine(cfg)
    state = EngineState()
    seen = []
    for i, g in enumerate([9.0, 15.0, 26.0, 12.0, 5.0]):
        state, changes = engine.evaluate(state, _gust(i + 1, g, i))
        seen.append({c.zone_id: c.level for c in changes if c.hazard == wind.name})
    assert seen[0] == {}
    assert seen[1]["fz-03"] == Level.YELLOW  # Global 188 Tower A's fall zone, below the gauge
    assert seen[2]["fz-03"] == Level.RED
    assert seen[3]["fz-03"] == Level.YELLOW  # 12 m/s: still within yellow's hysteresis band
    assert seen[4]["fz-03"] is None
    far = [z for z in zones.values() if z.type == "fall_zone" and z.id not in seen[1]]
    assert far, "a fall zone far from the gauge hears nothing of it"
    assert engine.zone_risk(state)["fz-03"]["wind_at_height"] == "clear"


def test_a_restart_resumes_the_wind_level_and_the_falling_objects_beside_it(
        cfg: Config, wind: Hazard) -> None:
    engine, _ = _engine(cfg)
    levels = {("fz-03", wind.name): Level.ORANGE, ("fz-03", "falling_object"): Level.RED,
              ("fz-03", FALLING_OBJECT_PATTERN): Level.ORANGE}
    state = engine.restore(levels)
    assert engine.current_levels(state) == levels
    state, changes = engine.evaluate(state, _gust(1, 3.0))
    assert [(c.hazard, c.level) for c in changes] == [(wind.name, None)]


def test_a_grid_report_of_a_falling_object_still_joins_a_camera_detection(cfg: Config) -> None:
    engine, _ = _engine(cfg)
    cam = Detection("cam-03", "camera", T0, "e1", "falling_object", 0.6, (120.66695, 31.31598),
                    ("fz-03",), {"building_id": "global-188"})
    state, changes = engine.evaluate(EngineState(), cam)
    assert changes == []  # 0.6 alone is logged, not alerted
    report = Detection("grid-01", "grid", T0 + timedelta(seconds=30), "r1", "report", None,
                       (120.66695, 31.31598), ("fz-03",), {"category": "falling_object"})
    state, changes = engine.evaluate(state, report)
    assert [(c.zone_id, c.hazard) for c in changes] == [("fz-03", "falling_object")]


def test_the_example_gauge_is_the_readme_s() -> None:
    from tests.unit.test_sim_plugins import readme_example

    assert readme_example() in (WIND_DIR / "wind_gauge.py").read_text(encoding="utf-8")


def test_a_reportable_plug_in_is_a_grid_report_category_while_registered(
        cfg: Config, wind: Hazard) -> None:
    """The decoder takes a grid report's categories from the registry: a reportable plug-in's
    is accepted while it is registered, refused before and after; 'other' always passes."""
    from sensing.decode import Decoder
    from sensing.models import Event, Rejection
    from sensing.plugins import load_kinds

    def report(category: str, seq: int) -> bytes:
        return json.dumps({"ts": "2026-07-15T08:00:00Z", "seq": seq, "event_id": f"gw-{seq}",
                           "type": "report", "category": category, "loc": [120.6652, 31.3158],
                           "text": "sign swinging"}).encode()

    def decode(category: str) -> object:
        decoder = Decoder({"grid-01": "grid"}, load_kinds(cfg, use_entry_points=False))
        return decoder.decode("city/grid/grid-01/event", report(category, 1), T0)

    assert isinstance(decode("other"), Event)
    assert isinstance(decode("wind_at_height"), Rejection)  # registered, but sensed only
    reportable = Hazard(**{**{f: getattr(wind, f) for f in wind.__dataclass_fields__},
                           "name": "gale_report", "report_category": True,
                           "extra_alerts": ()})
    with registry.registered(reportable):
        got = decode("gale_report")
        assert isinstance(got, Event) and got.body["category"] == "gale_report"
        assert isinstance(decode("tsunami"), Rejection)
    assert isinstance(decode("gale_report"), Rejection)
