"""What the simulators read of the configuration, as protocols: ``citywatch.config.Config``
satisfies them, and the simulators import nothing from ``citywatch`` (the composition root
depends on the simulators, not the other way round)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from geo.position import Position
from rules.params import RulesParams


class DeviceConfig(Protocol):
    """A registered device (``devices:``)."""

    @property
    def id(self) -> str: ...

    @property
    def kind(self) -> str: ...

    @property
    def position(self) -> Position: ...

    @property
    def name(self) -> str: ...


class TeamConfig(Protocol):
    @property
    def id(self) -> str: ...


class SimulatorSettings(Protocol):
    @property
    def telemetry_interval_s(self) -> float: ...


class SimConfig(Protocol):
    """The parts of ``config.yaml`` a simulation needs."""

    @property
    def rules(self) -> RulesParams: ...

    @property
    def devices(self) -> Sequence[DeviceConfig]: ...

    @property
    def teams(self) -> Sequence[TeamConfig]: ...

    @property
    def zones_path(self) -> Path: ...

    @property
    def simulator(self) -> SimulatorSettings: ...

    @property
    def plugins(self) -> Sequence[str]: ...


@dataclass(frozen=True, slots=True)
class FleetDevice:
    """A device the simulator adds to the configured fleet (a load test's copies)."""

    id: str
    kind: str
    position: Position
    name: str = ""
