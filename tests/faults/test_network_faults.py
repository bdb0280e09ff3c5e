"""The network between the engine and the broker is cut for 30 s (our loopback proxy stops
passing bytes both ways), mid-storm: the devices keep publishing to the broker, which queues for
the engine's session; when the link returns, the engine catches up."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import pytest

from citywatch.config import Config
from tests.fix_faults import (
    EngineProcess,
    FaultBroker,
    Fleet,
    TcpProxy,
    flood_gauges,
    stored_counts,
    storm,
    take_ledger,
    wait_for,
    wait_recovered,
    wait_settled,
)

pytestmark = [pytest.mark.integration, pytest.mark.faults]

CUT_S = float(os.environ.get("CITYWATCH_FAULTS_CUT_S", "30"))
# The reset variant adds little once the link is gone for longer than a keepalive; a shorter cut
# keeps the matrix's wall time down (bench/bench_faults.py runs it for CUT_S too).
RESET_S = float(os.environ.get("CITYWATCH_FAULTS_RESET_S", "5"))


@pytest.mark.parametrize(("how", "cut_s"), [("blackhole", CUT_S), ("reset", RESET_S)])
def test_network_cut_between_engine_and_broker(
        how: str, cut_s: float, fault_broker: FaultBroker, fresh_db_url: str, fault_config: Config,
        engine_factory: Callable[..., EngineProcess]) -> None:
    """blackhole: nothing passes and nothing is refused, as when a link dies (the engine's
    keepalive notices after about 30 s, the broker's after 45 s); reset: every connection is
    closed at once and new ones hang until the link is back."""
    zones = flood_gauges(fault_config)
    proxy = TcpProxy(fault_broker.port or 0)
    engine = engine_factory(proxy.url, fresh_db_url)
    try:
        engine.start()
        # About 5 s of storm before the cut, the cut, and 5 s after it.
        rate = 20.0
        steps = int((cut_s + 10) * rate / len(zones))
        fleet = Fleet(fault_broker.url, storm(sorted(zones.values()), steps), rate=rate).start()
        try:
            wait_for("the stream to flow", lambda: len(stored_counts(fresh_db_url)) >= 60,
                     timeout=60)
            proxy.cut()
            if how == "reset":
                proxy.reset()
            t0 = time.monotonic()
            stalled = len(stored_counts(fresh_db_url))
            time.sleep(cut_s)  # the fault's length is the point here
            during = len(stored_counts(fresh_db_url))
            proxy.restore()
            end = time.monotonic()
            upto = fleet.published
            recovery = wait_recovered(fleet, fresh_db_url, upto, end)
            wait_settled(fleet, fresh_db_url)
            h = engine.health()
            ledger = take_ledger(
                f"network cut engine-broker {cut_s:g} s ({how})", fleet, fresh_db_url,
                fault_s=end - t0, recovery_s=recovery,
                note=f"stored during the cut: {during - stalled} (what the engine already "
                     f"held); engine connections through the proxy: {proxy.connections}")
        finally:
            fleet.close()
    finally:
        proxy.close()
    ledger.check(incidents=dict.fromkeys(zones, "waterlogging"))
    assert h["broker"]["connected"]
    assert engine.alive
