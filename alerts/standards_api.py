"""Routes for the two public standards of CONTRACT section 4: CAP 1.2 and Open311 GeoReport v2.

Built by ``standards_router`` from what they need, so ``alerts.api.create_app`` includes them with
one line. The mapping lives in ``alerts.cap`` and ``alerts.open311``; this module only reads.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Annotated, Any

import psycopg
from fastapi import APIRouter, Request
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse, Response
from psycopg import sql
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool
from starlette.routing import NoMatchFound

from alerts import cap, open311, store
from alerts.pooled import UNAVAILABLE, pooled
from alerts.responses import GEOREPORT, NOT_FOUND, READ, GeoReportError
from geo.zones import Zone

log = logging.getLogger(__name__)

Pool = ConnectionPool[psycopg.Connection[Any]]

# The newest history entry gives GeoReport's updated_datetime: every change to an order (state
# or severity) writes one. Its reason stays inside: it may name teams and workers.
_REQUESTS_SQL = """
SELECT w.id, w.hazard, w.severity, w.zone_id, w.department, w.state, w.created, w.resolve_by,
       w.title, h.ts AS last_change
FROM work_orders w
LEFT JOIN LATERAL (SELECT ts FROM work_order_history
                   WHERE work_order_id = w.id ORDER BY id DESC LIMIT 1) h ON true
"""


def find_work_orders(conn: psycopg.Connection[Any],
                     q: open311.RequestQuery) -> list[dict[str, Any]]:
    """Work orders matching a GeoReport query, newest first."""
    conds: list[sql.Composable] = []
    args: list[Any] = []
    if q.ids:
        conds.append(sql.SQL("w.id = ANY(%s)"))
        args.append(list(q.ids))
    else:
        if q.service_codes:
            conds.append(sql.SQL("w.hazard = ANY(%s)"))
            args.append(list(q.service_codes))
        states = open311.states_for(q.statuses)
        if states is not None:
            conds.append(sql.SQL("w.state = ANY(%s)"))
            args.append(list(states))
        if q.start is not None:
            conds.append(sql.SQL("w.created >= %s"))
            args.append(q.start)
        if q.end is not None:
            conds.append(sql.SQL("w.created <= %s"))
            args.append(q.end)
    where = sql.SQL("WHERE ") + sql.SQL(" AND ").join(conds) if conds else sql.SQL("")
    query = sql.SQL("{} {} ORDER BY w.created DESC, w.id DESC LIMIT %s").format(
        sql.SQL(_REQUESTS_SQL), where)
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(query, [*args, q.limit])
        return cur.fetchall()


def standards_router(pool: Pool, zones: Sequence[Zone], clock: Callable[[], datetime], *,
                     departments: Mapping[str, str] | None = None,
                     cap_sender: str = cap.DEFAULT_SENDER,
                     cap_dependencies: Sequence[Any] = (),
                     pool_wait_s: float = 5.0) -> APIRouter:
    """``GET /api/alerts/{id}/cap`` and ``GET /open311/v2/...``.

    ``departments`` maps department ids to names (GeoReport's ``agency_responsible``).
    ``cap_dependencies`` guard the CAP route (a login, as every ``/api`` route); the Open311
    routes are public and show only what a resident may see (``alerts.open311``).
    """
    cap.check_token("cap_sender", cap_sender)  # a bad sender fails at start, not per request
    by_id = {z.id: z for z in zones}
    names = dict(departments or {})
    router = APIRouter()

    @contextmanager
    def conn(georeport: bool = False) -> Iterator[psycopg.Connection[Any]]:
        if not georeport:
            with pooled(pool, pool_wait_s) as c:
                yield c
            return
        try:
            with pool.connection(timeout=pool_wait_s) as c:
                yield c
        except psycopg.OperationalError as exc:
            log.warning("%s: %s", UNAVAILABLE, exc)
            raise open311.Open311Error(503, UNAVAILABLE) from None

    @router.get("/api/alerts/{alert_id}/cap", tags=["standards"],
                response_class=Response, dependencies=list(cap_dependencies),
                responses={200: {"content": {cap.CAP_MEDIA_TYPE: {
                    "schema": {"type": "string"}}}, "description": "a CAP 1.2 document"},
                    **READ, **NOT_FOUND})
    def alert_cap(alert_id: Annotated[str, PathParam(max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")],
                  request: Request) -> Response:
        """The alert as an OASIS CAP 1.2 document: Alert, then Update, then Cancel."""
        with conn() as c:
            alert = store.get_alert(c, alert_id)  # NotFound: the app's handler answers 404
        try:
            web: str | None = str(request.url_for("alert", alert_id=alert_id))
        except NoMatchFound:  # an app without the alert's JSON route
            web = None
        body = cap.alert_to_cap(alert, by_id.get(str(alert["zone_id"])), sender=cap_sender,
                                web=web)
        return Response(body, media_type=cap.CAP_MEDIA_TYPE)

    @router.get("/open311/v2/services.json", tags=["standards"])
    def services() -> list[dict[str, Any]]:
        """GeoReport v2 service list: one service per hazard."""
        return open311.services()

    @router.get("/open311/v2/requests.json", tags=["standards"], responses=GEOREPORT)
    def requests(request: Request) -> Any:
        """GeoReport v2 service requests: ``service_request_id``, ``service_code``,
        ``status`` (open, closed), ``start_date``, ``end_date``; comma-separated lists."""
        try:
            # "Can be declared multiple times, comma delimited": join repeats into one list.
            params = {k: ",".join(request.query_params.getlist(k))
                      for k in request.query_params}
            q = open311.parse_query(params, clock())
            with conn(georeport=True) as c:
                rows = find_work_orders(c, q)
        except open311.Open311Error as exc:
            return JSONResponse(exc.body(), status_code=exc.code)
        return [open311.to_request(r, by_id.get(r["zone_id"]), names) for r in rows]

    @router.get("/open311/v2/requests/{service_request_id}.json", tags=["standards"],
                responses={**GEOREPORT, 404: {"model": list[GeoReportError],
                                              "description": "no such service request"}})
    def one_request(service_request_id: Annotated[str, PathParam(
            max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]) -> Any:
        """One GeoReport v2 service request, as a one-element array (as the spec has it)."""
        try:
            q = open311.parse_query({"service_request_id": service_request_id}, clock())
            with conn(georeport=True) as c:
                rows = find_work_orders(c, q)
            if not rows:
                raise open311.Open311Error(
                    404, f"no service request {service_request_id!r}")
        except open311.Open311Error as exc:
            return JSONResponse(exc.body(), status_code=exc.code)
        return [open311.to_request(rows[0], by_id.get(rows[0]["zone_id"]), names)]

    return router

