"""The alert and work-order transition tables: every legal move, every refusal explained."""

from __future__ import annotations

import itertools

import pytest

from alerts.lifecycle import (
    ALERT_TRANSITIONS,
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


@pytest.mark.parametrize(("state", "action", "expected"), [
    ("active", "acknowledge", "acknowledged"),
    ("active", "resolve", "resolved"),
    ("acknowledged", "resolve", "resolved"),
    ("acknowledged", "acknowledge", None),
    ("resolved", "acknowledge", None),
    ("resolved", "resolve", None),
])
def test_alert_moves(state: str, action: str, expected: str | None) -> None:
    if expected is not None:
        assert next_alert_state("AL-1", state, action) == expected
    else:
        with pytest.raises(TransitionError, match=f"cannot {action}"):
            next_alert_state("AL-1", state, action)


def test_a_refusal_says_what_is_allowed_instead() -> None:
    with pytest.raises(TransitionError, match="allowed from 'open': assign, accept"):
        next_work_order_state("WO-9", "open", "close")
    with pytest.raises(TransitionError, match="it is final"):
        next_alert_state("AL-9", "resolved", "resolve")


def test_unknown_actions_are_not_transitions() -> None:
    with pytest.raises(AlertsError, match="unknown action 'explode'"):
        next_work_order_state("WO-1", "open", "explode")
    assert set(ALERT_TRANSITIONS) == {"acknowledge", "resolve"}
