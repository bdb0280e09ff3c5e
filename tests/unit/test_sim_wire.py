"""The lean MQTT 3.1.1 publisher's codec (pure) and its queueing without a broker."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from simulators.wire import (
    DUP_FLAG,
    Publisher,
    Reader,
    WireError,
    connect_packet,
    publish_packet,
    remaining_length,
)


@pytest.mark.parametrize(("n", "encoded"), [(0, b"\x00"), (127, b"\x7f"), (128, b"\x80\x01"),
                                            (16_383, b"\xff\x7f"), (16_384, b"\x80\x80\x01"),
                                            (268_435_455, b"\xff\xff\xff\x7f")])
def test_remaining_length_is_the_specs_variable_byte_integer(n: int, encoded: bytes) -> None:
    assert remaining_length(n) == encoded


def test_a_packet_too_large_for_mqtt_is_refused() -> None:
    with pytest.raises(WireError):
        remaining_length(268_435_456)


def test_connect_carries_the_will_and_credentials() -> None:
    p = connect_packet("dev-1", 30, username="u", password="p",
                       will=("city/water/dev-1/status", b'{"state":"offline"}', True))
    assert p[0] == 0x10
    body = p[2:]
    assert body[:7] == b"\x00\x04MQTT\x04"
    assert body[7] == 0x02 | 0x04 | 0x08 | 0x20 | 0x80 | 0x40  # clean, will QoS 1 retained, auth
    assert body[8:10] == b"\x00\x1e"
    assert b"city/water/dev-1/status" in body
    assert body.endswith(b"\x00\x01u\x00\x01p")


def test_publish_is_qos_1_with_its_packet_id() -> None:
    p = publish_packet(b"\x00\x03a/b", 258, b"{}", retain=True)
    assert p == b"\x33\x09\x00\x03a/b\x01\x02{}"
    assert publish_packet(b"\x00\x03a/b", 1, b"", dup=True)[0] == 0x32 | DUP_FLAG


@given(st.lists(st.tuples(st.integers(0, 15), st.binary(max_size=300)), max_size=20),
       st.integers(1, 50))
def test_the_reader_splits_any_stream_into_its_packets(packets: list[tuple[int, bytes]],
                                                       chunk: int) -> None:
    stream = b"".join(bytes([t << 4 | 2]) + remaining_length(len(b)) + b for t, b in packets)
    reader = Reader()
    got = []
    for i in range(0, len(stream), chunk):
        got += reader.feed(stream[i:i + chunk])
    assert got == [(t, 2, b) for t, b in packets]


def test_the_reader_refuses_a_malformed_length() -> None:
    with pytest.raises(WireError):
        Reader().feed(b"\x40\xff\xff\xff\xff\x01")


def test_messages_wait_in_order_while_there_is_no_broker() -> None:
    pub = Publisher("127.0.0.1", 9, "t", min_backoff_s=60)  # port 9: nobody listens
    pub.publish("city/a/b/telemetry", b"1")
    pub.publish("city/a/b/status", b"online", retain=True, first=True)
    pub.pump()
    assert not pub.connected
    assert pub.pending == 2
    assert pub.published == 2
    assert pub.acked == 0
