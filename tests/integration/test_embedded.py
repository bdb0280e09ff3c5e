"""The embedded services of ``citywatch run``: Mosquitto, the amqtt fallback and PostgreSQL."""

from __future__ import annotations

import importlib.util
import json
import queue
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
import pytest

from alerts import store as alert_store
from citywatch.embedded import (
    find_mosquitto,
    mosquitto_config,
    mqtt_protocol,
    start_broker,
    start_database,
)
from sensing import store
from tests.fix_broker import MqttClientFactory, require_service, subscribe

pytestmark = pytest.mark.integration

TOPIC = "city/water/W-01/telemetry"
WAIT_S = 10.0


def _reading(seq: int) -> bytes:
    return json.dumps({"ts": "2026-11-23T08:15:00Z", "seq": seq,
                       "values": {"water_depth_cm": 12.5}}).encode()


class Inbox:
    """Collects messages from paho's network thread for the test thread."""

    def __init__(self) -> None:
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()

    def __call__(self, _client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        self.messages.put(message)

    def next(self) -> mqtt.MQTTMessage:
        try:
            return self.messages.get(timeout=WAIT_S)
        except queue.Empty:
            pytest.fail(f"no message within {WAIT_S:g} s")


def test_config_template_is_filled_in(tmp_path: Path) -> None:
    conf = mosquitto_config(18830, tmp_path)
    assert "@" not in conf.replace("%", "")
    lines = {line.strip() for line in conf.splitlines() if line and not line.startswith("#")}
    assert "listener 18830 127.0.0.1" in lines
    assert f"persistence_location {tmp_path}" in lines
    assert {"set_tcp_nodelay true", "persistence true", "max_queued_messages 100000"} <= lines
    # Authenticated unless asked otherwise: no anonymous clients, client id = username.
    assert {"allow_anonymous false", f"password_file {tmp_path}/passwd",
            f"acl_file {tmp_path}/acl", "use_username_as_clientid true"} <= lines
    anonymous = mosquitto_config(18830, tmp_path, anonymous=True)
    assert "allow_anonymous true" in anonymous.splitlines()
    assert "password_file" not in anonymous


def test_mosquitto_round_trip_and_persistent_session(
        tmp_path: Path, mqtt_client_factory: MqttClientFactory) -> None:
    if find_mosquitto() is None:
        require_service("mosquitto is not installed (apt-get install mosquitto)")
    data_dir = tmp_path / "broker"
    with start_broker(data_dir, prefer="mosquitto", fallback=False, anonymous=True) as broker:
        assert (broker.kind, broker.protocol) == ("mosquitto", "5")
        assert broker.url == f"mqtt://127.0.0.1:{broker.port}"
        inbox = Inbox()
        engine = mqtt_client_factory("engine", url=broker.url, clean_start=False,
                                     session_expiry_s=3600, on_message=inbox)
        subscribe(engine, "city/+/+/telemetry")
        device = mqtt_client_factory(url=broker.url)
        device.publish(TOPIC, _reading(1), qos=1).wait_for_publish(WAIT_S)
        got = inbox.next()
        assert (got.topic, got.payload, got.qos) == (TOPIC, _reading(1), 1)

        engine.disconnect()  # away; the session stays, and the broker queues for it
        engine.loop_stop()
        device.publish(TOPIC, _reading(2), qos=1).wait_for_publish(WAIT_S)
        device.disconnect()
        device.loop_stop()

    # The queued message survives a broker restart (persistence) and is delivered on reconnect
    # without subscribing again.
    with start_broker(data_dir, prefer="mosquitto", fallback=False, anonymous=True) as broker:
        inbox = Inbox()
        mqtt_client_factory("engine", url=broker.url, clean_start=False, session_expiry_s=3600,
                            on_message=inbox)
        assert inbox.next().payload == _reading(2)
        mqtt_client_factory.close()  # before the broker goes, or paho keeps reconnecting


def test_amqtt_fallback_speaks_mqtt_311_and_round_trips(
        tmp_path: Path, mqtt_client_factory: MqttClientFactory) -> None:
    if importlib.util.find_spec("amqtt") is None:
        require_service("the amqtt package is not installed (pip install amqtt)")
    with start_broker(tmp_path / "amqtt", prefer="amqtt", fallback=False,
                      anonymous=True) as broker:
        assert (broker.kind, broker.protocol) == ("amqtt", "3.1.1")
        assert mqtt_protocol("127.0.0.1", broker.port) == "3.1.1"  # an MQTT 5 CONNECT is refused
        inbox = Inbox()
        engine = mqtt_client_factory(url=broker.url, protocol="3.1.1", on_message=inbox)
        subscribe(engine, "city/#")
        device = mqtt_client_factory(url=broker.url, protocol="3.1.1")
        device.publish(TOPIC, _reading(1), qos=1).wait_for_publish(WAIT_S)
        got = inbox.next()
        assert (got.topic, got.payload, got.qos) == (TOPIC, _reading(1), 1)
        mqtt_client_factory.close()


def test_embedded_postgres_starts_and_answers(tmp_path: Path) -> None:
    with start_database(tmp_path / "db") as db:
        assert db.url.startswith("postgresql://citywatch_service:")
        with psycopg.connect(db.url) as conn:
            assert conn.execute("select 1, current_database()").fetchone() == (1, "citywatch")
    assert not db.running


def test_embedded_postgres_wants_a_password_and_the_service_may_only_read_and_write_rows(
        tmp_path: Path) -> None:
    with start_database(tmp_path / "db") as db:
        secrets_file = tmp_path / "db" / "passwords.json"
        assert secrets_file.stat().st_mode & 0o777 == 0o600
        for user in ("postgres", "citywatch_owner", "citywatch_service"):
            with pytest.raises(psycopg.OperationalError, match="password"):
                psycopg.connect(f"postgresql://{user}@127.0.0.1:{db.port}/citywatch").close()
            with pytest.raises(psycopg.OperationalError, match="password authentication"):
                psycopg.connect(f"postgresql://{user}:wrong@127.0.0.1:{db.port}/citywatch").close()
        # The owner runs the migrations; the service then reads and writes the rows.
        with psycopg.connect(db.owner_url, autocommit=True) as conn:
            store.migrate(conn)
            alert_store.migrate(conn)
        with psycopg.connect(db.url, autocommit=True) as conn:
            conn.execute("INSERT INTO rejections (topic, reason, detail, payload_prefix) "
                         "VALUES ('t', 'bad_json', 'd', 'x')")  # a bigserial: the sequence too
            conn.execute("UPDATE rejections SET detail = 'e'")
            assert conn.execute("SELECT count(*) FROM rejections").fetchone() == (1,)
            conn.execute("DELETE FROM rejections")
            for ddl in ("DROP TABLE telemetry", "TRUNCATE telemetry",
                        "CREATE TABLE mine (x int)", "ALTER TABLE alerts ADD COLUMN y int",
                        "CREATE ROLE intruder", "CREATE DATABASE other",
                        "ALTER ROLE citywatch_service SUPERUSER"):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute(ddl)
        with pytest.raises(psycopg.OperationalError, match="permission denied"):
            psycopg.connect(db.role_url("citywatch_service", "postgres")).close()


def test_session_broker_fixture_round_trips(mqtt_client_factory: MqttClientFactory) -> None:
    inbox = Inbox()
    subscriber = mqtt_client_factory(on_message=inbox)
    subscribe(subscriber, "test/fixture/#")
    mqtt_client_factory().publish("test/fixture/1", b"x", qos=1).wait_for_publish(WAIT_S)
    assert inbox.next().payload == b"x"


def test_a_cluster_that_trusted_everyone_gets_passwords(tmp_path: Path) -> None:
    """var/ from an older citywatch: trust auth, a superuser without a password, tables owned by
    the superuser. The next start asks for passwords and hands the tables to the owner role."""
    data = tmp_path / "db"
    with start_database(data) as db:  # make the cluster, then turn it back into an old one
        hba = data / "pgdata" / "pg_hba.conf"
        hba.write_text(hba.read_text().replace("scram-sha-256", "trust"))
        with psycopg.connect(db.superuser_url, autocommit=True) as conn:
            conn.execute("SELECT pg_reload_conf()")
        trusting = f"postgresql://postgres@127.0.0.1:{db.port}"
        deadline = time.monotonic() + 30  # the server rereads pg_hba.conf in its own time
        while True:
            try:
                psycopg.connect(f"{trusting}/postgres").close()
                break
            except psycopg.OperationalError:
                assert time.monotonic() < deadline, "pg_hba.conf was not reloaded"
                time.sleep(0.1)
        with psycopg.connect(f"{trusting}/postgres", autocommit=True) as conn:
            conn.execute("DROP DATABASE citywatch")
            conn.execute("CREATE DATABASE citywatch")
            conn.execute("ALTER ROLE postgres PASSWORD NULL")
        with psycopg.connect(f"{trusting}/citywatch", autocommit=True) as conn:
            conn.execute("CREATE TABLE old_table (x int)")
    (data / "passwords.json").unlink()
    with start_database(data) as db:
        assert "trust" not in [line.split()[-1] for line in
                               (data / "pgdata" / "pg_hba.conf").read_text().splitlines()
                               if line.strip() and not line.startswith("#")]
        with pytest.raises(psycopg.OperationalError, match="password"):
            psycopg.connect(f"postgresql://postgres@127.0.0.1:{db.port}/citywatch").close()
        with psycopg.connect(db.url) as conn:
            conn.execute("INSERT INTO old_table VALUES (1)")
            owner = conn.execute("SELECT tableowner FROM pg_tables WHERE tablename = "
                                 "'old_table'").fetchone()
        assert owner == ("citywatch_owner",)
