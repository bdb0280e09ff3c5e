"""Nothing lost, nothing silently stopped: on the real broker and database, a message that trips a
bug, a worker that dies, a database that refuses, a QoS 0 flood, an oversize packet and a broker
queue that overflows all end visibly (dead letter, restart, 503, counts, warnings), and ingest
carries on."""

from __future__ import annotations

import contextlib
import json
import os
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import paho.mqtt.client as mqtt
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from psycopg import sql

from citywatch.config import Config, HealthConfig, load_config
from citywatch.embedded import find_mosquitto, start_broker
from rules.base import Observation
from sensing.limits import MAX_PACKET_BYTES
from sensing.mqtt import Inbound
from tests.fix_broker import connect, require_service
from tests.fix_db import DEFAULT_SERVER
from tests.integration.test_pipeline_e2e import (
    Collector,
    Running,
    publish_all,
    telemetry,
    wait_for,
)

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
GAUGE = "wl-02"  # a water gauge of the shipped registry
TOPIC = f"city/water/{GAUGE}/telemetry"


@pytest.fixture(scope="module")
def base_config() -> Config:
    return load_config(REPO / "config.yaml", env={})


def tuned(config: Config, *, stuck_after_s: float | None = None, batch_max: int | None = None,
          receive_maximum: int | None = None) -> Config:
    update: dict[str, Any] = {}
    if stuck_after_s is not None:
        update["health"] = HealthConfig(stuck_after_s=stuck_after_s)
    if batch_max is not None:
        update["database"] = config.database.model_copy(update={"batch_max": batch_max})
    if receive_maximum is not None:
        update["broker"] = config.broker.model_copy(update={"receive_maximum": receive_maximum})
    return config.model_copy(update=update)


@contextlib.contextmanager
def engine(config: Config, broker_url: str, db_url: str,
           client_id: str | None = None) -> Iterator[Running]:
    run = Running(config, broker_url, db_url, client_id or f"cw-sup-{uuid.uuid4().hex[:8]}")
    run.start()
    try:
        yield run
    finally:
        run.stop()


def health(run: Running) -> tuple[int, dict[str, Any]]:
    assert run.service is not None
    r = httpx.get(run.service.url + "/api/health", timeout=10)
    return r.status_code, r.json()


def health_when(run: Running, what: str, check: Callable[[int, dict[str, Any]], bool],
                timeout: float = 10.0) -> dict[str, Any]:
    """The health body once ``check(status_code, body)`` holds."""
    seen: list[dict[str, Any]] = []

    def probe() -> bool:
        code, body = health(run)
        seen[:] = [body]
        return check(code, body)

    wait_for(what, probe, timeout)
    return seen[0]


def metrics(run: Running) -> str:
    assert run.service is not None
    return httpx.get(run.service.url + "/metrics", timeout=10).text


def stored(run: Running) -> int:
    return int(run.sql("SELECT count(*) FROM telemetry WHERE device_id = %s", GAUGE)[0][0])


class Gate:
    """Holds the ingest worker at its next batch until opened; remembers the batches."""

    def __init__(self, run: Running, monkeypatch: pytest.MonkeyPatch) -> None:
        assert run.service is not None
        pipeline = run.service.pipeline
        real = pipeline.process
        self.opened = threading.Event()
        self.batches: list[int] = []

        def held(batch: Sequence[Inbound]) -> None:
            self.batches.append(len(batch))
            self.opened.wait()
            real(batch)

        monkeypatch.setattr(pipeline, "process", held)


