"""One source for the largest message: the decoder, the engine's CONNECT and the embedded broker."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from citywatch.embedded import mosquitto_config
from sensing.decode import Decoder
from sensing.limits import ENGINE_MAX_PACKET_BYTES, MAX_PACKET_BYTES, MAX_PAYLOAD_BYTES
from sensing.models import Rejection
from sensing.mqtt import MqttLink

NOW = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)


def setting(conf: str, key: str) -> str:
    values = [line.split(None, 1)[1] for line in conf.splitlines() if line.startswith(f"{key} ")]
    assert len(values) == 1, values
    return values[0]


def test_the_broker_refuses_packets_the_decoder_would_refuse(tmp_path: Path) -> None:
    conf = mosquitto_config(18830, tmp_path)
    assert int(setting(conf, "max_packet_size")) == MAX_PACKET_BYTES
    assert MAX_PAYLOAD_BYTES < MAX_PACKET_BYTES <= MAX_PAYLOAD_BYTES + 1024


def test_the_decoder_refuses_one_byte_more_than_the_limit() -> None:
    decoder = Decoder({"wl-01": "water"})
    result = decoder.decode("city/water/wl-01/telemetry", b" " * (MAX_PAYLOAD_BYTES + 1), NOW)
    assert isinstance(result, Rejection) and result.reason == "too_large"
    result = decoder.decode("city/water/wl-01/telemetry", b" " * MAX_PAYLOAD_BYTES, NOW)
    assert isinstance(result, Rejection) and result.reason == "not_json"  # size was fine


def test_the_engine_tells_the_broker_its_limits_in_connect() -> None:
    link = MqttLink("mqtt://127.0.0.1:1", "engine", (), lambda _m: None, receive_maximum=250)
    props = link.connect_properties()
    assert props is not None
    assert props.MaximumPacketSize == ENGINE_MAX_PACKET_BYTES >= MAX_PACKET_BYTES
    assert props.ReceiveMaximum == 250
    v311 = MqttLink("mqtt://127.0.0.1:1", "engine", (), lambda _m: None, protocol="3.1.1")
    assert v311.connect_properties() is None  # MQTT 3.1.1 has no properties


def test_settings_override_the_shipped_config_for_tests(tmp_path: Path) -> None:
    conf = mosquitto_config(18830, tmp_path,
                            {"max_queued_messages": "5", "upgrade_outgoing_qos": "false"})
    assert setting(conf, "max_queued_messages") == "5"
    assert conf.endswith("upgrade_outgoing_qos false\n")  # not in the file: added
    assert setting(conf, "sys_interval") == "10"
    assert "@" not in conf.replace("%", "")
