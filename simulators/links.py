"""How the simulated fleet reaches the broker: one connection per device, or shared ones.

- :class:`DeviceLinks` (the case-study fleet, up to a few hundred devices): every device has its
  own paho client, as a real device has, so each has its own Last Will (retained ``offline`` on
  its status topic), its own reconnect with backoff (1 s doubling to 30 s), its own QoS 1 queue
  (unbounded: nothing is lost while the broker is away) and sets its retained ``online`` on every
  connect. A device that drops off loses its TCP connection abruptly and the broker publishes
  its Will; it buffers its readings and delivers them when it is back.
- :class:`SharedLinks` (load tests, ``--devices`` in the thousands): a few lean connections
  (:mod:`simulators.wire`) carry many devices each; a thousand paho clients with a thread each
  would not fit in one process. A connection has one Will, so presence is published explicitly
  (``online`` on connect, ``offline`` when a device drops or the run stops) and a crash leaves
  devices ``online`` until the platform's silence timeout.

Devices speak MQTT 3.1.1, as most field devices do (and the fallback broker, amqtt, too).

With :class:`~simulators.credentials.FleetCredentials` (a broker that authenticates, CONTRACT
section 6), each device connects as itself: username and client id = its ``device_id`` (an
authenticating broker ties the client id to the username), and it reads its own
``city/dispatch/{device_id}`` (a grid worker's on-the-spot checks). A shared connection connects as
a gateway, whose devices the credentials list. Without them, every connection uses the URL's
user name and password, if any.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from simulators.credentials import FleetCredentials
from simulators.errors import SimulatorError
from simulators.wire import Publisher

log = logging.getLogger(__name__)

QOS = 1
ONLINE = b'{"state":"online"}'
OFFLINE = b'{"state":"offline"}'
KEEPALIVE_S = 30
DEVICES_PER_SHARED_LINK = 1000


def status_topic(kind: str, device_id: str) -> str:
    return f"city/{kind}/{device_id}/status"


def parse_url(url: str) -> tuple[str, int, str | None, str | None, bool]:
    """(host, port, user, password, tls) of ``mqtt[s]://[user:pass@]host[:port]``."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise SimulatorError(f"broker URL {url!r}: expected mqtt://[user:pass@]host[:port]")
    try:
        port = parts.port
    except ValueError:
        raise SimulatorError(f"broker URL {url!r}: the port is not a number") from None
    tls = parts.scheme == "mqtts"
    return (parts.hostname, port or (8883 if tls else 1883),
            unquote(parts.username) if parts.username else None,
            unquote(parts.password) if parts.password else None, tls)


def no_delay(_client: mqtt.Client, _userdata: object, sock: object) -> None:
    # paho leaves Nagle on; with it, each QoS 1 publish waits on the peer's delayed ACK.
    with contextlib.suppress(AttributeError, OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # type: ignore[attr-defined]


def tls_context(ca_file: str | None) -> ssl.SSLContext:
    """Verify the broker's certificate against ``ca_file`` (a private CA) or the system's CAs."""
    return ssl.create_default_context(cafile=ca_file)


def paho_client(url: str, client_id: str, *, username: str | None = None,
                password: str | None = None, ca_file: str | None = None) -> mqtt.Client:
    """A paho client for ``url`` speaking MQTT 3.1.1, Nagle off, reconnecting with backoff;
    ``username`` and ``password`` replace the URL's."""
    _, _, user, url_password, tls = parse_url(url)
    if username is not None:
        user, url_password = username, password
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                         protocol=mqtt.MQTTv311)
    if user is not None:
        client.username_pw_set(user, url_password)
    if tls:
        client.tls_set_context(tls_context(ca_file))
    client.on_socket_open = no_delay
    client.reconnect_delay_set(min_delay=1, max_delay=30)
    client.max_queued_messages_set(0)  # unbounded: keep everything while the broker is away
    return client


