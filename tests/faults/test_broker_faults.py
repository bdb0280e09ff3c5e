"""The broker goes away mid-stream: SIGTERM (it saves and exits) twenty times, SIGKILL (what it
changed since the last autosave is gone), and the account the embedded Mosquitto runs as.

What Mosquitto's autosave can lose, and why citywatch/mosquitto.conf saves as it does, is measured
by bench/bench_autosave.py and written up in RELIABILITY.md.
"""

from __future__ import annotations

import os
import pwd
import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from citywatch.config import Config
from citywatch.embedded import (
    SERVICE_USER,
    find_mosquitto,
    free_port,
    mosquitto_config,
    mqtt_protocol,
    start_broker,
)
from tests.fix_broker import connect, subscribe
from tests.fix_faults import (
    EngineProcess,
    FaultBroker,
    Fleet,
    flood_gauges,
    stored_at_least,
    stored_total,
    storm,
    take_ledger,
    wait_for,
    wait_recovered,
    wait_settled,
)

pytestmark = [pytest.mark.integration, pytest.mark.faults]

# The issue asks for at least 20; bench/bench_faults.py runs more (CITYWATCH_FAULTS_RESTARTS).
RESTARTS = int(os.environ.get("CITYWATCH_FAULTS_RESTARTS", "20"))
AUTOSAVE_RE = re.compile(r"^autosave_interval\s+(\d+)", re.MULTILINE)


