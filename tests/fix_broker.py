"""Broker fixtures: ``broker_url`` (one broker for the whole session) and ``mqtt_client_factory``.

``broker_url`` starts our own Mosquitto with the tuned configuration (citywatch.embedded) when the
``mosquitto`` binary is installed; otherwise it uses ``CITYWATCH_TEST_BROKER_URL`` (default
mqtt://127.0.0.1:1883) if a broker answers there. With neither, tests that need it are skipped on
a developer's machine and fail under CI (``CI=true``), where a missing service is a bug.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any, Literal, NoReturn
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from citywatch.embedded import find_mosquitto, start_broker

DEFAULT_TEST_BROKER = "mqtt://127.0.0.1:1883"
TIMEOUT_S = 10.0

OnMessage = Callable[[mqtt.Client, Any, mqtt.MQTTMessage], None]


def require_service(reason: str) -> NoReturn:
    """Skip the test on a developer's machine; fail it under CI, where the service must exist."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: a missing service is a failure, not a skip)",
                    pytrace=False)
    pytest.skip(reason)


def connect(url: str, client_id: str | None = None, *, protocol: Literal["5", "3.1.1"] = "5",
            clean_start: bool = True, session_expiry_s: int = 0,
            on_message: OnMessage | None = None, timeout: float = TIMEOUT_S) -> mqtt.Client:
    """A paho client connected to ``url`` with its network loop running; raises if refused.

    ``on_message`` is set before connecting, so messages queued in a persistent session are
    not missed. ``session_expiry_s`` (MQTT 5) or ``clean_start=False`` (MQTT 3.1.1) keeps the
    session while the client is away.
    """
    parts = urlsplit(url)
    v5 = protocol == "5"
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id or f"test-{uuid.uuid4().hex[:12]}",
        protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
        clean_session=None if v5 else clean_start,
    )
    if parts.username:
        client.username_pw_set(unquote(parts.username),
                               unquote(parts.password) if parts.password else None)
    if on_message is not None:
        client.on_message = on_message
    connected = threading.Event()
    outcome: list[ReasonCode] = []

    def on_connect(_c: mqtt.Client, _u: Any, _f: Any, rc: ReasonCode, _p: Any) -> None:
        outcome.append(rc)
        connected.set()

    client.on_connect = on_connect
    host, port = parts.hostname or "127.0.0.1", parts.port or 1883
    if v5:
        props = Properties(PacketTypes.CONNECT)
        if session_expiry_s:
            props.SessionExpiryInterval = session_expiry_s
        client.connect(host, port, keepalive=30, clean_start=clean_start, properties=props)
    else:
        client.connect(host, port, keepalive=30)
    client.loop_start()
    if not connected.wait(timeout) or outcome[0].is_failure:
        client.loop_stop()
        client.disconnect()
        why = outcome[0] if outcome else f"no CONNACK within {timeout:g} s"
        raise ConnectionError(f"MQTT {protocol} connect to {url} refused: {why}")
    return client


def subscribe(client: mqtt.Client, topic: str, qos: int = 1, timeout: float = TIMEOUT_S) -> None:
    """Subscribe and wait for the SUBACK, so that what is published next is delivered."""
    acked = threading.Event()
    client.on_subscribe = lambda *_args: acked.set()
    result, _mid = client.subscribe(topic, qos)
    assert result == mqtt.MQTT_ERR_SUCCESS, mqtt.error_string(result)
    assert acked.wait(timeout), f"no SUBACK for {topic} within {timeout:g} s"


def _reachable(url: str) -> bool:
    try:
        connect(url, timeout=3).disconnect()
    except (OSError, ConnectionError):
        return False
    return True


@pytest.fixture(scope="session")
def broker_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of an MQTT 5 broker for this test session (see the module's docstring)."""
    if find_mosquitto() is not None:
        data_dir = tmp_path_factory.mktemp("broker")
        with start_broker(data_dir, prefer="mosquitto", fallback=False,
                          anonymous=True) as broker:
            yield broker.url
        return
    url = os.environ.get("CITYWATCH_TEST_BROKER_URL", DEFAULT_TEST_BROKER)
    if not _reachable(url):
        require_service(f"no MQTT broker: mosquitto is not installed (apt-get install mosquitto) "
                        f"and none answers at {url} (set CITYWATCH_TEST_BROKER_URL)")
    yield url


class MqttClientFactory:
    """Makes connected paho clients (MQTT 5 by default); all are disconnected at teardown."""

    def __init__(self, request: pytest.FixtureRequest) -> None:
        self._request = request
        self._clients: list[mqtt.Client] = []

    def __call__(self, client_id: str | None = None, *, url: str | None = None,
                 protocol: Literal["5", "3.1.1"] = "5", clean_start: bool = True,
                 session_expiry_s: int = 0, on_message: OnMessage | None = None) -> mqtt.Client:
        """Connect to ``url``, or to the session's ``broker_url`` when it is not given."""
        if url is None:
            url = str(self._request.getfixturevalue("broker_url"))
        client = connect(url, client_id, protocol=protocol, clean_start=clean_start,
                         session_expiry_s=session_expiry_s, on_message=on_message)
        self._clients.append(client)
        return client

    def close(self) -> None:
        for client in self._clients:
            client.disconnect()
            client.loop_stop()
        self._clients.clear()


@pytest.fixture
def mqtt_client_factory(request: pytest.FixtureRequest) -> Iterator[MqttClientFactory]:
    """``mqtt_client_factory(client_id=None, *, url=None, protocol="5", ...)`` -> a client."""
    factory = MqttClientFactory(request)
    yield factory
    factory.close()
