"""The ``citywatch`` command line (CONTRACT sections 5 and 6): run, serve, simulate, device,
user."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg

from citywatch import users_cli
from citywatch.config import Config, ConfigError, load_config
from citywatch.service import Endpoints, Service
from simulators.credentials import FleetCredentials
from simulators.errors import SimulatorError

log = logging.getLogger("citywatch")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", datefmt="%H:%M:%S",
        filename=args.log_file)
    # Our own lines stay readable; the libraries' chatter goes to the log file only.
    for noisy in ("apscheduler", "httpx", "amqtt", "transitions"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"citywatch: configuration error\n{exc}", file=sys.stderr)
        return 2
    try:
        if args.command == "run":
            return _run(config, args, with_simulators=True)
        if args.command == "serve":
            return _run(config, args, with_simulators=False)
        if args.command == "score":
            from citywatch.score import command as score_command
            return score_command(config, args)
        if args.command == "replay":
            from citywatch.replay import command as replay_command
            return replay_command(config, args)
        if args.command == "user":
            from citywatch.users_cli import command as user_command
            return user_command(config, args)
        if args.command == "funnel":
            from citywatch.funnel import command as funnel_command
            return funnel_command(config, args.scenario, args.seed, args.server)
        if args.command == "appeals":
            from citywatch.appeal_replay import command as appeals_command
            return appeals_command(config, args)
        if args.command == "device":
            return _device(config, args)
        if args.command == "broker":
            return _broker_files(config, args)
        return _simulate(config, args)
    except StartupError as exc:
        print(f"citywatch: {exc}", file=sys.stderr)
        return 1


class StartupError(Exception):
    pass


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="citywatch", description=__doc__)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default="config.yaml", help="configuration file")
    common.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    common.add_argument("--log-file", default=None, help="write the log here instead of stderr")
    sub = p.add_subparsers(dest="command", required=True)
    for name, text in (("run", "the whole live system with the simulated district fleet"),
                       ("serve", "engine and HTTP API against the configured broker and DB")):
        s = sub.add_parser(name, parents=[common], help=text, description=text)
        s.add_argument("--data-dir", default="var", type=Path,
                       help="where embedded broker and database keep their data (default: var)")
        s.add_argument("--port", type=int, default=None, help="HTTP port (overrides config)")
        s.add_argument("--duration", type=float, default=None,
                       help="stop by itself after this many seconds")
        if name == "run":
            s.add_argument("--credentials", type=Path, default=None, metavar="FILE",
                           help="with a configured broker: the simulated fleet's credentials "
                           "(the embedded broker's are issued by run itself)")
            s.add_argument("--scenario", default="demo", help="simulation scenario (demo)")
            s.add_argument("--speed", type=float, default=None,
                           help="simulated seconds per real second (scenario default)")
            s.add_argument("--seed", type=int, default=None)
    s = sub.add_parser(
        "simulate", parents=[common], help="simulated devices only",
        description="Publish a scenario's simulated fleet to the configured broker and write its "
        "ground truth. Scenarios: storm, rush_hour, falling_object, sensor_faults, quiet_day, "
        "mixed, demo (simulators/scenarios/), or a path to a scenario YAML file.")
    s.add_argument("scenario", help="scenario name or YAML file, e.g. storm")
    s.add_argument("--speed", type=float, default=None,
                   help="simulated seconds per real second (default: the scenario's)")
    s.add_argument("--seed", type=int, default=None, help="default: the scenario's")
    s.add_argument("--devices", type=int, default=None,
                   help="scale the fleet to N devices (load tests)")
    s.add_argument("--duration", type=float, default=None,
                   help="stop after this many real seconds")
    s.add_argument("--keep-running", action="store_true",
                   help="go on after the scenario's timeline ends (default: stop there)")
    s.add_argument("--truth", type=Path, default=None,
                   help="ground truth JSON (default: var/truth/{scenario}-{seed}.json)")
    s.add_argument("--connections", choices=("auto", "per-device", "shared"), default="auto",
                   help="one MQTT connection per device (Last Will each) or shared ones; "
                   "auto: per device up to 500 devices")
    s.add_argument("--credentials", type=Path, default=None, metavar="FILE",
                   help="the fleet's broker credentials (JSON: citywatch device credentials "
                   "--all --save FILE): each device and team connects as itself")
    s.add_argument("--procs", type=int, default=1, metavar="P",
                   help="drive the fleet from P processes, each with its share of the devices "
                   "(whole shared connections) and its own ground truth file ({truth}.P-of-N)")
    s.add_argument("--shard", default=None, help=argparse.SUPPRESS)  # I/N: one of --procs
    _device_parsers(sub, common)
    s = sub.add_parser(
        "score", parents=[common], help="score a scenario's alerts against its ground truth",
        description="Run a scenario offline (simulated time, no broker or database) through "
        "decoding, zone placement and the rules, and compare the alerts with the scenario's "
        "ground truth: precision, recall, detection delay, false alarms per day, per hazard.")
    s.add_argument("scenario", help="scenario name or YAML file, e.g. storm")
    s.add_argument("--seed", type=int, default=None, help="default: the scenario's")
    s.add_argument("--hours", type=float, default=None,
                   help="simulated hours to run (default: the scenario's duration)")
    s.add_argument("--shuffle", type=float, default=0.0, metavar="S",
                   help="deliver each message up to S seconds late, out of order")
    s.add_argument("--twice", action="store_true", help="deliver every message twice")
    s.add_argument("--reorder-window", type=float, default=None, metavar="S",
                   help="override rules.event_time.reorder_window_s")
    s.add_argument("--compare", action="store_true",
                   help="also run in order, once, and say whether the alerts are the same")
    s.add_argument("--alerts", action="store_true", help="list every alert change")
    s = sub.add_parser(
        "replay", parents=[common], help="stored telemetry through the rules of --config",
        description="Read stored telemetry and events from the database (database.url or "
        "CITYWATCH_DATABASE_URL) and run them through the rules of --config and of --against; "
        "show the alerts added, removed, raised earlier or later: how a threshold is tuned.")
    s.add_argument("--against", default="config.yaml",
                   help="the configuration to compare with (default: config.yaml)")
    s.add_argument("--since", default=None,
                   help="from this time (RFC 3339, or a duration back from now: 6h, 2d)")
    s.add_argument("--until", default=None, help="up to this time (RFC 3339)")
    s.add_argument("--alerts", action="store_true", help="list every alert change of --config")
    s = sub.add_parser(
        "funnel", parents=[common], help="a scenario's funnel: messages -> alerts -> orders",
        description="Run a scenario offline through the whole pipeline (decoding, storage, "
        "rules, alerts, work orders) on a scratch database, and count raw messages, alert "
        "changes, incidents and work orders, matched against the scenario's ground truth.")
    s.add_argument("scenario", help="scenario name, e.g. storm or mixed")
    s.add_argument("--seed", type=int, default=None)
    s.add_argument("--server", default=os.environ.get(
        "CITYWATCH_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres"),
        help="PostgreSQL server to create the scratch database on (CITYWATCH_TEST_PG)")
    users_cli.add_parser(sub, common)
    from citywatch.appeal_replay import add_parser as appeals_parser
    appeals_parser(sub, common)
    return p


@dataclass
class _Live:
    """What ``_endpoints`` started or found: where the engine connects, and the fleet's
    credentials when the simulated fleet must authenticate (None: the URL's, if any)."""

    endpoints: Endpoints
    fleet: FleetCredentials | None = None


@contextlib.contextmanager
def _endpoints(config: Config, data_dir: Path, *, fleet: bool = False,
               credentials_file: Path | None = None) -> Iterator[_Live]:
    """The configured broker and database, or our own embedded ones when none is configured.

    The embedded broker authenticates everyone (CONTRACT section 6): the engine gets a new
    secret at every start, the simulated fleet (``fleet``) its stored ones or new ones, and the
    broker's files are made from the credentials registry before it starts.
    """
    from citywatch import broker_access, embedded
    from sensing import credentials

    with contextlib.ExitStack() as stack:
        db_url, owner_url = config.database.url, None
        if db_url == "embedded":
            print("starting the embedded PostgreSQL (first start takes a few seconds) ...",
                  flush=True)
            try:
                database = stack.enter_context(embedded.start_database(data_dir / "postgres"))
            except Exception as exc:
                raise StartupError(f"cannot start the embedded PostgreSQL: {exc}") from exc
            db_url, owner_url = database.url, database.owner_url
            print(f"  PostgreSQL on {_redact_db(db_url)} (as {embedded.SERVICE_ROLE})",
                  flush=True)
        broker_url, protocol = config.broker.url, "5"
        broker_dir: Path | None = None
        sim_credentials = None
        if broker_url == "embedded":
            broker_dir = data_dir / "broker"
            now = datetime.now(UTC)
            try:
                with psycopg.connect(owner_url or db_url, autocommit=True) as conn:
                    credentials.migrate(conn)
                    engine_secret = credentials.issue(conn, config.broker.client_id,
                                                      "service", now)
                    if fleet:
                        sim_credentials = broker_access.fleet_credentials(
                            conn, config, data_dir / SIM_CREDENTIALS, now,
                            gateways=_sim_gateways(config))
                    broker_access.write_broker_files(conn, config, broker_dir)
            except psycopg.Error as exc:
                raise StartupError(f"cannot prepare the broker's credentials: {exc}") from exc
            print("starting the embedded broker ...", flush=True)
            tls = config.broker.tls
            try:
                broker = stack.enter_context(embedded.start_broker(
                    broker_dir, port=_port_if_free(EMBEDDED_BROKER_PORT),
                    tls=embedded.TlsListener(tls.host, tls.port) if tls.enabled else None))
            except Exception as exc:
                raise StartupError(f"cannot start an embedded broker: {exc}") from exc
            broker_url = (f"mqtt://{quote(config.broker.client_id, safe='')}:"
                          f"{quote(engine_secret, safe='')}@{embedded.LOOPBACK}:{broker.port}")
            protocol = broker.protocol
            print(f"  {broker.kind} on {broker.url} (MQTT {broker.protocol}, authenticated)",
                  flush=True)
            if broker.tls_url is not None and broker.tls_files is not None:
                print(f"  TLS listener on {broker.tls_url} (CA certificate "
                      f"{broker.tls_files.ca_cert})", flush=True)
        elif fleet and credentials_file is not None:
            try:
                sim_credentials = FleetCredentials.load(credentials_file)
            except SimulatorError as exc:
                raise StartupError(str(exc)) from None
        yield _Live(Endpoints(broker_url, db_url, protocol, database_owner_url=owner_url,
                              broker_dir=broker_dir), sim_credentials)


# The simulated fleet's secrets, kept by `citywatch run` for its next start (0600).
SIM_CREDENTIALS = "simulator-credentials.json"


def _sim_gateways(config: Config) -> dict[str, list[str]]:
    """Gateways for the simulated fleet when it is too big for a connection per device."""
    from citywatch.broker_access import simulator_gateways
    from simulators.links import DEVICES_PER_SHARED_LINK
    from simulators.runner import PER_DEVICE_MAX

    if len(config.devices) <= PER_DEVICE_MAX:
        return {}
    return simulator_gateways([d.id for d in config.devices], DEVICES_PER_SHARED_LINK)


# The standard MQTT port when it is free, so `mosquitto_pub` without -p reaches the demo.
EMBEDDED_BROKER_PORT = 1883


def _port_if_free(port: int) -> int | None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return None
    return port


def _redact_db(url: str) -> str:
    """The URL without its query and password (it is printed)."""
    parts = urlsplit(url.split("?", maxsplit=1)[0])
    if parts.password is None:
        return parts.geturl()
    user, host = parts.netloc.rsplit("@", 1)
    return urlunsplit(parts._replace(netloc=f"{user.split(':', 1)[0]}:***@{host}"))


def _run(config: Config, args: argparse.Namespace, *, with_simulators: bool) -> int:
    stop = threading.Event()
    _stop_on_signals(stop)
    with _endpoints(config, args.data_dir, fleet=with_simulators,
                    credentials_file=getattr(args, "credentials", None)) as live:
        endpoints = live.endpoints
        service = Service(config, endpoints, http_port=args.port)
        try:
            service.start()
        except Exception as exc:
            log.exception("start failed")
            raise StartupError(f"cannot start: {exc}") from exc
        print(f"\ncitywatch is running: dashboard {service.url}/   API {service.url}/docs   "
              f"storage {service.storage_mode}", flush=True)
        login = (users_cli.ensure_first_login(endpoints.database_url, args.data_dir)
                 if with_simulators else users_cli.login_hint(endpoints.database_url))
        print(f"  {login}", flush=True)
        sim_thread = None
        sim_status: dict[str, object] = {}
        if with_simulators:
            sim_thread = _start_simulation(config, args, endpoints, stop, sim_status, live.fleet)
        print("press Ctrl-C to stop\n", flush=True)
        started = time.monotonic()
        try:
            while not stop.wait(1.0):
                _status_line(service, sim_status)
                if args.duration is not None and time.monotonic() - started >= args.duration:
                    break
        finally:
            print("\nstopping ...", flush=True)
            stop.set()
            if sim_thread is not None:
                sim_thread.join(timeout=10)
            service.stop()
    print("stopped cleanly", flush=True)
    return 0


def _start_simulation(config: Config, args: argparse.Namespace, endpoints: Endpoints,
                      stop: threading.Event, status: dict[str, object],
                      fleet: FleetCredentials | None) -> threading.Thread:
    from simulators.runner import Simulation

    sim = Simulation(config, args.scenario, seed=args.seed if args.seed is not None else
                     config.simulator.seed, speed=args.speed, start=datetime.now(UTC))

    def progress(p: object) -> None:
        status["progress"] = p

    def target() -> None:
        try:
            # The fleet connects as itself, never with the engine's credentials in the URL.
            url = endpoints.broker_url if fleet is None else _without_user(endpoints.broker_url)
            sim.run(url, stop, None, progress,
                    truth_path=args.data_dir / "truth" / f"{sim.scenario.name}-{sim.seed}.json",
                    credentials=fleet,
                    ca_file=None if config.ca_path is None else str(config.ca_path))
        except Exception:
            log.exception("simulation stopped")

    t = threading.Thread(target=target, name="citywatch-simulation", daemon=True)
    t.start()
    return t


def _status_line(service: Service, sim_status: dict[str, object]) -> None:
    h = service.health()
    c = h["counts"]
    p = sim_status.get("progress")
    sim = ""
    if p is not None:
        sim_time = getattr(p, "sim_time", None)
        if isinstance(sim_time, datetime):
            sim = f"sim {sim_time:%H:%M} | "
    line = (f"{sim}messages {c.get('messages', 0)} | stored {c.get('stored', 0)} | "
            f"rejected {c.get('rejected', 0)} | alerts open {c.get('alerts_open', '?')} "
            f"(total {c.get('alerts', '?')}) | work orders {c.get('work_orders', '?')} | "
            f"dispatched {c.get('dispatched', 0)} | broker "
            f"{'up' if h['broker']['connected'] else 'DOWN'} | db "
            f"{'up' if h['database']['connected'] else 'DOWN'}")
    if sys.stdout.isatty():
        print("\r" + line.ljust(150), end="", flush=True)
    elif int(time.monotonic()) % 10 == 0:
        print(line, flush=True)


def _simulate(config: Config, args: argparse.Namespace) -> int:
    from sensing.plugins import PluginError
    from simulators.errors import SimulatorError
    from simulators.runner import Progress, Simulation, default_truth_path

    if config.broker.url == "embedded":
        raise StartupError("simulate needs a broker to publish to: set broker.url in the "
                           "config or CITYWATCH_BROKER_URL (e.g. mqtt://127.0.0.1:1883)")
    if args.procs < 1:
        raise StartupError(f"--procs {args.procs}: expected 1 or more")
    if args.procs > 1 and args.shard is None:
        return _simulate_in_processes(args)
    shard = None if args.shard is None else _shard(args.shard)
    stop = threading.Event()
    _stop_on_signals(stop)
    try:
        sim = Simulation(config, args.scenario, seed=args.seed, speed=args.speed,
                         start=datetime.now(UTC), devices=args.devices, shard=shard)
    except (SimulatorError, PluginError) as exc:
        raise StartupError(str(exc)) from None
    truth = args.truth or default_truth_path(sim.scenario.name, sim.seed)
    if shard is not None:
        truth = truth.with_name(f"{truth.name}.{shard[0] + 1}-of-{shard[1]}")
    length = "" if sim.end is None else f", {(sim.end - sim.start).total_seconds() / 3600:g} h"
    print(f"scenario {sim.scenario.name} (seed {sim.seed}, speed {sim.speed:g}x{length}): "
          f"{len(sim.devices)} devices -> {_redact_broker(config.broker.url)}\n"
          f"  {sim.scenario.description}\n  ground truth: {truth}", flush=True)
    tty = sys.stdout.isatty()
    last_line = [0.0]

    def progress(p: Progress) -> None:
        if tty:
            print("\r" + p.describe().ljust(130), end="", flush=True)
        elif p.real_elapsed_s - last_line[0] >= 10:  # logs and CI: a line every 10 s
            last_line[0] = p.real_elapsed_s
            print(p.describe(), flush=True)

    fleet = None
    if args.credentials is not None:
        try:
            fleet = FleetCredentials.load(args.credentials)
        except SimulatorError as exc:
            raise StartupError(str(exc)) from None
    try:
        final = sim.run(config.broker.url if fleet is None else _without_user(config.broker.url),
                        stop, args.duration, progress, truth_path=truth,
                        connections=args.connections, until_end=not args.keep_running,
                        credentials=fleet,
                        ca_file=None if config.ca_path is None else str(config.ca_path))
    except SimulatorError as exc:
        raise StartupError(str(exc)) from None
    print(("\n" if tty else "") + f"simulation stopped: {final.describe()}\n"
          f"ground truth written to {truth}", flush=True)
    return 0


def _shard(text: str) -> tuple[int, int]:
    try:
        index, count = (int(x) for x in text.split("/"))
    except ValueError:
        raise StartupError(f"--shard {text!r}: expected I/N") from None
    if not 0 <= index < count:
        raise StartupError(f"--shard {text!r}: expected 0 <= I < N")
    return index, count


def _simulate_in_processes(args: argparse.Namespace) -> int:
    """``simulate --procs P``: P child processes, each driving its share of the fleet over its
    own connections (Python publishes from one core per process). Signals reach them all; the
    exit status is the worst of theirs."""
    same = ["--config", str(args.config), "--connections", args.connections]
    for flag, value in (("--speed", args.speed), ("--seed", args.seed),
                        ("--devices", args.devices), ("--duration", args.duration),
                        ("--truth", args.truth), ("--credentials", args.credentials),
                        ("--log-file", args.log_file)):
        if value is not None:
            same += [flag, str(value)]
    same += ["--keep-running"] if args.keep_running else []
    same += ["--verbose"] if args.verbose else []
    procs = [subprocess.Popen([sys.executable, "-m", "citywatch.cli", "simulate", args.scenario,
                               *same, "--shard", f"{i}/{args.procs}"])
             for i in range(args.procs)]
    print(f"simulating from {args.procs} processes: {', '.join(str(p.pid) for p in procs)}",
          flush=True)

    def forward(sig: int, _frame: FrameType | None) -> None:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(sig)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    codes = [p.wait() for p in procs]
    return max(codes, key=abs)


def _without_user(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[-1]))


