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
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any, ClassVar, Generic, Literal, Protocol, TypeVar

import shapely

from geo.crs import lonlat_to_utm, to_utm
from geo.zones import Zone
from rules import rain as rainmod
from rules.base import (
    DEVICE_FAULT,
    FALLING_OBJECT_PATTERN,
    AlertChange,
    Detection,
    DeviceSite,
    Observation,
    Position,
)
from rules.device_health import DeviceHealth, DeviceHealthRule, Peers
from rules.falling_object import FallingObjectRule, FallingObjectState, metres
from rules.levels import Level
from rules.params import RulesParams
from rules.reports import REPORT_TYPE, ReportRule, ReportState, report_evidence
from rules.traffic import TrafficRule
from rules.waterlogging import WaterloggingRule, WaterloggingState

S = TypeVar("S")
K = TypeVar("K")
V = TypeVar("V")
Key = tuple[str, str]  # (zone_id, rule name); the hazard rules are named after their hazard
Item = Observation | Detection
Risk = Literal["clear", "unknown"] | Level
REPORT_RULE = ReportRule.name
CAMERA_RANGE_M = 300.0  # a camera watches the fall zones this close to it (for zone risk)
FRESH = timedelta(seconds=900)  # a neighbour's or a rain gauge's last value counts this long
DRY_RAIN_MM_H = 0.1  # a rain gauge reading no more than this sees no rain
HEAVY_RAIN_MM_H = 30.0  # smoothed: every low point of the catchment should be filling


class ZoneRule(Protocol[S]):
    """What the engine needs of a hazard rule; ``S`` is the rule's immutable per-zone state."""

    name: ClassVar[str]

    def check_zone(self, zone: Zone) -> None:
        """Raise ``ValueError`` if the rule's parameters cannot serve this zone."""

    def initial(self) -> S: ...

    def restore(self, level: Level) -> S: ...

    def level(self, state: S) -> Level | None: ...

    def deadline(self, state: S) -> datetime | None: ...

    def evaluate(self, zone: Zone, state: S, item: Item, ctx: Any
                 ) -> tuple[S, list[AlertChange]]:
        """Return ``state`` itself (the same object) when ``item`` is not the rule's business."""
        ...

    def reassess(self, zone: Zone, state: S, ts: datetime, ctx: Any
                 ) -> tuple[S, list[AlertChange]]: ...

    def tick(self, zone: Zone, state: S, now: datetime, ctx: Any
             ) -> tuple[S, list[AlertChange]]: ...


class EngineConfigError(ValueError):
    """The rule parameters and the zones do not fit together; the message lists every misfit."""


def _empty() -> Mapping[Any, Any]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Counts:
    """What event time and device health did with the readings (for metrics and health)."""

    evaluated: int = 0
    late: int = 0  # evaluated behind the event-time clock: a device's backlog, in its own order
    too_late: int = 0  # older than what its device already had evaluated: stored, not evaluated
    duplicates: int = 0  # redelivered: not evaluated twice
    held_back: int = 0  # readings device health kept from the hazards


@dataclass(frozen=True, slots=True)
class FaultZone:
    """The maintenance alert of one zone: the faulty devices whose first zone it is."""

    level: Level | None = None
    devices: tuple[str, ...] = ()
    restored: bool = False


@dataclass(frozen=True, slots=True)
class EngineState:
    """Everything the engine remembers. ``EngineState()`` is the state of a fresh start."""

    rules: Mapping[Key, object] = field(default_factory=_empty)
    health: Mapping[str, DeviceHealth] = field(default_factory=_empty)
    faults: Mapping[str, FaultZone] = field(default_factory=_empty)
    rain: Mapping[str, rainmod.RainGauge] = field(default_factory=_empty)
    sites: Mapping[str, DeviceSite] = field(default_factory=_empty)
    marks: Mapping[tuple[str, str], tuple[datetime, Any]] = field(default_factory=_empty)
    recent: Mapping[tuple[str, str], tuple[tuple[datetime, Any], ...]] = field(
        default_factory=_empty)
    cleared: Mapping[tuple[str, str], datetime] = field(default_factory=_empty)
    buffer: tuple[tuple[tuple[Any, ...], Item], ...] = ()  # held for reordering, in order
    buffered: frozenset[tuple[str, str, Any]] = frozenset()
    clock: datetime | None = None  # event time up to which timeouts have run
    newest: datetime | None = None  # the newest reading time seen
    due: datetime | None = None  # no timeout is due before this (may be early, never late)
    counts: Counts = Counts()

    def _with(self, updates: Mapping[Key, object]) -> EngineState:
        """The state with some rule states replaced (kept for callers of the first engine)."""
        if not updates:
            return self
        return replace(self, rules=MappingProxyType({**self.rules, **updates}))


