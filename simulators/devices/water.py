"""Water-depth gauge on a road or in an underpass: an ultrasonic sensor over a low point.

The water follows :mod:`simulators.physics.runoff` (a linear reservoir fed by the rain at the
gauge and drained by gullies or pumps). The sensor adds a few mm of noise and reads 0 below its
deadband (a wet road is not standing water).
"""

from __future__ import annotations

import math
import random
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, ClassVar

from geo.position import Position
from sensing.decode import BUILTIN_KINDS, KindSpec
from simulators.devices.base import BaseDevice, Output, Site
from simulators.physics.runoff import SITES, Catchment, Reservoir

if TYPE_CHECKING:
    from simulators.configured import DeviceConfig
    from simulators.scenario import ScenarioState

NOISE_CM = 0.3
DEADBAND_CM = 0.5
RAIN_SAMPLE_S = 30.0  # rain is sampled this often within a reporting interval


def site_type(site: Site) -> str:
    for kind in ("underpass", "low_road"):
        if kind in site.zone_types:
            return kind
    return "road"


class WaterGauge(BaseDevice):
    kind: ClassVar[str] = "water"
    spec: ClassVar[KindSpec] = BUILTIN_KINDS["water"]

    def __init__(self, device_id: str, position: Position, rng: random.Random,
                 catchment: Catchment) -> None:
        super().__init__(device_id, position, rng)
        # No two sites drain alike: catchments differ by +-15 % around the type's.
        self.reservoir = Reservoir(catchment.scaled(rng.uniform(0.85, 1.15)))

    @classmethod
    def create(cls, device: DeviceConfig, site: Site, rng: random.Random) -> WaterGauge:
        return cls(device.id, device.position, rng, SITES[site_type(site)])

    @property
    def depth_cm(self) -> float:
        return self.reservoir.depth_cm

    def advance(self, t: datetime, dt_s: float, world: ScenarioState) -> None:
        n = max(1, math.ceil(dt_s / RAIN_SAMPLE_S))
        h = dt_s / n
        drain = world.drain_factor(self.id, t)
        for i in range(n):
            mid = t - timedelta(seconds=dt_s - (i + 0.5) * h)
            self.reservoir.step(world.rain_mm_h(self.position, mid), h, drain)

    def step(self, t: datetime, dt_s: float, world: ScenarioState) -> list[Output]:
        self.advance(t, dt_s, world)
        depth = self.reservoir.depth_cm
        world.report_depth(self.id, depth)
        self.true_values = {"water_depth_cm": depth}
        self._drain(dt_s)
        reading = depth + self.rng.gauss(0, NOISE_CM) if depth > DEADBAND_CM else 0.0
        return [self.telemetry(t, {"water_depth_cm": round(max(0.0, reading), 1)})]


create = WaterGauge.create
