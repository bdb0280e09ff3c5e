"""Alerts as OASIS CAP 1.2 documents (CONTRACT section 4, ``GET /api/alerts/{id}/cap``).

Pure: no database and no clock. Every field of a document follows from the alert, so asking twice
for the same version gives the same bytes, and a later Update or Cancel can name the earlier
message in ``references`` without anything having been stored when it was first served.

Mapping (CAP 1.2 section 3.2.2 vocabularies):

- ``category`` and ``event``: each hazard's own (``rules.hazard.Hazard.cap_categories`` and
  ``cap_event``, read from the hazard registry).
- ``urgency`` follows how soon a team must act (``alerts.policy.RESPOND_WITHIN``): red (10 min)
  and orange (30 min) are Immediate ("without delay"), yellow (1 h) is Expected ("soon, within
  the next hour"), blue (4 h, a watch) is Future ("in the near future"). A Cancel is Past
  ("responsive action is no longer required").
- ``severity`` is CONTRACT section 3's column (``Level.cap_severity``).
- ``certainty``: yellow, orange and red mean a sensor, camera or grid worker has seen the
  threshold crossed: Observed. Blue means it is near or forecast to be crossed: Likely.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from lxml import etree
from shapely.geometry import MultiPolygon, Polygon
from shapely.geometry.base import BaseGeometry
from shapely.geometry.polygon import orient

from alerts.lifecycle import AlertsError
from alerts.policy import INSTRUCTIONS
from geo.zones import Zone
from rules import registry
from rules.levels import Level

CAP_NS = "urn:oasis:names:tc:emergency:cap:1.2"
CAP_MEDIA_TYPE = "application/cap+xml"
DEFAULT_SENDER = "citywatch@gusu.suzhou.example"
DEFAULT_ID_PREFIX = "urn:citywatch:gusu"
# CAP asks for short polygons; consumers (sirens, phones) choke on thousands of vertices.
MAX_POLYGON_POINTS = 99
# Private code lists for geocode, eventCode and parameter: CAP wants the domain named.
CODE_DOMAIN = "citywatch"

MsgType = Literal["Alert", "Update", "Cancel"]

CATEGORIES: Mapping[str, tuple[str, ...]] = registry.view(lambda k: k.cap_categories)
EVENTS: Mapping[str, str] = registry.view(lambda k: k.cap_event)
URGENCY: Mapping[Level, str] = {Level.RED: "Immediate", Level.ORANGE: "Immediate",
                                Level.YELLOW: "Expected", Level.BLUE: "Future"}

# Characters a CAP document cannot carry: those XML 1.0 forbids (C0 controls but tab, LF and CR;
# U+FFFE, U+FFFF; surrogates, which no UTF-8 document can hold), and DEL and the C1 controls,
# which it discourages (section 2.2) and which sirens and phones down the line should not meet.
# lxml refuses the forbidden ones outright, so one stray character would make the whole
# document fail: the text is filtered instead, whatever its source (devices, config, a title).
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ufffe\uffff\ud800-\udfff]+")

# identifier and sender: no spaces, commas or restricted characters (CAP 1.2 section 3.2.1).
_TOKEN = re.compile(r"^[^\s,<&]+$")
_CAP_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[-+]\d\d:\d\d$")


class CapError(AlertsError):
    """An alert that cannot be expressed in CAP (a bad sender, an unknown severity)."""


def check_token(what: str, value: str) -> str:
    if not _TOKEN.match(value):
        raise CapError(f"{what} {value!r} is empty or has a space, comma, '<' or '&'")
    return value


@dataclass(frozen=True, slots=True)
class CapRef:
    """One earlier message, as ``references`` names it: ``sender,identifier,sent``."""

    sender: str
    identifier: str
    sent: datetime

    def __str__(self) -> str:
        return f"{self.sender},{self.identifier},{cap_time(self.sent)}"


def cap_time(ts: datetime) -> str:
    """CAP's dateTime: whole seconds with a numeric offset; UTC is written ``-00:00``.

    CAP 1.2 section 3.3.2 forbids "Z" and says UTC MUST be "-00:00" (the XSD accepts either
    sign; the spec text does not).
    """
    if ts.tzinfo is None:
        raise CapError(f"time {ts.isoformat()} has no timezone")
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S") + "-00:00"


def _time(value: Any) -> datetime | None:
    """The store's readers give RFC 3339 strings; rows give datetimes. Accept both."""
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value))


