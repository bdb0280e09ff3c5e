"""Residents' appeals on the real service: the broker, the database and HTTP.

Appeals merge into the incident the sensors see and are counted, not multiplied; an appeal that
matches nothing opens an incident of its own, routed like a grid report, and the nearest grid
worker is asked to check; a resident's status says what the sensors and the team say now, and
``closed`` only after the verified close; the hotline form records the operator; the public
intake survives a flood.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from citywatch.config import Config, load_config
from tests.fix_users import login
from tests.integration.test_pipeline_e2e import (
    REPO,
    Running,
    now_iso,
    publish_all,
    telemetry,
    wait_for,
)

pytestmark = pytest.mark.integration

GAUGE, ZONE = "wl-01", "up-01"  # the Renmin Road underpass (north): red from 25 cm
AT_UNDERPASS = (120.61505, 31.33235)  # by the gauges, inside up-01
# Grid cell 01 (Baiyangwan), far from any waterlogging zone; grid-01 is its worker.
CELL_01 = (120.5512, 31.3773)
OPEN311 = "/open311/v2/requests.json"


@pytest.fixture(scope="module")
def config() -> Config:
    return load_config(REPO / "config.yaml", env={})


@pytest.fixture
def running(config: Config, broker_url: str, fresh_db_url: str) -> Iterator[Running]:
    r = Running(config, broker_url, fresh_db_url, f"citywatch-appeal-{uuid.uuid4().hex[:8]}")
    r.start()
    yield r
    r.stop()


_seq = iter(range(100, 10_000_000))


def flood_the_underpass(r: Running, broker_url: str, depth: float = 31.0) -> dict[str, Any]:
    publish_all(broker_url, [(f"city/water/{GAUGE}/telemetry", telemetry(next(_seq), depth))])
    alerts = wait_for("an alert at the underpass",
                      lambda: r.get("/api/alerts", zone_id=ZONE, state="active"), 15)
    return dict(alerts[0])


def post(r: Running, **form: Any) -> httpx.Response:
    """A resident's GeoReport request: no login."""
    assert r.service is not None
    return httpx.post(r.service.url + OPEN311, data=form, timeout=10)


def public(r: Running, appeal_id: str) -> dict[str, Any]:
    assert r.service is not None
    got = httpx.get(f"{r.service.url}/open311/v2/requests/{appeal_id}.json", timeout=10)
    assert got.status_code == 200, got.text
    body = got.json()
    assert len(body) == 1
    return dict(body[0])


def ack(broker_url: str, order_id: str, status: str, note: str = "") -> None:
    publish_all(broker_url, [("city/dispatch/drainage-1/ack", json.dumps(
        {"work_order_id": order_id, "status": status, "ts": now_iso(), "note": note}).encode())])


def test_appeals_merge_into_the_sensors_incident_counted_not_multiplied(
        running: Running, broker_url: str) -> None:
    alert = flood_the_underpass(running, broker_url)
    orders_before = len(running.get("/api/work-orders"))
    said = [  # five appeals from three callers, in Chinese and English, one by address only
        ({"description": "人民路地道积水很深，车子过不去", "phone": "138 0000 0001"}, AT_UNDERPASS),
        ({"description": "Renmin Road underpass flooded, water up to the wheels",
          "phone": "13800000002"}, (120.61520, 31.33250)),
        ({"description": "人民路北地道又淹了", "phone": "+8613800000001".removeprefix("+86")},
         None),
        ({"description": "地道里的水还没退", "phone": "13800000003"}, (120.61490, 31.33210)),
        ({"description": "water under the railway bridge, cars stuck",
          "phone": "13800000002"}, AT_UNDERPASS),
    ]
    ids = []
    for fields, where in said:
        form = {"service_code": "waterlogging", **fields}
        form.update({"long": str(where[0]), "lat": str(where[1])} if where
                    else {"address_string": "人民路北地道"})
        got = post(running, **form)
        assert got.status_code == 201, got.text
        ids.append(got.json()[0]["service_request_id"])
    listing = running.get("/api/appeals", alert_id=alert["id"])
    assert (listing["appeals"], listing["callers"]) == (5, 3)
    assert sorted(i["id"] for i in listing["items"]) == sorted(ids)
    # Outside the district, or nowhere it knows: GeoReport's 404, with the reason.
    outside = post(running, service_code="waterlogging", lat="40.7", long="-74.0")
    assert outside.status_code == 404
    assert "outside the district" in outside.json()[0]["description"]
    assert all(i["work_order_id"] == alert["work_order_id"] for i in listing["items"])
    # One incident, one order: the appeals are counted on it, not opened again.
    assert len(running.get("/api/work-orders")) == orders_before
    assert running.get(f"/api/alerts/{alert['id']}")["duplicates"] == 5
    order = running.get(f"/api/work-orders/{alert['work_order_id']}")
    assert order["duplicates"] == 5
    assert sum("appeal AP-" in h["reason"] for h in order["history"]) == 5
    # The same submission again (a double tap): the same id, counted, not stored again.
    again = post(running, service_code="waterlogging", description=said[0][0]["description"],
                 phone=said[0][0]["phone"], long=str(AT_UNDERPASS[0]), lat=str(AT_UNDERPASS[1]))
    assert again.status_code == 200
    assert again.json()[0]["service_request_id"] == ids[0]
    assert running.get("/api/appeals", alert_id=alert["id"])["appeals"] == 5
    funnel = running.get("/api/funnel")
    assert (funnel["appeals"], funnel["appeal_callers"], funnel["appeal_incidents"],
            funnel["appeal_orders"], funnel["appeal_resubmissions"]) == (5, 3, 1, 1, 1)
    # What a resident sees: the count and the reading, never another caller's words or number.
    seen = public(running, ids[-1])
    assert "5 appeals from 3 callers, one incident" in seen["status_notes"]
    assert re.search(r"water 31 cm at \d\d:\d\d", seen["status_notes"]), seen["status_notes"]
    text = json.dumps(seen, ensure_ascii=False)
    assert "13800000" not in text and "车子过不去" not in text and seen["description"] is None
    assert "5次诉求、3位来电人" in seen["status_notes_zh"]


