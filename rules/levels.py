"""Warning levels of CONTRACT section 3. A smaller number is more severe."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from enum import IntEnum
from typing import Literal, cast, overload


class Level(IntEnum):
    RED = 1
    ORANGE = 2
    YELLOW = 3
    BLUE = 4

    @property
    def colour(self) -> str:
        return self.name.lower()

    @property
    def zh(self) -> str:
        return {1: "红色", 2: "橙色", 3: "黄色", 4: "蓝色"}[self.value]

    @property
    def cap_severity(self) -> str:
        return {1: "Extreme", 2: "Severe", 3: "Moderate", 4: "Minor"}[self.value]

    def more_severe_than(self, other: Level | None) -> bool:
        return other is None or self.value < other.value


# The levels' names as configuration and the API spell them, most severe first.
LevelName = Literal["red", "orange", "yellow", "blue"]
LEVEL_NAMES: tuple[LevelName, ...] = tuple(cast(LevelName, lv.colour) for lv in Level)


class _HazardNames(Sequence[str]):
    """The registered hazards' names, read from ``rules.registry`` on each use (kept for the
    callers of the first engine, which listed three here)."""

    def _now(self) -> tuple[str, ...]:
        from rules import registry  # the registry's hazard modules import this module

        return registry.names()

    @overload
    def __getitem__(self, i: int) -> str: ...

    @overload
    def __getitem__(self, i: slice) -> Sequence[str]: ...

    def __getitem__(self, i: int | slice) -> str | Sequence[str]:
        return self._now()[i]

    def __len__(self) -> int:
        return len(self._now())

    def __iter__(self) -> Iterator[str]:
        return iter(self._now())

    def __contains__(self, name: object) -> bool:
        return name in self._now()


HAZARDS: Sequence[str] = _HazardNames()
