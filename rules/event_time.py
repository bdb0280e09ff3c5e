"""Event time: per device and channel a watermark, deduplication and a reorder buffer.

A reading older than one its device already had evaluated is too late (counted, not evaluated);
a redelivered one is a duplicate. With a reorder window > 0, readings are held that long and
released in time order, so messages out of order by up to the window give exactly the alerts of
an in-order run. Pure: it works on the engine's working copy (``rules.engine_state.Work``) and
hands each released item to ``apply`` after moving the clock with ``advance`` (timeouts fire in
between, stamped when they became due).
"""

from __future__ import annotations

import bisect
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from rules.base import Detection
from rules.engine_state import Item, Work

Step = Callable[[Work, datetime], None]
Apply = Callable[[Work, Item], None]


@dataclass(frozen=True, slots=True)
class Recent:
    """What one device's channel had evaluated within the deduplication window, compactly (a
    city's worth of devices keeps one each): times as epoch seconds and the sequence numbers
    (telemetry) or event ids, oldest first. Never changed in place: a new one per reading."""

    ts: array[float]
    keys: array[int] | tuple[str, ...]

    def seen(self, key: Any) -> bool:
        return any(k == key for k in self.keys) if isinstance(self.keys, tuple) else \
            isinstance(key, int) and key in self.keys

    def add(self, ts: float, key: Any, cut: float) -> Recent:
        """With (``ts``, ``key``) added and what is older than ``cut`` dropped."""
        start = bisect.bisect_left(self.ts, cut) if self.ts and self.ts[0] < cut else 0
        times = self.ts[start:] if start else array("d", self.ts)
        times.append(ts)
        if isinstance(self.keys, array) and isinstance(key, int) and \
                -(2 ** 63) <= key < 2 ** 63:
            keys: array[int] | tuple[str, ...] = self.keys[start:] if start else \
                array("q", self.keys)
            keys.append(key)  # type: ignore[union-attr]
        else:
            keys = (*self.keys[start:], key)
        return Recent(times, keys)


EMPTY_RECENT = Recent(array("d"), array("q"))


def channel(item: Item) -> tuple[str, Any]:
    """(channel, tiebreak): events by id, telemetry by sequence number."""
    return ("event", item.event_id) if isinstance(item, Detection) else ("telemetry", item.seq)


class EventTime:
    def __init__(self, reorder_window_s: float, dedup_s: float, advance: Step,
                 apply: Apply) -> None:
        self.window = timedelta(seconds=reorder_window_s)
        self._dedup = timedelta(seconds=dedup_s)
        self._advance, self._apply = advance, apply

    def submit(self, w: Work, item: Item) -> None:
        """Evaluate ``item`` now, hold it for reordering, or count it as late or a duplicate."""
        chan, tiebreak = channel(item)
        mk = (item.device_id, chan)
        ident = (item.device_id, chan, tiebreak)
        mark = w.marks.get(mk)
        if mark is not None and (item.ts, tiebreak) <= mark:
            # Behind what the device already had evaluated: a redelivery, or too late.
            recent = w.recent.get(mk)
            seen = recent is not None and recent.seen(tiebreak)
            w.count("duplicates" if seen else "too_late")
            return
        if w.has_buffer() and ident in w.buffered:
            w.count("duplicates")
            return
        if w.newest is None or item.ts > w.newest:
            w.newest = item.ts
        if self.window.total_seconds() == 0 or (w.clock is not None and item.ts < w.clock):
            # On arrival: either no reordering, or a device's backlog behind the clock, which
            # the watermark above has shown to be in its own order.
            if w.clock is not None and item.ts < w.clock:
                w.count("late")
            else:
                self._advance(w, item.ts)
            self._evaluate(w, item)
            return
        sort_key = (item.ts, item.device_id, chan, tiebreak)
        bisect.insort(w.buffer, (sort_key, item), key=lambda e: e[0])
        w.buffered.add(ident)
        self.release(w, w.newest - self.window)

    def tick(self, w: Work, now: datetime) -> None:
        """Release what is older than ``now`` less the window and run timeouts up to there."""
        horizon = now - self.window
        if w.has_buffer():
            self.release(w, horizon)
        self._advance(w, horizon)

    def release(self, w: Work, horizon: datetime | None) -> None:
        """Evaluate held items older than ``horizon`` (all if None), in time order."""
        buf = w.buffer
        n = 0
        while n < len(buf) and (horizon is None or buf[n][0][0] < horizon):
            n += 1
        if n == 0:
            return
        out, buf[:n] = buf[:n], []
        for (_, device_id, chan, tiebreak), item in out:
            w.buffered.discard((device_id, chan, tiebreak))
            self._advance(w, item.ts)
            self._evaluate(w, item)
        if horizon is not None:
            self._advance(w, horizon)

    def _evaluate(self, w: Work, item: Item) -> None:
        self._remember(w, item)
        w.count("evaluated")
        self._apply(w, item)

    def _remember(self, w: Work, item: Item) -> None:
        chan, tiebreak = channel(item)
        mk = (item.device_id, chan)
        mark = w.marks.get(mk)
        if mark is None or (item.ts, tiebreak) > mark:
            w.marks[mk] = (item.ts, tiebreak)
        ts = item.ts.timestamp()
        recent = w.recent.get(mk) or EMPTY_RECENT
        w.recent[mk] = recent.add(ts, tiebreak, ts - self._dedup.total_seconds())
