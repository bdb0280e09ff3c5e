"""A lean MQTT 3.1.1 publisher for load tests: QoS 1 in batches, driven by the caller's loop.

Why not paho here: a paho client costs about 100 us per QoS 1 message in Python (a Properties
object and a ReasonCode per PUBACK, a lock and a wake-up of its thread per publish, a send()
per packet), so one process tops out near 7,000 messages a second before simulating anything.
This one encodes a PUBLISH in a few microseconds, writes a whole tick's packets with one send()
and reads every PUBACK with one recv().

It keeps what a device library must: QoS 1 with packet ids and an in-flight window; unacknowledged
messages resent with the DUP flag after a reconnect and everything else queued meanwhile
(nothing is lost while the broker is away); reconnect with exponential backoff and jitter;
keep-alive pings. No Last Will: a shared connection cannot carry one per device (see
``simulators.links``). It only publishes; the codec functions are pure.
"""

from __future__ import annotations

import contextlib
import logging
import random
import select
import socket
import ssl
import struct
import time
from collections import deque
from collections.abc import Callable

log = logging.getLogger(__name__)

CONNECT, CONNACK, PUBLISH, PUBACK = 1, 2, 3, 4
PINGREQ_PACKET = b"\xc0\x00"
PINGRESP = 13
DISCONNECT_PACKET = b"\xe0\x00"
DUP_FLAG = 0x08
_ID = struct.Struct(">H")


class WireError(Exception):
    """The broker broke the protocol or refused us."""


def remaining_length(n: int) -> bytes:
    """MQTT's variable-length integer (1 to 4 bytes)."""
    if not 0 <= n < 268_435_456:
        raise WireError(f"packet of {n} bytes is too large for MQTT")
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string(s: bytes) -> bytes:
    return _ID.pack(len(s)) + s


def connect_packet(client_id: str, keepalive: int, *, username: str | None = None,
                   password: str | None = None, clean_session: bool = True,
                   will: tuple[str, bytes, bool] | None = None) -> bytes:
    """CONNECT at MQTT 3.1.1; ``will`` is (topic, payload, retain), sent at QoS 1."""
    flags = 0x02 if clean_session else 0
    payload = _string(client_id.encode())
    if will is not None:
        topic, body, retain = will
        flags |= 0x04 | (1 << 3) | (0x20 if retain else 0)
        payload += _string(topic.encode()) + _string(body)
    if username is not None:
        flags |= 0x80
        payload += _string(username.encode())
        if password is not None:
            flags |= 0x40
            payload += _string(password.encode())
    body = _string(b"MQTT") + bytes([4, flags]) + _ID.pack(keepalive) + payload
    return bytes([CONNECT << 4]) + remaining_length(len(body)) + body


def publish_packet(topic: bytes, packet_id: int, payload: bytes, *, retain: bool = False,
                   dup: bool = False) -> bytes:
    """PUBLISH at QoS 1; ``topic`` already length-prefixed (see :meth:`Publisher._topic`)."""
    first = 0x32 | (0x01 if retain else 0) | (DUP_FLAG if dup else 0)
    n = len(topic) + 2 + len(payload)
    return bytes([first]) + remaining_length(n) + topic + _ID.pack(packet_id) + payload


