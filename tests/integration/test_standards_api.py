"""CAP 1.2 and Open311 GeoReport v2 on the real service: a gauge reading makes an alert and a
work order, which come out as a schema-valid CAP document and as a GeoReport service request."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from lxml import etree

from alerts.cap import CAP_NS, validate_cap
from alerts.open311 import PUBLIC_NOTES
from citywatch.config import Config, load_config
from geo.load import load_zones
from simulators.runner import Simulation
from tests.cap_schema import cap_schema
from tests.integration.test_pipeline_e2e import (
    REPO,
    Running,
    now_iso,
    publish_all,
    telemetry,
    wait_for,
)

pytestmark = pytest.mark.integration

# wl-01 gauges the Renmin Road underpass (up-01): yellow at 10 cm, red at 25 cm.
GAUGE, ZONE = "wl-01", "up-01"
NS = {"c": CAP_NS}


@pytest.fixture(scope="module")
def config() -> Config:
    return load_config(REPO / "config.yaml", env={})


@pytest.fixture
def running(config: Config, broker_url: str, fresh_db_url: str) -> Iterator[Running]:
    r = Running(config, broker_url, fresh_db_url, f"citywatch-std-{uuid.uuid4().hex[:8]}")
    r.start()
    yield r
    r.stop()


def get(r: Running, path: str, **params: Any) -> httpx.Response:
    """GET as the test operator under /api; as anybody (no login) elsewhere."""
    assert r.service is not None
    if path.startswith("/api/"):
        return r.client.get(path, params=params)
    return httpx.get(r.service.url + path, params=params, timeout=10)


def cap_of(r: Running, alert_id: str) -> tuple[bytes, Any]:
    resp = get(r, f"/api/alerts/{alert_id}/cap")
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("application/cap+xml")
    problems = validate_cap(resp.content, cap_schema())
    assert problems == [], "\n".join(problems) + "\n" + resp.text
    return resp.content, etree.fromstring(resp.content)


def one(doc: Any, path: str) -> str:
    (value,) = doc.xpath(f"{path}/text()", namespaces=NS)
    return str(value)


def test_cap_goes_from_alert_to_update_to_cancel(running: Running, broker_url: str) -> None:
    topic = f"city/water/{GAUGE}/telemetry"
    publish_all(broker_url, [(topic, telemetry(1, 12.0, -360))])
    alert = wait_for("a yellow alert", lambda: running.get("/api/alerts", zone_id=ZONE))[0]
    _, first = cap_of(running, alert["id"])
    assert one(first, "/c:alert/c:msgType") == "Alert"
    assert one(first, "//c:info/c:severity") == "Moderate"
    assert one(first, "//c:info/c:urgency") == "Expected"
    assert one(first, "//c:area/c:geocode/c:value") == ZONE
    assert one(first, "//c:info/c:web").endswith(f"/api/alerts/{alert['id']}")
    assert one(first, "/c:alert/c:incidents") == alert["work_order_id"]
    original = ",".join(one(first, f"/c:alert/c:{t}") for t in ("sender", "identifier", "sent"))

    # Rising 8 cm a minute: faster would be a spike that device health refuses to trust.
    publish_all(broker_url, [(topic, telemetry(2, 20.0, -300)), (topic, telemetry(3, 28.0, -240))])
    wait_for("the alert to turn red", lambda: running.get(f"/api/alerts/{alert['id']}")[
        "severity"] == 1)
    _, update = cap_of(running, alert["id"])
    assert one(update, "/c:alert/c:msgType") == "Update"
    assert one(update, "//c:info/c:severity") == "Extreme"
    assert one(update, "/c:alert/c:references") == original
    assert one(update, "/c:alert/c:identifier") != one(first, "/c:alert/c:identifier")

    publish_all(broker_url, [(topic, telemetry(4, 1.0, -60))])
    wait_for("the alert to clear", lambda: running.get(f"/api/alerts/{alert['id']}")["cleared"])
    _, cancel = cap_of(running, alert["id"])
    assert one(cancel, "/c:alert/c:msgType") == "Cancel"
    assert one(cancel, "/c:alert/c:references") == original
    assert one(cancel, "//c:info/c:responseType") == "AllClear"

    assert get(running, "/api/alerts/AL-999999/cap").status_code == 404


def test_a_camera_building_id_with_control_characters_gives_a_valid_cap_document(
        running: Running, broker_url: str, config: Config) -> None:
    # Issue 9 as reported: this building_id reached the alert's title, and GET .../cap answered
    # 500 because lxml refuses the control characters.
    fall_zone = next(z for z in load_zones(config.zones_path) if z.type == "fall_zone")
    lon, lat = fall_zone.geometry.representative_point().coords[0]
    payload = json.dumps({"ts": now_iso(-5), "seq": 1, "event_id": "cam-01-hostile-1",
                          "type": "falling_object", "confidence": 0.93,
                          "building_id": "B-\u0007\u001b[31m", "floor": 17,
                          "impact": [lon, lat]})
    assert '"B-\\u0007\\u001b[31m"' in payload  # escaped in the JSON, as a device sends it
    publish_all(broker_url, [("city/camera/cam-01/event", payload.encode())])
    alert = wait_for("the falling-object alert",
                     lambda: running.get("/api/alerts", zone_id=fall_zone.id))[0]
    _, doc = cap_of(running, alert["id"])  # 200, and valid against the official schema
    assert "from B- " in alert["title"]  # cleaned by the decoder, not only in the document
    assert "from B- " in one(doc, "//c:info/c:headline")
    # jsonb orders the evidence's keys its own way: the label is followed by "," or ".".
    assert re.search(r"building_id B-[,.]", one(doc, "//c:info/c:description"))


def test_open311_services_requests_and_errors(running: Running, broker_url: str,
                                              config: Config) -> None:
    publish_all(broker_url, [(f"city/water/{GAUGE}/telemetry", telemetry(1, 31.5))])
    alert = wait_for("an alert", lambda: running.get("/api/alerts", zone_id=ZONE))[0]
    order = running.get(f"/api/work-orders/{alert['work_order_id']}")

    codes = [s["service_code"] for s in running.get("/open311/v2/services.json")]
    assert codes == ["waterlogging", "falling_object", "traffic"]

    listed = running.get("/open311/v2/requests.json")
    (req,) = [r for r in listed if r["service_request_id"] == order["id"]]
    assert req["status"] == "open"
    assert req["service_code"] == "waterlogging"
    assert req["description"] == order["title"]
    assert req["address_id"] == ZONE and req["address"]
    assert 31 < req["lat"] < 32 and 120 < req["long"] < 121
    # The department's name once the service passes departments to ApiDeps; its id until then.
    names = {d.id: d.name for d in config.departments}
    assert req["agency_responsible"] in (names[order["department"]], order["department"])
    assert req["requested_datetime"].endswith("Z")
    assert req["expected_datetime"] == order["resolve_by"][:19] + "Z"
    assert req["status_notes"] == PUBLIC_NOTES["open"]
    assert req["zipcode"] is None and req["media_url"] is None

    assert running.get(f"/open311/v2/requests/{order['id']}.json") == [req]
    ids = [r["service_request_id"] for r in running.get(
        "/open311/v2/requests.json", service_request_id=f"{order['id']},WO-999999")]
    assert ids == [order["id"]]
    assert running.get("/open311/v2/requests.json", status="closed") == []
    assert running.get("/open311/v2/requests.json", status="open,closed") == listed
    assert running.get("/open311/v2/requests.json", service_code="traffic") == []
    assert running.get("/open311/v2/requests.json",
                       service_code="traffic,waterlogging") == listed
    later = (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert running.get("/open311/v2/requests.json", start_date=later) == []

    missing = get(running, "/open311/v2/requests/WO-999999.json")
    assert missing.status_code == 404
    assert missing.json() == [{"code": 404, "description": "no service request 'WO-999999'"}]
    for params in ({"status": "pending"}, {"start_date": "soon"},
                   {"start_date": "2026-01-01T00:00:00Z", "end_date": "2026-12-01T00:00:00Z"}):
        bad = get(running, "/open311/v2/requests.json", **params)
        assert bad.status_code == 400, params
        (err,) = bad.json()
        assert err["code"] == 400 and err["description"]


def test_every_cap_document_of_the_demo_scenario_validates(running: Running, broker_url: str,
                                                           config: Config) -> None:
    """The demo raises, escalates and clears all three hazards: every alert, in whatever state
    it ends, gives a document the official schema accepts."""
    start = datetime.now(UTC) - timedelta(minutes=45)
    sim = Simulation(config, "demo", seed=1, speed=None, start=start)
    # Grid workers' positions and camera heartbeats raise nothing: leave them out, for speed.
    items = [(t, p) for t, p in sim.messages_until(start + timedelta(minutes=40))
             if not t.startswith(("city/grid/", "city/camera/")) or t.endswith("/event")]
    publish_all(broker_url, items)
    wait_for("every message handled", lambda: running.get("/api/health")["counts"][
        "messages"] >= len(items), timeout=60)
    alerts = running.get("/api/alerts", limit=5000)
    assert {a["hazard"] for a in alerts} == {"waterlogging", "falling_object", "traffic"}
    kinds = set()
    for a in alerts:
        _, doc = cap_of(running, a["id"])
        kinds.add(one(doc, "/c:alert/c:msgType"))
    assert kinds >= {"Update", "Cancel"}, kinds
