"""The load funnel of a scenario: raw messages -> alert changes -> incidents -> work orders.

Runs the scenario's messages through the real pipeline code (decode, store, rules, alerts,
work orders) against a scratch database, without a broker, and compares the work orders with
the scenario's ground truth: the mountain of orders the case study suffers from should shrink to
one order per real incident.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from alerts import store as alert_store
from citywatch.config import Config
from citywatch.metrics import Metrics
from citywatch.pipeline import Pipeline
from citywatch.service import (
    build_alert_store,
    build_decoder,
    build_engine,
    build_placement,
)
from geo.load import load_zones
from sensing import store as sensing_store
from sensing.mqtt import Inbound
from sensing.scratch import scratch_database
from simulators.truth import GroundTruth

STAFF = 10  # the case study's ten operators


@dataclass
class Funnel:
    scenario: str
    simulated: timedelta
    messages: int = 0
    stored: int = 0
    rejected: int = 0
    alert_changes: int = 0
    incidents: int = 0
    work_orders: int = 0
    duplicates_merged: int = 0
    dispatches: int = 0
    truth_incidents: int = 0
    matched: int = 0
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)

    @property
    def orders_per_operator_day(self) -> float:
        days = max(self.simulated.total_seconds() / 86400, 1e-9)
        return self.work_orders / days / STAFF

    def table(self) -> str:
        rows = [
            ("raw messages", self.messages),
            ("  stored (new readings and events)", self.stored),
            ("  rejected", self.rejected),
            ("alert changes (raise, level change, clear)", self.alert_changes),
            ("incidents (one per zone and hazard episode)", self.incidents),
            ("work orders", self.work_orders),
            ("  reports and returns merged as duplicates", self.duplicates_merged),
            ("  dispatches sent", self.dispatches),
        ]
        lines = [f"funnel of {self.scenario!r} over {self.simulated} simulated:"]
        lines += [f"  {name:<48} {n:>8,}" for name, n in rows]
        lines.append(f"  {'work orders per operator per day (10 staff)':<48} "
                     f"{self.orders_per_operator_day:>8.1f}")
        if self.truth_incidents:
            lines.append(f"  ground truth incidents {self.truth_incidents}, matched one to one "
                         f"{self.matched}; missing {self.missing or 'none'}; "
                         f"extra {self.extra or 'none'}")
        return "\n".join(lines)


def run_funnel(config: Config, db_url: str, scenario: str,
               messages: Iterable[tuple[str, bytes]], simulated: timedelta,
               truth: GroundTruth | None = None, batch: int = 500) -> Funnel:
    zones = load_zones(config.zones_path)
    placement = build_placement(config, zones)
    with psycopg.connect(db_url, autocommit=True) as conn:
        sensing_store.migrate(conn, retention_days=config.database.retention_days)
        alert_store.migrate(conn)
    engine = build_engine(config, zones, placement)
    store_, workers = build_alert_store(config, zones)
    clock_now = [datetime.now(UTC)]
    pipeline = Pipeline(
        conninfo=db_url, decoder=build_decoder(config), engine=engine,
        state=engine.restore({}), placement=placement, alert_store=store_,
        ack=lambda _mids: None, dead_letter=lambda _r: None,
        on_committed=lambda: None, metrics=Metrics(), clock=lambda: clock_now[0],
        workers=workers)
    out = Funnel(scenario, simulated)
    pending: list[Inbound] = []
    for mid, (topic, payload) in enumerate(messages, start=1):
        pending.append(Inbound(topic, payload, mid, 1, clock_now[0]))
        if len(pending) >= batch:
            pipeline.process(pending)
            pending = []
    if pending:
        pipeline.process(pending)
    pipeline.close()
    c = pipeline.counts
    out.messages, out.stored, out.rejected = c.received, c.stored, c.rejected
    m = pipeline._metrics
    out.alert_changes = m.total(m.alerts)
    with psycopg.connect(db_url) as conn:
        counts: Any = conn.execute(
            "SELECT (SELECT count(*) FROM alerts), (SELECT count(*) FROM work_orders), "
            "(SELECT coalesce(sum(duplicates), 0) FROM work_orders), "
            "(SELECT count(*) FROM outbox WHERE topic LIKE 'city/dispatch/%')").fetchone()
        out.incidents, out.work_orders, out.duplicates_merged, out.dispatches = counts
        orders = conn.execute("SELECT id, zone_id, hazard, created FROM work_orders "
                              "ORDER BY created").fetchall()
    if truth is not None:
        match_truth(out, truth, orders)
    return out


def match_truth(out: Funnel, truth: GroundTruth,
                orders: list[tuple[str, str, str, datetime]]) -> None:
    """Each true incident should have exactly one order for its zone and hazard, opened
    between a little before it started (a forecast) and its end."""
    out.truth_incidents = len(truth.hazards)
    used: set[str] = set()
    for h in truth.hazards:
        lo, hi = h.start - timedelta(minutes=30), h.end
        hits = [o for o in orders if o[1] == h.zone_id and o[2] == h.hazard
                and lo <= o[3] <= hi and o[0] not in used]
        if hits:
            out.matched += 1
            used.add(hits[0][0])
        else:
            out.missing.append(f"{h.hazard}@{h.zone_id}")
    out.extra = [f"{oid} {hazard}@{zone}" for oid, zone, hazard, _ in orders if oid not in used]


def command(config: Config, scenario: str, seed: int | None, server: str) -> int:
    """``citywatch funnel SCENARIO``: run it offline through the pipeline and print the funnel."""
    from citywatch import score
    from simulators.runner import Simulation

    start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=2)
    sim = Simulation(config, scenario, seed=config.simulator.seed if seed is None else seed,
                     speed=None, start=start)
    end = score._scenario_end(sim)
    messages = [(topic, payload) for _t, topic, payload in score._messages(sim, end)]
    truth = score._sim_truth(sim)
    print(f"{scenario}: {len(messages):,} messages over {end - start} simulated; running them "
          "through the pipeline on a scratch database ...", flush=True)
    with scratch_database(server) as db:
        out = run_funnel(config, db, scenario, messages, end - start, truth)
    print(out.table())
    return 0
