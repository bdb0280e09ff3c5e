"""Grid worker's phone: the worker's position on patrol, and the reports people really send.

A worker walks a loop of waypoints round their post (pausing at each). In heavy rain they ride
to the flood-prone spot nearest their post, as grid workers are posted to known flood points
during a rainstorm warning, and report standing water there once it is ankle deep, again every
15-30 minutes while it lasts: several workers share a spot, so one flooded underpass brings
several reports, which is what the platform has to merge. Workers near a collision or where an
object fell report that too, a few minutes later; now and then a routine report of something
else. Telemetry is the phone's position and battery (phones report a percentage).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, ClassVar

from geo.position import Position, metres
from sensing.decode import BUILTIN_KINDS, KindSpec
from simulators.devices.base import (
    BaseDevice,
    Output,
    offset_m,
    round_pos,
)

if TYPE_CHECKING:
    from simulators.scenario import ScenarioState

WALK_M_S = 1.2
RIDE_M_S = 4.0  # an e-bike through old-town streets
PATROL_RADIUS_M = 300.0
WATCH_WITHIN_M = 2500.0  # a worker watches a flood spot this close to their post
WATCH_RAIN_MM_H = 25.0  # heavy rain: go and watch
REPORT_DEPTH_CM = 10.0  # about ankle deep: worth a report
SEEN_WITHIN_M = 60.0
INCIDENT_WITHIN_M = 400.0
IMPACT_WITHIN_M = 300.0
ROUTINE_PER_S = 1 / 86400  # one routine report per worker per day
DRAIN_PCT_H = 7.0  # GPS and the app on all shift
CHARGE_PCT_H = 50.0  # plugged into a power bank below 20 %

TEXTS = {
    "other": ("Broken street light", "Overflowing rubbish bin",
              "Loose paving slab on the pavement", "Illegal parking blocking the fire lane"),
}


@dataclass(slots=True)
class _Pending:
    due: datetime
    category: str
    text: str


class GridWorker(BaseDevice):
    kind: ClassVar[str] = "grid"
    spec: ClassVar[KindSpec] = BUILTIN_KINDS["grid"]
    reports_battery_v: ClassVar[bool] = False

    def __init__(self, device_id: str, position: Position, rng: random.Random) -> None:
        super().__init__(device_id, position, rng)
        self.home = position
        self.loc = position
        n = rng.randint(4, 6)
        self.route = [self._around(home=position, r_max=PATROL_RADIUS_M) for _ in range(n)]
        self._leg = rng.randrange(n)
        self._pause_s = rng.uniform(0, 300)
        self.battery_pct = rng.uniform(70, 100)
        self._charging = False
        self._spot: str | None = None
        self._spot_known = False
        self._last_report: dict[str, datetime] = {}  # what was reported (flood spot, incident...)
        self._decided: set[str] = set()  # incidents and impacts already weighed up
        self._pending: list[_Pending] = []

    def _around(self, home: Position, r_max: float) -> Position:
        r = r_max * math.sqrt(self.rng.random())
        a = self.rng.uniform(0, 2 * math.pi)
        return offset_m(home, r * math.sin(a), r * math.cos(a))

    def _move(self, target: Position, speed: float, seconds: float) -> float:
        """Towards ``target``; returns the seconds left on arrival (0 if still on the way)."""
        d = metres(self.loc, target)
        if d <= speed * seconds:
            self.loc = target
            return seconds - d / speed
        f = speed * seconds / d
        self.loc = (self.loc[0] + (target[0] - self.loc[0]) * f,
                    self.loc[1] + (target[1] - self.loc[1]) * f)
        return 0.0

    def _patrol(self, seconds: float) -> None:
        left = seconds
        while left > 1e-9:
            if self._pause_s > 0:
                used = min(left, self._pause_s)
                self._pause_s -= used
                left -= used
                continue
            left = self._move(self.route[self._leg], WALK_M_S, left)
            if left > 0 or self.loc == self.route[self._leg]:
                self._leg = (self._leg + 1) % len(self.route)
                self._pause_s = self.rng.uniform(60, 300)

    def _watch_spot(self, world: ScenarioState) -> str | None:
        if not self._spot_known:
            near = [(metres(self.home, p), sid) for sid, p in world.flood_spots.items()]
            near = [x for x in near if x[0] <= WATCH_WITHIN_M]
            self._spot = min(near)[1] if near else None
            self._spot_known = True
        return self._spot

    def step(self, t: datetime, dt_s: float, world: ScenarioState) -> list[Output]:
        spot = self._watch_spot(world)
        depth = world.flood_depth_cm.get(spot, 0.0) if spot else 0.0
        rain = world.rain_mm_h(self.loc, t) if world.storms else 0.0
        if spot is not None and (rain >= WATCH_RAIN_MM_H or depth >= REPORT_DEPTH_CM / 2):
            self._move(world.flood_spots[spot], RIDE_M_S, dt_s)
        else:
            self._patrol(dt_s)
        self._observe(t, dt_s, world, spot, depth)
        self._battery(dt_s)
        out: list[Output] = []
        for p in sorted((p for p in self._pending if p.due <= t), key=lambda p: p.due):
            out.append(self.event(p.due, "report", {
                "category": p.category, "loc": round_pos(self._gps()), "text": p.text}))
        self._pending = [p for p in self._pending if p.due > t]
        out.append(self.telemetry(t, {"battery_pct": round(self.battery_pct, 1)}, loc=self.loc))
        return out

    def _gps(self) -> Position:
        return offset_m(self.loc, self.rng.gauss(0, 5), self.rng.gauss(0, 5))

    def _later(self, t: datetime, lo_s: float, hi_s: float, category: str, text: str) -> None:
        due = t + timedelta(seconds=self.rng.uniform(lo_s, hi_s))
        self._pending.append(_Pending(due, category, text))

    def _observe(self, t: datetime, dt_s: float, world: ScenarioState, spot: str | None,
                 depth: float) -> None:
        rng = self.rng
        if (spot is not None and depth >= REPORT_DEPTH_CM
                and metres(self.loc, world.flood_spots[spot]) <= SEEN_WITHIN_M):
            last = self._last_report.get(spot)
            # A first report once the photo is taken, then follow-ups while it lasts.
            if last is None or (t - last).total_seconds() >= rng.uniform(900, 1800):
                seen = 5 * round(depth * rng.uniform(0.7, 1.3) / 5)
                text = (f"Standing water at the low point, about {max(5, seen)} cm deep"
                        + ("; still there" if last is not None else "; cars slowing down"))
                self._later(t, 60, 240, "waterlogging", text)
                self._last_report[spot] = t + timedelta(seconds=240)
        for inc in world.active_incidents(t):
            key = f"incident:{inc.device_id}:{inc.at.isoformat()}"
            if key not in self._decided and metres(self.loc, inc.position) <= INCIDENT_WITHIN_M:
                self._decided.add(key)
                if rng.random() < 0.7:
                    self._later(t, 120, 480, "traffic",
                                f"{inc.spec.subtype.replace('_', ' ').capitalize()} blocking a "
                                "lane, queue building")
        for throw in world.impacts(t - timedelta(seconds=dt_s), t):
            if throw.zone is None:
                continue
            c = throw.zone.geometry.centroid
            key = f"impact:{throw.camera_id}:{throw.at.isoformat()}"
            if key not in self._decided and metres(self.loc, (c.x, c.y)) <= IMPACT_WITHIN_M:
                self._decided.add(key)
                if rng.random() < 0.5:
                    self._later(t, 180, 600, "falling_object",
                                f"Residents say something fell from a high floor of "
                                f"{throw.building_id}")
        if rng.random() < ROUTINE_PER_S * dt_s:
            self._later(t, 0, dt_s, "other", rng.choice(TEXTS["other"]))

    def _battery(self, dt_s: float) -> None:
        hours = dt_s / 3600
        if self.battery_pct < 20:
            self._charging = True
        elif self.battery_pct >= 95:
            self._charging = False
        delta = CHARGE_PCT_H - DRAIN_PCT_H if self._charging else -DRAIN_PCT_H
        self.battery_pct = min(100.0, max(0.0, self.battery_pct + delta * hours))
        self.battery_v = 3.3 + 0.9 * self.battery_pct / 100  # for faults that drain it


create = GridWorker.create
