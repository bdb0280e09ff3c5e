"""The alert and work-order lifecycles, each one transition table.

Every state change, the operator's and the system's own, is an action of these tables, and
``alerts.store`` changes a state only through ``move_alert`` and ``move_work_order``, which consult
them. An action that the table does not allow raises ``TransitionError``; the API turns it into a
409 with the reason, so an operator sees why, not just that it failed.
"""

from __future__ import annotations

from collections.abc import Mapping


class AlertsError(Exception):
    """Root of this package's errors."""


class TransitionError(AlertsError):
    def __init__(self, what: str, ident: str, action: str, state: str, allowed: tuple[str, ...]):
        self.state = state
        hint = f"allowed from {state!r}: {', '.join(allowed)}" if allowed else "it is final"
        super().__init__(f"{what} {ident} is {state!r}: cannot {action} ({hint})")


class NotFound(AlertsError):
    pass


ALERT_START = "active"  # the rule raised it
WORK_ORDER_START = "open"  # opened for a new alert, routed but not yet taken

# action -> {from_state: to_state}
ALERT_TRANSITIONS: Mapping[str, Mapping[str, str]] = {
    # The operator's.
    "acknowledge": {"active": "acknowledged"},
    "resolve": {"active": "resolved", "acknowledged": "resolved"},
    # The system's. The rule no longer sees the hazard: the alert ends whether or not an
    # operator acknowledged it (acknowledging says "seen", not "handled").
    "clear": {"active": "resolved", "acknowledged": "resolved"},
    # The same hazard back in the same zone within the reopen window: the same incident, so the
    # alert comes back instead of a second one; active again, as it needs an operator's eyes anew.
    "reactivate": {"resolved": "active"},
}

WORK_ORDER_TRANSITIONS: Mapping[str, Mapping[str, str]] = {
    # The operator's (``assign``, ``accept``, ``resolve``, ``close``, ``reopen``) and the team's
    # answers on the ack topic (``accept``, ``resolve``).
    "assign": {"open": "assigned", "assigned": "assigned"},
    "accept": {"open": "accepted", "assigned": "accepted"},
    "resolve": {"assigned": "resolved", "accepted": "resolved"},
    "close": {"resolved": "closed"},
    # Also the system's, when the hazard comes back within the reopen window: the same incident,
    # so its order is worked again rather than a new one opened.
    "reopen": {"resolved": "open", "closed": "open"},
    # The system's only: a deadline passed, a dispatch went unanswered or the team rejected it.
    # The order goes to the next level's team, which has not accepted it yet: ``assigned``, also
    # from ``accepted`` (the team that accepted missed ``resolve_by``). A resolved or closed order
    # is not escalated: a late rejection of it changes nothing.
    "escalate": {"open": "assigned", "assigned": "assigned", "accepted": "assigned"},
}

# What people may ask for through the API; the rest are the system's own moves.
OPERATOR_ALERT_ACTIONS = ("acknowledge", "resolve")
OPERATOR_WORK_ORDER_ACTIONS = ("assign", "accept", "resolve", "close", "reopen")


def next_alert_state(alert_id: str, state: str, action: str) -> str:
    return _next("alert", ALERT_TRANSITIONS, OPERATOR_ALERT_ACTIONS, alert_id, state, action)


def next_work_order_state(order_id: str, state: str, action: str) -> str:
    return _next("work order", WORK_ORDER_TRANSITIONS, OPERATOR_WORK_ORDER_ACTIONS, order_id,
                 state, action)


def can_move(table: Mapping[str, Mapping[str, str]], state: str, action: str) -> bool:
    return state in table.get(action, {})


def _next(what: str, table: Mapping[str, Mapping[str, str]], operator: tuple[str, ...],
          ident: str, state: str, action: str) -> str:
    if action not in table:
        raise AlertsError(f"unknown action {action!r}; expected one of {', '.join(table)}")
    moves = table[action]
    if state not in moves:
        # An operator refused is told what an operator may do instead, not the system's moves.
        allowed = tuple(a for a, m in table.items() if state in m
                        and (action not in operator or a in operator))
        raise TransitionError(what, ident, action, state, allowed)
    return moves[state]
