"""What rules take and give. Pure value objects; the engine builds them from decoded messages."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from rules.levels import Level

Position = tuple[float, float]


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