def _redact_broker(url: str) -> str:
    return url.split("://", 1)[0] + "://***@" + url.rsplit("@", 1)[1] if "@" in url else url


def _stop_on_signals(stop: threading.Event) -> None:
    def handler(_sig: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


# --------------------------------------------------------------------------------------------
# citywatch device ... and citywatch broker files (CONTRACT section 6)


def _device_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    data_dir = argparse.ArgumentParser(add_help=False)
    data_dir.add_argument("--data-dir", default="var", type=Path,
                          help="where the embedded database and broker keep their data "
                          "(default: var); ignored for a configured database")
    d = sub.add_parser("device", help="broker credentials of devices, teams and gateways",
                       description="Issue, rotate or disable the broker credentials of a device, "
                       "a team, a gateway or the engine (CONTRACT section 6). The secret is "
                       "printed once and only its hash is kept. The embedded broker takes the "
                       "change at once, without a restart; for a broker of your own, write its "
                       "files with `citywatch broker files --out DIR` and reload it.")
    dsub = d.add_subparsers(dest="device_command", required=True)
    c = dsub.add_parser("credentials", parents=[common, data_dir],
                        help="issue or rotate secrets (printed once)",
                        description="Issue a new secret for each ID (a device or team of the "
                        "configuration, the engine's broker.client_id or a registered gateway), "
                        "replacing any old one, which stops working at once.")
    c.add_argument("ids", nargs="*", metavar="ID")
    c.add_argument("--all", action="store_true",
                   help="every device and team of the configuration")
    c.add_argument("--save", type=Path, default=None, metavar="FILE",
                   help="write the secrets into FILE (JSON, 0600; what simulate --credentials "
                   "reads) instead of printing them")
    g = dsub.add_parser("gateway", parents=[common, data_dir],
                        help="register a gateway for devices and issue its secret",
                        description="A gateway connects once for many devices and may publish "
                        "for each (its devices' topics only). Registers ID for the DEVICEs "
                        "(replacing its list) and issues or rotates its secret.")
    g.add_argument("id", metavar="ID")
    g.add_argument("devices", nargs="+", metavar="DEVICE")
    g.add_argument("--save", type=Path, default=None, metavar="FILE",
                   help="write the secret and the gateway's devices into FILE instead")
    x = dsub.add_parser("disable", parents=[common, data_dir], help="refuse an identity",
                        description="Refuse the broker to ID from now on (issue a new secret "
                        "to let it in again).")
    x.add_argument("id", metavar="ID")
    b = sub.add_parser("broker", help="files for a broker of your own",
                       description="Write Mosquitto's password_file (passwd) and acl_file (acl) "
                       "made from the credentials registry and the configuration, for a "
                       "Mosquitto that citywatch does not run; reload it afterwards "
                       "(SIGHUP, or systemctl reload mosquitto).")
    bsub = b.add_subparsers(dest="broker_command", required=True)
    f = bsub.add_parser("files", parents=[common, data_dir], help="write passwd and acl")
    f.add_argument("--out", type=Path, required=True, metavar="DIR")


@contextlib.contextmanager
def _admin_db(config: Config, data_dir: Path) -> Iterator[psycopg.Connection[Any]]:
    """A connection as the schema's owner: the configured database, or the embedded one (the
    running one, or started for this command)."""
    from citywatch import embedded
    from sensing import credentials

    with contextlib.ExitStack() as stack:
        url = config.database.url
        if url == "embedded":
            running = embedded.running_database(data_dir / "postgres")
            if running is not None:
                url = running[1]
            else:
                try:
                    url = stack.enter_context(
                        embedded.start_database(data_dir / "postgres")).owner_url
                except Exception as exc:
                    raise StartupError(f"cannot start the embedded PostgreSQL: {exc}") from exc
        try:
            conn = stack.enter_context(psycopg.connect(url, autocommit=True))
            credentials.migrate(conn)
        except psycopg.Error as exc:
            raise StartupError(f"cannot reach the database: {exc}") from exc
        yield conn


def _device(config: Config, args: argparse.Namespace) -> int:
    from citywatch import broker_access

    now = datetime.now(UTC)
    issued: dict[str, str] = {}
    gateways: dict[str, tuple[str, ...]] = {}
    with _admin_db(config, args.data_dir) as conn:
        try:
            if args.device_command == "credentials":
                ids = list(args.ids)
                if args.all:
                    ids += [d.id for d in config.devices] + [t.id for t in config.teams]
                if not ids:
                    raise StartupError("name one or more IDs, or --all")
                for identity in ids:  # all known before any is rotated
                    broker_access.identity_kind(config, identity, conn)
                for identity in dict.fromkeys(ids):
                    issued[identity] = broker_access.issue(conn, config, identity, now)
            elif args.device_command == "gateway":
                issued[args.id] = broker_access.issue_gateway(conn, config, args.id,
                                                              args.devices, now)
                gateways[args.id] = tuple(args.devices)
            else:
                from sensing import credentials

                if not credentials.disable(conn, args.id):
                    raise StartupError(f"unknown id {args.id!r}: it has no credentials")
                print(f"{args.id} is disabled")
        except broker_access.AccessError as exc:
            print(f"citywatch: {exc}", file=sys.stderr)
            return 2
        _apply_to_broker(conn, config, args.data_dir)
    if not issued:
        return 0
    save = getattr(args, "save", None)
    if save is not None:
        try:
            old = FleetCredentials.load(save) if save.exists() else FleetCredentials()
        except SimulatorError as exc:
            raise StartupError(str(exc)) from None
        FleetCredentials({**old.secrets, **issued}, {**old.gateways, **gateways}).save(save)
        print(f"saved {len(issued)} new secret(s) to {save} (readable by you only)")
        return 0
    print("New secrets (shown once, only their hashes are kept; any old secret no longer "
          "works):", file=sys.stderr)
    for identity, secret in issued.items():
        print(f"{identity} {secret}")
    return 0


def _apply_to_broker(conn: psycopg.Connection[Any], config: Config, data_dir: Path) -> None:
    from citywatch import broker_access

    if config.broker.url == "embedded":
        kind = broker_access.refresh_embedded(conn, config, data_dir / "broker")
        where = (f"the running embedded broker ({kind}) has taken the change"
                 if kind else "the embedded broker takes the change when it starts")
    else:
        where = ("for your broker: citywatch broker files --out DIR, then reload it "
                 "(kill -HUP its pid, or systemctl reload mosquitto)")
    print(where, file=sys.stderr)


def _broker_files(config: Config, args: argparse.Namespace) -> int:
    from citywatch import broker_access

    with _admin_db(config, args.data_dir) as conn:
        n = broker_access.write_broker_files(conn, config, args.out)
    out = args.out.resolve()
    print(f"wrote {out / 'passwd'} and {out / 'acl'} ({n} identities). In mosquitto.conf:\n"
          f"  allow_anonymous false\n  password_file {out / 'passwd'}\n"
          f"  acl_file {out / 'acl'}\n  use_username_as_clientid true   # per listener\n"
          "then reload the broker (kill -HUP its pid, or systemctl reload mosquitto).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
