"""Frozen messages decoded from the device side of the contract (CONTRACT section 1).

Built only by ``sensing.decode``; everything after decoding can trust them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from geo import position as _position

Position = _position.Position  # (lon, lat) in WGS 84, as in GeoJSON: geo's one spelling


@dataclass(frozen=True, slots=True)
class Telemetry:
    """A periodic measurement. ``(device_id, seq)`` identifies it across redeliveries."""

    device_id: str
    kind: str
    ts: datetime  # when measured, timezone-aware UTC
    seq: int
    values: Mapping[str, float]
    loc: Position | None = None


@dataclass(frozen=True, slots=True)
class Event:
    """A detection or report. ``(device_id, event_id)`` identifies it across redeliveries."""

    device_id: str
    kind: str
    ts: datetime
    seq: int | None  # optional on events: event_id identifies them
    event_id: str
    type: str
    confidence: float | None
    loc: Position | None  # the impact point for a camera, the worker's position for a grid report
    body: Mapping[str, Any] = field(default_factory=dict)  # the whole validated payload


@dataclass(frozen=True, slots=True)
class Status:
    """Presence: ``online`` on connect (retained), ``offline`` as the Last Will."""

    device_id: str
    kind: str
    state: Literal["online", "offline"]


@dataclass(frozen=True, slots=True)
class Rejection:
    """A message that failed validation, with the reason an engineer can act on."""

    topic: str
    reason: str  # a short machine-readable code, e.g. "not_json", "unknown_device"
    detail: str  # a human sentence naming what was wrong
    payload: bytes
    device_id: str | None = None
    kind: str | None = None


@dataclass(frozen=True, slots=True)
class DispatchAck:
    """A team's answer on ``city/dispatch/{team_id}/ack`` (CONTRACT section 2)."""

    team_id: str
    work_order_id: str
    status: Literal["accepted", "on_site", "resolved", "rejected"]
    ts: datetime | None
    note: str = ""


Message = Telemetry | Event | Status | DispatchAck
