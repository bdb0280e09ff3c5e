"""Water-depth gauge on a road or in an underpass: a linear reservoir fed by rain.

Inflow is the local rain rate times a catchment factor (an underpass gathers the runoff of the
streets sloping into it); outflow is the depth over a drain time constant, capped by what the drains
can take. Water rises while it rains harder than the drains can clear and recedes after.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, ClassVar

from simulators.devices.base import BaseDevice, Output, Position, Site

if TYPE_CHECKING:
    from citywatch.config import Device
    from simulators.scenario import ScenarioState


@dataclass(frozen=True, slots=True)
class Reservoir:
    catchment: float  # runoff area over the gauge's pond area
    drain_cm_h: float  # most the drains take away
    tau_h: float  # drain time constant below that cap

    def rate_cm_h(self, depth_cm: float, rain_mm_h: float) -> float:
        inflow = rain_mm_h / 10 * self.catchment
        outflow = min(depth_cm / self.tau_h, self.drain_cm_h)
        return inflow - outflow


# By site type. Tuned so a 100 mm/h cloudburst floods an underpass past 30 cm within ~15 minutes,
# a low road to ~10-20 cm, and leaves an ordinary road with a few cm.
SITES: dict[str, Reservoir] = {
    "underpass": Reservoir(catchment=18.0, drain_cm_h=25.0, tau_h=0.25),
    "low_road": Reservoir(catchment=6.0, drain_cm_h=25.0, tau_h=0.3),
    "road": Reservoir(catchment=2.5, drain_cm_h=40.0, tau_h=0.1),
}

_SUBSTEP_S = 5.0  # explicit Euler stays accurate well below the smallest tau (360 s)


def site_type(site: Site) -> str:
    for kind in ("underpass", "low_road"):
        if kind in site.zone_types:
            return kind
    return "road"


class WaterGauge(BaseDevice):
    kind: ClassVar[str] = "water"

    def __init__(self, device_id: str, position: Position, rng: random.Random,
                 reservoir: Reservoir) -> None:
        super().__init__(device_id, position, rng)
        # No two sites drain alike.
        f = rng.uniform(0.9, 1.1)
        self.reservoir = Reservoir(reservoir.catchment * f, reservoir.drain_cm_h / f,
                                   reservoir.tau_h)
        self.depth_cm = 0.0

    def advance(self, t: datetime, dt_s: float, scenario: ScenarioState) -> None:
        n = max(1, math.ceil(dt_s / _SUBSTEP_S))
        h = dt_s / n
        for i in range(n):
            mid = t - timedelta(seconds=dt_s - (i + 0.5) * h)
            rain = scenario.rain_mm_h(self.position, mid)
            rate = self.reservoir.rate_cm_h(self.depth_cm, rain)
            self.depth_cm = max(0.0, self.depth_cm + rate * h / 3600)

    def step(self, t: datetime, dt_s: float, scenario: ScenarioState) -> list[Output]:
        self.advance(t, dt_s, scenario)
        self._drain(dt_s)
        # Ultrasonic gauges jitter by a few mm on water; a dry road reads 0.
        reading = self.depth_cm + self.rng.gauss(0, 0.2) if self.depth_cm > 0.5 else 0.0
        return [self.telemetry(t, {"water_depth_cm": round(max(0.0, reading), 1)})]


def create(device: Device, site: Site, rng: random.Random) -> WaterGauge:
    return WaterGauge(device.id, device.position, rng, SITES[site_type(site)])
