"""Warning levels of CONTRACT section 3. A smaller number is more severe."""

from __future__ import annotations

from enum import IntEnum


class Level(IntEnum):
    RED = 1
    ORANGE = 2
    YELLOW = 3
    BLUE = 4

    @property
    def colour(self) -> str:
        return self.name.lower()

    @property
    def cap_severity(self) -> str:
        return {1: "Extreme", 2: "Severe", 3: "Moderate", 4: "Minor"}[self.value]

    def more_severe_than(self, other: Level | None) -> bool:
        return other is None or self.value < other.value


HAZARDS = ("waterlogging", "falling_object", "traffic")
