"""Who may do what (alerts.identity): decided from the identity alone, for every role, and for a
dispatcher of each of the district's 53 departments."""

from __future__ import annotations

from pathlib import Path

import pytest

from alerts.identity import (
    ALERT_ACTIONS,
    ROLES,
    WORK_ORDER_ACTIONS,
    Identity,
    IdentityError,
    alert_refusal,
    permissions,
    work_order_refusal,
)
from citywatch.config import load_config

REPO = Path(__file__).resolve().parents[2]
TEAMS = {"drainage-1": "gusu-drainage", "drainage-2": "gusu-drainage",
         "traffic-police-1": "gusu-traffic"}
VIEWER = Identity("vic", "viewer")
OPERATOR = Identity("olga", "operator")
ADMIN = Identity("ada", "admin")
DISPATCHER = Identity("dina", "dispatcher", "gusu-drainage")
TEAM = Identity("tom", "team", "gusu-drainage", "drainage-1")


@pytest.mark.parametrize(("who", "allowed"), [
    (VIEWER, False), (OPERATOR, True), (ADMIN, True), (DISPATCHER, False), (TEAM, False)])
def test_only_operators_and_admins_act_on_alerts(who: Identity, allowed: bool) -> None:
    for action in ALERT_ACTIONS:
        assert (alert_refusal(who, action) is None) == allowed
    assert permissions(who)["alerts"] == (list(ALERT_ACTIONS) if allowed else [])


def test_operators_and_admins_act_on_every_order_viewers_on_none() -> None:
    for action in WORK_ORDER_ACTIONS:
        for dept, team in (("gusu-drainage", "drainage-1"), ("gusu-traffic", None)):
            assert work_order_refusal(OPERATOR, action, dept, team) is None
            assert work_order_refusal(ADMIN, action, dept, team) is None
            assert work_order_refusal(VIEWER, action, dept, team) == "vic (viewer) only reads"


def test_a_dispatcher_acts_on_its_department_and_assigns_its_own_teams() -> None:
    for action in WORK_ORDER_ACTIONS:
        assert work_order_refusal(DISPATCHER, action, "gusu-drainage", None, None, TEAMS) is None
        why = work_order_refusal(DISPATCHER, action, "gusu-traffic", "traffic-police-1")
        assert why is not None and "gusu-traffic" in why
    assert work_order_refusal(DISPATCHER, "assign", "gusu-drainage", "drainage-1",
                              "drainage-2", TEAMS) is None
    why = work_order_refusal(DISPATCHER, "assign", "gusu-drainage", "drainage-1",
                             "traffic-police-1", TEAMS)
    assert why is not None and "traffic-police-1 is gusu-traffic's" in why
    assert work_order_refusal(DISPATCHER, "assign", "gusu-drainage", None, "ghost", TEAMS)


def test_a_team_accepts_and_resolves_its_own_orders_only() -> None:
    assert work_order_refusal(TEAM, "accept", "gusu-drainage", "drainage-1") is None
    assert work_order_refusal(TEAM, "resolve", "gusu-drainage", "drainage-1") is None
    for action in ("assign", "close", "reopen"):
        assert work_order_refusal(TEAM, action, "gusu-drainage", "drainage-1") is not None
    why = work_order_refusal(TEAM, "accept", "gusu-drainage", "drainage-2")
    assert why is not None and "drainage-2" in why
    assert work_order_refusal(TEAM, "accept", "gusu-drainage", None) is not None
    assert permissions(TEAM)["work_orders"] == {"scope": "team", "team": "drainage-1",
                                                "actions": ["accept", "resolve"]}


@pytest.mark.parametrize(("args", "message"), [
    (("bad name", "viewer"), "user name"),
    (("x", "root"), "role 'root'"),
    (("x", "dispatcher"), "a dispatcher needs a department"),
    (("x", "team", "gusu-drainage"), "a team user needs a team"),
])
def test_impossible_identities_are_refused(args: tuple[str, ...], message: str) -> None:
    with pytest.raises(IdentityError, match=message):
        Identity(*args)  # type: ignore[arg-type]


def test_roles_are_the_contracts() -> None:
    assert ROLES == ("viewer", "operator", "dispatcher", "team", "admin")


def test_a_dispatcher_of_each_of_the_53_departments_acts_on_its_orders_only() -> None:
    cfg = load_config(REPO / "config.yaml", env={})
    departments = [d.id for d in cfg.departments]
    assert len(departments) == 53
    teams = {t.id: t.department for t in cfg.teams}
    first_team = {}
    for t, d in teams.items():
        first_team.setdefault(d, t)
    assert set(first_team) == set(departments), "every department has a team to dispatch"
    for dept in departments:
        who = Identity(f"desk-{dept}", "dispatcher", dept)
        for other in departments:
            refused = work_order_refusal(who, "accept", other, first_team[other])
            assert (refused is None) == (other == dept), (dept, other)
        assert work_order_refusal(who, "assign", dept, None, first_team[dept], teams) is None