def _required_time(alert: Mapping[str, Any], key: str) -> datetime:
    ts = _time(alert.get(key))
    if ts is None:
        raise CapError(f"alert {alert.get('id')!r} has no {key!r} time")
    return ts


def msg_type(alert: Mapping[str, Any]) -> MsgType:
    """Cancel once cleared or resolved; Update once anything changed after raising."""
    if alert.get("state") == "resolved" or alert.get("cleared") is not None:
        return "Cancel"
    if _required_time(alert, "updated") != _required_time(alert, "raised"):
        return "Update"
    return "Alert"


def version_time(alert: Mapping[str, Any], kind: MsgType) -> datetime:
    """The moment the version this document describes came to be."""
    if kind == "Alert":
        return _required_time(alert, "raised")
    if kind == "Cancel":
        return _time(alert.get("cleared")) or _required_time(alert, "updated")
    return _required_time(alert, "updated")


def identifier(alert_id: str, at: datetime, prefix: str = DEFAULT_ID_PREFIX) -> str:
    """Unique per alert version: milliseconds, because two level changes can share a second."""
    stamp = at.astimezone(UTC).strftime("%Y%m%dT%H%M%S") + f".{at.microsecond // 1000:03d}Z"
    return check_token("identifier", f"{prefix}:{alert_id}:{stamp}")


def original_reference(alert: Mapping[str, Any], sender: str,
                       prefix: str = DEFAULT_ID_PREFIX) -> CapRef:
    """The first message (msgType Alert) for this alert, which Updates and Cancels point at."""
    raised = _required_time(alert, "raised")
    return CapRef(sender, identifier(str(alert["id"]), raised, prefix), raised)


def alert_to_cap(alert: Mapping[str, Any], zone: Zone | None, *,
                 sender: str = DEFAULT_SENDER, kind: MsgType | None = None,
                 sent: datetime | None = None, references: Sequence[CapRef] | None = None,
                 web: str | None = None, id_prefix: str = DEFAULT_ID_PREFIX,
                 sender_name: str = "citywatch early warning, Gusu District") -> bytes:
    """One CAP 1.2 document for ``alert`` (the mapping ``alerts.store.get_alert`` returns).

    ``kind`` defaults to what the alert's state says (``msg_type``); ``sent`` to the time of
    that version; ``references`` (Update and Cancel only) to the original Alert message.
    """
    check_token("sender", sender)
    try:
        level = Level(int(alert["severity"]))
    except (KeyError, TypeError, ValueError):
        raise CapError(f"alert {alert.get('id')!r}: severity {alert.get('severity')!r} is not "
                       "1..4") from None
    hazard = str(alert["hazard"])
    alert_id = str(alert["id"])
    kind = kind or msg_type(alert)
    at = version_time(alert, kind)
    if kind != "Alert" and references is None:
        references = [original_reference(alert, sender, id_prefix)]

    root = etree.Element(f"{{{CAP_NS}}}alert", nsmap={None: CAP_NS})
    _sub(root, "identifier", identifier(alert_id, at, id_prefix))
    _sub(root, "sender", sender)
    _sub(root, "sent", cap_time(sent or at))
    _sub(root, "status", "Actual")
    _sub(root, "msgType", kind)
    _sub(root, "scope", "Public")
    if kind == "Cancel":
        _sub(root, "note", _cancel_reason(alert))
    if kind != "Alert" and references:
        _sub(root, "references", " ".join(str(r) for r in references))
    order_id = alert.get("work_order_id")
    if order_id and _TOKEN.match(str(order_id)):
        # The work order is the incident: every message about it collates under one name.
        _sub(root, "incidents", str(order_id))
    _info(root, alert, zone, kind, level, hazard, sender_name, web)
    return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8",
                                pretty_print=True))


