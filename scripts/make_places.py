"""Build ``data/zones/gusu_places.json``: the names a resident may give for a place in the district.

Reproducible: the same inputs give byte-identical output. Run from anywhere:

    python scripts/make_places.py            # write the file
    python scripts/make_places.py --check    # exit 1 if the committed file is out of date

What it holds (geocoding is offline: ``geo.gazetteer`` resolves addresses from this and from the
zones themselves, nothing is asked of a map service):
- ``roads``: the roads that the district's zones are drawn on, with their Chinese names. The
  English names come from the zone names in ``data/zones/gusu.geojson``; the Chinese ones are the
  roads' usual names, written by the project (``ROADS_ZH`` below).
- ``landmarks``: named places the zone names mention (a gate, a garden, a bridge, a pagoda), in
  both languages, placed on a zone that contains them (the project's placement).
- ``pois``: named buildings of OpenStreetMap (``../shared/data/suzhou``, ODbL) inside the
  district whose name occurs once, at the centre of their footprint.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import shapely
from shapely.geometry import Polygon, shape

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "suzhou"
ZONES = REPO / "data" / "zones" / "gusu.geojson"
OUT = REPO / "data" / "zones" / "gusu_places.json"

# English road name (as in the zone names) -> its Chinese name.
ROADS_ZH: dict[str, str] = {
    "Renmin Road": "人民路",
    "Ganjiang Road": "干将路",
    "Ganjiang East Road": "干将东路",
    "Lindun Road": "临顿路",
    "Guangji Road": "广济路",
    "Jinmen Road": "金门路",
    "Zhuhui Road": "竹辉路",
    "Baita West Road": "白塔西路",
    "Baita East Road": "白塔东路",
    "Shiquan Street": "十全街",
    "Shantang Street": "山塘街",
    "Xujiang Road": "胥江路",
    "Pingjiang Road": "平江路",
    "Pingqi Road": "平齐路",
    "Xihuan Road": "西环路",
    "Nanmen Road": "南门路",
    "Fenghuang Street": "凤凰街",
    "Tongjing North Road": "通井北路",
}
# Landmark (English, Chinese) -> the zone that holds it.
LANDMARKS: dict[tuple[str, str], str] = {
    ("Leqiao", "乐桥"): "x-01",
    ("Guanqian", "观前"): "rs-02",
    ("Changmen", "阊门"): "rs-05",
    ("Xumen", "胥门"): "lr-05",
    ("Xiangmen", "相门"): "lr-02",
    ("Wangshi Garden", "网师园"): "lr-01",
    ("Beisi Pagoda", "北寺塔"): "fz-01",
    ("Suzhou Centre", "苏州中心"): "pa-01",
    ("Global 188", "环球188"): "pa-02",
}
_ROAD = re.compile(r"\b([A-Z][a-z]+(?: (?:East|West|North|South))? (?:Road|Street))\b")
# Building names that say nothing on their own (a block letter, "Building 5", a library).
_GENERIC = re.compile(r"^([A-Za-z]?\d*[#栋座号楼区档]*|.{0,2}|\D{0,3} ?\d+|"
                      r".*(宿舍|教学|实验|看台|号楼|餐厅|图书馆|体育馆|游泳馆|报告厅|行政楼|综合楼|办公楼|住院|门诊|入口|大厅|"
                      r"Home).*)$")


def _round(x: float) -> float:
    return round(x, 6)


def build() -> dict[str, Any]:
    zones = json.loads(ZONES.read_text(encoding="utf-8"))["features"]
    by_id = {f["properties"]["id"]: f for f in zones}
    area = shapely.union_all([shape(f["geometry"]) for f in zones
                              if f["properties"]["type"] == "district"])
    roads: dict[str, dict[str, Any]] = {}
    for f in zones:
        for name in _ROAD.findall(f["properties"]["name"]):
            road = roads.setdefault(name, {"en": name, "zh": ROADS_ZH.get(name), "zones": []})
            road["zones"].append(f["properties"]["id"])
    unknown = sorted(n for n, r in roads.items() if r["zh"] is None)
    if unknown:
        raise SystemExit(f"no Chinese name for {unknown}: add them to ROADS_ZH")
    landmarks = []
    for (en, zh), zone_id in LANDMARKS.items():
        p = shape(by_id[zone_id]["geometry"]).representative_point()
        landmarks.append({"en": en, "zh": zh, "zone_id": zone_id,
                          "position": [_round(p.x), _round(p.y)]})
    pois = []
    for source in ("gusu_oldtown_osm_buildings_8242.json",
                   "suzhou_osm_buildings_2000_with_height.json"):
        buildings = json.loads((SHARED / source).read_text(encoding="utf-8"))["buildings"]
        names = Counter(b.get("name") or "" for b in buildings)
        for b in buildings:
            name = (b.get("name") or "").strip()
            if not name or names[name] > 1 or _GENERIC.match(name):
                continue
            footprint = Polygon(b["coords"])
            if not footprint.is_valid or footprint.is_empty:
                continue
            c = footprint.centroid
            if not area.covers(c):
                continue
            pois.append({"zh": name, "position": [_round(c.x), _round(c.y)],
                         "source": source})
    seen: set[str] = set()
    unique = []
    for p in sorted(pois, key=lambda p: (p["zh"], p["position"])):
        if p["zh"] not in seen:
            seen.add(p["zh"])
            unique.append(p)
    return {
        "about": "Place names of the default district for offline geocoding of residents' "
                 "addresses; generated by scripts/make_places.py. Roads and landmarks: the "
                 "project's; pois: OpenStreetMap (c) OpenStreetMap contributors, ODbL 1.0.",
        "roads": sorted(roads.values(), key=lambda r: r["en"]),
        "landmarks": landmarks,
        "pois": unique,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="fail if the file is out of date")
    args = ap.parse_args()
    text = json.dumps(build(), ensure_ascii=False, indent=1, sort_keys=True) + "\n"
    if args.check:
        current = OUT.read_text(encoding="utf-8") if OUT.exists() else ""
        if current != text:
            print(f"{OUT} is out of date: run python scripts/make_places.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text, encoding="utf-8")
    data = json.loads(text)
    print(f"wrote {OUT}: {len(data['roads'])} roads, {len(data['landmarks'])} landmarks, "
          f"{len(data['pois'])} named buildings")
    return 0


if __name__ == "__main__":
    sys.exit(main())
