"""Only the right people (CONTRACT section 6), through HTTP on the real service: 401 and 403 where
due, the actor recorded is the logged-in user, sessions need their CSRF token, Origin and Host
are checked, headers and limits hold, and event streams are capped while the API stays quick."""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest

from alerts import users
from citywatch.config import Config, load_config
from citywatch.service import STATIC_DIR, Endpoints, Service
from sensing.scratch import scratch_database
from tests.fix_db import DEFAULT_SERVER
from tests.fix_users import PASSWORD, ROLE_USERS, Client, Logins, ensure_user, token_for
from tests.integration.test_pipeline_e2e import REPO, publish_all, telemetry, wait_for

pytestmark = pytest.mark.integration

# wl-01 gauges the Renmin Road underpass (up-01, drainage, team drainage-1): red from 25 cm.
GAUGE, ZONE = "wl-01", "up-01"
STREAMS = 300


@pytest.fixture(scope="module")
def config() -> Config:
    cfg = load_config(REPO / "config.yaml", env={})
    # Room for the stream test's 300 streams of one user plus one of another; few failed logins.
    http = cfg.http.model_copy(update={"streams_per_user": STREAMS, "streams_total": STREAMS + 1})
    auth = cfg.auth.model_copy(update={"login_failures_per_user": 3,
                                       "login_attempts_per_address": 1000})
    return cfg.model_copy(update={"http": http, "auth": auth})


class Running:
    def __init__(self, service: Service, db_url: str) -> None:
        self.service, self.db_url = service, db_url
        self.url = service.url
        self.logins = Logins(self.url, db_url)

    def __getitem__(self, role: str) -> Client:
        return self.logins[role]

    def sql(self, query: str, *args: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.db_url, autocommit=True) as conn:
            cur = conn.execute(query, args)
            return cur.fetchall() if cur.description else []


@pytest.fixture(scope="module")
def running(config: Config, broker_url: str, db_url: str) -> Iterator[Running]:
    # db_url first: it skips (or fails under CI) when PostgreSQL is absent.
    with scratch_database(os.environ.get("CITYWATCH_TEST_PG", DEFAULT_SERVER),
                          "citywatch_access") as url:
        service = Service(config, Endpoints(broker_url, url), http_port=0,
                          client_id=f"citywatch-access-{uuid.uuid4().hex[:8]}")
        service.start()
        assert service._link.connected.wait(10)
        r = Running(service, url)
        try:
            yield r
        finally:
            r.logins.close()
            service.stop()


@pytest.fixture(scope="module")
def flooded(running: Running, broker_url: str) -> dict[str, Any]:
    """A red alert at the underpass and its work order (drainage, team drainage-1)."""
    publish_all(broker_url, [(f"city/water/{GAUGE}/telemetry", telemetry(1, 60.0))])
    alerts = wait_for("a red alert", lambda: running["viewer"].json_of(
        "/api/alerts", zone_id=ZONE, state="active"))
    return dict(alerts[0])


def concrete(path: str) -> str:
    return (path.replace("{action}", "accept").replace("{alert_id}", "AL-000001")
            .replace("{order_id}", "WO-000001").replace("{zone_id}", ZONE))


# --- who may do what -------------------------------------------------------------------------


def test_every_api_route_but_health_and_login_needs_a_login(running: Running) -> None:
    spec = httpx.get(running.url + "/openapi.json", timeout=10).json()
    public = {("get", "/api/health"), ("post", "/api/token"), ("post", "/api/session")}
    checked = []
    for path, ops in spec["paths"].items():
        if not path.startswith("/api/"):
            continue
        for method in ops:
            if (method, path) in public:
                continue
            r = httpx.request(method.upper(), running.url + concrete(path), timeout=10,
                              json={"reason": "test"} if method == "post" else None)
            assert r.status_code == 401, (method, path, r.status_code, r.text)
            assert r.headers["www-authenticate"] == "Bearer"
            checked.append((method, path))
    assert len(checked) >= 14, checked
    # A wrong or made-up token is no better than none.
    bad = httpx.get(running.url + "/api/alerts", headers={"Authorization": "Bearer nonsense"})
    assert bad.status_code == 401
    assert httpx.get(running.url + "/api/health", timeout=10).status_code == 200