def test_an_unmatched_appeal_opens_a_routed_incident_and_asks_the_nearest_grid_worker(
        running: Running, broker_url: str) -> None:
    # The grid worker of cell 01 is on patrol there (its phone says where it is).
    publish_all(broker_url, [("city/grid/grid-01/telemetry", json.dumps(
        {"ts": now_iso(), "seq": next(_seq), "values": {"battery_pct": 80.0},
         "loc": [CELL_01[0] + 0.001, CELL_01[1]]}).encode())])
    wait_for("the worker's position stored", lambda: running.sql(
        "SELECT 1 FROM telemetry WHERE device_id = 'grid-01'"), 10)
    got = post(running, service_code="waterlogging", long=str(CELL_01[0]), lat=str(CELL_01[1]),
               description="小区门口积水到膝盖了", phone="13900000001")
    assert got.status_code == 201, got.text
    appeal = running.get(f"/api/appeals/{got.json()[0]['service_request_id']}")
    assert appeal["alert_id"] and appeal["work_order_id"], appeal
    assert "opened an incident of its own in Grid cell 01" in appeal["how"]
    alert = running.get(f"/api/alerts/{appeal['alert_id']}")
    assert alert["zone_id"] == "cell-01"
    assert alert["title"].startswith("Residents report waterlogging in Grid cell 01")
    order = running.get(f"/api/work-orders/{appeal['work_order_id']}")
    # Routed as a grid report in a grid cell is (config.yaml routing).
    assert (order["department"], order["team_id"]) == ("gusu-grid-centre", "grid-centre-1")
    assert any("on-the-spot check asked of grid worker grid-01" in h["reason"]
               for h in order["history"])
    assert running.sql("SELECT count(*) FROM dispatches WHERE work_order_id = %s AND "
                       "team_id = 'grid-01'", appeal["work_order_id"]) == [(1,)]
    # A neighbour's appeal a little later joins it: no second incident.
    second = post(running, service_code="waterlogging", long=str(CELL_01[0] + 0.0004),
                  lat=str(CELL_01[1]), description="门口的水很深", phone="13900000002")
    joined = running.get(f"/api/appeals/{second.json()[0]['service_request_id']}")
    assert joined["alert_id"] == appeal["alert_id"]
    assert (joined["appeals"], joined["callers"]) == (2, 2)
    assert "A grid worker has been asked to check" in joined["reply"]["en"]


