"""Hostile text from devices, all the way: every string field a device controls (ids in topics,
event ids, building labels, subtypes, categories, report text, order ids, notes, states), through
the decoder, the rules of the default district, the alert's title and evidence, to every CAP
document the service would serve for it (Alert, Update, Cancel), validated against the packaged
OASIS schema. Whatever a device sends is refused with a reason that is safe to log, or it arrives
clean and every document stays valid."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import event, given, settings
from hypothesis import strategies as st

from alerts.cap import alert_to_cap, validate_cap
from citywatch.config import load_config
from citywatch.service import build_decoder, build_engine, build_placement
from geo.load import load_zones
from rules.base import AlertChange
from rules.engine import EngineState
from sensing.models import DispatchAck, Event, Rejection, Status
from tests.cap_schema import REPO, cap_schema

CONFIG = load_config(REPO / "config.yaml", env={})
ZONES = load_zones(CONFIG.zones_path)
BY_ID = {z.id: z for z in ZONES}
PLACEMENT = build_placement(CONFIG, ZONES)
ENGINE = build_engine(CONFIG, ZONES, PLACEMENT)
DECODER = build_decoder(CONFIG)

NOW = datetime(2026, 11, 23, 8, 20, tzinfo=UTC)
TS = "2026-11-23T08:15:00Z"
FALL_ZONE = next(z for z in ZONES if z.type == "fall_zone")
IMPACT = list(FALL_ZONE.geometry.representative_point().coords[0])
CELL = next(z for z in ZONES if z.type == "grid_cell")
IN_CELL = list(CELL.geometry.representative_point().coords[0])

# What may be refused, and why: a control character in an identifier, a value not among the
# choices (or empty once cleaned), a lone surrogate, NUL, a topic that is not a device topic.
REFUSALS = {"control_character", "out_of_range", "not_utf8", "nul_character", "bad_topic",
            "unknown_device"}
# What no accepted field may keep; report text and notes keep their tabs and line feeds.
CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ufffe\uffff\x1b]")

hostile = st.lists(
    st.one_of(st.characters(exclude_categories=()),
              st.sampled_from(["\x1b[31m", "\x9b2J", "\x1b]0;owned\x07", "\r\n", "\n", "\t",
                               "\ufffe", "\uffff", "\x85", "\x7f", "\u0007", "积水"])),
    min_size=1, max_size=24).map("".join)


# Each kind's normal message; "device" is the id in the topic.
NORMAL: dict[str, tuple[str, dict[str, Any]]] = {
    "camera": ("city/camera/{device}/event", {
        "device": "cam-01", "ts": TS, "event_id": "cam-01-000077", "type": "falling_object",
        "confidence": 0.95, "impact": IMPACT, "building_id": "B-0042", "floor": 17,
        "remark": "a field without a spec rides along"}),
    "traffic": ("city/traffic/{device}/event", {
        "device": "tf-01", "ts": TS, "event_id": "tf-01-5", "type": "incident",
        "subtype": "collision", "confidence": 0.9}),
    "grid": ("city/grid/{device}/event", {
        "device": "grid-01", "ts": TS, "event_id": "grid-01-12", "type": "report",
        "category": "waterlogging", "loc": IN_CELL, "text": "standing water, about 20 cm"}),
    "ack": ("city/dispatch/{device}/ack", {
        "device": "drainage-1", "work_order_id": "WO-000001", "status": "on_site", "ts": TS,
        "note": "pumping"}),
    "status": ("city/rain/{device}/status", {"device": "rg-01", "state": "online"}),
}


@st.composite
def messages(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    """A normal message with one string field (sometimes all of them) made hostile."""
    # Camera labels and report text reach alerts as they are: drawn three times as often.
    topic, normal = NORMAL[draw(st.sampled_from(["camera", "grid"] * 3 + ["traffic", "ack",
                                                                        "status"]))]
    body = dict(normal)
    fields = [k for k, v in body.items() if isinstance(v, str) and k not in ("ts", "type")]
    mode = draw(st.integers(0, 9))
    if mode == 0:
        attacked = fields
    elif mode == 1:
        attacked = ["device"]  # rarely alone: the topic's regex refuses it before anything else
    else:
        attacked = [draw(st.sampled_from([f for f in fields if f != "device"]))]
    for name in attacked:
        bad = draw(hostile)
        body[name] = draw(st.sampled_from([bad, body[name] + bad, bad + body[name]]))
    return topic.format(device=body.pop("device")), body


def as_stored(ch: AlertChange, n: int) -> dict[str, Any]:
    """The change as ``alerts.store.get_alert`` returns the alert it opens (evidence is jsonb)."""
    raised = ch.ts.isoformat().replace("+00:00", "Z")
    return {"id": f"AL-{n:06d}", "hazard": ch.hazard, "severity": int(ch.level or 4),
            "state": "active", "zone_id": ch.zone_id, "raised": raised, "updated": raised,
            "cleared": None, "title": ch.title, "work_order_id": f"WO-{n:06d}",
            "evidence": json.loads(json.dumps(list(ch.evidence), default=str))}


def versions(a: dict[str, Any]) -> list[dict[str, Any]]:
    """The alert as first raised, updated, cleared by the sensors and resolved by an operator."""
    later = (datetime.fromisoformat(a["raised"]) + timedelta(minutes=5)).isoformat()
    return [a, {**a, "updated": later}, {**a, "updated": later, "cleared": later,
                                         "state": "resolved"},
            {**a, "updated": later, "state": "resolved"}]


def strings(body: Any) -> list[str]:
    return [v for v in body.values() if isinstance(v, str)]


@settings(max_examples=500, deadline=None)
@given(messages())
def test_hostile_device_text_is_refused_or_reaches_valid_cap_documents(
        message: tuple[str, dict[str, Any]]) -> None:
    topic, body = message
    payload = json.dumps(body, ensure_ascii=False).encode("utf-8", "surrogatepass")
    result = DECODER.decode(topic, payload, NOW)
    event(type(result).__name__)
    if isinstance(result, Rejection):
        event(f"refused: {result.reason}")
        assert result.reason in REFUSALS, (result.reason, result.detail)
        assert result.detail.isprintable(), result.detail  # safe in a log line
        return
    if isinstance(result, Status):
        assert result.state == "online"
        return
    if isinstance(result, DispatchAck):
        assert not CONTROL.search(result.work_order_id)
        assert not CONTROL.search(result.note.replace("\n", "").replace("\t", ""))
        return
    assert isinstance(result, Event)
    spec_fields = {k: v for k, v in result.body.items() if k != "remark"}
    for value in strings(spec_fields):
        assert not CONTROL.search(value.replace("\n", "").replace("\t", "")), value
    state, changes = ENGINE.evaluate_many(EngineState(), [PLACEMENT.place(result)],
                                          now=result.ts)
    changes += ENGINE.flush(state)[1]
    raised = [c for c in changes if c.level is not None]
    if result.kind in ("camera", "grid"):
        assert raised, "the message raised no alert: the documents below would prove nothing"
    event(f"{result.kind}: {len(raised)} alert(s) as CAP")
    for n, change in enumerate(raised, 1):
        for version in versions(as_stored(change, n)):
            xml = alert_to_cap(version, BY_ID.get(change.zone_id))
            problems = validate_cap(xml, cap_schema())
            assert problems == [], "\n".join(problems) + "\n" + xml.decode()
    # What the device said, cleaned, is what people see.
    if result.kind == "camera":
        assert any(result.body["building_id"] in c.title for c in raised)
    if result.kind == "grid":
        assert any(e.get("text") == result.body["text"][:200] for c in raised for e in c.evidence)
