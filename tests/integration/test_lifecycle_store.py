"""The store moves alerts and orders only as the transition tables say, and records the action:
drive it through the system's own moves (clear, reactivate, reopen, escalate from accepted) on
the real database and check every change against the tables."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from shapely.geometry import box

from alerts import store as alert_store
from alerts.lifecycle import (
    ALERT_TRANSITIONS,
    AlertsError,
    next_work_order_state,
)
from alerts.policy import Office, Policy
from alerts.store import AlertStore, NotVerified, Route
from geo.zones import Zone
from rules.base import AlertChange
from rules.levels import Level
from sensing.models import DispatchAck

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
ZONES = {
    "gusu": Zone("gusu", "Gusu", "district", box(120.5, 31.2, 120.7, 31.4)),
    "up-01": Zone("up-01", "Renmin Rd underpass", "underpass",
                  box(120.621, 31.311, 120.622, 31.312), "gusu"),
}
OFFICES = [Office("drainage", "district", None, "drainage-1"),
           Office("emergency", "municipal", None, "emergency-duty")]
POLICY = Policy(reopen_window=timedelta(minutes=30))
ORDER = "WO-000001"
ALERT = "AL-000001"


@pytest.fixture
def conn(fresh_db_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(fresh_db_url, autocommit=True) as c:
        alert_store.migrate(c)
    with psycopg.connect(fresh_db_url) as c:
        yield c


@pytest.fixture
def store() -> AlertStore:
    return AlertStore(ZONES, lambda _h, _z, _l: Route("drainage", "drainage-1"), POLICY, OFFICES)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def wet(level: Level | None, minute: float) -> AlertChange:
    return AlertChange("up-01", "waterlogging", level, at(minute), "water at up-01",
                       ({"depth_cm": 30, "minute": minute},))


def apply(conn: psycopg.Connection[Any], s: AlertStore, change: AlertChange) -> None:
    with conn.transaction(), conn.cursor() as cur:
        s.apply_changes(cur, [change])


def ack(conn: psycopg.Connection[Any], s: AlertStore, status: str, minute: float,
        team: str = "drainage-1") -> None:
    with conn.transaction(), conn.cursor() as cur:
        s.apply_ack(cur, DispatchAck(team, ORDER, status, None), at(minute))


def alert_state(conn: psycopg.Connection[Any]) -> str:
    return str(alert_store.get_alert(conn, ALERT)["state"])


def order(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    return alert_store.get_work_order(conn, ORDER)


def test_every_state_change_is_a_move_of_the_tables(conn: psycopg.Connection[Any],
                                                    store: AlertStore) -> None:
    alert_states = []

    def step(fn: Any, *args: Any) -> None:
        fn(*args)
        alert_states.append(alert_state(conn))

    step(apply, conn, store, wet(Level.ORANGE, 0))            # raised, order open
    step(ack, conn, store, "accepted", 1)                      # the team takes it
    step(store.check, conn, at(121))                           # resolve_by (2 h) passes
    step(ack, conn, store, "accepted", 122, "emergency-duty")  # the next level takes it
    step(alert_store.act_on_alert, conn, ALERT, "acknowledge", at(123))
    step(apply, conn, store, wet(None, 130))                   # the rule clears it
    step(ack, conn, store, "resolved", 131, "emergency-duty")
    step(apply, conn, store, wet(Level.ORANGE, 140))           # back within 30 min
    step(apply, conn, store, wet(None, 150))

    # The alert: cleared from acknowledged, reactivated, cleared again from active.
    assert alert_states == ["active", "active", "active", "active", "acknowledged", "resolved",
                            "resolved", "active", "resolved"]
    alert_moves = {(f, t) for m in ALERT_TRANSITIONS.values() for f, t in m.items()}
    changes = {(a, b) for a, b in itertools.pairwise(alert_states) if a != b}
    assert changes <= alert_moves

    history = order(conn)["history"]
    moves = [(h["from"], h["action"], h["to"]) for h in history if h["from"] != h["to"]]
    assert moves == [(None, None, "open"),
                     ("open", "accept", "accepted"),
                     ("accepted", "escalate", "assigned"),
                     ("assigned", "accept", "accepted"),
                     ("accepted", "resolve", "resolved"),
                     ("resolved", "reopen", "open")]
    for from_state, action, to_state in moves[1:]:
        assert next_work_order_state(ORDER, from_state, action) == to_state
    # Notes change nothing and name no action; each line starts where the last one ended.
    assert all(h["action"] is None for h in history if h["from"] == h["to"])
    assert all(b["from"] == a["to"] for a, b in itertools.pairwise(history))
    o = order(conn)
    assert (o["state"], o["team_id"], o["reopened"]) == ("open", "emergency-duty", 1)


def test_a_late_rejection_does_not_bring_a_resolved_order_back(
        conn: psycopg.Connection[Any], store: AlertStore) -> None:
    apply(conn, store, wet(Level.ORANGE, 0))
    ack(conn, store, "accepted", 1)
    apply(conn, store, wet(None, 10))
    ack(conn, store, "resolved", 11)
    ack(conn, store, "rejected", 12)  # a stale answer to the first dispatch
    o = order(conn)
    assert (o["state"], o["department"], o["team_id"]) == ("resolved", "drainage", "drainage-1")
    assert o["history"][-1]["reason"] == ("team drainage-1 rejected it; not escalated: it is "
                                          "resolved")


def test_operators_cannot_ask_for_the_systems_moves(conn: psycopg.Connection[Any],
                                                    store: AlertStore) -> None:
    apply(conn, store, wet(Level.ORANGE, 0))
    with pytest.raises(AlertsError, match="'escalate' is not an operator's action"):
        alert_store.act_on_work_order(conn, ORDER, "escalate", at(1), "op-1", "")
    # Nor may they resolve a hazard the sensors still show (issue 10): that is the rule's move.
    with pytest.raises(NotVerified, match="the sensors still show waterlogging"):
        alert_store.act_on_alert(conn, ALERT, "resolve", at(2))
    with pytest.raises(AlertsError, match="'reactivate' is not an operator's action"):
        alert_store.act_on_alert(conn, ALERT, "reactivate", at(3))
    assert (order(conn)["state"], alert_state(conn)) == ("open", "active")


def test_an_operators_reopen_is_counted_like_the_systems(conn: psycopg.Connection[Any],
                                                         store: AlertStore) -> None:
    apply(conn, store, wet(Level.ORANGE, 0))
    apply(conn, store, wet(None, 5))
    for action in ("accept", "resolve", "close", "reopen"):
        o = alert_store.act_on_work_order(conn, ORDER, action, at(6), "op-1", "checked")
    assert (o["state"], o["reopened"]) == ("open", 1)
    assert [h["action"] for h in o["history"]] == [None, "accept", "resolve", "close", "reopen"]
    assert o["history"][-1]["actor"] == "op-1"
