"""The paho adapter: paho ends here.

The network-thread callback only wraps the message into an ``Inbound`` and hands it on; nothing
slow runs there (what the receiver does when its queue is full is its own documented choice).
Messages are acknowledged to the broker (MQTT 5 manual ack) only when the caller
says they are safely stored, so a crash between receipt and commit loses nothing: the broker keeps
them in our persistent session and redelivers them.

``monitor`` topics (the broker's ``$SYS`` counters) are subscribed at QoS 0 and handed to
``on_monitor`` instead: they are the broker's own bookkeeping, not device messages, and need no ack.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from sensing.limits import ENGINE_MAX_PACKET_BYTES
from sensing.read_buffer import BufferedSocket

_PUBACK = struct.Struct("!BBH")  # fixed header (PUBACK, remaining length 2), packet id

log = logging.getLogger(__name__)


class BrokerUrlError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    host: str
    port: int
    username: str | None = None
    password: str | None = None
    tls: bool = False

    @classmethod
    def parse(cls, url: str) -> BrokerAddress:
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise BrokerUrlError(f"broker url {url!r}: expected mqtt://[user:pass@]host[:port]")
        tls = parts.scheme == "mqtts"
        return cls(parts.hostname, parts.port or (8883 if tls else 1883),
                   unquote(parts.username) if parts.username else None,
                   unquote(parts.password) if parts.password else None, tls)


@dataclass(frozen=True, slots=True)
class Inbound:
    topic: str
    payload: bytes
    mid: int
    qos: int
    received: datetime
    # Which connection delivered it (MqttLink.session): a packet id means something only on
    # the connection that assigned it.
    session: int = 0


class Delivery:
    """What became of one publish: ``is_published`` and ``wait_for_publish`` as paho's
    ``MQTTMessageInfo``, but true to what paho does with a message it could not send.

    A publish while the socket is gone (the broker just went away) is kept by paho and sent after
    the reconnect, which marks the same info published; but the info keeps ``rc =
    MQTT_ERR_NO_CONN``, so its own ``is_published()`` raises for ever and a caller polling it would
    never see the message go out. paho's completion flag is read here instead, the one place that
    knows paho's insides. A publish paho refused outright still raises.
    """

    __slots__ = ("_info",)
    _KEPT = (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN, mqtt.MQTT_ERR_AGAIN)

    def __init__(self, info: mqtt.MQTTMessageInfo) -> None:
        self._info = info

    @property
    def mid(self) -> int:
        return self._info.mid

    def _check(self) -> None:
        if self._info.rc not in self._KEPT:
            raise RuntimeError(f"publish failed: {mqtt.error_string(self._info.rc)}")

    def is_published(self) -> bool:
        self._check()
        with self._info._condition:
            return bool(self._info._published)

    def wait_for_publish(self, timeout: float | None = None) -> None:
        self._check()
        with self._info._condition:
            self._info._condition.wait_for(lambda: bool(self._info._published), timeout)


def no_delay(_client: mqtt.Client, _userdata: object, sock: object) -> None:
    """Turn Nagle off: paho leaves it on, and QoS 1 acks then wait on delayed-ACK timers."""
    with contextlib.suppress(AttributeError, OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # type: ignore[attr-defined]


class MqttLink:
    """One paho client: a persistent session that subscribes, acks by hand and publishes."""

    def __init__(self, url: str, client_id: str, subscriptions: Sequence[str],
                 on_message: Callable[[Inbound], None], *, protocol: str = "5",
                 session_expiry_s: int = 86400, receive_maximum: int = 1000,
                 keepalive_s: int = 30, manual_ack: bool = True,
                 max_packet_bytes: int = ENGINE_MAX_PACKET_BYTES, monitor: Sequence[str] = (),
                 on_monitor: Callable[[str, bytes], None] | None = None,
                 ca_file: str | None = None,
                 on_session: Callable[[int, bool], None] | None = None) -> None:
        self.address = BrokerAddress.parse(url)
        self._subs = tuple(subscriptions)
        self._on_message = on_message
        self._v5 = protocol == "5"
        self._session_expiry_s = session_expiry_s
        self._receive_maximum = receive_maximum
        self._keepalive = keepalive_s
        self._max_packet_bytes = max_packet_bytes
        self._manual_ack = manual_ack
        self._monitor = tuple(monitor)
        self._on_monitor = on_monitor
        self.connected = threading.Event()
        self.connects = 0
        self.session = 0  # +1 on every connect; see ack
        self._on_session = on_session
        self._stopping = False
        self._client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id,
            protocol=mqtt.MQTTv5 if self._v5 else mqtt.MQTTv311,
            clean_session=None if self._v5 else False, manual_ack=manual_ack,
        )
        if self.address.username:
            self._client.username_pw_set(self.address.username, self.address.password)
        if self.address.tls:
            # ca_file: a private CA (the embedded broker's own); otherwise the system's CAs.
            self._client.tls_set(ca_certs=ca_file)
        # Dispatches queued while the broker is away are kept and sent on reconnect.
        self._client.max_queued_messages_set(0)
        self._client.reconnect_delay_set(min_delay=1, max_delay=30)
        self._client.on_connect = self._handle_connect
        self._client.on_disconnect = self._handle_disconnect
        self._client.on_message = self._handle_message
        self._client.on_subscribe = self._handle_subscribe
        self._client.on_socket_open = self._socket_open

    @staticmethod
    def _socket_open(client: mqtt.Client, userdata: object, sock: object) -> None:
        no_delay(client, userdata, sock)
        # Called just after paho stored the socket: serve its small reads from a buffer
        # (sensing.read_buffer). Only if paho keeps it where 2.2 does; otherwise unbuffered.
        if getattr(client, "_sock", None) is sock:
            client._sock = BufferedSocket(sock)

    def connect_properties(self) -> Properties | None:
        """MQTT 5 CONNECT properties: our session, and how much the broker may send us at once.

        Receive Maximum bounds the QoS 1 messages in flight to us (unacknowledged); Maximum Packet
        Size makes the broker hold back any packet larger than we accept. MQTT 3.1.1 has neither.
        """
        if not self._v5:
            return None
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self._session_expiry_s
        props.ReceiveMaximum = self._receive_maximum
        props.MaximumPacketSize = self._max_packet_bytes
        return props

    def start(self) -> None:
        self._client.connect_async(
            self.address.host, self.address.port, keepalive=self._keepalive,
            clean_start=False if self._v5 else mqtt.MQTT_CLEAN_START_FIRST_ONLY,
            properties=self.connect_properties(),
        )
        self._client.loop_start()

    def stop(self) -> None:
        self._stopping = True
        self._client.disconnect()
        self._client.loop_stop()

    def ack(self, messages: Sequence[Inbound]) -> None:
        """Acknowledge stored messages, in the order received as MQTT requires.

        Only those delivered on the current connection: after a reconnect the broker resends what
        we had not acknowledged, with the same packet ids, and may give an id to another message
        once the resent copy is acknowledged. Acknowledging an old copy then could acknowledge a
        message we never stored. The old copy is stored all the same; its resent twin is found a
        duplicate and acknowledged."""
        self.ack_ids([(m.mid, m.qos, m.session) for m in messages])

    def ack_ids(self, messages: Sequence[tuple[int, int, int]]) -> None:
        """``ack`` by (packet id, QoS, session) (what crosses a process boundary)."""
        current = self.session
        run: list[int] = []
        for mid, qos, session in messages:
            if qos == 0 or session != current:
                continue
            if qos == 1:
                run.append(mid)
                continue
            self._puback(run)
            run = []
            self._client.ack(mid, qos)
        self._puback(run)

    def _puback(self, mids: Sequence[int]) -> None:
        """PUBACK these QoS 1 messages. Many at once go out in one write instead of one wake-up
        of paho's thread and one send() each: MQTT is a byte stream, the broker reads them one
        by one (``Client.ack`` for QoS 1 queues exactly one such 4-byte packet)."""
        queue = getattr(self._client, "_packet_queue", None)
        if len(mids) > 1 and self._manual_ack and queue is not None:
            queue(mqtt.PUBACK, b"".join(_PUBACK.pack(mqtt.PUBACK, 2, mid) for mid in mids), 0, 0)
            return
        for mid in mids:
            self._client.ack(mid, 1)

    def publish(self, topic: str, payload: bytes | str, qos: int = 1,
                retain: bool = False) -> Delivery:
        return Delivery(self._client.publish(topic, payload, qos=qos, retain=retain))

    def _handle_connect(self, client: mqtt.Client, _userdata: object, flags: mqtt.ConnectFlags,
                        reason: ReasonCode, _props: Properties | None) -> None:
        if reason.is_failure:
            log.error("broker %s:%s refused the connection: %s", self.address.host,
                      self.address.port, reason)
            return
        self.connects += 1
        self.session += 1
        if self._on_session is not None:
            self._on_session(self.session, bool(flags.session_present))
        # Subscribing again is harmless with a persistent session and needed after it expired.
        # ``connected`` waits for the SUBACK: before it, what a device publishes is not ours yet
        # (a first session's subscription does not exist; the broker would route nothing to us).
        if self._subs or self._monitor:
            client.subscribe([(t, 1) for t in self._subs] + [(t, 0) for t in self._monitor])
            return
        self._ready()

    def _handle_subscribe(self, _client: mqtt.Client, _userdata: object, _mid: int,
                          reasons: list[ReasonCode], _props: Properties | None) -> None:
        topics = list(self._subs) + list(self._monitor)
        for topic, reason in zip(topics, reasons, strict=False):
            if reason.is_failure:
                log.error("broker %s:%s refused the subscription to %s: %s", self.address.host,
                          self.address.port, topic, reason)
        self._ready()

    def _ready(self) -> None:
        self.connected.set()
        log.info("connected to broker %s:%s", self.address.host, self.address.port)

    def _handle_disconnect(self, _client: mqtt.Client, _userdata: object,
                           _flags: mqtt.DisconnectFlags, reason: ReasonCode,
                           _props: Properties | None) -> None:
        if self.connected.is_set() and not self._stopping:
            log.warning("lost the broker (%s); reconnecting with backoff", reason)
        self.connected.clear()

    def _handle_message(self, _client: mqtt.Client, _userdata: object,
                        msg: mqtt.MQTTMessage) -> None:
        if self._on_monitor is not None and msg.topic.startswith("$SYS/"):
            self._on_monitor(msg.topic, bytes(msg.payload))
            return
        self._on_message(Inbound(msg.topic, bytes(msg.payload), msg.mid, msg.qos,
                                 datetime.now(UTC), self.session))
