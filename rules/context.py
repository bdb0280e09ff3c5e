"""The rule context: what the engine tells a rule (and device health) about the world beyond
one zone, as of the reading: whether a device is trusted, the rain outlook over a zone's
catchment, the neighbours' values and the weather around a gauge. Pure: it reads the engine's
working copy (``rules.engine_state.Work``) and the fixed registry of devices.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta

from geo.nearby import NearbyIndex
from geo.position import Position, metres
from geo.zones import Zone
from rules import rain as rainmod
from rules.base import DeviceSite, Observation
from rules.device_health import Peers
from rules.engine_state import Work
from rules.params import RulesParams

FRESH = timedelta(seconds=900)  # a neighbour's or a rain gauge's last value counts this long
DRY_RAIN_MM_H = 0.1  # a rain gauge reading no more than this sees no rain
HEAVY_RAIN_MM_H = 30.0  # smoothed: every low point of the catchment should be filling


_CELL_M = 900.0  # the rain gauges' grid: a little under a hundredth of a degree either way


def _cell(position: Position) -> tuple[int, int]:
    return int(position[0] // 0.01), int(position[1] // 0.01)


class World:
    """The fixed world (zones, registered devices, parameters) and what follows from it."""

    def __init__(self, params: RulesParams, zones: Mapping[str, Zone],
                 registry: Mapping[str, DeviceSite], nearby: NearbyIndex,
                 water_hazard: str) -> None:
        self.params, self.zones, self.registry, self.nearby = params, zones, registry, nearby
        self._water = water_hazard
        self._catchment: dict[Position, tuple[str, ...]] = {}
        self._zone_devices_memo: dict[str, tuple[str, ...]] | None = None
        # Registered rain gauges in cells of about a kilometre, and those near a place (fixed).
        self._rain_cells: dict[tuple[int, int], list[DeviceSite]] = {}
        self._rain_near: dict[tuple[Position, float], tuple[str, ...]] = {}
        self.forget_fleet()

    def forget_fleet(self) -> None:
        """The registry changed (a device added, moved or retired): work its memos out again."""
        self._zone_devices_memo = None
        self._rain_cells = {}
        for site in self.registry.values():
            if site.kind == "rain" and site.position is not None:
                self._rain_cells.setdefault(_cell(site.position), []).append(site)
        self._rain_near = {}

    def rain_gauges_near(self, w: Work, position: Position, radius_m: float
                         ) -> list[rainmod.RainGauge]:
        """The rain gauges the engine has heard of within ``radius_m`` of ``position``: the
        registered ones near it (memoised) and any unregistered or moved one (``w.sites``)."""
        key = (position, radius_m)
        near = self._rain_near.get(key)
        if near is None:
            reach = int(radius_m / _CELL_M) + 2
            cx, cy = _cell(position)
            near = tuple(s.device_id for dx in range(-reach, reach + 1)
                         for dy in range(-reach, reach + 1)
                         for s in self._rain_cells.get((cx + dx, cy + dy), ())
                         if s.position is not None and metres(position, s.position) <= radius_m)
            self._rain_near[key] = near
        ids = dict.fromkeys(near)
        ids.update(dict.fromkeys(d for d, s in w.sites.items() if s.kind == "rain"))
        out = []
        for d in ids:
            g = w.rain.get(d)
            if g is not None and g.position is not None and \
                    metres(position, g.position) <= radius_m:
                out.append(g)
        return out

    def catchment_zones(self, position: Position) -> tuple[str, ...]:
        """The at-risk waterlogging zones whose catchment a rain gauge here is in."""
        found = self._catchment.get(position)
        if found is None:
            rp = self.params.waterlogging.rain
            found = tuple(zid for _, zid in self.nearby.centres_within(
                position, rp.catchment_radius_m, self._water)
                if self.zones[zid].type in rp.at_risk_types)
            self._catchment[position] = found
        return found

    def peers(self, w: Work, obs: Observation, weather: bool = False) -> Peers:
        """Neighbours' values and the weather around a reading (the weather only when a value
        is high enough to need it, or ``weather``: a drifted gauge asking to be vouched for)."""
        p = self.params.device_health
        keys = [k for k in sorted(set(p.drift_tolerance) | set(p.dry_max)) if k in obs.values]
        if not keys:
            return Peers()
        neighbours: set[str] = set()
        if obs.kind == "rain":
            if obs.position is not None:
                neighbours = {g.device_id for g in self.rain_gauges_near(
                    w, obs.position, p.neighbour_radius_m)}
        else:
            zone_devices = self.zone_devices(w)
            for zone_id in obs.zone_ids:
                zone = self.zones.get(zone_id)
                if zone is not None and zone.hazards:
                    neighbours.update(zone_devices.get(zone_id, ()))
        neighbours.discard(obs.device_id)
        values: dict[str, list[float]] = {k: [] for k in keys}
        for d in sorted(neighbours):
            h = w.health.get(d)
            if h is None or h.kind != obs.kind or not h.trusted or h.accepted_ts is None \
                    or obs.ts - h.accepted_ts > FRESH:
                continue
            for k in keys:
                if k in h.values:
                    values[k].append(h.values[k])
        dry: bool | None = None
        raining: bool | None = None
        if obs.kind == "rain":
            # A rain gauge's weather is its neighbours': two or more of them, none with rain.
            others = values.get(rainmod.RATE_KEY, [])
            dry = len(others) >= 2 and all(o <= DRY_RAIN_MM_H for o in others)
        elif obs.position is not None and (weather or any(
                max((obs.values[k], *values[k])) > p.dry_max.get(k, float("inf"))
                for k in keys)):
            dry, raining = self.weather(w, obs.position, obs.ts)
        return Peers(values, dry, raining)

    def zone_devices(self, w: Work) -> dict[str, tuple[str, ...]]:
        """Devices by zone: the registry's (fixed, so memoised), and any unregistered device
        the engine has heard of (rare: a test, or a device not yet in the config)."""
        if self._zone_devices_memo is None:
            fixed: dict[str, list[str]] = {}
            for site in self.registry.values():
                for z in site.zone_ids:
                    fixed.setdefault(z, []).append(site.device_id)
            self._zone_devices_memo = {z: tuple(sorted(ds)) for z, ds in fixed.items()}
        memo = self._zone_devices_memo
        extra = [s for d, s in w.sites.items() if d not in self.registry]
        if not extra:
            return memo
        out = {z: list(ds) for z, ds in memo.items()}
        for site in extra:
            for z in site.zone_ids:
                out.setdefault(z, []).append(site.device_id)
        return {z: tuple(sorted(set(ds))) for z, ds in out.items()}

    def weather(self, w: Work, position: Position, ts: datetime
                 ) -> tuple[bool | None, bool | None]:
        """(dry, raining) around a position from the trusted rain gauges of its catchment:
        dry when none saw rain in the dry window, raining when their smoothed rate is heavy now;
        None when they cannot say."""
        p = self.params
        radius = p.waterlogging.rain.catchment_radius_m
        hours = p.device_health.dry_window_s / 3600
        seen = timedelta(seconds=p.device_health.dry_min_observed_s)
        amounts: list[float] = []
        rates: list[float] = []
        for g in self.rain_gauges_near(w, position, radius):
            h = w.health.get(g.device_id)
            if h is not None and not h.trusted:
                continue
            if ts - g.last_ts > FRESH:
                continue
            rates.append(g.smooth_mm_h)
            if ts - g.first_ts >= seen:
                amounts.append(g.fallen_mm(hours) + g.rate_mm_h)
        raining = None if not rates else sum(rates) / len(rates) >= HEAVY_RAIN_MM_H
        if not amounts:
            return None, raining
        return sum(amounts) / len(amounts) < p.device_health.dry_rain_mm, raining

    def outlook(self, w: Work, zone_id: str) -> rainmod.Outlook | None:
        rp = self.params.waterlogging.rain
        centre = self.nearby.centre(zone_id)
        now = w.now
        gauges = []
        for g in self.rain_gauges_near(w, centre, rp.catchment_radius_m):
            h = w.health.get(g.device_id)
            if h is not None and not h.trusted:
                continue
            if now is not None and now - g.last_ts > FRESH:
                continue
            gauges.append(g)
        return rainmod.outlook(sorted(gauges, key=lambda g: g.device_id), rp)


class Context:
    """The ``RuleContext`` rules get: answers from the working copy, as of ``w.now``."""

    __slots__ = ("_w", "_world")

    def __init__(self, world: World, w: Work) -> None:
        self._world, self._w = world, w

    def trusted(self, device_id: str) -> bool:
        h = self._w.health.get(device_id)
        return h is None or h.trusted

    def rain(self, zone_id: str) -> rainmod.Outlook | None:
        return self._world.outlook(self._w, zone_id)

    def zone_type(self, zone_id: str) -> str | None:
        zone = self._world.zones.get(zone_id)
        return None if zone is None else zone.type
