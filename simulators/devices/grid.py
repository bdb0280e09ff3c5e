"""Grid worker's phone: the worker's position on patrol, and occasional reports.

The worker walks between random points near their post and pauses there. Reports come rarely on a
calm day and more often in heavy rain, when most are about standing water.
"""

from __future__ import annotations

import math
import random
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, ClassVar

from simulators.devices.base import (
    BaseDevice,
    Output,
    Position,
    Site,
    distance_m,
    offset_m,
    round_pos,
)

if TYPE_CHECKING:
    from citywatch.config import Device
    from simulators.scenario import ScenarioState

WALK_M_S = 1.2
PATROL_RADIUS_M = 300.0
CALM_REPORTS_PER_S = 1 / (24 * 3600)  # one routine report per worker per day
RAIN_REPORTS_PER_S = 1 / 7200  # at 100 mm/h, one waterlogging report per worker per two hours

TEXTS = {
    "waterlogging": ("Standing water across the road, about ankle deep",
                     "Drain blocked, water spreading onto the pavement",
                     "Underpass entrance under water, cars hesitating"),
    "other": ("Broken street light", "Overflowing rubbish bin",
              "Loose paving slab on the pavement", "Illegal parking blocking the fire lane"),
}


class GridWorker(BaseDevice):
    kind: ClassVar[str] = "grid"
    drain_v_per_h: ClassVar[float] = 0.08  # a phone in use all shift

    def __init__(self, device_id: str, position: Position, rng: random.Random) -> None:
        super().__init__(device_id, position, rng)
        self.home = position
        self.loc = position
        self._target = position
        self._pause_s = rng.uniform(0, 300)

    def _walk(self, dt_s: float) -> None:
        left = dt_s
        while left > 0:
            if self._pause_s > 0:
                used = min(left, self._pause_s)
                self._pause_s -= used
                left -= used
                continue
            d = distance_m(self.loc, self._target)
            if d < 0.5:
                r = PATROL_RADIUS_M * math.sqrt(self.rng.random())
                a = self.rng.uniform(0, 2 * math.pi)
                self._target = offset_m(self.home, r * math.sin(a), r * math.cos(a))
                self._pause_s = self.rng.uniform(60, 600)
                continue
            step = min(d, WALK_M_S * left)
            f = step / d
            self.loc = (self.loc[0] + (self._target[0] - self.loc[0]) * f,
                        self.loc[1] + (self._target[1] - self.loc[1]) * f)
            left -= step / WALK_M_S

    def step(self, t: datetime, dt_s: float, scenario: ScenarioState) -> list[Output]:
        self._walk(dt_s)
        out: list[Output] = []
        rain = scenario.rain_mm_h(self.loc, t)
        wet_rate = RAIN_REPORTS_PER_S * min(1.0, rain / 100)
        if self.rng.random() < (CALM_REPORTS_PER_S + wet_rate) * dt_s:
            category = ("waterlogging" if self.rng.random() * (CALM_REPORTS_PER_S + wet_rate)
                        < wet_rate else "other")
            at = t - timedelta(seconds=self.rng.uniform(0, dt_s))
            out.append(self.event(at, "report", {"category": category, "loc": round_pos(self.loc),
                                                 "text": self.rng.choice(TEXTS[category])}))
        self._drain(dt_s)
        if self.battery_v <= 3.5:
            self.battery_v = 4.15  # the worker charges the phone
        pct = (self.battery_v - self.BATTERY_MIN_V) / (4.2 - self.BATTERY_MIN_V) * 100
        out.append(self.telemetry(t, {"battery_pct": round(min(100.0, max(0.0, pct)), 1)},
                                  loc=self.loc))
        return out


def create(device: Device, _site: Site, rng: random.Random) -> GridWorker:
    return GridWorker(device.id, device.position, rng)