def _info(root: Any, alert: Mapping[str, Any], zone: Zone | None, kind: MsgType, level: Level,
          hazard: str, sender_name: str, web: str | None) -> None:
    event = EVENTS.get(hazard, hazard.replace("_", " ").capitalize())
    place = zone.name if zone is not None else str(alert.get("zone_id") or "unknown zone")
    info = _sub(root, "info")
    _sub(info, "language", "en-US")
    for category in CATEGORIES.get(hazard, ("Other",)):
        _sub(info, "category", category)
    _sub(info, "event", event)
    if kind == "Cancel":
        _sub(info, "responseType", "AllClear")
    else:
        _sub(info, "responseType", "Monitor" if level is Level.BLUE else "Avoid")
    _sub(info, "urgency", "Past" if kind == "Cancel" else URGENCY[level])
    _sub(info, "severity", level.cap_severity)
    _sub(info, "certainty", "Likely" if level is Level.BLUE else "Observed")
    _value_pair(info, "eventCode", f"{CODE_DOMAIN}:hazard", hazard)
    raised = _time(alert.get("raised"))
    if raised is not None:
        _sub(info, "onset", cap_time(raised))
    _sub(info, "senderName", sender_name)
    _sub(info, "headline", str(alert.get("title") or f"{event} at {place}"))
    _sub(info, "description", _description(alert, kind, level, event, place))
    if kind == "Cancel":
        _sub(info, "instruction", "The warning is over; no further action is needed.")
    else:
        _sub(info, "instruction", INSTRUCTIONS.get(hazard, "Check on site."))
    if web:
        _sub(info, "web", web)
    _value_pair(info, "parameter", f"{CODE_DOMAIN}:level", level.colour)
    _value_pair(info, "parameter", f"{CODE_DOMAIN}:alert_id", str(alert["id"]))
    _area(info, zone, str(alert.get("zone_id") or ""), place)


def _description(alert: Mapping[str, Any], kind: MsgType, level: Level, event: str,
                 place: str) -> str:
    raised = _time(alert.get("raised"))
    since = f" since {cap_time(raised)}" if raised is not None else ""
    if kind == "Cancel":
        return f"The {level.colour} {event.lower()} warning for {place}{since} is over: " \
               f"{_cancel_reason(alert)}."
    text = (f"{level.colour.capitalize()} {event.lower()} warning (level {int(level)}, "
            f"{level.cap_severity}) for {place}{since}.")
    latest = _latest_evidence(alert.get("evidence"))
    return f"{text} Latest evidence: {latest}." if latest else text


# Evidence keys a CAP document (public: it may be relayed to residents) never quotes: free text
# that people or devices wrote (a report's words, a fault's detail, a note) and positions.
_NOT_PUBLIC = frozenset({"text", "detail", "note", "reason", "loc", "track"})


def _latest_evidence(evidence: Any) -> str:
    """The latest evidence, for the public: a fixed sensor's id, its readings and labels (a
    building id). A grid worker's report says only that one came (no worker id, position or
    words), and no free text of any evidence is copied."""
    if not isinstance(evidence, list) or not evidence or not isinstance(evidence[-1], Mapping):
        return ""
    item = evidence[-1]
    if item.get("source") == "grid" or "grid_report" in item:
        return "a report from a grid worker on patrol"
    skip = {"ts", "seq", "device_id", "event_id", "since", "last_seen"} | _NOT_PUBLIC
    values = ", ".join(f"{k} {v}" for k, v in item.items()
                       if k not in skip and isinstance(v, int | float | str))
    who = item.get("device_id")
    return f"{who}: {values}" if who and values else values or str(who or "")


def _cancel_reason(alert: Mapping[str, Any]) -> str:
    if alert.get("cleared") is not None:
        return "the sensors no longer show the hazard"
    return "resolved by the command centre"


