"""Rain gauge: the scenario's rain field at the gauge, with a tipping bucket's noise."""

from __future__ import annotations

import random
from collections import deque
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, ClassVar

from simulators.devices.base import BaseDevice, Output, Position, Site

if TYPE_CHECKING:
    from citywatch.config import Device
    from simulators.scenario import ScenarioState


class RainGauge(BaseDevice):
    kind: ClassVar[str] = "rain"

    def __init__(self, device_id: str, position: Position, rng: random.Random) -> None:
        super().__init__(device_id, position, rng)
        self._bias = rng.uniform(0.95, 1.05)  # calibration differs a little per gauge
        self._hour: deque[tuple[datetime, float]] = deque()  # (end of interval, mm in it)
        self._hour_mm = 0.0

    def step(self, t: datetime, dt_s: float, scenario: ScenarioState) -> list[Output]:
        # The gauge reports the mean rate over its interval, not an instant.
        start = t - timedelta(seconds=dt_s)
        mean = (scenario.rain_mm_h(self.position, start + timedelta(seconds=dt_s / 2))
                + scenario.rain_mm_h(self.position, t)) / 2
        rate = max(0.0, mean * self._bias * (1 + self.rng.gauss(0, 0.03))) if mean > 0 else 0.0
        mm = rate * dt_s / 3600
        self._hour.append((t, mm))
        self._hour_mm += mm
        while self._hour and self._hour[0][0] <= t - timedelta(hours=1):
            self._hour_mm -= self._hour.popleft()[1]
        self._hour_mm = max(0.0, self._hour_mm)  # no -0.0 from float residue
        self._drain(dt_s)
        return [self.telemetry(t, {"rain_rate_mm_h": round(rate, 1),
                                   "rain_1h_mm": round(self._hour_mm, 1)})]


def create(device: Device, _site: Site, rng: random.Random) -> RainGauge:
    return RainGauge(device.id, device.position, rng)
