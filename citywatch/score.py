"""``citywatch score SCENARIO``: run a scenario offline through the rules and score the alerts
against the scenario's ground truth.

The run is the live path without a broker or database: ``Simulation.messages_until`` generates
the fleet's messages with simulated timestamps, ``sensing.decode.Decoder`` validates them (with
``now`` = the simulated time), ``citywatch.placement`` puts them in their zones and the rule
``Engine`` turns them into alert changes. Optionally the messages are delivered late and out of
order (``shuffle_s``) and twice (``twice``), as a reconnecting fleet would.

Scoring, per hazard. An alert *episode* is one alert from its raise to its clearing in a zone that
carries the hazard. It matches a ground-truth hazard of the same zone when it overlaps the truth's
time span widened by ``LEAD`` before (a forecast or a rain signal may rightly come first) and
``LAG`` after (hysteresis and quiet periods hold an alert after the cause is gone).
The ground truth judges waterlogging and traffic from their yellow thresholds, so precision is
over the episodes that reached yellow or worse (warnings); episodes that stayed blue are watches
("a threshold is near or forecast to be crossed"), counted on their own with how many came
before a real hazard.
- precision: matched warnings / warnings;   recall: truths matched by any episode / truths;
- detection delay: first matching raise - truth start (negative: warned before it happened);
- false alarms per day: unmatched episodes per simulated day.
Alerts outside the scored zones (grid workers' reports in grid cells, falling-object patterns,
maintenance) are listed on their own lines: the ground truth does not cover them.
"""

from __future__ import annotations

import heapq
import json
import random
import statistics
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from citywatch.config import Config
from citywatch.placement import Placement
from geo.index import ZoneIndex
from geo.load import load_zones
from geo.zones import Zone
from rules.base import DEVICE_FAULT, AlertChange
from rules.engine import Counts, Engine, EngineState
from rules.levels import Level
from rules.registry import names as hazard_names
from sensing.decode import Decoder
from sensing.models import Event, Rejection, Telemetry
from simulators.truth import FaultTruth, GroundTruth, HazardTruth

LEAD = timedelta(minutes=60)
LAG = timedelta(minutes=30)
START = datetime(2026, 7, 15, 0, 0, tzinfo=UTC)  # a summer day: the storm season
STEP = timedelta(seconds=60)


@dataclass(frozen=True, slots=True)
class Episode:
    zone_id: str
    hazard: str
    raised: datetime
    cleared: datetime | None
    peak: Level
    first_blue: datetime | None
    first_yellow: datetime | None  # yellow or worse
    devices: frozenset[str]  # devices named in the evidence while it was raised


@dataclass(frozen=True, slots=True)
class HazardScore:
    hazard: str
    truths: int
    episodes: int  # warnings: episodes that reached yellow or worse
    matched_truths: int
    matched_episodes: int
    delays_s: tuple[float, ...]
    false_alarms: int
    days: float
    watches: int = 0  # episodes that stayed blue
    watches_matched: int = 0

    @property
    def precision(self) -> float | None:
        return self.matched_episodes / self.episodes if self.episodes else None

    @property
    def recall(self) -> float | None:
        return self.matched_truths / self.truths if self.truths else None

    @property
    def false_per_day(self) -> float:
        return self.false_alarms / self.days if self.days > 0 else 0.0


@dataclass
class RunResult:
    scenario: str
    seed: int
    start: datetime
    end: datetime
    changes: list[AlertChange]
    counts: Counts
    messages: int
    rejected: int
    truth: GroundTruth | None
    truth_source: str
    zones: dict[str, Zone] = field(default_factory=dict)

    def alert_log(self) -> list[tuple[str, str, int | None, str]]:
        """The changes as comparable rows: (zone, hazard, level, ts)."""
        return [(c.zone_id, c.hazard, None if c.level is None else int(c.level),
                 c.ts.isoformat()) for c in self.changes]


def episodes(changes: Sequence[AlertChange]) -> list[Episode]:
    """Alert changes folded into episodes (raise .. clear), per (zone, hazard)."""
    open_: dict[tuple[str, str], dict[str, Any]] = {}
    out: list[Episode] = []

    def close(key: tuple[str, str], at: datetime | None) -> None:
        e = open_.pop(key)
        out.append(Episode(key[0], key[1], e["raised"], at, e["peak"], e["blue"], e["yellow"],
                           frozenset(e["devices"])))

    for ch in changes:
        key = (ch.zone_id, ch.hazard)
        devices = {str(ev["device_id"]) for ev in ch.evidence if "device_id" in ev}
        if ch.level is None:
            if key in open_:
                close(key, ch.ts)
            continue
        e = open_.get(key)
        if e is None:
            e = open_[key] = {"raised": ch.ts, "peak": ch.level, "blue": None, "yellow": None,
                              "devices": set()}
        e["peak"] = min(e["peak"], ch.level)
        e["devices"] |= devices
        if ch.level == Level.BLUE and e["blue"] is None:
            e["blue"] = ch.ts
        if ch.level <= Level.YELLOW and e["yellow"] is None:
            e["yellow"] = ch.ts
    for key in sorted(open_):
        close(key, None)
    return sorted(out, key=lambda e: (e.raised, e.zone_id, e.hazard))


