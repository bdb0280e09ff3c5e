"""Is the pipeline alive and moving? Pure judgements for ``GET /api/health``: no clock, no I/O.

Times are ``time.monotonic()`` readings passed in by the caller, so a wall-clock jump cannot make a
worker look stuck.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class WorkerState:
    """What the supervisor and a worker know about it at one moment."""

    alive: bool  # its thread runs its loop (not dead, not waiting to be restarted)
    restarts: int
    waiting_since: float | None  # since when work has been waiting for it; None: nothing waits
    last_progress: float | None  # when it last finished a piece of work (a batch stored, ...)


@dataclass(frozen=True, slots=True)
class Verdict:
    failing: bool  # GET /api/health answers 503
    problems: tuple[str, ...]  # why it is failing, in plain words
    workers: Mapping[str, Mapping[str, Any]]  # the per-worker report


def stalled_for(w: WorkerState, now: float) -> float:
    """How long work has been waiting without any progress: 0 when nothing waits."""
    if w.waiting_since is None:
        return 0.0
    since = w.waiting_since if w.last_progress is None else max(w.waiting_since, w.last_progress)
    return max(now - since, 0.0)


def judge(workers: Mapping[str, WorkerState], now: float, stuck_after_s: float) -> Verdict:
    """Failing when a worker is dead, or has had work waiting longer than ``stuck_after_s``
    without progress. Work arriving steadily while batches keep being stored is not stuck."""
    problems: list[str] = []
    report: dict[str, dict[str, Any]] = {}
    for name, w in workers.items():
        stalled = stalled_for(w, now)
        stuck = stalled > stuck_after_s
        if not w.alive:
            problems.append(f"{name} worker is not running (restarts so far: {w.restarts})")
        if stuck:
            problems.append(f"{name}: work has waited {stalled:.0f} s without progress "
                            f"(limit {stuck_after_s:g} s)")
        report[name] = {
            "alive": w.alive,
            "restarts": w.restarts,
            "last_progress_age_s": (None if w.last_progress is None
                                    else round(max(now - w.last_progress, 0.0), 3)),
            "waiting_s": round(stalled, 3),
            "stuck": stuck,
        }
    return Verdict(bool(problems), tuple(problems), report)


@dataclass(frozen=True, slots=True)
class Counter:
    """A running count and when it last grew (monotonic), as seen by whoever watches it."""

    value: int = 0
    grew_at: float | None = None

    def seen(self, value: int, now: float) -> Counter:
        """The counter after reading ``value``. A smaller value means the source restarted (the
        broker's $SYS counters start at 0 again): it grew if the new value is above 0."""
        grew = value > self.value or (value < self.value and value > 0)
        return Counter(value, now if grew else self.grew_at)


def recent_growth(counter: Counter, now: float, window_s: float) -> bool:
    """Did the counter grow within the last ``window_s``? A growing drop count keeps a warning up
    for that long after the last drop, so a scrape every few minutes still sees it."""
    return counter.grew_at is not None and now - counter.grew_at <= window_s