def test_a_message_that_trips_a_bug_is_dead_lettered_and_its_neighbours_are_stored(
        base_config: Config, broker_url: str, fresh_db_url: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    client_id = f"cw-poison-{uuid.uuid4().hex[:8]}"
    dead = Collector(broker_url, "city/deadletter/#")
    try:
        with engine(base_config, broker_url, fresh_db_url, client_id) as run:
            assert run.service is not None
            rules = run.service._engine
            real = rules.evaluate_many

            def faulty(state: Any, items: Any, now: Any = None, **kw: Any) -> Any:
                items = list(items)
                if any(isinstance(i, Observation) and i.values.get("water_depth_cm") == 66.6
                       for i in items):
                    raise ZeroDivisionError("injected fault for depth 66.6")
                return real(state, items, now, **kw)

            monkeypatch.setattr(rules, "evaluate_many", faulty)
            gate = Gate(run, monkeypatch)
            publish_all(broker_url, [(TOPIC, telemetry(seq, 66.6 if seq == 6 else 2.0, -60 + seq))
                                     for seq in range(1, 12)])
            wait_for("the first batch held", lambda: gate.batches)
            gate.opened.set()  # the rest arrive meanwhile: the poison shares a batch

            # (The session broker may hold retained messages of other tests: look at ours only.)
            got = wait_for("the poison on the dead-letter topic", lambda: dead.on(
                f"city/deadletter/water/{GAUGE}"))
            body = got[0]
            assert body["reason"] == "internal_error"
            assert body["detail"] == "ZeroDivisionError: injected fault for depth 66.6"
            assert json.loads(body["payload"])["seq"] == 6
            wait_for("the ten good neighbours stored", lambda: stored(run) == 10)
            assert max(gate.batches) > 1, gate.batches  # it was narrowed down within a batch
            assert run.sql("SELECT seq FROM telemetry WHERE device_id = %s AND seq = 6",
                           GAUGE) == []
            assert run.sql("SELECT reason FROM rejections WHERE topic = %s",
                           TOPIC) == [("internal_error",)]

            publish_all(broker_url, [(TOPIC, telemetry(12, 2.0))])  # ingest carries on
            wait_for("a later reading stored", lambda: stored(run) == 11)
            code, h = health(run)
            assert code == 200
            assert h["rejected_by_reason"]["internal_error"] == 1
            assert h["workers"]["ingest"]["alive"] and h["workers"]["ingest"]["restarts"] == 0
            assert any("internal error" in w for w in h["warnings"]), h["warnings"]
            assert 'citywatch_messages_rejected_total{reason="internal_error"} 1.0' in metrics(run)
        assert len(dead.on(f"city/deadletter/water/{GAUGE}")) == 1

        # Acknowledged: back with the same session, the broker redelivers nothing of the above.
        with engine(base_config, broker_url, fresh_db_url, client_id) as run:
            publish_all(broker_url, [(TOPIC, telemetry(13, 2.0))])
            wait_for("the next reading stored", lambda: stored(run) == 12)
            assert 'citywatch_messages_received_total{channel="telemetry"} 1.0' in metrics(run)
            assert health(run)[1]["counts"]["duplicates"] == 0
    finally:
        dead.close()


def test_a_worker_that_dies_is_restarted_and_health_shows_it(
        base_config: Config, broker_url: str, fresh_db_url: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    with engine(base_config, broker_url, fresh_db_url) as run:
        service = run.service
        assert service is not None
        for obj, name in ((service.pipeline, "_take_batch"), (service._outbox, "_drain")):
            real = getattr(obj, name)
            calls: list[int] = []

            def dies_once(*args: Any, real: Any = real, calls: list[int] = calls,
                          name: str = name) -> Any:
                calls.append(1)
                if len(calls) == 1:
                    raise RuntimeError(f"injected: {name} blew up")
                return real(*args)

            monkeypatch.setattr(obj, name, dies_once)

        h = health_when(run, "both workers restarted", lambda _code, h: all(
            h["workers"][w]["restarts"] == 1 and h["workers"][w]["alive"]
            for w in ("ingest", "outbox")))
        assert h["status"] == "ok" and h["problems"] == []
        publish_all(broker_url, [(TOPIC, telemetry(1, 2.0))])
        wait_for("a reading stored after the restart", lambda: stored(run) == 1)
        text = metrics(run)
        assert 'citywatch_worker_restarts_total{worker="ingest"} 1.0' in text
        assert 'citywatch_worker_restarts_total{worker="outbox"} 1.0' in text
        assert 'citywatch_worker_alive{worker="ingest"} 1.0' in text


def _allow_connections(db_url: str, allow: bool) -> None:
    name = urlsplit(db_url).path.lstrip("/")
    server = os.environ.get("CITYWATCH_TEST_PG", DEFAULT_SERVER)
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS {}").format(
            sql.Identifier(name), sql.SQL("true" if allow else "false")))
        if not allow:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE datname = %s", (name,))


