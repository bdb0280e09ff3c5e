"""The ingest queue between paho's network thread and the ingest worker, bounded in messages
and bytes.

Two budgets, one per delivery guarantee, so that best-effort traffic can never crowd out the
messages the contract relies on:

- QoS 1 and 2 (``reliable``): the broker bounds what is in flight to us by our Receive Maximum
  (MQTT 5), and each packet by our Maximum Packet Size, so a budget of Receive Maximum messages
  and Receive Maximum x maximum packet bytes is never reached on a broker that honours them.
  When it is reached anyway (an MQTT 3.1.1 broker has no Receive Maximum; after a reconnect the
  broker redelivers what we still hold), ``put`` blocks: we stop reading from the broker until the
  ingest worker has made room. That is TCP back-pressure, and it is safe: the messages are not
  acknowledged, so the broker keeps them in our persistent session. The price is that paho's
  network thread sends nothing meanwhile (no PINGREQ, no PUBACK, no dispatch); if the pause
  outlasts 1.5 x keepalive the broker drops the connection, paho reconnects once we read again,
  and the broker redelivers whatever was unacknowledged (the store recognises duplicates).
  Dropping instead would leave the message unacknowledged in the broker's in-flight window until
  the next reconnect, which stalls the flow just the same and loses the message meanwhile.
- QoS 0 (``best_effort``): nothing bounds it but us, and it is best effort by definition (the
  contract uses QoS 1). Beyond its budget a QoS 0 message is dropped at once; ``put`` returns
  False and the caller counts and logs it. Blocking for it would stall the QoS 1 flow behind it.
"""

from __future__ import annotations

import collections
import queue
import threading
import time
from dataclasses import dataclass

from sensing.limits import ENGINE_MAX_PACKET_BYTES
from sensing.mqtt import Inbound

# QoS 0 may queue as many messages as QoS 1 may be in flight, but only this many bytes: a few
# hundred contract messages of a few kilobytes, while a flood of large QoS 0 packets is cut short.
BEST_EFFORT_BYTES = 4 << 20


@dataclass(frozen=True, slots=True)
class Budget:
    messages: int
    bytes: int

    def __post_init__(self) -> None:
        if self.messages < 1 or self.bytes < 1:
            raise ValueError(f"a queue budget needs at least one message and byte, got {self}")


def size_of(message: Inbound) -> int:
    """What a queued message costs: its payload and topic (the rest is a small constant)."""
    return len(message.payload) + len(message.topic)


class _Tally:
    def __init__(self, budget: Budget) -> None:
        self.budget = budget
        self.messages = 0
        self.bytes = 0

    def fits(self, size: int) -> bool:
        # An empty queue takes any one message, so an oversized one cannot block for ever.
        return self.messages == 0 or (self.messages < self.budget.messages
                                      and self.bytes + size <= self.budget.bytes)


class IngestQueue:
    """FIFO with ``put`` (paho's thread) and ``get``/``get_nowait``/``qsize`` as ``queue.Queue``."""

    def __init__(self, reliable: Budget, best_effort: Budget) -> None:
        self._items: collections.deque[tuple[Inbound, int, float]] = collections.deque()
        self._tallies = {True: _Tally(reliable), False: _Tally(best_effort)}
        self._cond = threading.Condition()
        self._closed = False
        self.blocked = 0  # times put had to wait for room (back-pressure on the broker)
        # Queued or taken but not yet marked done (as queue.Queue's): the tick waits for zero.
        self.unfinished_tasks = 0

    @classmethod
    def for_receive_maximum(cls, receive_maximum: int,
                            max_packet_bytes: int = ENGINE_MAX_PACKET_BYTES) -> IngestQueue:
        """Budgets that a broker honouring our Receive Maximum and Maximum Packet Size can never
        fill with QoS 1 (1000 x 66 KiB: 67 MB at most, about 0.2 MB for typical readings)."""
        return cls(Budget(receive_maximum, receive_maximum * max_packet_bytes),
                   Budget(receive_maximum, BEST_EFFORT_BYTES))

    @property
    def reliable(self) -> Budget:
        return self._tallies[True].budget

    @property
    def best_effort(self) -> Budget:
        return self._tallies[False].budget

    def put(self, message: Inbound) -> bool:
        """Queue ``message``; False if it is QoS 0 and over budget (dropped). QoS 1 and 2 wait
        for room instead (see the module's docstring) until ``close``."""
        size = size_of(message)
        reliable = message.qos > 0
        tally = self._tallies[reliable]
        with self._cond:
            if not tally.fits(size):
                if not reliable:
                    return False
                self.blocked += 1
                while not tally.fits(size) and not self._closed:
                    self._cond.wait()
            self._items.append((message, size, time.monotonic()))
            self.unfinished_tasks += 1
            tally.messages += 1
            tally.bytes += size
            self._cond.notify_all()
            return True

    def get(self, timeout: float | None = None) -> Inbound:
        """The oldest message; raises ``queue.Empty`` when none arrives within ``timeout``."""
        with self._cond:
            if not self._cond.wait_for(lambda: bool(self._items), timeout):
                raise queue.Empty
            return self._take()

    def get_nowait(self) -> Inbound:
        with self._cond:
            if not self._items:
                raise queue.Empty
            return self._take()

    def _take(self) -> Inbound:
        message, size, _since = self._items.popleft()
        tally = self._tallies[message.qos > 0]
        tally.messages -= 1
        tally.bytes -= size
        self._cond.notify_all()
        return message

    def drop_stale(self, session: int) -> int:
        """Forget queued QoS 1 and 2 messages delivered before connection ``session``: the
        broker resends them on that connection (the session was kept), so the old copies would
        only take room and be stored twice. QoS 0 copies are not resent, so they stay. Returns
        how many were dropped."""
        with self._cond:
            keep: collections.deque[tuple[Inbound, int, float]] = collections.deque()
            dropped = 0
            for item in self._items:
                message, size, _since = item
                if message.qos > 0 and message.session < session:
                    tally = self._tallies[True]
                    tally.messages -= 1
                    tally.bytes -= size
                    dropped += 1
                else:
                    keep.append(item)
            self._items = keep
            self.unfinished_tasks = max(self.unfinished_tasks - dropped, 0)
            if dropped:
                self._cond.notify_all()
            return dropped

    def task_done(self, n: int = 1) -> None:
        """``n`` taken messages are finished with (stored or given up)."""
        with self._cond:
            self.unfinished_tasks = max(self.unfinished_tasks - n, 0)

    def qsize(self) -> int:
        with self._cond:
            return len(self._items)

    def nbytes(self) -> int:
        with self._cond:
            return self._tallies[True].bytes + self._tallies[False].bytes

    def oldest_since(self) -> float | None:
        """``time.monotonic()`` when the oldest queued message arrived; None when empty."""
        with self._cond:
            return self._items[0][2] if self._items else None

    def close(self) -> None:
        """Release a ``put`` waiting for room (at shutdown: paho's thread must be able to end)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
