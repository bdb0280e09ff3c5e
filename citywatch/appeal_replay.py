"""``citywatch appeals replay FILE``: a day of residents' appeals through the real desk.

The hotline's way makes one work order per appeal: the same flooded street appealed seventeen
times is seventeen orders. This replays a day of appeals (a NYC 311 export moved onto the district,
``citywatch.appeal_data``) through what citywatch runs live, on a scratch database: the appeal desk
(placing, matching, merging), the rules (an appeal that matches nothing is a report: it opens an
incident in its grid cell) and the alert store (work orders, routing, the grid worker's check),
with the service clock at each appeal's time. It then counts, and compares with the hand-judged
repeat pairs (``tests/data/appeals/repeat_pairs.csv``).

``citywatch appeals evaluate``: precision and recall of repeat detection per method
(``citywatch.appeal_eval``).
"""

from __future__ import annotations

import argparse
import itertools
import os
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from alerts import appeal_store
from alerts import store as alert_store
from alerts.appeal_desk import RESIDENT
from alerts.appeal_intake import AppealIn, Contact, IntakeError
from citywatch import appeal_data, appeal_eval
from citywatch.config import Config
from citywatch.metrics import Metrics
from citywatch.pipeline import Pipeline
from citywatch.service import (
    build_alert_store,
    build_appeal_desk,
    build_decoder,
    build_engine,
    build_placement,
)
from geo.load import load_zones
from sensing import store as sensing_store
from sensing.scratch import scratch_database


@dataclass
class Replay:
    day: date
    language: str
    appeals: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    resubmitted: int = 0
    problems: int = 0
    incidents: int = 0
    incidents_opened: int = 0
    work_orders: int = 0
    cases: int = 0
    grid_checks: int = 0
    by_category: Counter[str] = field(default_factory=Counter)
    merged_pairs: int = 0
    right_pairs: int = 0
    judged_pairs: int = 0

    def table(self) -> str:
        lines = [f"appeals of {self.day} ({self.language}) through the desk:",
                 f"  {'appeals received':<52} {self.appeals + sum(self.refused.values()):>6}",
                 f"  {'  refused (outside the district, no place)':<52} "
                 f"{sum(self.refused.values()):>6}",
                 f"  {'  taken':<52} {self.appeals:>6}",
                 f"  {'  the same submission sent again (not stored)':<52} "
                 f"{self.resubmitted:>6}",
                 f"  {'the hotline way: one work order per appeal':<52} {self.appeals:>6}",
                 f"  {'citywatch: problems (incidents and cases)':<52} {self.problems:>6}",
                 f"  {'  incidents (hazards; opened by appeals)':<52} "
                 f"{self.incidents:>6} ({self.incidents_opened})",
                 f"  {'  work orders':<52} {self.work_orders:>6}",
                 f"  {'  grid workers asked to check':<52} {self.grid_checks:>6}",
                 f"  {'  cases without an incident (other problems)':<52} {self.cases:>6}",
                 f"  {'appeals per category':<52} "
                 + ", ".join(f"{k} {v}" for k, v in sorted(self.by_category.items())),
                 f"  repeat pairs merged {self.merged_pairs}, of them judged the same "
                 f"{self.right_pairs}; pairs judged the same this day {self.judged_pairs}"]
        return "\n".join(lines)