def test_health_answers_503_while_the_database_refuses_a_batch_past_the_limit_then_200(
        base_config: Config, broker_url: str, fresh_db_url: str) -> None:
    config = tuned(base_config, stuck_after_s=2)
    with engine(config, broker_url, fresh_db_url) as run:
        assert health(run)[0] == 200
        try:
            _allow_connections(fresh_db_url, False)  # our own scratch database, not the server
            publish_all(broker_url, [(TOPIC, telemetry(1, 2.0))])
            h = health_when(run, "503 from the health check", lambda code, _h: code == 503,
                            timeout=30)
            assert h["status"] == "failing"
            assert h["workers"]["ingest"]["stuck"] and h["workers"]["ingest"]["alive"]
            assert h["workers"]["ingest"]["waiting_s"] > 2
            assert h["problems"][0].startswith("ingest: work has waited")
            assert not h["database"]["connected"]
            assert "counts" in h and "broker" in h  # the usual body, with the reasons added
        finally:
            _allow_connections(fresh_db_url, True)
        wait_for("200 again", lambda: health(run)[0] == 200, timeout=30)
        assert stored(run) == 1
        h = health(run)[1]
        assert h["status"] == "ok" and not h["workers"]["ingest"]["stuck"]
        assert h["workers"]["ingest"]["last_progress_age_s"] is not None


