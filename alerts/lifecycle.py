"""The alert and work-order lifecycles, each one transition table.

An action that the table does not allow raises ``TransitionError``; the API turns it into a 409
with the reason, so an operator sees why, not just that it failed.
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


# action -> {from_state: to_state}
ALERT_TRANSITIONS: Mapping[str, Mapping[str, str]] = {
    "acknowledge": {"active": "acknowledged"},
    "resolve": {"active": "resolved", "acknowledged": "resolved"},
}

WORK_ORDER_TRANSITIONS: Mapping[str, Mapping[str, str]] = {
    "assign": {"open": "assigned", "assigned": "assigned"},
    "accept": {"open": "accepted", "assigned": "accepted"},
    "resolve": {"assigned": "resolved", "accepted": "resolved"},
    "close": {"resolved": "closed"},
    "reopen": {"resolved": "open", "closed": "open"},
}


def _allowed(table: Mapping[str, Mapping[str, str]], state: str) -> tuple[str, ...]:
    return tuple(a for a, moves in table.items() if state in moves)


def next_alert_state(alert_id: str, state: str, action: str) -> str:
    return _next("alert", ALERT_TRANSITIONS, alert_id, state, action)


def next_work_order_state(order_id: str, state: str, action: str) -> str:
    return _next("work order", WORK_ORDER_TRANSITIONS, order_id, state, action)


def _next(what: str, table: Mapping[str, Mapping[str, str]], ident: str, state: str,
          action: str) -> str:
    if action not in table:
        raise AlertsError(f"unknown action {action!r}; expected one of {', '.join(table)}")
    moves = table[action]
    if state not in moves:
        raise TransitionError(what, ident, action, state, _allowed(table, state))
    return moves[state]