def test_a_resident_sees_the_real_status_and_closed_only_after_the_verified_close(
        running: Running, broker_url: str) -> None:
    alert = flood_the_underpass(running, broker_url)
    order_id = alert["work_order_id"]
    got = post(running, service_code="waterlogging", long=str(AT_UNDERPASS[0]),
               lat=str(AT_UNDERPASS[1]), description="地道积水", email="li@example.org")
    appeal_id = got.json()[0]["service_request_id"]
    seen = public(running, appeal_id)
    assert seen["status"] == "open"
    assert "A team has been sent at" in seen["status_notes"]
    assert seen["related_request_id"] == order_id
    # The team on site: the resident hears it, not the team's name or its note.
    ack(broker_url, order_id, "on_site", "pumps running, Wang Wei in charge")
    notes = wait_for("the team on site in the status", lambda: (
        n if "on site since" in (n := public(running, appeal_id)["status_notes"]) else None))
    assert "Wang" not in notes and "drainage" not in notes and "pumps" not in notes
    # "Fixed" while the gauge still reads 31 cm is not believed, and the resident is told.
    ack(broker_url, order_id, "resolved", "done")
    wait_for("the refused fix in the status", lambda: "was not accepted" in public(
        running, appeal_id)["status_notes"])
    assert public(running, appeal_id)["status"] == "open"
    # The water goes; the team reports it fixed: still open until the close is verified.
    publish_all(broker_url, [(f"city/water/{GAUGE}/telemetry", telemetry(next(_seq), 0.0, 1))])
    wait_for("the alert cleared", lambda: running.get(
        f"/api/alerts/{alert['id']}")["state"] == "resolved", 15)
    ack(broker_url, order_id, "resolved", "pumped out")
    wait_for("the order resolved", lambda: running.get(
        f"/api/work-orders/{order_id}")["state"] == "resolved", 10)
    seen = public(running, appeal_id)
    assert seen["status"] == "open"
    assert "reported it fixed" in seen["status_notes"]
    assert re.search(r"water 0 cm at \d\d:\d\d", seen["status_notes"]), seen["status_notes"]
    # The operator closes it (verified: the sensors are dry): now it is closed.
    closed = running.post(f"/api/work-orders/{order_id}/close", {"reason": "dry, checked"})
    assert closed.status_code == 200, closed.text
    seen = public(running, appeal_id)
    assert seen["status"] == "closed"
    assert re.search(r"Closed at \d\d:\d\d after the fix was confirmed", seen["status_notes"])
    zh = running.get(f"/api/appeals/{appeal_id}/reply", lang="zh")
    assert zh["status"] == "closed" and "办结" in zh["text"]
    assert "li@example.org" not in json.dumps(seen)


def test_the_hotline_form_records_the_operator_and_resolves_typed_addresses(
        running: Running) -> None:
    body = {"text": "乐桥路口红绿灯坏了，车堵成一片", "address": "人民路干将路口",
            "phone": "13700000001"}
    got = running.post("/api/appeals", body)
    assert got.status_code == 201, got.text
    a = got.json()
    assert (a["category"], a["place"], a["actor"]) == (
        "traffic", "Renmin Road x Ganjiang Road (Leqiao)", "test-operator")
    assert a["contact"] == {"phone": "13700000001"}
    assert a["reply"]["zh"].startswith("人民路与干将路")
    # A viewer reads appeals but takes no calls, and sees no caller's number.
    assert running.service is not None
    viewer = login(running.service.url, running.db_url, "viewer")
    try:
        assert viewer.post("/api/appeals", json=body).status_code == 403
        assert "contact" not in viewer.json_of(f"/api/appeals/{a['id']}")
    finally:
        viewer.close()
    # An address the district does not know is refused with the reason.
    bad = running.post("/api/appeals", {"text": "积水", "address": "人民路"})
    assert bad.status_code == 409
    assert "give a crossing road, a landmark, or a point on the map" in bad.json()["detail"]
    geo = running.get("/api/geocode", q="北寺塔")
    assert geo["resolved"] and geo["label"] == "Beisi Pagoda"


# --- a flood --------------------------------------------------------------------------------


@pytest.fixture
def guarded(config: Config, broker_url: str, fresh_db_url: str) -> Iterator[Running]:
    """The service with small intake limits: 20 a minute per address, 400 in all (the overall
    limit itself: tests/unit/test_appeal_intake.py)."""
    cfg = config.model_copy(update={"appeals": config.appeals.model_copy(update={
        "per_address_per_min": 20, "overall_per_min": 400})})
    r = Running(cfg, broker_url, fresh_db_url, f"citywatch-flood-{uuid.uuid4().hex[:8]}")
    r.start()
    yield r
    r.stop()


