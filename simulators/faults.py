"""Sensor faults: a wrapper that makes a healthy simulated device go wrong as real ones do.

- ``stuck``: the measured values freeze at what they were when the fault began;
- ``spike``: about one reading in five jumps far off (a splash, an echo, a glitch);
- ``drift``: the main value creeps by ``magnitude`` per hour (fouled sensor, lost calibration);
- ``silent``: connected (status online) but no readings (a dead sensor on a live modem);
- ``dead_battery``: the battery runs down over ``duration`` to the cut-off; then the device dies
  and its connection with it (the broker publishes its Last Will: offline);
- ``dropped``: the device loses the network for ``duration`` (Last Will: offline); it keeps
  measuring, buffers, and delivers the readings late with their original ``ts`` and ``seq``.

A device emits ``("status", {"state": ...})`` when it goes away or comes back; the runner turns
that into a dropped or restored connection, and ground truth records each window.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from simulators.devices.base import BATTERY_CUTOFF_V, DeviceSim, Output

if TYPE_CHECKING:
    from simulators.scenario import BoundFault, ScenarioState

COMMON_KEYS = frozenset({"battery_v", "battery_pct", "rssi_dbm"})
PRIMARY = {"water": "water_depth_cm", "rain": "rain_rate_mm_h", "traffic": "speed_kmh"}
DRIFT_PER_H = {"water_depth_cm": 6.0, "rain_rate_mm_h": 4.0, "speed_kmh": -8.0}
SPIKE = {"water_depth_cm": 150.0, "rain_rate_mm_h": 300.0, "speed_kmh": -1000.0}
SPIKE_SHARE = 0.2
DEAD_BATTERY_V_PER_H = 0.2  # when the fault gives no duration


def _primary(kind: str, values: dict[str, Any]) -> str | None:
    key = PRIMARY.get(kind)
    if key in values:
        return key
    return next((k for k in sorted(values) if k not in COMMON_KEYS), None)


class FaultyDevice:
    """``inner`` with ``faults`` applied; same id, kind and truth."""

    def __init__(self, inner: DeviceSim, faults: list[BoundFault]) -> None:
        self.inner = inner
        self.faults = sorted(faults, key=lambda f: f.start)
        self.died_at: datetime | None = None
        self._away = False
        self._frozen: dict[int, dict[str, Any]] = {}  # by fault: values when it began
        self._drain_v_per_s: dict[int, float] = {}

    @property
    def id(self) -> str:
        return self.inner.id

    @property
    def kind(self) -> str:
        return self.inner.kind

    @property
    def true_values(self) -> dict[str, float]:
        return self.inner.true_values

    def step(self, t: datetime, dt_s: float, world: ScenarioState) -> list[Output]:
        if self.died_at is not None:
            return []
        out: list[Output] = []
        for i, f in enumerate(self.faults):
            if f.kind == "dead_battery" and t >= f.start and self._drain_battery(i, f, dt_s):
                self.died_at = t
                return [("status", {"state": "offline", "ts": t})]
        for f in self.faults:
            if f.kind != "dropped":
                continue
            if not self._away and f.start <= t and (f.end is None or t < f.end):
                self._away = True
                out.append(("status", {"state": "offline", "ts": f.start}))
            elif self._away and f.end is not None and t >= f.end:
                self._away = False
                out.append(("status", {"state": "online", "ts": f.end}))
        produced = self.inner.step(t, dt_s, world)
        for i, f in enumerate(self.faults):
            if f.start <= t and (f.end is None or t < f.end):
                produced = self._apply(i, f, t, produced)
        return out + produced

    def _drain_battery(self, i: int, f: BoundFault, dt_s: float) -> bool:
        battery = getattr(self.inner, "battery_v", None)
        if not isinstance(battery, float):
            return True  # nothing to drain: it dies at once
        if i not in self._drain_v_per_s:
            span = (f.end - f.start).total_seconds() if f.end is not None else None
            self._drain_v_per_s[i] = ((battery - BATTERY_CUTOFF_V) / span if span else
                                      DEAD_BATTERY_V_PER_H / 3600)
        battery -= self._drain_v_per_s[i] * dt_s
        self.inner.battery_v = max(BATTERY_CUTOFF_V, battery)  # type: ignore[attr-defined]
        return battery <= BATTERY_CUTOFF_V + 1e-6

    def _apply(self, i: int, f: BoundFault, t: datetime, produced: list[Output]) -> list[Output]:
        if f.kind == "silent":
            return [o for o in produced if o[0] == "status"]
        if f.kind not in ("stuck", "spike", "drift"):
            return produced
        rng = getattr(self.inner, "rng", None)
        for channel, payload in produced:
            if channel != "telemetry":
                continue
            values: dict[str, Any] = payload["values"]
            key = _primary(self.kind, values)
            if key is None:
                continue
            if f.kind == "stuck":
                frozen = self._frozen.setdefault(
                    i, {k: v for k, v in values.items() if k not in COMMON_KEYS})
                values.update(frozen)
            elif f.kind == "drift":
                hours = (t - f.start).total_seconds() / 3600
                rate = f.magnitude if f.magnitude is not None else DRIFT_PER_H.get(key, 1.0)
                values[key] = round(max(0.0, values[key] + rate * hours), 1)
            elif rng is not None and rng.random() < SPIKE_SHARE:
                size = f.magnitude if f.magnitude is not None else SPIKE.get(key, 100.0)
                spiked = values[key] + size * rng.uniform(0.7, 1.3)
                values[key] = round(min(self._limit(key), max(0.0, spiked)), 1)
        return produced

    def _limit(self, key: str) -> float:
        # A glitch still fits the value's range, or the platform would reject it as malformed
        # rather than have to recognise it as implausible.
        spec = getattr(self.inner, "spec", None)
        number = None
        if spec is not None:
            number = spec.required_values.get(key) or spec.optional_values.get(key)
        hi = getattr(number, "hi", None)
        return float(hi) if hi is not None else 999.0