def _area(info: Any, zone: Zone | None, zone_id: str, place: str) -> None:
    area = _sub(info, "area")
    _sub(area, "areaDesc", place)
    if zone is not None:
        polygons = cap_polygons(zone.geometry)
        for p in polygons:
            _sub(area, "polygon", p)
        if not polygons and not zone.geometry.is_empty:
            _sub(area, "circle", cap_circle(zone.geometry))
    if zone_id:
        _value_pair(area, "geocode", f"{CODE_DOMAIN}:zone_id", zone_id)


def xml_text(text: str) -> str:
    """``text`` with every character a CAP document cannot carry removed (see ``_NOT_XML``)."""
    return _NOT_XML.sub("", text)


def _sub(parent: Any, tag: str, text: str | None = None) -> Any:
    """Every text of the document is written here, and so passes ``xml_text``."""
    el = etree.SubElement(parent, f"{{{CAP_NS}}}{tag}")
    if text is not None:
        el.text = xml_text(text)
    return el


def _value_pair(parent: Any, tag: str, name: str, value: str) -> None:
    el = _sub(parent, tag)
    _sub(el, "valueName", name)
    _sub(el, "value", value)


# --- geometry ---------------------------------------------------------------------------------


def _parts(geom: BaseGeometry) -> list[Polygon]:
    if isinstance(geom, Polygon):
        return [] if geom.is_empty else [geom]
    if isinstance(geom, MultiPolygon):
        return [p for p in geom.geoms if not p.is_empty]
    return [p for g in getattr(geom, "geoms", ()) for p in _parts(g)]


def _num(x: float) -> str:
    """Six decimals (about 0.1 m), never exponent notation, no trailing zeros, no '-0'."""
    s = f"{x:.6f}".rstrip("0").rstrip(".")
    return "0" if s in ("-0", "") else s


def _shell(part: Polygon) -> list[tuple[float, float]]:
    """The outer ring, counter-clockwise, simplified to at most MAX_POLYGON_POINTS.

    Holes are dropped: a CAP polygon has none, and warning a courtyard too is the safe side.
    """
    shell = orient(Polygon(part.exterior), sign=1.0)
    minx, miny, maxx, maxy = shell.bounds
    tolerance = max(maxx - minx, maxy - miny) / 1000
    while len(shell.exterior.coords) > MAX_POLYGON_POINTS and tolerance > 0:
        simpler = shell.simplify(tolerance, preserve_topology=True)
        if isinstance(simpler, Polygon) and not simpler.is_empty:
            shell = orient(simpler, sign=1.0)
        tolerance *= 2
    return [(float(x), float(y)) for x, y in shell.exterior.coords]


def cap_polygons(geom: BaseGeometry) -> list[str]:
    """CAP ``polygon`` values: ``lat,lon`` pairs, closed, at least four; one per part."""
    out = []
    for part in _parts(geom):
        pairs: list[str] = []
        for lon, lat in _shell(part):
            pair = f"{_num(lat)},{_num(lon)}"
            if not pairs or pairs[-1] != pair:  # rounding can merge neighbours
                pairs.append(pair)
        if pairs and pairs[0] != pairs[-1]:
            pairs.append(pairs[0])
        if len(set(pairs)) >= 3 and len(pairs) >= 4 and _simple_ccw(pairs):
            out.append(" ".join(pairs))
        # else too small for 6 decimals (rounding left a line or a knot): a circle instead
    return out


def _simple_ccw(pairs: list[str]) -> bool:
    """The rounded ring still encloses an area, without crossing itself, counter-clockwise."""
    ring = Polygon([(float(lon), float(lat)) for lat, lon in (p.split(",") for p in pairs)])
    return bool(ring.is_valid and ring.area > 0 and ring.exterior.is_ccw)


def cap_circle(geom: BaseGeometry) -> str:
    """A CAP ``circle`` (``lat,lon radius_km``) covering ``geom``, for shapes with no polygon."""
    centre = geom.centroid
    minx, miny, maxx, maxy = geom.bounds
    radius = max(_km(centre.x, centre.y, x, y) for x in (minx, maxx) for y in (miny, maxy))
    return f"{_num(centre.y)},{_num(centre.x)} {max(radius, 0.001):.3f}"


