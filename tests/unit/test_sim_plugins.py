"""Device kinds as plug-ins: the README's worked example, loaded from the config and from an
entry point, validated by the platform's decoder and simulated with the fleet."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar

import pytest

from sensing.decode import BUILTIN_KINDS, Decoder, KindSpec, Number
from sensing.models import Rejection, Telemetry
from sensing.plugins import ENTRY_POINT_GROUP, PluginError, discover, load_kinds
from simulators.runner import Simulation
from tests.unit.test_sim_devices import CENTRE, START, fleet, make_config

README = Path(__file__).resolve().parents[2] / "README.md"
WIND = {"id": "wind-01", "kind": "wind", "position": list(CENTRE), "name": "Global 188 roof"}


def readme_example() -> str:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Plugging a device in", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.DOTALL)
    assert len(blocks) == 1, "the section shows one Python example"
    return str(blocks[0])


@pytest.fixture
def wind_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The README's ``wind_gauge.py`` on sys.path, forgotten again afterwards."""
    (tmp_path / "wind_gauge.py").write_text(readme_example(), encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("wind_gauge", None)


def test_the_worked_example_is_short() -> None:
    assert len(readme_example().strip().splitlines()) < 40


def test_the_example_loads_from_the_config_and_the_platform_validates_it(
        wind_module: Path) -> None:
    cfg = make_config([*fleet(1, 0, 0, 0, 0), WIND], plugins=["wind_gauge:WindGauge"])
    kinds = load_kinds(cfg, use_entry_points=False, device_kinds={d.kind for d in cfg.devices})
    assert set(kinds) == {*BUILTIN_KINDS, "wind"}
    decoder = Decoder({d.id: d.kind for d in cfg.devices}, kinds)
    ok = decoder.decode("city/wind/wind-01/telemetry",
                        b'{"ts": "2026-11-23T08:00:00Z", "seq": 1, '
                        b'"values": {"wind_speed_m_s": 14.2, "wind_dir_deg": 120}}', START)
    assert isinstance(ok, Telemetry)
    assert ok.values["wind_speed_m_s"] == 14.2
    for values, reason in (({"wind_speed_m_s": 250}, "out_of_range"),
                           ({"wind_gust_m_s": 20}, "missing_field")):
        body = json.dumps({"ts": "2026-11-23T08:00:00Z", "seq": 2, "values": values}).encode()
        bad = decoder.decode("city/wind/wind-01/telemetry", body, START)
        assert isinstance(bad, Rejection)
        assert bad.reason == reason
    # Without the plug-in the same message has no kind to be checked against.
    plain = Decoder({d.id: d.kind for d in cfg.devices})
    refused = plain.decode("city/wind/wind-01/telemetry", b'{"ts": "2026-11-23T08:00:00Z", '
                           b'"seq": 1, "values": {"wind_speed_m_s": 14.2}}', START)
    assert isinstance(refused, Rejection)
    assert refused.reason == "unknown_kind"


def test_the_example_is_simulated_with_the_fleet_and_its_messages_pass(wind_module: Path) -> None:
    cfg = make_config([*fleet(1, 0, 0, 0, 0), WIND], plugins=["wind_gauge:WindGauge"])
    sim = Simulation(cfg, "storm", 1, None, START, zones=[])
    decoder = Decoder({d.id: d.kind for d in cfg.devices},
                      load_kinds(cfg, use_entry_points=False))
    msgs = list(sim.messages_until(START + timedelta(hours=2)))
    wind = [json.loads(b) for t, b in msgs if t == "city/wind/wind-01/telemetry"]
    assert len(wind) == 720
    assert all(not isinstance(decoder.decode(t, b, START + timedelta(hours=2)), Rejection)
               for t, b in msgs)
    speeds = [p["values"]["wind_speed_m_s"] for p in wind]
    assert [p["seq"] for p in wind] == list(range(1, 721))
    # At 240 m the wind is about 2.6 times the 10 m wind, and squalls come with the storm.
    assert 5 < min(speeds) < max(speeds) < 100
    assert max(speeds[360:]) > max(speeds[:60]) * 1.3
    assert ("city/wind/wind-01/status", b'{"state":"online"}') in sim.status_messages("online")


def fake_distribution(where: Path, entry: str) -> None:
    dist = where / "windplug-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: windplug\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{entry}\n")


def test_an_installed_package_registers_its_kind_through_the_entry_point(
        wind_module: Path) -> None:
    fake_distribution(wind_module, "wind = wind_gauge:WindGauge")
    found = discover()
    assert set(found) == {"wind"}
    assert found["wind"].source == "entry point wind = wind_gauge:WindGauge"
    # Listed in the config as well: the same object, counted once.
    assert set(discover(["wind_gauge:WindGauge"])) == {"wind"}
    cfg = make_config([WIND])  # no plugins: in the config
    assert [d.id for d in Simulation(cfg, "quiet_day", 1, None, START, zones=[]).devices] == [
        "wind-01"]


def test_an_entry_point_must_be_named_after_its_kind(wind_module: Path) -> None:
    fake_distribution(wind_module, "gale = wind_gauge:WindGauge")
    with pytest.raises(PluginError, match="name must be the kind"):
        discover()


class Gauge:
    """A plug-in that only tells the platform how to validate its kind (a real device)."""

    kind = "soil"
    spec = KindSpec(required_values={"moisture_pct": Number(0, 100)})


class Impostor:
    kind = "water"
    spec = KindSpec()


class Nameless:
    kind = "Soil Moisture"
    spec = KindSpec()


class NoSpec:
    kind = "soil"
    spec: ClassVar[Any] = {"moisture_pct": [0, 100]}


class OtherSoil:
    kind = "soil"
    spec = KindSpec()


HERE = __name__


@pytest.mark.parametrize(("paths", "message"), [
    ([f"{HERE}:Impostor"], "kind 'water' is built in"),
    ([f"{HERE}:Nameless"], "expected a name like"),
    ([f"{HERE}:NoSpec"], "expected a sensing.decode.KindSpec"),
    ([f"{HERE}:Gauge", f"{HERE}:OtherSoil"], "claimed twice"),
    (["no_such_module:Thing"], "cannot import 'no_such_module'"),
    ([f"{HERE}:Missing"], "has no 'Missing'"),
    (["not a path"], "expected 'package.module:attribute'"),
])
def test_a_broken_plugin_stops_the_start_with_its_name(paths: list[str], message: str) -> None:
    with pytest.raises(PluginError, match=message):
        discover(paths, use_entry_points=False)


def test_a_validation_only_plugin_is_not_simulated(caplog: pytest.LogCaptureFixture) -> None:
    soil = {"id": "soil-1", "kind": "soil", "position": list(CENTRE)}
    cfg = make_config([*fleet(1, 0, 0, 0, 0), soil], plugins=[f"{HERE}.Gauge"])
    assert "soil" in load_kinds(cfg, use_entry_points=False)
    sim = Simulation(cfg, "quiet_day", 1, None, START, zones=[])
    assert [d.id for d in sim.devices] == ["water-00"]
    assert "soil-1" in caplog.text


def test_the_config_rejects_a_malformed_plugin_path() -> None:
    from citywatch.config import ConfigError

    with pytest.raises(ConfigError, match="plugins"):
        make_config(plugins=["wind gauge"])
