"""``citywatch replay``: stored telemetry and events through the rules of another configuration.

How an engineer tunes a rule: copy ``config.yaml``, change a threshold, and replay what the
database holds through both; the difference says what the change would have done. Both runs go
the way the live pipeline goes (placement in zones, the rule engine on event time), from the same
stored readings, so the only difference is the configuration. Alerts are compared as episodes
(raise .. clear) per zone and hazard: added, removed, raised earlier or later, peaking higher or
lower.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg.rows import kwargs_row

from citywatch.config import Config, ConfigError, load_config
from citywatch.placement import Placement
from citywatch.score import Episode, alert_lines, episodes
from geo.index import ZoneIndex
from geo.load import load_zones
from rules.base import AlertChange, Detection, Observation
from rules.engine import Counts, Engine, EngineState
from sensing import store
from sensing.models import Event, Telemetry

SAME_S = 60.0  # raise times closer than this are "the same"
CHUNK = timedelta(seconds=10)  # readings go to the engine in batches of this much event time
_AGO = re.compile(r"^(\d+(?:\.\d+)?)\s*(min|h|d)$")


@dataclass(frozen=True, slots=True)
class Difference:
    kind: str  # "added", "removed", "earlier", "later", "higher", "lower"
    zone_id: str
    hazard: str
    baseline: Episode | None
    candidate: Episode | None
    what: str = "raised"  # for earlier/later: the raise, or reaching yellow (a warning)

    def describe(self) -> str:
        b, c = self.baseline, self.candidate
        if self.kind == "added" and c is not None:
            return (f"added    {self.zone_id:<8} {self.hazard:<22} {c.peak.colour:<6} "
                    f"raised {c.raised:%Y-%m-%d %H:%M:%S}")
        if self.kind == "removed" and b is not None:
            return (f"removed  {self.zone_id:<8} {self.hazard:<22} {b.peak.colour:<6} "
                    f"was raised {b.raised:%Y-%m-%d %H:%M:%S}")
        assert b is not None
        assert c is not None
        if self.kind in ("earlier", "later"):
            tb, tc = (b.raised, c.raised) if self.what == "raised" else (b.first_yellow,
                                                                          c.first_yellow)
            assert tb is not None
            assert tc is not None
            minutes = abs((tc - tb).total_seconds()) / 60
            return (f"{self.kind:<8} {self.zone_id:<8} {self.hazard:<22} {self.what} by "
                    f"{minutes:.1f} min ({tb:%H:%M:%S} -> {tc:%H:%M:%S})")
        return (f"{self.kind:<8} {self.zone_id:<8} {self.hazard:<22} peak {b.peak.colour} -> "
                f"{c.peak.colour}")


def _overlap(a: Episode, b: Episode, end: datetime) -> bool:
    return a.raised <= (b.cleared or end) and b.raised <= (a.cleared or end)


def compare(baseline: Sequence[AlertChange], candidate: Sequence[AlertChange],
            end: datetime) -> list[Difference]:
    """What the candidate's alerts do differently from the baseline's (pure)."""
    base, cand = episodes(baseline), episodes(candidate)
    out: list[Difference] = []
    used: set[int] = set()
    for c in cand:
        match = next((i for i, b in enumerate(base) if i not in used and b.zone_id == c.zone_id
                      and b.hazard == c.hazard and _overlap(b, c, end)), None)
        if match is None:
            out.append(Difference("added", c.zone_id, c.hazard, None, c))
            continue
        used.add(match)
        b = base[match]
        shift = (c.raised - b.raised).total_seconds()
        if shift <= -SAME_S:
            out.append(Difference("earlier", c.zone_id, c.hazard, b, c))
        elif shift >= SAME_S:
            out.append(Difference("later", c.zone_id, c.hazard, b, c))
        if b.first_yellow is not None and c.first_yellow is not None:
            # A watch may start alike and the warning still come sooner or later.
            warn = (c.first_yellow - b.first_yellow).total_seconds()
            if warn <= -SAME_S:
                out.append(Difference("earlier", c.zone_id, c.hazard, b, c, "yellow"))
            elif warn >= SAME_S:
                out.append(Difference("later", c.zone_id, c.hazard, b, c, "yellow"))
        if c.peak != b.peak:
            out.append(Difference("higher" if c.peak < b.peak else "lower", c.zone_id,
                                  c.hazard, b, c))
    out += [Difference("removed", b.zone_id, b.hazard, b, None)
            for i, b in enumerate(base) if i not in used]
    return sorted(out, key=lambda d: ((d.candidate or d.baseline).raised,  # type: ignore[union-attr]
                                      d.zone_id, d.hazard))


def parse_since(text: str | None, now: datetime) -> datetime:
    if text is None:
        return datetime(2000, 1, 1, tzinfo=UTC)
    m = _AGO.match(text.strip())
    if m is not None:
        amount, unit = float(m.group(1)), m.group(2)
        return now - timedelta(**{{"min": "minutes", "h": "hours", "d": "days"}[unit]: amount})
    return parse_time(text)


def parse_time(text: str) -> datetime:
    try:
        ts = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"{text!r}: expected an RFC 3339 time or a duration like 6h, 2d") \
            from None
    if ts.tzinfo is None:
        raise ConfigError(f"{text!r}: expected a time zone (Z or +08:00)")
    return ts


def read_events(conn: psycopg.Connection[Any], since: datetime,
                until: datetime | None) -> list[Event]:
    """Stored events measured in [since, until], oldest first (sensing.store has no reader
    for events yet)."""
    def row(device_id: str, kind: str, ts: datetime, seq: int | None, event_id: str,
            type: str, confidence: float | None, lon: float | None, lat: float | None,
            body: dict[str, Any]) -> Event:
        loc = None if lon is None or lat is None else (lon, lat)
        return Event(device_id, kind, ts, seq, event_id, type, confidence, loc, body)

    with conn.cursor(row_factory=kwargs_row(row)) as cur:
        cur.execute(
            """SELECT device_id, kind, ts, seq, event_id, type, confidence, lon, lat, body
               FROM events WHERE ts >= %s AND (%s::timestamptz IS NULL OR ts <= %s)
               ORDER BY ts, device_id, event_id""",
            (since, until, until))
        return cur.fetchall()


def read_stored(url: str, since: datetime, until: datetime | None
                ) -> list[Telemetry | Event]:
    with psycopg.connect(url) as conn:
        telemetry = [t for t in store.recent_telemetry(conn, None, since)
                     if until is None or t.ts <= until]
        events = read_events(conn, since, until)
    messages: list[Telemetry | Event] = [*telemetry, *events]
    messages.sort(key=lambda m: (m.ts, m.device_id))
    return messages


def run_rules(config: Config, messages: Sequence[Telemetry | Event]
              ) -> tuple[list[AlertChange], Counts]:
    """The stored messages through ``config``'s zones, devices and rules, in event time."""
    zones = load_zones(config.zones_path)
    placement = Placement(ZoneIndex(zones), {d.id: (d.kind, d.position) for d in config.devices})
    engine = Engine(config.rules, {z.id: z for z in zones}, placement.sites())
    known = {d.id for d in config.devices}
    items = placement.place_many([m for m in messages if m.device_id in known])
    state = EngineState()
    changes: list[AlertChange] = []
    for chunk, upto in _chunks(items):
        state, ch = engine.evaluate_many(state, chunk, now=upto)
        changes += ch
    state, ch = engine.flush(state)
    changes += ch
    return changes, state.counts