def test_roles_decide_and_the_actor_is_the_logged_in_user(running: Running,
                                                           flooded: dict[str, Any]) -> None:
    alert_id, order_id = flooded["id"], flooded["work_order_id"]
    viewer, team, dispatcher = running["viewer"], running["team"], running["dispatcher"]
    # A viewer reads everything and acts on nothing.
    assert viewer.get(f"/api/work-orders/{order_id}").status_code == 200
    assert viewer.post(f"/api/alerts/{alert_id}/acknowledge").status_code == 403
    assert viewer.post(f"/api/work-orders/{order_id}/accept").status_code == 403
    # A team and a dispatcher act on orders, not on alerts.
    assert team.post(f"/api/alerts/{alert_id}/acknowledge").status_code == 403
    assert dispatcher.post(f"/api/alerts/{alert_id}/acknowledge").status_code == 403
    # A team does not dispatch; a dispatcher assigns only its own department's teams.
    assert team.post(f"/api/work-orders/{order_id}/assign",
                     json={"team_id": "drainage-2"}).status_code == 403
    other = dispatcher.post(f"/api/work-orders/{order_id}/assign",
                            json={"team_id": "traffic-police-1"})
    assert other.status_code == 403 and "gusu-traffic" in other.json()["detail"]
    assert dispatcher.post(f"/api/work-orders/{order_id}/assign",
                           json={"team_id": "drainage-1", "actor": "mallory"}).status_code == 200
    assert team.post(f"/api/work-orders/{order_id}/accept").status_code == 200
    # The operator acknowledges; the body's actor is ignored.
    acked = running["operator"].post(f"/api/alerts/{alert_id}/acknowledge",
                                     json={"actor": "mallory", "reason": "seen on camera"})
    assert acked.status_code == 200, acked.text
    history = running["viewer"].json_of(f"/api/alerts/{alert_id}")["history"]
    assert [(h["from"], h["to"], h["actor"], h["reason"]) for h in history] == [
        ("active", "acknowledged", ROLE_USERS["operator"][0], "seen on camera")]
    order = running["viewer"].json_of(f"/api/work-orders/{order_id}")
    actors = [h["actor"] for h in order["history"] if h["to"] in ("assigned", "accepted")]
    assert actors == [ROLE_USERS["dispatcher"][0], ROLE_USERS["team"][0]]
    assert "mallory" not in json.dumps(order) + json.dumps(history)


def test_a_dispatcher_of_another_department_is_refused(running: Running,
                                                       flooded: dict[str, Any]) -> None:
    ensure_user(running.db_url, "traffic-desk", "dispatcher", "gusu-traffic")
    desk = Client(running.url, "traffic-desk", token_for(running.url, "traffic-desk"))
    with desk:
        r = desk.post(f"/api/work-orders/{flooded['work_order_id']}/reopen")
        assert r.status_code == 403
        assert "gusu-drainage" in r.json()["detail"]
        assert desk.post("/api/work-orders/WO-999999/reopen").status_code == 404


def test_resolving_a_live_hazard_is_refused_with_the_evidence(running: Running,
                                                              flooded: dict[str, Any]) -> None:
    op = running["operator"]
    url = f"/api/alerts/{flooded['id']}/resolve"
    assert op.post(url).status_code == 422  # no reason, no resolve
    assert op.post(url, json={"reason": "   "}).status_code == 422
    r = op.post(url, json={"reason": "looks dry on camera"})
    assert r.status_code == 409, r.text
    body = r.json()
    assert "the sensors still show waterlogging" in body["detail"]
    assert body["evidence"][0]["alert_id"] == flooded["id"]
    assert body["evidence"][0]["latest"], "the latest readings come with the refusal"
    assert running["viewer"].json_of(f"/api/alerts/{flooded['id']}")["state"] != "resolved"