def _overlaps(e: Episode, t: HazardTruth, end: datetime) -> bool:
    cleared = e.cleared or end
    return e.raised <= t.end + LAG and cleared >= t.start - LEAD


def score(result: RunResult) -> list[HazardScore]:
    truth = result.truth
    eps = episodes(result.changes)
    days = (result.end - result.start).total_seconds() / 86400
    out = []
    for hazard in hazard_names():
        carriers = {z.id for z in result.zones.values() if hazard in z.hazards}
        every = [e for e in eps if e.hazard == hazard and e.zone_id in carriers]
        truths = [t for t in (truth.hazards if truth else ()) if t.hazard == hazard]

        def matched(e: Episode, truths: list[HazardTruth] = truths) -> bool:
            return any(e.zone_id == t.zone_id and _overlaps(e, t, result.end) for t in truths)

        warnings = [e for e in every if e.peak <= Level.YELLOW]
        watches = [e for e in every if e.peak > Level.YELLOW]
        hit = sum(1 for e in warnings if matched(e))
        delays: list[float] = []
        matched_truths = 0
        for t in truths:
            hits = [e for e in every if e.zone_id == t.zone_id and _overlaps(e, t, result.end)]
            if hits:
                matched_truths += 1
                delays.append((min(e.raised for e in hits) - t.start).total_seconds())
        out.append(HazardScore(hazard, len(truths), len(warnings), matched_truths, hit,
                               tuple(delays), len(warnings) - hit, days, len(watches),
                               sum(1 for e in watches if matched(e))))
    return out


def blue_leads(result: RunResult) -> list[tuple[str, float]]:
    """Per waterlogging episode that reached yellow: minutes from its first blue to yellow."""
    out = []
    for e in episodes(result.changes):
        if e.hazard == "waterlogging" and e.first_yellow is not None:
            lead = 0.0 if e.first_blue is None else \
                (e.first_yellow - e.first_blue).total_seconds() / 60
            out.append((e.zone_id, lead))
    return out


def faulty_hazard_alerts(result: RunResult) -> list[AlertChange]:
    """Hazard raises resting on a device while the ground truth has it faulty: the gauge that
    set the zone depth (evidence ``role: deepest``), the rain gauges of a rain signal, else
    every device the evidence names."""
    if result.truth is None:
        return []
    faults = result.truth.faults
    out = []
    for ch in result.changes:
        if ch.level is None or ch.hazard not in hazard_names():
            continue
        named = [ev for ev in ch.evidence if "device_id" in ev]
        resting = {str(ev["device_id"]) for ev in named if ev.get("role") == "deepest"}
        rain = [ev for ev in ch.evidence if "rain_signal" in ev]
        if not resting and rain:  # raised by the rain signal: it rests on the rain gauges
            resting = {str(g) for ev in rain for g in ev.get("rain_gauges", ())}
        cited = resting or {str(ev["device_id"]) for ev in named}
        if any(f.device_id in cited and f.start <= ch.ts <= f.end for f in faults):
            out.append(ch)
    return out


def fault_detection(result: RunResult) -> tuple[int, int, int]:
    """(faults in the truth, of them detected by a maintenance alert, maintenance episodes)."""
    eps = [e for e in episodes(result.changes) if e.hazard == DEVICE_FAULT]
    faults: tuple[FaultTruth, ...] = result.truth.faults if result.truth else ()
    found = 0
    for f in faults:
        if any(f.device_id in e.devices and e.raised <= f.end + LAG
               and (e.cleared or result.end) >= f.start for e in eps):
            found += 1
    return len(faults), found, len(eps)


# --- running a scenario -------------------------------------------------------------------


def _scenario_end(sim: Any) -> datetime:
    sc = sim.scenario
    start: datetime = sim.start
    duration = getattr(sc, "duration", None) or getattr(sc, "duration_s", None)
    if isinstance(duration, int | float) and duration > 0:
        return start + timedelta(seconds=float(duration))
    ends = [s.window.end_s for s in getattr(sc, "storms", ())]
    ends += [c.window.end_s for c in getattr(sc, "congestions", ())]
    ends += [t.end_s for t in getattr(sc, "throwers", ())]
    # Two quiet hours after the last event: the water drains and the alerts clear.
    return start + timedelta(seconds=max(ends, default=0.0) + 7200)


