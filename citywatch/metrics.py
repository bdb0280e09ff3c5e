"""Prometheus metrics of one running engine (its own registry, so tests can run several)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.messages_in = Counter("citywatch_messages_received", "MQTT messages received",
                                   ["channel"], registry=r)
        self.rejected = Counter("citywatch_messages_rejected", "messages rejected by validation",
                                ["reason"], registry=r)
        self.stored = Counter("citywatch_messages_stored", "messages stored (new, not duplicates)",
                              ["channel"], registry=r)
        self.duplicates = Counter("citywatch_messages_duplicate",
                                  "redelivered messages recognised and counted once", registry=r)
        self.alerts = Counter("citywatch_alert_changes", "alert changes", ["hazard", "change"],
                              registry=r)
        self.orders = Counter("citywatch_work_orders_opened", "work orders opened", ["hazard"],
                              registry=r)
        self.published = Counter("citywatch_outbox_published", "dispatches and zone states sent",
                                 ["kind"], registry=r)
        self.lag = Gauge("citywatch_ingest_lag_seconds",
                         "receive-to-commit time of the last batch", registry=r)
        self.event_lag = Gauge("citywatch_event_lag_seconds",
                               "measurement-to-commit time of the newest reading", registry=r)
        self.batch_size = Histogram("citywatch_batch_size", "messages per write transaction",
                                    buckets=(1, 5, 20, 50, 100, 200, 500, 1000), registry=r)
        self.db_errors = Counter("citywatch_database_errors",
                                 "failed write transactions (retried)", registry=r)
        self.policy = Counter("citywatch_policy_actions",
                              "what alert hygiene did: dispatches suppressed, alerts reactivated, "
                              "orders reopened, redispatches, escalations, team answers",
                              ["action"], registry=r)
        self.queue_depth = Gauge("citywatch_ingest_queue", "messages waiting to be stored",
                                 registry=r)
        self.ticks = Counter("citywatch_rule_ticks", "the rules moved on the server's clock: "
                             "ran, skipped (a backlog draining) or failed (database)",
                             ["outcome"], registry=r)
        self.clock_corrected = Gauge("citywatch_devices_clock_corrected",
                                     "devices whose clocks are off: readings stored as sent, "
                                     "evaluated on the server's timeline", registry=r)
        self.clock_corrections = Counter("citywatch_device_clock_corrections",
                                         "times a device's clock correction started or changed",
                                         registry=r)
        self.queue_bytes = Gauge("citywatch_ingest_queue_bytes",
                                 "bytes (payload and topic) of the messages waiting to be stored",
                                 registry=r)
        self.ingest_dropped = Counter("citywatch_ingest_dropped",
                                      "messages dropped before storage (QoS 0 beyond the ingest "
                                      "queue's budget)", ["reason"], registry=r)
        self.ingest_backpressure = Counter("citywatch_ingest_backpressure",
                                           "times the ingest queue was full and reading from the "
                                           "broker paused (QoS 1 and 2 wait, never drop)",
                                           registry=r)
        self.worker_restarts = Counter("citywatch_worker_restarts",
                                       "worker threads restarted after an unexpected error",
                                       ["worker"], registry=r)
        self.worker_alive = Gauge("citywatch_worker_alive", "1 while the worker thread runs",
                                  ["worker"], registry=r)
        self.broker_dropped = Gauge("citywatch_broker_messages_dropped",
                                    "the broker's count of messages it dropped for full client "
                                    "queues ($SYS; since the broker started)", registry=r)
        self.broker_stored = Gauge("citywatch_broker_store",
                                   "messages held in the broker's store: queued, in flight and "
                                   "retained ($SYS)", ["unit"], registry=r)
        self.broker_clients = Gauge("citywatch_broker_clients",
                                    "clients of the broker by state ($SYS); disconnected "
                                    "persistent sessions are the ones whose queues fill",
                                    ["state"], registry=r)

    def total(self, counter: Counter) -> int:
        return int(sum(s.value for m in counter.collect() for s in m.samples
                       if s.name.endswith("_total")))