def shared_groups(n_devices: int, per_link: int = DEVICES_PER_SHARED_LINK) -> list[range]:
    """Device indexes per shared connection: ``per_link`` at most, spread evenly."""
    n = max(1, -(-n_devices // per_link))
    return [range(i, n_devices, n) for i in range(n)]


class Links(Protocol):
    """The fleet's connections, addressed by device index."""

    def start(self) -> None: ...
    def publish(self, index: int, topic: str, payload: bytes) -> None: ...
    def set_reachable(self, index: int, up: bool) -> None: ...
    def pump(self) -> None: ...
    def drain(self, timeout: float) -> None:
        """Say every device goes offline and wait up to ``timeout`` for the acknowledgements."""
    def disconnect(self) -> None: ...
    @property
    def connected(self) -> bool: ...
    @property
    def pending(self) -> int: ...
    @property
    def connects(self) -> int: ...


OnDispatch = Callable[[str, bytes], None]


class _DeviceConn:
    """One device's paho client. Callbacks run on its network thread and only count (or hand a
    dispatch to ``on_dispatch``, which must only queue it)."""

    def __init__(self, url: str, kind: str, device_id: str, run_tag: str, *,
                 secret: str | None = None, on_dispatch: OnDispatch | None = None,
                 ca_file: str | None = None) -> None:
        self.host, self.port = parse_url(url)[:2]
        self.topic = status_topic(kind, device_id)
        self.dispatch_topic = f"city/dispatch/{device_id}"
        if secret is None:
            # The run tag keeps two simulators of one fleet from taking over each other's
            # sessions on an anonymous broker.
            self.client = paho_client(url, f"{device_id}-{run_tag}", ca_file=ca_file)
        else:
            self.client = paho_client(url, device_id, username=device_id, password=secret,
                                      ca_file=ca_file)
        self.client.will_set(self.topic, OFFLINE, qos=QOS, retain=True)
        self._on_dispatch = on_dispatch
        if on_dispatch is not None:
            self.client.on_message = self._on_message
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.lock = threading.Lock()
        self.held: list[tuple[str, bytes]] = []  # readings taken while off the network
        self.away = False
        self.want_up = False
        self.closing = False
        self.connected = False
        self.connects = 0
        self.published = 0
        self.acked = 0

    def start(self) -> None:
        self.client.connect_async(self.host, self.port, keepalive=KEEPALIVE_S)
        self.client.loop_start()

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, rc: ReasonCode,
                    _p: Any) -> None:
        if rc.is_failure:
            log.warning("%s: broker refused the connection: %s", self.topic, rc)
            return
        with self.lock:
            if self.away:  # connected while it should be off the network: drop again
                self._cut()
                return
            self.connected = True
            self.connects += 1
            if self._on_dispatch is not None:
                client.subscribe(self.dispatch_topic, qos=QOS)  # again after every reconnect
            # Retained presence on every connect: a broker without persistence forgot it.
            client.publish(self.topic, ONLINE, qos=QOS, retain=True)
            self.published += 1
            for topic, body in self.held:
                client.publish(topic, body, qos=QOS)
            self.published += len(self.held)
            self.held.clear()

    def _on_disconnect(self, client: mqtt.Client, _u: Any, _f: Any, _rc: ReasonCode,
                       _p: Any) -> None:
        self.connected = False
        if self.away:
            client.loop_stop()  # on its own thread this only asks the loop to end: no retries

    def _on_publish(self, _c: mqtt.Client, _u: Any, _mid: int, _rc: ReasonCode,
                    _p: Any) -> None:
        self.acked += 1  # only this thread writes it; readers tolerate a stale value

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        if self._on_dispatch is not None and msg.topic == self.dispatch_topic:
            self._on_dispatch(msg.topic, bytes(msg.payload))

    def _cut(self) -> None:
        sock = self.client.socket()
        if isinstance(sock, socket.socket):
            # An abrupt end, no DISCONNECT: the broker publishes the Will, as for a dead link.
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def publish(self, topic: str, payload: bytes) -> None:
        with self.lock:
            if self.away:
                self.held.append((topic, payload))
                return
            self.client.publish(topic, payload, qos=QOS)
            self.published += 1

    def drop(self) -> None:
        with self.lock:
            self.away, self.want_up = True, False
            self._cut()

    def restore(self) -> None:
        with self.lock:
            self.want_up = True

    def pump(self) -> None:
        # Reconnect only once the old network thread has ended (it ends soon after the cut).
        if self.want_up and self.client._thread is None:  # paho has no accessor
            with self.lock:
                self.want_up = self.away = False
            # paho's loop_start makes a new wake-up socket pair without closing the old one.
            self.client._reset_sockets(sockpair_only=True)
            self.client.connect_async(self.host, self.port, keepalive=KEEPALIVE_S)
            self.client.loop_start()

    @property
    def pending(self) -> int:
        return self.published - self.acked + len(self.held)


class DeviceLinks:
    """One paho client per device: per-device Last Will and presence. With ``credentials``
    each device connects as itself and hands what arrives on its dispatch topic to
    ``on_dispatch``."""

    def __init__(self, url: str, devices: Sequence[tuple[str, str]], run_tag: str, *,
                 credentials: FleetCredentials | None = None,
                 on_dispatch: OnDispatch | None = None, ca_file: str | None = None) -> None:
        self._conns = [
            _DeviceConn(url, kind, device_id, run_tag,
                        secret=None if credentials is None else credentials.secret(device_id),
                        on_dispatch=None if credentials is None else on_dispatch,
                        ca_file=ca_file)
            for kind, device_id in devices]

    def start(self) -> None:
        for c in self._conns:
            c.start()

    def publish(self, index: int, topic: str, payload: bytes) -> None:
        self._conns[index].publish(topic, payload)

    def set_reachable(self, index: int, up: bool) -> None:
        if up:
            self._conns[index].restore()
        else:
            self._conns[index].drop()

    def pump(self) -> None:
        for c in self._conns:
            if c.want_up:
                c.pump()

    def drain(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for c in self._conns:
            c.closing = True
            if not c.away:
                # A clean disconnect does not fire the Will, so say it ourselves.
                with c.lock:
                    c.client.publish(c.topic, OFFLINE, qos=QOS, retain=True)
                    c.published += 1
        while self.pending and time.monotonic() < deadline:
            time.sleep(0.02)
        if self.pending:
            log.warning("stopping with %d messages the broker has not acknowledged",
                        self.pending)

    def disconnect(self) -> None:
        for c in self._conns:
            c.client.disconnect()
        for c in self._conns:
            c.client.loop_stop()

    @property
    def connected(self) -> bool:
        return all(c.connected or c.away for c in self._conns)

    @property
    def pending(self) -> int:
        return sum(c.pending for c in self._conns if not c.away)

    @property
    def connects(self) -> int:
        return sum(c.connects for c in self._conns)


class SharedLinks:
    """A few lean connections, each carrying many devices (see the module's docstring)."""

    def __init__(self, url: str, devices: Sequence[tuple[str, str]], run_tag: str,
                 per_link: int = DEVICES_PER_SHARED_LINK, *,
                 credentials: FleetCredentials | None = None, ca_file: str | None = None) -> None:
        host, port, user, password, tls = parse_url(url)
        self._topics = [status_topic(kind, device_id) for kind, device_id in devices]
        self._away: set[int] = set()
        self._held: dict[int, list[tuple[str, bytes]]] = {}
        context = tls_context(ca_file) if tls else None
        groups: list[Sequence[int]]
        logins: list[tuple[str, str | None, str | None]]
        if credentials is None:
            groups = list(shared_groups(len(devices), per_link))
            logins = [(f"citywatch-sim-{run_tag}-{i}", user, password)
                      for i in range(len(groups))]
        else:
            # Each connection is a gateway, allowed to publish for the devices it lists.
            where = {device_id: i for i, (_, device_id) in enumerate(devices)}
            groups, logins = [], []
            for gateway, members in sorted(credentials.gateways.items()):
                mine = [where[d] for d in members if d in where]
                if mine:
                    groups.append(mine)
                    logins.append((gateway, gateway, credentials.secret(gateway)))
            missing = sorted(set(where) - {devices[i][1] for g in groups for i in g})
            if missing:
                raise SimulatorError(
                    f"{len(missing)} devices (e.g. {', '.join(missing[:3])}) have no gateway "
                    "in the credentials: shared connections publish through gateways "
                    "(citywatch device gateway ID DEVICE...)")
        self._links = [Publisher(host, port, client_id, username=name, password=secret,
                                 tls=context, keepalive=KEEPALIVE_S, on_connect=self._on_connect)
                       for client_id, name, secret in logins]
        self._members = groups
        self._link_of = [0] * len(devices)
        for i, group in enumerate(groups):
            for d in group:
                self._link_of[d] = i

    def _link(self, index: int) -> Publisher:
        return self._links[self._link_of[index]]

    def _on_connect(self, link: Publisher) -> None:
        i = self._links.index(link)
        for d in self._members[i]:
            if d not in self._away:
                link.publish(self._topics[d], ONLINE, retain=True, first=True)

    def start(self) -> None:
        self.pump()

    def publish(self, index: int, topic: str, payload: bytes) -> None:
        if index in self._away:
            self._held.setdefault(index, []).append((topic, payload))
        else:
            self._link(index).publish(topic, payload)

    def set_reachable(self, index: int, up: bool) -> None:
        link = self._link(index)
        if up and index in self._away:
            self._away.discard(index)
            link.publish(self._topics[index], ONLINE, retain=True)
            for topic, payload in self._held.pop(index, []):
                link.publish(topic, payload)
        elif not up and index not in self._away:
            self._away.add(index)
            link.publish(self._topics[index], OFFLINE, retain=True)  # in place of a Will

    def pump(self) -> None:
        now = time.monotonic()
        for link in self._links:
            link.pump(now)

    def drain(self, timeout: float) -> None:
        for d, topic in enumerate(self._topics):
            if d not in self._away:
                self._link(d).publish(topic, OFFLINE, retain=True)
        deadline = time.monotonic() + timeout
        while self.pending and time.monotonic() < deadline:
            self.pump()
            self._links[0].wait(0.01)
        if self.pending:
            log.warning("stopping with %d messages the broker has not acknowledged",
                        self.pending)

    def disconnect(self) -> None:
        for link in self._links:
            link.close(0)

    def wait(self, timeout: float) -> None:
        self._links[0].wait(timeout)

    @property
    def connected(self) -> bool:
        return all(link.connected for link in self._links)

    @property
    def pending(self) -> int:
        return sum(link.pending for link in self._links)

    @property
    def connects(self) -> int:
        return sum(link.connects for link in self._links)
