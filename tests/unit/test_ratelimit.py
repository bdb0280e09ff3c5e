"""The login rate limit (alerts.ratelimit): a sliding window per key, on a clock the test drives."""

from __future__ import annotations

import pytest

from alerts.ratelimit import RateLimit


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_limit_holds_per_key_and_the_window_slides() -> None:
    clock = Clock()
    limit = RateLimit(3, 60, clock)
    for _ in range(3):
        assert limit.retry_after("a") is None
        limit.hit("a")
        clock.now += 10
    assert limit.retry_after("a") == 30  # the first hit leaves the window 60 s after it
    assert limit.retry_after("b") is None, "another key is not held up"
    clock.now += 30
    assert limit.retry_after("a") is None
    limit.hit("a")
    assert limit.retry_after("a") == 10


def test_retry_after_is_at_least_one_second() -> None:
    clock = Clock()
    limit = RateLimit(1, 60, clock)
    limit.hit("a")
    clock.now += 59.9
    assert limit.retry_after("a") == 1


def test_many_keys_stay_bounded() -> None:
    clock = Clock()
    limit = RateLimit(2, 60, clock, max_keys=100)
    for i in range(1000):
        limit.hit(f"10.0.{i // 256}.{i % 256}")
        clock.now += 0.01
    assert len(limit._hits) <= 100
    limit.hit("last")
    assert limit.retry_after("last") is None
    limit.hit("last")
    assert limit.retry_after("last") is not None


@pytest.mark.parametrize(("n", "window"), [(0, 60), (1, 0)])
def test_a_limit_that_means_nothing_is_refused(n: int, window: float) -> None:
    with pytest.raises(ValueError, match="limit"):
        RateLimit(n, window)
