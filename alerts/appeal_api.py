"""Routes for residents' appeals (additive to CONTRACT section 4).

Public (no login, rate-limited, nothing a resident may not see):
- ``POST /open311/v2/requests.json``: GeoReport v2 service request (form fields). 201 with
  ``[{"service_request_id", "service_notice", "account_id"}]``; 200 with the earlier id for the
  same submission sent again; 400 (GeoReport error list) for a bad field or a place outside the
  district or not known; 429 with ``Retry-After`` beyond the per-address or overall rate.
- ``GET /open311/v2/requests/{AP-...}.json``: the appeal's status, built from live facts
  (``alerts.appeal_reply``); served by ``alerts.standards_api`` through ``public_request``.

Logged in (``/api``):
- ``POST /api/appeals``: the hotline operator's form (operators and admins), recorded under the
  operator's name;
- ``GET /api/appeals?alert_id=&case_id=``: appeals with their counts (contact details for
  operators and admins only);
- ``GET /api/appeals/{id}``, ``GET /api/appeals/{id}/reply?lang=``: one appeal and the reply the
  hotline reads out or sends;
- ``GET /api/appeals/by-incident?alert_ids=``: appeals and callers per incident, for the console;
- ``GET /api/geocode?q=``: where an address in words is, or why it cannot be told.

No ``from __future__ import annotations``: FastAPI reads the annotations at run time.
"""

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

import psycopg
from fastapi import APIRouter, Body, Depends, Form, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse
from psycopg_pool import ConnectionPool, PoolTimeout
from pydantic import BaseModel, ConfigDict, Field, create_model

from alerts import appeal_reply, appeal_store, open311
from alerts.appeal_desk import RESIDENT, AppealDesk, Filed
from alerts.appeal_intake import (
    EMAIL_PATTERN,
    ID_PATTERN,
    MAX_ADDRESS,
    MAX_TEXT,
    NAME_PATTERN,
    PHONE_PATTERN,
    URL_PATTERN,
    IntakeError,
    PlaceError,
    categories,
    from_georeport,
)
from alerts.appeal_intake import from_hotline as hotline_intake
from alerts.identity import Identity
from alerts.lifecycle import NotFound
from alerts.pooled import UNAVAILABLE, pooled
from alerts.ratelimit import RateLimit
from alerts.responses import ACT, GEOREPORT, NOT_FOUND, READ, GeoReportError
from sensing.times import iso_utc

log = logging.getLogger(__name__)

APPEAL_ID = r"^AP-[0-9]{1,18}$"
NO_NUL = r"^[^\x00]*$"
DECIMAL = r"^(|-?[0-9]{1,3}(\.[0-9]{1,15})?)$"
def _or_empty(pattern: str) -> str:
    return rf"^(|{pattern[1:-1]})$"


_make: Any = Enum
ServiceCode = _make("ServiceCode", {c: c for c in categories()}, type=str)


@dataclass(frozen=True)
class IntakeLimits:
    per_address_per_min: int = 10
    overall_per_min: int = 600
    per_operator_per_min: int = 120
    max_body_bytes: int = 16384


class GeoReportForm(BaseModel):
    """GeoReport v2 ``POST requests`` fields (form-encoded). ``attribute[...]`` is ignored."""

    model_config = ConfigDict(extra="ignore")
    # Optional fields are "" when absent, never null: a form has no null.
    service_code: ServiceCode = Field(description="one of GET services.json, or other")  # type: ignore[valid-type]
    lat: str = Field(default="", max_length=24, pattern=DECIMAL)
    long: str = Field(default="", max_length=24, pattern=DECIMAL)
    address_string: str = Field(default="", max_length=MAX_ADDRESS, pattern=NO_NUL)
    address_id: str = Field(default="", max_length=64, pattern=NO_NUL)
    description: str = Field(default="", max_length=MAX_TEXT, pattern=NO_NUL)
    media_url: str = Field(default="", max_length=2000, pattern=_or_empty(URL_PATTERN))
    email: str = Field(default="", max_length=254, pattern=_or_empty(EMAIL_PATTERN))
    phone: str = Field(default="", max_length=60, pattern=_or_empty(PHONE_PATTERN))
    first_name: str = Field(default="", max_length=100, pattern=_or_empty(NAME_PATTERN))
    last_name: str = Field(default="", max_length=100, pattern=_or_empty(NAME_PATTERN))
    device_id: str = Field(default="", max_length=100, pattern=_or_empty(ID_PATTERN))
    account_id: str = Field(default="", max_length=100, pattern=_or_empty(ID_PATTERN))
    api_key: str = Field(default="", max_length=200, description="ignored")
    jurisdiction_id: str = Field(default="", max_length=200, description="ignored")