class _Cow(Generic[K, V]):
    """A mapping copied on its first write, so an untouched section costs nothing."""

    __slots__ = ("_base", "_own")

    def __init__(self, base: Mapping[K, V]) -> None:
        self._base = base
        self._own: dict[K, V] | None = None

    def get(self, key: K) -> V | None:
        return (self._own if self._own is not None else self._base).get(key)

    def __setitem__(self, key: K, value: V) -> None:
        if self._own is None:
            self._own = dict(self._base)
        self._own[key] = value

    def items(self) -> Iterable[tuple[K, V]]:
        return (self._own if self._own is not None else self._base).items()

    def values(self) -> Iterable[V]:
        return (self._own if self._own is not None else self._base).values()

    def frozen(self) -> Mapping[K, V]:
        return self._base if self._own is None else MappingProxyType(self._own)


class _Work:
    """A private, mutable working copy of an ``EngineState`` for the length of one call."""

    def __init__(self, s: EngineState) -> None:
        self.rules: _Cow[Key, object] = _Cow(s.rules)
        self.health: _Cow[str, DeviceHealth] = _Cow(s.health)
        self.faults: _Cow[str, FaultZone] = _Cow(s.faults)
        self.rain: _Cow[str, rainmod.RainGauge] = _Cow(s.rain)
        self.sites: _Cow[str, DeviceSite] = _Cow(s.sites)
        self.marks: _Cow[tuple[str, str], tuple[datetime, Any]] = _Cow(s.marks)
        self.recent: _Cow[tuple[str, str], tuple[tuple[datetime, Any], ...]] = _Cow(s.recent)
        self.cleared: _Cow[tuple[str, str], datetime] = _Cow(s.cleared)
        self._buffer_base = s.buffer
        self._buffer: list[tuple[tuple[Any, ...], Item]] | None = None
        self._buffered_base = s.buffered
        self._buffered: set[tuple[str, str, Any]] | None = None
        self.clock, self.newest, self.due = s.clock, s.newest, s.due
        self.counts = {f.name: getattr(s.counts, f.name) for f in fields(Counts)}
        self.changes: list[AlertChange] = []
        self.now: datetime | None = None  # the time rules are being asked about
        # The newest event time among the items fed together: each device in the batch was heard
        # no earlier than that (a device whose clock is still being judged may stamp its readings
        # an hour back; silence must not count from there).
        self.arrived: datetime | None = None

    @property
    def buffer(self) -> list[tuple[tuple[Any, ...], Item]]:
        if self._buffer is None:
            self._buffer = list(self._buffer_base)
        return self._buffer

    @property
    def buffered(self) -> set[tuple[str, str, Any]]:
        if self._buffered is None:
            self._buffered = set(self._buffered_base)
        return self._buffered

    def has_buffer(self) -> bool:
        return bool(self._buffer if self._buffer is not None else self._buffer_base)

    def count(self, what: str, n: int = 1) -> None:
        self.counts[what] += n

    def freeze(self) -> EngineState:
        return EngineState(
            rules=self.rules.frozen(), health=self.health.frozen(), faults=self.faults.frozen(),
            rain=self.rain.frozen(), sites=self.sites.frozen(), marks=self.marks.frozen(),
            recent=self.recent.frozen(), cleared=self.cleared.frozen(),
            buffer=self._buffer_base if self._buffer is None else tuple(self._buffer),
            buffered=self._buffered_base if self._buffered is None
            else frozenset(self._buffered),
            clock=self.clock, newest=self.newest, due=self.due, counts=Counts(**self.counts))


