"""The engine's MQTT session in a process of its own, so that both cores work.

In one process, paho's network thread (reading packets, building messages, writing PUBACKs) and
the ingest thread (decoding, storing, the rules) take turns on one interpreter lock: the ingest
thread, the bottleneck, gets the core only when paho lets go. ``ProcessLink`` runs a real
``MqttLink`` (the same session, client id, subscriptions, acknowledgement after commit) in a
child process and offers the engine the same interface:

- messages arrive in batches over a pipe and are handed to ``on_message`` as ``Inbound``, in the
  order received; a new connection's marker travels in the same stream, so ``on_session`` is
  called before that connection's first message, as ``MqttLink`` does;
- ``ack`` sends (packet id, QoS, session) to the child, which acknowledges on the connection
  that delivered them, nothing else (``MqttLink.ack_ids``);
- ``publish`` returns a delivery that completes when the child's paho has the broker's PUBACK;
- ``connected`` and the ``$SYS`` monitor follow the child's.

Back-pressure is kept: when the engine's ingest queue is full, the reader here stops reading the
pipe, the child's buffer fills (bounded) and its paho thread stops reading the socket, and the
broker holds the rest in our session (Receive Maximum bounds what is in flight).

The child dies with the engine: it exits when the pipe to its parent closes (and the kernel
sends it SIGKILL when the parent dies, where Linux allows). If the child dies, the link starts
another after a second; messages it had not acknowledged come again from the broker.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import logging
import multiprocessing
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from typing import Any

from sensing.limits import ENGINE_MAX_PACKET_BYTES
from sensing.mqtt import Delivery, Inbound, MqttLink

log = logging.getLogger(__name__)

RESTART_AFTER_S = 1.0


@dataclass(frozen=True)
class LinkSettings:
    """What ``MqttLink`` takes, besides the callbacks (it crosses to the child)."""

    url: str
    client_id: str
    subscriptions: tuple[str, ...]
    protocol: str = "5"
    session_expiry_s: int = 86400
    receive_maximum: int = 1000
    keepalive_s: int = 30
    max_packet_bytes: int = ENGINE_MAX_PACKET_BYTES
    monitor: tuple[str, ...] = ()
    ca_file: str | None = None


def make_link(settings: LinkSettings, on_message: Callable[[Inbound], None], *,
              on_monitor: Callable[[str, bytes], None] | None = None,
              on_session: Callable[[int, bool], None] | None = None) -> MqttLink:
    """The ``MqttLink`` these settings describe (in this process)."""
    return MqttLink(
        settings.url, settings.client_id, settings.subscriptions, on_message,
        protocol=settings.protocol, session_expiry_s=settings.session_expiry_s,
        receive_maximum=settings.receive_maximum, keepalive_s=settings.keepalive_s,
        max_packet_bytes=settings.max_packet_bytes, monitor=settings.monitor,
        on_monitor=on_monitor, ca_file=settings.ca_file, on_session=on_session)


class RemoteDelivery:
    """A publish made by the child: ``is_published`` / ``wait_for_publish`` as ``Delivery``."""

    __slots__ = ("_done", "_error")

    def __init__(self) -> None:
        self._done = threading.Event()
        self._error: str | None = None

    def settle(self, error: str | None) -> None:
        self._error = error
        self._done.set()

    def _check(self) -> None:
        if self._error is not None:
            raise RuntimeError(f"publish failed: {self._error}")

    def is_published(self) -> bool:
        done = self._done.is_set()
        self._check()
        return done

    def wait_for_publish(self, timeout: float | None = None) -> None:
        self._done.wait(timeout)
        self._check()


class ProcessLink:
    """``MqttLink``'s interface, with the session itself in a child process."""

    def __init__(self, settings: LinkSettings, on_message: Callable[[Inbound], None], *,
                 on_monitor: Callable[[str, bytes], None] | None = None,
                 on_session: Callable[[int, bool], None] | None = None) -> None:
        self.settings = settings
        self._on_message = on_message
        self._on_monitor = on_monitor
        self._on_session = on_session
        self.connected = threading.Event()
        self.session = 0  # +1 on every connection of any child; see ack
        self.connects = 0
        self._child_session: dict[int, int] = {}  # ours -> the current child's
        self._send_lock = threading.Lock()
        self._data: Connection | None = None
        self._control: Connection | None = None
        self._process: multiprocessing.process.BaseProcess | None = None
        self._deliveries: dict[int, RemoteDelivery] = {}
        self._tokens = itertools.count(1)
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self.restarts = 0

    # --- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        self._spawn()
        t = threading.Thread(target=self._read_data, name="mqtt-process-data", daemon=True)
        c = threading.Thread(target=self._read_control, name="mqtt-process-control", daemon=True)
        self._threads = [t, c]
        t.start()
        c.start()

    def _spawn(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        data_parent, data_child = ctx.Pipe(duplex=False)
        control_parent, control_child = ctx.Pipe(duplex=True)
        proc = ctx.Process(target=child_main, args=(self.settings, data_child, control_child),
                           name=f"citywatch-mqtt-{self.settings.client_id}", daemon=True)
        proc.start()
        data_child.close()
        control_child.close()
        self._data, self._control, self._process = data_parent, control_parent, proc

    def stop(self) -> None:
        self._stopping.set()
        self._send(("stop",))
        if self._process is not None:
            self._process.join(10)
            if self._process.is_alive():
                self._process.kill()
                self._process.join(5)
        self.connected.clear()
        for conn in (self._data, self._control):
            if conn is not None:
                conn.close()
        for t in self._threads:
            t.join(5)

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    # --- what the engine calls ---------------------------------------------------------------
    def ack(self, messages: Sequence[Inbound]) -> None:
        """Acknowledge stored messages (only those of the current connection; ``MqttLink.ack``
        says why), in the order received."""
        current = self.session
        child = self._child_session.get(current)
        if child is None:
            return
        ids = [(m.mid, m.qos, child) for m in messages if m.qos > 0 and m.session == current]
        if ids:
            self._send(("ack", ids))

    def publish(self, topic: str, payload: bytes | str, qos: int = 1,
                retain: bool = False) -> RemoteDelivery:
        delivery = RemoteDelivery()
        token = next(self._tokens)
        self._deliveries[token] = delivery
        body = payload.encode() if isinstance(payload, str) else bytes(payload)
        if not self._send(("pub", token, topic, body, qos, retain)):
            self._deliveries.pop(token, None)
            delivery.settle("the MQTT process is not running")
        return delivery

    def _send(self, item: tuple[Any, ...]) -> bool:
        conn = self._control
        if conn is None:
            return False
        with self._send_lock:
            try:
                conn.send(item)
                return True
            except (OSError, ValueError):
                return False  # the child is gone; it is restarted by the data reader

    # --- readers -----------------------------------------------------------------------------
    def _read_data(self) -> None:
        while not self._stopping.is_set():
            conn = self._data
            try:
                assert conn is not None
                batch = conn.recv()
            except (EOFError, OSError, AssertionError):
                if self._stopping.is_set():
                    return
                self._child_died()
                continue
            for item in batch:
                if item[0] == "s":
                    self._new_session(item[1], item[2])
                    continue
                _, topic, payload, mid, qos, received, child_session = item
                ours = self.session if self._child_session.get(self.session) == child_session \
                    else -1  # from a connection that is no longer the child's: never acked
                self._on_message(Inbound(topic, payload, mid, qos,
                                         datetime.fromtimestamp(received, UTC), ours))

    def _new_session(self, child_session: int, kept: bool) -> None:
        self.session += 1
        self.connects += 1
        self._child_session = {self.session: child_session}
        if self._on_session is not None:
            self._on_session(self.session, kept)

    def _read_control(self) -> None:
        while not self._stopping.is_set():
            conn = self._control
            try:
                assert conn is not None
                item = conn.recv()
            except (EOFError, OSError, AssertionError):
                if self._stopping.is_set():
                    return
                time.sleep(0.1)  # the data reader restarts the child
                continue
            kind = item[0]
            if kind == "connected":
                (self.connected.set if item[1] else self.connected.clear)()
            elif kind == "published":
                d = self._deliveries.pop(item[1], None)
                if d is not None:
                    d.settle(item[2])
            elif kind == "monitor" and self._on_monitor is not None:
                self._on_monitor(item[1], item[2])
            elif kind == "log":
                logging.getLogger(item[2]).log(item[1], "%s (MQTT process)", item[3])

    def _child_died(self) -> None:
        self.connected.clear()
        self._child_session = {}
        code = None if self._process is None else self._process.exitcode
        log.error("the MQTT process ended (exit code %s); starting another in %.0f s", code,
                  RESTART_AFTER_S)
        for d in list(self._deliveries.values()):
            d.settle("the MQTT process ended")
        self._deliveries.clear()
        for conn in (self._data, self._control):
            if conn is not None:
                with contextlib.suppress(OSError):
                    conn.close()
        if self._process is not None:
            self._process.join(1)
        if self._stopping.wait(RESTART_AFTER_S):
            return
        self.restarts += 1
        self._spawn()


# --- the child -------------------------------------------------------------------------------


def _die_with_parent() -> None:
    """Linux: SIGKILL this process when its parent dies (a SIGKILLed engine leaves no session
    holder behind to fight its successor for the client id)."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)


class _ToEngine(logging.Handler):
    """The child's log records, sent to the engine, which logs them where it logs its own (its
    console, ``--log-file``): an operator reads one log."""

    def __init__(self, tell: Callable[[tuple[Any, ...]], None]) -> None:
        super().__init__()
        self._tell = tell

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._tell(("log", record.levelno, record.name, self.format(record)))
        except Exception:  # logging must not raise
            self.handleError(record)


def child_main(settings: LinkSettings, data: Connection, control: Connection) -> None:
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the engine stops us (Ctrl-C reaches both)
    child = Child(settings, data, control)
    root = logging.getLogger()
    root.handlers[:] = [_ToEngine(child.tell)]
    root.setLevel(logging.INFO)
    child.run()


class Child:
    """The child's side: a real ``MqttLink``; messages out in batches, commands in."""

    def __init__(self, settings: LinkSettings, data: Connection, control: Connection) -> None:
        self.data, self.control = data, control
        self.cond = threading.Condition()
        self.pending: list[tuple[Any, ...]] = []
        # Bounded: at most this many messages wait for the engine (QoS 1 ones are bounded by
        # Receive Maximum anyway); beyond it paho's thread waits, and stops reading the socket.
        self.limit = max(2 * settings.receive_maximum, 1000)
        self.stopping = threading.Event()
        self.out_lock = threading.Lock()
        self.waiting: dict[int, Delivery] = {}
        self.waiting_lock = threading.Lock()
        self.has_waiting = threading.Event()
        self.link = make_link(settings, self.on_message, on_monitor=self.on_monitor,
                              on_session=self.on_session)

    def on_message(self, m: Inbound) -> None:
        item = ("m", m.topic, m.payload, m.mid, m.qos, m.received.timestamp(), m.session)
        with self.cond:
            while len(self.pending) >= self.limit and not self.stopping.is_set():
                self.cond.wait(0.5)
            self.pending.append(item)
            if len(self.pending) == 1:
                self.cond.notify_all()

    def on_session(self, session: int, kept: bool) -> None:
        with self.cond:
            self.pending.append(("s", session, kept))
            self.cond.notify_all()

    def on_monitor(self, topic: str, payload: bytes) -> None:
        self.tell(("monitor", topic, payload))

    def tell(self, item: tuple[Any, ...]) -> None:
        with self.out_lock, contextlib.suppress(OSError, ValueError):
            self.control.send(item)

    def forward(self) -> None:
        """Send what arrived, in batches (whatever came while the last one was sent)."""
        connected = False
        while not self.stopping.is_set():
            with self.cond:
                if not self.pending:
                    self.cond.wait(0.1)
                batch, self.pending = self.pending, []
                self.cond.notify_all()
            if batch:
                try:
                    self.data.send(batch)
                except (OSError, ValueError):
                    self.stopping.set()  # the engine is gone
                    return
            now = self.link.connected.is_set()
            if now != connected:
                connected = now
                self.tell(("connected", now))

    def confirm(self) -> None:
        """Tell the engine when its publishes have the broker's PUBACK (or failed)."""
        while not self.stopping.is_set():
            if not self.has_waiting.wait(0.2):
                continue
            with self.waiting_lock:
                items = list(self.waiting.items())
            done: list[tuple[int, str | None]] = []
            for token, d in items:
                try:
                    if d.is_published():
                        done.append((token, None))
                except RuntimeError as exc:
                    done.append((token, str(exc)))
            with self.waiting_lock:
                for token, _ in done:
                    self.waiting.pop(token, None)
                if not self.waiting:
                    self.has_waiting.clear()
            for token, error in done:
                self.tell(("published", token, error))
            if not done:
                time.sleep(0.002)

    def run(self) -> None:
        threads = [threading.Thread(target=self.forward, name="forward", daemon=True),
                   threading.Thread(target=self.confirm, name="confirm", daemon=True)]
        for t in threads:
            t.start()
        self.link.start()
        try:
            while not self.stopping.is_set():
                try:
                    item = self.control.recv()
                except (EOFError, OSError):
                    break  # the engine is gone
                kind = item[0]
                if kind == "ack":
                    self.link.ack_ids(item[1])
                elif kind == "pub":
                    _, token, topic, payload, qos, retain = item
                    try:
                        d = self.link.publish(topic, payload, qos, retain)
                    except Exception as exc:
                        self.tell(("published", token, f"{type(exc).__name__}: {exc}"))
                        continue
                    with self.waiting_lock:
                        self.waiting[token] = d
                        self.has_waiting.set()
                elif kind == "stop":
                    break
        finally:
            self.stopping.set()
            with self.cond:
                self.cond.notify_all()
            self.link.stop()
