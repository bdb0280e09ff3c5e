"""What every simulated device shares: seq, event ids, battery, timestamps, payload shapes.

Pure: no MQTT, no clock. A device turns (time, elapsed, scenario) into contract payloads.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

if TYPE_CHECKING:
    from simulators.scenario import ScenarioState

Position = tuple[float, float]  # (lon, lat) in WGS 84
Payload = dict[str, Any]  # one JSON object of CONTRACT section 1
Output = tuple[str, Payload]  # (channel, payload)

# Metres per degree of latitude; a local equirectangular step is exact enough within a district.
_M_PER_DEG = 111_320.0


def rfc3339(t: datetime) -> str:
    """``2026-11-23T08:15:00.250Z``: UTC, milliseconds, ``Z`` (CONTRACT: times)."""
    if t.tzinfo is None:
        raise ValueError("expected a timezone-aware datetime")
    u = t.astimezone(UTC)
    return u.strftime("%Y-%m-%dT%H:%M:%S.") + f"{u.microsecond // 1000:03d}Z"


def offset_m(pos: Position, east_m: float, north_m: float) -> Position:
    """``pos`` moved by metres east and north."""
    lon, lat = pos
    dlat = north_m / _M_PER_DEG
    dlon = east_m / (_M_PER_DEG * math.cos(math.radians(lat)))
    return (lon + dlon, lat + dlat)


def distance_m(a: Position, b: Position) -> float:
    mid_lat = math.radians((a[1] + b[1]) / 2)
    dx = (b[0] - a[0]) * _M_PER_DEG * math.cos(mid_lat)
    dy = (b[1] - a[1]) * _M_PER_DEG
    return math.hypot(dx, dy)


def round_pos(pos: Position) -> list[float]:
    # Six decimals is ~0.1 m: finer than any device can place itself.
    return [round(pos[0], 6), round(pos[1], 6)]


@dataclass(frozen=True, slots=True)
class Site:
    """Where a device stands, as far as the simulator knows: the zones containing it."""

    zone_ids: tuple[str, ...] = ()
    zone_types: frozenset[str] = frozenset()


class DeviceSim(Protocol):
    """One simulated device. ``step`` advances it by ``dt_s`` to ``t`` and returns what it sends."""

    @property
    def id(self) -> str: ...

    @property
    def kind(self) -> str: ...

    def step(self, t: datetime, dt_s: float, scenario: ScenarioState) -> list[Output]: ...


class BaseDevice:
    """seq, event ids and a slowly draining battery, common to every kind."""

    kind: ClassVar[str]
    # Battery drain in volts per simulated hour; mains-powered kinds only age their backup cell.
    drain_v_per_h: ClassVar[float] = 0.004
    BATTERY_MIN_V: ClassVar[float] = 3.3

    def __init__(self, device_id: str, position: Position, rng: random.Random) -> None:
        self.id = device_id
        self.position = position
        self.rng = rng
        self.battery_v = rng.uniform(3.95, 4.15)
        self._seq = 0

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _drain(self, dt_s: float) -> None:
        self.battery_v = max(self.BATTERY_MIN_V, self.battery_v - self.drain_v_per_h * dt_s / 3600)

    def telemetry(self, t: datetime, values: dict[str, float],
                  loc: Position | None = None) -> Output:
        payload: Payload = {
            "ts": rfc3339(t),
            "seq": self._next_seq(),
            "values": {**values, "battery_v": round(self.battery_v, 3)},
        }
        if loc is not None:
            payload["loc"] = round_pos(loc)
        return ("telemetry", payload)

    def event(self, t: datetime, type_: str, fields: dict[str, Any]) -> Output:
        seq = self._next_seq()
        # seq is unique per device, so it makes the event id unique per device too.
        payload: Payload = {"ts": rfc3339(t), "seq": seq, "event_id": f"{self.id}-{seq:06d}",
                            "type": type_, **fields}
        return ("event", payload)
