"""What the engine remembers (``EngineState``, immutable) and its working copy for one call
(``Work``, mutable, copied on first write per section), so a failed call leaves the old state
untouched."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import datetime
from types import MappingProxyType
from typing import Any, Generic, TypeVar

from rules import rain as rainmod
from rules.base import AlertChange, Detection, DeviceSite, Observation
from rules.device_health import DeviceHealth
from rules.levels import Level

K = TypeVar("K")
V = TypeVar("V")
Key = tuple[str, str]  # (zone_id, rule name); the hazard rules are named after their hazard
Item = Observation | Detection


def _empty() -> Mapping[Any, Any]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Counts:
    """What event time and device health did with the readings (for metrics and health)."""

    evaluated: int = 0
    late: int = 0  # evaluated behind the event-time clock: a device's backlog, in its own order
    too_late: int = 0  # older than what its device already had evaluated: stored, not evaluated
    duplicates: int = 0  # redelivered: not evaluated twice
    held_back: int = 0  # readings device health kept from the hazards


@dataclass(frozen=True, slots=True)
class FaultZone:
    """The maintenance alert of one zone: the faulty devices whose first zone it is."""

    level: Level | None = None
    devices: tuple[str, ...] = ()
    restored: bool = False


@dataclass(frozen=True, slots=True)
class EngineState:
    """Everything the engine remembers. ``EngineState()`` is the state of a fresh start."""

    rules: Mapping[Key, object] = field(default_factory=_empty)
    health: Mapping[str, DeviceHealth] = field(default_factory=_empty)
    faults: Mapping[str, FaultZone] = field(default_factory=_empty)
    rain: Mapping[str, rainmod.RainGauge] = field(default_factory=_empty)
    sites: Mapping[str, DeviceSite] = field(default_factory=_empty)
    marks: Mapping[tuple[str, str], tuple[datetime, Any]] = field(default_factory=_empty)
    # per (device, channel): rules.event_time.Recent, what was evaluated lately (dedup)
    recent: Mapping[tuple[str, str], Any] = field(default_factory=_empty)
    cleared: Mapping[tuple[str, str], datetime] = field(default_factory=_empty)
    buffer: tuple[tuple[tuple[Any, ...], Item], ...] = ()  # held for reordering, in order
    buffered: frozenset[tuple[str, str, Any]] = frozenset()
    clock: datetime | None = None  # event time up to which timeouts have run
    newest: datetime | None = None  # the newest reading time seen
    due: datetime | None = None  # no timeout is due before this (may be early, never late)
    counts: Counts = Counts()

    def _with(self, updates: Mapping[Key, object]) -> EngineState:
        """The state with some rule states replaced (kept for callers of the first engine)."""
        if not updates:
            return self
        return replace(self, rules=MappingProxyType({**self.rules, **updates}))


class CopyOnWrite(Generic[K, V]):
    """A mapping copied on its first write, so an untouched section costs nothing.

    ``get`` is the current dict's own method (rebound on the first write): the rules call it
    about fifteen times per reading, and a Python-level wrapper cost a tenth of their time."""

    __slots__ = ("_base", "_own", "get")

    def __init__(self, base: Mapping[K, V]) -> None:
        self._base = base
        self._own: dict[K, V] | None = None
        self.get: Callable[[K], V | None] = base.get

    def __setitem__(self, key: K, value: V) -> None:
        if self._own is None:
            self._own = dict(self._base)
            self.get = self._own.get
        self._own[key] = value

    def items(self) -> Iterable[tuple[K, V]]:
        return (self._own if self._own is not None else self._base).items()

    def values(self) -> Iterable[V]:
        return (self._own if self._own is not None else self._base).values()

    def frozen(self) -> Mapping[K, V]:
        return self._base if self._own is None else MappingProxyType(self._own)


class Work:
    """A private, mutable working copy of an ``EngineState`` for the length of one call."""

    def __init__(self, s: EngineState) -> None:
        self.rules: CopyOnWrite[Key, Any] = CopyOnWrite(s.rules)
        self.health: CopyOnWrite[str, DeviceHealth] = CopyOnWrite(s.health)
        self.faults: CopyOnWrite[str, FaultZone] = CopyOnWrite(s.faults)
        self.rain: CopyOnWrite[str, rainmod.RainGauge] = CopyOnWrite(s.rain)
        self.sites: CopyOnWrite[str, DeviceSite] = CopyOnWrite(s.sites)
        self.marks: CopyOnWrite[tuple[str, str], tuple[datetime, Any]] = CopyOnWrite(s.marks)
        self.recent: CopyOnWrite[tuple[str, str], Any] = CopyOnWrite(s.recent)
        self.cleared: CopyOnWrite[tuple[str, str], datetime] = CopyOnWrite(s.cleared)
        self._buffer_base = s.buffer
        self._buffer: list[tuple[tuple[Any, ...], Item]] | None = None
        self._buffered_base = s.buffered
        self._buffered: set[tuple[str, str, Any]] | None = None
        self.clock, self.newest, self.due = s.clock, s.newest, s.due
        self.counts = {f.name: getattr(s.counts, f.name) for f in fields(Counts)}
        self.changes: list[AlertChange] = []
        self.now: datetime | None = None  # the time rules are being asked about
        # The newest event time among the items fed together: each device in the batch was heard
        # no earlier than that (a device whose clock is still being judged may stamp its readings
        # an hour back; silence must not count from there).
        self.arrived: datetime | None = None
        self.received: datetime | None = None  # the server's clock for this call, if known
        self.heap: list[tuple[datetime, int, tuple[str, str]]] | None = None  # rules.timeouts

    @property
    def buffer(self) -> list[tuple[tuple[Any, ...], Item]]:
        if self._buffer is None:
            self._buffer = list(self._buffer_base)
        return self._buffer

    @property
    def buffered(self) -> set[tuple[str, str, Any]]:
        if self._buffered is None:
            self._buffered = set(self._buffered_base)
        return self._buffered

    def has_buffer(self) -> bool:
        return bool(self._buffer if self._buffer is not None else self._buffer_base)

    def count(self, what: str, n: int = 1) -> None:
        self.counts[what] += n

    def freeze(self) -> EngineState:
        return EngineState(
            rules=self.rules.frozen(), health=self.health.frozen(), faults=self.faults.frozen(),
            rain=self.rain.frozen(), sites=self.sites.frozen(), marks=self.marks.frozen(),
            recent=self.recent.frozen(), cleared=self.cleared.frozen(),
            buffer=self._buffer_base if self._buffer is None else tuple(self._buffer),
            buffered=self._buffered_base if self._buffered is None
            else frozenset(self._buffered),
            clock=self.clock, newest=self.newest, due=self.due, counts=Counts(**self.counts))
