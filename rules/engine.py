"""The rule engine: routes readings and detections to the hazard rules of their zones.

Pure, like the rules: ``evaluate``, ``evaluate_many``, ``tick`` and ``flush`` take an
``EngineState`` and return a new one with the changes, leaving the old one untouched, so the caller
can commit the changes and only then adopt the new state (on failure it keeps the old one and may
try again). Nothing reads a clock: time is the readings' own ``ts`` (event time) and the ``now``
the caller passes to ``tick``.

What it adds around the hazard rules:

- **Event time.** Per device and channel a watermark: a reading older than one already evaluated
  is too late (counted, not evaluated), a redelivered one is a duplicate. With
  ``reorder_window_s`` > 0, readings are held that long and released in time order, so messages
  out of order by up to the window give exactly the alerts of an in-order run; timeouts fire in
  between, stamped when they became due, never when the tick came.
- **Device health** (``rules.device_health``): a faulty or suspect device's readings do not reach
  the hazards, the zones it fed are reassessed without it, and a maintenance alert
  (``device_fault``) is raised in the device's first hazard zone, one per zone.
- **Rain** (``rules.rain``): rain gauges' accumulations, offered to waterlogging as the CMA signal
  over each zone's catchment.
- **Grid reports**: corroborate an active alert of their category near them, add confidence to a
  fall zone's detections, or become alerts of their own in the worker's grid cell.
- **Risk**: ``zone_risk`` says ``unknown`` where every device that senses a zone is faulty,
  silent or unheard: unknown is not normal.

Its parts, each small and pure: ``rules.engine_state`` (the state and its working copy),
``rules.event_time`` (watermark, reordering, deduplication), ``rules.timeouts`` (the deadline
queue), ``rules.context`` (rain outlook, neighbours, trusted devices), ``rules.router`` (which
zones and rules an item concerns); every rule behind ``rules.hazard.Rule``. What is left here
wires them together: applying an item, device health and maintenance alerts, grid reports.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any, Literal

from geo.nearby import NearbyIndex
from geo.zones import Zone
from rules import rain as rainmod
from rules import registry
from rules.base import DEVICE_FAULT, AlertChange, Detection, DeviceSite, Observation
from rules.context import Context, World
from rules.device_health import DeviceHealth, DeviceHealthRule
from rules.engine_state import Counts, EngineState, FaultZone, Item, Key, Work
from rules.event_time import EventTime
from rules.falling_object import CAMERA_RANGE_M
from rules.hazard import Hazard, Rule
from rules.levels import Level
from rules.params import RulesParams
from rules.reports import REPORT_TYPE, ReportRule
from rules.router import Router
from rules.timeouts import DEVICE, RULE, Timeouts
from rules.waterlogging import HAZARD as WATERLOGGING
from rules.waterlogging import WaterloggingRule

Risk = Literal["clear", "unknown"] | Level
REPORT_RULE = ReportRule.name
ZoneRule = Rule  # the name of the first engine's interface
__all__ = ["CAMERA_RANGE_M", "Counts", "Engine", "EngineConfigError", "EngineState", "FaultZone",
           "ZoneRule"]


class EngineConfigError(ValueError):
    """The rule parameters and the zones do not fit together; the message lists every misfit."""


class Engine:
    def __init__(self, params: RulesParams, zones: Mapping[str, Zone],
                 devices: Iterable[DeviceSite] = (),
                 hazards: Iterable[Hazard] | None = None) -> None:
        """``hazards``: the registered ones (``rules.registry``) unless given."""
        self.params = params
        self.hazards: dict[str, Hazard] = {
            h.name: h for h in (registry.hazards() if hazards is None else hazards)}
        self._reports = ReportRule(params.reports)
        self._rules: dict[str, Rule[Any]] = {
            **{name: h.rule(params.of(name)) for name, h in self.hazards.items()},
            REPORT_RULE: self._reports}
        self._health = DeviceHealthRule(params.device_health)
        problems: list[str] = []
        for zone_id, zone in zones.items():
            if zone_id != zone.id:
                problems.append(f"zone {zone.id!r} is filed under {zone_id!r}")
            for hazard in zone.hazards:
                rule = self._rules.get(hazard)
                if rule is None:
                    problems.append(f"zone {zone.id!r} carries {hazard!r}, which has no rule")
                    continue
                try:
                    rule.check_zone(zone)
                except ValueError as exc:
                    problems.append(str(exc))
        if problems:
            raise EngineConfigError("; ".join(problems))
        self.zones: dict[str, Zone] = dict(zones)
        self.registry: dict[str, DeviceSite] = {d.device_id: d for d in devices}
        self._rain_hours = rainmod.windows(params.waterlogging.rain,
                                           params.device_health.dry_window_s)
        nearby = NearbyIndex(self.zones.values())
        self.world = World(params, self.zones, self.registry, nearby, WATERLOGGING)
        self.router = Router(self.zones, self.hazards, nearby)
        self._timeouts = Timeouts(self._health, self._rules, self._fire_device, self._tick_rule)
        self._event_time = EventTime(params.event_time.reorder_window_s,
                                     params.event_time.dedup_s, self._timeouts.advance,
                                     self._apply)

    # --- public API -----------------------------------------------------------------------

    def evaluate(self, state: EngineState, item: Item) -> tuple[EngineState, list[AlertChange]]:
        """Feed one reading or detection (each zone it lies in counts)."""
        return self.evaluate_many(state, (item,))

    def evaluate_many(self, state: EngineState, items: Iterable[Item],
                      now: datetime | None = None, received: datetime | None = None
                      ) -> tuple[EngineState, list[AlertChange]]:
        """Feed many items, then ``tick`` to ``now`` if given: one copy of the state for all.
        ``received``: the server's clock when they arrived, if the caller knows it (silence is
        then also judged on it: ``DeviceHealthRule.tick``)."""
        w = Work(state)
        batch = list(items)
        w.arrived = max((i.ts for i in batch), default=None)
        w.received = received
        for item in batch:
            self._event_time.submit(w, item)
        if now is not None:
            self._event_time.tick(w, now)
        return w.freeze(), w.changes

    def tick(self, state: EngineState, now: datetime, received: datetime | None = None
             ) -> tuple[EngineState, list[AlertChange]]:
        """Release held readings up to ``now`` less the reorder window, and run the timeouts
        (clearing, silence) that are due by then. ``received``: the server's clock, if known."""
        w = Work(state)
        w.received = received
        self._event_time.tick(w, now)
        return w.freeze(), w.changes

    def flush(self, state: EngineState) -> tuple[EngineState, list[AlertChange]]:
        """Release every held reading (end of a replay), and run timeouts to the newest one."""
        w = Work(state)
        if w.has_buffer():
            self._event_time.release(w, None)
        if w.newest is not None:
            self._timeouts.advance(w, w.newest)
        return w.freeze(), w.changes

    def current_levels(self, state: EngineState) -> dict[tuple[str, str], Level]:
        """The active level of every (zone_id, hazard) that has one."""
        levels: dict[tuple[str, str], Level] = {}
        for (zone_id, name), st in sorted(state.rules.items(), key=lambda kv: kv[0]):
            for hazard, level in self._rules[name].levels(st).items():
                levels[(zone_id, hazard)] = level
        for zone_id, fz in sorted(state.faults.items()):
            if fz.level is not None:
                levels[(zone_id, DEVICE_FAULT)] = fz.level
        return dict(sorted(levels.items()))

    def restore(self, levels: Mapping[tuple[str, str], Level]) -> EngineState:
        """The state to resume from after a restart, given the active alerts' levels.

        Entries for zones this engine does not know, or hazards it cannot hold there, are
        skipped; the caller finds them by comparing with ``current_levels`` and closes them.
        """
        rules: dict[Key, object] = {}
        faults: dict[str, FaultZone] = {}
        for (zone_id, alert), raw in sorted(levels.items()):
            level = Level(raw)
            zone = self.zones.get(zone_id)
            if zone is None:
                continue
            if alert == DEVICE_FAULT:
                faults[zone_id] = FaultZone(level, (), restored=True)
                continue
            name = self._holder(zone, alert)
            if name is None:
                continue
            rule = self._rules[name]
            st = rules.get((zone_id, name))
            rules[(zone_id, name)] = rule.restore_alert(
                rule.initial() if st is None else st, alert, level)
        state = EngineState(rules=MappingProxyType(rules), faults=MappingProxyType(faults))
        return replace(state, due=self._timeouts.earliest(Work(state)))

    def zone_risk(self, state: EngineState) -> dict[str, dict[str, Risk]]:
        """Per zone that carries hazards, per hazard: its level, ``"clear"`` or ``"unknown"``.

        Unknown: no device that senses the zone for the hazard is heard and trusted (all faulty,
        silent or never heard). Silence is found by ``tick``; a restored engine knows nothing
        until its devices report.
        """
        levels = self.current_levels(state)
        sensors = self.router.sensing_index({**self.registry, **state.sites})
        out: dict[str, dict[str, Risk]] = {}
        for zone in self.zones.values():
            if not zone.hazards:
                continue
            risk: dict[str, Risk] = {}
            for hazard in zone.hazards:
                level = levels.get((zone.id, hazard))
                if level is not None:
                    risk[hazard] = level
                    continue
                sensing = sensors.devices(zone, hazard)
                alive = [d for d in sensing if (h := state.health.get(d)) is not None
                         and h.last_ts is not None and h.trusted]
                risk[hazard] = "clear" if alive else "unknown"
            out[zone.id] = risk
        return out

    def faulty_devices(self, state: EngineState) -> dict[str, DeviceHealth]:
        """Devices with a fault now (maintenance), by id."""
        return {d: h for d, h in sorted(state.health.items()) if h.fault is not None}

    # --- registry changes at run time ---------------------------------------------------------

    def register_device(self, site: DeviceSite) -> None:
        """Add a device to the registry, or move it (an admin's change through the API, while
        the engine runs); what the engine memoised about the fleet is worked out again."""
        self.registry[site.device_id] = site
        self._forget_fleet_memos()

    def retire_device(self, state: EngineState, device_id: str) -> EngineState:
        """Take a device out of the registry and out of ``state``: its health, its learned
        site and its rain record go, so that its silence never raises a fault. Alerts it fed
        clear by their own timeouts, as when any gauge stops."""
        self.registry.pop(device_id, None)
        self._forget_fleet_memos()

        def without(section: Mapping[str, Any]) -> Mapping[str, Any]:
            if device_id not in section:
                return section
            return MappingProxyType({k: v for k, v in section.items() if k != device_id})

        return replace(state, health=without(state.health), sites=without(state.sites),
                       rain=without(state.rain))

    def _forget_fleet_memos(self) -> None:
        self.world.forget_fleet()
        self.router.forget_fleet()

    # --- applying one item ----------------------------------------------------------------

    def _apply(self, w: Work, item: Item) -> None:
        w.now = item.ts
        if isinstance(item, Observation):
            self._observation(w, item)
        else:
            self._detection(w, item)

    def _to_zone_rules(self, w: Work, item: Item) -> None:
        ctx = Context(self.world, w)
        for zone_id, hazard in self.router.targets(item):
            key = (zone_id, hazard)
            rule = self._rules[hazard]
            old = w.rules.get(key)
            current = rule.initial() if old is None else old
            new, changes = rule.evaluate(self.zones[zone_id], current, item, ctx)
            if new is not current:
                self._set_rule(w, key, new)
            self._emit(w, changes)

    def _set_rule(self, w: Work, key: Key, st: object) -> None:
        w.rules[key] = st
        self._timeouts.note(w, RULE, key, self._rules[key[1]].deadline(st))

    def _emit(self, w: Work, changes: list[AlertChange]) -> None:
        for ch in changes:
            if ch.level is None:
                w.cleared[(ch.zone_id, ch.hazard)] = ch.ts
            w.changes.append(ch)

    def _tick_rule(self, w: Work, key: Key, now: datetime) -> None:
        zone = self.zones[key[0]]
        st = w.rules.get(key)
        w.now = now
        new, changes = self._rules[key[1]].tick(zone, st, now, Context(self.world, w))
        self._set_rule(w, key, new)
        self._emit(w, changes)

    def _fire_device(self, w: Work, device_id: str, at: datetime) -> None:
        old = w.health.get(device_id)
        if old is not None:
            self._set_health(w, device_id, old, self._health.tick(old, at, w.received), at)

    # --- device health --------------------------------------------------------------------

    def _set_health(self, w: Work, device_id: str, old: DeviceHealth, new: DeviceHealth,
                    ts: datetime) -> None:
        if new is old:
            return
        w.health[device_id] = new
        self._timeouts.note(w, DEVICE, (device_id, ""), self._health.deadline(new))
        if old.trusted != new.trusted:
            self._reassess_device(w, device_id, ts)
        fz = self._fault_zone(w, device_id)
        if fz is not None and (old.fault != new.fault or
                               ((f := w.faults.get(fz)) is not None and f.restored)):
            self._refresh_faults(w, fz, ts)

    def _reassess_device(self, w: Work, device_id: str, ts: datetime) -> None:
        """The device's trust changed: the zones it feeds are judged again without (or with) it."""
        site = w.sites.get(device_id) or self.registry.get(device_id)
        if site is None:
            return
        zone_ids = list(site.zone_ids)
        if site.kind == "rain" and site.position is not None:
            zone_ids += self.world.catchment_zones(site.position)
        zone_ids += [z for z, _ in self.router.routed(site.kind, site.position)]
        self._reassess(w, dict.fromkeys(zone_ids), ts)

    def _reassess(self, w: Work, zone_ids: Iterable[str], ts: datetime,
                  only: str | None = None) -> None:
        ctx = Context(self.world, w)
        w.now = ts
        for zone_id in zone_ids:
            zone = self.zones.get(zone_id)
            if zone is None:
                continue
            for hazard in zone.hazards:
                if only is not None and hazard != only:
                    continue
                st = w.rules.get((zone_id, hazard))
                if st is None:
                    continue  # nothing known there yet: nothing to judge again
                new, changes = self._rules[hazard].reassess(zone, st, ts, ctx)
                if new is not st:
                    self._set_rule(w, (zone_id, hazard), new)
                self._emit(w, changes)

    def _refresh_faults(self, w: Work, zone_id: str, ts: datetime) -> None:
        faulty = sorted(d for d, h in w.health.items()
                        if h.fault is not None and self._fault_zone(w, d) == zone_id)
        old = w.faults.get(zone_id) or FaultZone()
        level = Level[self.params.device_health.alert_level.upper()] if faulty else None
        w.faults[zone_id] = FaultZone(level, tuple(faulty))
        if level == old.level:
            return
        zone = self.zones[zone_id]
        if level is None:
            title = f"Devices at {zone.name} working again: their readings are used"
            evidence: tuple[Mapping[str, Any], ...] = tuple(
                {"device_id": d, "fault": None} for d in old.devices)
        else:
            hs = [w.health.get(d) for d in faulty]
            what = "; ".join(f"{h.device_id} {h.fault} ({h.fault_detail})" for h in hs if h)
            title = f"Device fault at {zone.name}: {what}. Readings held back until repaired"
            evidence = tuple(h.evidence() for h in hs if h)
        self._emit(w, [AlertChange(zone_id, DEVICE_FAULT, level, ts, title, evidence)])


    def _rain_reading(self, w: Work, obs: Observation) -> None:
        rate = obs.values.get(rainmod.RATE_KEY)
        if rate is None:
            return
        old = w.rain.get(obs.device_id)
        new = rainmod.add_reading(old, obs.device_id, obs.position, obs.ts, rate,
                                  self.params.waterlogging.rain, self._rain_hours)
        if new is old:
            return
        w.rain[obs.device_id] = new
        if self.params.waterlogging.rain.enabled and new.position is not None:
            w.now = obs.ts
            water = self._rules.get(WATERLOGGING)
            if not isinstance(water, WaterloggingRule):
                return
            changed = []
            for zone_id in self.world.catchment_zones(new.position):
                st = w.rules.get((zone_id, WATERLOGGING))
                if st is not None and water.rain_changed(st, self.world.outlook(w, zone_id)):
                    changed.append(zone_id)
            self._reassess(w, changed, obs.ts, only=WATERLOGGING)


    def _report(self, w: Work, det: Detection) -> None:
        """A grid worker's report: offered to the zones of its category near it (each rule says
        whether it matched there), or else an alert of its own in the worker's grid cell."""
        rp = self.params.reports
        category = det.attrs.get("category")
        if not isinstance(category, str) or category not in rp.categories \
                or category not in self.hazards:
            return  # "other": logged in the event store, not a hazard
        matched = False
        ctx = Context(self.world, w)
        rule = self._rules[category]
        limit = max(rp.corroborate_m, rule.report_radius_m)
        for zone_id in self.router.near(det.position, category, limit) \
                if det.position is not None else ():
            zone = self.zones[zone_id]
            key = (zone_id, category)
            st = w.rules.get(key)
            current = rule.initial() if st is None else st
            new, changes, here = rule.corroborate(zone, current, det, ctx)
            if new is not current:
                self._set_rule(w, key, new)
            self._emit(w, changes)
            if here:
                matched = True
                continue
            cleared = w.cleared.get(key)
            if cleared is not None and timedelta(0) <= det.ts - cleared <= \
                    timedelta(seconds=rp.corroborate_s):
                matched = True  # it was there a moment ago: a late witness, not a new hazard
        if matched:
            return
        cell = next((z for z in det.zone_ids if z in self.zones
                     and self.zones[z].type == "grid_cell"), None)
        if cell is None:
            return
        key = (cell, REPORT_RULE)
        rst = w.rules.get(key)
        current_r = self._reports.initial() if rst is None else rst
        new_r, changes = self._reports.evaluate(self.zones[cell], current_r, det, ctx)
        if new_r is not current_r:
            self._set_rule(w, key, new_r)
        self._emit(w, changes)


    def _learn_site(self, w: Work, obs: Observation) -> DeviceSite:
        site = w.sites.get(obs.device_id) or self.registry.get(obs.device_id)
        if site is None or site.zone_ids != obs.zone_ids or site.position != obs.position \
                or site.kind != obs.kind:
            # Only what the registry does not already say (an unregistered or moved device):
            # a city's fixed devices cost the state nothing here.
            site = DeviceSite(obs.device_id, obs.kind, obs.position, obs.zone_ids)
            w.sites[obs.device_id] = site
        return site

    def _observation(self, w: Work, obs: Observation) -> None:
        self._learn_site(w, obs)
        h = w.health.get(obs.device_id) or self._health.initial(obs.device_id, obs.kind)
        ok = True
        heard = max(t for t in (obs.ts, w.clock, w.arrived) if t is not None)
        if self._health.watches(obs.kind):
            new_h, ok = self._health.observe(h, obs.ts, obs.values,
                                             self.world.peers(w, obs, h.fault == "drift"), heard,
                                             w.received)
        else:
            stamp: dict[str, Any] = {}
            if h.last_ts is None or h.last_ts < obs.ts:
                stamp["last_ts"] = obs.ts
            if h.heard is None or heard > h.heard:
                stamp["heard"] = heard
            if w.received is not None and (h.received is None or w.received > h.received):
                stamp["received"] = w.received
            new_h = replace(h, **stamp) if stamp else h
        self._set_health(w, obs.device_id, h, new_h, obs.ts)
        if not ok:
            w.count("held_back")
            return
        if obs.kind == "rain":
            self._rain_reading(w, obs)
        self._to_zone_rules(w, obs)

    def _detection(self, w: Work, det: Detection) -> None:
        h = w.health.get(det.device_id)
        if h is not None and not h.trusted and h.fault != "silent":
            w.count("held_back")  # a faulty device's events are as untrusted as its readings
            return
        if det.type == REPORT_TYPE:
            self._report(w, det)
        else:
            self._to_zone_rules(w, det)


    def _holder(self, zone: Zone, alert: str) -> str | None:
        """The rule whose state in ``zone`` holds alerts of this name (None: none here)."""
        for name in zone.hazards:
            h = self.hazards.get(name)
            if h is not None and alert in h.alert_names():
                return name
        if alert in self.params.reports.categories and self._reports.enabled:
            return REPORT_RULE
        return None


    def _fault_zone(self, w: Work, device_id: str) -> str | None:
        site = w.sites.get(device_id) or self.registry.get(device_id)
        return None if site is None else self.router.fault_zone(site)