def test_broker_sigterm_restarts_mid_stream(
        fault_broker: FaultBroker, fresh_db_url: str, fault_config: Config,
        engine_factory: Callable[..., EngineProcess]) -> None:
    """Twenty clean broker restarts while the storm flows: each time the engine's session and
    the devices' unacknowledged messages survive; nothing lost, nothing doubled, one alert and
    one order per flooded underpass."""
    zones = flood_gauges(fault_config)
    engine = engine_factory(fault_broker.url, fresh_db_url)
    engine.start()
    # Enough readings to stream through all the restarts (about 1.5 s each) with some to spare.
    steps = max(120, RESTARTS * 25 // len(zones) * 6)
    fleet = Fleet(fault_broker.url, storm(sorted(zones.values()), steps), rate=90).start()
    try:
        fleet.wait_published(60)
        away = []
        last_end = time.monotonic()
        for n in range(RESTARTS):
            before = stored_total(fresh_db_url)
            assert not fleet.done.is_set(), f"the storm ended before restart {n + 1}: add steps"
            away.append(fault_broker.restart(signal.SIGTERM))
            last_end = time.monotonic()
            # Mid-stream means the stream flows between restarts: the engine stores again.
            wait_for(f"the engine to store again after restart {n + 1}",
                     stored_at_least(fresh_db_url, before + 11), timeout=30)
        upto = fleet.published
        recovery = wait_recovered(fleet, fresh_db_url, upto, last_end)
        wait_settled(fleet, fresh_db_url)
        ledger = take_ledger(
            f"broker SIGTERM restart x{RESTARTS}", fleet, fresh_db_url, recovery_s=recovery,
            fault_s=max(away),
            note=f"broker away {min(away):.2f}-{max(away):.2f} s per restart")
    finally:
        fleet.close()
    ledger.check(incidents=dict.fromkeys(zones, "waterlogging"))
    assert engine.health()["broker"]["connected"]


def autosave_interval() -> int:
    text = mosquitto_config(1883, Path("/x"), anonymous=True)
    m = AUTOSAVE_RE.search(text)
    assert m is not None, "citywatch/mosquitto.conf sets no autosave_interval"
    return int(m.group(1))


@pytest.mark.parametrize("receiver", ["process", "thread"])
def test_broker_sigkill_with_the_engine_live_loses_nothing(
        fault_broker: FaultBroker, fresh_db_url: str, fault_config: Config,
        engine_factory: Callable[..., EngineProcess], receiver: str) -> None:
    """SIGKILL mid-storm, three times. The engine holds what was delivered to it (and
    acknowledges it only after its commit), so with the engine keeping up nothing acknowledged
    to a device is lost; what the broker restores from its last save comes again and is
    recognised as a duplicate."""
    zones = flood_gauges(fault_config)
    engine = engine_factory(fault_broker.url, fresh_db_url,
                            {"CITYWATCH_BROKER_RECEIVER": receiver})
    saves = fault_broker.saves()
    engine.start()
    # The engine's session must be on disk before the first kill, as it is in steady operation
    # (a broker killed before it ever saved the session forgets the subscription: RELIABILITY.md).
    wait_for("the broker to save the engine's session", lambda: fault_broker.saves() > saves,
             timeout=autosave_interval() + 30)
    fleet = Fleet(fault_broker.url, storm(sorted(zones.values()), 150), rate=60).start()
    try:
        away = []
        end = time.monotonic()
        for third in (1, 2, 3):
            fleet.wait_published(len(fleet.readings) * third // 4)
            away.append(fault_broker.restart(signal.SIGKILL))
            end = time.monotonic()
        recovery = wait_recovered(fleet, fresh_db_url, fleet.published, end)
        wait_settled(fleet, fresh_db_url)
        ledger = take_ledger("broker SIGKILL x3, engine live" + (
            "" if receiver == "process" else " (MQTT in a thread)"), fleet, fresh_db_url,
                             recovery_s=recovery, fault_s=max(away))
    finally:
        fleet.close()
    ledger.check(incidents=dict.fromkeys(zones, "waterlogging"))


def test_broker_sigkill_with_the_engine_away_loses_at_most_one_autosave(
        fault_broker: FaultBroker, fresh_db_url: str, fault_config: Config,
        engine_factory: Callable[..., EngineProcess]) -> None:
    """The engine is stopped, so its persistent session queues the devices' messages in the
    broker's memory; the broker is SIGKILLed. What was queued since the last autosave is lost:
    at most autosave_interval (+1) seconds of messages. The ledger reports the truth; the case
    asserts the bound (and that nothing is doubled and the incidents are still one each)."""
    zones = flood_gauges(fault_config)
    engine = engine_factory(fault_broker.url, fresh_db_url)
    engine.start()
    engine.stop()  # the session is saved by... the next autosave or a clean exit
    fault_broker.restart(signal.SIGTERM)  # steady state: the session is on disk
    rate = 40.0
    fleet = Fleet(fault_broker.url, storm(sorted(zones.values()), 100), rate=rate).start()
    try:
        interval = autosave_interval()
        fleet.wait_published(len(fleet.readings) // 2)
        killed_at = fleet.published
        away = fault_broker.restart(signal.SIGKILL)
        engine.start()
        wait_settled(fleet, fresh_db_url)
        ledger = take_ledger(
            "broker SIGKILL, engine away", fleet, fresh_db_url, fault_s=away,
            note=f"killed after {killed_at} published; autosave_interval {interval} s at "
                 f"{rate:g} msg/s: up to {int(rate * (interval + 1))} lost")
    finally:
        fleet.close()
    # Mosquitto checks its save timer in whole seconds (a save is due once `interval` has fully
    # passed), so up to interval + 1 s of messages; +10 for PUBACKs under way as the kill lands.
    bound = int(rate * (interval + 1)) + 10
    ledger.check(max_lost=bound)
    # Whatever was lost, no incident was doubled.
    assert all(n == 1 for n in ledger.alerts_by_zone.values()), ledger.render()
    assert all(n == 1 for n in ledger.orders_by_zone.values()), ledger.render()


def _uid_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid in /proc/{pid}/status")


def _retained_and_queued(url: str) -> tuple[bytes | None, list[bytes]]:
    """Reconnect the offline session: (the retained message, the queued QoS 1 messages)."""
    got: list[mqtt.MQTTMessage] = []
    client = connect(url, "keeper", clean_start=False, session_expiry_s=3600,
                     on_message=lambda _c, _u, m: got.append(m))
    try:
        wait_for("the queued message", lambda: any(m.topic == "city/queued" for m in got),
                 timeout=5)
        probe = connect(url, on_message=lambda _c, _u, m: got.append(m))
        subscribe(probe, "city/retained")
        wait_for("the retained message", lambda: any(m.retain for m in got), timeout=5)
        probe.disconnect()
        probe.loop_stop()
    except AssertionError:
        pass
    finally:
        client.disconnect()
        client.loop_stop()
    retained = next((bytes(m.payload) for m in got if m.retain), None)
    return retained, [bytes(m.payload) for m in got if m.topic == "city/queued"]


def _leave_retained_and_queued(url: str) -> None:
    # clean_start=0: Mosquitto 2.0.11 saves only sessions begun so (as the engine does).
    keeper = connect(url, "keeper", clean_start=False, session_expiry_s=3600)
    subscribe(keeper, "city/queued", qos=1)
    keeper.disconnect()
    keeper.loop_stop()
    pub = connect(url)
    pub.publish("city/retained", b"kept", qos=1, retain=True).wait_for_publish(5)
    pub.publish("city/queued", b"waiting", qos=1).wait_for_publish(5)
    pub.disconnect()
    pub.loop_stop()


def test_embedded_broker_keeps_retained_and_queued_messages_across_a_restart(
        tmp_path: Path) -> None:
    """The embedded broker's persistence directory is writable by the account Mosquitto runs
    as: a retained message and a QoS 1 message queued for an absent session survive a restart."""
    if find_mosquitto() is None:
        pytest.skip("mosquitto is not installed")
    data = tmp_path / "broker"
    broker = start_broker(data, prefer="mosquitto", fallback=False, anonymous=True)
    try:
        if os.geteuid() == 0:
            account = pwd.getpwnam(SERVICE_USER)
            assert _uid_of(broker.pid) == account.pw_uid, "Mosquitto should not run as root"
            assert data.stat().st_uid == account.pw_uid
        _leave_retained_and_queued(broker.url)
        port = broker.port
    finally:
        broker.stop()
    assert (data / "mosquitto.db").exists(), "the broker saved nothing at its exit"
    broker = start_broker(data, port, prefer="mosquitto", fallback=False, anonymous=True)
    try:
        retained, queued = _retained_and_queued(broker.url)
    finally:
        broker.stop()
    assert (retained, queued) == (b"kept", [b"waiting"])


@pytest.mark.skipif(os.geteuid() != 0, reason="shows what happens to a broker started as root")
def test_mosquitto_started_as_root_drops_to_its_own_user_and_cannot_save_in_our_dir(
        tmp_path: Path) -> None:
    """Why the embedded broker hands its directory to its own account: Mosquitto 2 started as
    root switches to user "mosquitto"; given a directory that user cannot write, it loses its
    queues and retained messages at the next restart (only a line on its output says so)."""
    exe = find_mosquitto()
    if exe is None:
        pytest.skip("mosquitto is not installed")
    try:
        pwd.getpwnam("mosquitto")
    except KeyError:
        pytest.skip("no user mosquitto (the Debian package creates it)")

    data = tmp_path / "rootbroker"
    data.mkdir(mode=0o755)
    port = free_port()
    conf = data / "mosquitto.conf"
    conf.write_text(mosquitto_config(port, data, anonymous=True))
    out = data / "stdout.txt"  # where Mosquitto complains when it cannot open its log file

    def run() -> subprocess.Popen[bytes]:
        with out.open("ab") as sink:
            proc = subprocess.Popen([exe, "-c", str(conf)], stdout=sink, stderr=subprocess.STDOUT)
        wait_for("mosquitto as root", lambda: mqtt_protocol("127.0.0.1", port, 1.0), 10)
        return proc

    proc = run()
    try:
        assert _uid_of(proc.pid) == pwd.getpwnam("mosquitto").pw_uid
        _leave_retained_and_queued(f"mqtt://127.0.0.1:{port}")
    finally:
        proc.terminate()
        proc.wait(10)
    assert not (data / "mosquitto.db").exists()
    assert "Permission denied" in out.read_text(errors="replace")
    proc = run()
    try:
        retained, queued = _retained_and_queued(f"mqtt://127.0.0.1:{port}")
    finally:
        proc.terminate()
        proc.wait(10)
    assert (retained, queued) == (None, []), "a broker that cannot save loses its state"

