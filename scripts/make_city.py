"""Build a synthetic city for scale tests: 10,000 zones and 100,000 devices, deterministic by seed.

    python scripts/make_city.py                       # var/city/: city.yaml, zones, devices
    python scripts/make_city.py --out DIR --zones 10000 --devices 100000 --seed 1

Writes three files into ``--out``:
- ``city.geojson``: one municipality, 10 districts, 100 streets and grid cells as a nested
  regular grid (each cell's ``parent_id`` its street, each street's its district), and the
  remaining zones as hazard zones (underpasses, low roads, intersections, road segments, fall
  zones, school gates, pedestrian areas): small rectangles inside a random grid cell, filed under
  that cell.
- ``devices.csv``: ``id,kind,lon,lat,name``. Water gauges and traffic detectors partly inside
  their hazard zones (two each), cameras beside fall zones, and the rest spread over the cells, as
  a city-wide sensor network is (drain monitors, rain gauges, detectors, grid workers' phones).
- ``city.yaml``: the default ``config.yaml`` with the zones and devices pointed at these files
  (``devices_file``) and a street office, squadron and grid workstation per street.

Nothing here is real geography: it is a square of about 30 km round the case study's centre, so
that the figures of ``bench/bench_registry.py`` are about numbers, not one city's shape.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]

CENTRE = (120.62, 31.30)
SIDE_DEG = 0.30  # about 28 km east-west, 33 km north-south at this latitude
DISTRICTS = (2, 5)  # rows x columns
STREETS_PER_DISTRICT = (2, 5)
# Hazard and sensitive zones, as shares of what is left after the administrative ones.
HAZARD_SHARES = {"underpass": 0.13, "low_road": 0.19, "intersection": 0.24,
                 "road_segment": 0.24, "fall_zone": 0.16, "school_gate": 0.03,
                 "pedestrian_area": 0.01}
# Device kinds, as shares of the fleet.
KIND_SHARES = {"water": 0.30, "rain": 0.05, "traffic": 0.40, "camera": 0.05, "grid": 0.20}
HAZARD_SIZE_DEG = 0.0008  # about 80 m


def _box(x0: float, y0: float, x1: float, y1: float) -> list[list[list[float]]]:
    return [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]


def _feature(zone_id: str, name: str, ztype: str, parent: str | None,
             rings: list[list[list[float]]]) -> dict[str, Any]:
    props: dict[str, Any] = {"id": zone_id, "name": name, "type": ztype}
    if parent is not None:
        props["parent_id"] = parent
    return {"type": "Feature", "properties": props,
            "geometry": {"type": "Polygon", "coordinates": rings}}


def _r(v: float) -> float:
    return round(float(v), 6)


def build(zones_n: int, devices_n: int, seed: int) -> tuple[list[dict[str, Any]],
                                                            list[tuple[str, str, float, float,
                                                                       str]],
                                                            list[str]]:
    """(zone features, device rows, street ids)."""
    rng = np.random.default_rng(seed)
    x0, y0 = CENTRE[0] - SIDE_DEG / 2, CENTRE[1] - SIDE_DEG / 2
    feats = [_feature("city", "Synthetic city", "municipal", None,
                      _box(x0, y0, x0 + SIDE_DEG, y0 + SIDE_DEG))]
    dr, dc = DISTRICTS
    sr, sc = STREETS_PER_DISTRICT
    n_streets = dr * dc * sr * sc
    admin = 1 + dr * dc + n_streets
    # Grid cells: a k x k block per street, with k the largest that leaves room for hazards.
    k = max(1, int(np.sqrt(max(1, (zones_n - admin) * 0.36 / n_streets))))
    rows, cols = dr * sr * k, dc * sc * k
    cw, ch = SIDE_DEG / cols, SIDE_DEG / rows
    streets: list[str] = []
    cells: list[tuple[str, float, float]] = []  # id, min lon, min lat
    for di in range(dr):
        for dj in range(dc):
            did = f"d-{di * dc + dj + 1:02d}"
            dx0, dy0 = x0 + dj * sc * k * cw, y0 + di * sr * k * ch
            feats.append(_feature(did, f"District {did[2:]}", "district", "city",
                                  _box(_r(dx0), _r(dy0), _r(dx0 + sc * k * cw),
                                       _r(dy0 + sr * k * ch))))
            for si in range(sr):
                for sj in range(sc):
                    sid = f"st-{len(streets) + 1:03d}"
                    streets.append(sid)
                    sx0, sy0 = dx0 + sj * k * cw, dy0 + si * k * ch
                    feats.append(_feature(sid, f"Street {sid[3:]}", "street", did,
                                          _box(_r(sx0), _r(sy0), _r(sx0 + k * cw),
                                               _r(sy0 + k * ch))))
                    for ci in range(k):
                        for cj in range(k):
                            cid = f"gc-{len(cells) + 1:05d}"
                            cx0, cy0 = sx0 + cj * cw, sy0 + ci * ch
                            cells.append((cid, cx0, cy0))
                            feats.append(_feature(cid, f"Grid cell {cid[3:]}", "grid_cell", sid,
                                                  _box(_r(cx0), _r(cy0), _r(cx0 + cw),
                                                       _r(cy0 + ch))))
    left = max(0, zones_n - len(feats))
    types = list(HAZARD_SHARES)
    counts = [int(left * HAZARD_SHARES[t]) for t in types]
    counts[0] += left - sum(counts)
    hazard_types = np.repeat(np.array(types), counts)
    host = rng.integers(0, len(cells), size=left)
    # A hazard zone lies wholly inside its cell, so its parent is the cell it is in.
    fx = rng.uniform(0.05, 0.95 - HAZARD_SIZE_DEG / cw, size=left)
    fy = rng.uniform(0.05, 0.95 - HAZARD_SIZE_DEG / ch, size=left)
    hazards: list[tuple[str, str, float, float]] = []  # id, type, min lon, min lat
    for i in range(left):
        cid, cx0, cy0 = cells[int(host[i])]
        hx0, hy0 = cx0 + fx[i] * cw, cy0 + fy[i] * ch
        ztype = str(hazard_types[i])
        hid = f"hz-{i + 1:05d}"
        hazards.append((hid, ztype, hx0, hy0))
        feats.append(_feature(hid, f"{ztype.replace('_', ' ')} {i + 1}", ztype, cid,
                              _box(_r(hx0), _r(hy0), _r(hx0 + HAZARD_SIZE_DEG),
                                   _r(hy0 + HAZARD_SIZE_DEG))))

    devices: list[tuple[str, str, float, float, str]] = []
    kinds = list(KIND_SHARES)
    kcounts = [int(devices_n * KIND_SHARES[k]) for k in kinds]
    kcounts[-1] += devices_n - sum(kcounts)
    by_type: dict[str, list[tuple[str, str, float, float]]] = {}
    for h in hazards:
        by_type.setdefault(h[1], []).append(h)
    inside = {"water": ("underpass", "low_road"), "traffic": ("intersection", "road_segment"),
              "camera": ("fall_zone",)}
    prefix = {"water": "wl", "rain": "rg", "traffic": "tf", "camera": "cam", "grid": "grid"}
    for kind, n in zip(kinds, kcounts, strict=True):
        homes = [h for t in inside.get(kind, ()) for h in by_type.get(t, [])]
        # Two per hazard zone (a camera one, beside it), the rest over the cells.
        per = 1 if kind == "camera" else 2
        in_zone = min(n, per * len(homes))
        u = rng.uniform(0.1, 0.9, size=(n, 2))
        cell_pick = rng.integers(0, len(cells), size=n)
        for i in range(n):
            did = f"{prefix[kind]}-{i + 1:06d}"
            if i < in_zone:
                hid, htype, hx0, hy0 = homes[i // per]
                if kind == "camera":  # on a roof beside the fall zone, looking at it
                    lon, lat = hx0 - HAZARD_SIZE_DEG * u[i, 0], hy0 + HAZARD_SIZE_DEG * u[i, 1]
                else:
                    lon = hx0 + HAZARD_SIZE_DEG * u[i, 0]
                    lat = hy0 + HAZARD_SIZE_DEG * u[i, 1]
                name = f"{kind} at {htype.replace('_', ' ')} {hid}"
            else:
                cid, cx0, cy0 = cells[int(cell_pick[i])]
                lon, lat = cx0 + cw * u[i, 0], cy0 + ch * u[i, 1]
                name = f"{kind} in grid cell {cid}"
            devices.append((did, kind, _r(lon), _r(lat), name))
    return feats, devices, streets


def city_config(template: dict[str, Any], streets: list[str], zones_file: str,
                devices_file: str) -> dict[str, Any]:
    """The default configuration with this city's zones, devices and street offices."""
    cfg = dict(template)
    cfg["district"] = "Synthetic city (scripts/make_city.py)"
    cfg["zones"] = {"file": zones_file}
    cfg["devices"] = []
    cfg["devices_file"] = devices_file
    # The case study's street-level offices name its streets: replace them with this city's.
    depts = [d for d in cfg["departments"] if not d.get("zone_id")]
    teams_of = {d["id"] for d in depts}
    teams = [t for t in cfg["teams"] if t["department"] in teams_of]
    for sid in streets:
        for what, level in (("office", "street"), ("squadron", "street"), ("grid", "grid")):
            dep = f"{what}-{sid}"
            depts.append({"id": dep, "name": f"{what.title()} of {sid}", "level": level,
                          "zone_id": sid})
            teams.append({"id": f"{dep}-1", "name": f"{what.title()} desk of {sid}",
                          "department": dep})
    cfg["departments"] = depts
    cfg["teams"] = teams
    return cfg


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=REPO / "var" / "city")
    p.add_argument("--zones", type=int, default=10_000)
    p.add_argument("--devices", type=int, default=100_000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--template", type=Path, default=REPO / "config.yaml",
                   help="the configuration to take rules, routing and departments from")
    args = p.parse_args(argv)
    if args.zones < 200 or args.devices < 1:
        p.error("--zones must be at least 200 (the administrative grid) and --devices 1")
    feats, devices, streets = build(args.zones, args.devices, args.seed)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "city.geojson", "w", encoding="utf-8") as f:
        json.dump({"type": "FeatureCollection", "features": feats}, f, separators=(",", ":"))
    with open(out / "devices.csv", "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(("id", "kind", "lon", "lat", "name"))
        w.writerows(devices)
    template = yaml.safe_load(args.template.read_text(encoding="utf-8"))
    cfg = city_config(template, streets, "city.geojson", "devices.csv")
    header = ("# GENERATED by scripts/make_city.py "
              f"(--zones {args.zones} --devices {args.devices} --seed {args.seed}); "
              "a synthetic city for scale tests.\n")
    (out / "city.yaml").write_text(header + yaml.safe_dump(cfg, sort_keys=False, width=100),
                                   encoding="utf-8")
    print(f"{out}: {len(feats)} zones, {len(devices)} devices, {len(streets)} streets",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