class _Ctx:
    """The ``RuleContext`` the engine gives rules: answers from the working state."""

    def __init__(self, engine: Engine, work: _Work) -> None:
        self._e, self._w = engine, work

    def trusted(self, device_id: str) -> bool:
        h = self._w.health.get(device_id)
        return h is None or h.trusted

    def rain(self, zone_id: str) -> rainmod.Outlook | None:
        return self._e._outlook(self._w, zone_id)

    def zone_type(self, zone_id: str) -> str | None:
        zone = self._e.zones.get(zone_id)
        return None if zone is None else zone.type


def _channel(item: Item) -> tuple[str, Any]:
    return ("event", item.event_id) if isinstance(item, Detection) else ("telemetry", item.seq)


class Engine:
    def __init__(self, params: RulesParams, zones: Mapping[str, Zone],
                 devices: Iterable[DeviceSite] = ()) -> None:
        self.params = params
        self._rules: dict[str, ZoneRule[Any]] = {
            WaterloggingRule.name: WaterloggingRule(params.waterlogging),
            FallingObjectRule.name: FallingObjectRule(params.falling_object),
            TrafficRule.name: TrafficRule(params.traffic),
        }
        self._falling: FallingObjectRule = self._rules[FallingObjectRule.name]  # type: ignore[assignment]
        self._reports = ReportRule(params.reports)
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
        self._window = timedelta(seconds=params.event_time.reorder_window_s)
        self._dedup = timedelta(seconds=params.event_time.dedup_s)
        self._rain_hours = rainmod.windows(params.waterlogging.rain,
                                           params.device_health.dry_window_s)
        # Memos of pure functions of the zones and of (fixed) device positions.
        self._centres: dict[str, Position] = {}
        self._utm: dict[str, Any] = {}
        self._catchment: dict[tuple[str, Position], tuple[str, ...]] = {}
        self._fault_zone_memo: dict[tuple[str, tuple[str, ...]], str | None] = {}
        self._zone_devices_memo: tuple[None, dict[str, tuple[str, ...]]] | None = None

    # --- public API -----------------------------------------------------------------------

    def evaluate(self, state: EngineState, item: Item) -> tuple[EngineState, list[AlertChange]]:
        """Feed one reading or detection (each zone it lies in counts)."""
        return self.evaluate_many(state, (item,))

    def evaluate_many(self, state: EngineState, items: Iterable[Item],
                      now: datetime | None = None) -> tuple[EngineState, list[AlertChange]]:
        """Feed many items, then ``tick`` to ``now`` if given: one copy of the state for all."""
        w = _Work(state)
        batch = list(items)
        w.arrived = max((i.ts for i in batch), default=None)
        for item in batch:
            self._submit(w, item)
        if now is not None:
            self._tick(w, now)
        return w.freeze(), w.changes

    def tick(self, state: EngineState, now: datetime) -> tuple[EngineState, list[AlertChange]]:
        """Release held readings up to ``now`` less the reorder window, and run the timeouts
        (clearing, silence) that are due by then."""
        w = _Work(state)
        self._tick(w, now)
        return w.freeze(), w.changes

    def flush(self, state: EngineState) -> tuple[EngineState, list[AlertChange]]:
        """Release every held reading (end of a replay), and run timeouts to the newest one."""
        w = _Work(state)
        if w.has_buffer():
            self._release(w, None)
        if w.newest is not None:
            self._advance(w, w.newest)
        return w.freeze(), w.changes

    def current_levels(self, state: EngineState) -> dict[tuple[str, str], Level]:
        """The active level of every (zone_id, hazard) that has one."""
        levels: dict[tuple[str, str], Level] = {}
        for (zone_id, name), st in sorted(state.rules.items(), key=lambda kv: kv[0]):
            for hazard, level in self._levels_of(name, st).items():
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
        for (zone_id, hazard), raw in sorted(levels.items()):
            level = Level(raw)
            zone = self.zones.get(zone_id)
            if zone is None:
                continue
            if hazard in zone.hazards:
                new = self._rules[hazard].restore(level)
                old = rules.get((zone_id, hazard))
                if isinstance(old, FallingObjectState) and isinstance(new, FallingObjectState):
                    new = replace(new, pattern_level=old.pattern_level)
                rules[(zone_id, hazard)] = new
            elif hazard == FALLING_OBJECT_PATTERN and FallingObjectRule.name in zone.hazards:
                key = (zone_id, FallingObjectRule.name)
                st = rules.get(key) or self._falling.initial()
                assert isinstance(st, FallingObjectState)
                rules[key] = self._falling.restore_pattern(st, level)
            elif hazard == DEVICE_FAULT:
                faults[zone_id] = FaultZone(level, (), restored=True)
            elif hazard in self.params.reports.categories and self._reports.enabled:
                key = (zone_id, REPORT_RULE)
                rst = rules.get(key) or self._reports.initial()
                assert isinstance(rst, ReportState)
                rules[key] = self._reports.restore(rst, hazard, level)
        state = EngineState(rules=MappingProxyType(rules), faults=MappingProxyType(faults))
        return replace(state, due=self._earliest(_Work(state)))

    def zone_risk(self, state: EngineState) -> dict[str, dict[str, Risk]]:
        """Per zone that carries hazards, per hazard: its level, ``"clear"`` or ``"unknown"``.

        Unknown: no device that senses the zone for the hazard is heard and trusted (all faulty,
        silent or never heard). Silence is found by ``tick``; a restored engine knows nothing
        until its devices report.
        """
        levels = self.current_levels(state)
        sites = self._all_sites(state)
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
                sensing = self._sensing(zone, hazard, sites)
                alive = [d for d in sensing if (h := state.health.get(d)) is not None
                         and h.last_ts is not None and h.trusted]
                risk[hazard] = "clear" if alive else "unknown"
            out[zone.id] = risk
        return out

    def faulty_devices(self, state: EngineState) -> dict[str, DeviceHealth]:
        """Devices with a fault now (maintenance), by id."""
        return {d: h for d, h in sorted(state.health.items()) if h.fault is not None}

    # --- event time -------------------------------------------------------------------------

    def _submit(self, w: _Work, item: Item) -> None:
        channel, tiebreak = _channel(item)
        mk = (item.device_id, channel)
        ident = (item.device_id, channel, tiebreak)
        mark = w.marks.get(mk)
        if mark is not None and (item.ts, tiebreak) <= mark:
            # Behind what the device already had evaluated: a redelivery, or too late.
            seen = any(k == tiebreak for _, k in w.recent.get(mk) or ())
            w.count("duplicates" if seen else "too_late")
            return
        if w.has_buffer() and ident in w.buffered:
            w.count("duplicates")
            return
        if w.newest is None or item.ts > w.newest:
            w.newest = item.ts
        if self._window.total_seconds() == 0 or (w.clock is not None and item.ts < w.clock):
            # On arrival: either no reordering, or a device's backlog behind the clock, which
            # the watermark above has shown to be in its own order.
            if w.clock is not None and item.ts < w.clock:
                w.count("late")
            else:
                self._advance(w, item.ts)
            self._apply(w, item)
            return
        sort_key = (item.ts, item.device_id, channel, tiebreak)
        bisect.insort(w.buffer, (sort_key, item), key=lambda e: e[0])
        w.buffered.add(ident)
        self._release(w, w.newest - self._window)

    def _tick(self, w: _Work, now: datetime) -> None:
        horizon = now - self._window
        if w.has_buffer():
            self._release(w, horizon)
        self._advance(w, horizon)

    def _release(self, w: _Work, horizon: datetime | None) -> None:
        """Evaluate held items older than ``horizon`` (all if None), in time order."""
        buf = w.buffer
        n = 0
        while n < len(buf) and (horizon is None or buf[n][0][0] < horizon):
            n += 1
        if n == 0:
            return
        out, buf[:n] = buf[:n], []
        for (_, device_id, channel, tiebreak), item in out:
            w.buffered.discard((device_id, channel, tiebreak))
            self._advance(w, item.ts)
            self._apply(w, item)
        if horizon is not None:
            self._advance(w, horizon)

    def _remember(self, w: _Work, item: Item) -> None:
        channel, tiebreak = _channel(item)
        mk = (item.device_id, channel)
        mark = w.marks.get(mk)
        if mark is None or (item.ts, tiebreak) > mark:
            w.marks[mk] = (item.ts, tiebreak)
        cut = item.ts - self._dedup
        recent = w.recent.get(mk) or ()
        if recent and recent[0][0] < cut:
            recent = tuple(r for r in recent if r[0] >= cut)
        w.recent[mk] = (*recent, (item.ts, tiebreak))

    # --- timeouts -------------------------------------------------------------------------

    def _earliest(self, w: _Work) -> datetime | None:
        dues: list[datetime] = []
        for h in w.health.values():
            d = self._health.deadline(h)
            if d is not None:
                dues.append(d)
        for (_, name), st in w.rules.items():
            d = self._deadline_of(name, st)
            if d is not None:
                dues.append(d)
        return min(dues, default=None)

    def _deadline_of(self, name: str, st: object) -> datetime | None:
        if name == REPORT_RULE:
            assert isinstance(st, ReportState)
            return self._reports.deadline(st)
        return self._rules[name].deadline(st)

    def _note_due(self, w: _Work, due: datetime | None) -> None:
        if due is not None and (w.due is None or due < w.due):
            w.due = due

    def _advance(self, w: _Work, t: datetime) -> None:
        """Run every timeout due at or before ``t``, in the order they fell due."""
        if w.clock is not None and t <= w.clock:
            return
        done: set[tuple[datetime, object]] = set()
        while w.due is not None and w.due <= t:
            # The cached due time may be early (a deadline moved later): find the true one.
            # Ties in a fixed order (devices first, then by id), so that runs repeat.
            best: tuple[datetime, int, tuple[str, str]] | None = None
            for device_id, h in w.health.items():
                d = self._health.deadline(h)
                if d is not None and (best is None or (d, 0, (device_id, "")) < best):
                    best = (d, 0, (device_id, ""))
            for key, st in w.rules.items():
                d = self._deadline_of(key[1], st)
                if d is not None and (best is None or (d, 1, key) < best):
                    best = (d, 1, key)
            due = None if best is None else best[0]
            target = None if best is None else best[2]
            is_device = best is not None and best[1] == 0
            w.due = due
            if due is None or due > t or target is None:
                break
            if (due, target) in done:  # a timeout that does not move its deadline: our bug
                raise RuntimeError(f"timeout of {target} stays due at {due.isoformat()}")
            done.add((due, target))
            at = max(due, w.clock) if w.clock is not None else due
            if is_device:
                old = w.health.get(target[0])
                assert old is not None
                self._set_health(w, target[0], old, self._health.tick(old, at), at)
            else:
                self._tick_rule(w, target, t)
        if w.clock is None or t > w.clock:
            w.clock = t

    def _tick_rule(self, w: _Work, key: Key, now: datetime) -> None:
        zone = self.zones[key[0]]
        st = w.rules.get(key)
        w.now = now
        if key[1] == REPORT_RULE:
            assert isinstance(st, ReportState)
            new, changes = self._reports.tick(zone, st, now)
        else:
            new, changes = self._rules[key[1]].tick(zone, st, now, _Ctx(self, w))
        self._set_rule(w, key, new)
        self._emit(w, changes)

    # --- applying one item ----------------------------------------------------------------

    def _apply(self, w: _Work, item: Item) -> None:
        self._remember(w, item)
        w.count("evaluated")
        w.now = item.ts
        if isinstance(item, Observation):
            self._observation(w, item)
        else:
            self._detection(w, item)

    def _learn_site(self, w: _Work, obs: Observation) -> DeviceSite:
        site = w.sites.get(obs.device_id)
        if site is None or site.zone_ids != obs.zone_ids or site.position != obs.position:
            site = DeviceSite(obs.device_id, obs.kind, obs.position, obs.zone_ids)
            w.sites[obs.device_id] = site
        return site

    def _observation(self, w: _Work, obs: Observation) -> None:
        self._learn_site(w, obs)
        h = w.health.get(obs.device_id) or self._health.initial(obs.device_id, obs.kind)
        ok = True
        if self._health.watches(obs.kind):
            new_h, ok = self._health.observe(h, obs.ts, obs.values,
                                             self._peers(w, obs, h.fault == "drift"))
        else:
            new_h = h if h.last_ts is not None and h.last_ts >= obs.ts else \
                replace(h, last_ts=obs.ts)
        heard = max(t for t in (obs.ts, w.clock, w.arrived) if t is not None)
        if new_h.heard is None or heard > new_h.heard:
            new_h = replace(new_h, heard=heard)
        self._set_health(w, obs.device_id, h, new_h, obs.ts)
        if not ok:
            w.count("held_back")
            return
        if obs.kind == "rain":
            self._rain_reading(w, obs)
        self._to_zone_rules(w, obs)

    def _detection(self, w: _Work, det: Detection) -> None:
        h = w.health.get(det.device_id)
        if h is not None and not h.trusted and h.fault != "silent":
            w.count("held_back")  # a faulty device's events are as untrusted as its readings
            return
        if det.type == REPORT_TYPE:
            self._report(w, det)
        else:
            self._to_zone_rules(w, det)

    def _to_zone_rules(self, w: _Work, item: Item) -> None:
        ctx = _Ctx(self, w)
        for zone_id in dict.fromkeys(item.zone_ids):  # de-duplicated, order kept
            zone = self.zones.get(zone_id)
            if zone is None:
                continue  # placed against a zone set this engine was not built with
            for hazard in zone.hazards:
                key = (zone_id, hazard)
                rule = self._rules[hazard]
                old = w.rules.get(key)
                current = rule.initial() if old is None else old
                new, changes = rule.evaluate(zone, current, item, ctx)
                if new is not current:
                    self._set_rule(w, key, new)
                self._emit(w, changes)

    def _set_rule(self, w: _Work, key: Key, st: object) -> None:
        w.rules[key] = st
        self._note_due(w, self._deadline_of(key[1], st))

    def _emit(self, w: _Work, changes: list[AlertChange]) -> None:
        for ch in changes:
            if ch.level is None:
                w.cleared[(ch.zone_id, ch.hazard)] = ch.ts
            w.changes.append(ch)

    def _levels_of(self, name: str, st: object) -> dict[str, Level]:
        if name == REPORT_RULE:
            assert isinstance(st, ReportState)
            return self._reports.levels(st)
        if name == FallingObjectRule.name:
            assert isinstance(st, FallingObjectState)
            return self._falling.levels(st)
        level = self._rules[name].level(st)
        return {} if level is None else {name: level}

    # --- device health --------------------------------------------------------------------

    def _set_health(self, w: _Work, device_id: str, old: DeviceHealth, new: DeviceHealth,
                    ts: datetime) -> None:
        if new is old:
            return
        w.health[device_id] = new
        self._note_due(w, self._health.deadline(new))
        if old.trusted != new.trusted:
            self._reassess_device(w, device_id, ts)
        fz = self._fault_zone(w, device_id)
        if fz is not None and (old.fault != new.fault or
                               ((f := w.faults.get(fz)) is not None and f.restored)):
            self._refresh_faults(w, fz, ts)

    def _reassess_device(self, w: _Work, device_id: str, ts: datetime) -> None:
        """The device's trust changed: the zones it feeds are judged again without (or with) it."""
        site = w.sites.get(device_id) or self.registry.get(device_id)
        if site is None:
            return
        zone_ids = list(site.zone_ids)
        if site.kind == "rain" and site.position is not None:
            zone_ids += self._catchment_zones(site.position)
        self._reassess(w, dict.fromkeys(zone_ids), ts)

    def _reassess(self, w: _Work, zone_ids: Iterable[str], ts: datetime,
                  only: str | None = None) -> None:
        ctx = _Ctx(self, w)
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

    def _fault_zone(self, w: _Work, device_id: str) -> str | None:
        """The zone a device's maintenance alert goes to: its first hazard zone (a camera: the
        nearest fall zone it watches), else its grid cell, else its first zone."""
        site = w.sites.get(device_id) or self.registry.get(device_id)
        if site is None:
            return None
        memo_key = (device_id, site.zone_ids)
        if memo_key in self._fault_zone_memo:
            return self._fault_zone_memo[memo_key]
        known = [self.zones[z] for z in site.zone_ids if z in self.zones]
        found: str | None = None
        if site.kind == "camera" and site.position is not None:
            near = [(metres(site.position, self._centre(z.id)), z.id) for z in self.zones.values()
                    if FallingObjectRule.name in z.hazards]
            near = [n for n in near if n[0] <= CAMERA_RANGE_M]
            found = min(near)[1] if near else None
        if found is None:
            found = next((z.id for z in known if z.hazards), None) or \
                next((z.id for z in known if z.type == "grid_cell"), None) or \
                (known[0].id if known else None)
        self._fault_zone_memo[memo_key] = found
        return found

    def _refresh_faults(self, w: _Work, zone_id: str, ts: datetime) -> None:
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

    def _peers(self, w: _Work, obs: Observation, weather: bool = False) -> Peers:
        """Neighbours' values and the weather around a reading (the weather only when a value
        is high enough to need it, or ``weather``: a drifted gauge asking to be vouched for)."""
        p = self.params.device_health
        keys = [k for k in sorted(set(p.drift_tolerance) | set(p.dry_max)) if k in obs.values]
        if not keys:
            return Peers()
        neighbours: set[str] = set()
        if obs.kind == "rain":
            if obs.position is not None:
                neighbours = {g.device_id for g in w.rain.values() if g.position is not None
                              and metres(obs.position, g.position) <= p.neighbour_radius_m}
        else:
            zone_devices = self._zone_devices(w)
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
            dry, raining = self._weather(w, obs.position, obs.ts)
        return Peers(values, dry, raining)

    def _zone_devices(self, w: _Work) -> dict[str, tuple[str, ...]]:
        """Devices by zone: the registry's (fixed, so memoised), and any unregistered device
        the engine has heard of (rare: a test, or a device not yet in the config)."""
        if self._zone_devices_memo is None:
            fixed: dict[str, list[str]] = {}
            for site in self.registry.values():
                for z in site.zone_ids:
                    fixed.setdefault(z, []).append(site.device_id)
            self._zone_devices_memo = (None, {z: tuple(sorted(ds)) for z, ds in fixed.items()})
        memo = self._zone_devices_memo[1]
        extra = [s for d, s in w.sites.items() if d not in self.registry]
        if not extra:
            return memo
        out = {z: list(ds) for z, ds in memo.items()}
        for site in extra:
            for z in site.zone_ids:
                out.setdefault(z, []).append(site.device_id)
        return {z: tuple(sorted(set(ds))) for z, ds in out.items()}

    def _weather(self, w: _Work, position: Position, ts: datetime
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
        for g in w.rain.values():
            h = w.health.get(g.device_id)
            if g.position is None or (h is not None and not h.trusted):
                continue
            if ts - g.last_ts > FRESH or metres(position, g.position) > radius:
                continue
            rates.append(g.smooth_mm_h)
            if ts - g.first_ts >= seen:
                amounts.append(g.fallen_mm(hours) + g.rate_mm_h)
        raining = None if not rates else sum(rates) / len(rates) >= HEAVY_RAIN_MM_H
        if not amounts:
            return None, raining
        return sum(amounts) / len(amounts) < p.device_health.dry_rain_mm, raining

    # --- rain -----------------------------------------------------------------------------

    def _rain_reading(self, w: _Work, obs: Observation) -> None:
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
            changed = []
            for zone_id in self._catchment_zones(new.position):
                st = w.rules.get((zone_id, WaterloggingRule.name))
                if not isinstance(st, WaterloggingState):
                    continue
                outlook = self._outlook(w, zone_id)
                seen = (None, None) if outlook is None else (outlook.level, outlook.observed)
                if seen != st.rain_seen:  # only a changed signal can change the level
                    changed.append(zone_id)
            self._reassess(w, changed, obs.ts, only=WaterloggingRule.name)

    def _centre(self, zone_id: str) -> Position:
        c = self._centres.get(zone_id)
        if c is None:
            p = self.zones[zone_id].geometry.representative_point()
            c = self._centres[zone_id] = (p.x, p.y)
        return c

    def _catchment_zones(self, position: Position) -> tuple[str, ...]:
        """The at-risk waterlogging zones whose catchment a rain gauge here is in."""
        rp = self.params.waterlogging.rain
        key = ("", position)
        found = self._catchment.get(key)
        if found is None:
            found = tuple(z.id for z in self.zones.values()
                          if WaterloggingRule.name in z.hazards and z.type in rp.at_risk_types
                          and metres(position, self._centre(z.id)) <= rp.catchment_radius_m)
            self._catchment[key] = found
        return found

    def _outlook(self, w: _Work, zone_id: str) -> rainmod.Outlook | None:
        rp = self.params.waterlogging.rain
        centre = self._centre(zone_id)
        now = w.now
        gauges = []
        for g in w.rain.values():
            h = w.health.get(g.device_id)
            if g.position is None or (h is not None and not h.trusted):
                continue
            if now is not None and now - g.last_ts > FRESH:
                continue
            if metres(centre, g.position) <= rp.catchment_radius_m:
                gauges.append(g)
        return rainmod.outlook(sorted(gauges, key=lambda g: g.device_id), rp)

    # --- grid reports ---------------------------------------------------------------------

    def _report(self, w: _Work, det: Detection) -> None:
        rp = self.params.reports
        category = det.attrs.get("category")
        if not isinstance(category, str) or category not in rp.categories:
            return  # "other": logged in the event store, not a hazard
        matched = False
        ctx = _Ctx(self, w)
        for zone_id in self._near(det.position, category) if det.position is not None else ():
            zone = self.zones[zone_id]
            key = (zone_id, category)
            st = w.rules.get(key)
            rule = self._rules[category]
            if category == FallingObjectRule.name:
                current = st if isinstance(st, FallingObjectState) else self._falling.initial()
                new, changes = self._falling.evaluate(zone, current, det, ctx)
                self._set_rule(w, key, new)
                self._emit(w, changes)
                if changes or current.level is not None or any(
                        s.source == "camera" and abs((s.ts - det.ts).total_seconds())
                        <= self.params.falling_object.corroborate_s for s in current.sightings):
                    matched = True
                continue
            level = None if st is None else rule.level(st)
            if level is not None:
                matched = True
                title = f"{zone.name}: {category.replace('_', ' ')} confirmed by a grid worker"
                self._emit(w, [AlertChange(zone_id, category, level, det.ts, title,
                                           (report_evidence(det),))])
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
        current_r = rst if isinstance(rst, ReportState) else self._reports.initial()
        new_r, changes = self._reports.evaluate(self.zones[cell], current_r, det)
        if new_r is not current_r:
            self._set_rule(w, key, new_r)
        self._emit(w, changes)

    def _near(self, position: Position, hazard: str) -> list[str]:
        limit = self.params.reports.corroborate_m
        if hazard == FallingObjectRule.name:
            limit = max(limit, self.params.falling_object.corroborate_m)
        x, y = lonlat_to_utm(position[0], position[1])
        point = shapely.Point(float(x), float(y))
        out = []
        for zone in self.zones.values():
            if hazard not in zone.hazards:
                continue
            g = self._utm.get(zone.id)
            if g is None:
                g = self._utm[zone.id] = to_utm(zone.geometry)
            if g.distance(point) <= limit:
                out.append(zone.id)
        return out

    # --- risk -----------------------------------------------------------------------------

    def _all_sites(self, state: EngineState) -> dict[str, DeviceSite]:
        return {**self.registry, **state.sites}

    def _sensing(self, zone: Zone, hazard: str, sites: Mapping[str, DeviceSite]) -> list[str]:
        kind = {"waterlogging": "water", "traffic": "traffic"}.get(hazard)
        if kind is not None:
            return [d for d, s in sites.items() if s.kind == kind and zone.id in s.zone_ids]
        if hazard == FallingObjectRule.name:
            c = self._centre(zone.id)
            return [d for d, s in sites.items() if s.kind == "camera" and s.position is not None
                    and metres(s.position, c) <= CAMERA_RANGE_M]
        return []
