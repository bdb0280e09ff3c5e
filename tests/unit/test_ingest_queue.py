"""The ingest queue: bounded in messages and bytes; QoS 0 dropped beyond its budget, QoS 1 waits."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from citywatch.ingest_queue import Budget, IngestQueue, size_of
from sensing.limits import ENGINE_MAX_PACKET_BYTES
from sensing.mqtt import Inbound, MqttLink

T0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
WAIT_S = 10.0
TOPIC = "city/water/wl-01/telemetry"


def msg(mid: int, qos: int = 1, size: int = 10) -> Inbound:
    return Inbound(TOPIC, b"x" * size, mid, qos, T0)


def wait_until(check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT_S
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_fifo_across_qos_and_accounting_in_bytes() -> None:
    q = IngestQueue(Budget(10, 10_000), Budget(10, 10_000))
    for m in (msg(1), msg(2, qos=0), msg(3, qos=2)):
        assert q.put(m)
    assert q.qsize() == 3
    assert q.nbytes() == 3 * size_of(msg(1)) == 3 * (10 + len(TOPIC))
    assert [q.get(0).mid, q.get_nowait().mid, q.get(0).mid] == [1, 2, 3]
    assert (q.qsize(), q.nbytes(), q.oldest_since()) == (0, 0, None)
    with pytest.raises(queue.Empty):
        q.get_nowait()
    with pytest.raises(queue.Empty):
        q.get(timeout=0)


def test_qos0_beyond_its_message_budget_is_dropped() -> None:
    q = IngestQueue(Budget(10, 10_000), Budget(2, 10_000))
    assert [q.put(msg(i, qos=0)) for i in range(4)] == [True, True, False, False]
    assert q.qsize() == 2
    q.get_nowait()
    assert q.put(msg(9, qos=0))  # room again


def test_qos0_beyond_its_byte_budget_is_dropped() -> None:
    one = size_of(msg(0, qos=0, size=100))
    q = IngestQueue(Budget(10, 10_000), Budget(100, 2 * one + len(TOPIC)))
    assert [q.put(msg(i, qos=0, size=100)) for i in range(3)] == [True, True, False]
    assert q.put(msg(3, qos=0, size=0))  # a small one still fits


def test_a_full_qos0_budget_never_crowds_out_qos1() -> None:
    q = IngestQueue(Budget(3, 10_000), Budget(1, 10_000))
    assert q.put(msg(1, qos=0))
    assert not q.put(msg(2, qos=0))
    assert all(q.put(msg(i, qos=1)) for i in range(3, 6))
    assert q.qsize() == 4


def test_an_empty_queue_takes_one_message_larger_than_its_budget() -> None:
    q = IngestQueue(Budget(5, 10), Budget(5, 10))
    assert q.put(msg(1, qos=0, size=500))
    assert not q.put(msg(2, qos=0, size=1))
    assert q.put(msg(3, qos=1, size=500))


def test_qos1_beyond_its_budget_waits_for_room_and_is_never_dropped() -> None:
    q = IngestQueue(Budget(2, 10_000), Budget(2, 10_000))
    assert q.put(msg(1)) and q.put(msg(2))
    done = threading.Event()
    result: list[bool] = []

    def producer() -> None:  # paho's network thread
        result.append(q.put(msg(3)))
        done.set()

    t = threading.Thread(target=producer, daemon=True)
    t.start()
    wait_until(lambda: q.blocked == 1)
    assert not done.is_set(), "put returned while the queue was full"
    assert q.get(WAIT_S).mid == 1  # the ingest worker makes room
    assert done.wait(WAIT_S)
    assert result == [True]
    assert [q.get(WAIT_S).mid, q.get(WAIT_S).mid] == [2, 3]


def test_close_releases_a_waiting_put() -> None:
    q = IngestQueue(Budget(1, 10_000), Budget(1, 10_000))
    q.put(msg(1))
    t = threading.Thread(target=q.put, args=(msg(2),), daemon=True)
    t.start()
    q.close()
    t.join(WAIT_S)
    assert not t.is_alive()


def test_a_blocked_get_wakes_for_a_put() -> None:
    q = IngestQueue(Budget(1, 10_000), Budget(1, 10_000))
    got: list[int] = []
    t = threading.Thread(target=lambda: got.append(q.get(WAIT_S).mid), daemon=True)
    t.start()
    q.put(msg(7))
    t.join(WAIT_S)
    assert got == [7]


def test_budgets_for_a_receive_maximum_hold_every_message_the_broker_may_send() -> None:
    q = IngestQueue.for_receive_maximum(20)
    assert q.reliable == Budget(20, 20 * ENGINE_MAX_PACKET_BYTES)
    # The largest packet the broker may send us, Receive Maximum times: never waits.
    biggest = ENGINE_MAX_PACKET_BYTES - len(TOPIC)
    assert all(q.put(msg(i, size=biggest)) for i in range(20))
    assert q.blocked == 0


def test_budget_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="at least one"):
        Budget(0, 10)


def test_a_reconnect_drops_the_old_connections_reliable_copies_and_frees_their_room() -> None:
    q = IngestQueue(Budget(3, 10_000), Budget(10, 10_000))
    for m in (msg(1), msg(2, qos=0), msg(3)):
        assert q.put(m)
    assert q.unfinished_tasks == 3
    # Connection 2: the broker resends 1 and 3 (same ids); QoS 0 is never resent, so 2 stays.
    assert q.drop_stale(2) == 2
    assert [q.get(0).mid] == [2] and q.qsize() == 0
    assert q.unfinished_tasks == 1  # the QoS 0 one, taken and not yet done
    fresh = [replace(msg(mid), session=2) for mid in (1, 3, 4)]
    assert all(q.put(m) for m in fresh)  # the room of the dropped copies is free again
    assert q.drop_stale(2) == 0
    q.task_done(4)
    assert q.unfinished_tasks == 0


def test_only_messages_of_the_current_connection_are_acknowledged() -> None:
    acked: list[tuple[int, int]] = []

    class Client:
        def ack(self, mid: int, qos: int) -> None:
            acked.append((mid, qos))

    link = MqttLink("mqtt://127.0.0.1:1", "t", (), lambda _m: None)
    link._client = Client()  # type: ignore[assignment]
    link.session = 2
    old, current, best_effort = (replace(msg(7), session=1), replace(msg(7), session=2),
                                 replace(msg(8, qos=0), session=2))
    link.ack([old, current, best_effort])
    # The old copy's id may already name another message on the new connection.
    assert acked == [(7, 1)]
