"""Device clocks against the server's (citywatch.clocks): who is corrected, when, how much."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from citywatch.clocks import ZERO, ClockParams, ClockState, observe, server_time

T0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
S = timedelta(seconds=1)
HOUR = timedelta(hours=1)
PARAMS = ClockParams(tolerance=60 * S, confirm=60 * S)

Batch = tuple[datetime, list[tuple[str, datetime]]]  # (server time, readings)


def live(skews: dict[str, timedelta], seconds: int, start: datetime = T0, every: int = 10,
         delay: timedelta = 50 * timedelta(milliseconds=1)) -> Iterator[Batch]:
    """Each device measures every ``every`` s (true time) and stamps with its skewed clock; the
    server takes one batch a second."""
    for t in range(seconds):
        readings = [(d, start + t * S + skew) for d, skew in sorted(skews.items())
                    if t % every == 0]
        if readings:
            yield start + t * S + delay, readings


def run(batches: Sequence[Batch] | Iterator[Batch], state: ClockState | None = None
        ) -> tuple[ClockState, list[tuple[str, datetime, datetime, datetime]]]:
    """Feed the batches; returns the state and (device, ts, evaluated at, server time)."""
    state = state or ClockState()
    seen: list[tuple[str, datetime, datetime, datetime]] = []
    for now, readings in batches:
        state, times, _changes = observe(state, readings, now, PARAMS)
        seen += [(d, ts, at, now) for (d, ts), at in zip(readings, times, strict=True)]
    return state, seen


FLEET = {f"wl-{i:02d}": ZERO for i in range(1, 6)}


def test_a_fleet_with_good_clocks_is_evaluated_as_stamped() -> None:
    state, seen = run(live(FLEET, 600))
    assert state.corrected() == {}
    assert all(at == ts for _d, ts, at, _now in seen)


def test_a_device_an_hour_ahead_is_evaluated_at_receipt_from_its_first_reading() -> None:
    state, seen = run(live({**FLEET, "ahead": HOUR}, 120))
    ahead = [(ts, at, now) for d, ts, at, now in seen if d == "ahead"]
    assert all(abs(at - now) < S for _ts, at, now in ahead)  # the first one too
    # Its own spacing is kept: the rules' rise-per-minute and hold times still work.
    assert [b[1] - a[1] for a, b in itertools.pairwise(ahead)] == \
        [10 * S] * (len(ahead) - 1)
    assert list(state.corrected()) == ["ahead"]
    assert abs(state.corrected()["ahead"].offset - HOUR) < S
    others = [(ts, at) for d, ts, at, _now in seen if d != "ahead"]
    assert all(ts == at for ts, at in others)


def test_a_device_a_little_ahead_is_never_evaluated_in_the_servers_future() -> None:
    state, seen = run(live({**FLEET, "fast": 30 * S}, 120))
    assert state.corrected() == {}  # within the tolerance: not flagged
    assert all(at <= now for _d, _ts, at, now in seen)


def test_a_device_an_hour_behind_is_corrected_once_its_offset_has_held() -> None:
    state, seen = run(live({**FLEET, "slow": -HOUR}, 300))
    slow = [(ts, at, now) for d, ts, at, now in seen if d == "slow"]
    before = [at for ts, at, _now in slow if at == ts]
    after = [(at, now) for ts, at, now in slow if at != ts]
    # Until its offset has held for a minute it could be its own backlog: evaluated as stamped.
    assert 2 <= len(before) <= 8
    assert after and all(abs(at - now) < S for at, now in after)
    assert abs(state.corrected()["slow"].offset + HOUR) < S


def test_a_device_replaying_its_own_backlog_is_not_taken_for_a_slow_clock() -> None:
    # wl-01 was cut off for 30 minutes and its client queued 180 readings; on reconnect they
    # arrive within two seconds, among the live fleet, and then it reports live again.
    state, _ = run(live(FLEET, 1800))
    now = T0 + 1800 * S
    backlog = [("wl-01", T0 + 1800 * S - HOUR / 2 + i * 10 * S) for i in range(180)]
    batches: list[Batch] = [(now, backlog[:90]), (now + S, backlog[90:])]
    state, seen = run([*batches, *live(FLEET, 300, start=now + 2 * S)], state)
    assert state.corrected() == {}
    assert all(at == ts for _d, ts, at, _now in seen)


def test_a_broker_backlog_drained_by_the_whole_fleet_corrects_nobody() -> None:
    # The engine was away 20 minutes: every device's readings arrive late, all at once.
    held = [r for _t, rs in live(FLEET, 1200) for r in rs]
    now = T0 + 1200 * S
    batches = [(now + i * timedelta(milliseconds=100), held[i * 50:(i + 1) * 50])
               for i in range((len(held) + 49) // 50)]
    state, seen = run(batches)
    assert state.corrected() == {}
    assert all(at == ts for _d, ts, at, _now in seen)
    assert state.fleet_lag < 60 * S  # at the end of the drain, the fleet is current again


def test_skewed_clocks_are_found_inside_a_drained_backlog() -> None:
    skews = {**FLEET, "ahead": HOUR, "slow": -HOUR}
    held = [r for _t, rs in live(skews, 1200) for r in rs]
    now = T0 + 1200 * S
    batches = [(now + i * timedelta(milliseconds=100), held[i * 35:(i + 1) * 35])
               for i in range((len(held) + 34) // 35)]
    state, seen = run(batches)
    assert set(state.corrected()) == {"ahead", "slow"}
    # Corrected into the backlog's own time (event time), not to the time of the drain.
    late = [(d, ts, at) for d, ts, at, _now in seen if d != "wl-01"][-10:]
    for d, ts, at in late:
        true = ts - skews[d]
        assert abs(at - true) < 60 * S, (d, at, true)


def test_a_fixed_clock_is_trusted_again_at_once() -> None:
    state, _ = run(live({**FLEET, "ahead": HOUR, "slow": -HOUR}, 300))
    assert set(state.corrected()) == {"ahead", "slow"}
    state, seen = run(live({**FLEET, "ahead": ZERO, "slow": ZERO}, 30, start=T0 + 300 * S),
                      state)
    assert state.corrected() == {}
    assert all(at == ts for _d, ts, at, _now in seen)


def test_a_lone_device_ahead_is_corrected_but_a_lone_device_behind_cannot_be() -> None:
    state, _ = run(live({"ahead": HOUR}, 120))
    assert list(state.corrected()) == ["ahead"]
    state, seen = run(live({"slow": -HOUR}, 600))
    assert state.corrected() == {}  # nothing to compare with: it may be a backlog
    assert all(at == ts for _d, ts, at, _now in seen)


def test_redeliveries_get_the_devices_current_correction() -> None:
    state, _ = run(live({**FLEET, "ahead": HOUR}, 60))
    now = T0 + 61 * S
    assert abs(server_time(state, "ahead", now + HOUR, now) - now) < S
    assert server_time(state, "wl-01", now - S, now) == now - S
    assert server_time(state, "wl-01", now + 5 * S, now) == now  # never ahead of the server


def test_observe_leaves_the_old_state_alone() -> None:
    state, _ = run(live(FLEET, 20))
    before = dict(state.devices)
    observe(state, [("new", T0 + HOUR)], T0 + 21 * S, PARAMS)
    assert dict(state.devices) == before


# --- properties --------------------------------------------------------------------------------

skew = st.integers(-86400, 86400).map(lambda s: timedelta(seconds=s))
delays = st.integers(0, 20_000).map(lambda ms: timedelta(milliseconds=ms))


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.sampled_from([f"d{i}" for i in range(8)]), skew, min_size=1),
       st.lists(delays, min_size=1, max_size=40))
def test_nothing_is_evaluated_in_the_servers_future(skews: dict[str, timedelta],
                                                   jitter: list[timedelta]) -> None:
    state = ClockState()
    for t in range(0, 600, 10):
        now = T0 + t * S + jitter[t // 10 % len(jitter)]
        readings = [(d, T0 + t * S + s) for d, s in skews.items()]
        state, times, _ = observe(state, readings, now, PARAMS)
        assert all(at <= now for at in times)


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.sampled_from([f"d{i}" for i in range(8)]), skew, min_size=1),
       st.lists(delays, min_size=1, max_size=40))
def test_a_steady_fleet_ends_up_on_the_servers_timeline(skews: dict[str, timedelta],
                                                        jitter: list[timedelta]) -> None:
    # Four devices with good clocks, up to eight skewed ones by up to a day, transport delays
    # up to 20 s: after two minutes every reading is evaluated within the tolerance of the time
    # it was measured, and a device's readings keep their order.
    fleet = {**{f"good-{i}": ZERO for i in range(4)}, **skews}
    if sum(1 for s in fleet.values() if abs(s) > 60 * S) * 2 >= len(fleet):
        fleet.update({f"good-{i}": ZERO for i in range(4, 4 + len(skews))})
    state = ClockState()
    last: dict[str, datetime] = {}
    now = T0
    for t in range(0, 300, 10):
        true = T0 + t * S
        now = max(now, true + jitter[t // 10 % len(jitter)])  # the server's clock runs forward
        readings = [(d, true + s) for d, s in sorted(fleet.items())]
        state, times, _ = observe(state, readings, now, PARAMS)
        for (d, _ts), at in zip(readings, times, strict=True):
            if t >= 120:
                assert abs(at - true) <= 60 * S, (d, fleet[d], at - true)
            # Never backwards (the engine would take it for too late); equal happens when a
            # device a little ahead is held at the time of receipt, and its seq breaks the tie.
            assert d not in last or at >= last[d]
            last[d] = at
