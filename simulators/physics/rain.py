"""Design storms: the Suzhou storm intensity formula, the Chicago hyetograph and a moving cell.

- Intensity formula (IDF): ``i = A (1 + c lg P) / (t + b)^n`` in mm/min, the mean intensity over
  a duration of ``t`` minutes for a return period of ``P`` years. :data:`SUZHOU_2025` holds the
  parameters the Suzhou Municipal People's Government published on 27 January 2025 for the urban
  area (A 17.969, c 1.24, b 18.415, n 0.785; peak position r 0.43 for the 180-minute storm).
- Chicago (Keifer-Chu) hyetograph: the instantaneous intensity whose every window centred on the
  peak holds exactly the IDF depth for that duration; the method the same publication prescribes.
- Space: a storm cell moves across the district (rain starts later downwind) and is strongest on
  its track (Gaussian across it), with a gentle +-10 % texture so that no two gauges agree exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class StormFormula:
    """``i = a (1 + c lg P) / (t + b)^n`` mm/min over ``t`` minutes, return period ``P`` years."""

    a: float
    c: float
    b: float
    n: float

    def scale(self, return_period_years: float) -> float:
        return self.a * (1 + self.c * math.log10(return_period_years))

    def mean_mm_h(self, duration_min: float, return_period_years: float) -> float:
        """Mean intensity (mm/h) of the design storm lasting ``duration_min``."""
        return float(60 * self.scale(return_period_years) / (duration_min + self.b) ** self.n)


SUZHOU_2025 = StormFormula(a=17.969, c=1.24, b=18.415, n=0.785)
SUZHOU_PEAK_RATIO = 0.43  # r for the 180-minute design storm (same publication)


@dataclass(frozen=True, slots=True)
class ChicagoStorm:
    """A Chicago design storm of ``duration_min`` for a ``return_period_years`` storm."""

    return_period_years: float
    duration_min: float
    peak_ratio: float = SUZHOU_PEAK_RATIO
    formula: StormFormula = SUZHOU_2025

    def __post_init__(self) -> None:
        if not (self.return_period_years >= 1 and self.duration_min > 0
                and 0 < self.peak_ratio < 1):
            raise ValueError(f"{self}: expected P >= 1 year, duration > 0 and 0 < r < 1")

    def rate_mm_h(self, minutes: float) -> float:
        """Instantaneous intensity ``minutes`` after the storm began; 0 outside it."""
        if not 0 <= minutes <= self.duration_min:
            return 0.0
        r, f = self.peak_ratio, self.formula
        peak = r * self.duration_min
        # Before the peak time runs compressed by r, after it by (1 - r): one IDF curve each side.
        t = (peak - minutes) / r if minutes < peak else (minutes - peak) / (1 - r)
        return float(60 * self.scale * ((1 - f.n) * t + f.b) / (t + f.b) ** (1 + f.n))

    @property
    def scale(self) -> float:
        return self.formula.scale(self.return_period_years)

    @property
    def depth_mm(self) -> float:
        """Total rain, which the construction makes equal to the IDF depth for the duration."""
        return self.formula.mean_mm_h(self.duration_min, self.return_period_years) * (
            self.duration_min / 60)


@dataclass(frozen=True, slots=True)
class StormCell:
    """Where the storm rains: a cell travelling ``towards_deg`` (0 north, 90 east).

    Positions are km east and north of the district centre. ``width_km`` is the Gaussian width
    across the track; ``offset_km`` moves the track to the right of the centre.
    """

    towards_deg: float = 90.0
    speed_km_h: float = 30.0
    width_km: float = 12.0
    offset_km: float = 0.0

    def __post_init__(self) -> None:
        if self.speed_km_h < 0 or self.width_km <= 0:
            raise ValueError(f"{self}: expected speed_km_h >= 0 and width_km > 0")

    def delay_and_factor(self, x_km: float, y_km: float) -> tuple[float, float]:
        """(seconds the storm arrives later here than at the centre, share of its intensity)."""
        a = math.radians(self.towards_deg)
        along = x_km * math.sin(a) + y_km * math.cos(a)
        across = x_km * math.cos(a) - y_km * math.sin(a)
        delay_s = along / self.speed_km_h * 3600 if self.speed_km_h > 0 else 0.0
        factor = math.exp(-0.5 * ((across - self.offset_km) / self.width_km) ** 2)
        return delay_s, factor


def texture(x_km: float, y_km: float, phases: tuple[float, float, float, float]) -> float:
    """A smooth +-10 % pattern a few km across: near gauges agree, distant ones differ."""
    p1, p2, k1, k2 = phases
    return 1.0 + 0.10 * math.sin(k1 * x_km + p1) * math.cos(k2 * y_km + p2)


TIP_MM = 0.2  # tipping-bucket resolution: every value of the real Gorple gauge is a multiple