def run_replay(config: Config, db_url: str, items: list[appeal_data.Appeal], day: date,
               language: str) -> Replay:
    zones = load_zones(config.zones_path)
    placement = build_placement(config, zones)
    with psycopg.connect(db_url, autocommit=True) as conn:
        sensing_store.migrate(conn, retention_days=config.database.retention_days)
        alert_store.migrate(conn)
        appeal_store.migrate(conn)
    engine = build_engine(config, zones, placement)
    store_, workers = build_alert_store(config, zones)
    clock_now = [datetime.now(UTC)]
    pipeline = Pipeline(
        conninfo=db_url, decoder=build_decoder(config), engine=engine,
        state=engine.restore({}), placement=placement, alert_store=store_,
        ack=lambda _mids: None, dead_letter=lambda _r: None, on_committed=lambda: None,
        metrics=Metrics(), clock=lambda: clock_now[0], workers=workers)
    # Grid workers at their home positions, so that an incident an appeal opens asks the
    # nearest of them to check (in the live system their phones report where they are).
    first = min((a.received for a in items), default=clock_now[0]).astimezone(UTC)
    for d in config.devices:
        if d.kind == "grid":
            workers.saw(d.id, d.position, first)
    out = Replay(day, language)
    keys: dict[str, str] = {}
    with ConnectionPool(db_url, min_size=1, max_size=2, open=True,
                        kwargs={"autocommit": True}) as pool:
        desk = build_appeal_desk(config, zones, pool, store_, lambda: clock_now[0],
                                 pipeline.run_local)
        for a in sorted(items, key=lambda x: (x.received, x.key)):
            clock_now[0] = a.received.astimezone(UTC)
            pipeline.tick(timedelta(0))  # report incidents clear as time passes
            try:
                filed = desk.file(AppealIn("open311", a.category, a.position, "", a.text, "",
                                           Contact(device_id=a.caller)), RESIDENT, "replay")
            except IntakeError as exc:
                out.refused[exc.field] += 1
                continue
            if not filed.new:
                out.resubmitted += 1
                continue
            out.appeals += 1
            out.by_category[a.category] += 1
            keys[filed.id] = a.key
        pipeline.close()
    with psycopg.connect(db_url) as conn:
        row: Any = conn.execute(
            "SELECT count(DISTINCT COALESCE(alert_id, case_id)), count(DISTINCT alert_id), "
            "count(DISTINCT work_order_id), count(DISTINCT case_id) FILTER (WHERE alert_id IS "
            "NULL) FROM appeals").fetchone()
        out.problems, out.incidents, out.work_orders, out.cases = row
        opened: Any = conn.execute("SELECT count(*) FROM appeals WHERE how LIKE "
                                   "'%opened an incident%'").fetchone()
        out.incidents_opened = opened[0]
        checks: Any = conn.execute("SELECT count(*) FROM dispatches WHERE payload::jsonb ->> "
                                   "'reason' = 'check'").fetchone()
        out.grid_checks = checks[0]
        groups: dict[str, list[str]] = {}
        for appeal_id, alert_id, case_id in conn.execute(
                "SELECT id, alert_id, case_id FROM appeals").fetchall():
            groups.setdefault(alert_id or case_id, []).append(keys[appeal_id])
    merged = {frozenset(p) for g in groups.values() for p in itertools.combinations(g, 2)}
    truth = {p for p, same in appeal_eval.read_labels().items() if same and p <= set(keys.values())}
    out.merged_pairs, out.right_pairs, out.judged_pairs = len(merged), len(merged & truth), \
        len(truth)
    return out


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    s = sub.add_parser("appeals", parents=[common], help="residents' appeals: replay a day, "
                       "measure repeat detection",
                       description=__doc__.split("\n\n")[1] if __doc__ else None)
    what = s.add_subparsers(dest="appeals_command", required=True)
    r = what.add_parser("replay", parents=[common], help="a day of appeals through the desk")
    r.add_argument("file", nargs="?", type=Path, default=appeal_data.SAMPLE,
                   help="a NYC 311 export (default: the 1,000-request sample in tests/data)")
    r.add_argument("--day", default=None, help="the day to replay, YYYY-MM-DD (default: the "
                   "file's busiest)")
    r.add_argument("--language", choices=appeal_eval.LANGUAGES, default="mixed",
                   help="the appeals' words: en (as recorded), para (English paraphrases), zh "
                   "(Chinese), mixed (every other one Chinese; default)")
    r.add_argument("--server", default=os.environ.get(
        "CITYWATCH_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres"),
        help="PostgreSQL server to create the scratch database on (CITYWATCH_TEST_PG)")
    e = what.add_parser("evaluate", parents=[common],
                        help="precision and recall of repeat detection per method")
    e.add_argument("--sweep", action="store_true", help="every threshold from 0.40 to 0.90")


def command(config: Config, args: argparse.Namespace) -> int:
    if args.appeals_command == "evaluate":
        from alerts.appeal_text import Vocabulary
        from geo.gazetteer import Gazetteer
        g = Gazetteer.load(load_zones(config.zones_path), config.places_path)
        return appeal_eval.command(Vocabulary.of(g.vocabulary()), args.sweep)
    requests = appeal_data.read(args.file)
    day = date.fromisoformat(args.day) if args.day else appeal_data.busiest_day(requests)
    items = [a for a in appeal_data.appeals(requests, args.language, appeal_eval.PHASE)
             if a.received.date() == day]
    print(f"{len(items)} appeals with a place on {day}; replaying through the desk on a "
          "scratch database ...", flush=True)
    with scratch_database(args.server, "citywatch_appeals") as db:
        out = run_replay(config, db, items, day, args.language)
    print(out.table())
    return 0
