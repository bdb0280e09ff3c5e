"""Traffic detector (loop or radar) at an intersection or on a road segment.

Physics in :mod:`simulators.physics.traffic`: the daily demand profile scaled per road, the
scenario's extra demand, BPR speeds, and incidents whose queue reaches the detector. Heavy rain
cuts capacity by up to 12 % and free-flow speed by up to 10 % (the ranges the US Highway
Capacity Manual gives for heavy rain). Demand changes reach the detector with a lag of a few
minutes, so jams build and clear gradually. The detector also runs automatic incident detection:
an ``incident`` event a minute or two after a collision nearby, and rare false alarms.
"""

from __future__ import annotations

import math
import random
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, ClassVar

from geo.position import Position
from sensing.decode import BUILTIN_KINDS, KindSpec
from simulators.devices.base import BaseDevice, Output
from simulators.physics.traffic import (
    CAPACITY_VEH_H_LANE,
    bpr_speed_kmh,
    flow_and_density,
    occupancy_pct,
)

if TYPE_CHECKING:
    from simulators.scenario import ScenarioState

TAU_S = 180.0  # how fast the state follows demand
FALSE_ALARMS_PER_S = 1 / (3 * 86400)  # automatic incident detection: one false alarm in 3 days
FALSE_CONFIDENCE = (0.3, 0.6)


class TrafficDetector(BaseDevice):
    kind: ClassVar[str] = "traffic"
    spec: ClassVar[KindSpec] = BUILTIN_KINDS["traffic"]
    drain_v_per_h: ClassVar[float] = 0.001  # mains powered

    def __init__(self, device_id: str, position: Position, rng: random.Random) -> None:
        super().__init__(device_id, position, rng)
        self.lanes = rng.choice((2, 2, 3))
        self.free_kmh = rng.uniform(48.0, 54.0)
        self.road_factor = rng.uniform(0.85, 1.1)  # some roads are busier than others
        self.ratio: float | None = None  # demand over capacity, lagged

    def step(self, t: datetime, dt_s: float, world: ScenarioState) -> list[Output]:
        demand = world.base_demand(t) * self.road_factor + world.extra_demand(self.id, t)
        wet = min(1.0, world.rain_mm_h(self.position, t) / 50)
        capacity = world.capacity_factor(self.id, t) * (1 - 0.12 * wet)
        target = demand / capacity
        if self.ratio is None:
            self.ratio = target
        self.ratio += (target - self.ratio) * (1 - math.exp(-dt_s / TAU_S))
        speed = bpr_speed_kmh(self.free_kmh * (1 - 0.10 * wet), self.ratio)
        flow_lane, density = flow_and_density(self.ratio, speed, CAPACITY_VEH_H_LANE * capacity)
        occ = occupancy_pct(density)
        self.true_values = {"speed_kmh": speed, "flow_veh_h": flow_lane * self.lanes,
                            "occupancy_pct": occ}
        out: list[Output] = []
        after = t - timedelta(seconds=dt_s)
        for inc in world.incidents_detected(self.id, after, t):
            out.append(self.event(inc.detected, "incident", {
                "subtype": inc.spec.subtype, "confidence": round(inc.confidence, 3)}))
        if self.rng.random() < FALSE_ALARMS_PER_S * dt_s:
            at = after + timedelta(seconds=self.rng.uniform(0, dt_s))
            out.append(self.event(at, "incident", {
                "subtype": "stalled_vehicle",
                "confidence": round(self.rng.uniform(*FALSE_CONFIDENCE), 3)}))
        self._drain(dt_s)
        g = self.rng.gauss
        out.append(self.telemetry(t, {
            "flow_veh_h": round(max(0.0, flow_lane * self.lanes * (1 + g(0, 0.05)))),
            "speed_kmh": round(max(0.0, speed * (1 + g(0, 0.04))), 1),
            "occupancy_pct": round(min(100.0, max(0.0, occ * (1 + g(0, 0.04)))), 1)}))
        return out


create = TrafficDetector.create