def test_an_alert_no_sensor_backs_is_resolved_with_its_reason(running: Running) -> None:
    now = datetime.now(UTC)
    running.sql("INSERT INTO alerts (id, hazard, severity, state, zone_id, raised, updated, "
                "title, open_key) VALUES ('AL-FO1', 'falling_object', 2, 'active', 'fz-01', "
                "%s, %s, 'object from a tower', 'fz-01|falling_object')", now, now)
    r = running["operator"].post("/api/alerts/AL-FO1/resolve",
                                 json={"reason": "a flowerpot; the owner was spoken to"})
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "resolved"
    assert r.json()["history"][-1]["reason"] == "a flowerpot; the owner was spoken to"


def test_the_audit_history_cannot_be_rewritten(running: Running,
                                               flooded: dict[str, Any]) -> None:
    running["operator"].post(f"/api/alerts/{flooded['id']}/acknowledge")
    assert running.sql("SELECT count(*) FROM alert_history")[0][0] >= 1
    for statement in ("UPDATE alert_history SET actor = 'mallory'", "DELETE FROM alert_history",
                      "UPDATE work_order_history SET actor = 'mallory'"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="audit record"):
            running.sql(statement)


# --- tokens and sessions ---------------------------------------------------------------------


def test_token_contract_expiry_and_disabling(running: Running) -> None:
    ensure_user(running.db_url, "temp-op", "operator")
    r = httpx.post(running.url + "/api/token", data={
        "grant_type": "password", "username": "temp-op", "password": PASSWORD})
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"access_token", "token_type", "expires_in"}
    assert body["token_type"] == "bearer" and body["expires_in"] == 3600
    wrong = httpx.post(running.url + "/api/token", data={
        "grant_type": "password", "username": "temp-op", "password": "not it at all"})
    assert wrong.status_code == 401
    token = body["access_token"]
    auth = {"Authorization": f"Bearer {token}"}
    assert httpx.get(running.url + "/api/alerts", headers=auth).status_code == 200
    # Expired tokens are refused.
    with psycopg.connect(running.db_url, autocommit=True) as conn:
        old = users.issue(conn, "temp-op", "bearer", timedelta(seconds=-1))
    assert httpx.get(running.url + "/api/alerts", headers={
        "Authorization": f"Bearer {old.token}"}).status_code == 401
    # Disabling a user ends its tokens at once.
    with psycopg.connect(running.db_url, autocommit=True) as conn:
        users.disable_user(conn, "temp-op")
    assert httpx.get(running.url + "/api/alerts", headers=auth).status_code == 401
    again = httpx.post(running.url + "/api/token", data={
        "grant_type": "password", "username": "temp-op", "password": PASSWORD})
    assert again.status_code == 401


def test_a_token_can_be_revoked_by_its_owner_only(running: Running) -> None:
    ensure_user(running.db_url, "revoker", "viewer")
    mine = token_for(running.url, "revoker")
    theirs = running["operator"]
    r = httpx.post(running.url + "/api/token/revoke", data={"token": theirs.headers[
        "Authorization"].split()[1]}, headers={"Authorization": f"Bearer {mine}"})
    assert r.status_code == 200
    assert theirs.get("/api/alerts").status_code == 200, "another user's token stays"
    r = httpx.post(running.url + "/api/token/revoke", data={"token": mine},
                   headers={"Authorization": f"Bearer {mine}"})
    assert r.status_code == 200
    assert httpx.get(running.url + "/api/alerts",
                     headers={"Authorization": f"Bearer {mine}"}).status_code == 401


def session(running: Running, role: str = "operator") -> tuple[httpx.Client, str]:
    """A browser-like client logged in to the console: the cookie and the CSRF token."""
    name = ROLE_USERS[role][0]
    ensure_user(running.db_url, name, role, *ROLE_USERS[role][1:])
    client = httpx.Client(base_url=running.url, timeout=10)
    r = client.post("/api/session", data={"username": name, "password": PASSWORD},
                    headers={"Origin": running.url})
    assert r.status_code == 200, r.text
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    return client, r.json()["csrf_token"]


