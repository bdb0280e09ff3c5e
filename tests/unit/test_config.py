"""config.yaml validation: an error names the key, the value and what was expected."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from citywatch.config import ConfigError, load_config, parse_config

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    data = yaml.safe_load((REPO / "config.yaml").read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def broken(raw: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    data = copy.deepcopy(raw)
    node: Any = data
    *parents, last = path.split(".")
    for p in parents:
        node = node[int(p)] if p.isdigit() else node[p]
    node[int(last) if last.isdigit() else last] = value
    return data


def test_the_shipped_config_is_valid() -> None:
    cfg = load_config(REPO / "config.yaml", env={})
    assert cfg.broker.url == "embedded" and cfg.database.url == "embedded"
    assert cfg.zones_path.exists()
    kinds = [d.kind for d in cfg.devices]
    assert kinds.count("camera") == 7 and kinds.count("grid") == 40
    assert sum(kinds.count(k) for k in ("water", "rain", "traffic")) == 42


@pytest.mark.parametrize(("path", "value", "expected"), [
    ("broker.url", "http://example",
     "broker.url: got 'http://example'; expected 'embedded' or a URL"),
    ("database.url", "mysql://x", "database.url: got 'mysql://x'; expected 'embedded'"),
    ("http.port", 70000, "http.port: got 70000; Input should be less than or equal to 65535"),
    ("http.port", "eighty", "http.port: got 'eighty'; Input should be a valid integer"),
    ("rules.waterlogging.thresholds.underpass.red_cm", 12,
     "rules.waterlogging.thresholds.underpass: got"),
    ("rules.traffic.orange_kmh", 40, "expected blue_kmh > yellow_kmh > orange_kmh"),
    ("devices.0.position", [200, 31.3],
     "devices[0].position: got [200, 31.3]; expected [lon, lat]"),
    ("devices.0.id", "cam 01", "devices[0].id: got 'cam 01'; expected 1 to 64 of letters"),
    ("teams.0.department", "nowhere", "teams[0].department: 'nowhere' is not a department id"),
    ("routing.0.team", "ghost-team", "routing[0].team: 'ghost-team' is not a team id"),
    ("presence.silence_timeout_s", -1,
     "presence.silence_timeout_s: got -1; Input should be greater"),
    ("database.outbox_keep_days", 0, "database.outbox_keep_days: got 0; Input should be greater"),
    ("work_orders.keep_days", "forever", "work_orders.keep_days: got 'forever'; Input should be"),
    ("work_orders.evidence_keep_last", 0,
     "work_orders.evidence_keep_last: got 0; Input should be greater"),
])
def test_a_bad_value_is_named_with_what_was_expected(raw: dict[str, Any], path: str, value: Any,
                                                     expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(broken(raw, path, value), env={})
    assert expected in str(err.value)


def test_unknown_and_missing_keys_are_named(raw: dict[str, Any]) -> None:
    data = copy.deepcopy(raw)
    data["broker"]["ulr"] = "mqtt://x"
    del data["zones"]
    with pytest.raises(ConfigError) as err:
        parse_config(data, env={})
    assert "broker.ulr: unknown key" in str(err.value)
    assert "zones: missing; it is required" in str(err.value)


def test_duplicate_device_ids_are_refused(raw: dict[str, Any]) -> None:
    data = copy.deepcopy(raw)
    data["devices"].append(dict(data["devices"][0]))
    with pytest.raises(ConfigError, match=r"devices\[89\]\.id: 'cam-01' appears twice"):
        parse_config(data, env={})


def test_environment_overrides_the_file(raw: dict[str, Any]) -> None:
    cfg = parse_config(raw, env={"CITYWATCH_BROKER_URL": "mqtt://u:p@10.0.0.5:1884",
                                 "CITYWATCH_DATABASE_URL": "postgresql://db.local/cw",
                                 "CITYWATCH_HTTP_PORT": "9090"})
    assert cfg.broker.url == "mqtt://u:p@10.0.0.5:1884"
    assert cfg.database.url == "postgresql://db.local/cw"
    assert cfg.http.port == 9090


def test_a_bad_environment_value_is_reported_like_a_file_value(raw: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match=r"http\.port: got 'x'"):
        parse_config(raw, env={"CITYWATCH_HTTP_PORT": "x"})


def test_the_mqtt_receiver_is_a_process_unless_asked_and_checked(raw: dict[str, Any]) -> None:
    assert parse_config(raw, env={}).broker.receiver == "process"
    env = {"CITYWATCH_BROKER_RECEIVER": "thread"}
    assert parse_config(raw, env=env).broker.receiver == "thread"
    with pytest.raises(ConfigError, match=r"broker\.receiver: got 'fork'.*'thread' or 'process'"):
        parse_config(raw, env={"CITYWATCH_BROKER_RECEIVER": "fork"})


def test_unreadable_or_malformed_files_say_so(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.yaml", env={})
    bad = tmp_path / "bad.yaml"
    bad.write_text("broker: [unclosed\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad, env={})
    bad.write_text("- just a list\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(bad, env={})


def test_health_limits_have_defaults_and_are_checked(raw: dict[str, Any]) -> None:
    cfg = parse_config(raw, env={})
    assert (cfg.health.stuck_after_s, cfg.health.warn_for_s) == (60, 600)
    cfg = parse_config({**raw, "health": {"stuck_after_s": 5}}, env={})
    assert cfg.health.stuck_after_s == 5
    with pytest.raises(ConfigError, match=r"health.stuck_after_s: got 0; Input should be greater"):
        parse_config({**raw, "health": {"stuck_after_s": 0}}, env={})


def test_routing_must_cover_every_hazard_zone_type_and_level(raw: dict[str, Any]) -> None:
    data = copy.deepcopy(raw)
    # Underpasses route to drainage only at red: yellow, orange and blue have nowhere to go.
    route = next(r for r in data["routing"] if r["zone_type"] == "underpass")
    route["levels"] = ["red"]
    with pytest.raises(ConfigError) as err:
        parse_config(data, env={})
    message = str(err.value)
    assert "routing: no route for waterlogging in underpass at orange" in message
    assert "waterlogging in underpass at blue" in message
    assert "at red" not in message
    # A configuration for simulators only may leave routing out altogether.
    data["routing"] = []
    assert parse_config(data, env={}).routing == ()


@pytest.mark.parametrize(("path", "value", "expected"), [
    ("http.allowed_hosts", ["http://example.org"], "expected a host name"),
    ("http.max_body_bytes", 10, "greater than or equal to 1024"),
    ("auth.token_ttl_min", 0, "greater than 0"),
])
def test_access_settings_are_checked(raw: dict[str, Any], path: str, value: Any,
                                     expected: str) -> None:
    data = copy.deepcopy(raw)
    section, key = path.split(".")
    data.setdefault(section, {})[key] = value
    with pytest.raises(ConfigError, match=expected):
        parse_config(data, env={})
