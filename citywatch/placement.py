"""Decoded messages placed in their zones: ``Telemetry`` -> ``Observation``, ``Event`` ->
``Detection``. Pure (no I/O): shared by the live pipeline, ``citywatch score`` and ``replay``.

Where a message is:
- a reading with its own ``loc`` (a grid worker's phone): there;
- a camera detection: its impact point (``loc`` of the event), else the camera;
- anything else: the device's registered position.
Fixed devices' zones are looked up once; positions that move go through the index, many at once
(``place_many`` makes one vectorised STRtree query for a whole batch).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from geo.index import Hierarchy, ZoneIndex
from geo.position import Position
from rules.base import Detection, DeviceSite, Observation
from sensing.models import Event, Telemetry


class Placement:
    """Places messages of a fixed fleet (``devices``: id -> (kind, [lon, lat])) in ``index``."""

    def __init__(self, index: ZoneIndex, devices: Mapping[str, tuple[str, Position]]) -> None:
        self.index = index
        self._pos = {d: p for d, (_, p) in devices.items()}
        self._kind = {d: k for d, (k, _) in devices.items()}
        ids = sorted(devices)
        assigned = index.assign([self._pos[d][0] for d in ids], [self._pos[d][1] for d in ids])
        self._zones: dict[str, tuple[str, ...]] = dict(zip(ids, assigned, strict=True))

    def put(self, device_id: str, kind: str, position: Position) -> DeviceSite:
        """Register or move one device (the registry changed at run time); its site."""
        self._pos[device_id] = position
        self._kind[device_id] = kind
        self._zones[device_id] = self.index.zones_at(*position)
        return DeviceSite(device_id, kind, position, self._zones[device_id])

    def remove(self, device_id: str) -> None:
        """Forget a retired device: messages of it are placed as an unregistered one's."""
        self._pos.pop(device_id, None)
        self._kind.pop(device_id, None)
        self._zones.pop(device_id, None)

    def sites(self) -> list[DeviceSite]:
        """The registered devices as the rule engine's registry."""
        return [DeviceSite(d, self._kind[d], self._pos[d], self._zones[d])
                for d in sorted(self._pos)]

    def device_zones(self, device_id: str) -> tuple[str, ...]:
        return self._zones.get(device_id, ())

    def position(self, message: Telemetry | Event) -> Position | None:
        return message.loc or self._pos.get(message.device_id)

    def observation(self, t: Telemetry, zones: tuple[str, ...] | None = None) -> Observation:
        if zones is None:
            zones = self.index.zones_at(*t.loc) if t.loc is not None else \
                self._zones.get(t.device_id, ())
        return Observation(t.device_id, t.kind, t.ts, t.seq, t.values, self.position(t), zones)

    def detection(self, e: Event, zones: tuple[str, ...] | None = None) -> Detection:
        pos = self.position(e)
        if zones is None:
            zones = (self.index.zones_at(*pos) if e.loc is not None and pos is not None
                     else self._zones.get(e.device_id, ()))
        return Detection(e.device_id, e.kind, e.ts, e.event_id, e.type, e.confidence, pos,
                         zones, dict(e.body))

    def place(self, message: Telemetry | Event) -> Observation | Detection:
        if isinstance(message, Telemetry):
            return self.observation(message)
        return self.detection(message)

    def place_many(self, messages: Sequence[Telemetry | Event]
                   ) -> list[Observation | Detection]:
        """``place`` for a batch, in the same order: one bulk query for every moving position."""
        moving = [i for i, m in enumerate(messages) if m.loc is not None]
        zones: dict[int, tuple[str, ...]] = {}
        if moving:
            lons = [messages[i].loc[0] for i in moving]  # type: ignore[index]
            lats = [messages[i].loc[1] for i in moving]  # type: ignore[index]
            zones = dict(zip(moving, self.index.assign(lons, lats), strict=True))
        out: list[Observation | Detection] = []
        for i, m in enumerate(messages):
            z = zones.get(i)
            out.append(self.observation(m, z) if isinstance(m, Telemetry)
                       else self.detection(m, z))
        return out

    def hierarchy(self, item: Observation | Detection) -> Hierarchy:
        """The grid cell, street and district of a placed item (of its position)."""
        return self.index.hierarchy_of_zones(item.zone_ids)

    def device_hierarchy(self, device_id: str) -> Hierarchy:
        """The grid cell, street and district of a registered device."""
        return self.index.hierarchy_of_zones(self._zones.get(device_id, ()))


def by_time(items: Iterable[Observation | Detection]) -> list[Observation | Detection]:
    """Items in event-time order (ties by device, so runs repeat)."""
    return sorted(items, key=lambda i: (i.ts, i.device_id))
