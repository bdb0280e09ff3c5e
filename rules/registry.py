"""The hazards the platform knows: the built-in ones and those of plug-ins.

The three built-in hazards register when ``rules`` is imported. A plug-in hazard is a
:class:`rules.hazard.Hazard` registered at start by the composition root (the
``citywatch.hazards`` entry-point group, or ``plugins:`` in the config, see
``sensing.plugins``), before the configuration is validated: the routing table, the API's
enums, CAP, Open311, the policy, the console and the appeals desk all read this registry.

Registering binds the hazard to its zone types (``geo.zones.bind_hazard``). Tests that
register a hazard unregister it again (``registered``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TypeVar

from geo.zones import ZONE_TYPE_HAZARDS, ZONE_TYPES, bind_hazard, unbind_hazard
from rules.base import DEVICE_FAULT
from rules.falling_object import FALLING_OBJECT
from rules.hazard import AlertKind, Hazard, Label
from rules.traffic import TRAFFIC
from rules.waterlogging import WATERLOGGING

BUILTIN: tuple[Hazard, ...] = (WATERLOGGING, FALLING_OBJECT, TRAFFIC)

# The maintenance alert of a faulty device: the engine's own, not a hazard's.
DEVICE_FAULT_ALERT = AlertKind(
    DEVICE_FAULT, Label("Device fault", "设备故障"), "Device fault", ("Other",),
    "Inspect the device: its readings are not trusted until it is repaired.", ZONE_TYPES)


class HazardError(Exception):
    """A hazard that cannot be registered; the message names it and says why."""


_hazards: dict[str, Hazard] = {}
_sources: dict[str, str] = {}


def register(hazard: Hazard, source: str = "built in") -> None:
    """Add a hazard; the same object twice counts once, another one of a taken name is refused."""
    have = _hazards.get(hazard.name)
    if have is hazard:
        return
    taken = {n: h.name for h in _hazards.values() for n in h.alert_names()}
    taken[DEVICE_FAULT] = "the engine"
    for name in hazard.alert_names():
        if name in taken:
            raise HazardError(f"{source}: hazard {hazard.name!r}: the alert name {name!r} is "
                              f"taken by {taken[name]!r} ({_sources.get(taken[name], 'built in')})")
    try:
        bind_hazard(hazard.name, hazard.zone_types)
    except ValueError as exc:
        raise HazardError(f"{source}: {exc}") from None
    _hazards[hazard.name] = hazard
    _sources[hazard.name] = source


def unregister(name: str) -> None:
    if _hazards.pop(name, None) is not None:
        _sources.pop(name, None)
        unbind_hazard(name)


@contextmanager
def registered(*hazards: Hazard) -> Iterator[None]:
    """The hazards registered for the length of a ``with`` (tests, tools)."""
    new = [h for h in hazards if _hazards.get(h.name) is not h]
    for h in new:
        register(h, "registered for a while")
    try:
        yield
    finally:
        for h in new:
            unregister(h.name)


def hazards() -> tuple[Hazard, ...]:
    """Every registered hazard, built-in ones first, in registration order."""
    return tuple(_hazards.values())


def names() -> tuple[str, ...]:
    return tuple(_hazards)


def get(name: str) -> Hazard | None:
    return _hazards.get(name)


def source(name: str) -> str | None:
    return _sources.get(name)


def alert_kinds() -> dict[str, Hazard | AlertKind]:
    """Every alert name the rules can raise, with what describes it."""
    out: dict[str, Hazard | AlertKind] = {}
    for h in _hazards.values():
        out[h.name] = h
        for a in h.extra_alerts:
            out[a.name] = a
    out[DEVICE_FAULT] = DEVICE_FAULT_ALERT
    return out


def owner(alert: str) -> Hazard | None:
    """The hazard that raises alerts of this name (None: the engine's own, or unknown)."""
    for h in _hazards.values():
        if alert in h.alert_names():
            return h
    return None


def report_categories() -> tuple[str, ...]:
    """Hazards that grid workers and residents can report."""
    return tuple(h.name for h in _hazards.values() if h.report_category)


def required_routes() -> list[tuple[str, str]]:
    """(alert name, zone type) pairs the rules can raise an alert for: each hazard in its zone
    types, each extra alert in its own, every reportable hazard in a grid cell (a report that
    matches nothing), and a faulty device in any zone."""
    pairs = [(h, t) for t, hs in ZONE_TYPE_HAZARDS.items() for h in hs]
    pairs += [(a.name, t) for h in _hazards.values() for a in h.extra_alerts
              for t in a.zone_types]
    pairs += [(name, "grid_cell") for name in report_categories()]
    pairs += [(DEVICE_FAULT, t) for t in ZONE_TYPES]
    return list(dict.fromkeys(pairs))


T = TypeVar("T")


class _View(Mapping[str, T]):
    """A read-only mapping from alert name to one of its facts, read from the registry on each
    use (so a plug-in registered at start is in it)."""

    def __init__(self, pick: Callable[[Hazard | AlertKind], T | None]) -> None:
        self._pick = pick

    def _now(self) -> dict[str, T]:
        out: dict[str, T] = {}
        for name, kind in alert_kinds().items():
            v = self._pick(kind)
            if v is not None:
                out[name] = v
        return out

    def __getitem__(self, key: str) -> T:
        return self._now()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._now())

    def __len__(self) -> int:
        return len(self._now())

    def __repr__(self) -> str:
        return f"registry view {self._now()!r}"


def view(pick: Callable[[Hazard | AlertKind], T | None]) -> Mapping[str, T]:
    """Alert name -> ``pick(kind)`` for every registered alert kind where it is not None."""
    return _View(pick)


def hazard_view(pick: Callable[[Hazard], T | None]) -> Mapping[str, T]:
    """Hazard name -> ``pick(hazard)`` for the hazards (not their extra alerts)."""
    return _View(lambda k: pick(k) if isinstance(k, Hazard) else None)


for _h in BUILTIN:
    register(_h)
