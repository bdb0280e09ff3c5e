"""A sliding-window rate limit per key (a client address, a user name), in memory.

Used to slow password guessing on the login endpoints. In memory is enough: one process serves
the API, and a restart that forgets the counts only gives a guesser a minute back. The clock is
passed in, so tests drive it.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable


class RateLimit:
    """At most ``limit`` hits per key within ``window_s`` seconds."""

    def __init__(self, limit: int, window_s: float,
                 clock: Callable[[], float] = time.monotonic, max_keys: int = 100_000) -> None:
        if limit < 1 or window_s <= 0:
            raise ValueError("limit must be at least 1 and window_s positive")
        self.limit = limit
        self.window_s = window_s
        self._clock = clock
        self._max_keys = max_keys
        self._hits: dict[str, deque[float]] = {}
        self._lock = threading.Lock()  # handlers run in a thread pool

    def retry_after(self, key: str) -> int | None:
        """Seconds until ``key`` may try again, or None when it may now (nothing is counted)."""
        now = self._clock()
        with self._lock:
            hits = self._recent(key, now)
            if hits is None or len(hits) < self.limit:
                return None
            return max(1, math.ceil(hits[0] + self.window_s - now))

    def hit(self, key: str) -> None:
        """Count one attempt of ``key``."""
        now = self._clock()
        with self._lock:
            hits = self._recent(key, now)
            if hits is None:
                if len(self._hits) >= self._max_keys:
                    self._forget_idle(now)
                hits = self._hits[key] = deque()
            hits.append(now)

    def _recent(self, key: str, now: float) -> deque[float] | None:
        hits = self._hits.get(key)
        if hits is None:
            return None
        while hits and hits[0] <= now - self.window_s:
            hits.popleft()
        return hits

    def _forget_idle(self, now: float) -> None:
        # Many keys (a scan from many addresses): drop those with nothing in the window, and if
        # all are busy the oldest half; memory stays bounded, the limit stays roughly right.
        for key in [k for k, h in self._hits.items() if not h or h[-1] <= now - self.window_s]:
            del self._hits[key]
        if len(self._hits) >= self._max_keys:
            for key in sorted(self._hits, key=lambda k: self._hits[k][-1])[: self._max_keys // 2]:
                del self._hits[key]
