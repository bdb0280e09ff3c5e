"""Device health: when a device's readings stop being trusted, and when they are again.

Per device, on each reading (event time) and on ``tick`` for silence:

- **out of range**: a watched value outside ``ranges`` -> the reading is dropped, the device is
  faulty at once (no working gauge reads 400 cm).
- **spike**: a rise faster than ``max_rise_per_min`` allows (plus ``spike_margin``) since the last
  accepted reading -> the reading is dropped; ``spikes_to_fault`` of them within
  ``spike_window_s`` make the device faulty. Falls are not spikes: water can drain or be pumped.
- **stuck**: the same non-zero watched values for ``stuck_after_s`` and ``stuck_min_readings``
  (zero is what a dry gauge or an empty road reads all day), with no gap longer than
  ``silent_after_s`` between them.
- **drift**: disagreement with the neighbours (same kind, same hazard zone; two or more of them
  give a median to trust) or, for a water gauge, water with no rain in the catchment for
  ``dry_window_s``. The reading is held back at once (the device is *suspect*), and the device is
  faulty when it stays suspect for ``drift_confirm_s``: a drifting gauge never reaches a
  threshold on its own.
- **silent**: no telemetry for ``silent_after_s``; found by ``tick``, stamped when it happened.
- **low battery** (optional): maintenance only; its readings are still trusted.

A faulty device is trusted again after ``recover_after_s`` of readings that pass every check
(silence ends with the first reading). Pure: the engine feeds readings and the neighbours' view.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Literal

from rules.params import DeviceHealthParams

Fault = Literal["out_of_range", "spike", "stuck", "drift", "silent", "low_battery"]
BATTERY_KEY = "battery_v"
# Faults whose readings are still good: the maintenance alert goes out, the hazards keep them.
_STILL_TRUSTED: frozenset[str] = frozenset({"low_battery"})


@dataclass(frozen=True, slots=True)
class Peers:
    """What the engine knows around a device when one of its readings arrives.

    ``neighbours``: per watched value, the trusted, fresh values of the devices of the same kind
    in the same hazard zone. ``dry``: True when the catchment's rain gauges saw no rain for the
    dry window, False when they saw rain, None when they do not know (none, or not long enough).
    ``raining``: True while it rains hard there now (every low point should be filling).
    """

    neighbours: Mapping[str, Sequence[float]] = field(default_factory=dict)
    dry: bool | None = None
    raining: bool | None = None  # the catchment's smoothed rain rate is heavy now


@dataclass(frozen=True, slots=True)
class DeviceHealth:
    device_id: str
    kind: str
    last_ts: datetime | None = None  # newest telemetry, accepted or not
    values: Mapping[str, float] = field(default_factory=dict)  # last accepted watched values
    accepted_ts: datetime | None = None
    same: tuple[float, ...] = ()  # the watched values of the current run of identical readings
    same_since: datetime | None = None
    same_count: int = 0
    spikes: tuple[datetime, ...] = ()
    suspect_since: datetime | None = None
    suspect_detail: str = ""
    fault: Fault | None = None
    fault_since: datetime | None = None
    fault_detail: str = ""
    good_since: datetime | None = None  # while faulty: the start of the current run of good ones
    heard: datetime | None = None  # the engine's clock when it last heard the device (a backlog
    # arriving late is heard now, so silence counts from now, not from the backlog's times)
    received: datetime | None = None  # the server's clock then, when the caller gave it

    @property
    def trusted(self) -> bool:
        """Whether this device's readings may drive hazards now."""
        return self.suspect_since is None and (self.fault is None or self.fault in _STILL_TRUSTED)

    def evidence(self) -> dict[str, Any]:
        ev: dict[str, Any] = {"device_id": self.device_id, "kind": self.kind,
                              "fault": self.fault, "detail": self.fault_detail}
        if self.fault_since is not None:
            ev["since"] = self.fault_since.isoformat()
        if self.last_ts is not None:
            ev["last_seen"] = self.last_ts.isoformat()
        return ev


