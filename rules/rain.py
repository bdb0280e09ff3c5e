"""Rain over a zone's catchment: accumulations per rain gauge and the CMA rainstorm signal.

A gauge reports its mean rate over the interval since its previous reading; the rain of that
interval goes into fixed buckets (``RainParams.bucket_s``), so the state per gauge stays bounded
(12 h in 5-minute buckets: 144 numbers). The signal of a zone is judged on the mean of its
catchment's gauges: rain fallen within each signal's hours plus the current rate carried on for
``nowcast_h`` (CMA issues its signals on "has fallen or is expected to fall").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from geo.position import Position
from rules.levels import LEVEL_NAMES, Level
from rules.params import RainParams

RATE_KEY = "rain_rate_mm_h"
RATE_TAU_S = 300.0


@dataclass(frozen=True, slots=True)
class RainGauge:
    """One gauge: its latest rate and the rain fallen within each window (hours -> mm), up to
    its latest reading. Sums are kept up to date per reading and recounted from the buckets when
    a new bucket starts, so a reading costs a few additions."""

    device_id: str
    position: Position | None
    first_ts: datetime
    last_ts: datetime
    rate_mm_h: float
    buckets: tuple[tuple[int, float], ...] = ()  # (bucket number, mm), oldest first
    sums: tuple[tuple[float, float], ...] = ()  # (hours, mm fallen within them)
    # The rate smoothed over RATE_TAU_S: a tipping bucket reports whole tips per interval, so
    # single readings jump between 0 and a multiple of (tip / interval).
    smooth_mm_h: float = 0.0

    def fallen_mm(self, hours: float) -> float:
        for h, mm in self.sums:
            if h == hours:
                return mm
        raise KeyError(f"no rain window of {hours} h")  # our bug: windows are fixed at start


def windows(params: RainParams, *extra_s: float) -> tuple[float, ...]:
    """The windows (hours) to keep sums for: the signals' and ``extra_s`` (in seconds)."""
    return tuple(sorted({s.hours for s in params.signals.values()}
                        | {e / 3600 for e in extra_s}))


def add_reading(gauge: RainGauge | None, device_id: str, position: Position | None,
                ts: datetime, rate_mm_h: float, params: RainParams,
                hours: tuple[float, ...]) -> RainGauge:
    """The gauge after a reading; a reading not newer than the last one changes nothing."""
    rate = max(0.0, rate_mm_h)
    if gauge is None:
        return RainGauge(device_id, position, ts, ts, rate, (), tuple((h, 0.0) for h in hours),
                         rate)
    if ts <= gauge.last_ts:
        return gauge
    dt = (ts - gauge.last_ts).total_seconds()
    # A long gap: the device was away, and what fell meanwhile is unknown, not zero or "rate".
    mm = rate * dt / 3600 if dt <= params.max_gap_s else 0.0
    size = params.bucket_s
    n = math.floor(ts.timestamp() / size)
    if gauge.buckets and gauge.buckets[-1][0] == n:
        last = gauge.buckets[-1]
        buckets = (*gauge.buckets[:-1], (n, last[1] + mm))
        sums = tuple((h, v + mm) for h, v in gauge.sums)
    else:
        oldest = n - math.ceil(max(hours, default=1.0) * 3600 / size)
        buckets = (*(b for b in gauge.buckets if b[0] > oldest), (n, mm))
        sums = tuple((h, sum(v for k, v in buckets if k > n - math.ceil(h * 3600 / size)))
                     for h in hours)
    weight = 1 - math.exp(-min(dt, params.max_gap_s) / RATE_TAU_S)
    smooth = gauge.smooth_mm_h + (rate - gauge.smooth_mm_h) * weight
    return replace(gauge, last_ts=ts, rate_mm_h=rate, buckets=buckets, sums=sums,
                   smooth_mm_h=smooth,
                   position=position if position is not None else gauge.position)


@dataclass(frozen=True, slots=True)
class Outlook:
    """The rain signal over a catchment, with what it was judged on."""

    level: Level | None  # on rain fallen plus the nowcast: a watch
    projected_mm: dict[str, float]  # by signal colour: fallen within its hours plus nowcast
    rate_mm_h: float
    gauges: tuple[str, ...]
    observed: Level | None = None  # on rain already fallen only: what may raise a level


def outlook(gauges: Sequence[RainGauge], params: RainParams) -> Outlook | None:
    """The signal from these gauges (the caller picks trusted, fresh ones); None without any."""
    if not gauges:
        return None
    n = len(gauges)
    rate = sum(g.smooth_mm_h for g in gauges) / n
    projected: dict[str, float] = {}
    level: Level | None = None
    observed: Level | None = None
    for colour in LEVEL_NAMES:
        sig = params.signals.get(colour)
        if sig is None:
            continue
        fallen = sum(g.fallen_mm(sig.hours) for g in gauges) / n
        projected[colour] = round(fallen + rate * min(params.nowcast_h, sig.hours), 1)
        if level is None and projected[colour] >= sig.mm:
            level = Level[colour.upper()]
        if observed is None and fallen >= sig.mm:
            observed = Level[colour.upper()]
    return Outlook(level, projected, round(rate, 1), tuple(sorted(g.device_id for g in gauges)),
                   observed)