def test_a_session_needs_its_csrf_token_and_a_same_origin(running: Running,
                                                          flooded: dict[str, Any]) -> None:
    client, csrf = session(running)
    with contextlib.closing(client):
        me = client.get("/api/session").json()
        assert me["user"] == ROLE_USERS["operator"][0] and me["csrf_token"] == csrf
        assert me["may"]["alerts"] == ["acknowledge", "resolve"]
        # An unknown alert: 404 once the request gets past the guards.
        url, body = "/api/alerts/AL-999999/acknowledge", {"reason": "seen"}
        no_token = client.post(url, json=body)
        assert no_token.status_code == 403 and "CSRF" in no_token.json()["detail"]
        assert client.post(url, json=body, headers={"X-CSRF-Token": "guess"}).status_code == 403
        cross = client.post(url, json=body, headers={"X-CSRF-Token": csrf,
                                                     "Origin": "http://evil.example"})
        assert cross.status_code == 403 and "Origin" in cross.json()["detail"]
        ok = client.post(url, json=body, headers={"X-CSRF-Token": csrf, "Origin": running.url})
        assert ok.status_code == 404, ok.text
        assert client.get(f"/api/alerts/{flooded['id']}").status_code == 200  # reads need none
        # The cookie is not a bearer token, and a bearer token is not a cookie.
        token = client.cookies["citywatch_session"]
        assert httpx.get(running.url + "/api/alerts", headers={
            "Authorization": f"Bearer {token}"}).status_code == 401
        # Logging out ends the session for good.
        assert client.delete("/api/session", headers={"X-CSRF-Token": csrf}).status_code == 204
        assert httpx.get(running.url + "/api/alerts",
                         cookies={"citywatch_session": token}).status_code == 401


def test_the_console_page_sends_a_stranger_to_the_login(running: Running) -> None:
    r = httpx.get(running.url + "/", timeout=10)
    assert r.status_code == 303 and r.headers["location"] == "/login"
    page = httpx.get(running.url + "/login", timeout=10)
    assert page.status_code == 200 and 'id="login-form"' in page.text
    client, _csrf = session(running, "viewer")
    with contextlib.closing(client):
        assert client.get("/").status_code == 200


def test_failed_logins_are_rate_limited_per_user(running: Running) -> None:
    ensure_user(running.db_url, "guessed", "viewer")
    codes = [httpx.post(running.url + "/api/token", data={
        "grant_type": "password", "username": "guessed", "password": f"guess-{i}"}).status_code
        for i in range(3)]
    assert codes == [401, 401, 401]
    r = httpx.post(running.url + "/api/token", data={
        "grant_type": "password", "username": "guessed", "password": PASSWORD})
    assert r.status_code == 429
    assert 1 <= int(r.headers["retry-after"]) <= 60
    # Another user from the same address is not held up by it.
    assert token_for(running.url, ROLE_USERS["viewer"][0])


# --- web hygiene -----------------------------------------------------------------------------


def test_security_headers_and_no_inline_script(running: Running) -> None:
    for path in ("/login", "/api/health", "/login.js"):
        r = httpx.get(running.url + path, timeout=10)
        csp = r.headers["content-security-policy"]
        script = next(p for p in csp.split(";") if p.strip().startswith("script-src"))
        assert "'unsafe-inline'" not in script and "'self'" in script, path
        assert "frame-ancestors 'none'" in csp
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["referrer-policy"]
    for page in STATIC_DIR.glob("*.html"):
        html = page.read_text(encoding="utf-8")
        assert "<script>" not in html and " on" + "click=" not in html, page.name
    assert running["viewer"].get("/api/alerts").headers["cache-control"] == "no-store"


def test_host_header_and_body_size_are_checked(running: Running) -> None:
    r = httpx.get(running.url + "/api/health", headers={"Host": "evil.example"})
    assert r.status_code == 400
    op = running["operator"]
    big = op.post("/api/alerts/AL-000001/acknowledge", content=b"{" + b" " * 70_000 + b"}",
                  headers={"Content-Type": "application/json"})
    assert big.status_code == 413

    def chunks() -> Iterator[bytes]:
        for _ in range(80):
            yield b" " * 1000

    chunked = op.post("/api/alerts/AL-000001/acknowledge", content=chunks(),
                      headers={"Content-Type": "application/json"})
    assert chunked.status_code == 413


