"""Properties of the decoder: it never raises, and valid telemetry round-trips exactly."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sensing.decode import BUILTIN_KINDS, COMMON_VALUES, Decoder, Number
from sensing.models import Event, Rejection, Status, Telemetry

NOW = datetime(2026, 11, 23, 8, 20, tzinfo=UTC)
REGISTRY = {f"{kind}-1": kind for kind in BUILTIN_KINDS}
DECODER = Decoder(REGISTRY)
FUZZ = settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])

good_topics = st.builds(
    lambda kind, channel: f"city/{kind}/{kind}-1/{channel}",
    st.sampled_from(sorted(BUILTIN_KINDS)),
    st.sampled_from(["telemetry", "event", "status"]),
)
topics = st.one_of(good_topics, st.text(), st.text(alphabet="city/+#-_abc\x00"))


def assert_well_behaved(topic: str, payload: bytes) -> None:
    result = DECODER.decode(topic, payload, NOW)
    assert isinstance(result, Telemetry | Event | Status | Rejection)
    if isinstance(result, Rejection):
        assert result.reason != "internal_error", result.detail
        assert result.payload == payload


@FUZZ
@given(topics, st.binary(max_size=2048))
def test_decode_never_raises_for_any_bytes(topic: str, payload: bytes) -> None:
    assert_well_behaved(topic, payload)


# Near-valid payloads reach the field checks, which random bytes almost never do.
FIELD_NAMES = [
    "ts", "seq", "values", "loc", "event_id", "type", "confidence", "impact", "track",
    "building_id", "floor", "subtype", "category", "text", "state",
    "water_depth_cm", "rain_rate_mm_h", "flow_veh_h", "speed_kmh", "occupancy_pct", "battery_v",
]  # fmt: skip
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),  # NaN and infinities included: json.dumps writes them as NaN / Infinity
    st.text(max_size=20),
    st.sampled_from(["2026-11-23T08:15:00Z", "falling_object", "report", "incident", "online"]),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.dictionaries(st.one_of(st.sampled_from(FIELD_NAMES), st.text(max_size=5)), inner),
    ),
    max_leaves=30,
)
json_objects = st.dictionaries(st.sampled_from(FIELD_NAMES), json_values, max_size=12)


@FUZZ
@given(good_topics, json_objects, st.booleans())
def test_decode_never_raises_for_json_shaped_payloads(
    topic: str, obj: dict[str, Any], ascii_only: bool
) -> None:
    assert_well_behaved(topic, json.dumps(obj, ensure_ascii=ascii_only).encode())


VALID: dict[str, dict[str, Any]] = {
    "city/water/water-1/telemetry": {
        "ts": "2026-11-23T08:15:00Z",
        "seq": 1,
        "values": {"water_depth_cm": 12.5, "battery_v": 3.6},
        "loc": [120.6, 31.3],
    },
    "city/traffic/traffic-1/telemetry": {
        "ts": "2026-11-23T08:15:00Z",
        "seq": 1,
        "values": {"flow_veh_h": 900, "speed_kmh": 40, "occupancy_pct": 12},
    },
    "city/camera/camera-1/event": {
        "ts": "2026-11-23T08:15:02.400Z",
        "seq": 77,
        "event_id": "cam-77",
        "type": "falling_object",
        "confidence": 0.93,
        "building_id": "B-0042",
        "floor": 17,
        "impact": [120.6203, 31.3121],
        "track": [[120.6202, 31.3121, 51.0, 0.0], [120.6203, 31.3121, 0.0, 3.2]],
    },
    "city/traffic/traffic-1/event": {
        "ts": "2026-11-23T08:15:00Z",
        "seq": 5,
        "event_id": "t-5",
        "type": "incident",
        "subtype": "collision",
        "confidence": 0.8,
    },
    "city/grid/grid-1/event": {
        "ts": "2026-11-23T16:15:00+08:00",
        "seq": 12,
        "event_id": "g-12",
        "type": "report",
        "category": "waterlogging",
        "loc": [120.61, 31.31],
        "text": "standing water",
    },
    "city/rain/rain-1/status": {"state": "online", "ts": "2026-11-23T08:15:00Z"},
}


def test_valid_bases_are_valid() -> None:
    for topic, msg in VALID.items():
        assert not isinstance(DECODER.decode(topic, json.dumps(msg).encode(), NOW), Rejection)


@st.composite
def mutated(draw: st.DrawFn) -> tuple[str, bytes]:
    """A valid message with a few fields (top level or one level down) replaced or removed."""
    topic = draw(st.sampled_from(sorted(VALID)))
    msg: dict[str, Any] = json.loads(json.dumps(VALID[topic]))  # a deep copy
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        target: Any = msg
        nested = [k for k, v in msg.items() if isinstance(v, dict | list) and v]
        go_down = draw(st.booleans())
        if nested and go_down:
            target = msg[draw(st.sampled_from(nested))]
        if isinstance(target, list):
            target[draw(st.integers(0, len(target) - 1))] = draw(json_values)
        elif target and draw(st.booleans()):
            del target[draw(st.sampled_from(sorted(target)))]
        else:
            key = draw(st.sampled_from(sorted(target) + FIELD_NAMES))
            target[key] = draw(json_values)
    return topic, json.dumps(msg, ensure_ascii=draw(st.booleans())).encode()


@FUZZ
@given(mutated())
def test_decode_never_raises_for_mutated_valid_messages(case: tuple[str, bytes]) -> None:
    assert_well_behaved(*case)


def number_in(spec: Number) -> st.SearchStrategy[float]:
    lo = -1e9 if spec.lo is None else spec.lo
    hi = 1e9 if spec.hi is None else spec.hi
    return st.one_of(
        st.floats(min_value=lo, max_value=hi, allow_nan=False),
        st.integers(min_value=int(lo), max_value=int(hi)).map(float),
    )


def values_for(kind: str) -> st.SearchStrategy[dict[str, float]]:
    spec = BUILTIN_KINDS[kind]
    optional = {**COMMON_VALUES, **spec.optional_values}
    return st.fixed_dictionaries(
        {k: number_in(v) for k, v in spec.required_values.items()},
        optional={k: number_in(v) for k, v in optional.items()},
    )


OFFSETS = [UTC, timezone(timedelta(hours=8)), timezone(-timedelta(hours=5, minutes=30))]
timestamps = st.datetimes(
    # Naive bounds are local times: a day inside min_year, and before NOW in every offset.
    min_value=datetime(2000, 1, 2),
    max_value=datetime(2026, 11, 23, 2, 0),
    timezones=st.sampled_from(OFFSETS),
)
positions = st.tuples(
    st.floats(min_value=-180, max_value=180), st.floats(min_value=-90, max_value=90)
)


@st.composite
def telemetry(draw: st.DrawFn) -> tuple[str, dict[str, Any], Telemetry]:
    kind = draw(st.sampled_from(sorted(BUILTIN_KINDS)))
    ts = draw(timestamps)
    seq = draw(st.integers(min_value=0, max_value=2**63 - 1))
    values = draw(values_for(kind))
    loc = draw(st.none() | positions)
    text_ts = ts.isoformat()
    if ts.utcoffset() == timedelta(0) and draw(st.booleans()):
        text_ts = text_ts.replace("+00:00", "Z")
    msg: dict[str, Any] = {"ts": text_ts, "seq": seq, "values": values}
    if loc is not None:
        msg["loc"] = list(loc)
    expected = Telemetry(f"{kind}-1", kind, ts.astimezone(UTC), seq, values, loc)
    return f"city/{kind}/{kind}-1/telemetry", msg, expected


@settings(max_examples=300)
@given(telemetry())
def test_valid_telemetry_round_trips(case: tuple[str, dict[str, Any], Telemetry]) -> None:
    topic, msg, expected = case
    result = DECODER.decode(topic, json.dumps(msg).encode(), NOW)
    assert result == expected
    assert isinstance(result, Telemetry)
    assert result.ts.tzinfo is UTC


@settings(max_examples=200)
@given(
    ts=timestamps,
    seq=st.integers(min_value=0, max_value=2**63 - 1),
    confidence=st.floats(min_value=0, max_value=1),
    impact=positions,
    floor=st.none() | st.integers(min_value=-20, max_value=300),
)
def test_valid_camera_event_round_trips(
    ts: datetime, seq: int, confidence: float, impact: tuple[float, float], floor: int | None
) -> None:
    msg: dict[str, Any] = {
        "ts": ts.isoformat(),
        "seq": seq,
        "event_id": f"cam-{seq}",
        "type": "falling_object",
        "confidence": confidence,
        "impact": list(impact),
    }
    if floor is not None:
        msg["floor"] = floor
    result = DECODER.decode("city/camera/camera-1/event", json.dumps(msg).encode(), NOW)
    assert isinstance(result, Event), result
    assert (result.ts, result.seq, result.confidence, result.loc) == (
        ts.astimezone(UTC),
        seq,
        confidence,
        impact,
    )
    assert dict(result.body) == msg
