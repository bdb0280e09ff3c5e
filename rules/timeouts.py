"""Timeouts: what fires when nothing arrives (an alert's quiet period, a silent device).

Every rule state and device health has a ``deadline``. The state keeps only a lower bound of the
earliest one (``due``: may be early, never late), so that a call with nothing due costs nothing.
When something is due, a deadline queue (a heap, with lazy deletion: an entry counts only while
its key's deadline is still the one it was queued with) is built once for the call and kept up
to date as states change, and the timeouts fire in the order they fell due, ties in a fixed
order (devices first, then by key) so that runs repeat.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from rules.device_health import DeviceHealthRule
from rules.engine_state import Key, Work
from rules.hazard import Rule

DEVICE, RULE = 0, 1
Entry = tuple[datetime, int, tuple[str, str]]


class Timeouts:
    def __init__(self, health: DeviceHealthRule, rules: Mapping[str, Rule[Any]],
                 fire_device: Callable[[Work, str, datetime], None],
                 fire_rule: Callable[[Work, Key, datetime], None]) -> None:
        self._health, self._rules = health, rules
        self._fire_device, self._fire_rule = fire_device, fire_rule

    def deadline_of(self, name: str, st: object) -> datetime | None:
        return self._rules[name].deadline(st)

    def earliest(self, w: Work) -> datetime | None:
        return min((e[0] for e in self._scan(w)), default=None)

    def note(self, w: Work, order: int, key: tuple[str, str], due: datetime | None) -> None:
        """A state changed: its deadline (if any) is queued and the lower bound kept."""
        if due is None:
            return
        if w.due is None or due < w.due:
            w.due = due
        if w.heap is not None:
            heapq.heappush(w.heap, (due, order, key))

    def advance(self, w: Work, t: datetime) -> None:
        """Run every timeout due at or before ``t``, in the order they fell due."""
        if w.clock is not None and t <= w.clock:
            return
        done: set[tuple[datetime, object]] = set()
        while w.due is not None and w.due <= t:
            # The lower bound may be early (a deadline moved later): find the true one.
            best = self._first(w)
            w.due = None if best is None else best[0]
            if best is None or best[0] > t:
                break
            due, order, target = best
            if (due, target) in done:  # a timeout that does not move its deadline: our bug
                raise RuntimeError(f"timeout of {target} stays due at {due.isoformat()}")
            done.add((due, target))
            if order == DEVICE:
                at = max(due, w.clock) if w.clock is not None else due
                self._fire_device(w, target[0], at)
            else:
                self._fire_rule(w, target, t)
        if w.clock is None or t > w.clock:
            w.clock = t

    def _current(self, w: Work, order: int, key: tuple[str, str]) -> datetime | None:
        if order == DEVICE:
            h = w.health.get(key[0])
            return None if h is None else self._health.deadline(h)
        st = w.rules.get(key)
        return None if st is None else self._rules[key[1]].deadline(st)

    def _first(self, w: Work) -> Entry | None:
        if w.heap is None:
            w.heap = list(self._scan(w))
            heapq.heapify(w.heap)
        heap = w.heap
        while heap:
            due, order, key = heap[0]
            if self._current(w, order, key) == due:
                return heap[0]
            heapq.heappop(heap)  # stale: the key's deadline moved (its new one is queued)
        return None

    def _scan(self, w: Work) -> list[Entry]:
        out: list[Entry] = []
        for device_id, h in w.health.items():
            d = self._health.deadline(h)
            if d is not None:
                out.append((d, DEVICE, (device_id, "")))
        for key, st in w.rules.items():
            d = self._rules[key[1]].deadline(st)
            if d is not None:
                out.append((d, RULE, key))
        return out
