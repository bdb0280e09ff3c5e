"""The HTTP API of CONTRACT sections 4 and 6 (FastAPI), and the dashboard's static files.

Handlers are thin: they validate the request, check the caller's role (``alerts.identity``), call
``alerts.store`` and map its errors to status codes by meaning (unknown id 404, refused
transition 409 with the reason). Every ``/api`` route but ``GET /api/health`` needs a logged-in
identity (``alerts.auth``): 401 without, 403 outside the role. The actor recorded for an action is
that identity, never a field of the request. Public: ``/api/health``, the Open311 GET routes (no
internal notes, no team or worker), ``/metrics``, the console's static files and the login page.

No ``from __future__ import annotations`` here (nor in ``alerts.auth`` and ``alerts.stream``):
FastAPI reads the handlers' annotations at run time, and some name types made in ``create_app``.
"""

import base64
import hashlib
import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

import psycopg
from fastapi import Body, Depends, FastAPI, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import (
    http_exception_handler,
    request_validation_exception_handler,
)
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from psycopg_pool import ConnectionPool
from pydantic import BaseModel, ConfigDict, Field, create_model
from shapely.geometry import mapping
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Route

from alerts import store
from alerts.appeal_api import IntakeLimits, appeals_router, public_request
from alerts.appeal_desk import AppealDesk
from alerts.auth import (
    SESSION_COOKIE,
    Access,
    Authenticator,
    Credentials,
    LocalAuthenticator,
    LoginLimits,
    Unavailable,
    login_router,
)
from alerts.console_api import console_router
from alerts.device_api import DeviceRegistry, InvalidDevice, device_router, invalid_device_response
from alerts.http_guard import CONSOLE_CSP, HttpGuard
from alerts.identity import Identity, alert_refusal, work_order_refusal
from alerts.lifecycle import AlertsError, NotFound, TransitionError
from alerts.pooled import pooled
from alerts.responses import ACT, NOT_FOUND, READ
from alerts.standards_api import standards_router
from alerts.stream import StreamHub, stream_router
from geo.zones import Zone
from rules import registry
from sensing.times import iso_utc

AlertState = Literal["active", "acknowledged", "resolved"]
OrderState = Literal["open", "assigned", "accepted", "resolved", "closed"]
OrderAction = Literal["assign", "accept", "resolve", "close", "reopen"]
ID_PATTERN = r"^[A-Za-z0-9_.-]+$"
OPEN311_POST = "/open311/v2/requests.json"
ZoneId = Annotated[str, Query(max_length=64, pattern=ID_PATTERN)]
AlertId = Annotated[str, PathParam(max_length=64, pattern=ID_PATTERN)]
OrderId = Annotated[str, PathParam(max_length=64, pattern=ID_PATTERN)]
TEAM_PATTERN = r"^[A-Za-z0-9_-]+$"
# Free text goes into PostgreSQL, whose text cannot hold a NUL character.
TEXT_PATTERN = r"^[^\x00]*$"

_ACTOR = Field(default=None, max_length=64, deprecated=True,
               description="ignored: the logged-in user is recorded as the actor")


class AlertActionBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    actor: str | None = _ACTOR
    reason: str = Field(default="", max_length=500, pattern=TEXT_PATTERN)


class ResolveBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    actor: str | None = _ACTOR
    reason: str = Field(min_length=1, max_length=500, pattern=r"^[^\x00]*\S[^\x00]*$",
                        description="why the alert is over: it goes into the alert's history")


@dataclass(frozen=True)
class WebSettings:
    """HTTP hygiene and limits (``http:`` and ``auth:`` of the configuration)."""

    # Host names the API answers to; None: any (a server listening on every interface).
    allowed_hosts: frozenset[str] | None = frozenset({"127.0.0.1", "localhost", "::1"})
    max_body_bytes: int = 65536
    streams_total: int = 500
    streams_per_user: int = 10
    stream_poll_s: float = 0.5
    pool_wait_s: float = 5.0
    token_ttl: timedelta = timedelta(hours=1)
    session_ttl: timedelta = timedelta(hours=12)
    login_limits: LoginLimits = field(default_factory=LoginLimits)


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
    # team id -> its department: a dispatcher assigns only its own department's teams
    team_departments: Mapping[str, str] = field(default_factory=dict)
    web: WebSettings = field(default_factory=WebSettings)
    # Who may log in. None: our own users table (alerts.users) with POST /api/token and the
    # console's login; a single sign-on's Authenticator replaces it (see alerts.auth).
    authenticator: Authenticator | None = None
    # Residents' appeals (GeoReport POST requests, the hotline form); None: not served.
    appeals: AppealDesk | None = None
    appeal_limits: IntakeLimits = field(default_factory=IntakeLimits)
    # The device registry that admins change at run time (alerts.device_api); None: not served.
    device_registry: DeviceRegistry | None = None
    local_tz: str = "Asia/Shanghai"  # replies to residents give local times


