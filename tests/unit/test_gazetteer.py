"""Offline geocoding of addresses in words (geo.gazetteer) on the default district."""

from __future__ import annotations

from pathlib import Path

import pytest

from geo.gazetteer import Gazetteer, Resolved, Unresolved
from geo.load import load_zones

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def g() -> Gazetteer:
    return Gazetteer.load(load_zones(REPO / "data" / "zones" / "gusu.geojson"),
                          REPO / "data" / "zones" / "gusu_places.json")


@pytest.mark.parametrize(("address", "place"), [
    ("人民路干将路口", "zone:x-01"),
    ("Renmin Road x Ganjiang Road", "zone:x-01"),
    ("临顿路干将路路口", "zone:x-02"),
    ("广济路地道", "zone:up-02"),
    ("人民路北地道", "zone:up-01"),
    ("十全街低洼路段", "zone:lr-01"),
    ("Lindun Road low section", "zone:lr-03"),
    ("北寺塔附近", "landmark:beisi-pagoda"),
    ("乐桥", "landmark:leqiao"),
    ("Grid cell 19", "zone:cell-19"),
])
def test_known_places_resolve(g: Gazetteer, address: str, place: str) -> None:
    got = g.resolve(address)
    assert isinstance(got, Resolved), got
    assert got.place_id == place


@pytest.mark.parametrize(("address", "why"), [
    ("人民路", "runs through 7 places"),
    ("人民路地道", "runs through 2 places"),
    ("平江街道", "a whole subdistrict"),
    ("somewhere nice", "names no road, landmark or zone"),
    ("", "no address given"),
])
def test_too_coarse_or_unknown_addresses_say_why(g: Gazetteer, address: str, why: str) -> None:
    got = g.resolve(address)
    assert isinstance(got, Unresolved)
    assert why in got.reason
