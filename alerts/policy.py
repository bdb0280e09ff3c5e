"""Alert hygiene in one place: deadlines by severity, what deserves a dispatch."""

from __future__ import annotations

from datetime import datetime, timedelta

from rules.levels import Level

# How fast a team must answer and fix, by severity. Red is minutes, blue hours.
RESPOND_WITHIN = {Level.RED: timedelta(minutes=10), Level.ORANGE: timedelta(minutes=30),
                  Level.YELLOW: timedelta(hours=1), Level.BLUE: timedelta(hours=4)}
RESOLVE_WITHIN = {Level.RED: timedelta(hours=1), Level.ORANGE: timedelta(hours=2),
                  Level.YELLOW: timedelta(hours=6), Level.BLUE: timedelta(hours=24)}


def deadlines(level: Level, raised: datetime) -> tuple[datetime, datetime]:
    return raised + RESPOND_WITHIN[level], raised + RESOLVE_WITHIN[level]


def should_dispatch(old: Level | None, new: Level) -> bool:
    """A team hears of an incident once, and again only when it gets worse (no storms)."""
    return new.more_severe_than(old)


INSTRUCTIONS = {
    "waterlogging": "Check the water level on site; close the road or underpass to vehicles if "
                    "deeper than the posted limit; open drains or start pumps.",
    "falling_object": "Cordon the area at the foot of the building; find the floor and the source "
                      "with building management; keep pedestrians away.",
    "traffic": "Check the road on site; direct traffic and clear the blockage.",
}