def _order_body(team_ids: Sequence[str]) -> type[BaseModel]:
    """The work-order action body; ``team_id`` is one of the configured teams when known, so that
    the OpenAPI document lists them and a wrong one is a plain validation error."""
    team: Any = str
    if team_ids:
        make_enum: Any = Enum  # a type made at run time, from the configuration
        team = make_enum("TeamId", {t: t for t in sorted(team_ids)}, type=str)
    model: type[BaseModel] = create_model(
        "WorkOrderActionBody", __config__=ConfigDict(extra="forbid"),
        actor=(str | None, _ACTOR),
        reason=(str, Field(default="", max_length=500, pattern=TEXT_PATTERN)),
        team_id=(team | None, Field(default=None, max_length=None if team_ids else 64,
                                    pattern=None if team_ids else TEAM_PATTERN,
                                    description="assign: the team to give the order to")))
    return model


def create_app(deps: ApiDeps) -> FastAPI:
    web = deps.web
    app = FastAPI(title="citywatch", version="1.1", docs_url=None, redoc_url=None,
                  description="IoT spatial perception and early warning (CONTRACT sections 4 "
                  "and 6). Log in with POST /api/token (OAuth2 password grant) and send the "
                  "token as Authorization: Bearer; the console uses a session cookie instead.")
    local: LocalAuthenticator | None = None
    authn = deps.authenticator
    if authn is None:
        local = LocalAuthenticator(deps.pool, wait_s=web.pool_wait_s, token_ttl=web.token_ttl,
                                   session_ttl=web.session_ttl, limits=web.login_limits)
        authn = local
    access = Access(authn)
    Me = Annotated[Identity, Depends(access.identity)]  # noqa: N806 (a type alias)
    logged_in = [Depends(access.identity)]
    team_departments = dict(deps.team_departments)
    team_ids = frozenset(deps.team_ids) | frozenset(team_departments)
    order_body = _order_body(sorted(team_ids))

    @contextmanager
    def conn() -> Iterator[psycopg.Connection[Any]]:
        with pooled(deps.pool, web.pool_wait_s) as c:
            yield c

    @app.exception_handler(NotFound)
    def _not_found(_r: Request, exc: NotFound) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(TransitionError)
    def _refused(_r: Request, exc: TransitionError) -> JSONResponse:
        return JSONResponse({"detail": str(exc), "state": exc.state}, status_code=409)

    @app.exception_handler(store.NotVerified)
    def _not_verified(_r: Request, exc: store.NotVerified) -> JSONResponse:
        return JSONResponse({"detail": str(exc), "evidence": exc.evidence}, status_code=409)

    # Before AlertsError's: a value the registry refuses is a validation error, not a conflict.
    app.add_exception_handler(InvalidDevice, invalid_device_response)  # type: ignore[arg-type]

    @app.exception_handler(AlertsError)
    def _bad(_r: Request, exc: AlertsError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=409)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 405:
            # One route per method: name every method the path has, not the first route's.
            allowed: set[str] = set()
            for route in app.router.routes:
                if isinstance(route, Route) and route.methods and \
                        route.matches(request.scope)[0] != Match.NONE:
                    allowed |= route.methods
            exc = StarletteHTTPException(405, exc.detail, headers={
                **(exc.headers or {}), "Allow": ", ".join(sorted(allowed))})
        return await http_exception_handler(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        if request.url.path.startswith("/open311/"):  # GeoReport's own error shape
            what = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:])}: {e['msg']}"
                             for e in exc.errors())
            return JSONResponse([{"code": 400, "description": what}], status_code=400)
        return await request_validation_exception_handler(request, exc)

    @app.get("/api/health", response_class=JSONResponse, responses={
        200: {"content": {"application/json": {"schema": {"type": "object"}}},
              "description": "ok or degraded"},
        503: {"content": {"application/json": {"schema": {"type": "object"}}},
              "description": "failing: a worker is dead or stuck (the same body)"}})
    def health() -> JSONResponse:
        """Public: broker and database connectivity, lag and counts."""
        body = deps.health()
        # 503 (same body) when the pipeline is stuck or a worker is dead: a monitor or load
        # balancer notices without parsing JSON; "degraded" (a service down, a warning) stays 200.
        return JSONResponse(jsonable_encoder(body),
                            status_code=503 if body.get("status") == "failing" else 200)

    @app.get("/api/zones", dependencies=logged_in, responses=READ)
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

    @app.get("/api/devices", dependencies=logged_in, responses=READ)
    def devices() -> dict[str, Any]:
        with conn() as c:
            rows = deps.list_devices(c)
        return {"type": "FeatureCollection", "features": [
            {"type": "Feature", "id": d["id"],
             "geometry": {"type": "Point", "coordinates": [d["lon"], d["lat"]]},
             "properties": {"id": d["id"], "kind": d["kind"], "zone_ids": list(d["zone_ids"]),
                            "online": d["online"], "last_seen": _iso(d["last_seen"])}}
            for d in rows]}

    # The hazards the registry knows when the app is built (plug-ins register before).
    hazard_name: Any = Literal[registry.names()]

    @app.get("/api/alerts", dependencies=logged_in, responses=READ)
    def alerts(state: AlertState | None = None,
               hazard: hazard_name | None = None,
               zone_id: ZoneId | None = None,
               limit: Annotated[int, Query(ge=1, le=5000)] = 500) -> list[dict[str, Any]]:
        with conn() as c:
            return store.list_alerts(c, state, hazard, zone_id, limit)

    @app.get("/api/alerts/{alert_id}", dependencies=logged_in, responses={**READ, **NOT_FOUND})
    def alert(alert_id: AlertId) -> dict[str, Any]:
        """One alert with all its evidence and its ``history`` (who did what, when, why)."""
        with conn() as c:
            return store.get_alert(c, alert_id)

    def act_on_alert(alert_id: str, action: str, who: Identity, reason: str) -> dict[str, Any]:
        why = alert_refusal(who, action)
        if why is not None:
            raise HTTPException(403, why)
        with conn() as c:
            return store.act_on_alert(c, alert_id, action, deps.clock(), who.user, reason)

    @app.post("/api/alerts/{alert_id}/acknowledge", responses=ACT)
    def acknowledge(alert_id: AlertId, who: Me,
                    body: Annotated[AlertActionBody | None, Body()] = None) -> dict[str, Any]:
        """An operator has seen the alert (operators and admins)."""
        return act_on_alert(alert_id, "acknowledge", who, body.reason if body else "")

    @app.post("/api/alerts/{alert_id}/resolve", responses=ACT)
    def resolve(alert_id: AlertId, who: Me, body: Annotated[ResolveBody, Body()]
                ) -> dict[str, Any]:
        """The alert is over (operators and admins); needs a reason. Refused with 409 and the
        evidence while the sensors still show the hazard."""
        return act_on_alert(alert_id, "resolve", who, body.reason.strip())

    @app.get("/api/work-orders", dependencies=logged_in, responses=READ)
    def work_orders(state: OrderState | None = None,
                    department: Annotated[str | None, Query(max_length=64,
                                                            pattern=ID_PATTERN)] = None,
                    zone_id: ZoneId | None = None,
                    limit: Annotated[int, Query(ge=1, le=5000)] = 500) -> list[dict[str, Any]]:
        with conn() as c:
            return store.list_work_orders(c, state, department, zone_id, limit)

    @app.get("/api/work-orders/{order_id}", dependencies=logged_in,
             responses={**READ, **NOT_FOUND})
    def work_order(order_id: OrderId) -> dict[str, Any]:
        with conn() as c:
            return store.get_work_order(c, order_id)

    @app.post("/api/work-orders/{order_id}/{action}", responses=ACT)
    def work_order_action(order_id: OrderId, action: OrderAction, who: Me,
                          body: Annotated[order_body | None, Body()] = None,  # type: ignore[valid-type]
                          ) -> dict[str, Any]:
        """Operators and admins act on every order; a dispatcher on its department's; a team
        accepts and resolves its own. ``actor`` in the body is ignored."""
        if who.role == "viewer":
            raise HTTPException(403, f"{who.user} (viewer) only reads")
        reason = str(getattr(body, "reason", "") or "")
        raw_team = getattr(body, "team_id", None)
        team = None if raw_team is None or action != "assign" else str(
            raw_team.value if isinstance(raw_team, Enum) else raw_team)
        with conn() as c, c.transaction():
            # Checked under the row lock, so an escalation cannot move the order away between
            # the check and the action.
            row = c.execute("SELECT department, team_id FROM work_orders WHERE id = %s "
                            "FOR UPDATE", (order_id,)).fetchone()
            if row is None:
                raise NotFound(f"no work order {order_id!r}")
            why = work_order_refusal(who, action, row[0], row[1], team, team_departments)
            if why is not None:
                raise HTTPException(403, why)
            return store.act_on_work_order(c, order_id, action, deps.clock(), who.user, reason,
                                           team, deps.alert_store)

    hub = StreamHub(deps.pool, poll_s=web.stream_poll_s, total=web.streams_total,
                    per_user=web.streams_per_user, pool_wait_s=web.pool_wait_s)
    app.state.stream_hub = hub
    app.include_router(stream_router(hub, access.identity))
    app.include_router(console_router(deps.pool, deps.zones, deps.thresholds, clock=deps.clock,
                                      pool_wait_s=web.pool_wait_s),
                       dependencies=logged_in, responses=READ)
    if deps.device_registry is not None:
        app.include_router(device_router(deps.device_registry, access.identity))
    desk = deps.appeals
    appeal = None
    if desk is not None:
        app.include_router(appeals_router(desk, deps.pool, access.identity, deps.clock,
                                          limits=deps.appeal_limits, tz=deps.local_tz,
                                          pool_wait_s=web.pool_wait_s))
        tz, names = ZoneInfo(deps.local_tz), dict(deps.departments)

        def appeal(c: psycopg.Connection[Any], appeal_id: str) -> dict[str, Any]:
            return public_request(desk, c, appeal_id, deps.clock(), tz, names)
    app.include_router(standards_router(deps.pool, deps.zones, deps.clock,
                                        departments=deps.departments, cap_sender=deps.cap_sender,
                                        cap_dependencies=logged_in, pool_wait_s=web.pool_wait_s,
                                        appeal=appeal))
    if local is not None:
        app.include_router(login_router(local, access))

    @app.get("/metrics", response_class=Response, responses={
        200: {"content": {"text/plain": {"schema": {"type": "string"}}},
              "description": "Prometheus text format"}})
    def metrics() -> Response:
        """Public: Prometheus metrics (counts and lags, nothing about people)."""
        return Response(generate_latest(deps.registry), media_type=CONTENT_TYPE_LATEST)

    docs_csp = _docs(app)
    if deps.static_dir is not None and (deps.static_dir / "index.html").exists():
        _static(app, deps.static_dir, authn)
    app.add_middleware(HttpGuard, allowed_hosts=web.allowed_hosts,
                       max_body=web.max_body_bytes, csp=CONSOLE_CSP,
                       csp_for={"/docs": docs_csp},
                       # the public intake: anyone may post (no cookie or token counts there),
                       # but only small bodies
                       open_posts={OPEN311_POST: min(web.max_body_bytes,
                                                     deps.appeal_limits.max_body_bytes)})
    return app


