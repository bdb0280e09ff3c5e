"""Device payloads to frozen messages (CONTRACT section 1), or a :class:`Rejection` saying why not.

Pure: no paho, no clock (``now`` is passed in), no I/O. :meth:`Decoder.decode` never raises for any
topic or payload; everything it accepts can be stored in PostgreSQL as is (no NUL, NaN, Infinity,
lone surrogates or years past 9999).

What each kind carries is data (:class:`KindSpec`), so a plug-in kind registers the same way as the
built-in ones in :data:`BUILTIN_KINDS`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from functools import lru_cache
from types import MappingProxyType
from typing import Any, Final, Literal, Protocol, cast

from sensing.limits import MAX_PAYLOAD_BYTES
from sensing.models import DispatchAck, Event, Position, Rejection, Status, Telemetry
from sensing.topics import Topic, TopicError, is_kind, parse_dispatch_ack_topic

SEQ_MAX: Final = 2**63 - 1  # PostgreSQL bigint
ID_MAX_LEN: Final = 128

# Rejection.reason codes, each a problem an engineer can act on.
REASONS: Final = frozenset(
    {
        "bad_topic",
        "unknown_device",
        "kind_mismatch",
        "unknown_kind",  # the registry names a kind without a KindSpec: our configuration's fault
        "too_large",
        "not_utf8",
        "not_json",
        "not_object",
        "duplicate_key",
        "nan_or_infinity",
        "nul_character",
        "control_character",  # an identifier holding a control character or escape sequence
        "too_deep",
        "missing_field",
        "wrong_type",
        "out_of_range",
        "bad_timestamp",
        "bad_position",
        "bad_event_type",
        "internal_error",  # a bug in this module; tests assert it never happens
    }
)


class PayloadError(Exception):
    """A payload that breaks the contract; the device is to blame. Becomes a :class:`Rejection`."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def _show(value: Any) -> str:
    """A value for a detail message, short enough that a hostile payload cannot bloat the log."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _is_number(value: Any) -> bool:
    # bool is an int subclass; JSON true must not pass as 1.
    t = type(value)
    return t is float or t is int


# ---- field specifications: what one JSON field may hold ------------------------------------------


class FieldSpec(Protocol):
    """Checks one field and returns the value to keep; raises :class:`PayloadError` otherwise."""

    def check(self, value: Any, path: str) -> Any: ...


@dataclass(frozen=True, slots=True)
class Number:
    """A JSON number (never a boolean), optionally an integer, within ``lo..hi`` inclusive."""

    lo: float | None = None
    hi: float | None = None
    integer: bool = False

    def check(self, value: Any, path: str) -> float | int:
        if not _is_number(value):
            raise PayloadError("wrong_type", f"{path}: expected a number, got {_json_type(value)}")
        if self.integer and type(value) is not int:
            raise PayloadError("wrong_type", f"{path}: expected an integer, got {_show(value)}")
        try:
            number = value if self.integer else float(value)
        except OverflowError:  # an integer literal too large for a float
            raise PayloadError("out_of_range", f"{path}: {_show(value)} is too large") from None
        if self.lo is not None and number < self.lo:
            raise PayloadError("out_of_range", f"{path}: {_show(number)} is below {self.lo:g}")
        if self.hi is not None and number > self.hi:
            raise PayloadError("out_of_range", f"{path}: {_show(number)} is above {self.hi:g}")
        return cast(float | int, number)


# ---- device text ---------------------------------------------------------------------------------

# What no device text keeps: C0 controls, DEL, C1 controls (U+0080..U+009F, the 8-bit CSI among
# them) and the non-characters U+FFFE and U+FFFF. XML 1.0 cannot hold most of them (a CAP document
# carrying one cannot be built), and in logs, terminals and the console they are how escape
# sequences get injected. NUL and lone surrogates never get this far (``_parse`` refuses them).
_CONTROLS: Final = "\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ufffe\uffff"
_CONTROL_RE: Final = re.compile(f"[{_CONTROLS}\t\n\r]")
# An escape sequence goes as a whole: dropping only ESC would leave "[31m" behind. CSI (ESC [ or
# the 8-bit CSI, parameters, intermediates, a final byte), else ESC and the one character after.
_ESCAPE_RE: Final = re.compile(r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]?|\x1b[ -/]*[0-~]?")
_DROP_RE: Final = re.compile(f"[{_CONTROLS}]+")
_LINE_BREAKS_RE: Final = re.compile(r"[\t\n\r]+")

TextForm = Literal["identifier", "label", "text"]


def clean_text(value: str, form: TextForm) -> str:
    """``value`` without escape sequences and control characters.

    A ``label`` (a building's name) stays on one line: tabs and line breaks become one space. A
    ``text`` (a worker's report) keeps tabs and line breaks, with CR LF and lone CR made LF, so
    every consumer sees one kind of line end. An ``identifier`` is never cleaned: see :class:`Text`.
    """
    if not _CONTROL_RE.search(value):
        return value  # nearly every string: one scan, no copy
    value = _ESCAPE_RE.sub("", value)
    if form == "text":
        return _DROP_RE.sub("", value.replace("\r\n", "\n").replace("\r", "\n"))
    return _LINE_BREAKS_RE.sub(" ", _DROP_RE.sub("", value)).strip()


@dataclass(frozen=True, slots=True)
class Text:
    """A string of at most ``max_len`` characters; one of ``choices`` when given.

    ``form`` says what happens to control characters and escape sequences (see :func:`clean_text`),
    decided per field by what a wrong value would cost:

    - ``identifier`` (event_id, work_order_id): refused, reason ``control_character``. An id names
      one thing; cleaning could turn two ids into one (the second event then dropped as a
      redelivery, an ack applied to another order), and a device that garbles its own ids is
      broken in a way an engineer must see.
    - ``label`` (building_id): cleaned to one line. It is a name for people, riding on a safety
      event: a falling object must raise its alert even when the label is garbled.
    - ``text`` (a report's text, an ack's note): cleaned, line breaks kept.

    Values with ``choices`` need none of this: only the exact listed strings pass.
    """

    choices: frozenset[str] | None = None
    max_len: int = 4000
    min_len: int = 0
    form: TextForm = "text"

    def check(self, value: Any, path: str) -> str:
        if not isinstance(value, str):
            raise PayloadError("wrong_type", f"{path}: expected a string, got {_json_type(value)}")
        if self.choices is not None and value not in self.choices:
            allowed = ", ".join(sorted(self.choices))
            raise PayloadError("out_of_range", f"{path}: {_show(value)} is not one of {allowed}")
        text: str = value
        if self.form == "identifier":
            bad = _CONTROL_RE.search(value)
            if bad is not None:
                raise PayloadError(
                    "control_character",
                    f"{path}: {_show(value)} has control character U+{ord(bad.group()):04X} "
                    f"at {bad.start()}; an identifier must be printable",
                )
        elif self.choices is None:
            text = clean_text(value, self.form)
            if len(text) < self.min_len <= len(value):
                raise PayloadError(
                    "out_of_range",
                    f"{path}: {_show(value)} is empty once its control characters are removed",
                )
        if not self.min_len <= len(text) <= self.max_len:
            raise PayloadError(
                "out_of_range",
                f"{path}: length {len(text)} is not in {self.min_len}..{self.max_len}",
            )
        return text


def check_position(value: Any, path: str) -> Position:
    """``[lon, lat]`` in WGS 84: exactly two finite numbers in range."""
    if not isinstance(value, list) or len(value) != 2:
        raise PayloadError("bad_position", f"{path}: expected [lon, lat], got {_show(value)}")
    lon, lat = value
    if not (_is_number(lon) and _is_number(lat)):
        raise PayloadError("bad_position", f"{path}: expected two numbers, got {_show(value)}")
    try:
        lon_f, lat_f = float(lon), float(lat)
    except OverflowError:
        raise PayloadError("bad_position", f"{path}: {_show(value)} is out of range") from None
    if not (-180.0 <= lon_f <= 180.0 and -90.0 <= lat_f <= 90.0):
        raise PayloadError(
            "bad_position", f"{path}: {_show(value)} needs lon in -180..180 and lat in -90..90"
        )
    return (lon_f, lat_f)


@dataclass(frozen=True, slots=True)
class Point:
    """A ``[lon, lat]`` position."""

    def check(self, value: Any, path: str) -> Position:
        return check_position(value, path)


@dataclass(frozen=True, slots=True)
class Track:
    """Camera track: a list of ``[lon, lat, height_m, seconds_since_first]``."""

    max_points: int = 1000

    def check(self, value: Any, path: str) -> list[tuple[float, float, float, float]]:
        if not isinstance(value, list):
            raise PayloadError("wrong_type", f"{path}: expected an array, got {_json_type(value)}")
        if len(value) > self.max_points:
            raise PayloadError("out_of_range", f"{path}: more than {self.max_points} points")
        out = []
        for i, point in enumerate(value):
            p = f"{path}[{i}]"
            if not isinstance(point, list) or len(point) != 4:
                raise PayloadError(
                    "wrong_type", f"{p}: expected [lon, lat, height_m, seconds], got {_show(point)}"
                )
            lon, lat = check_position(point[:2], p)
            height = _ANY_NUMBER.check(point[2], f"{p}[2]")
            seconds = _NON_NEGATIVE.check(point[3], f"{p}[3]")
            out.append((lon, lat, float(height), float(seconds)))
        return out


_ANY_NUMBER: Final = Number()
_NON_NEGATIVE: Final = Number(lo=0)


# ---- kinds ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EventSpec:
    """One event ``type``: its required and optional fields beyond ts, seq, event_id and type.

    ``loc_field`` names the field that becomes :attr:`Event.loc` (``impact`` for a camera).
    """

    required: Mapping[str, FieldSpec]
    optional: Mapping[str, FieldSpec] = field(default_factory=dict)
    loc_field: str | None = None

    def __post_init__(self) -> None:
        if set(self.required) & set(self.optional):
            raise ValueError("a field cannot be both required and optional")
        if self.loc_field is not None and self.loc_field not in {*self.required, *self.optional}:
            raise ValueError(f"loc_field {self.loc_field!r} is not a field of the event")


@dataclass(frozen=True, slots=True)
class KindSpec:
    """What a device kind sends: telemetry value keys with their ranges, and event types.

    :data:`COMMON_VALUES` (battery, signal) are optional for every kind unless the kind redefines
    them.
    """

    required_values: Mapping[str, Number] = field(default_factory=dict)
    optional_values: Mapping[str, Number] = field(default_factory=dict)
    events: Mapping[str, EventSpec] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if set(self.required_values) & set(self.optional_values):
            raise ValueError("a value key cannot be both required and optional")


COMMON_VALUES: Final[Mapping[str, Number]] = MappingProxyType(
    {
        "battery_v": Number(0, 100),
        "battery_pct": Number(0, 100),
        "rssi_dbm": Number(-200, 20),
    }
)

_CONFIDENCE: Final = Number(0, 1)

BUILTIN_KINDS: Final[Mapping[str, KindSpec]] = MappingProxyType(
    {
        "camera": KindSpec(
            events={
                "falling_object": EventSpec(
                    required={"confidence": _CONFIDENCE, "impact": Point()},
                    optional={
                        "building_id": Text(max_len=ID_MAX_LEN, min_len=1, form="label"),
                        # Negative for basements; 300 is above any building in the case study.
                        "floor": Number(-20, 300, integer=True),
                        "track": Track(),
                    },
                    loc_field="impact",
                )
            }
        ),
        "water": KindSpec(required_values={"water_depth_cm": Number(0, 1000)}),
        "rain": KindSpec(
            required_values={"rain_rate_mm_h": Number(0, 500)},
            optional_values={"rain_1h_mm": Number(0, 500)},
        ),
        "traffic": KindSpec(
            required_values={
                "flow_veh_h": Number(0, 20000),
                "speed_kmh": Number(0, 300),
                "occupancy_pct": Number(0, 100),
            },
            events={
                "incident": EventSpec(
                    required={
                        "subtype": Text(frozenset({"collision", "stalled_vehicle", "wrong_way"})),
                        "confidence": _CONFIDENCE,
                    }
                )
            },
        ),
        "grid": KindSpec(
            events={
                "report": EventSpec(
                    required={
                        "category": Text(
                            frozenset({"waterlogging", "falling_object", "traffic", "other"})
                        ),
                        "loc": Point(),
                        "text": Text(max_len=4000),
                    },
                    loc_field="loc",
                )
            }
        ),
    }
)


# ---- JSON safety ---------------------------------------------------------------------------------

# A JSON string (possibly unterminated, then it runs to the end) or one bracket. finditer resumes
# after each match, so the scan is linear even for hostile input, unlike stripping strings first.
_TOKEN_RE: Final = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?|[\[\]{}]', re.DOTALL)
# Escapes that decode to NUL or to a surrogate; a hit only means "look closer" (\\u0000 is a
# backslash then text), so the parsed strings are then checked one by one.
_SUSPECT_ESCAPE_RE: Final = re.compile(r"\\u(?:0000|[dD][89a-fA-F])")


def _too_deep(text: str, limit: int) -> bool:
    """Nesting deeper than ``limit``, found without recursion so 100,000 ``[`` cannot hurt."""
    if text.count("[") + text.count("{") <= limit:
        return False
    depth = 0
    for m in _TOKEN_RE.finditer(text):
        c = text[m.start()]
        if c in "[{":
            depth += 1
            if depth > limit:
                return True
        elif c in "]}":
            depth -= 1
    return False


class _NonFinite:
    """Stands in for NaN, Infinity or an overflowing literal while locating it for the detail."""

    __slots__ = ("literal",)

    def __init__(self, literal: str) -> None:
        self.literal = literal


def _reject_constant(literal: str) -> Any:
    raise PayloadError(
        "nan_or_infinity", f"{literal} is not a JSON number (PostgreSQL JSON rejects it)"
    )


def _finite_float(literal: str) -> float:
    number = float(literal)
    if math.isinf(number):  # 1e400 parses as inf, which PostgreSQL JSON rejects like Infinity
        raise PayloadError("nan_or_infinity", f"{literal[:40]} overflows to infinity")
    return number


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise PayloadError("duplicate_key", f"key {_show(key)} appears twice in one object")
            seen.add(key)
    return obj


_STRICT_JSON: Final = json.JSONDecoder(
    object_pairs_hook=_unique_pairs, parse_constant=_reject_constant, parse_float=_finite_float
)


_PLAIN_KEY_RE: Final = re.compile(r"[A-Za-z0-9_]{1,64}")


def _path(parent: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{parent}[{key}]"
    name = key if _PLAIN_KEY_RE.fullmatch(key) else _show(key)
    return f"{parent}.{name}" if parent else name


def _find_non_finite(node: Any, path: str) -> str | None:
    if isinstance(node, _NonFinite):
        return f"{path or 'payload'}: {node.literal[:40]}"
    children: Any = ()
    if isinstance(node, dict):
        children = node.items()
    elif isinstance(node, list):
        children = enumerate(node)
    for key, child in children:
        found = _find_non_finite(child, _path(path, key))
        if found:
            return found
    return None


def _locate_non_finite(text: str) -> str:
    """Re-parse a rejected payload to name the field holding NaN or Infinity (rare path)."""
    try:
        tree = json.loads(
            text,
            parse_constant=_NonFinite,
            parse_float=lambda s: f if math.isfinite(f := float(s)) else _NonFinite(s),
        )
    except (ValueError, PayloadError):
        return "payload"
    return _find_non_finite(tree, "") or "payload"


def _check_strings(node: Any, path: str) -> None:
    """No NUL (PostgreSQL text cannot hold it) and no lone surrogate (not encodable as UTF-8)."""
    if isinstance(node, str):
        if "\x00" in node:
            raise PayloadError(
                "nul_character", f"{path or 'payload'}: contains NUL, which PostgreSQL cannot store"
            )
        if not node.isascii():
            try:
                node.encode("utf-8")
            except UnicodeEncodeError:
                raise PayloadError(
                    "not_utf8", f"{path or 'payload'}: a \\u escape leaves a lone surrogate"
                ) from None
    elif isinstance(node, dict):
        for key, child in node.items():
            _check_strings(key, f"{path}.<key>" if path else "<key>")
            _check_strings(child, _path(path, key))
    elif isinstance(node, list):
        for i, child in enumerate(node):
            _check_strings(child, _path(path, i))


# ---- timestamps ----------------------------------------------------------------------------------

# RFC 3339 date-time; [0-9] rather than \d, which also matches non-ASCII digits.
_TS_RE: Final = re.compile(
    r"([0-9]{4,6})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.[0-9]{1,9})?"
    r"(?:([Zz])|([+-])([0-9]{2}):([0-9]{2}))"
)


def parse_timestamp(value: Any, path: str = "ts") -> datetime:
    """An RFC 3339 timestamp with an offset, as a timezone-aware UTC datetime."""
    if not isinstance(value, str):
        raise PayloadError("wrong_type", f"{path}: expected a string, got {_json_type(value)}")
    m = _TS_RE.fullmatch(value)
    if m is None:
        raise PayloadError(
            "bad_timestamp",
            f"{path}: {_show(value)} is not RFC 3339 with a time zone (2026-11-23T08:15:00Z)",
        )
    year, month, day, hour, minute, second, zulu, sign, off_h, off_m = m.groups()
    if len(year) > 4:  # psycopg cannot read such a year back from PostgreSQL
        raise PayloadError("bad_timestamp", f"{path}: year {year} is past 9999")
    try:
        if not zulu and int(off_m) > 59:
            raise ValueError("offset minutes above 59")
        if second != "60":
            # The regex has pinned the RFC 3339 shape, so the fast C parser (whose ISO 8601 grammar
            # is wider) can do the rest; upper() because it refuses a lower-case t or z.
            ts = datetime.fromisoformat(value.upper())
        else:  # a leap second: valid in RFC 3339, not in datetime, so keep it in its minute
            if zulu:
                tz = UTC
            else:
                offset = timedelta(hours=int(off_h), minutes=int(off_m))
                tz = timezone(-offset if sign == "-" else offset)
            ts = datetime(
                int(year), int(month), int(day), int(hour), int(minute), 59, 999999, tzinfo=tz
            )
        if ts.tzinfo is not UTC:
            ts = ts.astimezone(UTC)  # may overflow: 9999-12-31T23:00:00-02:00 is in year 10000
    except (ValueError, OverflowError) as exc:
        raise PayloadError("bad_timestamp", f"{path}: {_show(value)}: {exc}") from None
    return ts


@lru_cache(maxsize=4096)
def _parse_topic(topic: str) -> Topic:
    # A fleet uses a few hundred topics over and over; bad ones raise and so are never cached.
    return Topic.parse(topic)


# ---- the decoder ---------------------------------------------------------------------------------

_SEQ: Final = Number(0, SEQ_MAX, integer=True)
_EVENT_ID: Final = Text(max_len=ID_MAX_LEN, min_len=1, form="identifier")
_STATES: Final = Text(frozenset({"online", "offline"}))
_ORDER_ID: Final = Text(max_len=64, min_len=1, form="identifier")
_ACK_STATUS: Final = Text(frozenset({"accepted", "on_site", "resolved", "rejected"}))
_NOTE: Final = Text(max_len=2000)


@dataclass(frozen=True, slots=True)
class _Kind:
    """A KindSpec prepared for the hot path: all value specs, common ones merged in."""

    values: Mapping[str, tuple[Number, str]]  # with the field's path, built once
    required_values: tuple[str, ...]
    events: Mapping[str, EventSpec]


# Far enough for a device whose clock is a day ahead (stored as sent, evaluated on the server's
# timeline: citywatch.clocks); a week ahead, or year 9999, is no clock error but garbage.
MAX_FUTURE_S: Final = 2 * 86400


class Decoder:
    """Turns ``(topic, payload)`` into :class:`Telemetry`, :class:`Event`, :class:`Status` or a
    :class:`Rejection`.

    ``registry`` (device_id to kind) is held by reference, not copied, so devices registered later
    are recognised. ``kinds`` is read once: register plug-in kinds before building the decoder.
    """

    def __init__(
        self,
        registry: Mapping[str, str],
        kinds: Mapping[str, KindSpec] = BUILTIN_KINDS,
        *,
        max_bytes: int = MAX_PAYLOAD_BYTES,
        max_future_s: float = MAX_FUTURE_S,
        min_year: int = 2000,
        max_depth: int = 32,
    ) -> None:
        if max_bytes <= 0 or max_future_s < 0 or max_depth < 1 or not 1 <= min_year <= 9999:
            raise ValueError("max_bytes, max_future_s, max_depth and min_year must be sensible")
        for name in kinds:
            if not is_kind(name):
                raise ValueError(f"kind {name!r}: expected [a-z][a-z0-9_]{{0,31}}, not reserved")
        self._registry = registry
        self._kinds = {
            name: _Kind(
                values={
                    key: (number, _path("values", key))
                    for key, number in {
                        **COMMON_VALUES,
                        **spec.optional_values,
                        **spec.required_values,
                    }.items()
                },
                required_values=tuple(spec.required_values),
                events=dict(spec.events),
            )
            for name, spec in kinds.items()
        }
        self._max_bytes = max_bytes
        self._max_future = timedelta(seconds=max_future_s)
        self._min_year = min_year
        self._max_depth = max_depth

    def decode(
        self, topic: str, payload: bytes, now: datetime
    ) -> Telemetry | Event | Status | DispatchAck | Rejection:
        """Never raises for any ``topic`` or ``payload``. ``now`` must be timezone-aware."""
        if now.utcoffset() is None:
            raise ValueError("now must be timezone-aware")  # our bug, not the device's
        device_id: str | None = None
        kind: str | None = None
        try:
            if topic.startswith("city/dispatch/"):
                kind = "dispatch"
                device_id = parse_dispatch_ack_topic(topic)
                return self._ack(device_id, payload, now)
            try:
                t = _parse_topic(topic)
            except TopicError as exc:
                raise PayloadError("bad_topic", str(exc)) from None
            device_id, kind = t.device_id, t.kind
            return self._decode(t, payload, now)
        except TopicError as exc:
            return Rejection(topic, "bad_topic", str(exc), bytes(payload), None, kind)
        except PayloadError as exc:
            return Rejection(topic, exc.reason, exc.detail, bytes(payload), device_id, kind)
        except Exception as exc:  # one bad message must not stop the ingest loop
            return Rejection(
                str(topic),
                "internal_error",
                f"decoder bug: {type(exc).__name__}: {_show(str(exc))}",
                bytes(payload),
                device_id,
                kind,
            )

    def _decode(self, t: Topic, payload: bytes, now: datetime) -> Telemetry | Event | Status:
        registered = self._registry.get(t.device_id)
        if registered is None:
            raise PayloadError("unknown_device", f"device {t.device_id!r} is not registered")
        if registered != t.kind:
            raise PayloadError(
                "kind_mismatch",
                f"topic says kind {t.kind!r}, the registry says {registered!r} for {t.device_id!r}",
            )
        spec = self._kinds.get(t.kind)
        if spec is None:
            raise PayloadError("unknown_kind", f"kind {t.kind!r} has no KindSpec")

        obj = self._parse(payload)
        if t.channel == "telemetry":
            return self._telemetry(t, spec, obj, now)
        if t.channel == "event":
            return self._event(t, spec, obj, now)
        return self._status(t, obj, now)

    def _parse(self, payload: bytes) -> dict[str, Any]:
        if len(payload) > self._max_bytes:
            raise PayloadError(
                "too_large", f"payload of {len(payload)} bytes exceeds {self._max_bytes}"
            )
        if not payload:  # also what clearing a retained message looks like
            raise PayloadError("not_json", "empty payload")
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise PayloadError("not_utf8", f"invalid UTF-8 at byte {exc.start}") from None
        if "\x00" in text:
            raise PayloadError("nul_character", f"raw NUL at character {text.index(chr(0))}")
        if _too_deep(text, self._max_depth):
            raise PayloadError("too_deep", f"nesting deeper than {self._max_depth}")
        try:
            obj = _STRICT_JSON.decode(text)
        except PayloadError as exc:
            if exc.reason == "nan_or_infinity":
                raise PayloadError(
                    exc.reason, f"{_locate_non_finite(text)} is not a finite JSON number"
                ) from None
            raise
        except (ValueError, RecursionError) as exc:  # RecursionError only if _too_deep had a gap
            raise PayloadError("not_json", _show(str(exc))) from None
        if _SUSPECT_ESCAPE_RE.search(text):
            _check_strings(obj, "")
        if not isinstance(obj, dict):
            raise PayloadError("not_object", f"expected a JSON object, got {_json_type(obj)}")
        return obj

    def _ts(self, value: Any, now: datetime) -> datetime:
        ts = parse_timestamp(value)
        if ts.year < self._min_year:
            raise PayloadError("bad_timestamp", f"ts: {_show(value)} is before {self._min_year}")
        if ts - now > self._max_future:
            raise PayloadError(
                "bad_timestamp",
                f"ts: {_show(value)} is {(ts - now).total_seconds():.0f} s in the future "
                f"(limit {self._max_future.total_seconds():g} s)",
            )
        return ts

    def _telemetry(self, t: Topic, spec: _Kind, obj: dict[str, Any], now: datetime) -> Telemetry:
        ts = self._ts(_required(obj, "ts"), now)
        seq = cast(int, _SEQ.check(_required(obj, "seq"), "seq"))
        raw = _required(obj, "values")
        if not isinstance(raw, dict):
            raise PayloadError("wrong_type", f"values: expected an object, got {_json_type(raw)}")
        for key in spec.required_values:
            if raw.get(key) is None:
                raise PayloadError("missing_field", f"values.{key}: required for kind {t.kind}")
        values: dict[str, float] = {}
        for key, value in raw.items():
            if value is None:  # null is read as absent, as devices often send it for "no reading"
                continue
            # Unknown keys are kept when they are numbers: the contract lets devices add optional
            # values before the platform knows them, and "values are numbers" still holds, so
            # storing them loses nothing. A non-number breaks that promise: rejected, not dropped.
            known = spec.values.get(key)
            if known is None:
                values[key] = float(_ANY_NUMBER.check(value, _path("values", key)))
            else:
                values[key] = float(known[0].check(value, known[1]))
        loc = obj.get("loc")
        return Telemetry(
            t.device_id,
            t.kind,
            ts,
            seq,
            values,
            None if loc is None else check_position(loc, "loc"),
        )

    def _event(self, t: Topic, spec: _Kind, obj: dict[str, Any], now: datetime) -> Event:
        ts = self._ts(_required(obj, "ts"), now)
        # CONTRACT section 1 requires seq on telemetry only; events are identified by event_id.
        seq = None if obj.get("seq") is None else cast(int, _SEQ.check(obj["seq"], "seq"))
        event_id = _EVENT_ID.check(_required(obj, "event_id"), "event_id")
        etype = _required(obj, "type")
        if not isinstance(etype, str):
            raise PayloadError("wrong_type", f"type: expected a string, got {_json_type(etype)}")
        event_spec = spec.events.get(etype)
        if event_spec is None:
            allowed = ", ".join(sorted(spec.events)) or "none"
            raise PayloadError(
                "bad_event_type", f"type: {_show(etype)} is not an event of {t.kind} ({allowed})"
            )
        checked: dict[str, Any] = {}
        for name, field_spec in event_spec.required.items():
            checked[name] = field_spec.check(_required(obj, name), name)
        for name, field_spec in event_spec.optional.items():
            value = obj.get(name)
            if value is not None:  # null is read as absent, as devices often send it for "none"
                checked[name] = field_spec.check(value, name)
        confidence = checked.get("confidence")
        loc = checked.get(event_spec.loc_field) if event_spec.loc_field else None
        # Cleaned text replaces what was sent, so the rules (which read the body), the store and
        # the API all see one value. Fields without a spec ride along untouched: nothing reads
        # them until the contract gives them a meaning, and then their spec cleans them.
        cleaned = {k: v for k, v in checked.items() if isinstance(v, str) and v != obj[k]}
        if cleaned:
            obj = {**obj, **cleaned}
        return Event(
            t.device_id,
            t.kind,
            ts,
            seq,
            event_id,
            etype,
            None if confidence is None else float(confidence),
            loc,
            # The payload as received (text cleaned as above): every field is JSON-safe, so it
            # can be stored as jsonb; unknown fields ride along for forward compatibility.
            obj,
        )

    def _ack(self, team_id: str, payload: bytes, now: datetime) -> DispatchAck:
        obj = self._parse(payload)
        order = _ORDER_ID.check(_required(obj, "work_order_id"), "work_order_id")
        status = _ACK_STATUS.check(_required(obj, "status"), "status")
        ts = None if obj.get("ts") is None else self._ts(obj["ts"], now)
        note = "" if obj.get("note") is None else _NOTE.check(obj["note"], "note")
        return DispatchAck(team_id, order, cast(Any, status), ts, note)

    def _status(self, t: Topic, obj: dict[str, Any], now: datetime) -> Status:
        state = _STATES.check(_required(obj, "state"), "state")
        if obj.get("ts") is not None:
            self._ts(obj["ts"], now)  # optional, but a present ts must still be valid
        return Status(t.device_id, t.kind, cast(Literal["online", "offline"], state))


def _required(obj: Mapping[str, Any], name: str) -> Any:
    value = obj.get(name)
    if value is None:
        detail = f"{name}: is null" if name in obj else f"{name}: missing"
        raise PayloadError("missing_field", detail)
    return value
