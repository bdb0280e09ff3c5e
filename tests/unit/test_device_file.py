"""A city's devices from a CSV file (``devices_file``): checked in bulk, each problem by line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from citywatch.config import ConfigError, Device, load_config, parse_config
from citywatch.device_file import read_devices

REPO = Path(__file__).resolve().parents[2]
HEADER = "id,kind,lon,lat,name\n"


def write(tmp_path: Path, body: str, header: str = HEADER) -> Path:
    path = tmp_path / "devices.csv"
    path.write_text(header + body, encoding="utf-8")
    return path


def test_devices_read_from_a_file_equal_validated_ones(tmp_path: Path) -> None:
    path = write(tmp_path, "wl-1,water,120.61,31.3,gauge one\ncam_2,camera,-0.5,51.5,\n")
    got = read_devices(path)
    want = [Device(id="wl-1", kind="water", position=(120.61, 31.3), name="gauge one"),
            Device(id="cam_2", kind="camera", position=(-0.5, 51.5), name="")]
    assert got == want
    assert [d.model_dump() for d in got] == [d.model_dump() for d in want]
    assert got[0].model_fields_set == want[0].model_fields_set | {"name"}
    with pytest.raises(Exception, match="frozen"):
        got[0].id = "other"


@pytest.mark.parametrize(("row", "expected"), [
    ("bad id!,water,120,31,x", "line 2: id: expected 1 to 64 of letters"),
    ("ok,Water,120,31,x", "line 2: kind: expected a kind name"),
    ("ok,water,200,31,x", "line 2: lon: expected a number in -180..180 (got '200'"),
    ("ok,water,120,,x", "line 2: lat: expected a number in -90..90"),
    ("ok,water,120,north,x", "line 2: lat: expected a number in -90..90"),
])
def test_a_bad_row_is_named_by_line_and_column(tmp_path: Path, row: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=r"devices\.csv") as exc:
        read_devices(write(tmp_path, row + "\n"))
    assert expected in str(exc.value)


def test_every_problem_is_listed_at_once_and_duplicates_found(tmp_path: Path) -> None:
    body = "a,water,120,31,\nb,water,999,31,\na,rain,120,31,\n"
    with pytest.raises(ConfigError) as exc:
        read_devices(write(tmp_path, body))
    text = str(exc.value)
    assert "line 3: lon" in text and "line 4: id: appears twice" in text


def test_missing_or_unknown_columns_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no column 'lat'"):
        read_devices(write(tmp_path, "a,water,120\n", header="id,kind,lon\n"))
    with pytest.raises(ConfigError, match=r"unknown column.*'colour'"):
        read_devices(write(tmp_path, "a,water,120,31,red\n", header="id,kind,lon,lat,colour\n"))


def test_the_config_adds_the_file_to_the_listed_devices(tmp_path: Path) -> None:
    raw: dict[str, Any] = yaml.safe_load((REPO / "config.yaml").read_text(encoding="utf-8"))
    raw["zones"]["file"] = str(REPO / "data" / "zones" / "gusu.geojson")
    write(tmp_path, "extra-1,water,120.61,31.3,\n")
    cfg = parse_config({**raw, "devices_file": "devices.csv"}, base_dir=tmp_path, env={})
    assert len(cfg.devices) == 90 and cfg.devices[-1].id == "extra-1"
    # A device in the file that is also listed is a duplicate like any other.
    write(tmp_path, "wl-01,water,120.61,31.3,\n")
    with pytest.raises(ConfigError, match="'wl-01' appears twice"):
        parse_config({**raw, "devices_file": "devices.csv"}, base_dir=tmp_path, env={})


def test_the_synthetic_city_loads(tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(REPO / "scripts" / "make_city.py"), "--out",
                    str(tmp_path), "--zones", "400", "--devices", "2000", "--seed", "3"],
                   check=True, capture_output=True)
    cfg = load_config(tmp_path / "city.yaml", env={})
    assert len(cfg.devices) == 2000
    assert {d.kind for d in cfg.devices} == {"water", "rain", "traffic", "camera", "grid"}
    again = tmp_path / "again"
    subprocess.run([sys.executable, str(REPO / "scripts" / "make_city.py"), "--out",
                    str(again), "--zones", "400", "--devices", "2000", "--seed", "3"],
                   check=True, capture_output=True)
    for name in ("city.geojson", "devices.csv"):  # deterministic by seed
        assert (tmp_path / name).read_bytes() == (again / name).read_bytes()


def test_the_registry_is_the_configuration_with_the_api_changes_on_top() -> None:
    from datetime import UTC, datetime

    from citywatch.device_admin import merge
    from sensing.device_registry import Entry

    now = datetime(2026, 12, 5, tzinfo=UTC)
    listed = (Device(id="a", kind="water", position=(120.0, 31.0)),
              Device(id="b", kind="rain", position=(120.1, 31.1)),
              Device(id="c", kind="grid", position=(120.2, 31.2)))
    entries = [Entry("b", "rain", 121.0, 32.0, "moved", None, now, "admin"),
               Entry("c", "grid", 120.2, 31.2, "", now, now, "admin"),
               Entry("z", "camera", 120.3, 31.3, "new", None, now, "admin"),
               Entry("y", "camera", 120.3, 31.3, "added then retired", now, now, "admin")]
    got = merge(listed, entries)
    assert [(d.id, d.position, d.name) for d in got] == [
        ("a", (120.0, 31.0), ""), ("b", (121.0, 32.0), "moved"), ("z", (120.3, 31.3), "new")]
