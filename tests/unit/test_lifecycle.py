"""The alert and work-order transition tables: every legal move, every refusal explained."""

from __future__ import annotations

import itertools
from collections.abc import Mapping

import pytest

from alerts.lifecycle import (
    ALERT_START,
    ALERT_TRANSITIONS,
    OPERATOR_ALERT_ACTIONS,
    OPERATOR_WORK_ORDER_ACTIONS,
    WORK_ORDER_START,
    WORK_ORDER_TRANSITIONS,
    AlertsError,
    TransitionError,
    next_alert_state,
    next_work_order_state,
)

ALERT_STATES = ("active", "acknowledged", "resolved")
ORDER_STATES = ("open", "assigned", "accepted", "resolved", "closed")

LEGAL_ORDER_MOVES = {
    ("open", "assign"): "assigned", ("assigned", "assign"): "assigned",
    ("open", "accept"): "accepted", ("assigned", "accept"): "accepted",
    ("assigned", "resolve"): "resolved", ("accepted", "resolve"): "resolved",
    ("resolved", "close"): "closed",
    ("resolved", "reopen"): "open", ("closed", "reopen"): "open",
    # the system's: the next level's team has it and has not accepted it yet
    ("open", "escalate"): "assigned", ("assigned", "escalate"): "assigned",
    ("accepted", "escalate"): "assigned",
}

LEGAL_ALERT_MOVES = {
    ("active", "acknowledge"): "acknowledged",
    ("active", "resolve"): "resolved", ("acknowledged", "resolve"): "resolved",
    # the system's: the rule no longer sees the hazard; the hazard back within the window
    ("active", "clear"): "resolved", ("acknowledged", "clear"): "resolved",
    ("resolved", "reactivate"): "active",
}


@pytest.mark.parametrize(("state", "action"),
                         list(itertools.product(ORDER_STATES, WORK_ORDER_TRANSITIONS)))
def test_work_order_moves(state: str, action: str) -> None:
    expected = LEGAL_ORDER_MOVES.get((state, action))
    if expected is not None:
        assert next_work_order_state("WO-1", state, action) == expected
    else:
        with pytest.raises(TransitionError) as err:
            next_work_order_state("WO-1", state, action)
        assert f"work order WO-1 is {state!r}: cannot {action}" in str(err.value)
        assert err.value.state == state


@pytest.mark.parametrize(("state", "action"),
                         list(itertools.product(ALERT_STATES, ALERT_TRANSITIONS)))
def test_alert_moves(state: str, action: str) -> None:
    expected = LEGAL_ALERT_MOVES.get((state, action))
    if expected is not None:
        assert next_alert_state("AL-1", state, action) == expected
    else:
        with pytest.raises(TransitionError, match=f"cannot {action}"):
            next_alert_state("AL-1", state, action)


def test_the_tables_hold_exactly_the_listed_moves() -> None:
    def moves(table: Mapping[str, Mapping[str, str]]) -> dict[tuple[str, str], str]:
        return {(f, a): t for a, m in table.items() for f, t in m.items()}

    assert moves(WORK_ORDER_TRANSITIONS) == LEGAL_ORDER_MOVES
    assert moves(ALERT_TRANSITIONS) == LEGAL_ALERT_MOVES


@pytest.mark.parametrize(("table", "start", "states"), [
    (ALERT_TRANSITIONS, ALERT_START, ALERT_STATES),
    (WORK_ORDER_TRANSITIONS, WORK_ORDER_START, ORDER_STATES),
])
def test_every_state_is_reachable_from_the_start_and_known(
        table: Mapping[str, Mapping[str, str]], start: str, states: tuple[str, ...]) -> None:
    seen, todo = {start}, [start]
    while todo:
        here = todo.pop()
        for moves in table.values():
            if here in moves and moves[here] not in seen:
                seen.add(moves[here])
                todo.append(moves[here])
    assert seen == set(states)
    assert {s for m in table.values() for pair in m.items() for s in pair} <= set(states)


def test_a_refusal_says_what_an_operator_may_do_instead() -> None:
    # The operator is not offered the system's own moves (escalate, clear, reactivate).
    with pytest.raises(TransitionError, match=r"allowed from 'open': assign, accept\)"):
        next_work_order_state("WO-9", "open", "close")
    with pytest.raises(TransitionError, match=r"allowed from 'accepted': resolve\)"):
        next_work_order_state("WO-9", "accepted", "assign")
    with pytest.raises(TransitionError, match="it is final"):
        next_alert_state("AL-9", "resolved", "resolve")
    # A refused system move names every move, the system's too.
    with pytest.raises(TransitionError, match=r"allowed from 'resolved': close, reopen\)"):
        next_work_order_state("WO-9", "resolved", "escalate")


def test_unknown_actions_are_not_transitions() -> None:
    with pytest.raises(AlertsError, match="unknown action 'explode'"):
        next_work_order_state("WO-1", "open", "explode")
    assert set(OPERATOR_ALERT_ACTIONS) <= set(ALERT_TRANSITIONS)
    assert set(OPERATOR_WORK_ORDER_ACTIONS) <= set(WORK_ORDER_TRANSITIONS)
