"""Alert and work-order hygiene in one place: deadlines, reopening, re-dispatch, escalation.

Pure values and decisions; ``alerts.store`` applies them. Built from ``config.yaml``
(``work_orders:``) by the composition root.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TypeVar

from rules import registry
from rules.levels import Level

LEVELS = ("grid", "street", "district", "municipal")  # the hierarchy, bottom up

# Hazards whose sensors can tell whether the problem is really gone (a view of the registry).
SENSOR_BACKED: Mapping[str, bool] = registry.hazard_view(
    lambda h: True if h.sensor_backed else None)


@dataclass(frozen=True)
class Policy:
    respond_within: Mapping[Level, timedelta] = field(default_factory=lambda: {
        Level.RED: timedelta(minutes=10), Level.ORANGE: timedelta(minutes=30),
        Level.YELLOW: timedelta(hours=1), Level.BLUE: timedelta(hours=4)})
    resolve_within: Mapping[Level, timedelta] = field(default_factory=lambda: {
        Level.RED: timedelta(hours=1), Level.ORANGE: timedelta(hours=2),
        Level.YELLOW: timedelta(hours=6), Level.BLUE: timedelta(hours=24)})
    reopen_window: timedelta = timedelta(hours=2)
    dispatch_retry: timedelta = timedelta(minutes=2)
    dispatch_attempts: int = 3
    # What one incident may grow, however long and busy (see ``cap_evidence`` and
    # ``AlertStore._repeat``).
    evidence_keep_first: int = 20
    evidence_keep_last: int = 80
    history_repeats_max: int = 50

    def __post_init__(self) -> None:
        if min(self.evidence_keep_first, self.evidence_keep_last, self.history_repeats_max) < 1:
            raise ValueError("evidence_keep_first, evidence_keep_last and history_repeats_max "
                             "must be 1 or more")

    @classmethod
    def from_minutes(cls, respond: Mapping[str, float], resolve: Mapping[str, float],
                     reopen_window_min: float, dispatch_retry_s: float,
                     dispatch_attempts: int, *, evidence_keep_first: int = 20,
                     evidence_keep_last: int = 80, history_repeats_max: int = 50) -> Policy:
        def by_level(m: Mapping[str, float]) -> dict[Level, timedelta]:
            return {Level[name.upper()]: timedelta(minutes=v) for name, v in m.items()}

        return cls(by_level(respond), by_level(resolve), timedelta(minutes=reopen_window_min),
                   timedelta(seconds=dispatch_retry_s), dispatch_attempts, evidence_keep_first,
                   evidence_keep_last, history_repeats_max)

    def deadlines(self, level: Level, start: datetime) -> tuple[datetime, datetime]:
        return start + self.respond_within[level], start + self.resolve_within[level]


T = TypeVar("T")


def cap_evidence(items: Sequence[T], keep_first: int, keep_last: int) -> tuple[list[T], int]:
    """The evidence an alert keeps, and how many entries were dropped: the first ``keep_first``
    (what raised it) and the newest ``keep_last`` (what it looks like now), so that a hot zone
    reporting for days cannot grow one alert without bound. ``alerts.store`` applies the same
    cut in SQL on every append."""
    if keep_first < 1 or keep_last < 1:
        raise ValueError("keep_first and keep_last must be 1 or more")
    if len(items) <= keep_first + keep_last:
        return list(items), 0
    return [*items[:keep_first], *items[-keep_last:]], len(items) - keep_first - keep_last


def should_dispatch(old: Level | None, new: Level) -> bool:
    """A team hears of an incident once, and again only when it gets worse (no storms)."""
    return new.more_severe_than(old)


@dataclass(frozen=True, slots=True)
class Office:
    """A department as escalation sees it."""

    id: str
    level: str
    zone_id: str | None
    team_id: str | None


def escalation_target(current_level: str, zone_chain: Sequence[str],
                      offices: Sequence[Office]) -> Office | None:
    """The office one level up the hierarchy that answers for the zone, or None at the top.

    ``zone_chain`` is the zone and its ancestors (the zone first). Among the offices of the next
    level that have a team, one bound to a zone of the chain wins over one bound to none (a street
    office over a district-wide one); a level with no such office is skipped.
    """
    try:
        start = LEVELS.index(current_level) + 1
    except ValueError:
        start = len(LEVELS)
    for level in LEVELS[start:]:
        candidates = [o for o in offices if o.level == level and o.team_id is not None
                      and (o.zone_id is None or o.zone_id in zone_chain)]
        if candidates:
            candidates.sort(key=lambda o: zone_chain.index(o.zone_id) if o.zone_id in zone_chain
                            else len(zone_chain))
            return candidates[0]
    return None


# What the team is to do, per alert name (each hazard's ``instruction``).
INSTRUCTIONS: Mapping[str, str] = registry.view(lambda k: k.instruction)
