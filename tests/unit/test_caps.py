"""The per-incident caps and the retention settings: pure values, checked at construction."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from alerts.policy import Policy, cap_evidence
from alerts.retention import Retention


def test_evidence_under_the_cap_is_kept_whole() -> None:
    assert cap_evidence([1, 2, 3], 2, 1) == ([1, 2, 3], 0)


def test_evidence_over_the_cap_keeps_the_first_and_the_newest() -> None:
    assert cap_evidence(list(range(10)), 2, 3) == ([0, 1, 7, 8, 9], 5)


@given(st.lists(st.integers(), max_size=60), st.integers(1, 10), st.integers(1, 10))
def test_capping_as_items_arrive_equals_capping_them_all_at_once(
        items: list[int], first: int, last: int) -> None:
    """What the store does (cut on every append) is what one cut of the whole history gives."""
    kept: list[int] = []
    dropped = 0
    for item in items:
        kept, more = cap_evidence([*kept, item], first, last)
        dropped += more
    assert (kept, dropped) == cap_evidence(items, first, last)
    assert len(kept) == min(len(items), first + last)
    assert kept[:first] == items[:first] and kept[-last:] == items[-last:][-len(kept):]


@pytest.mark.parametrize("bad", [{"evidence_keep_first": 0}, {"evidence_keep_last": 0},
                                 {"history_repeats_max": 0}])
def test_a_cap_of_nothing_is_refused(bad: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="must be 1 or more"):
        Policy(**bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="must be 1 or more"):
        cap_evidence([1], 0, 1)


@pytest.mark.parametrize("bad", [{"outbox_keep_days": 0}, {"keep_days": 0}, {"batch_size": 0}])
def test_retention_of_nothing_is_refused(bad: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="must be 1 or more"):
        Retention(**bad)