def _sim_truth(sim: Any) -> GroundTruth | None:
    """The simulation's ground truth up to the time it reached (recorded as it steps)."""
    got = getattr(sim, "ground_truth", None)
    truth = got() if callable(got) else None
    return truth if isinstance(truth, GroundTruth) else None


def _messages(sim: Any, end: datetime) -> Iterator[tuple[datetime, str, bytes]]:
    """The run's messages in simulated time order, with the time they were generated up to."""
    t = sim.start
    while t < end:
        t = min(t + STEP, end)
        for topic, payload in sim.messages_until(t):
            yield t, topic, payload


def _sent_at(made: datetime, payload: bytes) -> datetime:
    """When the device sent it: its ``ts`` (status messages without one: when it was made)."""
    try:
        ts = json.loads(payload).get("ts")
        return datetime.fromisoformat(ts.replace("Z", "+00:00")) if isinstance(ts, str) else made
    except (ValueError, AttributeError):
        return made


def _deliveries(messages: Iterator[tuple[datetime, str, bytes]], shuffle_s: float,
                twice: bool, seed: int) -> Iterator[tuple[datetime, str, bytes]]:
    """Messages as a late, disordered network delivers them: each between 0 and ``shuffle_s``
    after its ``ts``, and each ``twice`` when asked. Yields (delivery time, topic, payload) in
    delivery order; a message is yielded once nothing generated later can arrive before it."""
    rng = random.Random(f"{seed}:delivery")  # noqa: S311 - simulation, not security
    heap: list[tuple[datetime, int, str, bytes]] = []
    n = 0
    for made, topic, payload in messages:
        sent = _sent_at(made, payload)
        for _ in range(2 if twice else 1):
            n += 1
            delay = timedelta(seconds=rng.uniform(0, shuffle_s)) if shuffle_s else timedelta(0)
            heapq.heappush(heap, (sent + delay, n, topic, payload))
        while heap and heap[0][0] <= made:
            at, _, tp, pl = heapq.heappop(heap)
            yield at, tp, pl
    while heap:
        at, _, tp, pl = heapq.heappop(heap)
        yield at, tp, pl


def run(config: Config, scenario: str, seed: int | None = None, *, start: datetime = START,
        shuffle_s: float = 0.0, twice: bool = False, reorder_window_s: float | None = None,
        hours: float | None = None) -> RunResult:
    """Run ``scenario`` offline through decode, placement and the engine."""
    from simulators.runner import Simulation

    zones = load_zones(config.zones_path)
    index = ZoneIndex(zones)
    zone_map = {z.id: z for z in zones}
    params = config.rules
    if reorder_window_s is not None:
        params = params.model_copy(update={"event_time": params.event_time.model_copy(
            update={"reorder_window_s": reorder_window_s})})
    placement = Placement(index, {d.id: (d.kind, d.position) for d in config.devices})
    engine = Engine(params, zone_map, placement.sites())
    sim = Simulation(config, scenario, seed=seed, speed=None, start=start, zones=zones)
    end = sim.start + timedelta(hours=hours) if hours is not None else _scenario_end(sim)
    seed = sim.seed
    decoder = Decoder({d.id: d.kind for d in config.devices})

    state = EngineState()
    changes: list[AlertChange] = []
    batch: list[Telemetry | Event] = []
    bucket: datetime | None = None  # batches hold ten seconds of deliveries, as the pipeline's
    last_at = sim.start
    messages = rejected = 0

    def flush_batch(now: datetime) -> None:
        nonlocal state
        items = placement.place_many(batch)
        items.sort(key=lambda i: i.ts)  # as the pipeline does with a batch
        # Every message delivered by ``now`` is in: timeouts may run up to it.
        state, ch = engine.evaluate_many(state, items, now=now)
        changes.extend(ch)
        batch.clear()

    source = _messages(sim, end)
    for at, topic, payload in _deliveries(source, shuffle_s, twice, seed):
        if bucket is not None and at > bucket:
            flush_batch(last_at)
        if bucket is None or at > bucket:
            bucket = at + timedelta(seconds=10)
        last_at = at
        messages += 1
        decoded = decoder.decode(topic, payload, at + timedelta(seconds=1))
        if isinstance(decoded, Telemetry | Event):
            batch.append(decoded)
        elif isinstance(decoded, Rejection):
            rejected += 1  # status messages are presence: the pipeline's, not the rules'
    flush_batch(last_at)
    state, ch = engine.flush(state)
    changes.extend(ch)
    state, ch = engine.tick(state, end + timedelta(seconds=params.event_time.reorder_window_s))
    changes.extend(ch)

    truth = _sim_truth(sim)
    return RunResult(scenario, seed, sim.start, end, changes, state.counts, messages, rejected,
                     truth, "simulator" if truth is not None else "none", zone_map)