def _static(app: FastAPI, static_dir: Path, authn: Authenticator) -> None:
    index = static_dir / "index.html"
    login = static_dir / "login.html"

    @app.get("/", include_in_schema=False, response_model=None)
    def home(request: Request) -> FileResponse | RedirectResponse:
        session = request.cookies.get(SESSION_COOKIE)
        try:
            known = session is not None and authn.verify(Credentials(session=session)) is not None
        except Unavailable:
            known = True  # the page says the server is unavailable; the login could not help
        if not known and login.exists():
            return RedirectResponse("/login", status_code=303)
        return FileResponse(index)

    if login.exists():
        @app.get("/login", include_in_schema=False)
        def login_page() -> FileResponse:
            return FileResponse(login)

    app.mount("/static", StaticFiles(directory=static_dir), name="static")
    # The page loads its files by relative path, so serve them beside index.html too.
    for f in static_dir.iterdir():
        if f.is_file() and f.name != "index.html":
            app.add_api_route(f"/{f.name}", _file_route(f), include_in_schema=False)


def _docs(app: FastAPI) -> str:
    """``GET /docs`` (Swagger UI from its CDN) and the policy that lets exactly its one inline
    script run (by hash), where the console's policy allows none."""
    page = get_swagger_ui_html(openapi_url="/openapi.json", title="citywatch API")
    body = bytes(page.body)
    scripts = re.findall(rb"<script>(.*?)</script>", body, flags=re.DOTALL)
    hashes = " ".join(
        f"'sha256-{base64.b64encode(hashlib.sha256(s).digest()).decode()}'" for s in scripts)
    cdn = "https://cdn.jsdelivr.net"

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return HTMLResponse(body)

    return (f"default-src 'self'; script-src 'self' {cdn} {hashes}; "
            f"style-src 'self' {cdn} 'unsafe-inline'; img-src 'self' data: {cdn} "
            "https://fastapi.tiangolo.com; connect-src 'self'; object-src 'none'; "
            "base-uri 'none'; frame-ancestors 'none'")


def _file_route(path: Path) -> Callable[[], FileResponse]:
    def serve() -> FileResponse:
        return FileResponse(path)
    return serve


def _iso(ts: datetime | None) -> str | None:
    return iso_utc(ts) if ts else None


def dumps(obj: Mapping[str, Any]) -> str:
    return json.dumps(obj, default=str)
