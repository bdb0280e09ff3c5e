"""The rule engine: routes readings and detections to the hazard rules of their zones.

Pure, like the rules: ``evaluate`` and ``tick`` take an ``EngineState`` and return a new one with
the changes, leaving the old one untouched, so the caller can commit the changes and only then
adopt the new state (on failure it keeps the old one and may try again).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any, ClassVar, Protocol, TypeVar

from geo.zones import Zone
from rules.base import AlertChange, Detection, Observation
from rules.falling_object import FallingObjectRule
from rules.levels import Level
from rules.params import RulesParams
from rules.traffic import TrafficRule
from rules.waterlogging import WaterloggingRule

S = TypeVar("S")
Key = tuple[str, str]  # (zone_id, hazard)


class ZoneRule(Protocol[S]):
    """What the engine needs of a hazard rule; ``S`` is the rule's immutable per-zone state."""

    name: ClassVar[str]

    def check_zone(self, zone: Zone) -> None:
        """Raise ``ValueError`` if the rule's parameters cannot serve this zone."""

    def initial(self) -> S: ...

    def restore(self, level: Level) -> S: ...

    def level(self, state: S) -> Level | None: ...

    def evaluate(
        self, zone: Zone, state: S, item: Observation | Detection
    ) -> tuple[S, AlertChange | None]:
        """Return ``state`` itself (the same object) when ``item`` is not the rule's business."""
        ...

    def tick(self, zone: Zone, state: S, now: datetime) -> tuple[S, AlertChange | None]: ...


class EngineConfigError(ValueError):
    """The rule parameters and the zones do not fit together; the message lists every misfit."""


def _empty() -> Mapping[Key, object]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class EngineState:
    """Per (zone_id, hazard) rule state. ``EngineState()`` is the state of a fresh start."""

    rules: Mapping[Key, object] = field(default_factory=_empty)

    def _with(self, updates: Mapping[Key, object]) -> EngineState:
        if not updates:
            return self
        # A private copy behind a read-only view: the old state stays valid for the caller.
        return EngineState(MappingProxyType({**self.rules, **updates}))


class Engine:
    def __init__(self, params: RulesParams, zones: Mapping[str, Zone]) -> None:
        self._rules: dict[str, ZoneRule[Any]] = {
            WaterloggingRule.name: WaterloggingRule(params.waterlogging),
            FallingObjectRule.name: FallingObjectRule(params.falling_object),
            TrafficRule.name: TrafficRule(params.traffic),
        }
        problems: list[str] = []
        for zone_id, zone in zones.items():
            if zone_id != zone.id:
                problems.append(f"zone {zone.id!r} is filed under {zone_id!r}")
            for hazard in zone.hazards:
                rule = self._rules.get(hazard)
                if rule is None:
                    problems.append(f"zone {zone.id!r} carries {hazard!r}, which has no rule")
                    continue
                try:
                    rule.check_zone(zone)
                except ValueError as exc:
                    problems.append(str(exc))
        if problems:
            raise EngineConfigError("; ".join(problems))
        self._zones = dict(zones)

    def evaluate(
        self, state: EngineState, item: Observation | Detection
    ) -> tuple[EngineState, list[AlertChange]]:
        """Feed ``item`` to every hazard of every zone it lies in (each zone counts)."""
        updates: dict[Key, object] = {}
        changes: list[AlertChange] = []
        for zone_id in dict.fromkeys(item.zone_ids):  # de-duplicated, order kept
            zone = self._zones.get(zone_id)
            if zone is None:
                continue  # placed against a zone set this engine was not built with
            for hazard in zone.hazards:
                rule = self._rules[hazard]
                key = (zone_id, hazard)
                old = state.rules.get(key)
                current = rule.initial() if old is None else old
                new, change = rule.evaluate(zone, current, item)
                if new is not current:
                    updates[key] = new
                if change is not None:
                    changes.append(change)
        return state._with(updates), changes

    def tick(self, state: EngineState, now: datetime) -> tuple[EngineState, list[AlertChange]]:
        """What fires when nothing arrives (timeouts), as of ``now``."""
        updates: dict[Key, object] = {}
        changes: list[AlertChange] = []
        for key, current in sorted(state.rules.items(), key=lambda kv: kv[0]):
            zone = self._zones.get(key[0])
            if zone is None:
                continue
            new, change = self._rules[key[1]].tick(zone, current, now)
            if new is not current:
                updates[key] = new
            if change is not None:
                changes.append(change)
        return state._with(updates), changes

    def current_levels(self, state: EngineState) -> dict[Key, Level]:
        """The active level of every (zone_id, hazard) that has one."""
        levels: dict[Key, Level] = {}
        for key, rule_state in sorted(state.rules.items(), key=lambda kv: kv[0]):
            level = self._rules[key[1]].level(rule_state)
            if level is not None:
                levels[key] = level
        return levels

    def restore(self, levels: Mapping[Key, Level]) -> EngineState:
        """The state to resume from after a restart, given the active alerts' levels.

        Entries for zones this engine does not know, or hazards the zone does not carry, are
        skipped; the caller finds them by comparing with ``current_levels`` and closes them.
        """
        restored: dict[Key, object] = {}
        for (zone_id, hazard), level in levels.items():
            zone = self._zones.get(zone_id)
            if zone is None or hazard not in zone.hazards:
                continue
            restored[(zone_id, hazard)] = self._rules[hazard].restore(Level(level))
        return EngineState()._with(restored)
