"""Zone value objects."""

from __future__ import annotations

from dataclasses import dataclass

from shapely.geometry.base import BaseGeometry

# Zone types and the hazards each carries (CONTRACT section 4 exposes both).
# Pedestrian areas and school gates carry no alert of their own: a falling object whose impact
# lies in one is red in its fall zone (people are there), and the fall zone's alert is the one
# building management acts on. The administrative types carry none either; alerts learn their
# grid cell and street from them (``ZoneIndex.hierarchy_of``).
ZONE_TYPE_HAZARDS: dict[str, tuple[str, ...]] = {
    "underpass": ("waterlogging",),
    "low_road": ("waterlogging",),
    "fall_zone": ("falling_object",),
    "intersection": ("traffic",),
    "road_segment": ("traffic",),
    "pedestrian_area": (),
    "school_gate": (),
    "municipal": (),
    "district": (),
    "street": (),
    "community": (),
    "grid_cell": (),
}
# The administrative hierarchy of the case study, from the top down (street: jiedao or
# township; community: shequ).
ADMIN_LEVELS: tuple[str, ...] = ("municipal", "district", "street", "community", "grid_cell")
SENSITIVE_TYPES: tuple[str, ...] = ("pedestrian_area", "school_gate")


@dataclass(frozen=True, slots=True)
class Zone:
    id: str
    name: str
    type: str
    geometry: BaseGeometry  # WGS 84 (lon, lat), valid, non-empty
    parent_id: str | None = None

    @property
    def hazards(self) -> tuple[str, ...]:
        return ZONE_TYPE_HAZARDS.get(self.type, ())
