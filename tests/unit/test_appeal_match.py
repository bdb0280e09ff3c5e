"""Which incident an appeal is about (alerts.appeal_match)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from hypothesis import given
from hypothesis import strategies as st

from alerts.appeal_match import MatchParams, Target, best, score

P = MatchParams()


def alike(_t: str, _o: Sequence[str]) -> float:
    return 1.0


def unlike(_t: str, _o: Sequence[str]) -> float:
    return 0.0


def target(d: float = 0.0, age_h: float = 0.0, kind: str = "incident", cat: str = "waterlogging",
           live: bool = True, caller: bool = False, ident: str = "AL-1") -> Target:
    return Target(kind, ident, cat, d, timedelta(hours=age_h), ("x",), caller,  # type: ignore[arg-type]
                  live and kind == "incident")


def test_another_category_too_far_or_too_old_is_never_the_same() -> None:
    assert score("x", "traffic", target(), P, alike) is None
    assert score("x", "waterlogging", target(d=P.radius_m + 1), P, alike) is None
    assert score("x", "waterlogging", target(kind="appeal", age_h=13), P, alike) is None
    assert score("x", "waterlogging", target(live=False, age_h=7), P, alike) is None


def test_an_open_incident_at_the_place_takes_an_appeal_that_says_little() -> None:
    v = best("x", "waterlogging", [target()], P, lambda _t, _o: 0.5)
    assert v is not None and v.score >= P.threshold
    assert "an open incident: 0 m away" in v.how


def test_the_same_caller_tips_a_near_miss() -> None:
    near_miss = target(d=100, kind="appeal", age_h=2)
    assert best("x", "waterlogging", [near_miss], P, lambda _t, _o: 0.6) is None
    again = target(d=100, kind="appeal", age_h=2, caller=True)
    assert best("x", "waterlogging", [again], P, lambda _t, _o: 0.6) is not None


@given(st.floats(0, 400), st.floats(0, 400))
def test_nearer_is_never_worse(d1: float, d2: float) -> None:
    a = score("x", "waterlogging", target(d=min(d1, d2)), P, unlike)
    b = score("x", "waterlogging", target(d=max(d1, d2)), P, unlike)
    if b is not None:
        assert a is not None and a.score >= b.score


def test_incidents_win_ties_over_cases() -> None:
    v = best("x", "waterlogging", [target(kind="appeal", ident="AP-1"), target()], P, alike)
    assert v is not None and v.target.kind == "incident"
