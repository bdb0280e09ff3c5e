"""Partitions past one machine: which zones go together, and which partitions a message reaches.

A partition is a street (jiedao) with everything under it: its grid cells and the hazard zones in
them. A zone's rule state lives in its partition only, so one engine worker at a time owns it. A
zone with no street above it forms a partition of its top ancestor (a district without streets).

A message goes to its device's *home* partition, where it is stored and evaluated, and to the
*mirror* partitions whose zones read it across a street's edge, where it is only evaluated:

- a rain gauge's telemetry reaches every partition with a waterlogging zone whose centre is
  within the catchment radius (the rain outlook of rules.rain);
- a camera's events reach every partition with a fall zone within the camera's range (the
  impact decides the zone);
- a grid worker's events (reports, with their own ``loc``) reach every partition: a worker walks
  anywhere, and reports are few.

Everything here is a pure function of the zones and the device registry, fixed at start.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from geo.zones import Zone

Position = tuple[float, float]
GROUP_TYPE = "street"
HOME, MIRROR = "h", "m"


def metres(a: Position, b: Position) -> float:
    """Equirectangular distance: exact enough over a city some tens of km across."""
    dx = (a[0] - b[0]) * 111_320 * math.cos(math.radians((a[1] + b[1]) / 2))
    dy = (a[1] - b[1]) * 110_540
    return math.hypot(dx, dy)


@dataclass(frozen=True, slots=True)
class Site:
    device_id: str
    kind: str
    position: Position | None
    zone_ids: tuple[str, ...]


@dataclass(frozen=True)
class Partitioning:
    partitions: tuple[str, ...]
    zone_partition: Mapping[str, str]
    home: Mapping[str, str]  # device -> its partition
    # (device, channel) -> partitions that also read it; "*" for every partition
    mirrors: Mapping[tuple[str, str], tuple[str, ...]] = field(default_factory=dict)

    def route(self, device_id: str, channel: str) -> list[tuple[str, str]]:
        """[(partition, HOME or MIRROR)] for a device's message on ``channel``: home first.
        A device not in the registry goes to the first partition, which stores and rejects it
        as the single-machine engine would."""
        home = self.home.get(device_id, self.partitions[0])
        out = [(home, HOME)]
        for p in self.mirrors.get((device_id, channel), ()):
            if p != home:
                out.append((p, MIRROR))
        return out

    def zones_of(self, partition: str) -> set[str]:
        return {z for z, p in self.zone_partition.items() if p == partition}

    def devices_of(self, partition: str) -> set[str]:
        return {d for d, p in self.home.items() if p == partition}


def zone_partitions(zones: Sequence[Zone]) -> dict[str, str]:
    """Each zone's street, found up its parents; a zone with none: its top ancestor."""
    by_id = {z.id: z for z in zones}
    out: dict[str, str] = {}
    for z in zones:
        seen: set[str] = set()
        cur: Zone | None = z
        top = z.id
        found: str | None = None
        while cur is not None and cur.id not in seen:
            seen.add(cur.id)
            top = cur.id
            if cur.type == GROUP_TYPE:
                found = cur.id
                break
            cur = by_id.get(cur.parent_id) if cur.parent_id else None
        out[z.id] = found or top
    return out


def partition(zones: Sequence[Zone], sites: Iterable[Site], *, catchment_radius_m: float,
              camera_range_m: float) -> Partitioning:
    zp = zone_partitions(zones)
    by_id = {z.id: z for z in zones}
    centres = {z.id: (p.x, p.y) for z in zones
               for p in (z.geometry.representative_point(),)}
    parts = tuple(sorted({zp[z.id] for z in zones if z.hazards} or set(zp.values())))
    home: dict[str, str] = {}
    mirrors: dict[tuple[str, str], tuple[str, ...]] = {}

    def near(pos: Position, hazard: str, radius: float) -> tuple[str, ...]:
        return tuple(sorted({zp[z.id] for z in zones if hazard in z.hazards
                             and metres(pos, centres[z.id]) <= radius}))

    for s in sites:
        known = [by_id[z] for z in s.zone_ids if z in by_id]
        first = (next((z for z in known if z.hazards), None)
                 or next((z for z in known if z.type == "grid_cell"), None)
                 or (known[0] if known else None))
        if first is not None and zp[first.id] in parts:
            home[s.device_id] = zp[first.id]
        elif s.position is not None:  # outside every hazard partition: the nearest one
            best = min((z for z in zones if zp[z.id] in parts),
                       key=lambda z: metres(s.position or (0.0, 0.0), centres[z.id]))
            home[s.device_id] = zp[best.id]
        else:
            home[s.device_id] = parts[0]
        if s.position is None:
            continue
        if s.kind == "rain":
            mirrors[(s.device_id, "telemetry")] = near(s.position, "waterlogging",
                                                       catchment_radius_m)
        elif s.kind == "camera":
            mirrors[(s.device_id, "event")] = near(s.position, "falling_object",
                                                   camera_range_m)
    for s in sites:
        if s.kind == "grid":
            mirrors[(s.device_id, "event")] = parts
    return Partitioning(parts, zp, home, mirrors)
