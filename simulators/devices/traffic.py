"""Traffic detector: speed, flow and occupancy from a demand level on a triangular-ish
fundamental diagram.

Demand is arriving traffic as a fraction of road capacity. Below 1 the road flows freely (about
50 km/h); above 1 a queue builds and density moves onto the congested branch, where speed falls
to walking pace. Density follows its target with a lag, so jams build and clear over minutes.
"""

from __future__ import annotations

import math
import random
from datetime import datetime
from typing import TYPE_CHECKING, ClassVar

from simulators.devices.base import BaseDevice, Output, Position, Site

if TYPE_CHECKING:
    from citywatch.config import Device
    from simulators.scenario import ScenarioState

K_CRIT = 30.0  # veh/km/lane at capacity
K_JAM = 150.0  # veh/km/lane, standing queue
K_MAX = 0.85 * K_JAM  # a detected queue still creeps
EFFECTIVE_LENGTH_KM = 0.0065  # vehicle plus detection zone: density to occupancy
TAU_S = 120.0  # how fast density follows demand


def target_density(demand: float) -> float:
    if demand <= 1:
        return K_CRIT * max(0.0, demand)
    return min(K_CRIT + (demand - 1) * 150.0, K_MAX)


def speed_kmh(density: float, free_kmh: float) -> float:
    if density <= K_CRIT:
        return free_kmh * (1 - 0.2 * density / K_CRIT)
    # Congested branch: flow falls linearly to zero at jam density (backward wave).
    cap_flow = free_kmh * 0.8 * K_CRIT
    flow = cap_flow * (K_JAM - density) / (K_JAM - K_CRIT)
    return flow / density


class TrafficDetector(BaseDevice):
    kind: ClassVar[str] = "traffic"

    def __init__(self, device_id: str, position: Position, rng: random.Random) -> None:
        super().__init__(device_id, position, rng)
        self.lanes = rng.choice((2, 2, 3))
        self.free_kmh = rng.uniform(48.0, 52.0)
        self._demand_factor = rng.uniform(0.8, 1.1)  # some roads are busier than others
        self.density: float | None = None

    def step(self, t: datetime, dt_s: float, scenario: ScenarioState) -> list[Output]:
        demand = scenario.base_demand * self._demand_factor + scenario.congestion(self.id, t)
        target = target_density(demand)
        if self.density is None:
            self.density = target
        self.density += (target - self.density) * (1 - math.exp(-dt_s / TAU_S))
        # Drivers slow down on wet roads.
        wet = min(1.0, scenario.rain_mm_h(self.position, t) / 50)
        v = speed_kmh(self.density, self.free_kmh * (1 - 0.08 * wet))
        v = max(0.0, v * (1 + self.rng.gauss(0, 0.03)))
        flow = max(0.0, v * self.density * self.lanes * (1 + self.rng.gauss(0, 0.05)))
        occ = min(100.0, max(0.0, self.density * EFFECTIVE_LENGTH_KM * 100
                             * (1 + self.rng.gauss(0, 0.03))))
        self._drain(dt_s)
        return [self.telemetry(t, {"flow_veh_h": round(flow), "speed_kmh": round(v, 1),
                                   "occupancy_pct": round(occ, 1)})]


def create(device: Device, _site: Site, rng: random.Random) -> TrafficDetector:
    return TrafficDetector(device.id, device.position, rng)
