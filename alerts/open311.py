"""Work orders as Open311 GeoReport v2 service requests (pure mapping, no I/O).

So that civic tools that speak GeoReport can read what the command centre is doing. Read only:
citywatch opens its orders from sensors, so there is no ``POST requests``.

Status: GeoReport has two, ``open`` ("it has been reported") and ``closed`` ("it has been
resolved"), and clients take ``closed`` as final. A citywatch order is final only when it is
``closed``: a ``resolved`` order still waits for verification (it cannot close while its sensors
are wet, and it reopens if the hazard returns), so it is ``open`` here.

These routes are public: a request shows what a resident may see and nothing more. Its
``status_notes`` say where the order stands in plain words (``PUBLIC_NOTES``), never the reason
of the latest change, which may name a team, a grid worker, where a worker stands or an
operator's note; no team, worker or device id appears anywhere in it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from alerts.lifecycle import AlertsError
from alerts.policy import INSTRUCTIONS
from geo.zones import Zone
from rules import registry
from sensing.times import iso_utc

# GeoReport v2: "Default query limit is a span of 90 days or first 1000 requests returned,
# whichever is smallest", and a start_date..end_date range may not span more than 90 days.
MAX_SPAN = timedelta(days=90)
MAX_REQUESTS = 1000
STATUSES = ("open", "closed")

_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@dataclass(frozen=True, slots=True)
class Service:
    code: str
    name: str
    description: str
    keywords: tuple[str, ...]
    group: str


# One service per hazard, its code the hazard's name (``rules.hazard.Hazard.service``).
SERVICES: Mapping[str, Service] = registry.hazard_view(
    lambda h: Service(h.name, h.service.name, h.service.description, h.service.keywords,
                      h.service.group) if h.report_category else None)


class Open311Error(AlertsError):
    """A request GeoReport answers with ``[{"code": ..., "description": ...}]``."""

    def __init__(self, code: int, description: str) -> None:
        super().__init__(description)
        self.code = code
        self.description = description

    def body(self) -> list[dict[str, Any]]:
        return [{"code": self.code, "description": self.description}]


def services() -> list[dict[str, Any]]:
    """``GET services``: one service per hazard."""
    return [{"service_code": s.code, "service_name": s.name, "description": s.description,
             "metadata": False, "type": "realtime", "keywords": ",".join(s.keywords),
             "group": s.group} for s in SERVICES.values()]


# What a resident is told for each work-order state.
PUBLIC_NOTES: Mapping[str, str] = {
    "open": "reported; a team is being sent",
    "assigned": "a team has been sent",
    "accepted": "a team is working on it",
    "resolved": "fixed; waiting for the sensors or an inspector to confirm",
    "closed": "closed",
}


def status(state: str) -> str:
    return "closed" if state == "closed" else "open"


def states_for(statuses: Sequence[str]) -> tuple[str, ...] | None:
    """Work-order states matching GeoReport statuses; None means every state."""
    if set(statuses) >= set(STATUSES) or not statuses:
        return None
    if "closed" in statuses:
        return ("closed",)
    return ("open", "assigned", "accepted", "resolved")


@dataclass(frozen=True, slots=True)
class RequestQuery:
    """``GET requests`` filters. ``ids`` set means the others are ignored, as the spec says."""

    ids: tuple[str, ...] = ()
    service_codes: tuple[str, ...] = ()
    statuses: tuple[str, ...] = ()
    start: datetime | None = None
    end: datetime | None = None
    limit: int = MAX_REQUESTS


def _list(params: Mapping[str, str], key: str) -> tuple[str, ...]:
    raw = params.get(key)
    if raw is None:
        return ()
    items = tuple(v.strip() for v in raw.split(","))
    if not all(items):
        raise Open311Error(400, f"{key}: expected a comma-separated list without empty items, "
                                f"got {raw!r}")
    return items


def _date(params: Mapping[str, str], key: str) -> datetime | None:
    raw = params.get(key)
    if raw is None:
        return None
    try:
        ts = datetime.fromisoformat(raw.strip())
    except ValueError:
        raise Open311Error(400, f"{key}: {raw!r} is not a w3c datetime such as "
                                "2026-11-23T08:15:00Z") from None
    if ts.tzinfo is None:
        raise Open311Error(400, f"{key}: {raw!r} has no timezone; add Z or an offset such as "
                                "+08:00")
    return ts.astimezone(UTC)


def parse_query(params: Mapping[str, str], now: datetime) -> RequestQuery:
    """Validate ``GET requests`` parameters; unknown ones (``jurisdiction_id``...) are ignored."""
    ids = _list(params, "service_request_id")
    for i in ids:
        if not _ID.match(i):
            raise Open311Error(400, f"service_request_id: {i!r} is not a service request id")
    if len(ids) > MAX_REQUESTS:
        raise Open311Error(400, f"service_request_id: at most {MAX_REQUESTS} ids at once")
    codes = _list(params, "service_code")
    for c in codes:
        if c not in SERVICES:
            raise Open311Error(400, f"service_code: unknown {c!r}; expected one of "
                                    f"{', '.join(SERVICES)}")
    statuses = _list(params, "status")
    for s in statuses:
        if s not in STATUSES:
            raise Open311Error(400, f"status: unknown {s!r}; expected open or closed")
    start, end = _date(params, "start_date"), _date(params, "end_date")
    if start is not None and end is not None:
        if end < start:
            raise Open311Error(400, "end_date is before start_date")
        if end - start > MAX_SPAN:
            raise Open311Error(400, "start_date to end_date spans more than 90 days")
    elif start is not None:
        end = start + MAX_SPAN
    elif end is not None:
        start = end - MAX_SPAN
    else:
        start = now - MAX_SPAN  # the spec's default window: the last 90 days
    return RequestQuery(ids, codes, statuses, start, end)


def _time(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value))


def w3c(value: Any) -> str | None:
    ts = _time(value)
    if ts is None:
        return None
    return iso_utc(ts, "seconds")


def to_request(order: Mapping[str, Any], zone: Zone | None,
               departments: Mapping[str, str]) -> dict[str, Any]:
    """One service request from a work order.

    ``order`` has the work order's columns, plus ``last_change`` (the newest history entry's
    time) when known. Nothing internal is copied: not the team, not the history's reasons.
    """
    hazard = str(order["hazard"])
    service = SERVICES.get(hazard)
    state = str(order["state"])
    lat = lon = None
    if zone is not None and not zone.geometry.is_empty:
        p = zone.geometry.representative_point()
        lat, lon = round(float(p.y), 6), round(float(p.x), 6)
    department = str(order["department"])
    return {
        "service_request_id": str(order["id"]),
        "status": status(state),
        "status_notes": PUBLIC_NOTES.get(state, state),
        "service_name": service.name if service else hazard,
        "service_code": hazard,
        "description": order.get("title"),
        "agency_responsible": departments.get(department, department),
        "service_notice": INSTRUCTIONS.get(hazard),
        "requested_datetime": w3c(order["created"]),
        "updated_datetime": w3c(order.get("last_change") or order["created"]),
        "expected_datetime": w3c(order.get("resolve_by")),
        "address": zone.name if zone is not None else None,
        "address_id": str(order["zone_id"]),
        "zipcode": None,
        "lat": lat,
        "long": lon,
        "media_url": None,
    }