def test_open311_is_public_and_says_nothing_internal(running: Running,
                                                     flooded: dict[str, Any]) -> None:
    reqs = httpx.get(running.url + "/open311/v2/requests.json", timeout=10)
    assert reqs.status_code == 200
    text = reqs.text
    for secret in ("drainage-1", "grid-", "team_id", "test-", "mallory", "seen on camera"):
        assert secret not in text, secret
    assert httpx.get(running.url + f"/api/alerts/{flooded['id']}/cap").status_code == 401


# --- event streams ---------------------------------------------------------------------------


def test_stream_caps_hold_with_300_idle_streams_while_the_api_answers(
        running: Running, record_property: Any) -> None:
    hub = running.service._server.config.app.state.stream_hub  # type: ignore[union-attr]
    op, viewer = running["operator"], running["viewer"]
    limits = httpx.Limits(max_connections=STREAMS + 10, max_keepalive_connections=0)
    with httpx.Client(base_url=running.url, timeout=30, limits=limits,
                      headers=op.headers) as pool, contextlib.ExitStack() as streams:
        for _ in range(STREAMS):
            r = streams.enter_context(pool.stream("GET", "/api/stream"))
            assert r.status_code == 200
        wait_for("300 streams open", lambda: hub.open_streams == STREAMS, timeout=30)
        over = httpx.get(running.url + "/api/stream", headers=op.headers, timeout=10)
        assert over.status_code == 429, "beyond the per-user cap"
        last = streams.enter_context(httpx.stream("GET", running.url + "/api/stream",
                                                  headers=viewer.headers, timeout=30))
        assert last.status_code == 200
        full = httpx.get(running.url + "/api/stream",
                         headers=running["admin"].headers, timeout=10)
        assert full.status_code == 503 and full.headers["retry-after"]
        polls = hub.polls
        started = time.perf_counter()
        answered = viewer.get("/api/alerts")
        latency_ms = (time.perf_counter() - started) * 1000
        assert answered.status_code == 200
        record_property("alerts_latency_ms_with_301_streams", round(latency_ms, 1))
        print(f"GET /api/alerts with {hub.open_streams} open streams: {latency_ms:.1f} ms")
        # One poller for all of them: the database is asked a few times, not 301 times a poll.
        wait_for("two more polls", lambda: hub.polls >= polls + 2, timeout=10)
        assert hub.polls - polls < 20
    wait_for("every stream closed", lambda: hub.open_streams == 0, timeout=30)


# --- what the OpenAPI document promises ------------------------------------------------------


def test_the_funnel_takes_only_real_days_it_can_have_data_for(running: Running) -> None:
    viewer = running["viewer"]
    # Year 1 began before the first UTC instant Python knows (a 500 once); 0 was read as 1970.
    for day in ("0001-01-01", "9999-12-31", "0", "2026-02-30", "2026-1-5", "yesterday"):
        r = viewer.get("/api/funnel", params={"day": day})
        assert r.status_code == 422, (day, r.text)
        assert r.json()["detail"][0]["loc"] == ["query", "day"]
    ok = viewer.get("/api/funnel", params={"day": "2026-11-23"})
    assert ok.status_code == 200 and ok.json()["day"] == "2026-11-23"


def test_metrics_are_declared_as_the_text_they_are(running: Running) -> None:
    spec = httpx.get(running.url + "/openapi.json", timeout=10).json()
    declared = spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert list(declared) == ["text/plain"]
    assert httpx.get(running.url + "/metrics").headers["content-type"].startswith("text/plain")
    # Every /api operation declares the refusals it can give.
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            if path.startswith("/api/") and (method, path) != ("get", "/api/health"):
                assert {"401", "503"} <= set(op["responses"]), (method, path)
