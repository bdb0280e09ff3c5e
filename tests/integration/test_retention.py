"""What one incident may grow, and how long finished work is kept, on the real database:
evidence capped per alert, repetitive history lines capped per order, sent outbox rows and whole
finished orders aged out in batches, and a database that is down only skips a run."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from shapely.geometry import box

from alerts import retention
from alerts import store as alert_store
from alerts.policy import Office, Policy, cap_evidence
from alerts.retention import Retention
from alerts.store import AlertStore, Route
from geo.zones import Zone
from rules.base import AlertChange
from rules.levels import Level
from sensing.models import DispatchAck

pytestmark = pytest.mark.integration

NOW = datetime(2032, 6, 1, 12, 0, tzinfo=UTC)
OLD = NOW - timedelta(days=2000)  # older than the default 1830 days
ZONES = {f"up-0{i}": Zone(f"up-0{i}", f"Underpass {i}", "underpass",
                          box(120.6 + i / 100, 31.3, 120.601 + i / 100, 31.301))
         for i in range(1, 6)}
OFFICES = [Office("drainage", "district", None, "drainage-1")]


@pytest.fixture
def conn(fresh_db_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(fresh_db_url, autocommit=True) as c:
        alert_store.migrate(c)
        yield c


def make_store(**policy: Any) -> AlertStore:
    return AlertStore(ZONES, lambda _h, _z, _l: Route("drainage", "drainage-1"),
                      Policy(reopen_window=timedelta(minutes=30), **policy), OFFICES)


def change(level: Level | None, ts: datetime, zone: str = "up-01",
           evidence: tuple[dict[str, Any], ...] = ({"depth_cm": 30},)) -> AlertChange:
    return AlertChange(zone, "waterlogging", level, ts, f"water at {zone}", evidence)


def apply(conn: psycopg.Connection[Any], s: AlertStore, *changes: AlertChange) -> None:
    with conn.transaction(), conn.cursor() as cur:
        s.apply_changes(cur, changes)


def report(conn: psycopg.Connection[Any], s: AlertStore, n: int, ts: datetime) -> None:
    with conn.transaction(), conn.cursor() as cur:
        s.attach_report(cur, "waterlogging", ["up-01"], {"device_id": f"grid-{n}", "text": "wet"},
                        ts)


# --- evidence ---------------------------------------------------------------------------------

def test_an_alert_keeps_its_first_and_newest_evidence_and_counts_the_rest(
        conn: psycopg.Connection[Any]) -> None:
    s = make_store(evidence_keep_first=3, evidence_keep_last=4)
    t = NOW
    sent: list[dict[str, Any]] = []

    def ev(i: int) -> dict[str, Any]:
        item = {"n": i}
        sent.append(item)
        return item

    apply(conn, s, change(Level.YELLOW, t, evidence=(ev(0), ev(1))))
    for i in range(2, 12):  # a second gauge corroborates, again and again
        apply(conn, s, change(Level.YELLOW, t + timedelta(minutes=i), evidence=(ev(i),)))
    apply(conn, s, change(Level.ORANGE, t + timedelta(minutes=12), evidence=(ev(12), ev(13))))
    for i in range(14, 20):  # grid workers report the same flooded underpass
        report(conn, s, i, t + timedelta(minutes=i))
        sent.append({"grid_report": {"device_id": f"grid-{i}", "text": "wet"}})
    apply(conn, s, change(None, t + timedelta(minutes=20), evidence=(ev(20),)))
    apply(conn, s, change(Level.YELLOW, t + timedelta(minutes=21), evidence=(ev(21),)))

    alert = alert_store.get_alert(conn, "AL-000001")
    kept, dropped = cap_evidence(sent, 3, 4)
    assert alert["evidence"] == kept  # the SQL cut on each append is the pure one on the whole
    assert alert["evidence_dropped"] == dropped == len(sent) - 7
    assert [e.get("n") for e in alert["evidence"]] == [0, 1, 2, None, None, 20, 21]
    # Merged reports (6) and the reactivation (1) are still counted.
    assert alert["duplicates"] == 7
    assert alert_store.list_alerts(conn)[0]["evidence_dropped"] == dropped


def test_a_new_alert_with_more_evidence_than_the_cap_is_cut_too(
        conn: psycopg.Connection[Any]) -> None:
    s = make_store(evidence_keep_first=1, evidence_keep_last=2)
    apply(conn, s, change(Level.RED, NOW, evidence=tuple({"n": i} for i in range(10))))
    alert = alert_store.get_alert(conn, "AL-000001")
    assert (alert["evidence"], alert["evidence_dropped"]) == ([{"n": 0}, {"n": 8}, {"n": 9}], 7)


# --- history ----------------------------------------------------------------------------------

def test_repetitive_system_lines_are_capped_and_counted_people_and_moves_are_kept(
        conn: psycopg.Connection[Any]) -> None:
    s = make_store(history_repeats_max=3)
    apply(conn, s, change(Level.ORANGE, NOW))
    for n in range(10):
        report(conn, s, n, NOW + timedelta(minutes=n))
        if n == 5:  # the team answers in between: their word is kept whatever the cap
            with conn.transaction(), conn.cursor() as cur:
                s.apply_ack(cur, DispatchAck("drainage-1", "WO-000001", "accepted", None,
                                             "on our way"), NOW + timedelta(minutes=n))
    o = alert_store.get_work_order(conn, "WO-000001")
    reasons = [h["reason"] for h in o["history"]]
    assert sum(r.startswith("report merged as a duplicate") for r in reasons) == 3
    assert "accepted: on our way" in reasons
    assert [h["action"] for h in o["history"] if h["from"] != h["to"]] == [None, "accept"]
    assert reasons[-1] == ("7 more repeated system entries not listed (the first 3 are); the "
                           "latest, by grid grid-9: report merged as a duplicate: wet")
    assert o["history"][-1]["ts"] == "2032-06-01T12:09:00.000Z"
    assert len(reasons) == 1 + 3 + 1 + 1  # opened, three merges, the answer, the summary
    assert o["duplicates"] == 10  # every merged report still counts


# --- retention --------------------------------------------------------------------------------

def outbox(conn: psycopg.Connection[Any]) -> list[tuple[str, bool]]:
    return [(p, s is not None) for p, s in conn.execute(
        "SELECT payload, sent FROM outbox ORDER BY id").fetchall()]


def test_sent_outbox_rows_go_after_their_days_unsent_ones_never(
        conn: psycopg.Connection[Any]) -> None:
    rows = [("old-sent", NOW - timedelta(days=8), NOW - timedelta(days=8)),
            ("old-unsent", NOW - timedelta(days=30), None),
            ("recent-sent", NOW - timedelta(days=8), NOW - timedelta(days=6)),
            ("new-unsent", NOW, None)]
    rows += [(f"bulk-{i}", NOW - timedelta(days=9), NOW - timedelta(days=9)) for i in range(7)]
    for payload, created, sent in rows:
        conn.execute("INSERT INTO outbox (topic, payload, created, sent) VALUES (%s,%s,%s,%s)",
                     ("city/dispatch/t", payload, created, sent))
    removed = retention.apply_retention(conn, Retention(outbox_keep_days=7, batch_size=3), NOW)
    assert removed.outbox == 8
    assert outbox(conn) == [("old-unsent", False), ("recent-sent", True), ("new-unsent", False)]


def finished_order(conn: psycopg.Connection[Any], s: AlertStore, zone: str, ts: datetime,
                   close: bool = True) -> str:
    """An incident on ``zone`` at ``ts``, cleared, resolved (and closed); its order id."""
    apply(conn, s, change(Level.ORANGE, ts, zone))
    apply(conn, s, change(None, ts + timedelta(minutes=10), zone))
    order_id = str(alert_store.list_alerts(conn, zone_id=zone)[0]["work_order_id"])
    for action in ("accept", "resolve", "close") if close else ("accept", "resolve"):
        alert_store.act_on_work_order(conn, order_id, action, ts + timedelta(minutes=11), "op",
                                      "pumped out")
    return order_id


def test_finished_orders_and_their_alerts_go_after_keep_days_open_work_never(
        conn: psycopg.Connection[Any]) -> None:
    s = make_store()
    old_closed = finished_order(conn, s, "up-01", OLD)
    old_resolved = finished_order(conn, s, "up-02", OLD, close=False)
    recent = finished_order(conn, s, "up-03", NOW - timedelta(days=30))
    apply(conn, s, change(Level.ORANGE, OLD, "up-04"))  # old, but the water is still there
    old_open = "WO-000004"
    apply(conn, s, change(Level.ORANGE, OLD, "up-05"))  # an order resolved while its alert
    apply(conn, s, change(None, OLD + timedelta(minutes=5), "up-05"))
    alert_store.act_on_work_order(conn, "WO-000005", "accept", OLD, "op", "")
    alert_store.act_on_work_order(conn, "WO-000005", "resolve", OLD, "op", "")
    # ...came back much later and is still resolved but recent: the order stays with it.
    conn.execute("UPDATE alerts SET updated = %s WHERE id = 'AL-000005'", (NOW,))
    # An alert with no order, resolved long ago (as old databases hold).
    conn.execute("INSERT INTO alerts (id, hazard, severity, state, zone_id, raised, updated, "
                 "title) VALUES ('AL-LONE', 'traffic', 3, 'resolved', 'up-01', %s, %s, 'jam')",
                 (OLD, OLD))

    removed = retention.apply_retention(conn, Retention(batch_size=1), NOW)

    orders = {o["id"] for o in alert_store.list_work_orders(conn)}
    assert orders == {recent, old_open, "WO-000005"}
    assert {old_closed, old_resolved}.isdisjoint(orders)
    alerts = {a["id"] for a in alert_store.list_alerts(conn)}
    assert alerts == {"AL-000003", "AL-000004", "AL-000005"}
    left = conn.execute("SELECT (SELECT count(*) FROM work_order_history WHERE work_order_id = "
                        "ANY(%(gone)s)), (SELECT count(*) FROM dispatches WHERE work_order_id = "
                        "ANY(%(gone)s))", {"gone": [old_closed, old_resolved]}).fetchone()
    assert left == (0, 0)
    assert (removed.work_orders, removed.alerts) == (2, 3)
    assert removed.history > 0 and removed.dispatches == 2
    assert retention.apply_retention(conn, Retention(), NOW) == retention.Removed()


def test_the_job_skips_a_run_while_the_database_is_down(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="alerts.retention"):
        got = retention.run("postgresql://postgres@127.0.0.1:1/none?connect_timeout=2",
                            Retention(), NOW)
    assert got is None
    assert "alert retention skipped: database unavailable" in caplog.text


def test_the_job_removes_what_is_due(conn: psycopg.Connection[Any], fresh_db_url: str) -> None:
    finished_order(conn, make_store(), "up-01", OLD)
    got = retention.run(fresh_db_url, Retention(), NOW)
    assert got is not None and got.work_orders == 1
