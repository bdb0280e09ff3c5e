"""A hole the broker restarts found: the outbox publisher dies when the broker drops away under it.

paho's ``publish()`` on a client whose socket is gone (the broker just went away, the engine's
``connected`` flag not yet cleared) queues the message and returns an ``MQTTMessageInfo`` with
``rc = MQTT_ERR_NO_CONN``; paho sends it after the reconnect, but that info's ``is_published()``
raises RuntimeError forever after. ``OutboxPublisher._settle`` calls it unguarded, so the
exception ends the outbox thread: from then on no dispatch and no zone state is sent until the
engine restarts, and nothing says so. Twenty broker restarts under a busy outbox hit the window
about one run in six (tests/faults/test_broker_faults.py); this case hits it every time.
"""

from __future__ import annotations

import gc
import threading
import uuid

import paho.mqtt.client as mqtt
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from alerts import store as alert_store
from alerts.dispatch import OutboxPublisher
from tests.fix_faults import FaultBroker, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.faults]


# The dead publisher leaves its connection open; collected here, it would surface as a warning
# (an error in this suite): the assertions below are what judge the case.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.xfail(strict=True, reason="hole found by the fault matrix: the outbox thread dies "
                   "on paho's MQTT_ERR_NO_CONN (alerts/dispatch.py _settle); see RELIABILITY.md")
def test_outbox_survives_a_publish_while_the_broker_is_away(
        fault_broker: FaultBroker, fresh_db_url: str) -> None:
    with psycopg.connect(fresh_db_url, autocommit=True) as conn:
        alert_store.migrate(conn)
        conn.execute("INSERT INTO outbox (topic, payload) VALUES ('city/dispatch/t1', '{}')")
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"ob-{uuid.uuid4().hex[:6]}",
                         protocol=mqtt.MQTTv5)
    client.max_queued_messages_set(0)
    # The race, held open: the engine still believes it is connected, paho has no socket.
    publisher = OutboxPublisher(fresh_db_url, client.publish, lambda: True)
    stop = threading.Event()
    died: list[BaseException] = []

    def run() -> None:
        try:
            publisher.run(stop)
        except Exception as exc:  # what ends the engine's outbox thread
            died.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    try:
        wait_for("the row handed to paho", lambda: publisher._in_flight, timeout=10)
        client.connect("127.0.0.1", fault_broker.port or 0)  # the broker is back
        client.loop_start()
        # paho sends the queued message after connecting; the outbox must notice and mark it.
        wait_for("the outbox row marked sent", lambda: publisher.sent == 1 or died, timeout=15)
        assert not died, f"the outbox thread died: {died[0]!r}"
        assert publisher.sent == 1
    finally:
        stop.set()
        worker.join(5)
        client.disconnect()
        client.loop_stop()
        died.clear()  # its traceback holds the dead publisher's connection:
        gc.collect()  # collected here, under this case's filter