def _chunks(items: Sequence[Observation | Detection]
            ) -> Iterable[tuple[list[Observation | Detection], datetime]]:
    batch: list[Observation | Detection] = []
    edge: datetime | None = None
    for item in items:
        if edge is not None and item.ts >= edge:
            yield batch, edge
            batch = []
        if edge is None or item.ts >= edge:
            edge = item.ts + CHUNK
        batch.append(item)
    if batch and edge is not None:
        yield batch, batch[-1].ts


def command(config: Config, args: Any) -> int:
    """``citywatch replay --config OTHER.yaml [--against config.yaml] [--since 6h]``."""
    url = config.database.url
    if url == "embedded":
        print("citywatch: replay reads a database: set database.url in the config or "
              "CITYWATCH_DATABASE_URL (e.g. postgresql://user@127.0.0.1/citywatch)")
        return 2
    try:
        baseline_config = load_config(args.against)
        since = parse_since(args.since, datetime.now(UTC))
        until = None if args.until is None else parse_time(args.until)
    except ConfigError as exc:
        print(f"citywatch: {exc}")
        return 2
    try:
        messages = read_stored(url, since, until)
    except psycopg.Error as exc:
        print(f"citywatch: cannot read the database: {str(exc).strip().splitlines()[0]}")
        return 1
    if not messages:
        print(f"no stored telemetry or events since {since.isoformat()}")
        return 0
    end = max(m.ts for m in messages)
    base, _ = run_rules(baseline_config, messages)
    cand, counts = run_rules(config, messages)
    diffs = compare(base, cand, end)
    first = min(m.ts for m in messages)
    print(f"replayed {len(messages)} stored messages from {first:%Y-%m-%d %H:%M:%S} to "
          f"{end:%Y-%m-%d %H:%M:%S} UTC through {args.config} against {args.against}")
    nb, nc = len(episodes(base)), len(episodes(cand))
    print(f"alerts: {nb} with {args.against}, {nc} with {args.config}; readings too late "
          f"{counts.too_late}, duplicates {counts.duplicates}, held back by device health "
          f"{counts.held_back}")
    kinds: dict[str, int] = {}
    for d in diffs:
        kinds[d.kind] = kinds.get(d.kind, 0) + 1
    order = ("added", "removed", "earlier", "later", "higher", "lower")
    print("differences: " + (", ".join(f"{k} {kinds[k]}" for k in order if k in kinds)
                             or "none"))
    for d in diffs:
        print("  " + d.describe())
    if args.alerts:
        print("\n".join(alert_lines(cand)))
    return 0
