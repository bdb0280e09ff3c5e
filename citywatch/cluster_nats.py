"""The NATS side of the cluster: connection options, the streams, consumers and lease bucket the
workers share, and the MQTT connections the engine itself makes (see citywatch.cluster_worker).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

import nats
import paho.mqtt.client as mqtt
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from paho.mqtt.enums import CallbackAPIVersion

from sensing.mqtt import Delivery

log = logging.getLogger("citywatch.cluster")

MQTT_STREAM = "$MQTT_msgs"
MQTT_PREFIX = "$MQTT.msgs."
PARTS_STREAM = "CW_PARTS"
LEASES = "cw_leases"
ROUTER = "router"
# A node's death takes JetStream a few seconds to elect new leaders (5-10 s in the nodes' logs
# here, on 2 busy cores): a lease must outlive that, or every worker fences itself at once.
LEASE_TTL_S = 10.0
# Shorter than the lease: what a dead owner had fetched is due again before its partitions move,
# so the next owner gets the older messages first. A batch still queued after this comes again
# and is recognised as stored.
ACK_WAIT_S = 6.0
MAX_ACK_PENDING = 1000  # per partition: within the ingest queue's budget, so it never blocks


def nats_options(urls: Sequence[str]) -> dict[str, Any]:
    """Servers without credentials, and the credentials apart: the client also connects to
    servers the cluster tells it of, with the credentials of the options, not of a URL (with the
    user in the URLs only, a reconnect to a told-of node was refused: 'Authorization Violation')."""
    servers, user, password = [], None, None
    for url in urls:
        parts = urlsplit(url)
        if parts.username:
            user, password = unquote(parts.username), unquote(parts.password or "")
        servers.append(f"{parts.scheme}://{parts.hostname}:{parts.port or 4222}")
    out: dict[str, Any] = {"servers": servers}
    if user is not None:
        out.update(user=user, password=password)
    return out


async def ensure_topology(js: JetStreamContext, partitions: Sequence[str]) -> None:
    """The partition stream, its consumers, the router's consumer and the lease bucket; every
    call may race another worker's, and adding what exists with the same settings is a no-op.
    A replicated stream being created by another worker can time a request out: try again."""
    for _ in range(100):  # NATS makes the MQTT stream when the first MQTT client comes
        try:
            await js.stream_info(MQTT_STREAM)
            break
        except nats.js.errors.NotFoundError:
            await asyncio.sleep(0.2)
    await _retry(lambda: js.add_stream(StreamConfig(
        name=PARTS_STREAM, subjects=["cwp.>"], retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE, num_replicas=3, duplicate_window=120.0)))
    await _retry(lambda: js.add_consumer(MQTT_STREAM, ConsumerConfig(
        durable_name=ROUTER, filter_subject=MQTT_PREFIX + "city.>", ack_policy=AckPolicy.EXPLICIT,
        ack_wait=ACK_WAIT_S, max_ack_pending=4000, deliver_policy=DeliverPolicy.ALL)))
    for p in partitions:
        await _retry(lambda p=p: js.add_consumer(PARTS_STREAM, ConsumerConfig(  # type: ignore[misc]
            durable_name=f"part-{p}", filter_subject=f"cwp.{p}.>",
            ack_policy=AckPolicy.EXPLICIT, ack_wait=ACK_WAIT_S,
            max_ack_pending=MAX_ACK_PENDING, deliver_policy=DeliverPolicy.ALL)))
    await _retry(lambda: js.create_key_value(bucket=LEASES, history=1, ttl=LEASE_TTL_S,
                                             replicas=3))


async def _retry(make: Callable[[], Awaitable[object]], attempts: int = 20) -> None:
    for i in range(attempts):
        try:
            await make()
            return
        except (nats.errors.TimeoutError, nats.js.errors.ServiceUnavailableError) as exc:
            if i == attempts - 1:
                raise
            log.info("JetStream busy (%s); trying again", type(exc).__name__)
            await asyncio.sleep(0.5)


def touch_mqtt(port: int, password: str, client_id: str) -> None:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)
    c.username_pw_set("engine", password)
    try:
        c.connect("127.0.0.1", port, keepalive=10)
        c.loop(timeout=2.0)
        c.disconnect()
    except OSError as exc:
        log.warning("could not reach the MQTT listener on %d (%s)", port, exc)


class RotatingPublisher:
    """The outbox's MQTT connection (QoS 1, retained zone states as on one machine), moving to
    the next node of the cluster when its node goes away. paho keeps unacknowledged QoS 1
    messages and sends them again after reconnecting."""

    def __init__(self, nodes: Sequence[tuple[str, int]], username: str, password: str,
                 client_id: str) -> None:
        self._nodes = list(nodes)
        self._i = 0
        self.connected = threading.Event()
        c = self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                       protocol=mqtt.MQTTv311, clean_session=False)
        c.username_pw_set(username, password)
        c.reconnect_delay_set(min_delay=1, max_delay=2)
        c.on_connect = lambda *_a: self.connected.set()
        c.on_disconnect = self._moved
        c.on_connect_fail = self._moved  # a node that is down at start: the next one
        self._i = sum(client_id.encode()) % len(self._nodes)  # workers spread over the nodes
        c.connect_async(*self._nodes[self._i], keepalive=10)
        c.loop_start()

    def _moved(self, *_a: Any) -> None:
        self.connected.clear()
        self._i = (self._i + 1) % len(self._nodes)
        self._client._host, self._client._port = self._nodes[self._i]

    def publish(self, topic: str, payload: str, qos: int, retain: bool) -> Delivery:
        return Delivery(self._client.publish(topic, payload, qos=qos, retain=retain))

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()
