"""The router: which (zone, rule) pairs an item concerns, which zone a device's maintenance
alert goes to, and which devices sense a zone. Everything follows from the zones, the hazards'
``sensing`` and the (fixed) device positions, so answers are memoised; the geometry is
``geo.nearby``'s.
"""

from __future__ import annotations

from collections.abc import Mapping

from geo.nearby import NearbyIndex
from geo.position import Position, metres
from geo.zones import Zone
from rules.base import DeviceSite
from rules.engine_state import Item
from rules.hazard import Hazard

Target = tuple[str, str]  # (zone id, hazard)


class Router:
    def __init__(self, zones: Mapping[str, Zone], hazards: Mapping[str, Hazard],
                 nearby: NearbyIndex) -> None:
        self.zones, self.hazards, self.nearby = zones, hazards, nearby
        # Device kinds whose readings also go to zones at a distance (a roof's wind gauge).
        self._routing_kinds = {k for h in hazards.values() if h.sensing.route
                               and h.sensing.radius_m is not None for k in h.sensing.kinds}
        self._routed: dict[tuple[str, Position], tuple[Target, ...]] = {}
        self._fault_zone: dict[tuple[str, tuple[str, ...]], str | None] = {}

    def forget_fleet(self) -> None:
        """The registry changed: the maintenance zones of devices are worked out again."""
        self._fault_zone.clear()

    def targets(self, item: Item) -> list[Target]:
        """Every (zone, hazard) the item is offered to: each hazard of each zone it lies in
        (once each, in order), then the zones it reaches at a distance."""
        out: list[Target] = []
        for zone_id in dict.fromkeys(item.zone_ids):
            zone = self.zones.get(zone_id)
            if zone is None:
                continue  # placed against a zone set this engine was not built with
            out += [(zone_id, h) for h in zone.hazards]
        for zone_id, hazard in self.routed(item.kind, item.position):
            if zone_id not in item.zone_ids:
                out.append((zone_id, hazard))
        return out

    def routed(self, kind: str, position: Position | None) -> tuple[Target, ...]:
        """(zone, hazard) pairs a device of this kind here feeds beyond the zones it lies in:
        those of a hazard that routes its sensing by distance. Devices do not move."""
        if position is None or kind not in self._routing_kinds:
            return ()
        key = (kind, position)
        found = self._routed.get(key)
        if found is None:
            found = tuple(
                (zid, h.name) for h in self.hazards.values()
                if h.sensing.route and h.sensing.radius_m is not None and kind in h.sensing.kinds
                for _, zid in self.nearby.centres_within(position, h.sensing.radius_m, h.name))
            self._routed[key] = found
        return found

    def near(self, position: Position, hazard: str, limit_m: float) -> list[str]:
        """The zones of ``hazard`` whose outline is within ``limit_m`` (a report near them)."""
        return self.nearby.outlines_within(position, limit_m, hazard)

    def fault_zone(self, site: DeviceSite) -> str | None:
        """The zone a device's maintenance alert goes to: the nearest zone it watches from a
        distance (a camera, a roof gauge), else its first hazard zone, else its grid cell, else
        its first zone."""
        memo_key = (site.device_id, site.zone_ids)
        if memo_key in self._fault_zone:
            return self._fault_zone[memo_key]
        known = [self.zones[z] for z in site.zone_ids if z in self.zones]
        found: str | None = None
        if site.position is not None:
            near = [n for h in self.hazards.values()
                    if h.sensing.radius_m is not None and site.kind in h.sensing.kinds
                    for n in self.nearby.centres_within(site.position, h.sensing.radius_m,
                                                        h.name)]
            found = min(near)[1] if near else None
        if found is None:
            found = next((z.id for z in known if z.hazards), None) or \
                next((z.id for z in known if z.type == "grid_cell"), None) or \
                (known[0].id if known else None)
        self._fault_zone[memo_key] = found
        return found

    def sensing(self, zone: Zone, hazard: str, sites: Mapping[str, DeviceSite]) -> list[str]:
        """The devices that sense ``hazard`` in ``zone`` (for its risk: unknown without any)."""
        h = self.hazards.get(hazard)
        if h is None:
            return []
        kinds, radius = h.sensing.kinds, h.sensing.radius_m
        if radius is None:
            return [d for d, s in sites.items() if s.kind in kinds and zone.id in s.zone_ids]
        c = self.nearby.centre(zone.id)
        return [d for d, s in sites.items() if s.kind in kinds and s.position is not None
                and metres(s.position, c) <= radius]
