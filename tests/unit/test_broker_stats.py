"""The broker's $SYS counters become metrics and health values; junk is ignored."""

from __future__ import annotations

from prometheus_client import generate_latest

from citywatch.broker_stats import BrokerStats
from citywatch.metrics import Metrics


def test_sys_counters_become_metrics_and_a_snapshot() -> None:
    metrics = Metrics()
    now = [100.0]
    stats = BrokerStats(metrics, clock=lambda: now[0])
    assert stats.snapshot() == {"dropped": None, "stored_messages": None, "stored_bytes": None,
                                "clients_connected": None, "clients_disconnected": None}
    stats.update("$SYS/broker/publish/messages/dropped", b"15")
    stats.update("$SYS/broker/store/messages/count", b"58")
    stats.update("$SYS/broker/store/messages/bytes", b"224")
    stats.update("$SYS/broker/clients/connected", b"3")
    stats.update("$SYS/broker/clients/disconnected", b"1")
    stats.update("$SYS/broker/uptime", b"12 seconds")  # not one we follow
    assert stats.snapshot() == {"dropped": 15, "stored_messages": 58, "stored_bytes": 224,
                                "clients_connected": 3, "clients_disconnected": 1}
    assert (stats.dropped.value, stats.dropped.grew_at) == (15, 100.0)
    text = generate_latest(metrics.registry).decode()
    assert "citywatch_broker_messages_dropped 15.0" in text
    assert 'citywatch_broker_store{unit="messages"} 58.0' in text
    assert 'citywatch_broker_clients{state="disconnected"} 1.0' in text


def test_a_value_that_is_not_a_count_is_ignored() -> None:
    stats = BrokerStats(Metrics())
    stats.update("$SYS/broker/publish/messages/dropped", b"7")
    for junk in (b"", b"lots", b"\xff", b"1.5"):
        stats.update("$SYS/broker/publish/messages/dropped", junk)
    assert stats.snapshot()["dropped"] == 7