def _km(lon1: float, lat1: float, lon2: float, lat2: float) -> float:
    """Great-circle distance (haversine, mean Earth radius)."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    a = (math.sin((p2 - p1) / 2) ** 2
         + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2)
    return 2 * 6371.0088 * math.asin(min(1.0, math.sqrt(a)))


# --- validation -------------------------------------------------------------------------------


# The official OASIS schema, shipped unchanged as package data (OASIS allows copies that keep its
# notice: schemas/NOTICE), so validating needs nothing beside the installed package.
SCHEMA_PATH = Path(__file__).parent / "schemas" / "CAP-v1.2.xsd"


def load_schema(path: Path = SCHEMA_PATH) -> Any:
    """The CAP 1.2 XSD (by default the packaged official one) as an ``lxml.etree.XMLSchema``."""
    return etree.XMLSchema(etree.parse(str(path), _parser()))


def _parser() -> Any:
    # Documents may come from elsewhere: no entities, no network, no huge trees.
    return etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)


def validate_cap(xml: bytes, schema: Any | None = None) -> list[str]:
    """Problems with a CAP 1.2 document, empty when there are none.

    With ``schema`` (see ``load_schema``) the XSD is checked; the rules the XSD leaves to the
    spec's text (polygon and circle syntax, references, identifier characters) always are.
    """
    try:
        doc = etree.fromstring(xml, _parser())
    except etree.XMLSyntaxError as exc:
        return [f"not well-formed XML: {exc}"]
    problems: list[str] = []
    if schema is not None and not schema.validate(doc):
        problems += [f"line {e.line}: {e.message}" for e in schema.error_log]
    ns = {"cap": CAP_NS}

    def texts(path: str) -> list[str]:
        return [str(t) for t in doc.xpath(f"{path}/text()", namespaces=ns)]

    for tag in ("identifier", "sender"):
        problems += [f"{tag} {v!r} has a space, comma, '<' or '&'"
                     for v in texts(f"/cap:alert/cap:{tag}") if not _TOKEN.match(v)]
    kinds = texts("/cap:alert/cap:msgType")
    refs = texts("/cap:alert/cap:references")
    if kinds and kinds[0] in ("Update", "Cancel") and not refs:
        problems.append(f"msgType {kinds[0]} without references")
    for ref in " ".join(refs).split():
        parts = ref.split(",")
        if len(parts) != 3 or not all(parts) or not _CAP_TIME.match(parts[2]):
            problems.append(f"reference {ref!r} is not sender,identifier,sent")
    problems += _check_polygons(texts("//cap:area/cap:polygon"))
    problems += _check_circles(texts("//cap:area/cap:circle"))
    return problems


def _lat_lon(pair: str) -> tuple[float, float] | None:
    try:
        lat_s, lon_s = pair.split(",")
        lat, lon = float(lat_s), float(lon_s)
    except ValueError:
        return None
    if not (-90 <= lat <= 90 and -180 <= lon <= 180) or math.isnan(lat) or math.isnan(lon):
        return None
    return lat, lon


def _check_polygons(polygons: Iterable[str]) -> list[str]:
    problems = []
    for text in polygons:
        pairs = text.split()
        points = [_lat_lon(p) for p in pairs]
        if any(p is None for p in points):
            problems.append(f"polygon {text[:60]!r}: a pair is not 'lat,lon' in range")
        elif len(points) < 4:
            problems.append(f"polygon {text[:60]!r}: fewer than 4 pairs")
        elif points[0] != points[-1]:
            problems.append(f"polygon {text[:60]!r}: first and last pairs differ")
    return problems


def _check_circles(circles: Iterable[str]) -> list[str]:
    problems = []
    for text in circles:
        parts = text.split()
        ok = len(parts) == 2 and _lat_lon(parts[0]) is not None
        try:
            ok = ok and float(parts[1]) >= 0
        except (ValueError, IndexError):
            ok = False
        if not ok:
            problems.append(f"circle {text!r} is not 'lat,lon radius_km'")
    return problems