# --- the table ------------------------------------------------------------------------------


def _pct(x: float | None) -> str:
    return "  n/a" if x is None else f"{x:5.2f}"


def report(result: RunResult) -> str:
    lines = []
    hours = (result.end - result.start).total_seconds() / 3600
    lines.append(f"scenario {result.scenario}, seed {result.seed}: {hours:g} simulated hours, "
                 f"{result.messages} messages ({result.rejected} rejected); ground truth: "
                 f"{result.truth_source}")
    lines.append(f"{'hazard':<16}{'truth':>6}{'alerts':>7}{'found':>6}{'precision':>10}"
                 f"{'recall':>8}{'delay med/max min':>19}{'false/day':>10}{'watches':>9}")
    for s in score(result):
        d = sorted(s.delays_s)
        delay = f"{statistics.median(d) / 60:6.1f} /{max(d) / 60:6.1f}" if d else "     -"
        lines.append(f"{s.hazard:<16}{s.truths:>6}{s.episodes:>7}{s.matched_truths:>6}"
                     f"{_pct(s.precision):>10}{_pct(s.recall):>8}{delay:>19}"
                     f"{s.false_per_day:>10.1f}{f'{s.watches_matched}/{s.watches}':>9}")
    leads = blue_leads(result)
    if leads:
        lo = min(m for _, m in leads)
        lines.append(f"waterlogging: blue before yellow by {lo:.1f} min at least "
                     f"(median {statistics.median(m for _, m in leads):.1f}) over {len(leads)} "
                     "zones that reached yellow")
    eps = episodes(result.changes)
    scored = {(z.id, h) for z in result.zones.values() for h in z.hazards}
    other = [e for e in eps if (e.zone_id, e.hazard) not in scored and e.hazard != DEVICE_FAULT]
    if other:
        kinds: dict[str, int] = {}
        for e in other:
            kinds[e.hazard] = kinds.get(e.hazard, 0) + 1
        shown = ", ".join(f"{k} {v}" for k, v in sorted(kinds.items()))
        lines.append(f"not scored (no ground truth for them): grid-report and pattern alerts: "
                     f"{shown}")
    total, found, maint = fault_detection(result)
    bad = faulty_hazard_alerts(result)
    lines.append(f"device faults: {total} in the truth, {found} found; {maint} maintenance "
                 f"alerts; hazard alerts citing a faulty device: {len(bad)}")
    c = result.counts
    lines.append(f"event time: evaluated {c.evaluated}, late {c.late}, too late {c.too_late}, "
                 f"duplicates {c.duplicates}; held back by device health {c.held_back}")
    return "\n".join(lines)


def same_alerts(a: RunResult, b: RunResult) -> tuple[bool, str]:
    la, lb = a.alert_log(), b.alert_log()
    if la == lb:
        return True, f"identical: {len(la)} alert changes"
    for i, (x, y) in enumerate(zip(la, lb, strict=False)):
        if x != y:
            return False, f"first difference at change {i}: {x} vs {y}"
    return False, f"{len(la)} vs {len(lb)} changes"


def with_truth(result: RunResult, truth: GroundTruth) -> RunResult:
    return replace(result, truth=truth, truth_source="file")


def alert_lines(changes: Sequence[AlertChange]) -> list[str]:
    out = []
    for c in changes:
        level = "clear" if c.level is None else c.level.colour
        out.append(f"{c.ts:%H:%M:%S} {c.zone_id:<8} {c.hazard:<22} {level:<6} {c.title}")
    return out


def command(config: Config, args: Any) -> int:
    """``citywatch score``: print the table (and, with --compare, the event-time check)."""
    from simulators.errors import SimulatorError

    window = args.reorder_window
    if window is None and args.shuffle > config.rules.event_time.reorder_window_s:
        window = args.shuffle  # disorder beyond the window would be judged "too late"
    try:
        result = run(config, args.scenario, args.seed, shuffle_s=args.shuffle, twice=args.twice,
                     reorder_window_s=window, hours=args.hours)
    except SimulatorError as exc:
        print(f"citywatch: {exc}")
        return 2
    if window is not None:
        print(f"(rules.event_time.reorder_window_s = {window:g} s for this run)")
    if args.shuffle or args.twice:
        print(f"(messages delivered up to {args.shuffle:g} s late, out of order"
              f"{', and twice' if args.twice else ''})")
    print(report(result))
    if args.alerts:
        print("\n".join(alert_lines(result.changes)))
    if args.compare:
        reference = run(config, args.scenario, args.seed, reorder_window_s=window,
                        hours=args.hours)
        same, why = same_alerts(reference, result)
        print(f"same alerts as in order and once: {'yes' if same else 'NO'} ({why})")
        return 0 if same else 1
    return 0


