"""Offline geocoding: a resident's address in words to a place of the district (pure).

No map service is asked. What can be resolved is what the district's own data names:

- a zone by its name ("Renmin Road underpass", "Grid cell 19");
- a landmark or a named building ("乐桥", "北寺塔", "苏州中心"), from ``gusu_places.json``
  (``scripts/make_places.py``: the project's landmarks and OpenStreetMap's named buildings);
- a road the zones are drawn on, with a crossing road or a kind of place ("人民路干将路口",
  "Renmin Road underpass", "十全街低洼路段"), when that leaves one zone.

A road alone ("人民路", several kilometres) or a whole subdistrict is too coarse: ``resolve``
says so, and the caller asks for a crossing road, a landmark, or a point on the map. House
numbers are not known (no address register is available to the project).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from geo.position import Position
from geo.zones import Zone

# Words that say which kind of zone a road's mention means.
_TYPE_WORDS: Final[Mapping[str, tuple[str, ...]]] = {
    "underpass": ("underpass", "tunnel", "地道", "下穿", "隧道", "涵洞", "桥洞", "下立交"),
    "low_road": ("low section", "low road", "低洼", "低洼路段", "低点", "low point"),
    "intersection": (" x ", " and ", " & ", "/", "crossing", "junction", "intersection",
                     "路口", "交叉口", "交界", "十字"),
    "road_segment": ("section", "路段", "段"),
}
_SLUG = re.compile(r"[^a-z0-9]+")
_PAREN = re.compile(r"\s*[(（][^)）]*[)）]")


def _slug(text: str) -> str:
    return _SLUG.sub("-", text.lower()).strip("-")


def _norm(text: str) -> str:
    import unicodedata
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


@dataclass(frozen=True, slots=True)
class Place:
    id: str  # "road:renmin-road", "landmark:leqiao", "poi:北寺塔", "zone:up-01"
    kind: str  # road, landmark, poi, zone
    names: tuple[str, ...]
    position: Position | None  # None for a road (it is long)
    zone_ids: tuple[str, ...] = ()  # a road: the zones drawn on it; a landmark: its zone


@dataclass(frozen=True, slots=True)
class Resolved:
    position: Position
    label: str  # the place it resolved to, in words
    place_id: str


@dataclass(frozen=True, slots=True)
class Unresolved:
    reason: str


class Gazetteer:
    """The district's place names. Build with ``Gazetteer.load(zones, places_file)``."""

    def __init__(self, zones: Sequence[Zone], places: Sequence[Place]) -> None:
        self._zones = {z.id: z for z in zones}
        road_names = {_norm(n) for p in places if p.kind == "road" for n in p.names}
        zone_places = []
        for z in zones:
            names = {z.name, _PAREN.sub("", z.name).strip()}
            # "Renmin Road (Guanqian section)" is not all of Renmin Road
            names = {n for n in names if n == z.name or _norm(n) not in road_names}
            names |= {m.strip() for m in re.findall(r"[(（]([^)）]*)[)）]", z.name)
                      if re.search(r"[\u4e00-\u9fff]", m)}  # "Pingjiang Subdistrict (平江街道)"
            names |= {n.removesuffix(", fall zone") for n in names}
            zone_places.append(Place(f"zone:{z.id}", "zone", tuple(sorted(n for n in names if n)),
                                     _point(z), (z.id,)))
        self.places: dict[str, Place] = {p.id: p for p in [*zone_places, *places]}
        # name (normalised) -> place id; a longer, more specific name wins where they overlap
        self.names: dict[str, str] = {}
        for p in self.places.values():
            for n in p.names:
                key = _norm(n)
                if len(key) >= 2 and key not in self.names:
                    self.names[key] = p.id

    @classmethod
    def load(cls, zones: Sequence[Zone], places_file: Path | None) -> Gazetteer:
        """The zones' own names, plus ``places_file`` (``gusu_places.json``) when given."""
        if places_file is None:
            return cls(zones, [])
        data = json.loads(places_file.read_text(encoding="utf-8"))
        return cls(zones, places_of(data, {z.id for z in zones}))

    def mentions(self, text: str) -> list[Place]:
        """The places a text names, longest names first, overlapping shorter ones dropped."""
        t = _norm(text)
        found: list[tuple[int, int, str]] = []
        for name, pid in self.names.items():
            latin = not re.search(r"[\u3400-\u9fff]", name)
            pattern = (rf"(?<![a-z0-9]){re.escape(name)}(?![a-z0-9])" if latin
                       else re.escape(name))
            for m in re.finditer(pattern, t):
                found.append((m.start(), m.end(), pid))
        found.sort(key=lambda f: (-(f[1] - f[0]), f[0]))
        taken: list[tuple[int, int]] = []
        out: list[Place] = []
        for start, end, pid in found:
            if any(start < e and s < end for s, e in taken):
                continue
            taken.append((start, end))
            if self.places[pid] not in out:
                out.append(self.places[pid])
        return out

    def resolve(self, address: str) -> Resolved | Unresolved:
        """Where an address in words is, or why it cannot be told."""
        if not address.strip():
            return Unresolved("no address given")
        named = self.mentions(address)
        if not named:
            return Unresolved(f"{address!r} names no road, landmark or zone of the district "
                              "that citywatch knows; give a crossing road, a landmark, or a "
                              "point on the map")
        for kind in ("zone", "landmark", "poi"):
            exact = [p for p in named if p.kind == kind and p.position is not None]
            if kind == "zone":
                exact = [p for p in exact if self._zones[p.zone_ids[0]].type
                         not in ("district", "street")]
            if exact:
                p = exact[0]
                return Resolved(p.position, p.names[0], p.id)  # type: ignore[arg-type]
        roads = [p for p in named if p.kind == "road"]
        if roads:
            return self._on_roads(address, roads)
        coarse = named[0]
        return Unresolved(f"{coarse.names[0]} is a whole subdistrict or district; give a "
                          "crossing road, a landmark, or a point on the map")

    def _on_roads(self, address: str, roads: Sequence[Place]) -> Resolved | Unresolved:
        t = f" {_norm(address)} "
        kinds = [k for k, words in _TYPE_WORDS.items() if any(w in t for w in words)]
        if "low_road" in kinds and "road_segment" in kinds:
            kinds.remove("road_segment")  # "低洼路段" is a low section, not a road segment
        candidates = set(roads[0].zone_ids)
        for r in roads[1:]:
            candidates &= set(r.zone_ids)
        if kinds:
            typed = {z for z in candidates if self._zones[z].type in kinds}
            candidates = typed or candidates
        if len(roads) >= 2:
            crossing = {z for z in candidates if self._zones[z].type == "intersection"}
            candidates = crossing or candidates
        if len(candidates) > 1:
            for words, side in (((" north", "北"), "north"), ((" south", "南"), "south")):
                if any(w in t for w in words):
                    sided = {z for z in candidates if side in self._zones[z].name.lower()}
                    candidates = sided or candidates
        names = " x ".join(r.names[0] for r in roads)
        if len(candidates) == 1:
            zone = self._zones[next(iter(candidates))]
            pos = _point(zone)
            assert pos is not None
            return Resolved(pos, zone.name, f"zone:{zone.id}")
        if not candidates:
            return Unresolved(f"{names}: no place of the district lies on all of them; give a "
                              "landmark or a point on the map")
        return Unresolved(f"{names} runs through {len(candidates)} places of the district; "
                          "give a crossing road, a landmark, or a point on the map")

    def vocabulary(self) -> dict[str, str]:
        """Every name -> the place it names, for text similarity (``alerts.appeal_text``):
        roads and landmarks in both languages meet as one feature."""
        return dict(self.names)


def places_of(data: Mapping[str, Any], zone_ids: set[str]) -> list[Place]:
    """Places from a ``gusu_places.json`` document."""
    out: list[Place] = []
    for r in data.get("roads", []):
        names = tuple(n for n in (r.get("en"), r.get("zh")) if n)
        out.append(Place(f"road:{_slug(r['en'])}", "road", names, None,
                         tuple(z for z in r.get("zones", []) if z in zone_ids)))
    for lm in data.get("landmarks", []):
        names = tuple(n for n in (lm.get("en"), lm.get("zh")) if n)
        out.append(Place(f"landmark:{_slug(lm['en'])}", "landmark", names,
                         (float(lm["position"][0]), float(lm["position"][1])),
                         (lm["zone_id"],) if lm.get("zone_id") in zone_ids else ()))
    for p in data.get("pois", []):
        out.append(Place(f"poi:{p['zh']}", "poi", (p["zh"],),
                         (float(p["position"][0]), float(p["position"][1]))))
    return out


def _point(zone: Zone) -> Position | None:
    if zone.geometry.is_empty:
        return None
    p = zone.geometry.representative_point()
    return (round(float(p.x), 6), round(float(p.y), 6))
