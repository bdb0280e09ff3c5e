"""The HTTP API of CONTRACT section 4 (FastAPI), and the dashboard's static files.

Handlers are thin: they validate the request, call ``alerts.store`` and map its errors to status
codes by meaning (unknown id 404, refused transition 409 with the reason).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import psycopg
from fastapi import Body, FastAPI, HTTPException, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from psycopg_pool import ConnectionPool
from pydantic import BaseModel, ConfigDict, Field
from shapely.geometry import mapping

from alerts import store
from alerts.console_api import console_router
from alerts.lifecycle import AlertsError, NotFound, TransitionError
from alerts.standards_api import standards_router
from alerts.stream import stream_router
from geo.zones import Zone

AlertState = Literal["active", "acknowledged", "resolved"]
OrderState = Literal["open", "assigned", "accepted", "resolved", "closed"]
Hazard = Literal["waterlogging", "falling_object", "traffic"]
OrderAction = Literal["assign", "accept", "resolve", "close", "reopen"]
ZoneId = Annotated[str, Query(max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]


class ActionBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    actor: str = Field(default="operator", max_length=64)
    reason: str = Field(default="", max_length=500)
    team_id: str | None = Field(default=None, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")


@dataclass(frozen=True)
class ApiDeps:
    pool: ConnectionPool[psycopg.Connection[Any]]
    zones: Sequence[Zone]
    list_devices: Callable[[psycopg.Connection[Any]], list[dict[str, Any]]]
    health: Callable[[], dict[str, Any]]
    registry: CollectorRegistry
    clock: Callable[[], datetime]
    static_dir: Path | None = None
    team_ids: frozenset[str] = frozenset()
    # The rules configuration as plain data (RulesParams.model_dump()): thresholds on charts.
    thresholds: Mapping[str, Any] = field(default_factory=dict)
    alert_store: store.AlertStore | None = None  # dispatches to a newly assigned team
    departments: Mapping[str, str] = field(default_factory=dict)  # id -> name, for Open311
    cap_sender: str = "citywatch@gusu.suzhou.example"
    # zone -> hazard -> level (1-4), "clear" or "unknown": what the rules know right now
    zone_risk: Callable[[], Mapping[str, Mapping[str, Any]]] = dict


def create_app(deps: ApiDeps) -> FastAPI:
    app = FastAPI(title="citywatch", version="1",
                  description="IoT spatial perception and early warning (CONTRACT section 4)")

    @contextmanager
    def conn() -> Iterator[psycopg.Connection[Any]]:
        try:
            with deps.pool.connection(timeout=5) as c:
                yield c
        except psycopg.OperationalError as exc:
            raise HTTPException(503, f"database unavailable: {exc}") from None

    @app.exception_handler(NotFound)
    def _not_found(_r: Request, exc: NotFound) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(TransitionError)
    def _refused(_r: Request, exc: TransitionError) -> JSONResponse:
        return JSONResponse({"detail": str(exc), "state": exc.state}, status_code=409)

    @app.exception_handler(store.NotVerified)
    def _not_verified(_r: Request, exc: store.NotVerified) -> JSONResponse:
        return JSONResponse({"detail": str(exc), "evidence": exc.evidence}, status_code=409)

    @app.exception_handler(AlertsError)
    def _bad(_r: Request, exc: AlertsError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)

    @app.get("/api/health")
    def health() -> JSONResponse:
        body = deps.health()
        # 503 (same body) when the pipeline is stuck or a worker is dead: a monitor or load
        # balancer notices without parsing JSON; "degraded" (a service down, a warning) stays 200.
        return JSONResponse(jsonable_encoder(body),
                            status_code=503 if body.get("status") == "failing" else 200)

    @app.get("/api/zones")
    def zones() -> dict[str, Any]:
        with conn() as c:
            levels = store.zone_levels(c)
        risk = deps.zone_risk()
        return {"type": "FeatureCollection", "features": [
            {"type": "Feature", "id": z.id, "geometry": mapping(z.geometry),
             "properties": {"id": z.id, "name": z.name, "type": z.type,
                            "hazards": list(z.hazards), "parent_id": z.parent_id,
                            "level": levels.get(z.id),
                            # additive: "unknown" when no trusted sensor covers the hazard
                            "risk": dict(risk.get(z.id, {}))}}
            for z in deps.zones]}

    @app.get("/api/devices")
    def devices() -> dict[str, Any]:
        with conn() as c:
            rows = deps.list_devices(c)
        return {"type": "FeatureCollection", "features": [
            {"type": "Feature", "id": d["id"],
             "geometry": {"type": "Point", "coordinates": [d["lon"], d["lat"]]},
             "properties": {"id": d["id"], "kind": d["kind"], "zone_ids": list(d["zone_ids"]),
                            "online": d["online"], "last_seen": _iso(d["last_seen"])}}
            for d in rows]}

    @app.get("/api/alerts")
    def alerts(state: AlertState | None = None, hazard: Hazard | None = None,
               zone_id: ZoneId | None = None,
               limit: Annotated[int, Query(ge=1, le=5000)] = 500) -> list[dict[str, Any]]:
        with conn() as c:
            return store.list_alerts(c, state, hazard, zone_id, limit)

    @app.get("/api/alerts/{alert_id}")
    def alert(alert_id: str) -> dict[str, Any]:
        with conn() as c:
            return store.get_alert(c, alert_id)

    @app.post("/api/alerts/{alert_id}/{action}")
    def alert_action(alert_id: str, action: Literal["acknowledge", "resolve"]) -> dict[str, Any]:
        with conn() as c:
            return store.act_on_alert(c, alert_id, action, deps.clock())

    @app.get("/api/work-orders")
    def work_orders(state: OrderState | None = None,
                    department: Annotated[str | None, Query(max_length=64)] = None,
                    zone_id: ZoneId | None = None,
                    limit: Annotated[int, Query(ge=1, le=5000)] = 500) -> list[dict[str, Any]]:
        with conn() as c:
            return store.list_work_orders(c, state, department, zone_id, limit)

    @app.get("/api/work-orders/{order_id}")
    def work_order(order_id: str) -> dict[str, Any]:
        with conn() as c:
            return store.get_work_order(c, order_id)

    @app.post("/api/work-orders/{order_id}/{action}")
    def work_order_action(order_id: str, action: OrderAction,
                          body: Annotated[ActionBody | None, Body()] = None) -> dict[str, Any]:
        b = body or ActionBody()
        if b.team_id is not None and deps.team_ids and b.team_id not in deps.team_ids:
            raise HTTPException(422, f"team_id {b.team_id!r} is not a configured team")
        with conn() as c:
            return store.act_on_work_order(c, order_id, action, deps.clock(), b.actor, b.reason,
                                           b.team_id if action == "assign" else None,
                                           deps.alert_store)

    app.include_router(stream_router(deps.pool))
    app.include_router(console_router(deps.pool, deps.zones, deps.thresholds, clock=deps.clock))
    app.include_router(standards_router(deps.pool, deps.zones, deps.clock,
                                        departments=deps.departments, cap_sender=deps.cap_sender))

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(deps.registry), media_type=CONTENT_TYPE_LATEST)

    if deps.static_dir is not None and (deps.static_dir / "index.html").exists():
        index = deps.static_dir / "index.html"

        @app.get("/", include_in_schema=False)
        def home() -> FileResponse:
            return FileResponse(index)

        app.mount("/static", StaticFiles(directory=deps.static_dir), name="static")
        # The page loads its files by relative path, so serve them beside index.html too.
        for f in deps.static_dir.iterdir():
            if f.is_file() and f.name != "index.html":
                app.add_api_route(f"/{f.name}", _file_route(f), include_in_schema=False)
    return app


def _file_route(path: Path) -> Callable[[], FileResponse]:
    def serve() -> FileResponse:
        return FileResponse(path)
    return serve


def _iso(ts: datetime | None) -> str | None:
    return ts.isoformat(timespec="milliseconds").replace("+00:00", "Z") if ts else None


def dumps(obj: Mapping[str, Any]) -> str:
    return json.dumps(obj, default=str)
