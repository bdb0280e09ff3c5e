"""Device clocks against the server's: which readings' time stamps to trust for evaluation.

Pure (no clock reads, no I/O): the pipeline passes each batch's readings with the server time at
which it took the batch (``now``), and gets back the time each reading is evaluated at. Storage
keeps the device's own ``ts`` (it is part of the deduplication key); only the rules see these.

How a device's clock is judged. For every reading, ``lag = now - ts``. The fleet's typical lag
(the lower median of the devices' latest lags, over those heard within ``window`` of fleet time)
is the transport and backlog delay that every device shares: near zero in live operation,
minutes while a backlog held by the broker drains, hours in a replay of past data. ``now - fleet
lag`` is the *fleet time* at which a reading arriving now was typically measured, and a reading's
*sample* ``ts - fleet time`` is how far its device's clock is ahead (positive) or behind
(negative) the fleet. A device with no correction (offset zero) is evaluated at its own ``ts``.

- **Ahead**: a sample beyond what the current offset explains by more than ``tolerance`` (the
  corrected time would lie ahead of the fleet) is adopted at once: a reading cannot have been
  measured after it arrived.
- **Behind**: a sample further behind than the current offset explains is either a slow clock or
  the device's own backlog (it buffered while offline and now sends the old readings). A backlog
  is evaluated in event time, so the offset is adopted only when such samples agree with one
  another (within ``tolerance``) over ``confirm`` of fleet time; a backlog drains in moments and
  its samples run towards zero, a slow clock stays put.
- **Back to normal**: a corrected device whose sample is within half the tolerance of the fleet
  is trusted again at once (half: no flapping at the edge).
- Whatever the offset, no reading is evaluated later than ``now``: nothing is measured in the
  server's future.

What it cannot tell: with a single device (no fleet to compare), a slow clock looks like a
backlog and is not corrected; a device ahead still is.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from types import MappingProxyType

ZERO = timedelta(0)
PENDING_MAX = 64  # behind-samples kept while confirming; the median of the newest is enough


@dataclass(frozen=True, slots=True)
class ClockParams:
    tolerance: timedelta = timedelta(seconds=60)
    confirm: timedelta = timedelta(seconds=60)
    window: timedelta = timedelta(seconds=300)

    def __post_init__(self) -> None:
        if self.tolerance <= ZERO or self.confirm < ZERO or self.window <= ZERO:
            raise ValueError("tolerance and window must be positive, confirm not negative")


DEFAULT_PARAMS = ClockParams()


@dataclass(frozen=True, slots=True)
class DeviceClock:
    """What is known of one device's clock."""

    offset: timedelta = ZERO  # its clock minus the fleet's; readings are evaluated at ts - offset
    since: datetime | None = None  # server time the current non-zero offset was adopted
    heard: datetime | None = None  # fleet time of its newest reading
    lag: timedelta = ZERO  # receipt minus device time of its newest reading
    pending: tuple[timedelta, ...] = ()  # samples further behind than the offset, agreeing
    pending_since: datetime | None = None  # fleet time of the first of them

    @property
    def corrected(self) -> bool:
        return self.offset != ZERO


@dataclass(frozen=True, slots=True)
class ClockState:
    """Every device's clock, and the fleet's typical lag. ``ClockState()``: nothing known."""

    devices: Mapping[str, DeviceClock] = field(default_factory=lambda: MappingProxyType({}))
    fleet_lag: timedelta = ZERO  # typical receipt minus device time (transport, backlog)

    def corrected(self) -> dict[str, DeviceClock]:
        """The devices whose readings are evaluated at other times than their own, by id."""
        return {d: c for d, c in sorted(self.devices.items()) if c.corrected}


@dataclass(frozen=True, slots=True)
class ClockChange:
    """A device's correction started, changed or ended."""

    device_id: str
    old: timedelta
    new: timedelta


