"""The README's wind gauge: a device kind plug-in (``sensing.plugins``), validated and simulated.

Kept identical to the example in README.md, "Plugging a device in" (a test checks).
"""

import math
from datetime import datetime
from typing import ClassVar

from sensing.decode import KindSpec, Number
from simulators.devices.base import BaseDevice, Output
from simulators.scenario import ScenarioState


class WindGauge(BaseDevice):
    kind: ClassVar[str] = "wind"  # topics city/wind/{device_id}/{telemetry|event|status}
    # What the platform accepts; anything else is dead-lettered with the reason.
    spec: ClassVar[KindSpec] = KindSpec(
        required_values={"wind_speed_m_s": Number(0, 100)},
        optional_values={"wind_gust_m_s": Number(0, 150), "wind_dir_deg": Number(0, 360)})
    HEIGHT_M = 240.0

    def step(self, t: datetime, dt_s: float, world: ScenarioState) -> list[Output]:
        # 10 m wind: calm at night, breezy in the afternoon, squalls under a storm cell.
        hour = world.local_hour(t)
        rain = world.rain_mm_h(self.position, t)
        v10 = 3 + 1.5 * math.sin((hour - 9) * math.pi / 12) + 0.08 * rain
        v = v10 * (self.HEIGHT_M / 10) ** 0.3 * (1 + self.rng.gauss(0, 0.08))  # urban power law
        self._drain(dt_s)  # the battery
        return [self.telemetry(t, {"wind_speed_m_s": round(v, 1),
                                   "wind_gust_m_s": round(v * self.rng.uniform(1.3, 1.6), 1),
                                   "wind_dir_deg": round(self.rng.uniform(100, 140))})]