def _hammer(url: str, source: str, n: int, same: bool, out: Counter[Any],
            lock: threading.Lock) -> None:
    transport = httpx.HTTPTransport(local_address=source)
    with httpx.Client(transport=transport, timeout=30) as client:
        for i in range(n):
            text = "积水" if same else f"积水 {source} {i}"
            r = client.post(url, data={"service_code": "waterlogging", "description": text,
                                       "long": str(CELL_01[0]), "lat": str(CELL_01[1])})
            key: Any = (r.status_code, source)
            with lock:
                out[key] += 1
                if r.status_code == 429:
                    out["retry_after_ok"] += r.headers.get("Retry-After", "").isdigit()


def test_the_public_intake_survives_a_flood(guarded: Running, broker_url: str) -> None:
    r = guarded
    assert r.service is not None
    url = r.service.url + OPEN311
    out: Counter[Any] = Counter()
    lock = threading.Lock()
    # One address hammering (half of it the same submission over and over) and 40 addresses
    # at once: 2,000 + 320 requests from 12 threads.
    jobs = [("127.0.0.1", 250, k % 2 == 0) for k in range(8)]
    jobs += [(f"127.0.0.{10 + k}", 8, False) for k in range(40)]
    threads = [threading.Thread(target=lambda js=js: [_hammer(url, s, n, same, out, lock)
                                                      for s, n, same in js])
               for js in (jobs[0:2], jobs[2:4], jobs[4:6], jobs[6:8],
                          *(jobs[8 + 5 * i: 13 + 5 * i] for i in range(8)))]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    # Meanwhile the sensors' pipeline and the API keep working.
    alert = flood_the_underpass(r, broker_url)
    assert httpx.get(r.service.url + "/api/health", timeout=10).status_code == 200
    for t in threads:
        t.join(timeout=600)
    elapsed = time.monotonic() - t0
    sent = sum(v for k, v in out.items() if isinstance(k, tuple))
    codes = Counter[int]()
    for k, v in out.items():
        if isinstance(k, tuple):
            codes[k[0]] += v
    print(f"\nflood: {sent} requests in {elapsed:.1f} s ({sent / elapsed:.0f}/s): {dict(codes)}")
    assert sent == 2320
    assert set(codes) <= {200, 201, 429}, codes  # no 5xx, no other refusal
    assert out["retry_after_ok"] == codes[429]
    stored = r.sql("SELECT count(*), coalesce(sum(resubmitted), 0) FROM appeals")[0]
    # Every 201 is one stored appeal, every 200 a counted resubmission; nothing else stored.
    assert stored == (codes[201], codes[200])
    windows = 1 + int(elapsed // 60)
    from_one = out[(201, "127.0.0.1")] + out[(200, "127.0.0.1")]
    assert from_one <= 20 * windows
    assert codes[201] + codes[200] <= 400 * windows
    assert out[(201, "127.0.0.10")] == 8, "a resident next to the flood is not refused"
    # A real appeal still gets through: on the hotline, which the public limits do not count,
    # and from an address that was quiet.
    hotline = r.post("/api/appeals", {"text": "地道积水很深", "lat": AT_UNDERPASS[1],
                                      "long": AT_UNDERPASS[0], "phone": "13600000001"})
    assert hotline.status_code == 201, hotline.text
    assert hotline.json()["alert_id"] == alert["id"]
    quiet = httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.200"),
                         base_url=r.service.url, timeout=10)
    try:
        first = quiet.post(url, data={"service_code": "waterlogging", "description": "积水",
                                      "long": str(AT_UNDERPASS[0]), "lat": str(AT_UNDERPASS[1])})
        assert first.status_code == 201, first.text
        assert quiet.get(f"/open311/v2/requests/{first.json()[0]['service_request_id']}.json"
                         ).json()[0]["related_request_id"] == alert["work_order_id"]
    finally:
        quiet.close()


def test_old_appeals_are_pruned_with_their_contact_details(running: Running) -> None:
    from datetime import UTC, datetime, timedelta

    import psycopg

    from alerts import appeal_store
    got = post(running, service_code="other", long=str(CELL_01[0]), lat=str(CELL_01[1]),
               description="noise", phone="13500000001")
    assert got.status_code == 201
    with psycopg.connect(running.db_url, autocommit=True) as conn:
        assert appeal_store.prune(conn, datetime.now(UTC) - timedelta(days=1)) == 0
        assert appeal_store.prune(conn, datetime.now(UTC) + timedelta(seconds=1)) == 1
    assert running.sql("SELECT count(*) FROM appeals") == [(0,)]
