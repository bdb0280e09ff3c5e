"""Clock fixture: ``shifted_clock``, the system clock plus an offset that a test moves on.

Pass it to ``Service(..., clock=shifted_clock)`` and stamp the devices' readings with it; then
``advance`` simulates minutes of silence at once, and ``Service.tick()`` moves the rules to it.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest


class ShiftedClock:
    """``datetime.now(UTC)`` plus an offset; it runs in real time between ``advance`` calls, so
    the service's batching and waiting behave as usual."""

    def __init__(self, offset: timedelta = timedelta(0)) -> None:
        self._offset = offset
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            return datetime.now(UTC) + self._offset

    def advance(self, by: timedelta) -> None:
        with self._lock:
            self._offset += by

    def iso(self, shift: timedelta = timedelta(0)) -> str:
        """Now (plus ``shift``) as a device stamps it: RFC 3339, milliseconds, ``Z``."""
        return (self() + shift).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@pytest.fixture
def shifted_clock() -> ShiftedClock:
    return ShiftedClock()
