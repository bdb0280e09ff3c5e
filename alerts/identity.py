"""Who is asking and what they may do (CONTRACT section 6). Pure: no I/O, no clock.

An ``Identity`` is what a checked token or session stands for; where it comes from (our own users
table, or a city's single sign-on) is ``alerts.auth``'s business. What a role may do is decided
here, in one place, from the identity alone, never from a field of the request:

- ``viewer`` reads everything under ``/api`` and acts on nothing;
- ``operator`` acknowledges and resolves alerts and acts on every work order;
- ``dispatcher`` acts on the work orders of its own department, and assigns them only to that
  department's teams;
- ``team`` accepts and resolves the work orders given to its own team;
- ``admin`` may do everything an operator may, and manage users.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, get_args

Role = Literal["viewer", "operator", "dispatcher", "team", "admin"]
ROLES: Final[tuple[Role, ...]] = get_args(Role)
ALERT_ACTIONS: Final = ("acknowledge", "resolve")
WORK_ORDER_ACTIONS: Final = ("assign", "accept", "resolve", "close", "reopen")
TEAM_ACTIONS: Final = ("accept", "resolve")  # a field team answers; it does not dispatch
USER_NAME: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
# Names the history already uses for what no person did.
RESERVED_NAMES: Final = frozenset({"system", "operator", "team", "grid"})


class IdentityError(ValueError):
    """An identity that cannot exist (a dispatcher without a department...)."""


@dataclass(frozen=True, slots=True)
class Identity:
    user: str
    role: Role
    department: str | None = None  # a dispatcher's department (a team's, informative)
    team: str | None = None  # a team user's team

    def __post_init__(self) -> None:
        if not USER_NAME.match(self.user):
            raise IdentityError(f"user name {self.user!r}: expected 1 to 64 letters, digits, "
                                "'_', '.', '@' or '-', starting with a letter or digit")
        if self.role not in ROLES:
            raise IdentityError(f"role {self.role!r}: expected one of {', '.join(ROLES)}")
        if self.role == "dispatcher" and not self.department:
            raise IdentityError("a dispatcher needs a department")
        if self.role == "team" and not self.team:
            raise IdentityError("a team user needs a team")


def may_act_on_alerts(who: Identity) -> bool:
    return who.role in ("operator", "admin")


def alert_refusal(who: Identity, action: str) -> str | None:
    """Why ``who`` may not ``action`` an alert, or None when it may."""
    if may_act_on_alerts(who):
        return None
    return (f"{who.user} ({who.role}) may not {action} alerts: operators and admins act on "
            "alerts")


def work_order_refusal(who: Identity, action: str, department: str, team: str | None,
                       new_team: str | None = None,
                       team_departments: Mapping[str, str] | None = None) -> str | None:
    """Why ``who`` may not ``action`` the work order of ``department`` and ``team``, or None.

    ``new_team`` is the team an ``assign`` hands the order to; ``team_departments`` maps team ids
    to their departments (a dispatcher assigns only its own department's teams).
    """
    role = who.role
    if role in ("operator", "admin"):
        return None
    if role == "viewer":
        return f"{who.user} (viewer) only reads"
    if role == "dispatcher":
        if department != who.department:
            return (f"{who.user} dispatches for {who.department}; this order is "
                    f"{department}'s")
        if action == "assign" and new_team is not None:
            owner = (team_departments or {}).get(new_team)
            if owner != who.department:
                return (f"{who.user} dispatches for {who.department} and may assign only its "
                        f"teams; {new_team} is {owner or 'not a known team'}'s")
        return None
    # a team
    if team != who.team:
        return f"{who.user} works for team {who.team}; this order is with {team or 'no team'}"
    if action not in TEAM_ACTIONS:
        return (f"{who.user} (team {who.team}) may {' and '.join(TEAM_ACTIONS)} its orders; "
                f"{action} is for dispatchers and operators")
    return None


def permissions(who: Identity) -> dict[str, Any]:
    """What the console may offer ``who`` (the server checks every action again)."""
    orders: dict[str, Any]
    if who.role in ("operator", "admin"):
        orders = {"scope": "all", "actions": list(WORK_ORDER_ACTIONS)}
    elif who.role == "dispatcher":
        orders = {"scope": "department", "department": who.department,
                  "actions": list(WORK_ORDER_ACTIONS)}
    elif who.role == "team":
        orders = {"scope": "team", "team": who.team, "actions": list(TEAM_ACTIONS)}
    else:
        orders = {"scope": "none", "actions": []}
    return {"alerts": list(ALERT_ACTIONS) if may_act_on_alerts(who) else [],
            "work_orders": orders, "users": who.role == "admin"}
