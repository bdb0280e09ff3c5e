"""Zone value objects."""

from __future__ import annotations

from dataclasses import dataclass

from shapely.geometry.base import BaseGeometry

# Zone types and the hazards each carries (CONTRACT section 4 exposes both).
ZONE_TYPE_HAZARDS: dict[str, tuple[str, ...]] = {
    "underpass": ("waterlogging",),
    "low_road": ("waterlogging",),
    "fall_zone": ("falling_object",),
    "intersection": ("traffic",),
    "road_segment": ("traffic",),
    "district": (),
    "street": (),
    "grid_cell": (),
}


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
