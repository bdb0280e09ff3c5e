"""The engine is killed (SIGKILL) mid-storm, mid-batch (inside its transaction) and between its
commit and its acknowledgement to the broker: no reading lost, none stored or evaluated twice, no
second alert or work order for an incident, no dispatch forgotten."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from citywatch.config import Config
from tests.fix_faults import (
    EngineProcess,
    FaultBroker,
    Fleet,
    TcpProxy,
    flood_gauges,
    stored_counts,
    stored_total,
    storm,
    take_ledger,
    wait_for,
    wait_recovered,
    wait_settled,
)

pytestmark = [pytest.mark.integration, pytest.mark.faults]

STEPS = 120  # readings per gauge: the depth rises to 40 cm (red from 25 cm), then falls to 0


@pytest.mark.parametrize("receiver", ["process", "thread"])
def test_engine_sigkill_mid_storm(
        fault_broker: FaultBroker, fresh_db_url: str, fault_config: Config,
        engine_factory: Callable[..., EngineProcess], receiver: str) -> None:
    """SIGKILL while the storm is a third through: alerts open, orders in flight, batches
    half-written. After the restart every order keeps its deadlines and the worst level of its
    incident, every alert clears once the water is gone, every dispatch goes out."""
    zones = flood_gauges(fault_config)
    assert len(zones) >= 4
    # broker.receiver: the MQTT session in the engine's process, or in one of its own (which
    # must die with the engine and leave the session to the restarted one).
    engine = engine_factory(fault_broker.url, fresh_db_url,
                            {"CITYWATCH_BROKER_RECEIVER": receiver})
    engine.start()
    fleet = Fleet(fault_broker.url, storm(sorted(zones.values()), STEPS), rate=150).start()
    try:
        wait_for("a third of the storm stored",
                 lambda: stored_total(fresh_db_url) >= len(fleet.readings) // 3, timeout=60,
                 interval=0.05)
        t0 = time.monotonic()
        engine.kill()
        assert stored_total(fresh_db_url) < len(fleet.readings)
        time.sleep(1.0)  # the storm goes on while the engine is dead
        end = time.monotonic()  # recovery counts from the restart, start-up included
        engine.start()
        recovery = wait_recovered(fleet, fresh_db_url, fleet.published, end)
        wait_settled(fleet, fresh_db_url)
        ledger = take_ledger("engine SIGKILL mid-storm" + ("" if receiver == "process" else
                                                            " (MQTT in a thread)"),
                             fleet, fresh_db_url,
                             fault_s=end - t0, recovery_s=recovery)
    finally:
        fleet.close()
    ledger.check(incidents=dict.fromkeys(zones, "waterlogging"))
    with psycopg.connect(fresh_db_url) as conn:
        # One alert per incident, cleared once the water went down after the restart.
        assert conn.execute("SELECT count(*) FROM alerts WHERE cleared IS NULL").fetchone() == (0,)
        # The orders kept the worst level of their incident: 40 cm in an underpass is red.
        assert conn.execute("SELECT DISTINCT severity FROM work_orders").fetchall() == [(1,)]
        assert conn.execute("SELECT count(*) FROM work_orders WHERE respond_by IS NULL "
                            "OR resolve_by IS NULL").fetchone() == (0,)
    assert engine.health()["counts"]["work_orders"] == len(zones)


@pytest.fixture
def table_lock(fresh_db_url: str) -> Iterator[Callable[[str], psycopg.Connection[Any]]]:
    """``lock(table)``: holds an EXCLUSIVE lock on ``table`` in an open transaction (so the
    engine's batch transaction blocks at its first write to it) until the connection closes."""
    held: list[psycopg.Connection[Any]] = []

    def lock(table: str) -> psycopg.Connection[Any]:
        conn = psycopg.connect(fresh_db_url)
        conn.execute(f"LOCK TABLE {table} IN EXCLUSIVE MODE")
        held.append(conn)
        return conn

    yield lock
    for conn in held:
        conn.close()


def engine_waiting_on_lock(db_url: str) -> bool:
    with psycopg.connect(db_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND backend_xid IS NOT NULL").fetchone()
    return bool(row and row[0])


def test_engine_sigkill_mid_batch(
        fault_broker: FaultBroker, fresh_db_url: str, fault_config: Config,
        engine_factory: Callable[..., EngineProcess],
        table_lock: Callable[[str], psycopg.Connection[Any]]) -> None:
    """The engine is killed inside a batch's transaction: its readings are inserted (not yet
    committed) and it waits to update the devices' last-seen times, which the test holds locked.
    The transaction dies with the process; the broker redelivers the whole batch."""
    zones = flood_gauges(fault_config)
    engine = engine_factory(fault_broker.url, fresh_db_url)
    engine.start()
    fleet = Fleet(fault_broker.url, storm(sorted(zones.values()), STEPS), rate=150).start()
    try:
        wait_for("some of the storm stored", lambda: stored_total(fresh_db_url) >= 200, timeout=60,
                 interval=0.05)
        locker = table_lock("devices")
        wait_for("a batch blocked inside its transaction",
                 lambda: engine_waiting_on_lock(fresh_db_url), timeout=30, interval=0.05)
        before = stored_total(fresh_db_url)
        t0 = time.monotonic()
        engine.kill()
        locker.close()  # the dead engine's transaction is rolled back when its socket closes
        wait_for("the dead engine's transaction to end",
                 lambda: not engine_waiting_on_lock(fresh_db_url), timeout=30)
        assert stored_total(fresh_db_url) == before, "a killed batch must leave no rows"
        end = time.monotonic()
        engine.start()
        recovery = wait_recovered(fleet, fresh_db_url, fleet.published, end)
        wait_settled(fleet, fresh_db_url)
        ledger = take_ledger("engine SIGKILL mid-batch (inside the transaction)", fleet,
                             fresh_db_url, fault_s=end - t0, recovery_s=recovery)
    finally:
        fleet.close()
    ledger.check(incidents=dict.fromkeys(zones, "waterlogging"))


def test_engine_sigkill_between_commit_and_acknowledgement(
        fault_broker: FaultBroker, fresh_db_url: str, fault_config: Config,
        engine_factory: Callable[..., EngineProcess]) -> None:
    """The window made reproducible: the engine talks to the broker through our proxy, which
    stops passing what the engine sends (its PUBACKs, its dispatches). The engine commits
    readings, alerts and orders; the broker never hears the acknowledgements; then SIGKILL.
    The restarted engine gets the whole unacknowledged backlog again: it must store none of it
    twice, open no second alert or order, and still send every dispatch."""
    zones = flood_gauges(fault_config)
    proxy = TcpProxy(fault_broker.port or 0)
    engine = engine_factory(proxy.url, fresh_db_url)
    try:
        engine.start()
        readings = storm(sorted(zones.values()), STEPS)
        fleet = Fleet(fault_broker.url, readings, rate=200)
        try:
            proxy.hold_up()
            # The first half: the water rises past red everywhere; alerts and orders open.
            half = len(readings) // 2
            fleet.start(until=half)
            fleet.wait_done(60)
            assert fleet.wait_acked(30)
            wait_for("the first half committed",
                     lambda: set(fleet.acked) <= stored_counts(fresh_db_url).keys(), timeout=60)
            with psycopg.connect(fresh_db_url) as conn:
                opened = conn.execute("SELECT count(*) FROM alerts").fetchone()
            assert opened == (len(zones),), "the rising water should have opened the alerts"
            t0 = time.monotonic()
            engine.kill()  # committed, never acknowledged
            proxy.reset()  # the held PUBACKs die with the connection, unread
            proxy.restore()
            end = time.monotonic()
            engine.start()
            # The second half: the water falls, the alerts clear.
            fleet.start()
            recovery = wait_recovered(fleet, fresh_db_url, half, end)
            wait_settled(fleet, fresh_db_url)
            dups = engine.health()["counts"]["duplicates"]
            ledger = take_ledger(
                "engine SIGKILL between commit and acknowledgement", fleet, fresh_db_url,
                fault_s=end - t0, recovery_s=recovery,
                note=f"the restarted engine recognised {dups} redelivered messages as stored")
        finally:
            fleet.close()
    finally:
        proxy.close()
    ledger.check(incidents=dict.fromkeys(zones, "waterlogging"))
    # The window was really there: the broker redelivered what the engine had committed.
    assert dups >= 1, ledger.render()
