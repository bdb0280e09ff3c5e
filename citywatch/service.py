"""The engine and HTTP API, wired together: what ``citywatch serve`` runs.

This is the only place that knows sensing, geo, rules and alerts at once.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import uvicorn
from apscheduler.schedulers.background import BackgroundScheduler
from psycopg_pool import ConnectionPool

from alerts import appeal_store, users
from alerts import retention as alert_retention
from alerts import store as alert_store
from alerts.api import ApiDeps, WebSettings, create_app
from alerts.appeal_api import IntakeLimits
from alerts.appeal_desk import AppealDesk, Runner
from alerts.appeal_match import MatchParams
from alerts.auth import LoginLimits
from alerts.dispatch import OutboxPublisher
from alerts.http_guard import default_hosts
from alerts.policy import Office, Policy
from alerts.store import AlertStore, Route
from citywatch import broker_access, clocks, liveness
from citywatch.broker_stats import SYS_TOPICS, BrokerStats
from citywatch.clocks import ClockParams
from citywatch.config import Config
from citywatch.db_pool import open_pool
from citywatch.device_admin import LiveRegistry, Runtime, merge
from citywatch.ingest_queue import IngestQueue
from citywatch.metrics import Metrics
from citywatch.pipeline import Pipeline, WorkerLocator, record_applied
from citywatch.placement import Placement
from citywatch.supervisor import Supervisor, Worker
from geo.gazetteer import Gazetteer
from geo.index import ZoneIndex
from geo.load import load_zones
from geo.zones import Zone
from rules.engine import Engine
from rules.levels import Level
from sensing import credentials, device_registry
from sensing import store as sensing_store
from sensing.decode import Decoder
from sensing.models import Rejection
from sensing.mqtt import MqttLink
from sensing.mqtt_process import LinkSettings, ProcessLink, make_link
from sensing.plugins import load_kinds
from sensing.times import iso_utc
from sensing.topics import SUBSCRIPTIONS, deadletter_topic

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
CONNECT_WAIT_S = 5.0  # how long start() waits for the first broker connection


def build_decoder(cfg: Config, known: dict[str, str] | None = None) -> Decoder:
    """The decoder for the registry, knowing built-in and plug-in device kinds. ``known``
    (device id -> kind, default: the configuration's) is held by reference: the running
    registry changes it."""
    kinds = load_kinds(cfg, device_kinds={d.kind for d in cfg.devices})
    return Decoder({d.id: d.kind for d in cfg.devices} if known is None else known, kinds)


def build_placement(cfg: Config, zones: Sequence[Zone]) -> Placement:
    """The zone index and the registry's devices placed in it, built once at start."""
    return Placement(ZoneIndex(zones), {d.id: (d.kind, d.position) for d in cfg.devices})


def build_engine(cfg: Config, zones: Sequence[Zone], placement: Placement) -> Engine:
    """The rules with the device registry: device health compares neighbours, finds silence."""
    return Engine(cfg.rules, {z.id: z for z in zones}, placement.sites())


def build_alert_store(cfg: Config, zones: Sequence[Zone]) -> tuple[AlertStore, WorkerLocator]:
    """The alert store with the routing table, the work-order policy and the hierarchy."""
    zone_map = {z.id: z for z in zones}

    def route(hazard: str, zone_type: str, level: Level) -> Route:
        r = cfg.route(hazard, zone_type, level.colour)
        if r is None:
            return Route("command-centre", None)
        return Route(r.department, r.team)

    wo = cfg.work_orders
    policy = Policy.from_minutes({str(k): v for k, v in wo.respond_within_min.items()},
                                 {str(k): v for k, v in wo.resolve_within_min.items()},
                                 wo.reopen_window_min, wo.dispatch_retry_s,
                                 wo.dispatch_attempts, evidence_keep_first=wo.evidence_keep_first,
                                 evidence_keep_last=wo.evidence_keep_last,
                                 history_repeats_max=wo.history_repeats_max)
    first_team: dict[str, str] = {}
    for t in cfg.teams:
        first_team.setdefault(t.department, t.id)
    offices = [Office(d.id, d.level, d.zone_id, first_team.get(d.id)) for d in cfg.departments]
    unknown = [d.id for d in cfg.departments if d.zone_id and d.zone_id not in zone_map]
    if unknown:
        raise ValueError(f"config.yaml: departments {unknown} name a zone_id that is not in "
                         f"{cfg.zones_path}")
    workers = WorkerLocator({d.id: (d.kind, d.position) for d in cfg.devices})
    return AlertStore(zone_map, route, policy, offices, workers.nearest), workers


def build_appeal_desk(cfg: Config, zones: Sequence[Zone],
                      pool: ConnectionPool[psycopg.Connection[Any]],
                      alerts: AlertStore | None, clock: Callable[[], datetime],
                      run: Runner | None) -> AppealDesk:
    """The residents' appeals desk: the district's place names, the matching policy, and the
    pipeline's ``run_local`` so that an appeal goes through the rules as a report would."""
    a = cfg.appeals
    params = MatchParams(near_m=a.near_m, radius_m=a.radius_m,
                         incident_window=timedelta(minutes=a.incident_window_min),
                         appeal_window=timedelta(minutes=a.appeal_window_min),
                         threshold=a.threshold)
    return AppealDesk(pool, zones, Gazetteer.load(zones, cfg.places_path), alerts, clock,
                      params=params, dedupe_window=timedelta(seconds=a.dedupe_window_s),
                      run=run, pool_wait_s=cfg.http.pool_wait_s)


def appeal_limits(cfg: Config) -> IntakeLimits:
    a = cfg.appeals
    return IntakeLimits(a.per_address_per_min, a.overall_per_min, a.per_operator_per_min,
                        a.max_body_bytes)


def web_settings(cfg: Config) -> WebSettings:
    """HTTP hygiene and login limits from ``http:`` and ``auth:``."""
    http, auth = cfg.http, cfg.auth
    return WebSettings(
        allowed_hosts=frozenset(http.allowed_hosts) if http.allowed_hosts
        else default_hosts(http.host),
        max_body_bytes=http.max_body_bytes, streams_total=http.streams_total,
        streams_per_user=http.streams_per_user, pool_wait_s=http.pool_wait_s,
        token_ttl=timedelta(minutes=auth.token_ttl_min),
        session_ttl=timedelta(minutes=auth.session_ttl_min),
        login_limits=LoginLimits(auth.login_attempts_per_address, auth.login_failures_per_user))


@dataclass(frozen=True)
class Endpoints:
    broker_url: str
    database_url: str
    broker_protocol: str = "5"
    # The role that owns the schema, for the migrations at start (default: database_url): the
    # running service then needs only to read and write rows.
    database_owner_url: str | None = None
    # Where the embedded broker's password and ACL files are: a device added or retired through
    # the API rewrites them and the broker rereads them. None: a broker of one's own, whose files
    # `citywatch broker files` writes.
    broker_dir: Path | None = None


# A server's answers that waiting will not change (libpq and PostgreSQL's English messages;
# psycopg gives no SQLSTATE for a failed connection). Any other failure is waited out.
_FINAL_ANSWERS = ("password authentication failed", "does not exist", "pg_hba.conf")


def connect_at_start(url: str, wait_s: float) -> psycopg.Connection[Any]:
    """The first connection, waiting up to ``wait_s`` for a server that cannot be reached yet
    (refused, timed out, starting up, in recovery), with a line of progress at each try. A
    wrong password or an unknown database or role fails at once."""
    started = time.monotonic()
    delay = 1.0
    while True:
        try:
            return psycopg.connect(url, autocommit=True, connect_timeout=10)
        except psycopg.OperationalError as exc:
            waited = time.monotonic() - started
            if any(a in str(exc) for a in _FINAL_ANSWERS) or waited + delay > wait_s:
                raise
            reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            log.warning("database %s unreachable (%s); waited %.0f s of %.0f, trying again in "
                        "%.0f s", _redact(url), reason, waited, wait_s, delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def _utc_now() -> datetime:
    return datetime.now(UTC)


class Service:
    """Start with ``start()``, stop with ``stop()``; ``url`` is the HTTP base once started.

    Time. ``clock`` (default: the system clock, UTC) is the server's clock for everything the
    service decides: when a batch was received, how far the rules move when no reading arrives,
    deadlines and re-dispatches, presence, team answers. Readings keep their own ``ts`` (event
    time); a device whose clock is off is evaluated on this clock's timeline.

    For tests: pass a clock you control and call ``tick()`` to move the rules at once, as the
    scheduled job does every ``clocks.tick_every_s``. Twenty minutes of silence, for example::

        clock = ShiftedClock()                  # tests/fix_clock.py: now + an offset
        svc = Service(cfg, endpoints, http_port=0, clock=clock)
        ...                                     # readings stamped with clock(), then stored
        clock.advance(timedelta(minutes=20))
        assert svc.tick()                       # devices silent, zones "unknown"

    ``tick()`` returns False when it did not run: messages queued or in flight, a backlog
    older than ``clocks.allowance_s`` still draining (its readings move event time), or the
    database refused (nothing adopted; the next tick tries again). ``check_deadlines()`` runs
    the deadline job at once, likewise.
    """

    def __init__(self, config: Config, endpoints: Endpoints, http_port: int | None = None,
                 client_id: str | None = None,
                 clock: Callable[[], datetime] = _utc_now) -> None:
        self.config = config
        self._clock = clock
        self.endpoints = endpoints
        self._http_port = config.http.port if http_port is None else http_port
        self._client_id = client_id or config.broker.client_id
        self.metrics = Metrics()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._supervisor = Supervisor(self._stop, on_change=self._worker_changed)
        self._restarts_counted: dict[str, int] = {}
        self.broker_stats = BrokerStats(self.metrics)
        self._seen_lock = threading.Lock()
        self._seen = {"qos0_dropped": liveness.Counter(), "internal_error": liveness.Counter()}
        self._server: uvicorn.Server | None = None
        self._scheduler: BackgroundScheduler | None = None
        self._pool: ConnectionPool[psycopg.Connection[Any]] | None = None
        self.url = ""
        self.storage_mode = ""

    # --- lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        zones = load_zones(self.config.zones_path)
        db = self.endpoints.database_url
        with connect_at_start(self.endpoints.database_owner_url or db,
                              self.config.database.start_wait_s) as conn:
            # The registry is the configuration's devices with the API's changes on top.
            device_registry.migrate(conn)
            credentials.migrate(conn)
            overlay = device_registry.overlay(conn)
            cfg = self.config.model_copy(
                update={"devices": merge(self.config.devices, overlay)})
            placement = build_placement(cfg, zones)
            mode = sensing_store.migrate(conn, retention_days=cfg.database.retention_days)
            retired = [e.id for e in overlay if e.retired is not None]
            if retired:
                conn.execute("DELETE FROM devices WHERE id = ANY(%s)", (retired,))
            self.storage_mode = (f"timescaledb {mode.timescaledb_version}"
                                 if mode.backend == "timescaledb" else "postgresql")
            for step in mode.degraded:
                log.warning("TimescaleDB feature unavailable: %s", step)
            alert_store.migrate(conn)
            appeal_store.migrate(conn)
            users.migrate(conn)
            sensing_store.upsert_devices(conn, [
                sensing_store.DeviceSpec(d.id, d.kind, d.position,
                                         placement.device_zones(d.id))
                for d in cfg.devices])
            levels = alert_store.open_levels(conn)
            clock_offsets = sensing_store.load_clock_offsets(conn)
        log.info("storage: %s; %d zones; %d devices; %d open alerts restored",
                 self.storage_mode, len(zones), len(cfg.devices), len(levels))

        known = {d.id: d.kind for d in cfg.devices}
        engine = self._engine = build_engine(cfg, zones, placement)
        state = engine.restore(levels)
        self.alert_store, self.workers = build_alert_store(cfg, zones)
        self._link = self._make_link(cfg)
        self._outbox = OutboxPublisher(
            db, self._link.publish, self._link.connected.is_set,
            on_sent=lambda topic, _id: self.metrics.published.labels(
                "dispatch" if topic.startswith("city/dispatch/") else "zone_state").inc())
        self.pipeline = Pipeline(
            conninfo=db, decoder=build_decoder(cfg, known), engine=engine,
            state=state, placement=placement, alert_store=self.alert_store,
            ack=self._link.ack, dead_letter=self._dead_letter, on_committed=self._outbox.notify,
            metrics=self.metrics, batch_max=cfg.database.batch_max,
            batch_wait_s=cfg.database.batch_wait_ms / 1000, workers=self.workers,
            clock=self._clock, clock_params=ClockParams(
                timedelta(seconds=cfg.clocks.skew_tolerance_s),
                timedelta(seconds=cfg.clocks.skew_confirm_s)),
            ingest_queue=IngestQueue.for_receive_maximum(cfg.broker.receive_maximum))
        self.pipeline.clocks = clocks.restore(clock_offsets)
        self.devices = LiveRegistry(
            self.config, cfg.devices, load_kinds(cfg, device_kinds=set(known.values())),
            Runtime(self.pipeline, engine, placement, known, self.workers), self._clock, db,
            self._access_changed if self.endpoints.broker_dir is not None else None)
        self._spawn("ingest", self.pipeline.run)
        self._spawn("outbox", self._outbox.run)
        self._link.start()
        self._start_jobs()
        self._start_http(zones)
        # "Running" should mean connected when the broker is there: the MQTT process needs a
        # moment to start. A broker that is away is not waited for: the link keeps trying.
        if not self._link.connected.wait(CONNECT_WAIT_S):
            log.warning("not connected to the broker after %.0f s; still trying",
                        CONNECT_WAIT_S)

    def _make_link(self, cfg: Config) -> MqttLink | ProcessLink:
        """The engine's MQTT session: in this process, or in one of its own
        (``broker.receiver``)."""
        settings = LinkSettings(
            self.endpoints.broker_url, self._client_id, tuple(SUBSCRIPTIONS),
            protocol=self.endpoints.broker_protocol, session_expiry_s=cfg.broker.session_expiry_s,
            receive_maximum=cfg.broker.receive_maximum, keepalive_s=cfg.broker.keepalive_s,
            monitor=tuple(SYS_TOPICS), ca_file=None if cfg.ca_path is None else str(cfg.ca_path))
        make = ProcessLink if cfg.broker.receiver == "process" else make_link
        return make(settings, self._on_message, on_monitor=self.broker_stats.update,
                    on_session=self._on_session)

    def _access_changed(self, conn: psycopg.Connection[Any], kinds: Mapping[str, str]) -> None:
        """A device was added, changed or retired: the embedded broker's files follow."""
        assert self.endpoints.broker_dir is not None
        broker_access.refresh_embedded(conn, self.config, self.endpoints.broker_dir, kinds)

    def _spawn(self, name: str, target: Any) -> None:
        worker = self._supervisor.spawn(name, target)  # restarted with back-off if it fails
        assert worker.thread is not None
        self._threads.append(worker.thread)

    def _worker_changed(self, worker: Worker) -> None:
        self.metrics.worker_alive.labels(worker.name).set(1 if worker.running else 0)
        counted = self._restarts_counted.get(worker.name, 0)
        self.metrics.worker_restarts.labels(worker.name).inc(worker.restarts - counted)
        self._restarts_counted[worker.name] = worker.restarts

    def _on_session(self, session: int, kept: bool) -> None:
        # paho's thread, on every (re)connect, before the new connection's messages arrive.
        if kept and session > 1:
            dropped = self.pipeline.ingest_queue.drop_stale(session)
            if dropped:
                log.info("reconnected: %d queued messages from the old connection dropped; the "
                         "broker resends them", dropped)

    def _on_message(self, message: Any) -> None:
        self.pipeline.submit(message)

    def _dead_letter(self, rej: Rejection) -> None:
        # %r: a refused topic is as the device sent it, control characters included.
        log.warning("rejected %r from device %s: %s (%s)", rej.topic, rej.device_id or "?",
                    rej.reason, rej.detail)
        body = {"reason": rej.reason, "detail": rej.detail, "topic": rej.topic,
                "payload": rej.payload[:4096].decode("utf-8", "replace"),
                "ts": iso_utc(self._clock())}
        self._link.publish(deadletter_topic(rej.kind, rej.device_id),
                           json.dumps(body, ensure_ascii=True), 1, False)

    def _start_jobs(self) -> None:
        cfg = self.config
        db = self.endpoints.database_url
        sched = BackgroundScheduler(timezone=UTC)

        def silence() -> None:
            cutoff = self._clock() - timedelta(seconds=cfg.presence.silence_timeout_s)
            try:
                with psycopg.connect(db, autocommit=True) as conn:
                    gone = sensing_store.mark_silent_offline(conn, cutoff)
                if gone:
                    log.info("offline after %ss of silence: %s", cfg.presence.silence_timeout_s,
                             ", ".join(gone))
            except psycopg.OperationalError as exc:
                log.warning("presence check skipped: database unavailable (%s)", exc)

        def retention() -> None:
            if self.storage_mode.startswith("timescaledb"):
                return  # TimescaleDB's own retention policy does it
            try:
                with psycopg.connect(db, autocommit=True) as conn:
                    sensing_store.apply_retention(conn, cfg.database.retention_days,
                                                  self._clock())
            except psycopg.OperationalError as exc:
                log.warning("retention skipped: database unavailable (%s)", exc)

        def nudge_outbox() -> None:
            self._outbox.notify()

        sched.add_job(silence, "interval", seconds=15, id="presence", coalesce=True)
        sched.add_job(retention, "interval", hours=6, id="retention", coalesce=True,
                      next_run_time=datetime.now(UTC) + timedelta(seconds=30))
        sched.add_job(nudge_outbox, "interval", seconds=2, id="outbox", coalesce=True)
        keep = alert_retention.Retention(cfg.database.outbox_keep_days, cfg.work_orders.keep_days)
        sched.add_job(lambda: alert_retention.run(db, keep, self._clock()), "interval",
                      hours=6, id="alert-retention", coalesce=True, max_instances=1,
                      next_run_time=datetime.now(UTC) + timedelta(seconds=45))
        def appeal_retention() -> None:
            # Residents' appeals (and their contact details) go with the work orders they
            # were about: after work_orders.keep_days.
            try:
                with psycopg.connect(db, autocommit=True) as conn:
                    appeal_store.prune(conn, self._clock() - timedelta(
                        days=cfg.work_orders.keep_days))
            except psycopg.OperationalError as exc:
                log.warning("appeal retention skipped: database unavailable (%s)", exc)

        sched.add_job(appeal_retention, "interval", hours=6, id="appeal-retention",
                      coalesce=True, max_instances=1,
                      next_run_time=datetime.now(UTC) + timedelta(seconds=50))
        sched.add_job(self.check_deadlines, "interval", seconds=cfg.work_orders.check_every_s,
                      id="deadlines", coalesce=True, max_instances=1)
        sched.add_job(self.tick, "interval", seconds=cfg.clocks.tick_every_s, id="tick",
                      coalesce=True, max_instances=1)
        sched.start()
        self._scheduler = sched

    def tick(self) -> bool:
        """Move the rules to the service clock less ``clocks.allowance_s`` (see the class
        docstring); True if it ran."""
        return self.pipeline.tick(timedelta(seconds=self.config.clocks.allowance_s))

    def check_deadlines(self) -> None:
        """Escalate overdue work orders and repeat unanswered dispatches, at the service clock."""
        try:
            with psycopg.connect(self.endpoints.database_url) as conn:
                applied = self.alert_store.check(conn, self._clock())
            record_applied(self.metrics, applied)
            if applied.changed:
                self._outbox.notify()
        except psycopg.OperationalError as exc:
            log.warning("deadline check skipped: database unavailable (%s)", exc)

    def _start_http(self, zones: list[Any]) -> None:
        http = self.config.http
        # Every request checks its login in the database.
        self._pool = open_pool(self.endpoints.database_url, http.pool_size)
        deps = ApiDeps(pool=self._pool, zones=zones, list_devices=_device_features,
                       health=self.health, registry=self.metrics.registry,
                       clock=self._clock, static_dir=STATIC_DIR,
                       team_ids=frozenset(t.id for t in self.config.teams),
                       alert_store=self.alert_store,
                       thresholds=self.config.rules.model_dump(mode="json"),
                       departments={d.id: d.name for d in self.config.departments},
                       zone_risk=self.zone_risk,
                       team_departments={t.id: t.department for t in self.config.teams},
                       web=web_settings(self.config),
                       appeals=build_appeal_desk(self.config, zones, self._pool,
                                                 self.alert_store, self._clock,
                                                 self.pipeline.run_local),
                       appeal_limits=appeal_limits(self.config),
                       device_registry=self.devices,
                       local_tz=self.config.appeals.local_tz)
        app = create_app(deps)
        config = uvicorn.Config(app, host=self.config.http.host, port=self._http_port,
                                log_level="warning", access_log=False)
        self._server = uvicorn.Server(config)
        thread = threading.Thread(target=self._server.run, name="citywatch-http", daemon=True)
        thread.start()
        deadline = time.monotonic() + 15
        while not self._server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"HTTP server did not start on port {self._http_port}")
            time.sleep(0.05)
        port = self._server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://{self.config.http.host}:{port}"

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.should_exit = True
            # uvicorn checks the flag every 0.1 s and then stops listening; only after that is
            # the pool closed (which ends open event streams), so no request meets a closed pool.
            time.sleep(0.3)
        if self._pool is not None:
            self._pool.close()
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
        for t in self._threads:
            t.join(timeout=5)
        # paho's thread may be waiting for room in the ingest queue (back-pressure) with the
        # worker gone: release it, or stopping the link would wait for ever.
        self.pipeline.ingest_queue.close()
        self._link.stop()

    def zone_risk(self) -> dict[str, dict[str, str | int]]:
        """Per zone and hazard: the level (1-4), "clear", or "unknown" (no trusted sensor)."""
        risk = self._engine.zone_risk(self.pipeline.state)
        return {z: {h: (int(v) if isinstance(v, Level) else v) for h, v in r.items()}
                for z, r in risk.items()}

    # --- health -------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        c = self.pipeline.counts
        db_ok = True
        counts: dict[str, Any] = {}
        try:
            assert self._pool is not None
            with self._pool.connection(timeout=2) as conn:
                counts = alert_store.counts(conn)
        except (psycopg.Error, AssertionError, Exception):  # health must answer, whatever fails
            db_ok = False
        broker_ok = self._link.connected.is_set()
        body = {
            "status": "ok" if (db_ok and broker_ok) else "degraded",
            "broker": {"connected": broker_ok, "url": _redact(self.endpoints.broker_url)},
            "database": {"connected": db_ok, "storage": self.storage_mode},
            "lag_s": round(self.metrics.lag._value.get(), 3),
            "counts": {"messages": c.received, "stored": c.stored, "duplicates": c.duplicates,
                       "rejected": c.rejected, **counts,
                       "dispatched": self._outbox.sent},
            "rejected_by_reason": dict(c.rejected_by_reason),
            "rules": asdict(self.pipeline.state.counts),
            "faulty_devices": sorted(self._engine.faulty_devices(self.pipeline.state)),
            "clocks": self._clocks_health(),
        }
        self._add_liveness(body)
        return body

    def _clocks_health(self) -> dict[str, Any]:
        """The rules' event time against the server's, and the devices whose clocks are off."""
        p = self.pipeline
        rules = p.state.clock
        return {
            "server": _iso(self._clock()),
            "rules": None if rules is None else _iso(rules),
            "fleet_lag_s": round(p.clocks.fleet_lag.total_seconds(), 3),
            "corrected": {d: {"offset_s": round(c.offset.total_seconds(), 3),
                              "since": None if c.since is None else _iso(c.since)}
                          for d, c in p.clocks.corrected().items()},
        }

    def _add_liveness(self, body: dict[str, Any]) -> None:
        """Workers, queues and warnings; status "failing" (HTTP 503) when the pipeline is stuck."""
        now = time.monotonic()
        hc = self.config.health
        w = self._supervisor.workers
        verdict = liveness.judge({
            "ingest": liveness.WorkerState(w["ingest"].alive, w["ingest"].restarts,
                                           self.pipeline.waiting_since(),
                                           self.pipeline.last_progress),
            "outbox": liveness.WorkerState(w["outbox"].alive, w["outbox"].restarts,
                                           self._outbox.waiting_since,
                                           self._outbox.last_progress),
        }, now, hc.stuck_after_s)
        broker = self.broker_stats.snapshot()
        q = self.pipeline.ingest_queue
        with self._seen_lock:
            seen = self._seen = {
                "qos0_dropped": self._seen["qos0_dropped"].seen(self.pipeline.dropped, now),
                "internal_error": self._seen["internal_error"].seen(
                    self.pipeline.counts.rejected_by_reason.get("internal_error", 0), now),
            }
        warnings = []
        if liveness.recent_growth(self.broker_stats.dropped, now, hc.warn_for_s):
            warnings.append(f"the broker dropped messages for a full client queue "
                            f"({broker['dropped']} since it started; see its log for whose)")
        if liveness.recent_growth(seen["qos0_dropped"], now, hc.warn_for_s):
            warnings.append(f"ingest dropped {self.pipeline.dropped} QoS 0 messages beyond its "
                            f"queue budget (devices should publish at QoS 1)")
        if liveness.recent_growth(seen["internal_error"], now, hc.warn_for_s):
            warnings.append(f"{seen['internal_error'].value} messages dead-lettered for an "
                            f"internal error (a bug: see the log)")
        body["workers"] = dict(verdict.workers)
        body["ingest_queue"] = {
            "messages": q.qsize(), "bytes": q.nbytes(),
            "max_messages": q.reliable.messages + q.best_effort.messages,
            "max_bytes": q.reliable.bytes + q.best_effort.bytes,
            "qos0_dropped": self.pipeline.dropped, "paused_reading": q.blocked}
        body["broker_queue"] = broker
        body["problems"] = list(verdict.problems)
        body["warnings"] = warnings
        if verdict.failing:
            body["status"] = "failing"
        elif warnings and body["status"] == "ok":
            body["status"] = "degraded"


def _device_features(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    return [{"id": d.id, "kind": d.kind, "lon": d.position[0] if d.position else None,
             "lat": d.position[1] if d.position else None, "zone_ids": d.zone_ids,
             "online": d.online, "last_seen": d.last_seen}
            for d in sensing_store.list_devices(conn)]


def _iso(ts: datetime) -> str:
    return iso_utc(ts)


def _redact(url: str) -> str:
    if "@" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url
