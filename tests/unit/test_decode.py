"""Decoding device payloads: every rejection code by example, and good messages of every kind."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from sensing.decode import (
    BUILTIN_KINDS,
    MAX_FUTURE_S,
    REASONS,
    Decoder,
    EventSpec,
    KindSpec,
    Number,
    Text,
    parse_timestamp,
)
from sensing.models import DispatchAck, Event, Rejection, Status, Telemetry

NOW = datetime(2026, 11, 23, 8, 20, tzinfo=UTC)
TS = "2026-11-23T08:15:00Z"
REGISTRY = {
    "wm-1": "water",
    "rg-1": "rain",
    "td-1": "traffic",
    "cam-1": "camera",
    "gw-1": "grid",
    "ghost-1": "ghost",  # registered with a kind nobody defined
}
WATER = "city/water/wm-1/telemetry"
CAMERA_EVENT = "city/camera/cam-1/event"


@pytest.fixture(scope="module")
def decoder() -> Decoder:
    return Decoder(REGISTRY, BUILTIN_KINDS)


def dumps(obj: Any) -> bytes:
    return json.dumps(obj).encode()


ABSENT: Any = ...  # an override that removes the field


def message(base: dict[str, Any], overrides: dict[str, Any]) -> bytes:
    merged = {**base, **overrides}
    return dumps({k: v for k, v in merged.items() if v is not ABSENT})


def water(**overrides: Any) -> bytes:
    return message({"ts": TS, "seq": 1, "values": {"water_depth_cm": 12.5}}, overrides)


def camera(**overrides: Any) -> bytes:
    msg: dict[str, Any] = {
        "ts": TS,
        "seq": 77,
        "event_id": "cam-1-000077",
        "type": "falling_object",
        "confidence": 0.93,
        "impact": [120.6203, 31.3121],
    }
    return message(msg, overrides)


def deep(opening: str, closing: str, n: int) -> bytes:
    return (opening * n + closing * n).encode()


# (case id, topic, payload, expected reason)
REJECTIONS: list[tuple[str, str, bytes, str]] = [
    ("topic not a device topic", "city/water/wm-1", water(), "bad_topic"),
    ("topic wildcard", "city/water/+/telemetry", water(), "bad_topic"),
    ("topic dispatch", "city/dispatch/wm-1/telemetry", water(), "bad_topic"),
    ("topic deadletter", "city/deadletter/water/telemetry", water(), "bad_topic"),
    ("unknown device", "city/water/nobody/telemetry", water(), "unknown_device"),
    ("kind differs from registry", "city/rain/wm-1/telemetry", water(), "kind_mismatch"),
    ("kind without spec", "city/ghost/ghost-1/telemetry", water(), "unknown_kind"),
    ("1 MB payload", WATER, b"{" + b" " * 1_000_000 + b"}", "too_large"),
    ("invalid utf-8", WATER, b"\xff\xfe", "not_utf8"),
    ("utf-8 surrogate bytes", WATER, b'{"a": "\xed\xa0\x80"}', "not_utf8"),
    ("lone surrogate escape", WATER, water(note="\ud800"), "not_utf8"),
    ("empty payload", WATER, b"", "not_json"),
    ("not json", WATER, b"water_depth_cm=12", "not_json"),
    ("truncated json", WATER, water()[:-3], "not_json"),
    ("trailing garbage", WATER, water() + b"}", "not_json"),
    ("utf-8 bom", WATER, b"\xef\xbb\xbf" + water(), "not_json"),
    ("array", WATER, b"[1, 2]", "not_object"),
    ("string", WATER, b'"hello"', "not_object"),
    ("null", WATER, b"null", "not_object"),
    ("duplicate key top", WATER, b'{"ts": "x", "ts": "y"}', "duplicate_key"),
    (
        "duplicate key nested",
        WATER,
        b'{"ts":"' + TS.encode() + b'","seq":1,"values":{"water_depth_cm":1,"water_depth_cm":2}}',
        "duplicate_key",
    ),
    (
        "NaN",
        WATER,
        b'{"ts":"' + TS.encode() + b'","seq":1,"values":{"water_depth_cm":NaN}}',
        "nan_or_infinity",
    ),
    ("Infinity", WATER, water(values={"water_depth_cm": float("inf")}), "nan_or_infinity"),
    ("-Infinity", WATER, water(values={"water_depth_cm": float("-inf")}), "nan_or_infinity"),
    ("overflowing literal", WATER, water()[:-2] + b', "x": 1e400}}', "nan_or_infinity"),
    ("NUL escape in value", WATER, water(note="a\x00b"), "nul_character"),
    ("NUL escape in key", WATER, water(**{"no\x00te": 1}), "nul_character"),
    ("raw NUL", WATER, water()[:-1] + b"\x00}", "nul_character"),
    ("raw NUL in string", WATER, b'{"ts": "2026\x00"}', "nul_character"),
    ("nesting 40", WATER, b'{"a":' + deep("[", "]", 40) + b"}", "too_deep"),
    ("nesting 100,000 [", WATER, deep("[", "]", 100_000), "too_large"),
    ("missing ts", WATER, water(ts=ABSENT), "missing_field"),
    ("missing seq", WATER, water(seq=ABSENT), "missing_field"),
    ("missing values", WATER, water(values=ABSENT), "missing_field"),
    ("null seq", WATER, water(seq=None), "missing_field"),
    ("missing required value", WATER, water(values={"battery_v": 3.6}), "missing_field"),
    ("null required value", WATER, water(values={"water_depth_cm": None}), "missing_field"),
    ("missing event_id", CAMERA_EVENT, camera(event_id=ABSENT), "missing_field"),
    ("missing impact", CAMERA_EVENT, camera(impact=ABSENT), "missing_field"),
    ("missing confidence", CAMERA_EVENT, camera(confidence=ABSENT), "missing_field"),
    ("missing state", "city/water/wm-1/status", b"{}", "missing_field"),
    ("value as string", WATER, water(values={"water_depth_cm": "12.5"}), "wrong_type"),
    ("bool as number", WATER, water(values={"water_depth_cm": True}), "wrong_type"),
    ("bool as seq", WATER, water(seq=True), "wrong_type"),
    ("float seq", WATER, water(seq=1.5), "wrong_type"),
    ("integral float seq", WATER, water(seq=1.0), "wrong_type"),
    ("string seq", WATER, water(seq="1"), "wrong_type"),
    ("values as array", WATER, water(values=[12.5]), "wrong_type"),
    (
        "unknown value not a number",
        WATER,
        water(values={"water_depth_cm": 1, "fw": "1.2"}),
        "wrong_type",
    ),
    ("ts as number", WATER, water(ts=1763885700), "wrong_type"),
    ("event type as number", CAMERA_EVENT, camera(type=1), "wrong_type"),
    ("floor as float", CAMERA_EVENT, camera(floor=17.5), "wrong_type"),
    ("track not an array", CAMERA_EVENT, camera(track="none"), "wrong_type"),
    ("track point short", CAMERA_EVENT, camera(track=[[120.6, 31.3, 1.0]]), "wrong_type"),
    ("state as bool", "city/water/wm-1/status", b'{"state": true}', "wrong_type"),
    ("negative seq", WATER, water(seq=-1), "out_of_range"),
    ("seq past bigint", WATER, water(seq=2**63), "out_of_range"),
    ("negative depth", WATER, water(values={"water_depth_cm": -0.5}), "out_of_range"),
    ("absurd depth", WATER, water(values={"water_depth_cm": 5000}), "out_of_range"),
    ("huge integer", WATER, water(values={"water_depth_cm": 1, "x": 10**400}), "out_of_range"),
    (
        "battery pct over 100",
        WATER,
        water(values={"water_depth_cm": 1, "battery_pct": 101}),
        "out_of_range",
    ),
    ("confidence over 1", CAMERA_EVENT, camera(confidence=1.01), "out_of_range"),
    ("empty event_id", CAMERA_EVENT, camera(event_id=""), "out_of_range"),
    ("event_id with a bell", CAMERA_EVENT, camera(event_id="cam-1\x07"), "control_character"),
    ("event_id with a newline", CAMERA_EVENT, camera(event_id="a\nb"), "control_character"),
    ("event_id with C1 CSI", CAMERA_EVENT, camera(event_id="a\x9b31m"), "control_character"),
    ("event_id with U+FFFF", CAMERA_EVENT, camera(event_id="a\uffff"), "control_character"),
    (
        "order id with escape",
        "city/dispatch/team-1/ack",
        dumps({"work_order_id": "WO-1\x1b[2J", "status": "accepted"}),
        "control_character",
    ),
    ("building_id only controls", CAMERA_EVENT, camera(building_id="\x07\x1b[0m"), "out_of_range"),
    ("unknown state", "city/water/wm-1/status", b'{"state": "asleep"}', "out_of_range"),
    ("negative track time", CAMERA_EVENT, camera(track=[[120.6, 31.3, 1.0, -1]]), "out_of_range"),
    ("year 10000", WATER, water(ts="10000-01-01T00:00:00Z"), "bad_timestamp"),
    ("year 10000 after utc", WATER, water(ts="9999-12-31T23:00:00-02:00"), "bad_timestamp"),
    ("a week in the future", WATER, water(ts="2026-11-30T08:20:00Z"), "bad_timestamp"),
    ("naive timestamp", WATER, water(ts="2026-11-23T08:15:00"), "bad_timestamp"),
    ("date only", WATER, water(ts="2026-11-23"), "bad_timestamp"),
    ("before min year", WATER, water(ts="1970-01-01T00:00:00Z"), "bad_timestamp"),
    ("year 0", WATER, water(ts="0000-01-01T00:00:00Z"), "bad_timestamp"),
    ("february 30", WATER, water(ts="2026-02-30T00:00:00Z"), "bad_timestamp"),
    ("hour 24", WATER, water(ts="2026-11-23T24:00:00Z"), "bad_timestamp"),
    ("offset hours 24", WATER, water(ts="2026-11-23T08:15:00+24:00"), "bad_timestamp"),
    ("offset minutes 60", WATER, water(ts="2026-11-23T08:15:00+01:60"), "bad_timestamp"),
    ("iso basic format", WATER, water(ts="20261123T081500Z"), "bad_timestamp"),
    ("iso week date", WATER, water(ts="2026-W47-1T08:15:00Z"), "bad_timestamp"),
    (
        "non-ascii digits",
        WATER,
        water(ts="\uff12\uff10\uff12\uff16-11-23T08:15:00Z"),
        "bad_timestamp",
    ),
    (
        "bad status ts",
        "city/water/wm-1/status",
        b'{"state": "online", "ts": "now"}',
        "bad_timestamp",
    ),
    ("lon out of range", CAMERA_EVENT, camera(impact=[181, 31]), "bad_position"),
    ("lat out of range", CAMERA_EVENT, camera(impact=[120, -90.5]), "bad_position"),
    ("three coordinates", CAMERA_EVENT, camera(impact=[120, 31, 5]), "bad_position"),
    ("position of bools", CAMERA_EVENT, camera(impact=[True, False]), "bad_position"),
    ("position as object", CAMERA_EVENT, camera(impact={"lon": 120, "lat": 31}), "bad_position"),
    ("telemetry loc", WATER, water(loc=[0, 91]), "bad_position"),
    ("track point off the map", CAMERA_EVENT, camera(track=[[200, 31, 1.0, 0]]), "bad_position"),
    ("unknown event type", CAMERA_EVENT, camera(type="explosion"), "bad_event_type"),
    (
        "event for a kind without events",
        "city/water/wm-1/event",
        camera(type="falling_object"),
        "bad_event_type",
    ),
    ("event of another kind", CAMERA_EVENT, camera(type="report"), "bad_event_type"),
]


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [pytest.param(t, p, r, id=name) for name, t, p, r in REJECTIONS],
)
def test_rejections(decoder: Decoder, topic: str, payload: bytes, reason: str) -> None:
    result = decoder.decode(topic, payload, NOW)
    assert isinstance(result, Rejection), result
    assert result.reason == reason, result.detail
    assert result.detail
    assert result.topic == topic
    assert result.payload == payload


def test_every_reason_has_an_example() -> None:
    assert {r for *_, r in REJECTIONS} == REASONS - {"internal_error"}


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        (water(values={"water_depth_cm": -1}), "values.water_depth_cm"),
        (water(seq=1.5), "seq"),
        (water(ts="yesterday"), "ts"),
        (
            b'{"ts":"' + TS.encode() + b'","seq":1,"values":{"water_depth_cm":NaN}}',
            "values.water_depth_cm",
        ),
        (water(values={"water_depth_cm": 1, "note": "\x00"}), "values.note"),
        (b'{"a": 1, "a": 2}', "'a'"),
    ],
)
def test_detail_names_the_field(decoder: Decoder, payload: bytes, field: str) -> None:
    result = decoder.decode(WATER, payload, NOW)
    assert isinstance(result, Rejection)
    assert field in result.detail


def test_rejection_carries_what_the_topic_told(decoder: Decoder) -> None:
    result = decoder.decode("city/water/nobody/telemetry", b"{}", NOW)
    assert isinstance(result, Rejection)
    assert (result.device_id, result.kind) == ("nobody", "water")
    result = decoder.decode("garbage", b"{}", NOW)
    assert isinstance(result, Rejection)
    assert (result.device_id, result.kind) == (None, None)


@pytest.mark.parametrize("opening", ["[", '{"a":'])
def test_100000_deep_nesting_is_refused_without_recursion(opening: str) -> None:
    closing = "]" if opening == "[" else "}"
    payload = deep(opening, closing, 100_000)
    roomy = Decoder(REGISTRY, max_bytes=len(payload))  # so the depth check, not size, decides
    result = roomy.decode(WATER, payload, NOW)
    assert isinstance(result, Rejection)
    assert result.reason == "too_deep"


def test_brackets_inside_strings_do_not_count_as_nesting(decoder: Decoder) -> None:
    result = decoder.decode(WATER, water(note='[[[[{{{{\\"' * 20), NOW)
    assert isinstance(result, Telemetry)


def test_nesting_at_the_limit_is_accepted() -> None:
    # depth 1 for the object, 31 arrays inside: exactly 32
    payload = water()[:-1] + b', "x": ' + deep("[", "]", 31) + b"}"
    assert isinstance(Decoder(REGISTRY, max_depth=32).decode(WATER, payload, NOW), Telemetry)
    result = Decoder(REGISTRY, max_depth=31).decode(WATER, payload, NOW)
    assert isinstance(result, Rejection)
    assert result.reason == "too_deep"


def test_unterminated_string_full_of_escaped_quotes_is_fast(decoder: Decoder) -> None:
    # Stripping strings with re.sub first takes about 20 s on this (each escaped quote starts a
    # new failed match); the one-pass token scan takes milliseconds.
    payload = b'["' + b'\\"' * 30_000 + b"[" * 40
    result = decoder.decode(WATER, payload, NOW)
    assert isinstance(result, Rejection)
    assert result.reason == "not_json"


def test_size_limit_is_inclusive(decoder: Decoder) -> None:
    payload = water()
    exact = Decoder(REGISTRY, max_bytes=len(payload))
    assert isinstance(exact.decode(WATER, payload, NOW), Telemetry)
    small = Decoder(REGISTRY, max_bytes=len(payload) - 1)
    result = small.decode(WATER, payload, NOW)
    assert isinstance(result, Rejection)
    assert result.reason == "too_large"


# ---- accepted messages -----------------------------------------------------------------------


def test_water_telemetry(decoder: Decoder) -> None:
    payload = water(values={"water_depth_cm": 12.5, "battery_v": 3.61, "rssi_dbm": -71})
    result = decoder.decode(WATER, payload, NOW)
    assert result == Telemetry(
        device_id="wm-1",
        kind="water",
        ts=datetime(2026, 11, 23, 8, 15, tzinfo=UTC),
        seq=1,
        values={"water_depth_cm": 12.5, "battery_v": 3.61, "rssi_dbm": -71.0},
        loc=None,
    )


def test_rain_telemetry_with_optional_value(decoder: Decoder) -> None:
    payload = dumps({"ts": TS, "seq": 9, "values": {"rain_rate_mm_h": 42, "rain_1h_mm": 30.5}})
    result = decoder.decode("city/rain/rg-1/telemetry", payload, NOW)
    assert isinstance(result, Telemetry)
    assert result.values == {"rain_rate_mm_h": 42.0, "rain_1h_mm": 30.5}
    assert all(type(v) is float for v in result.values.values())


def test_traffic_telemetry(decoder: Decoder) -> None:
    values = {"flow_veh_h": 1800, "speed_kmh": 0, "occupancy_pct": 100}
    payload = dumps({"ts": TS, "seq": 3, "values": values})
    result = decoder.decode("city/traffic/td-1/telemetry", payload, NOW)
    assert isinstance(result, Telemetry)
    assert result.values == {"flow_veh_h": 1800.0, "speed_kmh": 0.0, "occupancy_pct": 100.0}


@pytest.mark.parametrize(
    ("values", "reason"),
    [
        ({"flow_veh_h": 1, "speed_kmh": 301, "occupancy_pct": 1}, "out_of_range"),
        ({"flow_veh_h": 1, "speed_kmh": 30, "occupancy_pct": 100.5}, "out_of_range"),
        ({"flow_veh_h": -1, "speed_kmh": 30, "occupancy_pct": 1}, "out_of_range"),
        ({"flow_veh_h": 1, "speed_kmh": 30}, "missing_field"),
    ],
)
def test_traffic_ranges(decoder: Decoder, values: dict[str, float], reason: str) -> None:
    result = decoder.decode(
        "city/traffic/td-1/telemetry", dumps({"ts": TS, "seq": 3, "values": values}), NOW
    )
    assert isinstance(result, Rejection)
    assert result.reason == reason


def test_grid_telemetry_needs_no_values_and_carries_loc(decoder: Decoder) -> None:
    payload = dumps({"ts": TS, "seq": 5, "values": {}, "loc": [120.61, 31.31]})
    result = decoder.decode("city/grid/gw-1/telemetry", payload, NOW)
    assert isinstance(result, Telemetry)
    assert result.values == {}
    assert result.loc == (120.61, 31.31)


def test_unknown_top_level_fields_and_numeric_values_are_kept_or_ignored(decoder: Decoder) -> None:
    payload = water(fw="1.2.3", values={"water_depth_cm": 1, "temp_c": 7, "battery_v": None})
    result = decoder.decode(WATER, payload, NOW)
    assert isinstance(result, Telemetry)
    assert result.values == {"water_depth_cm": 1.0, "temp_c": 7.0}


def test_camera_event(decoder: Decoder) -> None:
    track = [[120.6202, 31.3121, 51.0, 0.0], [120.6203, 31.3121, 0.0, 3.2]]
    payload = camera(building_id="B-0042", floor=17, track=track, ts="2026-11-23T08:15:02.400Z")
    result = decoder.decode(CAMERA_EVENT, payload, NOW)
    assert isinstance(result, Event)
    assert (result.device_id, result.kind, result.seq) == ("cam-1", "camera", 77)
    assert result.ts == datetime(2026, 11, 23, 8, 15, 2, 400_000, tzinfo=UTC)
    assert (result.event_id, result.type, result.confidence) == (
        "cam-1-000077",
        "falling_object",
        0.93,
    )
    assert result.loc == (120.6203, 31.3121)
    assert result.body["building_id"] == "B-0042"
    assert result.body["track"] == track


def test_camera_event_optional_fields_may_be_null(decoder: Decoder) -> None:
    result = decoder.decode(CAMERA_EVENT, camera(floor=None, building_id=None), NOW)
    assert isinstance(result, Event)


@pytest.mark.parametrize("subtype", ["collision", "stalled_vehicle", "wrong_way"])
def test_traffic_incident(decoder: Decoder, subtype: str) -> None:
    payload = dumps(
        {
            "ts": TS,
            "seq": 4,
            "event_id": "td-1-4",
            "type": "incident",
            "subtype": subtype,
            "confidence": 0.7,
        }
    )
    result = decoder.decode("city/traffic/td-1/event", payload, NOW)
    assert isinstance(result, Event)
    assert (result.type, result.confidence, result.loc) == ("incident", 0.7, None)
    assert result.body["subtype"] == subtype


def test_traffic_incident_unknown_subtype(decoder: Decoder) -> None:
    payload = dumps(
        {
            "ts": TS,
            "seq": 4,
            "event_id": "e",
            "type": "incident",
            "subtype": "ufo",
            "confidence": 0.7,
        }
    )
    result = decoder.decode("city/traffic/td-1/event", payload, NOW)
    assert isinstance(result, Rejection)
    assert result.reason == "out_of_range"
    assert "subtype" in result.detail


def test_grid_report_with_escaped_chinese_text(decoder: Decoder) -> None:
    payload = dumps(
        {
            "ts": "2026-11-23T16:15:00+08:00",
            "seq": 12,
            "event_id": "gw-1-12",
            "type": "report",
            "category": "waterlogging",
            "loc": [120.61, 31.31],
            "text": "积水 about 20 cm 🌧",
        }
    )
    assert b"\\u" in payload  # json.dumps escapes non-ASCII, as many devices do
    result = decoder.decode("city/grid/gw-1/event", payload, NOW)
    assert isinstance(result, Event)
    assert result.ts == datetime(2026, 11, 23, 8, 15, tzinfo=UTC)
    assert result.loc == (120.61, 31.31)
    assert result.confidence is None
    assert result.body["text"] == "积水 about 20 cm 🌧"


# The report of issue 9: this building_id went into the alert's title and broke its CAP document.
HOSTILE_BUILDING = "B-\u0007\u001b[31m"


def test_control_characters_in_an_identifier_are_refused_naming_the_field(
    decoder: Decoder,
) -> None:
    result = decoder.decode(CAMERA_EVENT, camera(event_id="cam-1\u001b[31m"), NOW)
    assert isinstance(result, Rejection)
    assert result.reason == "control_character"
    assert result.detail.startswith("event_id: ")
    assert "U+001B" in result.detail
    assert "\x1b" not in result.detail  # the detail itself is safe to log


def test_a_garbled_building_label_is_cleaned_and_the_detection_kept(decoder: Decoder) -> None:
    result = decoder.decode(CAMERA_EVENT, camera(building_id=HOSTILE_BUILDING), NOW)
    assert isinstance(result, Event), result
    assert result.body["building_id"] == "B-"  # the whole escape sequence went, not only ESC
    assert result.confidence == 0.93


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        ("Tower\tB\r\nnorth", "Tower B north"),  # a label stays on one line
        ("\x9b1mB-7\x85", "B-7"),  # C1 controls and the 8-bit CSI
        ("B-\x1b]0;owned\x07", "B-0;owned"),  # OSC: the bytes go, harmless text stays
        ("B-0042", "B-0042"),
        ("楼 B-0042", "楼 B-0042"),
    ],
)
def test_building_labels_are_cleaned(decoder: Decoder, sent: str, kept: str) -> None:
    result = decoder.decode(CAMERA_EVENT, camera(building_id=sent), NOW)
    assert isinstance(result, Event), result
    assert result.body["building_id"] == kept


def test_report_text_is_cleaned_and_keeps_its_lines(decoder: Decoder) -> None:
    payload = dumps({
        "ts": TS, "seq": 12, "event_id": "gw-1-12", "type": "report", "category": "other",
        "loc": [120.61, 31.31], "text": "\x1b[1mwater\x1b[0m\r\n20 cm\tdeep\x07\ufffe\rend",
        "extra": "\x07",
    })  # fmt: skip
    result = decoder.decode("city/grid/gw-1/event", payload, NOW)
    assert isinstance(result, Event), result
    assert result.body["text"] == "water\n20 cm\tdeep\nend"
    assert result.body["extra"] == "\x07"  # no spec, no meaning: stored as sent


def test_ack_note_is_cleaned(decoder: Decoder) -> None:
    payload = dumps({"work_order_id": "WO-000001", "status": "resolved",
                     "note": "pumped\x1b[31m out\nall clear"})
    result = decoder.decode("city/dispatch/team-1/ack", payload, NOW)
    assert isinstance(result, DispatchAck), result
    assert result.note == "pumped out\nall clear"


@pytest.mark.parametrize("state", ["online", "offline"])
def test_status(decoder: Decoder, state: str) -> None:
    result = decoder.decode("city/camera/cam-1/status", dumps({"state": state}), NOW)
    assert result == Status(device_id="cam-1", kind="camera", state=state)  # type: ignore[arg-type]


def test_status_with_ts(decoder: Decoder) -> None:
    result = decoder.decode("city/camera/cam-1/status", dumps({"state": "online", "ts": TS}), NOW)
    assert isinstance(result, Status)


def test_the_contract_example_decodes(decoder: Decoder) -> None:
    payload = (
        b'{"ts": "2026-11-23T08:15:00Z", "seq": 1842, '
        b'"values": {"water_depth_cm": 12.5, "battery_v": 3.61}}'
    )
    result = decoder.decode(WATER, payload, NOW)
    assert isinstance(result, Telemetry)
    assert result.seq == 1842


def test_plug_in_kind() -> None:
    spec = KindSpec(
        required_values={"gate_open_pct": Number(0, 100)},
        events={"jammed": EventSpec(required={"cause": Text(frozenset({"debris", "motor"}))})},
    )
    dec = Decoder({"fg-1": "flood_gate"}, {**BUILTIN_KINDS, "flood_gate": spec})
    ok = dec.decode(
        "city/flood_gate/fg-1/telemetry",
        dumps({"ts": TS, "seq": 1, "values": {"gate_open_pct": 40, "battery_pct": 80}}),
        NOW,
    )
    assert isinstance(ok, Telemetry)
    assert ok.values == {"gate_open_pct": 40.0, "battery_pct": 80.0}
    event = dec.decode(
        "city/flood_gate/fg-1/event",
        dumps({"ts": TS, "seq": 2, "event_id": "j1", "type": "jammed", "cause": "debris"}),
        NOW,
    )
    assert isinstance(event, Event)
    assert event.loc is None


def test_kind_names_are_checked_at_construction() -> None:
    with pytest.raises(ValueError, match="dispatch"):
        Decoder({}, {"dispatch": KindSpec()})
    with pytest.raises(ValueError, match="both"):
        KindSpec(required_values={"a": Number()}, optional_values={"a": Number()})


def test_naive_now_is_our_bug(decoder: Decoder) -> None:
    with pytest.raises(ValueError, match="aware"):
        decoder.decode(WATER, water(), datetime(2026, 11, 23))


def test_registry_is_live() -> None:
    registry: dict[str, str] = {}
    dec = Decoder(registry)
    assert isinstance(dec.decode(WATER, water(), NOW), Rejection)
    registry["wm-1"] = "water"
    assert isinstance(dec.decode(WATER, water(), NOW), Telemetry)


# ---- timestamps ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-23T08:15:00Z", datetime(2026, 11, 23, 8, 15, tzinfo=UTC)),
        ("2026-11-23t08:15:00z", datetime(2026, 11, 23, 8, 15, tzinfo=UTC)),
        ("2026-11-23T08:15:00.250Z", datetime(2026, 11, 23, 8, 15, 0, 250_000, tzinfo=UTC)),
        ("2026-11-23T08:15:00.123456789Z", datetime(2026, 11, 23, 8, 15, 0, 123_456, tzinfo=UTC)),
        ("2026-11-23T16:15:00+08:00", datetime(2026, 11, 23, 8, 15, tzinfo=UTC)),
        ("2026-11-23T02:45:00-05:30", datetime(2026, 11, 23, 8, 15, tzinfo=UTC)),
        ("2026-11-23T08:15:00-00:00", datetime(2026, 11, 23, 8, 15, tzinfo=UTC)),
        ("2016-12-31T23:59:60Z", datetime(2016, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)),
        ("9999-12-31T23:59:59Z", datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)),
    ],
)
def test_parse_timestamp(text: str, expected: datetime) -> None:
    ts = parse_timestamp(text)
    assert ts == expected
    assert ts.tzinfo is UTC


def test_timestamp_just_inside_the_future_limit(decoder: Decoder) -> None:
    ts = (NOW + timedelta(seconds=MAX_FUTURE_S)).isoformat()
    assert isinstance(decoder.decode(WATER, water(ts=ts), NOW), Telemetry)
    ts = (NOW + timedelta(seconds=MAX_FUTURE_S, microseconds=1)).isoformat()
    result = decoder.decode(WATER, water(ts=ts), NOW)
    assert isinstance(result, Rejection)
    assert result.reason == "bad_timestamp"
