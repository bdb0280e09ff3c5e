"""The health judgement: dead or stuck workers fail the health check; busy ones do not."""

from __future__ import annotations

from citywatch.liveness import Counter, WorkerState, judge, recent_growth, stalled_for

LIMIT = 60.0


def worker(alive: bool = True, restarts: int = 0, waiting_since: float | None = None,
           last_progress: float | None = None) -> WorkerState:
    return WorkerState(alive, restarts, waiting_since, last_progress)


def test_an_idle_worker_is_healthy_however_long_ago_it_last_worked() -> None:
    verdict = judge({"ingest": worker(last_progress=0.0)}, now=10_000.0, stuck_after_s=LIMIT)
    assert not verdict.failing and verdict.problems == ()
    assert verdict.workers["ingest"] == {"alive": True, "restarts": 0,
                                         "last_progress_age_s": 10_000.0, "waiting_s": 0.0,
                                         "stuck": False}


def test_a_worker_that_never_worked_reports_no_age() -> None:
    verdict = judge({"outbox": worker()}, now=5.0, stuck_after_s=LIMIT)
    assert verdict.workers["outbox"]["last_progress_age_s"] is None
    assert not verdict.failing


def test_work_waiting_past_the_limit_without_progress_is_stuck() -> None:
    verdict = judge({"ingest": worker(waiting_since=100.0, last_progress=50.0)}, now=161.0,
                    stuck_after_s=LIMIT)
    assert verdict.failing
    assert verdict.workers["ingest"]["stuck"] is True
    assert verdict.workers["ingest"]["waiting_s"] == 61.0
    assert verdict.problems == ("ingest: work has waited 61 s without progress (limit 60 s)",)


def test_work_waiting_just_up_to_the_limit_is_not_stuck() -> None:
    assert not judge({"ingest": worker(waiting_since=100.0)}, now=160.0,
                     stuck_after_s=LIMIT).failing


def test_steady_traffic_with_steady_progress_is_not_stuck() -> None:
    # Something has been waiting for ten minutes (the queue is never empty), but a batch was
    # stored a second ago: the clock of "no progress" starts at the last progress.
    w = worker(waiting_since=0.0, last_progress=599.0)
    assert stalled_for(w, 600.0) == 1.0
    assert not judge({"ingest": w}, now=600.0, stuck_after_s=LIMIT).failing


def test_a_dead_worker_fails_even_with_nothing_to_do() -> None:
    verdict = judge({"ingest": worker(), "outbox": worker(alive=False, restarts=3)}, now=1.0,
                    stuck_after_s=LIMIT)
    assert verdict.failing
    assert verdict.problems == ("outbox worker is not running (restarts so far: 3)",)
    assert verdict.workers["outbox"]["alive"] is False
    assert verdict.workers["outbox"]["restarts"] == 3
    assert verdict.workers["ingest"]["alive"] is True


def test_a_counter_grows_on_its_first_nonzero_reading_and_on_increase_only() -> None:
    c = Counter().seen(0, now=1.0)
    assert c.grew_at is None
    c = c.seen(15, now=2.0)  # dropped before we watched: still news
    assert (c.value, c.grew_at) == (15, 2.0)
    c = c.seen(15, now=3.0)
    assert c.grew_at == 2.0
    c = c.seen(16, now=4.0)
    assert c.grew_at == 4.0


def test_a_counter_that_starts_again_at_zero_is_a_reset_not_growth() -> None:
    c = Counter(15, grew_at=2.0).seen(0, now=10.0)  # the broker restarted
    assert (c.value, c.grew_at) == (0, 2.0)
    c = c.seen(3, now=11.0)
    assert c.grew_at == 11.0
    assert Counter(15, grew_at=2.0).seen(4, now=12.0).grew_at == 12.0  # restarted and dropped


def test_growth_warns_for_the_window_after_the_last_increase() -> None:
    assert not recent_growth(Counter(), now=0.0, window_s=600)
    c = Counter(5, grew_at=100.0)
    assert recent_growth(c, now=700.0, window_s=600)
    assert not recent_growth(c, now=700.1, window_s=600)
