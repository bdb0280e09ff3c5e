"""The ``citywatch`` command line (CONTRACT section 5): run, serve, simulate."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

from citywatch.config import Config, ConfigError, load_config
from citywatch.service import Endpoints, Service

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
        if args.command == "funnel":
            from citywatch.funnel import command as funnel_command
            return funnel_command(config, args.scenario, args.seed, args.server)
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
    return p


@contextlib.contextmanager
def _endpoints(config: Config, data_dir: Path) -> Iterator[Endpoints]:
    """The configured broker and database, or our own embedded ones when none is configured."""
    from citywatch import embedded

    with contextlib.ExitStack() as stack:
        broker_url, protocol = config.broker.url, "5"
        if broker_url == "embedded":
            print("starting the embedded broker ...", flush=True)
            try:
                broker = stack.enter_context(embedded.start_broker(
                    data_dir / "broker", port=_port_if_free(EMBEDDED_BROKER_PORT)))
            except Exception as exc:
                raise StartupError(f"cannot start an embedded broker: {exc}") from exc
            broker_url, protocol = broker.url, broker.protocol
            print(f"  {broker.kind} on {broker.url} (MQTT {broker.protocol})", flush=True)
        db_url = config.database.url
        if db_url == "embedded":
            print("starting the embedded PostgreSQL (first start takes a few seconds) ...",
                  flush=True)
            try:
                database = stack.enter_context(embedded.start_database(data_dir / "postgres"))
            except Exception as exc:
                raise StartupError(f"cannot start the embedded PostgreSQL: {exc}") from exc
            db_url = database.url
            print(f"  PostgreSQL on {_redact_db(db_url)}", flush=True)
        yield Endpoints(broker_url, db_url, protocol)


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
    return url.split("?", maxsplit=1)[0]


def _run(config: Config, args: argparse.Namespace, *, with_simulators: bool) -> int:
    stop = threading.Event()
    _stop_on_signals(stop)
    with _endpoints(config, args.data_dir) as endpoints:
        service = Service(config, endpoints, http_port=args.port)
        try:
            service.start()
        except Exception as exc:
            log.exception("start failed")
            raise StartupError(f"cannot start: {exc}") from exc
        print(f"\ncitywatch is running: dashboard {service.url}/   API {service.url}/docs   "
              f"storage {service.storage_mode}", flush=True)
        sim_thread = None
        sim_status: dict[str, object] = {}
        if with_simulators:
            sim_thread = _start_simulation(config, args, endpoints, stop, sim_status)
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
                      stop: threading.Event, status: dict[str, object]) -> threading.Thread:
    from simulators.runner import Simulation

    sim = Simulation(config, args.scenario, seed=args.seed if args.seed is not None else
                     config.simulator.seed, speed=args.speed, start=datetime.now(UTC))

    def progress(p: object) -> None:
        status["progress"] = p

    def target() -> None:
        try:
            sim.run(endpoints.broker_url, stop, None, progress,
                    truth_path=args.data_dir / "truth" / f"{sim.scenario.name}-{sim.seed}.json")
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
    stop = threading.Event()
    _stop_on_signals(stop)
    try:
        sim = Simulation(config, args.scenario, seed=args.seed, speed=args.speed,
                         start=datetime.now(UTC), devices=args.devices)
    except (SimulatorError, PluginError) as exc:
        raise StartupError(str(exc)) from None
    truth = args.truth or default_truth_path(sim.scenario.name, sim.seed)
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

    try:
        final = sim.run(config.broker.url, stop, args.duration, progress, truth_path=truth,
                        connections=args.connections, until_end=not args.keep_running)
    except SimulatorError as exc:
        raise StartupError(str(exc)) from None
    print(("\n" if tty else "") + f"simulation stopped: {final.describe()}\n"
          f"ground truth written to {truth}", flush=True)
    return 0


def _redact_broker(url: str) -> str:
    return url.split("://", 1)[0] + "://***@" + url.rsplit("@", 1)[1] if "@" in url else url


def _stop_on_signals(stop: threading.Event) -> None:
    def handler(_sig: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


if __name__ == "__main__":
    raise SystemExit(main())
