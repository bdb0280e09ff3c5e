"""The errors of ``geo``: one root, so callers can catch everything this package raises."""

from __future__ import annotations


class GeoError(Exception):
    """Root of the errors raised by ``geo``."""


class ZoneError(GeoError):
    """Zones that cannot be used: a bad zone file, or zones that contradict each other.

    ``problems`` holds one line per problem, each naming the file (when there is one), the zone
    and the reason; the message is those lines.
    """

    def __init__(self, problems: list[str] | tuple[str, ...]) -> None:
        self.problems: tuple[str, ...] = tuple(problems)
        if len(self.problems) == 1:
            message = self.problems[0]
        else:
            message = f"{len(self.problems)} zone errors:\n" + "\n".join(
                f"  {p}" for p in self.problems
            )
        super().__init__(message)


class UnknownZoneError(GeoError, KeyError):
    """A zone id that the index does not hold."""

    def __str__(self) -> str:
        # KeyError's own __str__ repr()s the argument; keep the plain sentence.
        return str(self.args[0]) if self.args else "unknown zone"