class PostedRequest(BaseModel):
    service_request_id: str
    service_notice: str | None = None
    account_id: str | None = None


def _hotline_body() -> type[BaseModel]:
    made: Any = Enum
    category = made("AppealCategory", {c: c for c in ("auto", *categories())}, type=str)
    model: type[BaseModel] = create_model(
        "HotlineAppeal", __config__=ConfigDict(extra="forbid"),
        text=(str, Field(min_length=1, max_length=MAX_TEXT, pattern=NO_NUL,
                         description="what the caller says")),
        category=(category, Field(default=category["auto"], description="auto: from the words")),
        lat=(float | None, Field(default=None, ge=-90, le=90)),
        long=(float | None, Field(default=None, ge=-180, le=180)),
        address=(str, Field(default="", max_length=MAX_ADDRESS, pattern=NO_NUL,
                            description="typed when no point is picked on the map")),
        phone=(str, Field(default="", max_length=60, pattern=rf"^(|{PHONE_PATTERN[1:-1]})$",
                          description="the caller's number (kept, never shown publicly)")))
    return model


class Throttled(Exception):
    def __init__(self, retry_after: int) -> None:
        super().__init__(f"too many requests; try again in {retry_after} s")
        self.retry_after = retry_after


class Gate:
    """Public intake limits: per client address and overall (429 with Retry-After)."""

    def __init__(self, limits: IntakeLimits, clock: Callable[[], float] = time.monotonic) -> None:
        self._address = RateLimit(limits.per_address_per_min, 60, clock)
        self._overall = RateLimit(limits.overall_per_min, 60, clock)
        self._operator = RateLimit(limits.per_operator_per_min, 60, clock)
        self.refused = 0

    def public(self, address: str) -> None:
        wait = self._address.retry_after(address) or self._overall.retry_after("*")
        if wait is not None:
            self.refused += 1
            raise Throttled(wait)
        self._address.hit(address)
        self._overall.hit("*")

    def operator(self, user: str) -> None:
        wait = self._operator.retry_after(user)
        if wait is not None:
            raise Throttled(wait)
        self._operator.hit(user)


def appeal_json(desk: AppealDesk, conn: psycopg.Connection[Any], row: dict[str, Any],
                now: datetime, tz: ZoneInfo, with_contact: bool) -> dict[str, Any]:
    facts = desk.facts(conn, row, now)
    roads = desk.roads_zh()
    out = {k: row[k] for k in ("id", "source", "category", "address", "place", "description",
                               "media_url", "actor", "alert_id", "work_order_id", "case_id",
                               "how", "resubmitted")}
    out["loc"] = [row["lon"], row["lat"]]
    out["received"] = _iso(row["received"])
    out["score"] = None if row["score"] is None else round(float(row["score"]), 3)
    out["appeals"], out["callers"] = facts.appeals, facts.callers
    out["status"] = appeal_reply.status(facts)
    out["reply"] = {"en": appeal_reply.reply(facts, "en", tz),
                    "zh": appeal_reply.reply(facts, "zh", tz, roads)}
    if with_contact:
        out["contact"] = row["contact"]
    return out


def public_request(desk: AppealDesk, conn: psycopg.Connection[Any], appeal_id: str,
                   now: datetime, tz: ZoneInfo, departments: dict[str, str]) -> dict[str, Any]:
    """An appeal as a GeoReport service request: only what a resident may see. Not the words
    (the resident's own, which may name people), not the contact, not the exact position (it
    may be a home): the place is the incident's zone or the grid cell, as a name and a point."""
    row = appeal_store.get(conn, appeal_id)
    facts = desk.facts(conn, row, now)
    service = open311.SERVICES.get(str(row["category"]))
    zone_id = row["zone_ids"][0] if row["zone_ids"] else None
    agency = None
    updated = row["received"]
    expected = None
    if row["work_order_id"]:
        got = conn.execute(
            "SELECT w.department, w.zone_id, w.resolve_by, greatest(w.updated, "
            "(SELECT max(ts) FROM work_order_history h WHERE h.work_order_id = w.id)) "
            "FROM work_orders w WHERE w.id = %s", (row["work_order_id"],)).fetchone()
        if got is not None:
            agency = departments.get(got[0], got[0])
            zone_id = got[1]
            expected = got[2]
            updated = max(updated, got[3] or updated)
    point = desk.public_point(row, zone_id)
    return {
        "service_request_id": row["id"],
        "status": appeal_reply.status(facts),
        "status_notes": appeal_reply.reply(facts, "en", tz),
        "service_name": service.name if service else "Other",
        "service_code": row["category"],
        "description": None,
        "agency_responsible": agency,
        "service_notice": None,
        "requested_datetime": open311.w3c(row["received"]),
        "updated_datetime": open311.w3c(updated),
        "expected_datetime": open311.w3c(expected),
        "address": facts.incident.place if facts.incident else row["place"],
        "address_id": zone_id,
        "zipcode": None,
        "lat": point[1] if point else None,
        "long": point[0] if point else None,
        "media_url": None,
        # additive: the reply in Chinese, the counts, the order it joined
        "status_notes_zh": appeal_reply.reply(facts, "zh", tz, desk.roads_zh()),
        "appeals": facts.appeals,
        "callers": facts.callers,
        "related_request_id": row["work_order_id"],
    }