def test_qos0_beyond_the_ingest_budget_is_dropped_and_counted_never_silently(
        base_config: Config, fresh_db_url: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    if find_mosquitto() is None:
        require_service("mosquitto is not installed (apt-get install mosquitto)")
    # Receive Maximum 20: the QoS 0 budget is 20 messages too.
    config = tuned(base_config, batch_max=5, receive_maximum=20)
    sent = 100
    # A broker of its own: the session broker holds other tests' retained QoS 1 messages, which
    # would fill the QoS 1 budget while the gate holds the worker and pause reading (by design).
    with start_broker(tmp_path / "broker", prefer="mosquitto", fallback=False,
                      anonymous=True) as broker, \
            engine(config, broker.url, fresh_db_url) as run:
        assert run.service is not None
        pipeline = run.service.pipeline
        gate = Gate(run, monkeypatch)
        try:
            ours = {"arrived": 0, "dropped": 0}
            real_submit = pipeline.submit

            def counting(message: Inbound) -> None:
                before = pipeline.dropped
                real_submit(message)
                if message.topic == TOPIC and message.qos == 0:
                    ours["arrived"] += 1
                    ours["dropped"] += pipeline.dropped - before

            monkeypatch.setattr(pipeline, "submit", counting)
            client = connect(broker.url)
            try:
                infos = [client.publish(TOPIC, telemetry(seq, 2.0, -200 + seq), qos=0)
                         for seq in range(1, sent + 1)]
                infos[-1].wait_for_publish(10)
            finally:
                client.loop_stop()
                client.disconnect()
            wait_for("every QoS 0 message handed to the pipeline",
                     lambda: ours["arrived"] == sent)
            assert ours["dropped"] >= sent - 20 - 5  # the QoS 0 budget, and one batch held
            dropped = pipeline.dropped
            code, h = health(run)
            assert code == 200 and h["status"] == "degraded"
            assert h["ingest_queue"]["qos0_dropped"] == dropped
            assert h["ingest_queue"]["messages"] <= 20
            assert any(f"dropped {dropped} QoS 0" in w for w in h["warnings"]), h["warnings"]
            assert (f'citywatch_ingest_dropped_total{{reason="qos0_queue_full"}} {dropped}.0'
                    in metrics(run))
        finally:
            gate.opened.set()  # a failure above must not leave the worker held at shutdown
        wait_for("what was not dropped stored", lambda: stored(run) == sent - ours["dropped"])


def test_an_oversize_packet_is_refused_by_the_broker_itself(
        base_config: Config, broker_url: str, fresh_db_url: str) -> None:
    url = urlsplit(broker_url)
    with engine(base_config, broker_url, fresh_db_url) as run:
        for protocol, expected in ((mqtt.MQTTv5, "Packet too large"),
                                   (mqtt.MQTTv311, "Unspecified error")):
            lost = threading.Event()
            reasons: list[str] = []
            client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=protocol)

            def on_disconnect(_c: Any, _u: Any, _f: Any, rc: Any, _p: Any,
                              reasons: list[str] = reasons, lost: threading.Event = lost) -> None:
                reasons.append(str(rc))
                lost.set()

            client.on_disconnect = on_disconnect
            client.connect(url.hostname or "127.0.0.1", url.port or 1883)
            client.loop_start()
            try:
                info = client.publish(TOPIC, b" " * MAX_PACKET_BYTES, qos=1)
                assert lost.wait(10), "the broker took a packet over its max_packet_size"
                assert not info.is_published()  # no PUBACK
            finally:
                client.loop_stop()
                client.disconnect()
            # MQTT 5 says why (reason code 0x95); MQTT 3.1.1 only loses the connection.
            assert reasons[0] == expected
        publish_all(broker_url, [(TOPIC, telemetry(1, 2.0))])
        wait_for("the next reading stored", lambda: stored(run) == 1)
        # The oversize packets never reached the engine: one telemetry message, nothing rejected.
        assert 'citywatch_messages_received_total{channel="telemetry"} 1.0' in metrics(run)
        assert "too_large" not in health(run)[1]["rejected_by_reason"]


def test_a_broker_queue_that_overflows_shows_in_health_and_metrics(
        base_config: Config, fresh_db_url: str, tmp_path: Path) -> None:
    if find_mosquitto() is None:
        require_service("mosquitto is not installed (apt-get install mosquitto)")
    client_id = f"cw-overflow-{uuid.uuid4().hex[:8]}"
    sent, limit = 20, 5
    with start_broker(tmp_path / "broker", prefer="mosquitto", fallback=False,
                      settings={"max_queued_messages": str(limit), "sys_interval": "1"},
                      anonymous=True) as broker:
        with engine(base_config, broker.url, fresh_db_url, client_id) as run:
            h = health_when(run, "the broker's counters",
                            lambda _code, h: h["broker_queue"]["dropped"] is not None)
            assert h["broker_queue"]["dropped"] == 0 and h["warnings"] == []
        # The engine is away; its session can queue only `limit` messages.
        publish_all(broker.url, [(TOPIC, telemetry(seq, 2.0, -100 + seq))
                                 for seq in range(1, sent + 1)])
        with engine(base_config, broker.url, fresh_db_url, client_id) as run:
            wait_for("the queued readings stored", lambda: stored(run) == limit)
            h = health_when(run, "the broker's drops in health",
                            lambda _code, h: bool(h["broker_queue"]["dropped"]))
            assert h["broker_queue"]["dropped"] == sent - limit
            assert h["status"] == "degraded"
            assert any("broker dropped" in w for w in h["warnings"]), h["warnings"]
            assert h["broker_queue"]["stored_messages"] is not None
            assert f"citywatch_broker_messages_dropped {sent - limit}.0" in metrics(run)