class DeviceHealthRule:
    def __init__(self, params: DeviceHealthParams) -> None:
        self.params = params
        self._silent = timedelta(seconds=params.silent_after_s)

    def watches(self, kind: str) -> bool:
        return self.params.enabled and kind in self.params.watched

    def initial(self, device_id: str, kind: str) -> DeviceHealth:
        return DeviceHealth(device_id, kind)

    def deadline(self, h: DeviceHealth) -> datetime | None:
        """When silence would make the device faulty (None: nothing pending)."""
        if h.last_ts is None or h.fault == "silent" or not self.watches(h.kind):
            return None
        return max(h.last_ts, h.heard or h.last_ts) + self._silent

    def tick(self, h: DeviceHealth, now: datetime, received: datetime | None = None
             ) -> DeviceHealth:
        """Silence by ``now`` (event time). ``received``, the server's clock if known: a device
        the server heard less than ``silent_after_s`` ago is not silent, whatever the event
        timeline did meanwhile (a clock an hour slow alone in the first batch, then the fleet's
        true time); it is looked at again when it could be."""
        due = self.deadline(h)
        if due is None or now < due:
            return h
        if received is not None and h.received is not None:
            quiet = received - h.received
            if quiet < self._silent:
                return replace(h, heard=now - quiet)  # due again in silent_after_s - quiet
        minutes = self.params.silent_after_s / 60
        return replace(h, fault="silent", fault_since=due, good_since=None,
                       fault_detail=f"no telemetry for {minutes:g} min")

    def observe(self, h: DeviceHealth, ts: datetime, values: Mapping[str, float],
                peers: Peers, heard: datetime | None = None, received: datetime | None = None
                ) -> tuple[DeviceHealth, bool]:
        """The device after a reading, and whether the reading may drive hazards. ``heard``:
        the engine's clock now, ``received`` the server's (each kept when newer).

        Speed: this runs for every reading, so a calm reading (the common case) builds the new
        state once; the rarer paths (a fault, a spike, drift) may replace it a few times."""
        p = self.params
        stamp: dict[str, Any] = {}
        if heard is not None and (h.heard is None or heard > h.heard):
            stamp["heard"] = heard
        if received is not None and (h.received is None or received > h.received):
            stamp["received"] = received
        if h.last_ts is not None and ts <= h.last_ts:
            # The engine keeps per-device order; this is belt and braces.
            return (replace(h, **stamp) if stamp else h), False
        keys = p.watched.get(h.kind, ())
        watched = {k: values[k] for k in keys if k in values and math.isfinite(values[k])}
        previous = h.last_ts
        stamp["last_ts"] = ts
        if h.fault == "silent":
            h = replace(h, fault=None, fault_since=None, fault_detail="", good_since=None,
                        **stamp)
            stamp = {}
        h = self._battery(h, ts, values)  # the same state unless the battery changes a fault

        def stamped(x: DeviceHealth) -> DeviceHealth:
            return replace(x, **stamp) if stamp else x

        bad = self._out_of_range(watched)
        if bad is not None:
            return stamped(self._faulty(h, ts, "out_of_range", bad)), False
        spike = self._spike(h, ts, watched)
        if spike is not None:
            spikes = (*(s for s in h.spikes
                        if (ts - s).total_seconds() < p.spike_window_s), ts)
            h = replace(h, spikes=spikes)
            if len(spikes) >= p.spikes_to_fault:
                return stamped(self._faulty(h, ts, "spike", spike)), False
            return replace(h, good_since=None, **stamp), False
        same = self._same(h, ts, watched, previous)
        run, since, count = (same.get("same", h.same), same.get("same_since", h.same_since),
                             same.get("same_count", h.same_count))
        if run and any(v != 0 for v in run) and count >= p.stuck_min_readings \
                and since is not None and (ts - since).total_seconds() >= p.stuck_after_s:
            shown = ", ".join(f"{k} {v:g}" for k, v in watched.items())
            h = replace(h, **same)
            return stamped(self._faulty(h, ts, "stuck", f"{shown} unchanged since "
                                        f"{since.isoformat()}")), False
        drifted = self._drift(h, ts, watched, peers)
        if drifted is not h:
            h = replace(drifted, **same)
            same = {}
        if h.suspect_since is not None:
            if (ts - h.suspect_since).total_seconds() >= p.drift_confirm_s:
                h = self._faulty(h, ts, "drift", h.suspect_detail)
            return replace(h, **same, **stamp), False
        if h.fault is not None and h.fault not in _STILL_TRUSTED:
            # A good reading from a faulty device: count towards recovery, keep it back till then.
            # A drifted gauge must be shown right (dry weather and a dry reading, or agreement
            # with neighbours): in the rain, with no neighbour, nothing says it is.
            if h.fault == "drift" and not self._vouched(watched, peers):
                return replace(h, good_since=None, **same, **stamp), False
            good_since = h.good_since or ts
            if (ts - good_since).total_seconds() < p.recover_after_s:
                return replace(h, good_since=good_since, **same, **stamp), False
            h = replace(h, fault=None, fault_since=None, fault_detail="", good_since=None,
                        spikes=())
        return replace(h, values={**h.values, **watched}, accepted_ts=ts, **same, **stamp), True

    # --- checks -------------------------------------------------------------------------

    def _faulty(self, h: DeviceHealth, ts: datetime, fault: Fault, detail: str) -> DeviceHealth:
        if h.fault == fault:
            return replace(h, good_since=None)
        return replace(h, fault=fault, fault_since=ts, fault_detail=detail, good_since=None,
                       suspect_since=None, suspect_detail="")

    def _battery(self, h: DeviceHealth, ts: datetime, values: Mapping[str, float]) -> DeviceHealth:
        low = self.params.battery_low_v
        v = values.get(BATTERY_KEY)
        if low <= 0 or v is None:
            return h
        if v < low and h.fault is None:
            return replace(h, fault="low_battery", fault_since=ts,
                           fault_detail=f"battery {v:.2f} V, under {low:g} V")
        if h.fault == "low_battery" and v >= low + 0.05:  # a small band: no flapping
            return replace(h, fault=None, fault_since=None, fault_detail="")
        return h

    def _out_of_range(self, watched: Mapping[str, float]) -> str | None:
        for key, v in watched.items():
            r = self.params.ranges.get(key)
            if r is not None and not r.min <= v <= r.max:
                return f"{key} {v:g} outside {r.min:g}..{r.max:g}"
        return None

    def _spike(self, h: DeviceHealth, ts: datetime, watched: Mapping[str, float]) -> str | None:
        speed, flow = watched.get("speed_kmh"), watched.get("flow_veh_h")
        if speed is not None and flow is not None and speed <= 0 and flow > 0:
            return f"{flow:g} vehicles/h passing at {speed:g} km/h"
        if h.accepted_ts is None:
            return None
        minutes = (ts - h.accepted_ts).total_seconds() / 60
        for key, rise in self.params.max_rise_per_min.items():
            v, before = watched.get(key), h.values.get(key)
            if v is None or before is None:
                continue
            allowed = rise * minutes + self.params.spike_margin.get(key, 0.0)
            if v - before > allowed:
                return (f"{key} jumped from {before:g} to {v:g} in {minutes:.1f} min "
                        f"(at most {allowed:.1f} is physical)")
        return None

    def _same(self, h: DeviceHealth, ts: datetime, watched: Mapping[str, float],
              previous: datetime | None) -> dict[str, Any]:
        """The changes to the run of identical readings (for the stuck check)."""
        now = tuple(watched.values())
        if not now:
            return {}
        # A run is measured over readings heard: the same value on both sides of a gap longer
        # than silence (an outage, or a clock correction moving the device's timeline) proves
        # nothing about the sensor in between.
        gap = previous is not None and (ts - previous).total_seconds() > self.params.silent_after_s
        if now == h.same and not gap:
            return {"same_count": h.same_count + 1}
        return {"same": now, "same_since": ts, "same_count": 1}

    def _vouched(self, watched: Mapping[str, float], peers: Peers) -> bool:
        p = self.params
        for key in sorted(set(p.drift_tolerance) | set(p.dry_max)):
            v = watched.get(key)
            if v is None:
                continue
            others = list(peers.neighbours.get(key, ()))
            tol = p.drift_tolerance.get(key)
            if tol is not None and others:
                med = statistics.median(others)
                if abs(v - med) <= tol + p.drift_relative * max(v, med):
                    return True
            dry_max = p.dry_max.get(key)
            if dry_max is not None and peers.dry is True and v <= dry_max:
                return True
        return False

    def _drift(self, h: DeviceHealth, ts: datetime, watched: Mapping[str, float],
               peers: Peers) -> DeviceHealth:
        p = self.params
        reason: str | None = None
        for key in sorted(set(p.drift_tolerance) | set(p.dry_max)):
            tol = p.drift_tolerance.get(key)
            v = watched.get(key)
            if v is None:
                continue
            others = list(peers.neighbours.get(key, ()))
            dry_max = p.dry_max.get(key)
            if tol is not None and len(others) >= 2:
                med = statistics.median(others)
                if abs(v - med) > tol + p.drift_relative * max(v, med):
                    reason = (f"{key} {v:g} against {med:g}, the median of {len(others)} "
                              "neighbours")
            elif dry_max is not None and peers.dry is True and v > dry_max and \
                    all(o <= dry_max for o in others):
                # One neighbour cannot outvote; the weather can: water (or rain) in dry weather.
                reason = f"{key} {v:g} in dry weather"
            elif dry_max is not None and tol is not None and peers.raining is True and \
                    v <= dry_max and others and max(others) > dry_max + tol:
                # Reads dry in the rain while its zone neighbour reads water: stuck or blind.
                reason = f"{key} {v:g} while its neighbour reads {max(others):g} in the rain"
            if reason is not None:
                break
        if reason is None:
            return replace(h, suspect_since=None, suspect_detail="") if h.suspect_since else h
        return replace(h, suspect_since=h.suspect_since or ts, suspect_detail=reason)
