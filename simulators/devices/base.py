"""What every simulated device shares: seq, event ids, battery, timestamps, payload shapes.

Pure: no MQTT, no clock. A device turns (time, elapsed, world) into contract payloads. ``ts`` in a
payload may be a ``datetime``: the runner stamps and formats it (wall clock or simulated time).

A device kind, built in or a plug-in, is a subclass of :class:`BaseDevice` with ``kind``, ``spec``
(what the platform accepts from it, a :class:`sensing.decode.KindSpec`) and ``step``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from geo.position import Position, offset
from sensing.times import iso_utc

if TYPE_CHECKING:
    from sensing.decode import KindSpec
    from simulators.configured import DeviceConfig
    from simulators.scenario import ScenarioState

Payload = dict[str, Any]  # one JSON object of CONTRACT section 1
Output = tuple[str, Payload]  # (channel, payload)

# Metres per degree of latitude; a local equirectangular step is exact enough within a district.
BATTERY_FULL_V = 4.2
BATTERY_CUTOFF_V = 3.3  # a Li-ion cell's protection circuit cuts the device off here


def rfc3339(t: datetime) -> str:
    """``2026-11-23T08:15:00.250Z``: UTC, milliseconds, ``Z`` (CONTRACT: times)."""
    return iso_utc(t)


def offset_m(pos: Position, east_m: float, north_m: float) -> Position:
    """``pos`` moved by metres east and north."""
    return offset(pos, east_m, north_m)


def round_pos(pos: Position) -> list[float]:
    # Six decimals is ~0.1 m: finer than any device can place itself.
    return [round(pos[0], 6), round(pos[1], 6)]


@dataclass(frozen=True, slots=True)
class Site:
    """Where a device stands, as far as the simulator knows: the zones containing it."""

    zone_ids: tuple[str, ...] = ()
    zone_types: frozenset[str] = frozenset()


class DeviceSim(Protocol):
    """One simulated device. ``step`` advances it by ``dt_s`` to ``t`` and returns what it sends.

    ``true_values`` are the physical values behind the last readings, without sensor noise or
    faults (ground truth reads them).
    """

    @property
    def id(self) -> str: ...

    @property
    def kind(self) -> str: ...

    @property
    def true_values(self) -> dict[str, float]: ...

    def step(self, t: datetime, dt_s: float, world: ScenarioState) -> list[Output]: ...


class BaseDevice:
    """seq, event ids and a slowly draining battery, common to every kind.

    Subclasses set ``kind`` and ``spec`` and implement :meth:`step`; :meth:`create` is the
    factory the simulator calls (override it to read more from the device or its site).
    """

    kind: ClassVar[str]
    spec: ClassVar[KindSpec]
    # Battery drain in volts per simulated hour; mains-powered kinds only age their backup cell.
    drain_v_per_h: ClassVar[float] = 0.004
    reports_battery_v: ClassVar[bool] = True

    def __init__(self, device_id: str, position: Position, rng: random.Random) -> None:
        self.id = device_id
        self.position = position
        self.rng = rng
        self.battery_v = rng.uniform(3.95, 4.15)
        self.true_values: dict[str, float] = {}
        self._seq = 0

    @classmethod
    def create(cls, device: DeviceConfig, site: Site, rng: random.Random) -> BaseDevice:
        del site  # most kinds do not care which zones they stand in
        return cls(device.id, device.position, rng)

    def step(self, t: datetime, dt_s: float, world: ScenarioState) -> list[Output]:
        raise NotImplementedError

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _drain(self, dt_s: float) -> None:
        self.battery_v = max(BATTERY_CUTOFF_V, self.battery_v - self.drain_v_per_h * dt_s / 3600)

    def telemetry(self, t: datetime, values: dict[str, float],
                  loc: Position | None = None) -> Output:
        if self.reports_battery_v:
            values["battery_v"] = round(self.battery_v, 3)
        payload: Payload = {"ts": t, "seq": self._next_seq(), "values": values}
        if loc is not None:
            payload["loc"] = round_pos(loc)
        return ("telemetry", payload)

    def event(self, t: datetime, type_: str, fields: dict[str, Any]) -> Output:
        seq = self._next_seq()
        # seq is unique per device, so it makes the event id unique per device too.
        payload: Payload = {"ts": t, "seq": seq, "event_id": f"{self.id}-{seq:06d}",
                            "type": type_, **fields}
        return ("event", payload)
