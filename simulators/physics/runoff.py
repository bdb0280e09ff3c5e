"""Runoff into a low point: a linear reservoir drained by gullies or a pump station.

Storage ``S`` is in mm of water over the catchment (the streets draining to the low point):

    dS/dt = psi * i  -  min(S / k, Q)

``psi`` is the runoff coefficient of paved streets, ``i`` the rain rate after the initial loss
(wetting, puddles), ``k`` the reservoir time constant and ``Q`` what the drains or pumps take away
(mm/h over the catchment). Water stands on the road once the storage exceeds the sump and pipe
volume ``sump_mm``; it spreads over a ponding area ``area_ratio`` times smaller than the catchment.
So depth rises while it rains harder than the drains take, and recedes after: first at the drain
capacity, then exponentially. The real river level in ``../shared/data/sensors`` recedes
exponentially after the September 2025 event (a linear reservoir, k about 15 h for a catchment of
tens of km2); the urban constants below are for catchments of a few hectares.

Drain capacities follow the Suzhou storm formula: gullies of old-town roads carry about the
1-year, 60-minute storm (35 mm/h), underpass pumps about the 2-year one (48 mm/h).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Catchment:
    runoff_coefficient: float  # psi: share of the rain that runs off paved streets
    initial_loss_mm: float  # wetting and depression storage, lost before any runoff
    time_constant_min: float  # k
    capacity_mm_h: float  # Q: drains or pumps, over the catchment
    sump_mm: float  # storage in pipes and the pump sump before water stands on the road
    area_ratio: float  # catchment area over ponding area

    def __post_init__(self) -> None:
        if not (0 < self.runoff_coefficient <= 1 and self.time_constant_min > 0
                and self.capacity_mm_h >= 0 and self.area_ratio > 0
                and min(self.initial_loss_mm, self.sump_mm) >= 0):
            raise ValueError(f"{self}: a parameter is out of range")

    def scaled(self, factor: float) -> Catchment:
        """The same site with a catchment ``factor`` times larger (no two sites drain alike)."""
        return Catchment(self.runoff_coefficient, self.initial_loss_mm, self.time_constant_min,
                         self.capacity_mm_h / factor, self.sump_mm, self.area_ratio * factor)


UNDERPASS = Catchment(runoff_coefficient=0.85, initial_loss_mm=1.0, time_constant_min=10,
                      capacity_mm_h=48.0, sump_mm=5.0, area_ratio=15.0)
LOW_ROAD = Catchment(runoff_coefficient=0.85, initial_loss_mm=2.0, time_constant_min=10,
                     capacity_mm_h=35.0, sump_mm=3.0, area_ratio=6.0)
ROAD = Catchment(runoff_coefficient=0.8, initial_loss_mm=2.0, time_constant_min=5,
                 capacity_mm_h=60.0, sump_mm=3.0, area_ratio=1.5)

SITES: dict[str, Catchment] = {"underpass": UNDERPASS, "low_road": LOW_ROAD, "road": ROAD}

MAX_STEP_S = 10.0  # explicit Euler is accurate well below the smallest k (300 s)


class Reservoir:
    """The state of one low point; :meth:`step` advances it."""

    __slots__ = ("catchment", "loss_left_mm", "storage_mm")

    def __init__(self, catchment: Catchment) -> None:
        self.catchment = catchment
        self.storage_mm = 0.0
        self.loss_left_mm = catchment.initial_loss_mm

    def step(self, rain_mm_h: float, dt_s: float, capacity_factor: float = 1.0) -> None:
        """Advance by ``dt_s`` under a constant ``rain_mm_h``; ``capacity_factor`` < 1 for
        blocked gullies or a failed pump."""
        c = self.catchment
        cap = c.capacity_mm_h * capacity_factor
        k_h = c.time_constant_min / 60
        n = max(1, math.ceil(dt_s / MAX_STEP_S))
        h = dt_s / 3600 / n
        for _ in range(n):
            rain = rain_mm_h * h
            if self.loss_left_mm > 0:
                taken = min(rain, self.loss_left_mm)
                self.loss_left_mm -= taken
                rain -= taken
            out = min(self.storage_mm / k_h, cap) * h
            self.storage_mm = max(0.0, self.storage_mm + c.runoff_coefficient * rain - out)
        if rain_mm_h == 0 and self.storage_mm == 0:
            # Dry again: puddles and wetting recover (slowly in truth; at once is close enough).
            self.loss_left_mm = c.initial_loss_mm

    @property
    def depth_cm(self) -> float:
        c = self.catchment
        return max(0.0, self.storage_mm - c.sump_mm) * c.area_ratio / 10
