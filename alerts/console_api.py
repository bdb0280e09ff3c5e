"""What the operators' console needs beyond CONTRACT section 4 (additive endpoints).

- ``GET /api/zones/{zone_id}/series?hours=6``: the zone's water depth, rain and traffic speed in
  5-minute buckets, with the rule thresholds that apply to the zone, for its charts.
- ``GET /api/funnel?operators=10``: the day's load, from messages down to work orders per operator.
- ``GET /api/hazards``: the hazards the registry knows (built in and plug-ins) and every alert
  name they raise, with their labels in English and Chinese and the reading that shows them, so
  that the console names a plug-in's hazard as it names the built-in ones.

Series come from ``telemetry_5min`` (sensing.store) where it is a TimescaleDB continuous aggregate.
On plain PostgreSQL that name is a view over all of ``telemetry``, whose bucket filter cannot use an
index, so there the same buckets (same origin) are computed from the time-bounded raw rows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated, Any, Final
from zoneinfo import ZoneInfo

import psycopg
from fastapi import APIRouter, HTTPException, Path, Query
from fastapi.exceptions import RequestValidationError
from psycopg_pool import ConnectionPool

from alerts import appeal_store
from alerts.pooled import pooled
from alerts.responses import NOT_FOUND
from geo.zones import Zone
from rules import registry
from rules.hazard import Hazard
from sensing.times import iso_utc

BUCKET: Final = timedelta(minutes=5)
# name -> (unit, waterlogging/traffic rule that gives its thresholds, crossing direction)
METRICS: Final[Mapping[str, tuple[str, str | None, str]]] = {
    "water_depth_cm": ("cm", "waterlogging", "above"),
    "rain_rate_mm_h": ("mm/h", None, "above"),
    "speed_kmh": ("km/h", "traffic", "below"),
}

_WEIGHTED: Final = ", ".join(
    f"sum({m}_avg * samples) / nullif(sum(samples) FILTER (WHERE {m}_avg IS NOT NULL), 0) "
    f"AS {m}_avg, max({m}_max) AS {m}_max, "
    f"coalesce(sum(samples) FILTER (WHERE {m}_avg IS NOT NULL), 0) AS {m}_n"
    for m in METRICS)
# Per device and bucket first (what telemetry_5min holds), then across the zone's devices.
_FROM_AGGREGATE: Final = f"""
    SELECT bucket, {_WEIGHTED} FROM telemetry_5min
     WHERE device_id = ANY(%(devices)s) AND bucket >= %(since)s
     GROUP BY bucket ORDER BY bucket"""
_PER_DEVICE: Final = ", ".join(
    f"avg((\"values\" ->> '{m}')::double precision) AS {m}_avg, "
    f"max((\"values\" ->> '{m}')::double precision) AS {m}_max"
    for m in METRICS)
_FROM_RAW: Final = f"""
    SELECT bucket, {_WEIGHTED} FROM (
        SELECT device_id, date_bin(INTERVAL '5 minutes', ts, TIMESTAMPTZ '2000-01-03 00:00:00+00')
               AS bucket, count(*) AS samples, {_PER_DEVICE}
          FROM telemetry WHERE device_id = ANY(%(devices)s) AND ts >= %(since)s
         GROUP BY 1, 2) AS per_device
     GROUP BY bucket ORDER BY bucket"""
_IS_CAGG: Final = """
    SELECT to_regclass('timescaledb_information.continuous_aggregates') IS NOT NULL"""
_CAGG_NAMED: Final = """
    SELECT 1 FROM timescaledb_information.continuous_aggregates
     WHERE view_schema = current_schema() AND view_name = 'telemetry_5min'"""

_FUNNEL_SQL: Final = """
    SELECT (SELECT count(*) FROM telemetry WHERE ts >= %(start)s AND ts < %(end)s),
           (SELECT count(*) FROM events WHERE ts >= %(start)s AND ts < %(end)s),
           (SELECT count(*) FROM rejections WHERE received >= %(start)s AND received < %(end)s),
           (SELECT count(*) FROM alerts WHERE raised >= %(start)s AND raised < %(end)s),
           (SELECT count(DISTINCT (zone_id, hazard)) FROM alerts
             WHERE raised >= %(start)s AND raised < %(end)s),
           (SELECT count(*) FROM work_orders WHERE created >= %(start)s AND created < %(end)s),
           (SELECT coalesce(sum(duplicates), 0) FROM work_orders
             WHERE created >= %(start)s AND created < %(end)s)"""


def thresholds_for(zone: Zone, rules: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """The levels' thresholds per metric that the rules apply in ``zone``, by level colour.

    ``rules`` is the ``rules:`` section of the configuration as plain data
    (``RulesParams.model_dump()``); a rule or zone type it does not cover gives no thresholds.
    """
    out: dict[str, dict[str, float]] = {}
    for h in registry.hazards():
        m = h.metric
        if h.name in zone.hazards and m is not None and m.thresholds is not None:
            lines = m.thresholds(rules, zone.type)
            if lines:
                out[m.key] = lines
    return out


def hazards_document() -> dict[str, Any]:
    """``GET /api/hazards``: every alert name with its labels, CAP event, Open311 service and
    the reading that shows it."""
    out: list[dict[str, Any]] = []
    for name, kind in registry.alert_kinds().items():
        h = kind if isinstance(kind, Hazard) else None
        m = h.metric if h is not None else None
        out.append({
            "name": name, "label": {"en": kind.label.en, "zh": kind.label.zh},
            "hazard": (registry.owner(name) or kind).name,
            "zone_types": list(kind.zone_types), "cap_event": kind.cap_event,
            "service_code": name if h is not None and h.report_category else None,
            "sensor_backed": bool(h is not None and h.sensor_backed),
            "metric": None if m is None else {"key": m.key, "unit": m.unit.en,
                                              "crossing": m.crossing},
        })
    return {"hazards": out}


def _iso(ts: datetime) -> str:
    return iso_utc(ts, "seconds")


def console_router(pool: ConnectionPool[psycopg.Connection[Any]], zones: Sequence[Zone],
                   thresholds: Mapping[str, Any], *, clock: Callable[[], datetime] | None = None,
                   day_tz: str = "Asia/Shanghai", operators: int = 10,
                   pool_wait_s: float = 5.0) -> APIRouter:
    """The console's extra endpoints. ``thresholds`` is the rules configuration as plain data
    (see ``thresholds_for``); ``day_tz`` says where "today" starts for the funnel."""
    router = APIRouter()
    by_id = {z.id: z for z in zones}
    tz = ZoneInfo(day_tz)
    now = clock or (lambda: datetime.now(UTC))
    aggregate: list[bool] = []  # decided on first use: the storage layout does not change

    @contextmanager
    def conn() -> Iterator[psycopg.Connection[Any]]:
        with pooled(pool, pool_wait_s) as c:
            yield c

    def use_aggregate(c: psycopg.Connection[Any]) -> bool:
        if not aggregate:
            row = c.execute(_IS_CAGG).fetchone()
            has = bool(row and row[0]) and c.execute(_CAGG_NAMED).fetchone() is not None
            aggregate.append(has)
        return aggregate[0]

    @router.get("/api/zones/{zone_id}/series", responses=NOT_FOUND)
    def series(zone_id: Annotated[str, Path(max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")],
               hours: Annotated[float, Query(gt=0, le=48)] = 6) -> dict[str, Any]:
        """The zone's readings over the last ``hours`` in 5-minute buckets, with thresholds."""
        zone = by_id.get(zone_id)
        if zone is None:
            raise HTTPException(404, f"no zone {zone_id!r}")
        end = now()
        since = end - timedelta(hours=hours)
        with conn() as c:
            devices = [r[0] for r in c.execute(
                "SELECT id FROM devices WHERE %s = ANY(zone_ids) ORDER BY id", (zone_id,))]
            rows = c.execute(_FROM_AGGREGATE if use_aggregate(c) else _FROM_RAW,
                             {"devices": devices, "since": since - BUCKET}).fetchall() \
                if devices else []
        limits = thresholds_for(zone, thresholds)
        metrics: dict[str, Any] = {}
        for i, (name, (unit, _rule, direction)) in enumerate(METRICS.items()):
            buckets = [{"t": _iso(r[0]), "avg": _round(r[1 + 3 * i]), "max": _round(r[2 + 3 * i]),
                        "n": int(r[3 + 3 * i])}
                       for r in rows if r[3 + 3 * i] and r[0] + BUCKET > since]
            metrics[name] = {"unit": unit, "direction": direction, "buckets": buckets,
                             "thresholds": limits.get(name, {})}
        return {"zone_id": zone.id, "zone_type": zone.type, "hours": hours,
                "bucket_s": int(BUCKET.total_seconds()), "from": _iso(since), "to": _iso(end),
                "devices": devices, "metrics": metrics}

    @router.get("/api/hazards")
    def hazards() -> dict[str, Any]:
        """The hazards and alert names, labelled (the registry: built in and plug-ins)."""
        return hazards_document()

    @router.get("/api/funnel")
    def funnel(day: Annotated[str | None, Query(
                   pattern=DAY_PATTERN, json_schema_extra={"format": "date"},
                   description="the local day, YYYY-MM-DD, 1970 to 2999; default today")] = None,
               operators_on_shift: Annotated[int, Query(alias="operators", ge=1, le=1000)]
               = operators) -> dict[str, Any]:
        """The day's load (local day in ``day_tz``): messages, alerts, incidents (distinct zone
        and hazard), work orders, and work orders per operator on shift; residents' appeals,
        their distinct callers, the problems they were about (incidents joined or opened, and
        cases of appeals no incident took) and the work orders among them."""
        d = now().astimezone(tz).date() if day is None else _day(day)
        start = datetime.combine(d, time(0), tzinfo=tz)
        end = datetime.combine(d + timedelta(days=1), time(0), tzinfo=tz)
        with conn() as c:
            row = c.execute(_FUNNEL_SQL, {"start": start, "end": end}).fetchone()
            appeals = appeal_store.funnel(c, start, end)
        assert row is not None
        telemetry, events, rejected, alerts, incidents, orders, merged = (int(v) for v in row)
        return {
            "day": d.isoformat(), "tz": day_tz, "from": _iso(start), "to": _iso(end),
            "messages": telemetry + events + rejected, "telemetry": telemetry, "events": events,
            "rejected": rejected, "alerts": alerts, "incidents": incidents,
            "work_orders": orders, "duplicates_merged": merged, "operators": operators_on_shift,
            "orders_per_operator": round(orders / operators_on_shift, 2),
            # residents' appeals: appeals -> problems (incidents and cases) -> work orders
            **appeals,
        }

    return router


# Years the service can have data for: the schema says so, so that no day outside them (year 1,
# whose midnight in Shanghai is before the first UTC instant Python knows) is a valid request.
DAY_PATTERN: Final = r"^(19[7-9][0-9]|2[0-9]{3})-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])$"


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise RequestValidationError([{
            "type": "date_from_datetime_parsing", "loc": ("query", "day"),
            "msg": f"{text!r} is not a day of the calendar", "input": text}]) from None


def _round(v: float | None) -> float | None:
    return None if v is None else round(float(v), 2)
