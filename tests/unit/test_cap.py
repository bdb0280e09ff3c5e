"""CAP 1.2 documents from alerts: valid against the official XSD for every message type and
level, the spec's rules the XSD cannot check (polygons, references), and property tests over
random small polygons."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta, timezone
from itertools import pairwise
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import etree
from shapely.geometry import MultiPolygon, Point, Polygon, box

from alerts.cap import (
    CAP_NS,
    MAX_POLYGON_POINTS,
    CapError,
    CapRef,
    alert_to_cap,
    cap_polygons,
    cap_time,
    msg_type,
    validate_cap,
    xml_text,
)
from geo.zones import Zone
from tests.cap_schema import EXAMPLES, REPO, cap_schema
from tests.geometry_catalogue import DONUT, FAR_AWAY, MULTI, SQUARE

NS = {"c": CAP_NS}
SENDER = "citywatch@gusu.suzhou.example"
RAISED = datetime(2026, 11, 23, 8, 15, 0, 250_000, tzinfo=UTC)
ZONE = Zone("up-01", "Renmin Road underpass (人民路地道)", "underpass", SQUARE, "st-02")


def alert(**changes: Any) -> dict[str, Any]:
    """An alert as ``alerts.store.get_alert`` returns it (times as RFC 3339 strings)."""
    base: dict[str, Any] = {
        "id": "AL-000001", "hazard": "waterlogging", "severity": 3, "state": "active",
        "zone_id": "up-01", "raised": _iso(RAISED), "updated": _iso(RAISED), "cleared": None,
        "title": "Standing water 12.0 cm at Renmin Road underpass",
        "evidence": [{"device_id": "wl-01", "seq": 7, "ts": _iso(RAISED),
                      "water_depth_cm": 12.0}],
        "work_order_id": "WO-000001",
    }
    return {**base, **changes}


def _iso(ts: datetime) -> str:
    return ts.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def updated(a: dict[str, Any], minutes: float, **changes: Any) -> dict[str, Any]:
    return {**a, "updated": _iso(RAISED + timedelta(minutes=minutes)), **changes}


def cleared(a: dict[str, Any], minutes: float) -> dict[str, Any]:
    at = _iso(RAISED + timedelta(minutes=minutes))
    return {**a, "state": "resolved", "updated": at, "cleared": at}


def parse(xml: bytes) -> Any:
    return etree.fromstring(xml)


def text(doc: Any, path: str) -> str:
    found = doc.xpath(f"{path}/text()", namespaces=NS)
    assert len(found) == 1, (path, found)
    return str(found[0])


def texts(doc: Any, path: str) -> list[str]:
    return [str(t) for t in doc.xpath(f"{path}/text()", namespaces=NS)]


def assert_valid(xml: bytes) -> None:
    problems = validate_cap(xml, cap_schema())
    assert problems == [], "\n".join(problems) + "\n" + xml.decode()


KINDS = {
    "Alert": alert(),
    "Update": updated(alert(), 5),
    "Cancel": cleared(alert(), 30),
    "Cancel (operator)": updated(alert(), 30, state="resolved"),
}


@pytest.mark.parametrize("severity", [1, 2, 3, 4])
@pytest.mark.parametrize("kind", list(KINDS))
def test_every_message_type_and_level_validates(kind: str, severity: int) -> None:
    xml = alert_to_cap({**KINDS[kind], "severity": severity}, ZONE, sender=SENDER)
    assert_valid(xml)
    doc = parse(xml)
    assert text(doc, "/c:alert/c:msgType") == kind.split(maxsplit=1)[0]
    assert text(doc, "/c:alert/c:status") == "Actual"
    assert text(doc, "/c:alert/c:scope") == "Public"
    assert text(doc, "//c:info/c:severity") == {1: "Extreme", 2: "Severe", 3: "Moderate",
                                                4: "Minor"}[severity]


@pytest.mark.parametrize("hazard", ["waterlogging", "falling_object", "traffic", "tsunami"])
def test_every_hazard_validates_with_its_categories(hazard: str) -> None:
    xml = alert_to_cap(alert(hazard=hazard), ZONE, sender=SENDER)
    assert_valid(xml)
    assert texts(parse(xml), "//c:info/c:category") == {
        "waterlogging": ["Met", "Transport"], "falling_object": ["Safety"],
        "traffic": ["Transport"], "tsunami": ["Other"]}[hazard]


def test_official_examples_pass_our_validator() -> None:
    # The validator itself is right: the spec's own examples have no problems.
    examples = sorted(EXAMPLES.glob("oasis_cap12_example*.xml"))
    assert len(examples) == 4
    for path in examples:
        assert validate_cap(path.read_bytes(), cap_schema()) == [], path


@pytest.mark.parametrize(("severity", "urgency", "certainty", "response"), [
    (1, "Immediate", "Observed", "Avoid"),
    (2, "Immediate", "Observed", "Avoid"),
    (3, "Expected", "Observed", "Avoid"),
    (4, "Future", "Likely", "Monitor"),
])
def test_urgency_certainty_and_response_follow_the_level(severity: int, urgency: str,
                                                         certainty: str, response: str) -> None:
    doc = parse(alert_to_cap(alert(severity=severity), ZONE, sender=SENDER))
    assert text(doc, "//c:info/c:urgency") == urgency
    assert text(doc, "//c:info/c:certainty") == certainty
    assert text(doc, "//c:info/c:responseType") == response


def test_msg_type_follows_the_alert_state() -> None:
    assert msg_type(alert()) == "Alert"
    assert msg_type(updated(alert(), 1)) == "Update"
    assert msg_type(cleared(alert(), 1)) == "Cancel"
    assert msg_type(updated(alert(), 1, state="resolved")) == "Cancel"
    # A reactivated alert (the hazard came back within the reopen window) is live again.
    assert msg_type(updated(alert(), 9, state="active", cleared=None)) == "Update"


def test_alert_fields_sent_and_identifier() -> None:
    doc = parse(alert_to_cap(alert(), ZONE, sender=SENDER))
    assert text(doc, "/c:alert/c:identifier") == \
        "urn:citywatch:gusu:AL-000001:20261123T081500.250Z"
    assert text(doc, "/c:alert/c:sender") == SENDER
    # Whole seconds, UTC written -00:00 (CAP 1.2 section 3.3.2), and no references on an Alert.
    assert text(doc, "/c:alert/c:sent") == "2026-11-23T08:15:00-00:00"
    assert texts(doc, "/c:alert/c:references") == []
    assert text(doc, "/c:alert/c:incidents") == "WO-000001"
    info = "/c:alert/c:info"
    assert text(doc, f"{info}/c:language") == "en-US"
    assert text(doc, f"{info}/c:event") == "Urban waterlogging"
    assert text(doc, f"{info}/c:headline") == alert()["title"]
    assert "wl-01" in text(doc, f"{info}/c:description")
    assert "drains" in text(doc, f"{info}/c:instruction")
    assert text(doc, f"{info}/c:area/c:areaDesc") == ZONE.name
    assert text(doc, f"{info}/c:area/c:geocode/c:value") == "up-01"


def test_a_grid_report_or_a_fault_note_is_not_published() -> None:
    report = {"device_id": "grid-07", "event_id": "grid-07-000012", "ts": _iso(RAISED),
              "source": "grid", "category": "waterlogging", "loc": [120.6213, 31.3117],
              "text": "water over the kerb by the school gate"}
    fault = {"device_id": "wl-02", "kind": "water", "fault": "stuck",
             "detail": "stuck at 12.0 cm since the technician's visit"}
    for item in (report, fault):
        xml = alert_to_cap(alert(evidence=[item]), ZONE).decode()
        for secret in ("grid-07", "120.6213", "kerb", "technician"):
            assert secret not in xml, secret
    assert "grid worker" in text(parse(alert_to_cap(alert(evidence=[report]), ZONE)),
                                 "/c:alert/c:info/c:description")


def test_the_same_version_gives_the_same_bytes_and_versions_differ() -> None:
    a, b = alert(), updated(alert(), 1)
    assert alert_to_cap(a, ZONE) == alert_to_cap(a, ZONE)
    ids = {text(parse(alert_to_cap(x, ZONE)), "/c:alert/c:identifier")
           for x in (a, b, updated(alert(), 1 / 60_000), cleared(alert(), 2))}
    assert len(ids) == 4  # a millisecond apart is still another version


@pytest.mark.parametrize("later", [updated(alert(), 5, severity=1), cleared(alert(), 30)])
def test_update_and_cancel_reference_the_original_alert(later: dict[str, Any]) -> None:
    first = parse(alert_to_cap(alert(), ZONE, sender=SENDER))
    doc = parse(alert_to_cap(later, ZONE, sender=SENDER))
    expected = ",".join([SENDER, text(first, "/c:alert/c:identifier"),
                         text(first, "/c:alert/c:sent")])
    assert text(doc, "/c:alert/c:references") == expected
    assert text(doc, "/c:alert/c:sent") != text(first, "/c:alert/c:sent")


def test_cancel_says_all_clear_and_why() -> None:
    doc = parse(alert_to_cap(cleared(alert(), 30), ZONE))
    assert text(doc, "//c:info/c:urgency") == "Past"
    assert text(doc, "//c:info/c:responseType") == "AllClear"
    assert "no longer" in text(doc, "/c:alert/c:note")
    op = parse(alert_to_cap(updated(alert(), 30, state="resolved"), ZONE))
    assert "command centre" in text(op, "/c:alert/c:note")
    assert text(op, "/c:alert/c:sent") == "2026-11-23T08:45:00-00:00"


def test_explicit_references_sent_and_kind_are_used() -> None:
    refs = [CapRef(SENDER, "a1", RAISED), CapRef(SENDER, "a2", RAISED + timedelta(hours=1))]
    sent = datetime(2026, 11, 23, 17, 0, tzinfo=timezone(timedelta(hours=8)))
    xml = alert_to_cap(updated(alert(), 5), ZONE, sender=SENDER, references=refs, sent=sent,
                       kind="Update", web="http://127.0.0.1:8080/api/alerts/AL-000001")
    assert_valid(xml)
    doc = parse(xml)
    assert text(doc, "/c:alert/c:sent") == "2026-11-23T09:00:00-00:00"
    assert text(doc, "/c:alert/c:references") == (
        f"{SENDER},a1,2026-11-23T08:15:00-00:00 {SENDER},a2,2026-11-23T09:15:00-00:00")
    assert text(doc, "//c:info/c:web").endswith("/api/alerts/AL-000001")


def test_times_as_datetimes_work_too() -> None:
    a = alert(raised=RAISED, updated=RAISED + timedelta(seconds=5))
    assert_valid(alert_to_cap(a, ZONE))


@pytest.mark.parametrize(("change", "match"), [
    ({"severity": 0}, "severity"),
    ({"severity": None}, "severity"),
    ({"raised": None}, "raised"),
])
def test_alerts_cap_cannot_express_are_refused(change: dict[str, Any], match: str) -> None:
    with pytest.raises(CapError, match=match):
        alert_to_cap(alert(**change), ZONE)


@pytest.mark.parametrize("sender", ["", "two words", "a,b", "a<b", "a&b"])
def test_a_sender_with_forbidden_characters_is_refused(sender: str) -> None:
    with pytest.raises(CapError, match="sender"):
        alert_to_cap(alert(), ZONE, sender=sender)


def test_cap_time_needs_a_timezone_and_writes_utc_as_minus_zero() -> None:
    with pytest.raises(CapError, match="timezone"):
        cap_time(datetime(2026, 11, 23, 8, 0))  # naive on purpose
    assert cap_time(datetime(2026, 11, 23, 16, 0, 59, 999_999,
                             tzinfo=timezone(timedelta(hours=8)))) == "2026-11-23T08:00:59-00:00"


# --- area and polygons ------------------------------------------------------------------------


def pairs(polygon: str) -> list[tuple[float, float]]:
    """``lat,lon`` pairs back to (lon, lat) points."""
    out = []
    for pair in polygon.split():
        lat, lon = pair.split(",")
        out.append((float(lon), float(lat)))
    return out


def signed_area(points: list[tuple[float, float]]) -> float:
    return sum(x1 * y2 - x2 * y1 for (x1, y1), (x2, y2) in pairwise(points)) / 2


def test_polygon_is_lat_lon_closed_and_counter_clockwise() -> None:
    clockwise = Polygon(list(SQUARE.exterior.coords)[::-1])
    for shape in (SQUARE, clockwise):
        (polygon,) = cap_polygons(shape)
        pts = pairs(polygon)
        assert polygon.split()[0].startswith("31.31")  # latitude first
        assert pts[0] == pts[-1] and len(pts) >= 4
        assert signed_area(pts) > 0  # counter-clockwise, as GeoJSON (RFC 7946) has it
        assert Polygon(pts).symmetric_difference(SQUARE).area < 1e-12


def test_multipolygon_gives_one_polygon_per_part() -> None:
    xml = alert_to_cap(alert(), Zone("m", "Two parts", "fall_zone", MULTI))
    assert_valid(xml)
    polygons = texts(parse(xml), "//c:area/c:polygon")
    assert len(polygons) == 2
    assert MultiPolygon([Polygon(pairs(p)) for p in polygons]).symmetric_difference(
        MULTI).area < 1e-12


def test_holes_are_dropped_so_the_warning_covers_them() -> None:
    (polygon,) = cap_polygons(DONUT)
    assert Polygon(pairs(polygon)).contains(Point(120.6310, 31.3010))  # the courtyard


def test_far_away_zone_keeps_its_signs() -> None:
    (polygon,) = cap_polygons(FAR_AWAY)
    assert all(lat < 0 and lon < 0 for lon, lat in pairs(polygon))


def test_big_polygons_are_simplified_under_the_limit_and_keep_their_shape() -> None:
    round_zone = Point(120.62, 31.31).buffer(0.01, quad_segs=500)  # 2,000 vertices
    assert len(round_zone.exterior.coords) > 1000
    (polygon,) = cap_polygons(round_zone)
    pts = pairs(polygon)
    assert len(pts) <= MAX_POLYGON_POINTS
    assert Polygon(pts).is_valid
    assert Polygon(pts).symmetric_difference(round_zone).area / round_zone.area < 0.01


def test_the_districts_own_zones_all_give_valid_documents() -> None:
    from geo.load import load_zones
    for zone in load_zones(REPO / "data" / "zones" / "gusu.geojson"):
        xml = alert_to_cap(alert(zone_id=zone.id), zone)
        assert_valid(xml)
        assert texts(parse(xml), "//c:area/c:polygon"), zone.id


def test_unknown_zone_gives_an_area_without_geometry() -> None:
    xml = alert_to_cap(alert(zone_id="gone-01"), None)
    assert_valid(xml)
    doc = parse(xml)
    assert text(doc, "//c:area/c:areaDesc") == "gone-01"
    assert texts(doc, "//c:area/c:polygon") == []


def test_a_zone_too_small_for_six_decimals_becomes_a_circle() -> None:
    tiny = box(120.62, 31.31, 120.62 + 1e-7, 31.31 + 1e-7)
    xml = alert_to_cap(alert(), Zone("t", "Tiny", "fall_zone", tiny))
    assert_valid(xml)
    doc = parse(xml)
    assert texts(doc, "//c:area/c:polygon") == []
    (circle,) = texts(doc, "//c:area/c:circle")
    assert re.fullmatch(r"31\.31,120\.62 0\.00\d", circle)


def test_a_ring_that_rounding_ties_in_a_knot_becomes_a_circle() -> None:
    # Found by the property test below: at 6 decimals this ring of half-micro-degree steps
    # becomes 31.31,0 31.31,0.000001 31.309999,0 31.31,0 ... which crosses itself, clockwise.
    knot = Polygon([(2.4e-07, 31.31), (8.3e-07, 31.31000044), (3.8e-07, 31.31000021),
                    (0.0, 31.31000025), (-5e-07, 31.3100002), (-4.2e-07, 31.31000044),
                    (-3.4e-07, 31.31), (-3e-07, 31.30999958), (-3.6e-07, 31.3099998),
                    (0.0, 31.30999931), (3.5e-07, 31.30999922), (6.4e-07, 31.3099997)])
    assert cap_polygons(knot) == []
    xml = alert_to_cap(alert(), Zone("k", "Knot", "fall_zone", knot))
    assert_valid(xml)
    assert texts(parse(xml), "//c:area/c:circle")


@st.composite
def small_polygons(draw: st.DrawFn) -> Polygon:
    """Star-shaped (hence simple) polygons anywhere on Earth, from centimetres to 50 km."""
    lon = draw(st.floats(-179.0, 179.0))
    lat = draw(st.floats(-85.0, 85.0))
    scale = draw(st.sampled_from([1e-7, 1e-6, 1e-5, 1e-3, 0.05, 0.5]))
    n = draw(st.integers(3, 300))
    radii = draw(st.lists(st.floats(0.2, 1.0), min_size=n, max_size=n))
    start = draw(st.floats(0, 2 * math.pi))
    pts = [(lon + scale * r * math.cos(start + 2 * math.pi * i / n),
            lat + scale * r * math.sin(start + 2 * math.pi * i / n))
           for i, r in enumerate(radii)]
    if draw(st.booleans()):
        pts.reverse()  # clockwise input as well
    return Polygon(pts)


@settings(max_examples=150, deadline=None)
@given(small_polygons(), st.integers(1, 4), st.sampled_from(list(KINDS)))
def test_any_small_polygon_gives_a_valid_document(shape: Polygon, severity: int,
                                                  kind: str) -> None:
    xml = alert_to_cap({**KINDS[kind], "severity": severity}, Zone("z", "Z", "underpass", shape))
    assert_valid(xml)
    for polygon in texts(parse(xml), "//c:area/c:polygon"):
        pts = pairs(polygon)
        assert pts[0] == pts[-1] and 4 <= len(pts) <= MAX_POLYGON_POINTS + 1
        assert signed_area(pts) >= 0


# --- text from anywhere ------------------------------------------------------------------------

# Every character, surrogates and controls included, and the sequences terminals act on.
any_text = st.lists(
    st.one_of(st.characters(exclude_categories=()),
              st.sampled_from(["\x1b[31m", "\x9b2J", "\x1b]0;x\x07", "\r\n", "\ufffe", "\uffff",
                               "\x85", "\x7f", "\x00", "积水"])),
    max_size=30).map("".join)


def test_the_reported_title_gives_a_valid_document() -> None:
    # Issue 9: a camera's building_id put these characters into the title; lxml refused them.
    title = "Falling object from B-\u0007\u001b[31m at Tower B-0042 east facade"
    xml = alert_to_cap(alert(hazard="falling_object", title=title), ZONE)
    assert_valid(xml)
    assert text(parse(xml), "//c:info/c:headline") == \
        "Falling object from B-[31m at Tower B-0042 east facade"


@settings(max_examples=200, deadline=None)
@given(title=any_text, value=any_text, zone_name=any_text, zone_id=any_text,
       kind=st.sampled_from(list(KINDS)))
def test_any_text_in_any_field_gives_a_valid_document(title: str, value: str, zone_name: str,
                                                      zone_id: str, kind: str) -> None:
    # Titles and evidence come from devices, zone names and ids from the operator's files: none
    # of them may break the document, whatever the decoder and the config let through.
    a = {**KINDS[kind], "title": title, "zone_id": zone_id, "work_order_id": value,
         "evidence": [{"device_id": value, "building_id": value, "text": value}]}
    for zone in (Zone(zone_id, zone_name, "fall_zone", SQUARE), None):
        xml = alert_to_cap(a, zone)
        assert_valid(xml)
        doc = parse(xml)
        if xml_text(title):
            assert text(doc, "//c:info/c:headline") == xml_text(title)  # only those dropped
        assert xml_text(value) in text(doc, "//c:info/c:description") or kind.startswith("Cancel")


# --- the validator catches what the XSD does not ----------------------------------------------


def _replace(xml: bytes, tag: str, value: str | None) -> bytes:
    doc = parse(xml)
    (el,) = doc.xpath(f"//c:{tag}", namespaces=NS)
    if value is None:
        el.getparent().remove(el)
    else:
        el.text = value
    return bytes(etree.tostring(doc))


@pytest.mark.parametrize(("tag", "value", "problem"), [
    ("polygon", "31.31,120.62 31.32,120.62 31.32,120.63 31.31,120.63", "first and last"),
    ("polygon", "31.31,120.62 31.32,120.62 31.31,120.62", "fewer than 4"),
    ("polygon", "120.62,31.31 120.62,310.32 120.63,31.32 120.62,31.31", "in range"),
    ("polygon", "31.31;120.62 31.32;120.62 31.32;120.63 31.31;120.62", "in range"),
    ("references", "only-an-identifier", "sender,identifier,sent"),
    ("references", None, "without references"),
    ("identifier", "has space", "identifier"),
    ("sent", "2026-11-23T08:15:00Z", "sent"),
    ("sent", "2026-11-23T08:15:00.250-00:00", "sent"),
    ("urgency", "Soon", "urgency"),
])
def test_validator_reports_broken_documents(tag: str, value: str | None, problem: str) -> None:
    good = alert_to_cap(updated(alert(), 5), ZONE)
    assert validate_cap(good, cap_schema()) == []
    problems = validate_cap(_replace(good, tag, value), cap_schema())
    assert any(problem in p for p in problems), problems


def test_validator_reports_bad_circles_and_bad_xml() -> None:
    tiny = Zone("t", "Tiny", "fall_zone", box(120.62, 31.31, 120.6200001, 31.3100001))
    good = alert_to_cap(alert(), tiny)
    assert validate_cap(_replace(good, "circle", "31.31,120.62"), None) != []
    assert validate_cap(_replace(good, "circle", "31.31,120.62 -1"), None) != []
    assert validate_cap(b"<alert", None)[0].startswith("not well-formed")
