"""A hole the broker restarts found: the outbox publisher died when the broker went away under it.

paho's ``publish()`` on a client whose socket is gone (the broker just went away, the engine's
``connected`` flag not yet cleared) keeps the message and sends it after the reconnect, but the
``MQTTMessageInfo`` it returned keeps ``rc = MQTT_ERR_NO_CONN`` and its ``is_published()`` raises
for ever after. The outbox polled it unguarded, so the outbox thread died (and, supervised, died
again on every restart): no dispatch and no zone state went out until the engine restarted.
Twenty broker restarts under a busy outbox hit the window about one run in six
(tests/faults/test_broker_faults.py); this case holds the window open every time. The engine's
MQTT link now answers for such a message from paho's own completion flag (sensing.mqtt.Delivery).
"""

from __future__ import annotations

import threading
import uuid

import psycopg
import pytest

from alerts import store as alert_store
from alerts.dispatch import OutboxPublisher
from sensing.mqtt import MqttLink
from tests.fix_faults import FaultBroker, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.faults]


def test_outbox_survives_a_publish_while_the_broker_is_away(
        fault_broker: FaultBroker, fresh_db_url: str) -> None:
    with psycopg.connect(fresh_db_url, autocommit=True) as conn:
        alert_store.migrate(conn)
        conn.execute("INSERT INTO outbox (topic, payload) VALUES ('city/dispatch/t1', '{}')")
    link = MqttLink(fault_broker.url, f"ob-{uuid.uuid4().hex[:6]}", (), lambda _m: None)
    # The race, held open: the engine still believes it is connected, paho has no socket yet.
    publisher = OutboxPublisher(fresh_db_url, link.publish, lambda: True)
    stop = threading.Event()
    died: list[BaseException] = []

    def run() -> None:
        try:
            publisher.run(stop)
        except Exception as exc:  # what ended the engine's outbox thread
            died.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    try:
        wait_for("the row handed to paho", lambda: publisher._in_flight, timeout=10)
        link.start()  # the broker is back: paho connects and sends what it kept
        wait_for("the outbox row marked sent", lambda: publisher.sent == 1 or died, timeout=15)
        assert not died, f"the outbox thread died: {died[0]!r}"
        assert publisher.sent == 1
        with psycopg.connect(fresh_db_url) as conn:
            assert conn.execute("SELECT count(*) FROM outbox WHERE sent IS NULL"
                                ).fetchone() == (0,)
    finally:
        stop.set()
        worker.join(5)
        link.stop()
