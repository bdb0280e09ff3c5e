"""Zone value objects."""

from __future__ import annotations

from dataclasses import dataclass

from shapely.geometry.base import BaseGeometry

# Zone types, and the hazards each carries (CONTRACT section 4 exposes both). A hazard says which
# zone types carry it (``rules.hazard.Hazard.zone_types``); the hazard registry binds it here when
# it registers (``rules.registry``), so geo needs to know no hazard by name.
# Pedestrian areas and school gates carry no alert of their own: a falling object whose impact
# lies in one is red in its fall zone (people are there), and the fall zone's alert is the one
# building management acts on. The administrative types carry none either; alerts learn their
# grid cell and street from them (``ZoneIndex.hierarchy_of``).
ZONE_TYPES: tuple[str, ...] = (
    "underpass", "low_road", "fall_zone", "intersection", "road_segment", "pedestrian_area",
    "school_gate", "municipal", "district", "street", "community", "grid_cell")
ZONE_TYPE_HAZARDS: dict[str, tuple[str, ...]] = dict.fromkeys(ZONE_TYPES, ())


def bind_hazard(hazard: str, zone_types: tuple[str, ...]) -> None:
    """Zones of these types carry ``hazard`` (called by the hazard registry)."""
    unknown = [t for t in zone_types if t not in ZONE_TYPE_HAZARDS]
    if unknown:
        raise ValueError(f"hazard {hazard!r}: unknown zone types {unknown}; known: "
                         f"{', '.join(ZONE_TYPE_HAZARDS)}")
    for t in zone_types:
        if hazard not in ZONE_TYPE_HAZARDS[t]:
            ZONE_TYPE_HAZARDS[t] = (*ZONE_TYPE_HAZARDS[t], hazard)


def unbind_hazard(hazard: str) -> None:
    for t, hazards in ZONE_TYPE_HAZARDS.items():
        ZONE_TYPE_HAZARDS[t] = tuple(h for h in hazards if h != hazard)


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
