"""What rules take and give. Pure value objects; the engine builds them from decoded messages."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from geo.position import Position
from rules.levels import Level

if TYPE_CHECKING:
    from rules.rain import Outlook


# Alerts beyond the three CONTRACT hazards. A maintenance alert for a faulty device (its zone is
# the device's first hazard zone), and a pattern of falling objects at one building.
DEVICE_FAULT = "device_fault"
FALLING_OBJECT_PATTERN = "falling_object_pattern"
# The deadline of a state restored after a restart: due at the first tick, which starts its clock.
RESTORED_DUE = datetime.min.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class DeviceSite:
    """A registered device as the rules see it: its kind, position and zones (most specific
    hazard zones are found by type, so the order is the index's)."""

    device_id: str
    kind: str
    position: Position | None
    zone_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Observation:
    """A telemetry reading placed in its zones (the composition root assigns ``zone_ids``)."""

    device_id: str
    kind: str
    ts: datetime
    seq: int
    values: Mapping[str, float]
    position: Position | None
    zone_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Detection:
    """An event (camera detection, traffic incident, grid report) placed in its zones."""

    device_id: str
    kind: str
    ts: datetime
    event_id: str
    type: str
    confidence: float | None
    position: Position | None
    zone_ids: tuple[str, ...]
    attrs: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AlertChange:
    """A rule's verdict for one (zone, hazard): a new level, or ``None`` when it clears."""

    zone_id: str
    hazard: str
    level: Level | None
    ts: datetime
    title: str
    evidence: tuple[Mapping[str, Any], ...] = ()


class RuleContext(Protocol):
    """What the engine tells a rule about the world beyond its own zone, as of now."""

    def trusted(self, device_id: str) -> bool:
        """Whether the device's readings may drive hazards (device health)."""
        ...

    def rain(self, zone_id: str) -> Outlook | None:
        """The rainstorm signal over the zone's catchment (None: no trusted rain gauge)."""
        ...

    def zone_type(self, zone_id: str) -> str | None: ...


class NoContext:
    """A context for a rule used on its own: every device trusted, no rain known."""

    def trusted(self, device_id: str) -> bool:  # noqa: ARG002 -- the RuleContext interface
        return True

    def rain(self, zone_id: str) -> Outlook | None:  # noqa: ARG002
        return None

    def zone_type(self, zone_id: str) -> str | None:  # noqa: ARG002
        return None


NO_CONTEXT = NoContext()
