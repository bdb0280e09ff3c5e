"""Web hygiene around the whole API (alerts.http_guard), on a small ASGI app: Host and Origin
checks, the body cap (with and without Content-Length) and the security headers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from alerts.http_guard import HttpGuard, default_hosts, host_name


async def echo(request: Request) -> Response:
    return PlainTextResponse(await request.body())


async def data(_request: Request) -> Response:
    return JSONResponse({"ok": True})


class Client:
    """Requests straight into the guarded app (no sockets), one event loop per request."""

    def __init__(self, app: Any) -> None:
        self.transport = httpx.ASGITransport(app=app)

    def request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        async def go() -> httpx.Response:
            async with httpx.AsyncClient(transport=self.transport,
                                         base_url="http://testserver") as c:
                r = await c.request(method, path, **kw)
                await r.aread()
                return r
        return asyncio.run(go())

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return self.request("GET", path, **kw)

    def post(self, path: str, **kw: Any) -> httpx.Response:
        return self.request("POST", path, **kw)


@pytest.fixture
def client() -> Client:
    app = Starlette(routes=[Route("/echo", echo, methods=["POST"]),
                            Route("/api/data", data), Route("/docs", data)])
    return Client(HttpGuard(app, allowed_hosts={"testserver"}, max_body=1024,
                           csp_for={"/docs": "default-src 'self'; frame-ancestors 'none'"}))


def test_only_the_served_host_is_answered(client: Client) -> None:
    assert client.get("/api/data").status_code == 200
    r = client.get("/api/data", headers={"Host": "rebound.example:8080"})
    assert r.status_code == 400 and "rebound.example" in r.json()["detail"]


def test_a_change_from_another_site_is_refused(client: Client) -> None:
    assert client.post("/echo", content=b"x", headers={"Origin": "http://testserver"}).text == "x"
    for origin in ("http://evil.example", "null", "https://testserver.evil.example"):
        r = client.post("/echo", content=b"x", headers={"Origin": origin})
        assert r.status_code == 403, origin
    # A GET is not a change, and a program sends no Origin at all.
    assert client.get("/api/data", headers={"Origin": "http://evil.example"}).status_code == 200
    assert client.post("/echo", content=b"y").text == "y"


def test_bodies_over_the_cap_are_refused_with_or_without_a_length(client: Client) -> None:
    assert client.post("/echo", content=b"a" * 1024).status_code == 200
    assert client.post("/echo", content=b"a" * 1025).status_code == 413

    def chunks(n: int) -> AsyncIterator[bytes]:
        async def gen() -> AsyncIterator[bytes]:
            for _ in range(n):
                yield b"b" * 100
        return gen()

    assert client.post("/echo", content=chunks(11)).status_code == 413
    small = client.post("/echo", content=chunks(3))
    assert small.status_code == 200 and small.text == "b" * 300


def test_security_headers_on_every_answer(client: Client) -> None:
    for r in (client.get("/api/data"), client.post("/echo", content=b"a" * 2000),
              client.get("/api/data", headers={"Host": "x.example"})):
        csp = r.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp
        assert "frame-ancestors 'none'" in csp
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["x-frame-options"] == "DENY"
    assert client.get("/api/data").headers["cache-control"] == "no-store"
    assert client.get("/docs").headers["content-security-policy"].startswith("default-src 'self'")
    assert "script-src" not in client.get("/docs").headers["content-security-policy"]


@pytest.mark.parametrize(("header", "name"), [
    ("example.org:8080", "example.org"), ("Example.ORG", "example.org"), ("[::1]:8080", "::1"),
    ("127.0.0.1", "127.0.0.1"), ("::1", "::1")])
def test_host_names(header: str, name: str) -> None:
    assert host_name(header) == name


def test_default_hosts() -> None:
    assert default_hosts("127.0.0.1") == {"127.0.0.1", "localhost", "::1"}
    assert default_hosts("10.1.2.3") == {"10.1.2.3"}
    assert default_hosts("0.0.0.0") is None  # every interface: any name
