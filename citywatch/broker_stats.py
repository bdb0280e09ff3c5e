"""The broker's own counters, read from Mosquitto's ``$SYS`` topics, for metrics and health.

Mosquitto 2.0 publishes them (retained, QoS 0) every ``sys_interval`` seconds, and only those that
changed. Which ones 2.0.11 publishes was checked on a test broker (``mosquitto_sub -t '$SYS/#'``).
The broker does not publish per-client queue depths; what it offers:

- ``publish/messages/dropped``: messages the broker dropped for any client because that client's
  queue was full (``max_queued_messages`` / ``max_queued_bytes``), or QoS 0 messages for a client
  that could not take them. Our own session overflowing while the engine is away shows here.
- ``store/messages/count`` and ``/bytes``: messages held in the broker's store (queued for
  clients, in flight, and retained): the broker-wide queue depth.
- ``clients/connected`` and ``clients/disconnected``: disconnected persistent sessions are the
  ones whose queues fill.

A broker without ``$SYS`` (sys_interval 0, an ACL refusing it, another broker) leaves all unknown.
Counters start again at 0 when the broker restarts; ``liveness.Counter`` treats a drop as a reset.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from citywatch.liveness import Counter
from citywatch.metrics import Metrics

# $SYS topic -> our name for it
SYS_TOPICS: dict[str, str] = {
    "$SYS/broker/publish/messages/dropped": "dropped",
    "$SYS/broker/store/messages/count": "stored_messages",
    "$SYS/broker/store/messages/bytes": "stored_bytes",
    "$SYS/broker/clients/connected": "clients_connected",
    "$SYS/broker/clients/disconnected": "clients_disconnected",
}


class BrokerStats:
    """Latest values by name; ``update`` runs on paho's network thread, the rest on others."""

    def __init__(self, metrics: Metrics, clock: Callable[[], float] = time.monotonic) -> None:
        self._metrics = metrics
        self._clock = clock
        self._lock = threading.Lock()
        self._values: dict[str, int] = {}
        self.dropped = Counter()

    def update(self, topic: str, payload: bytes) -> None:
        name = SYS_TOPICS.get(topic)
        if name is None:
            return
        try:
            value = int(payload.decode("ascii").split()[0])
        except (UnicodeDecodeError, ValueError, IndexError):
            return  # not a count: another broker's idea of $SYS; leave the value unknown
        with self._lock:
            self._values[name] = value
            if name == "dropped":
                self.dropped = self.dropped.seen(value, self._clock())
        m = self._metrics
        if name == "dropped":
            m.broker_dropped.set(value)
        elif name == "stored_messages":
            m.broker_stored.labels("messages").set(value)
        elif name == "stored_bytes":
            m.broker_stored.labels("bytes").set(value)
        else:
            m.broker_clients.labels(name.removeprefix("clients_")).set(value)

    def snapshot(self) -> dict[str, Any]:
        """Every known counter; None where the broker has not told us (yet)."""
        with self._lock:
            return {name: self._values.get(name) for name in SYS_TOPICS.values()}
