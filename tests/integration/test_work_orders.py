"""Work orders on the real database, with a controllable clock: one order per incident, reopen
on return, refusal to close while wet, repeated and escalated dispatches, team answers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from shapely.geometry import Point, box

from alerts import store as alert_store
from alerts.policy import Office, Policy
from alerts.store import AckRefused, AlertStore, NotVerified, Route
from geo.zones import Zone
from rules.base import AlertChange
from rules.levels import Level
from sensing import store as sensing_store
from sensing.models import DispatchAck

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)

ZONES = {
    "gusu": Zone("gusu", "Gusu", "district", box(120.5, 31.2, 120.7, 31.4)),
    "st-02": Zone("st-02", "Pingjiang", "street", box(120.6, 31.3, 120.65, 31.35), "gusu"),
    "cell-07": Zone("cell-07", "Cell 7", "grid_cell", box(120.62, 31.31, 120.63, 31.32), "st-02"),
    "up-01": Zone("up-01", "Renmin Rd underpass", "underpass",
                  box(120.621, 31.311, 120.622, 31.312), "cell-07"),
    "fz-01": Zone("fz-01", "Tower fall zone", "fall_zone",
                  box(120.625, 31.315, 120.626, 31.316), "cell-07"),
}
OFFICES = [
    Office("grid-centre", "grid", None, "grid-team"),
    Office("office-st-01", "street", "st-01", "street-01-team"),
    Office("office-st-02", "street", "st-02", "street-02-team"),
    Office("drainage", "district", None, "drainage-1"),
    Office("emergency", "municipal", None, "emergency-duty"),
]
POLICY = Policy(reopen_window=timedelta(minutes=30), dispatch_retry=timedelta(minutes=2),
                dispatch_attempts=3)


def route_to(department: str, team: str) -> Any:
    return lambda _hazard, _zone_type, _level: Route(department, team)


@pytest.fixture
def conn(fresh_db_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(fresh_db_url, autocommit=True) as c:
        sensing_store.migrate(c)
        alert_store.migrate(c)
    with psycopg.connect(fresh_db_url) as c:
        yield c


def apply(conn: psycopg.Connection[Any], s: AlertStore, *changes: AlertChange) -> None:
    with conn.transaction(), conn.cursor() as cur:
        s.apply_changes(cur, changes)


def wet(level: Level | None, minute: float, zone: str = "up-01",
        hazard: str = "waterlogging") -> AlertChange:
    return AlertChange(zone, hazard, level, T0 + timedelta(minutes=minute),
                       f"{hazard} at {zone}", ({"depth_cm": 30},))


def order(conn: psycopg.Connection[Any], order_id: str = "WO-000001") -> dict[str, Any]:
    return alert_store.get_work_order(conn, order_id)


def dispatches(conn: psycopg.Connection[Any]) -> list[tuple[str, dict[str, Any]]]:
    rows = conn.execute("SELECT topic, payload FROM outbox WHERE topic LIKE 'city/dispatch/%' "
                        "ORDER BY id").fetchall()
    return [(t, json.loads(p)) for t, p in rows]


def test_escalation_climbs_all_four_levels_then_flags(conn: psycopg.Connection[Any]) -> None:
    s = AlertStore(ZONES, route_to("grid-centre", "grid-team"), POLICY, OFFICES)
    apply(conn, s, wet(Level.RED, 0))
    assert order(conn)["escalation_level"] == "grid"
    now = T0
    seen = []
    for _ in range(3):
        now = datetime.fromisoformat(order(conn)["respond_by"].replace("Z", "+00:00"))
        s.check(conn, now + timedelta(seconds=1))
        o = order(conn)
        seen.append((o["escalation_level"], o["department"], o["team_id"], o["state"]))
    assert seen == [("street", "office-st-02", "street-02-team", "assigned"),
                    ("district", "drainage", "drainage-1", "assigned"),
                    ("municipal", "emergency", "emergency-duty", "assigned")]
    # The street office of the order's own street is chosen, not another street's.
    assert "office-st-01" not in json.dumps(order(conn)["history"])
    now = datetime.fromisoformat(order(conn)["respond_by"].replace("Z", "+00:00"))
    s.check(conn, now + timedelta(seconds=1))
    s.check(conn, now + timedelta(hours=1))
    final = order(conn)
    assert final["flags"] == ["overdue_at_top"]
    assert any("already at the top of the hierarchy (municipal)" in h["reason"]
               for h in final["history"])
    teams = [t.removeprefix("city/dispatch/") for t, _p in dispatches(conn)]
    # Each level's team was dispatched in turn (repeats while a team stayed silent aside).
    assert list(dict.fromkeys(teams)) == ["grid-team", "street-02-team", "drainage-1",
                                          "emergency-duty"]


def test_an_unanswered_dispatch_is_repeated_then_escalated(conn: psycopg.Connection[Any]
                                                           ) -> None:
    s = AlertStore(ZONES, route_to("drainage", "drainage-1"), POLICY, OFFICES)
    apply(conn, s, wet(Level.YELLOW, 0))
    s.check(conn, T0 + timedelta(minutes=1))
    assert len(dispatches(conn)) == 1  # not yet: the team has two minutes
    s.check(conn, T0 + timedelta(minutes=2, seconds=1))
    s.check(conn, T0 + timedelta(minutes=4, seconds=2))
    attempts = [p.get("attempt", 1) for _t, p in dispatches(conn)]
    assert attempts == [1, 2, 3]
    s.check(conn, T0 + timedelta(minutes=6, seconds=3))
    o = order(conn)
    assert o["department"] == "emergency"
    assert "no answer from team drainage-1 after 3 dispatches" in o["history"][-1]["reason"]
    assert dispatches(conn)[-1][0] == "city/dispatch/emergency-duty"


def test_a_team_that_answered_gets_nothing_twice(conn: psycopg.Connection[Any]) -> None:
    s = AlertStore(ZONES, route_to("drainage", "drainage-1"), POLICY, OFFICES)
    apply(conn, s, wet(Level.ORANGE, 0))
    with conn.transaction(), conn.cursor() as cur:
        s.apply_ack(cur, DispatchAck("drainage-1", "WO-000001", "accepted", None, "on our way"),
                    T0 + timedelta(minutes=1))
    for minutes in (3, 6, 9):
        s.check(conn, T0 + timedelta(minutes=minutes))
    assert len(dispatches(conn)) == 1
    o = order(conn)
    assert o["state"] == "accepted"
    assert o["history"][-1]["actor"] == "team drainage-1"
    assert "on our way" in o["history"][-1]["reason"]


def test_answers_from_the_wrong_team_or_for_no_order_are_refused(
        conn: psycopg.Connection[Any]) -> None:
    s = AlertStore(ZONES, route_to("drainage", "drainage-1"), POLICY, OFFICES)
    apply(conn, s, wet(Level.ORANGE, 0))
    with pytest.raises(AckRefused, match="is with team 'drainage-1', not 'traffic-police-1'"), \
            conn.transaction(), conn.cursor() as cur:
        s.apply_ack(cur, DispatchAck("traffic-police-1", "WO-000001", "accepted", None), T0)
    with pytest.raises(AckRefused, match="no work order 'WO-404'"), conn.transaction(), \
            conn.cursor() as cur:
        s.apply_ack(cur, DispatchAck("drainage-1", "WO-404", "accepted", None), T0)


def test_no_close_while_the_sensors_still_see_water(conn: psycopg.Connection[Any]) -> None:
    s = AlertStore(ZONES, route_to("drainage", "drainage-1"), POLICY, OFFICES)
    apply(conn, s, wet(Level.RED, 0))
    with conn.transaction(), conn.cursor() as cur:
        s.apply_ack(cur, DispatchAck("drainage-1", "WO-000001", "accepted", None), T0)
        s.apply_ack(cur, DispatchAck("drainage-1", "WO-000001", "resolved", None, "all done"),
                    T0 + timedelta(minutes=5))
    o = order(conn)
    assert o["state"] == "accepted"  # a templated "resolved" does not move it
    assert "sensors still show waterlogging" in o["history"][-1]["reason"]
    with pytest.raises(NotVerified) as refused:
        alert_store.act_on_work_order(conn, "WO-000001", "resolve", T0 + timedelta(minutes=6),
                                      "op-3", "pumped out")
    assert refused.value.evidence[0]["latest"][-1] == {"depth_cm": 30}
    apply(conn, s, wet(None, 20))
    alert_store.act_on_work_order(conn, "WO-000001", "resolve", T0 + timedelta(minutes=21),
                                  "op-3", "pumped out")
    closed = alert_store.act_on_work_order(conn, "WO-000001", "close",
                                           T0 + timedelta(minutes=22), "op-3", "")
    assert closed["state"] == "closed"
    assert closed["flags"] == []  # the sensors are the evidence


def test_a_close_with_nothing_to_back_it_is_flagged_for_review(
        conn: psycopg.Connection[Any]) -> None:
    s = AlertStore(ZONES, route_to("building", "building-1"), POLICY, OFFICES)
    apply(conn, s, wet(Level.ORANGE, 0, "fz-01", "falling_object"))
    for action in ("accept", "resolve"):
        alert_store.act_on_work_order(conn, "WO-000001", action, T0, "op", "checked")
    o = alert_store.act_on_work_order(conn, "WO-000001", "close", T0, "op", "")
    assert o["flags"] == ["review_close_without_evidence"]
    assert "flagged for review" in o["history"][-1]["reason"]


def test_a_hazard_back_within_the_window_reopens_its_order(conn: psycopg.Connection[Any]
                                                           ) -> None:
    s = AlertStore(ZONES, route_to("drainage", "drainage-1"), POLICY, OFFICES)
    apply(conn, s, wet(Level.YELLOW, 0))
    apply(conn, s, wet(None, 10))
    for action in ("accept", "resolve"):
        alert_store.act_on_work_order(conn, "WO-000001", action, T0 + timedelta(minutes=11),
                                      "team", "done")
    apply(conn, s, wet(Level.YELLOW, 25))  # 15 minutes after clearing: same incident
    o = order(conn)
    assert o["state"] == "open"
    assert o["reopened"] == 1
    assert o["history"][-1]["reason"].startswith("reopened: waterlogging came back at up-01")
    alerts = alert_store.list_alerts(conn, zone_id="up-01")
    assert [(a["id"], a["state"], a["duplicates"]) for a in alerts] == [
        ("AL-000001", "active", 1)]
    apply(conn, s, wet(None, 30))
    apply(conn, s, wet(Level.YELLOW, 90))  # an hour later: a new incident
    assert [o["id"] for o in alert_store.list_work_orders(conn)] == ["WO-000002", "WO-000001"]


def test_a_flapping_zone_is_one_line_and_dispatches_only_when_worse(
        conn: psycopg.Connection[Any]) -> None:
    s = AlertStore(ZONES, route_to("drainage", "drainage-1"), POLICY, OFFICES)
    levels = [Level.BLUE, None, Level.BLUE, Level.YELLOW, Level.BLUE, None, Level.YELLOW,
              Level.BLUE, Level.YELLOW, None, Level.BLUE] * 5
    for i, level in enumerate(levels):
        apply(conn, s, wet(level, i))
    assert len(alert_store.list_alerts(conn)) == 1
    assert len(alert_store.list_work_orders(conn)) == 1
    sent = [p["severity"] for _t, p in dispatches(conn)]
    assert sent == [4, 3]  # blue, then yellow once; never again for the same level


def test_grid_reports_join_the_open_incident_and_the_nearest_worker_checks(
        conn: psycopg.Connection[Any]) -> None:
    asked: list[tuple[float, float]] = []

    def nearest(lon: float, lat: float) -> tuple[str, float]:
        asked.append((lon, lat))
        return ("grid-07", 180.0)

    s = AlertStore(ZONES, route_to("drainage", "drainage-1"), POLICY, OFFICES, nearest)
    apply(conn, s, wet(Level.ORANGE, 0))
    assert [t for t, _p in dispatches(conn)] == ["city/dispatch/drainage-1",
                                                 "city/dispatch/grid-07"]
    assert ZONES["up-01"].geometry.contains(Point(asked[0]))
    for n in range(3):  # three workers report the same flooded underpass
        with conn.transaction(), conn.cursor() as cur:
            joined = s.attach_report(cur, "waterlogging", ["cell-07", "up-01"],
                                     {"device_id": f"grid-0{n}", "text": "water over kerb"},
                                     T0 + timedelta(minutes=n))
        assert joined == "WO-000001"
    with conn.transaction(), conn.cursor() as cur:
        assert s.attach_report(cur, "traffic", ["up-01"], {"text": "jam"}, T0) is None
        # The checker's answer is evidence; the order stays with its team.
        s.apply_ack(cur, DispatchAck("grid-07", "WO-000001", "on_site", None, "30 cm, cones up"),
                    T0 + timedelta(minutes=4))
    o = order(conn)
    assert o["duplicates"] == 3
    assert o["team_id"] == "drainage-1"
    assert o["state"] == "open"
    assert o["history"][-1]["reason"] == "check: on_site: 30 cm, cones up"
    assert "on-the-spot check asked of grid worker grid-07, 180 m away" in json.dumps(
        o["history"])
    assert len(alert_store.list_alerts(conn)) == 1
    assert alert_store.get_alert(conn, "AL-000001")["duplicates"] == 3


def test_the_routing_table_can_send_a_red_level_elsewhere(conn: psycopg.Connection[Any]) -> None:
    def route(_hazard: str, _zone_type: str, level: Level) -> Route:
        return Route("fire", "fire-rescue-1") if level == Level.RED else Route("drainage",
                                                                               "drainage-1")

    s = AlertStore(ZONES, route, POLICY, OFFICES)
    apply(conn, s, wet(Level.YELLOW, 0))
    apply(conn, s, wet(Level.RED, 5))  # cars trapped in the underpass: fire and rescue
    o = order(conn)
    assert (o["department"], o["team_id"]) == ("fire", "fire-rescue-1")
    assert "re-routed at red from drainage to fire, team fire-rescue-1" in json.dumps(
        o["history"])
    assert [t for t, _p in dispatches(conn)] == ["city/dispatch/drainage-1",
                                                 "city/dispatch/fire-rescue-1"]


def test_an_order_raised_from_a_backlog_counts_its_deadlines_from_now(
        conn: psycopg.Connection[Any]) -> None:
    # Readings held 40 minutes (a database outage) are judged in their own time, but the team
    # hears of the order only now: it must not be born overdue and escalated at the next check.
    s = AlertStore(ZONES, route_to("grid-centre", "grid-team"), POLICY, OFFICES)
    now = T0 + timedelta(minutes=40)
    with conn.transaction(), conn.cursor() as cur:
        s.apply_changes(cur, [wet(Level.RED, 0)], now)
    o = order(conn)
    assert o["created"] == "2026-11-23T08:00:00.000Z"  # the incident's own time
    respond_by = datetime.fromisoformat(o["respond_by"].replace("Z", "+00:00"))
    assert respond_by == now + POLICY.respond_within[Level.RED]
    s.check(conn, now + timedelta(seconds=1))
    assert order(conn)["escalation_level"] == "grid"  # not escalated
    assert order(conn)["state"] == "open"