class Reader:
    """Bytes from the broker in, ``(packet type, flags, body)`` out."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, int, bytes]]:
        self._buf += data
        buf, n, pos = self._buf, len(self._buf), 0
        out = []
        while n - pos >= 2:
            length, mult, i, complete = 0, 1, pos + 1, False
            while i < n and i - pos <= 4:
                b = buf[i]
                i += 1
                length += (b & 0x7F) * mult
                if not b & 0x80:
                    complete = True
                    break
                mult *= 128
            if not complete:
                if i - pos > 4:
                    raise WireError("malformed remaining length from the broker")
                break  # the length itself is not all here yet
            if n - i < length:
                break
            out.append((buf[pos] >> 4, buf[pos] & 0x0F, bytes(buf[i:i + length])))
            pos = i + length
        del buf[:pos]
        return out


def _would_block(exc: BaseException) -> bool:
    return isinstance(exc, BlockingIOError | ssl.SSLWantReadError | ssl.SSLWantWriteError)


class Publisher:
    """One connection that publishes QoS 1 messages; call :meth:`pump` often (each tick).

    :meth:`publish` never blocks and never fails: messages wait in the queue until the window
    and the connection allow. ``on_connect`` runs after every successful (re)connect.
    """

    def __init__(self, host: str, port: int, client_id: str, *, username: str | None = None,
                 password: str | None = None, tls: ssl.SSLContext | None = None,
                 keepalive: int = 30, max_inflight: int = 1000,
                 on_connect: Callable[[Publisher], None] | None = None,
                 min_backoff_s: float = 0.5, max_backoff_s: float = 30.0,
                 connect_timeout_s: float = 5.0) -> None:
        if not 1 <= max_inflight < 65535:
            raise ValueError("max_inflight: expected 1..65534")
        self.host, self.port, self.client_id = host, port, client_id
        self._auth = (username, password)
        self._tls = tls
        self.keepalive = keepalive
        self.max_inflight = max_inflight
        self.on_connect = on_connect
        self._backoff = (min_backoff_s, max_backoff_s)
        self._connect_timeout = connect_timeout_s
        self._rng = random.Random()  # noqa: S311 - jitter only
        self._sock: socket.socket | None = None
        self._reader = Reader()
        self._queue: deque[tuple[bytes, bytes, bool]] = deque()  # (topic, payload, retain)
        self._inflight: dict[int, bytes] = {}
        self._out = bytearray()
        self._next_id = 0
        self._delay = 0.0
        self._next_attempt = 0.0
        self._last_out = self._last_in = 0.0
        self._ping_sent = False
        self._topics: dict[str, bytes] = {}
        self.connects = 0
        self.published = 0
        self.acked = 0

    # -- the caller's side ---------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._sock is not None

    @property
    def pending(self) -> int:
        """Published but not yet acknowledged by the broker."""
        return len(self._queue) + len(self._inflight)

    def publish(self, topic: str, payload: bytes, *, retain: bool = False,
                first: bool = False) -> None:
        item = (self._topic(topic), payload, retain)
        if first:
            self._queue.appendleft(item)
        else:
            self._queue.append(item)
        self.published += 1

    def pump(self, now: float | None = None) -> None:
        """Connect when due, read acknowledgements, send what the window allows, keep alive."""
        now = time.monotonic() if now is None else now
        if self._sock is None:
            if now >= self._next_attempt:
                self._connect(now)
            if self._sock is None:
                return
        try:
            self._read(now)
            self._fill()
            if not self._out and now - self._last_out >= self.keepalive / 2:
                self._out += PINGREQ_PACKET
                self._ping_sent = True
            self._write(now)
            if self._ping_sent and now - self._last_in > self.keepalive * 1.5:
                raise WireError("no answer to keep-alive pings")
        except (OSError, WireError) as exc:
            self._lost(now, exc)

    def wait(self, timeout: float) -> None:
        """Block up to ``timeout`` until the socket is readable or writable (idle loops)."""
        sock = self._sock
        if sock is None:
            time.sleep(timeout)
            return
        with contextlib.suppress(OSError, ValueError):
            select.select([sock], [sock] if self._out else [], [], timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Send what is queued (up to ``timeout``), then DISCONNECT: no Will is published."""
        deadline = time.monotonic() + timeout
        while self.pending and time.monotonic() < deadline:
            self.pump()
            self.wait(0.01)
        if self.pending:
            log.warning("%s: closing with %d unacknowledged messages", self.client_id,
                        self.pending)
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.setblocking(True)
                self._sock.sendall(bytes(self._out) + DISCONNECT_PACKET)
            self._sock.close()
            self._sock = None

    # -- internals -----------------------------------------------------------------------------
    def _topic(self, topic: str) -> bytes:
        t = self._topics.get(topic)
        if t is None:
            if len(self._topics) > 200_000:
                self._topics.clear()  # unbounded topic sets (tests) must not grow memory forever
            t = self._topics[topic] = _string(topic.encode())
        return t

    def _connect(self, now: float) -> None:
        sock: socket.socket | None = None
        try:
            sock = socket.create_connection((self.host, self.port), self._connect_timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._tls is not None:
                sock = self._tls.wrap_socket(sock, server_hostname=self.host)
            user, password = self._auth
            sock.sendall(connect_packet(self.client_id, self.keepalive, username=user,
                                        password=password))
            sock.settimeout(self._connect_timeout)
            reader = Reader()
            packets: list[tuple[int, int, bytes]] = []
            while not packets:
                data = sock.recv(4096)
                if not data:
                    raise WireError("connection closed before CONNACK")
                packets = reader.feed(data)
            ptype, _, body = packets[0]
            if ptype != CONNACK or len(body) < 2:
                raise WireError(f"expected CONNACK, got packet type {ptype}")
            if body[1] != 0:
                raise WireError(f"broker refused the connection (return code {body[1]})")
            sock.setblocking(False)
        except (OSError, WireError) as exc:
            if sock is not None:
                sock.close()
            lo, hi = self._backoff
            self._delay = min(hi, max(lo, self._delay * 2))
            self._next_attempt = now + self._delay * self._rng.uniform(0.8, 1.2)
            if self.connects == 0 and self._delay <= lo:
                log.info("%s: cannot connect to %s:%d (%s); retrying", self.client_id,
                         self.host, self.port, exc)
            return
        self._sock = sock
        self._reader = Reader()
        self._delay = 0.0
        self._last_in = self._last_out = now
        self._ping_sent = False
        self.connects += 1
        # What the broker may not have: resent first, in order, marked as duplicates.
        self._out = bytearray(b"".join(bytes([p[0] | DUP_FLAG]) + p[1:]
                                       for p in self._inflight.values()))
        if self.on_connect is not None:
            self.on_connect(self)

    def _lost(self, now: float, exc: BaseException) -> None:
        log.warning("%s: connection lost (%s); reconnecting", self.client_id, exc)
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
        self._sock = None
        self._out.clear()  # every PUBLISH in it is in _inflight and is resent on reconnect
        lo, _ = self._backoff
        self._delay = lo
        self._next_attempt = now + lo * self._rng.uniform(0.8, 1.2)

    def _read(self, now: float) -> None:
        assert self._sock is not None
        while True:
            try:
                data = self._sock.recv(65536)
            except OSError as exc:
                if _would_block(exc):
                    return
                raise
            if not data:
                raise WireError("the broker closed the connection")
            self._last_in = now
            self._ping_sent = False
            for ptype, _, body in self._reader.feed(data):
                if ptype == PUBACK and len(body) >= 2:
                    if self._inflight.pop((body[0] << 8) | body[1], None) is not None:
                        self.acked += 1
                elif ptype != PINGRESP:
                    log.debug("%s: ignoring packet type %d", self.client_id, ptype)

    def _fill(self) -> None:
        room = self.max_inflight - len(self._inflight)
        if room <= 0 or not self._queue:
            return
        chunks = []
        queue, inflight = self._queue, self._inflight
        pid = self._next_id
        for _ in range(min(room, len(queue))):
            topic, payload, retain = queue.popleft()
            pid = pid % 65535 + 1
            while pid in inflight:
                pid = pid % 65535 + 1
            packet = publish_packet(topic, pid, payload, retain=retain)
            inflight[pid] = packet
            chunks.append(packet)
        self._next_id = pid
        self._out += b"".join(chunks)

    def _write(self, now: float) -> None:
        assert self._sock is not None
        while self._out:
            try:
                sent = self._sock.send(self._out)
            except OSError as exc:
                if _would_block(exc):
                    return
                raise
            del self._out[:sent]
            self._last_out = now
