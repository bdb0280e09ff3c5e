"""Contract topics: device topics parse and validate themselves; platform topics are built."""

from __future__ import annotations

import pytest

from sensing.topics import (
    DISPATCH_ACK_FILTER,
    SUBSCRIPTIONS,
    Topic,
    TopicError,
    alerts_topic,
    deadletter_topic,
    dispatch_ack_topic,
    dispatch_topic,
    parse_dispatch_ack_topic,
)


@pytest.mark.parametrize(
    ("text", "kind", "device_id", "channel"),
    [
        ("city/water/wm-001/telemetry", "water", "wm-001", "telemetry"),
        ("city/camera/cam_03/event", "camera", "cam_03", "event"),
        ("city/grid/G7/status", "grid", "G7", "status"),
        ("city/flood_gate/" + "x" * 64 + "/telemetry", "flood_gate", "x" * 64, "telemetry"),
    ],
)
def test_device_topic_parses_and_round_trips(
    text: str, kind: str, device_id: str, channel: str
) -> None:
    topic = Topic.parse(text)
    assert (topic.kind, topic.device_id, topic.channel) == (kind, device_id, channel)
    assert str(topic) == text
    assert Topic(kind, device_id, channel) == topic  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "text",
    [
        "",
        "city",
        "city/water/wm-001",
        "city/water/wm-001/telemetry/extra",
        "town/water/wm-001/telemetry",
        "city/water/wm-001/metrics",
        "city/water/wm 001/telemetry",
        "city/water/wm.001/telemetry",
        "city/water/" + "x" * 65 + "/telemetry",
        "city/water//telemetry",
        "city/water/+/telemetry",
        "city/water/#",
        "city/Water/wm-001/telemetry",
        "/city/water/wm-001/telemetry",
        "city/water/wm-001/telemetry\n",
        "city/water/wm\x00/telemetry",
        # Platform topics: they match the device subscriptions but are not device topics.
        "city/dispatch/team-1/ack",
        "city/dispatch/team-1/telemetry",
        "city/deadletter/water/telemetry",
        "city/deadletter/water/status",
        "city/alerts/zone-1/event",
        "city/alerts/zone-1",
    ],
)
def test_bad_device_topics_are_refused(text: str) -> None:
    with pytest.raises(TopicError):
        Topic.parse(text)


@pytest.mark.parametrize(
    ("kind", "device_id", "channel"),
    [
        ("dispatch", "d1", "telemetry"),
        ("water", "", "telemetry"),
        ("water", "a/b", "telemetry"),
        ("water", "w1", "ack"),
        ("", "w1", "event"),
    ],
)
def test_topic_validates_itself_when_built(kind: str, device_id: str, channel: str) -> None:
    with pytest.raises(TopicError):
        Topic(kind, device_id, channel)  # type: ignore[arg-type]


def test_topic_is_frozen() -> None:
    topic = Topic.parse("city/water/w1/telemetry")
    with pytest.raises(AttributeError):
        topic.kind = "rain"  # type: ignore[misc]


def test_platform_topic_builders() -> None:
    assert dispatch_topic("team-7") == "city/dispatch/team-7"
    assert dispatch_ack_topic("team-7") == "city/dispatch/team-7/ack"
    assert parse_dispatch_ack_topic("city/dispatch/team-7/ack") == "team-7"
    assert alerts_topic("underpass-3") == "city/alerts/underpass-3"
    assert deadletter_topic("water", "wm-001") == "city/deadletter/water/wm-001"


@pytest.mark.parametrize("bad", ["", "a/b", "a+b", "#", "x" * 65, "t\x00"])
def test_dispatch_builders_refuse_ids_that_would_change_the_topic(bad: str) -> None:
    with pytest.raises(TopicError):
        dispatch_topic(bad)
    with pytest.raises(TopicError):
        dispatch_ack_topic(bad)


@pytest.mark.parametrize("bad", ["", "a/b", "z+", "z#", "z\x00", "z" * 129])
def test_alerts_topic_refuses_ids_that_would_change_the_topic(bad: str) -> None:
    with pytest.raises(TopicError):
        alerts_topic(bad)


@pytest.mark.parametrize(
    "bad",
    ["city/dispatch/team-7", "city/dispatch/a/b/ack", "city/dispatch/+/ack", "city/x/t/ack"],
)
def test_parse_dispatch_ack_topic_refuses_other_topics(bad: str) -> None:
    with pytest.raises(TopicError):
        parse_dispatch_ack_topic(bad)


@pytest.mark.parametrize(
    ("kind", "device_id"),
    [(None, None), ("water", None), (None, "w1"), ("wa/ter", "w1"), ("water", "w+1"), ("", "")],
)
def test_deadletter_topic_falls_back_to_unknown(kind: str | None, device_id: str | None) -> None:
    assert deadletter_topic(kind, device_id) == "city/deadletter/unknown/unknown"


def test_subscription_filters() -> None:
    assert SUBSCRIPTIONS == (
        "city/+/+/telemetry",
        "city/+/+/event",
        "city/+/+/status",
        "city/dispatch/+/ack",
    )
    assert DISPATCH_ACK_FILTER == "city/dispatch/+/ack"
