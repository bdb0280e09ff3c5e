"""MQTT topics of the public contract (CONTRACT sections 1 and 2): parse device topics, build ours.

Pure: no paho. A :class:`Topic` is a device topic ``city/{kind}/{device_id}/{channel}`` that has
validated itself; the platform's own topics (dispatch, alerts, dead letters) are built by the
functions below and are never parsed as device topics.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Literal, cast

Channel = Literal["telemetry", "event", "status"]

CHANNELS: Final[tuple[Channel, ...]] = ("telemetry", "event", "status")
ROOT: Final = "city"

# Second-level names the platform publishes under. They can collide with the device subscriptions
# (``city/deadletter/water/telemetry`` matches ``city/+/+/telemetry``), so no kind may take them.
RESERVED_KINDS: Final = frozenset({"dispatch", "alerts", "deadletter"})

DEVICE_ID_RE: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
# Kinds are code-level names (built-in or a plug-in's), so lower case keeps them unambiguous.
KIND_RE: Final = re.compile(r"[a-z][a-z0-9_]{0,31}")
# One topic level holding an operator-chosen id (zone): no separator, wildcards or NUL.
_LEVEL_RE: Final = re.compile(r"[^/+#\x00]{1,128}")
_DEVICE_TOPIC_RE: Final = re.compile(
    r"city/([a-z][a-z0-9_]{0,31})/([A-Za-z0-9_-]{1,64})/(telemetry|event|status)"
)
_ACK_TOPIC_RE: Final = re.compile(r"city/dispatch/([A-Za-z0-9_-]{1,64})/ack")

# Subscription filters; SUBSCRIPTIONS is everything the engine subscribes to.
TELEMETRY_FILTER: Final = "city/+/+/telemetry"
EVENT_FILTER: Final = "city/+/+/event"
STATUS_FILTER: Final = "city/+/+/status"
DISPATCH_ACK_FILTER: Final = "city/dispatch/+/ack"
DEVICE_FILTERS: Final = (TELEMETRY_FILTER, EVENT_FILTER, STATUS_FILTER)
SUBSCRIPTIONS: Final = (*DEVICE_FILTERS, DISPATCH_ACK_FILTER)

UNKNOWN: Final = "unknown"


class TopicError(ValueError):
    """A topic string or topic part that breaks the contract (the sender is to blame)."""


def is_kind(kind: str) -> bool:
    return KIND_RE.fullmatch(kind) is not None and kind not in RESERVED_KINDS


def is_device_id(device_id: str) -> bool:
    return DEVICE_ID_RE.fullmatch(device_id) is not None


@dataclass(frozen=True, slots=True)
class Topic:
    """A device topic ``city/{kind}/{device_id}/{channel}``; bad parts raise :class:`TopicError`."""

    kind: str
    device_id: str
    channel: Channel

    def __post_init__(self) -> None:
        if not is_kind(self.kind):
            raise TopicError(f"kind {self.kind!r:.80}: not a device kind")
        if not is_device_id(self.device_id):
            raise TopicError(
                f"device_id {self.device_id!r:.80}: expected 1 to 64 of A-Z a-z 0-9 _ -"
            )
        if self.channel not in CHANNELS:
            raise TopicError(f"channel {self.channel!r:.80}: expected telemetry, event or status")

    @classmethod
    def parse(cls, topic: str) -> Topic:
        m = _DEVICE_TOPIC_RE.fullmatch(topic)
        if m is None or m.group(1) in RESERVED_KINDS:
            raise TopicError(
                f"topic {topic!r:.120}: expected city/{{kind}}/{{device_id}}/"
                "{telemetry|event|status}"
            )
        return cls(m.group(1), m.group(2), cast(Channel, m.group(3)))

    def __str__(self) -> str:
        return f"{ROOT}/{self.kind}/{self.device_id}/{self.channel}"


def _team(team_id: str) -> str:
    if not is_device_id(team_id):
        raise TopicError(f"team_id {team_id!r:.80}: expected 1 to 64 of A-Z a-z 0-9 _ -")
    return team_id


def dispatch_topic(team_id: str) -> str:
    return f"{ROOT}/dispatch/{_team(team_id)}"


def dispatch_ack_topic(team_id: str) -> str:
    return f"{ROOT}/dispatch/{_team(team_id)}/ack"


def parse_dispatch_ack_topic(topic: str) -> str:
    """The team id of a ``city/dispatch/{team_id}/ack`` topic."""
    m = _ACK_TOPIC_RE.fullmatch(topic)
    if m is None:
        raise TopicError(f"topic {topic!r:.120}: expected city/dispatch/{{team_id}}/ack")
    return m.group(1)


def alerts_topic(zone_id: str) -> str:
    if _LEVEL_RE.fullmatch(zone_id) is None:
        raise TopicError(f"zone_id {zone_id!r:.80}: must be 1 to 128 characters without / + # NUL")
    return f"{ROOT}/alerts/{zone_id}"


def deadletter_topic(kind: str | None, device_id: str | None) -> str:
    """Where a rejected message goes; ``city/deadletter/unknown/unknown`` when either part is bad.

    Both parts fall back together: a half-known pair would file a message from a bad topic under a
    real device, and the original topic travels in the payload anyway.
    """
    if kind is None or device_id is None or not is_kind(kind) or not is_device_id(device_id):
        return f"{ROOT}/deadletter/{UNKNOWN}/{UNKNOWN}"
    return f"{ROOT}/deadletter/{kind}/{device_id}"
