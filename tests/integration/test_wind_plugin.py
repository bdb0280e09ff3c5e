"""A fourth hazard as a plug-in, end to end on the real broker and database: the README's wind
gauge on the Global 188 roof (``examples/wind/wind_gauge.py``) and the high-wind-at-height
hazard (``examples/wind/wind_hazard.py``), both listed under ``plugins:`` in the config. A gust
over the threshold becomes an alert in the fall zones below, a work order for building
management, a dispatch, a CAP document of its own event, and labels in the console's API; calm
clears it. No file of the platform names the hazard."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import yaml

from citywatch.config import Config, parse_config
from rules import registry
from tests.integration.test_pipeline_e2e import REPO, Collector, Running, publish_all, wait_for
from tests.integration.test_standards_api import NS, cap_of, one

pytestmark = pytest.mark.integration

WIND_DIR = REPO / "examples" / "wind"
GAUGE, ZONE, HAZARD = "wind-01", "fz-03", "wind_at_height"  # fz-03: Global 188 Tower A
TOPIC = f"city/wind/{GAUGE}/telemetry"


@pytest.fixture(scope="module")
def config() -> Iterator[Config]:
    """config.yaml plus the README's lines: the two plug-ins, the gauge and the route."""
    data = yaml.safe_load((REPO / "config.yaml").read_text(encoding="utf-8"))
    data["plugins"] = ["wind_gauge:WindGauge", "wind_hazard:WIND_AT_HEIGHT"]
    data["devices"].append({"id": GAUGE, "kind": "wind", "position": [120.665166, 31.315827],
                            "name": "Global 188 roof"})
    data["routing"].insert(0, {"hazard": HAZARD, "zone_type": "fall_zone",
                               "department": "gusu-building", "team": "building-mgmt-1"})
    sys.path.insert(0, str(WIND_DIR))
    try:
        yield parse_config(data, "config.yaml", REPO, {})
    finally:
        registry.unregister(HAZARD)
        sys.path.remove(str(WIND_DIR))
        for module in ("wind_hazard", "wind_gauge"):
            sys.modules.pop(module, None)


@pytest.fixture
def running(config: Config, broker_url: str, fresh_db_url: str) -> Iterator[Running]:
    r = Running(config, broker_url, fresh_db_url, f"citywatch-wind-{uuid.uuid4().hex[:8]}")
    r.start()
    yield r
    r.stop()


def gusts(seq: int, gust: float) -> bytes:
    ts = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return (f'{{"ts": "{ts}", "seq": {seq}, "values": {{"wind_speed_m_s": {gust / 1.4:.1f}, '
            f'"wind_gust_m_s": {gust}, "wind_dir_deg": 120}}}}').encode()


def test_a_gust_on_the_roof_warns_the_fall_zone_below_end_to_end(running: Running,
                                                                 broker_url: str) -> None:
    dispatch = Collector(broker_url, "city/dispatch/#")
    zone_state = Collector(broker_url, f"city/alerts/{ZONE}")
    try:
        publish_all(broker_url, [(TOPIC, gusts(1, 26.0))])
        alerts = wait_for("a wind alert in the API", lambda: running.get(
            "/api/alerts", state="active", zone_id=ZONE, hazard=HAZARD), timeout=15)
        alert = alerts[0]
        assert alert["severity"] == 1  # 26 m/s: Beaufort 10 and over
        assert "gusts 26.0 m/s at wind-01" in alert["title"]
        assert alert["evidence"][0]["wind_gust_m_s"] == 26.0

        order = running.get(f"/api/work-orders/{alert['work_order_id']}")
        assert (order["department"], order["team_id"]) == ("gusu-building", "building-mgmt-1")
        sent = wait_for("a dispatch", lambda: dispatch.on("city/dispatch/building-mgmt-1"))
        assert sent[0]["work_order_id"] == order["id"]
        assert sent[0]["instructions"].startswith("Secure or take in loose objects")
        state = wait_for("the zone's retained state", lambda: [
            s for s in zone_state.on("city/alerts/") if HAZARD in s.get("hazards", {})])
        assert state[-1]["hazards"][HAZARD] == 1

        _, doc = cap_of(running, alert["id"])  # valid against the CAP 1.2 schema
        assert one(doc, "//c:info/c:event") == "High wind at height"
        assert doc.xpath("//c:info/c:category/text()", namespaces=NS) == ["Met", "Safety"]
        assert one(doc, "//c:info/c:severity") == "Extreme"

        labels = {h["name"]: h for h in running.get("/api/hazards")["hazards"]}
        assert labels[HAZARD]["label"] == {"en": "High wind at height", "zh": "高空大风"}
        zone = next(f for f in running.get("/api/zones")["features"] if f["id"] == ZONE)
        assert zone["properties"]["hazards"] == ["falling_object", HAZARD]
        assert zone["properties"]["risk"][HAZARD] == 1
        series = running.get(f"/api/zones/{ZONE}/series")
        assert series["zone_type"] == "fall_zone"

        publish_all(broker_url, [(TOPIC, gusts(2, 5.0))])
        cleared = wait_for("the wind alert to clear", lambda: [
            a for a in running.get("/api/alerts", zone_id=ZONE, hazard=HAZARD) if a["cleared"]])
        assert cleared[0]["id"] == alert["id"]
    finally:
        dispatch.close()
        zone_state.close()


def test_an_unknown_hazard_in_the_api_is_refused(running: Running) -> None:
    resp: httpx.Response = running.client.get("/api/alerts", params={"hazard": "hail"})
    assert resp.status_code == 422
    body: Any = resp.json()
    assert HAZARD in str(body)  # the refusal lists the hazards, the plug-in's among them