def observe(state: ClockState, readings: Sequence[tuple[str, datetime]], now: datetime,
            params: ClockParams = DEFAULT_PARAMS
            ) -> tuple[ClockState, list[datetime], list[ClockChange]]:
    """Take a batch of new readings ``(device_id, ts)`` received at server time ``now``.

    Returns the new state, the time each reading is to be evaluated at (in input order), and the
    devices whose correction changed. ``state`` is left untouched, so the caller adopts the new
    one only once the batch is committed.
    """
    if not readings:
        return state, [], []
    newest: dict[str, datetime] = {}
    for device_id, ts in readings:
        if device_id not in newest or ts > newest[device_id]:
            newest[device_id] = ts
    fleet_lag = _fleet_lag(state, newest, now, params)
    fleet_now = now - fleet_lag
    devices = dict(state.devices)
    changes: list[ClockChange] = []
    out: list[datetime | None] = [None] * len(readings)
    # Each device's readings in its own time order, so evidence accumulates as it was measured.
    order = sorted(range(len(readings)), key=lambda i: (readings[i][0], readings[i][1]))
    for i in order:
        device_id, ts = readings[i]
        old = devices.get(device_id) or DeviceClock()
        new = _judge(old, ts - fleet_now, fleet_now, now, params)
        devices[device_id] = new
        if new.offset != old.offset:
            changes.append(ClockChange(device_id, old.offset, new.offset))
        out[i] = min(ts - new.offset, now)
    for device_id, ts in newest.items():
        devices[device_id] = replace(devices[device_id], heard=fleet_now, lag=now - ts)
    merged = _merge_changes(changes)
    return (ClockState(MappingProxyType(devices), fleet_lag),
            [t for t in out if t is not None], merged)


def restore(offsets: Mapping[str, tuple[timedelta, datetime | None]]) -> ClockState:
    """The state to resume from after a restart: the corrections in force when it stopped
    (``(offset, since)`` by device), so that a slow device is not judged by its clock again
    while its offset is being confirmed anew."""
    return ClockState(MappingProxyType({d: DeviceClock(offset=off, since=since)
                                        for d, (off, since) in offsets.items() if off}))


def server_time(state: ClockState, device_id: str, ts: datetime, now: datetime) -> datetime:
    """A reading's evaluation time with the device's current correction (for readings not
    observed again, such as redeliveries)."""
    c = state.devices.get(device_id)
    return min(ts - (c.offset if c is not None else ZERO), now)


def _fleet_lag(state: ClockState, newest: Mapping[str, datetime], now: datetime,
               params: ClockParams) -> timedelta:
    """The lower median of the latest lags of the devices heard lately (this batch's included),
    never negative: a fleet cannot measure in the server's future."""
    lags = [now - ts for ts in newest.values()]
    cutoff = now - state.fleet_lag - params.window
    lags += [c.lag for d, c in state.devices.items()
             if d not in newest and c.heard is not None and c.heard >= cutoff]
    lags.sort()
    return max(lags[(len(lags) - 1) // 2], ZERO)


def _judge(c: DeviceClock, sample: timedelta, fleet_now: datetime, now: datetime,
           params: ClockParams) -> DeviceClock:
    tol = params.tolerance
    off = c.offset
    if off != ZERO and abs(sample) <= tol / 2:
        return _adopt(c, ZERO, now)  # agrees with the fleet again
    error = sample - off  # > 0: the corrected time would lie ahead of the fleet
    if error > tol:
        return _adopt(c, sample if abs(sample) > tol else ZERO, now)
    if abs(error) <= tol:
        return replace(c, pending=(), pending_since=None) if c.pending else c
    # Further behind than the offset says: a slow clock, or the device's own backlog.
    pending = c.pending
    since = c.pending_since
    if not pending or abs(sample - _median(pending)) > tol:
        pending, since = (), fleet_now
    pending = (*pending, sample)[-PENDING_MAX:]
    if since is not None and len(pending) >= 2 and fleet_now - since >= params.confirm:
        value = _median(pending)
        return _adopt(c, value if abs(value) > tol else ZERO, now)
    return replace(c, pending=pending, pending_since=since)


def _adopt(c: DeviceClock, offset: timedelta, now: datetime) -> DeviceClock:
    return replace(c, offset=offset, since=None if offset == ZERO else now, pending=(),
                   pending_since=None)


def _median(values: Iterable[timedelta]) -> timedelta:
    ordered = sorted(values)
    return ordered[(len(ordered) - 1) // 2]


def _merge_changes(changes: list[ClockChange]) -> list[ClockChange]:
    """One change per device for the batch: from its first old offset to its last new one."""
    first: dict[str, ClockChange] = {}
    last: dict[str, timedelta] = {}
    for ch in changes:
        first.setdefault(ch.device_id, ch)
        last[ch.device_id] = ch.new
    return [ClockChange(d, ch.old, last[d]) for d, ch in first.items() if ch.old != last[d]]
