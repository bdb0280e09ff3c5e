"""Broker access (CONTRACT section 6) without a broker: secret hashes, the ACL rules, the files."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from citywatch.config import ConfigError, parse_config
from sensing.access import (
    ENGINE_RULES,
    AccessError,
    Member,
    broker_files,
    filter_covers,
    parse_acl,
    parse_passwords,
    permits,
)
from sensing.credentials import hash_secret, new_secret, verify_secret

KINDS = {"wl-01": "water", "wl-02": "water", "grid-01": "grid", "tf-01": "traffic"}


def test_a_secret_verifies_against_its_hash_only() -> None:
    secret = new_secret()
    hashed = hash_secret(secret)
    assert hashed.startswith("$7$101$")
    assert secret not in hashed
    assert verify_secret(secret, hashed)
    assert not verify_secret(secret + "x", hashed)
    assert hash_secret(secret) != hashed  # a new salt each time
    for broken in ("", "$6$abc$def", "$7$x$y$z", "$7$101$!!$??", hashed[:-8]):
        assert not verify_secret(secret, broken)


def test_hashes_are_mosquitto_passwd_compatible(tmp_path: Path) -> None:
    """Both ways: we verify what mosquitto_passwd writes (so Mosquitto reads what we write,
    which the integration tests show by connecting)."""
    tool = shutil.which("mosquitto_passwd")
    if tool is None:
        pytest.skip("mosquitto_passwd is not installed")
    pw = tmp_path / "pw"
    subprocess.run([tool, "-c", "-b", str(pw), "alice", "s3cret"], check=True)
    hashed = parse_passwords(pw.read_text())["alice"]
    assert verify_secret("s3cret", hashed)
    assert not verify_secret("s3cre", hashed)


def members() -> list[Member]:
    h = hash_secret("x")
    return [Member("citywatch-engine", "service", h), Member("wl-01", "device", h),
            Member("drainage-1", "team", h), Member("gw-1", "gateway", h, ("tf-01", "gone")),
            Member("removed-device", "device", h)]


def test_each_identity_gets_the_contracts_rules_and_nothing_else() -> None:
    passwords, acl = broker_files(members(), KINDS)
    rules = parse_acl(acl)
    assert rules["wl-01"] == [("write", "city/water/wl-01/#"), ("read", "city/dispatch/wl-01"),
                              ("write", "city/dispatch/wl-01/ack")]
    assert rules["drainage-1"] == [("read", "city/dispatch/drainage-1"),
                                   ("write", "city/dispatch/drainage-1/ack")]
    assert rules["citywatch-engine"] == list(ENGINE_RULES)
    # A gateway: its devices' rules; a device no longer configured is left out everywhere.
    assert rules["gw-1"] == [("write", "city/traffic/tf-01/#"), ("read", "city/dispatch/tf-01"),
                             ("write", "city/dispatch/tf-01/ack")]
    assert "removed-device" not in rules
    assert set(parse_passwords(passwords)) == {"citywatch-engine", "wl-01", "drainage-1", "gw-1"}


@pytest.mark.parametrize(("who", "access", "topic", "allowed"), [
    ("wl-01", "write", "city/water/wl-01/telemetry", True),
    ("wl-01", "write", "city/water/wl-01/status", True),
    ("wl-01", "write", "city/water/wl-02/telemetry", False),
    ("wl-01", "write", "city/rain/wl-01/telemetry", False),
    ("wl-01", "write", "city/alerts/up-01", False),
    ("wl-01", "write", "city/dispatch/drainage-1", False),
    ("wl-01", "write", "city/deadletter/water/wl-01", False),
    ("wl-01", "read", "city/#", False),
    ("wl-01", "read", "city/dispatch/+", False),
    ("wl-01", "read", "city/dispatch/wl-01", True),
    ("drainage-1", "write", "city/dispatch/drainage-1/ack", True),
    ("drainage-1", "write", "city/dispatch/drainage-2/ack", False),
    ("drainage-1", "read", "city/dispatch/drainage-2", False),
    ("drainage-1", "read", "city/dispatch/drainage-1", True),
    ("citywatch-engine", "read", "city/+/+/telemetry", True),
    ("citywatch-engine", "read", "$SYS/broker/uptime", True),
    ("citywatch-engine", "write", "city/alerts/up-01", True),
    ("citywatch-engine", "write", "city/water/wl-01/telemetry", False),
    ("gw-1", "write", "city/traffic/tf-01/telemetry", True),
    ("gw-1", "write", "city/traffic/tf-02/telemetry", False),
])
def test_permits(who: str, access: str, topic: str, allowed: bool) -> None:
    rules = parse_acl(broker_files(members(), KINDS)[1])
    assert permits(rules[who], access, topic) is allowed  # type: ignore[arg-type]


def test_wildcards_never_reach_into_dollar_topics() -> None:
    assert not permits([("read", "#")], "read", "$SYS/broker/uptime")
    assert permits([("read", "$SYS/#")], "read", "$SYS/broker/uptime")


level = st.sampled_from(["city", "water", "wl-01", "dispatch", "x", "+"])


@given(st.lists(level, min_size=1, max_size=5), st.lists(level, min_size=1, max_size=5))
def test_a_filter_covers_only_what_it_matches(allowed: list[str], wanted: list[str]) -> None:
    a, w = "/".join(allowed), "/".join(wanted)
    if filter_covers(a, w):
        # Every concrete topic that ``wanted`` matches, ``allowed`` matches too.
        concrete = "/".join("z" if part == "+" else part for part in wanted)
        assert filter_covers(a, concrete)
    assert filter_covers(a + "/#", w + "/more") or not filter_covers(a, w)
    assert filter_covers(w, w)


def test_a_name_the_files_cannot_hold_is_refused() -> None:
    with pytest.raises(AccessError, match="username"):
        broker_files([Member("bad name", "device", hash_secret("x"))], KINDS)
    with pytest.raises(AccessError, match=r"\$7\$"):
        broker_files([Member("wl-01", "device", "plain")], KINDS)


def config_data(**over: object) -> dict[str, object]:
    data: dict[str, object] = {
        "zones": {"file": "z.geojson"},
        "rules": {"waterlogging": {"thresholds": {"underpass": {
            "blue_cm": 5, "yellow_cm": 10, "orange_cm": 15, "red_cm": 25}}}},
        "departments": [{"id": "d", "name": "D", "level": "district"}],
        "teams": [{"id": "t-1", "name": "T", "department": "d"}], "routing": [],
        "devices": [{"id": "wl-01", "kind": "water", "position": [120.6, 31.3]}],
    }
    data.update(over)
    return data


def test_a_team_and_a_device_cannot_share_a_username() -> None:
    with pytest.raises(ConfigError, match=r"teams\[0\]\.id: 'wl-01' is also a device id"):
        parse_config(config_data(teams=[{"id": "wl-01", "name": "T", "department": "d"}]),
                     env={})
    with pytest.raises(ConfigError, match=r"broker\.client_id: 'wl-01' is also a device id"):
        parse_config(config_data(broker={"client_id": "wl-01"}), env={})
    cfg = parse_config(config_data(broker={"tls": {"enabled": True, "port": 8884},
                                           "ca_file": "ca.crt"}), env={}, base_dir=Path("/c"))
    assert cfg.broker.tls.port == 8884
    assert cfg.ca_path == Path("/c/ca.crt")
