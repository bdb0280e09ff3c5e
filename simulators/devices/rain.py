"""Rain gauge: a tipping bucket of 0.2 mm over the scenario's rain field.

0.2 mm is the resolution of the real gauge in ``../shared/data/sensors`` (every value there is a
multiple). The rate reported is the tips of the last five minutes, as a gauge's logger computes
it; ``rain_1h_mm`` is the tips of the last hour. So light rain reads 0 then 2.4 mm/h in turn,
and the rate lags the true one by a couple of minutes, as real ones do.
"""

from __future__ import annotations

import math
import random
from collections import deque
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, ClassVar

from geo.position import Position
from sensing.decode import BUILTIN_KINDS, KindSpec
from simulators.devices.base import BaseDevice, Output
from simulators.physics.rain import TIP_MM

RATE_WINDOW = timedelta(minutes=5)
HOUR = timedelta(hours=1)
RAIN_SAMPLE_S = 30.0

if TYPE_CHECKING:
    from simulators.scenario import ScenarioState


class RainGauge(BaseDevice):
    kind: ClassVar[str] = "rain"
    spec: ClassVar[KindSpec] = BUILTIN_KINDS["rain"]

    def __init__(self, device_id: str, position: Position, rng: random.Random) -> None:
        super().__init__(device_id, position, rng)
        self._bias = rng.uniform(0.95, 1.05)  # calibration differs a little per gauge
        self._bucket_mm = rng.uniform(0, TIP_MM)  # the bucket is part full at the start
        self._tips: deque[tuple[datetime, int]] = deque()  # (when, tips) over the last hour

    def step(self, t: datetime, dt_s: float, world: ScenarioState) -> list[Output]:
        n = max(1, math.ceil(dt_s / RAIN_SAMPLE_S))
        h = dt_s / n
        mm = 0.0
        for i in range(n):
            mid = t - timedelta(seconds=dt_s - (i + 0.5) * h)
            mm += world.rain_mm_h(self.position, mid) * h / 3600
        self.true_values = {"rain_rate_mm_h": world.rain_mm_h(self.position, t)}
        self._bucket_mm += mm * self._bias
        tips = int(self._bucket_mm / TIP_MM)
        self._bucket_mm -= tips * TIP_MM
        if tips:
            self._tips.append((t, tips))
        while self._tips and self._tips[0][0] <= t - HOUR:
            self._tips.popleft()
        recent = sum(n for at, n in self._tips if at > t - RATE_WINDOW)
        hour = sum(n for _, n in self._tips)
        self._drain(dt_s)
        rate = recent * TIP_MM * (HOUR / RATE_WINDOW)
        return [self.telemetry(t, {"rain_rate_mm_h": round(rate, 1),
                                   "rain_1h_mm": round(hour * TIP_MM, 1)})]


create = RainGauge.create
