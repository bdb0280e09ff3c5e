"""A scenario's ground truth: what really happened, so detection can be scored against it.

Written by the simulator as JSON beside the run; read by ``citywatch score``. Times are the
simulated timestamps the devices put in ``ts``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from sensing.times import iso_utc

Hazard = Literal["waterlogging", "falling_object", "traffic"]
FaultKind = Literal["stuck", "spike", "drift", "silent", "dead_battery", "dropped"]


@dataclass(frozen=True, slots=True)
class HazardTruth:
    """A hazard that physically existed in a zone from ``start`` to ``end``.

    ``peak_level`` is the CONTRACT level (1 red .. 4 blue) the physical values reached, judged
    with the thresholds of the config the scenario ran with.
    """

    hazard: Hazard
    zone_id: str
    start: datetime
    end: datetime
    peak_level: int
    note: str = ""


@dataclass(frozen=True, slots=True)
class FaultTruth:
    """A device whose readings were wrong (or absent) from ``start`` to ``end``."""

    device_id: str
    kind: FaultKind
    start: datetime
    end: datetime
    note: str = ""


@dataclass(frozen=True, slots=True)
class GroundTruth:
    scenario: str
    seed: int
    start: datetime
    end: datetime
    hazards: tuple[HazardTruth, ...] = ()
    faults: tuple[FaultTruth, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        def default(o: object) -> str:
            if isinstance(o, datetime):
                return iso_utc(o)
            raise TypeError(type(o).__name__)

        return json.dumps(asdict(self), default=default, indent=1)

    def write(self, path: Path) -> None:
        path.write_text(self.to_json(), encoding="utf-8")

    @classmethod
    def from_json(cls, text: str) -> GroundTruth:
        d = json.loads(text)

        def ts(s: str) -> datetime:
            return datetime.fromisoformat(s.replace("Z", "+00:00"))

        return cls(
            scenario=d["scenario"], seed=d["seed"], start=ts(d["start"]), end=ts(d["end"]),
            hazards=tuple(HazardTruth(h["hazard"], h["zone_id"], ts(h["start"]), ts(h["end"]),
                                      h["peak_level"], h.get("note", ""))
                          for h in d.get("hazards", [])),
            faults=tuple(FaultTruth(f["device_id"], f["kind"], ts(f["start"]), ts(f["end"]),
                                    f.get("note", ""))
                         for f in d.get("faults", [])),
            meta=d.get("meta", {}),
        )

    @classmethod
    def read(cls, path: Path) -> GroundTruth:
        return cls.from_json(path.read_text(encoding="utf-8"))