def appeals_router(desk: AppealDesk, pool: ConnectionPool[psycopg.Connection[Any]],
                   identity: Callable[..., Identity], clock: Callable[[], datetime], *,
                   limits: IntakeLimits = IntakeLimits(), tz: str = "Asia/Shanghai",
                   pool_wait_s: float = 5.0) -> APIRouter:
    router = APIRouter()
    zone = ZoneInfo(tz)
    gate = Gate(limits)
    router.gate = gate  # type: ignore[attr-defined]  # for health and tests
    hotline_body = _hotline_body()
    Me = Annotated[Identity, Depends(identity)]  # noqa: N806 (a type alias)

    @contextmanager
    def conn() -> Iterator[psycopg.Connection[Any]]:
        with pooled(pool, pool_wait_s) as c:
            yield c

    def georeport_error(code: int, description: str,
                        headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse([{"code": code, "description": description}], status_code=code,
                            headers=headers)

    @router.post("/open311/v2/requests.json", tags=["standards"], status_code=201,
                 response_model=list[PostedRequest],
                 responses={**GEOREPORT, 200: {"model": list[PostedRequest],
                                               "description": "the same submission again: "
                                               "its earlier id"},
                            404: {"model": list[GeoReportError],
                                  "description": "no place of the district: none given, "
                                  "outside it, or an address it does not know"},
                            429: {"model": list[GeoReportError],
                                  "description": "too many requests; see Retry-After"}})
    def post_request(form: Annotated[GeoReportForm, Form()], request: Request) -> Any:
        """GeoReport v2: a resident's service request (no login). ``service_code`` (a hazard
        or ``other``), a place (``lat`` and ``long``, or ``address_string`` naming a road
        crossing, landmark or zone of the district), ``description``, ``media_url``, contact
        fields (kept to call back, never shown). Matched to the incident it is about."""
        address = request.client.host if request.client else "unknown"
        try:
            gate.public(address)
        except Throttled as exc:
            return georeport_error(429, str(exc), {"Retry-After": str(exc.retry_after)})
        params = {k: str(v) for k, v in form.model_dump(mode="json").items()}
        try:
            filed = desk.file(from_georeport(params), RESIDENT, address)
        except PlaceError as exc:
            return georeport_error(404, str(exc))
        except IntakeError as exc:
            return georeport_error(400, str(exc))
        except (psycopg.OperationalError, PoolTimeout) as exc:
            log.warning("%s: %s", UNAVAILABLE, exc)
            return georeport_error(503, UNAVAILABLE)
        body = [{"service_request_id": filed.id, "service_notice": _notice(filed),
                 "account_id": None}]
        return body if filed.new else JSONResponse(body, status_code=200)

    @router.post("/api/appeals", tags=["appeals"], status_code=201,
                 responses={**ACT, 429: {"description": "too many appeals from this operator"}})
    def hotline(body: Annotated[hotline_body, Body()],  # type: ignore[valid-type]
                who: Me) -> dict[str, Any]:
        """The hotline operator's form: the caller's words, a place (picked on the map or
        typed), the caller's number. Operators and admins; recorded under the operator.
        409 with the reason when it cannot be taken (no place, outside the district, an
        address the district does not know)."""
        if who.role not in ("operator", "admin"):
            raise HTTPException(403, f"{who.user} ({who.role}) may not file appeals: operators "
                                "and admins take hotline calls")
        try:
            gate.operator(who.user)
        except Throttled as exc:
            raise HTTPException(429, str(exc),
                                headers={"Retry-After": str(exc.retry_after)}) from None
        data = body.model_dump(mode="json")  # type: ignore[attr-defined]
        params = {k: "" if v is None else str(v) for k, v in data.items()}
        try:
            filed = desk.file(hotline_intake(params), who.user, who.user)
        except IntakeError as exc:  # understood, but it cannot be taken: refused with why
            raise HTTPException(409, str(exc)) from None
        except (psycopg.OperationalError, PoolTimeout) as exc:
            log.warning("%s: %s", UNAVAILABLE, exc)
            raise HTTPException(503, UNAVAILABLE) from None
        with conn() as c:
            out = appeal_json(desk, c, appeal_store.get(c, filed.id), clock(), zone, True)
        out["new"] = filed.new
        return out

    def may_see_contact(who: Identity) -> bool:
        return who.role in ("operator", "admin")

    @router.get("/api/appeals", tags=["appeals"], responses=READ)
    def appeals(who: Me,
                alert_id: Annotated[str | None, Query(max_length=64,
                                                      pattern=r"^[A-Za-z0-9_.-]+$")] = None,
                case_id: Annotated[str | None, Query(max_length=64,
                                                     pattern=r"^[A-Za-z0-9_.-]+$")] = None,
                limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> dict[str, Any]:
        """Appeals, newest first, of an incident (``alert_id``) or case (``case_id``), with
        how many appeals and distinct callers it has in all."""
        with conn() as c:
            rows = appeal_store.listing(c, alert_id=alert_id, case_id=case_id, limit=limit)
            total = callers = len(rows)
            if alert_id is not None:
                total, callers = appeal_store.counts(c, "alert_id", alert_id)
            elif case_id is not None:
                total, callers = appeal_store.counts(c, "case_id", case_id)
            items = [_row_json(r, may_see_contact(who)) for r in rows]
        return {"appeals": total, "callers": callers, "items": items}

    @router.get("/api/appeals/by-incident", tags=["appeals"], responses=READ)
    def by_incident(_who: Me, alert_ids: Annotated[str, Query(
            max_length=20000, pattern=r"^[A-Za-z0-9_.,-]*$",
            description="comma-separated alert ids")] = "") -> dict[str, Any]:
        """Appeals and distinct callers per incident."""
        ids = [i for i in alert_ids.split(",") if i][:500]
        with conn() as c:
            got = appeal_store.by_incident(c, ids)
        return {k: {**v, "latest": _iso(v["latest"])} for k, v in got.items()}

    @router.get("/api/appeals/{appeal_id}", tags=["appeals"], responses={**READ, **NOT_FOUND})
    def one(appeal_id: Annotated[str, PathParam(pattern=APPEAL_ID)], who: Me) -> dict[str, Any]:
        """One appeal, with its status and the reply (English and Chinese) built from what the
        sensors and the team say now."""
        with conn() as c:
            return appeal_json(desk, c, appeal_store.get(c, appeal_id), clock(), zone,
                               may_see_contact(who))

    @router.get("/api/appeals/{appeal_id}/reply", tags=["appeals"],
                responses={**READ, **NOT_FOUND})
    def reply(appeal_id: Annotated[str, PathParam(pattern=APPEAL_ID)], _who: Me,
              lang: Literal["en", "zh"] = "zh") -> dict[str, Any]:
        """The reply the hotline reads out or sends: what is true now, with times."""
        with conn() as c:
            row = appeal_store.get(c, appeal_id)
            facts = desk.facts(c, row, clock())
        return {"id": appeal_id, "status": appeal_reply.status(facts), "lang": lang,
                "text": appeal_reply.reply(facts, lang, zone, desk.roads_zh())}

    @router.get("/api/geocode", tags=["appeals"], responses=READ)
    def geocode(_who: Me, q: Annotated[str, Query(min_length=1, max_length=MAX_ADDRESS,
                                                  pattern=NO_NUL)]) -> dict[str, Any]:
        """Where an address in words is (offline, from the district's own names)."""
        from geo.gazetteer import Resolved
        found = desk.gazetteer.resolve(q)
        if isinstance(found, Resolved):
            return {"resolved": True, "loc": list(found.position), "label": found.label}
        return {"resolved": False, "reason": found.reason}

    return router


def _notice(filed: Filed) -> str:
    if not filed.new:
        return "this request was received before; this is its id"
    if filed.alert_id:
        return "joined an incident the city already knows about"
    return "recorded"


def _row_json(r: dict[str, Any], with_contact: bool) -> dict[str, Any]:
    out = {k: r[k] for k in ("id", "source", "category", "address", "place", "description",
                             "media_url", "actor", "alert_id", "work_order_id", "case_id", "how",
                             "resubmitted")}
    out["loc"] = [r["lon"], r["lat"]]
    out["received"] = _iso(r["received"])
    out["score"] = None if r["score"] is None else round(float(r["score"]), 3)
    if with_contact:
        out["contact"] = r["contact"]
    return out


def _iso(ts: datetime | None) -> str | None:
    if ts is None:
        return None
    return iso_utc(ts, "seconds")


__all__ = ["IntakeLimits", "NotFound", "appeals_router", "public_request"]
