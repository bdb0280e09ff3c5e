"""The supervisor: a worker that fails is logged, counted and run again; a stop ends it."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import pytest

from citywatch.supervisor import Supervisor, Worker

WAIT_S = 10.0


def wait_until(check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT_S
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.fixture
def stop() -> threading.Event:
    return threading.Event()


def test_a_worker_that_raises_is_restarted_and_counted(stop: threading.Event,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    runs: list[int] = []
    changes: list[tuple[str, bool, int]] = []

    def target(s: threading.Event) -> None:
        runs.append(len(runs))
        if len(runs) <= 2:
            raise RuntimeError(f"bug number {len(runs)}")
        s.wait()

    sup = Supervisor(stop, backoff_s=(0.01, 0.02),
                     on_change=lambda w: changes.append((w.name, w.running, w.restarts)))
    with caplog.at_level(logging.ERROR, logger="citywatch.supervisor"):
        w = sup.spawn("ingest", target)
        wait_until(lambda: len(runs) == 3 and w.alive)
    assert w.restarts == 2
    assert w.last_error == "RuntimeError: bug number 2"
    assert "worker ingest failed (RuntimeError: bug number 1)" in caplog.text
    assert caplog.records[0].exc_info is not None  # with the traceback
    assert ("ingest", True, 2) in changes and ("ingest", False, 1) in changes
    stop.set()
    sup.join(WAIT_S)
    assert not w.alive and w.thread is not None and not w.thread.is_alive()
    assert w.restarts == 2  # a requested stop is not a restart


def test_a_worker_that_returns_by_itself_is_restarted(stop: threading.Event) -> None:
    runs: list[int] = []

    def target(s: threading.Event) -> None:
        runs.append(1)
        if len(runs) > 1:
            s.wait()

    sup = Supervisor(stop, backoff_s=(0.01, 0.02))
    w = sup.spawn("outbox", target)
    wait_until(lambda: len(runs) == 2)
    assert w.restarts == 1 and w.last_error == "returned while the service was running"
    stop.set()
    sup.join(WAIT_S)


def test_while_waiting_to_restart_the_worker_is_not_alive(stop: threading.Event) -> None:
    failed = threading.Event()

    def target(_s: threading.Event) -> None:
        failed.set()
        raise ValueError("always")

    sup = Supervisor(stop, backoff_s=(30.0, 30.0))  # the first back-off outlasts the test
    w = sup.spawn("ingest", target)
    assert failed.wait(WAIT_S)
    wait_until(lambda: w.restarts == 1)
    assert not w.alive
    stop.set()  # a stop ends the back-off at once
    sup.join(WAIT_S)
    assert w.thread is not None and not w.thread.is_alive()


def test_a_failing_on_change_does_not_take_the_worker_down(stop: threading.Event) -> None:
    started = threading.Event()

    def broken(_w: Worker) -> None:
        raise KeyError("metrics")

    def target(s: threading.Event) -> None:
        started.set()
        s.wait()

    sup = Supervisor(stop, on_change=broken)
    w = sup.spawn("ingest", target)
    assert started.wait(WAIT_S)
    assert w.alive and w.restarts == 0
    stop.set()
    sup.join(WAIT_S)


def test_names_are_unique(stop: threading.Event) -> None:
    sup = Supervisor(stop)
    sup.spawn("ingest", threading.Event.wait)
    with pytest.raises(ValueError, match="already exists"):
        sup.spawn("ingest", lambda s: None)
    stop.set()
    sup.join(WAIT_S)
