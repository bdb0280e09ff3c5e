"""Web hygiene for every request and response (an ASGI middleware around the whole API).

- ``Host`` must name this server (``http.allowed_hosts``; by default the served host): a page on
  another name that resolves here (DNS rebinding) gets 400.
- A POST, PUT, PATCH or DELETE whose ``Origin`` is another site gets 403, whatever it carries;
  with the session's CSRF token (``alerts.auth``) and SameSite=Strict cookies this is the third
  guard against cross-site requests.
- Request bodies over ``max_body`` bytes get 413 before the application reads them.
- Every response gets a Content-Security-Policy without inline script, ``nosniff``,
  ``frame-ancestors 'none'`` (and X-Frame-Options for old browsers), a Referrer-Policy, and
  ``Cache-Control: no-store`` on API answers that did not choose their own.

Pure ASGI (no ``BaseHTTPMiddleware``), so event streams pass through unbuffered.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from typing import Final
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

CONSOLE_CSP: Final = ("default-src 'self'; script-src 'self'; style-src 'self'; "
                      "img-src 'self' data:; connect-src 'self'; font-src 'self'; "
                      "object-src 'none'; base-uri 'none'; form-action 'self'; "
                      "frame-ancestors 'none'")
UNSAFE_METHODS: Final = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_HEADERS: Final = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
    (b"cross-origin-opener-policy", b"same-origin"),
)


def host_name(host: str) -> str:
    """``example.org:8080`` -> ``example.org``; ``[::1]:8080`` -> ``::1``."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def default_hosts(served: str) -> frozenset[str] | None:
    """The host names to accept when none are configured: the served address, and the loopback
    names when it is a loopback address; None (any) when it listens on every interface."""
    served = host_name(served)
    if served in ("0.0.0.0", "::", ""):
        return None
    if served in ("127.0.0.1", "localhost", "::1"):
        return frozenset({"127.0.0.1", "localhost", "::1"})
    return frozenset({served})


class HttpGuard:
    def __init__(self, app: ASGIApp, *, allowed_hosts: Collection[str] | None,
                 max_body: int = 65536, csp: str = CONSOLE_CSP,
                 csp_for: Mapping[str, str] | None = None) -> None:
        """``allowed_hosts`` None or containing '*': any Host. ``csp_for``: a policy per exact
        path instead of ``csp`` (the API docs page needs its own)."""
        self.app = app
        hosts = None if allowed_hosts is None else {h.lower() for h in allowed_hosts}
        self.allowed_hosts = None if hosts is None or "*" in hosts else frozenset(hosts)
        self.max_body = max_body
        self.csp = csp.encode()
        self.csp_for = {p: v.encode() for p, v in (csp_for or {}).items()}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        host = headers.get(b"host", b"").decode("latin-1")
        if self.allowed_hosts is not None and host_name(host) not in self.allowed_hosts:
            await _answer(send, 400, f"host {host!r} is not served here")
            return
        method = scope["method"]
        origin = headers.get(b"origin")
        if method in UNSAFE_METHODS and origin is not None:
            netloc = urlsplit(origin.decode("latin-1")).netloc.lower()
            if netloc != host.lower():
                await _answer(send, 403, "cross-site request refused: its Origin "
                              f"{origin.decode('latin-1')!r} is not this site")
                return
        length = headers.get(b"content-length")
        if length is not None:
            try:
                too_big = int(length) > self.max_body
            except ValueError:
                await _answer(send, 400, "Content-Length is not a number")
                return
            if too_big:
                await _answer(send, 413, f"request body over {self.max_body} bytes")
                return
        elif method in UNSAFE_METHODS:
            # No length given (chunked): read it here, within the cap, and hand it on.
            chunks: list[bytes] = []
            size = 0
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    break
                chunks.append(message.get("body", b""))
                size += len(chunks[-1])
                if size > self.max_body:
                    await _answer(send, 413, f"request body over {self.max_body} bytes")
                    return
                if not message.get("more_body", False):
                    break
            receive = _replay(b"".join(chunks), receive)
        policy = self.csp_for.get(scope["path"], self.csp)
        api = scope["path"].startswith("/api/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                out = list(message.get("headers", []))
                present = {k.lower() for k, _v in out}
                out.append((b"content-security-policy", policy))
                out += [(k, v) for k, v in _HEADERS if k not in present]
                if api and b"cache-control" not in present:
                    out.append((b"cache-control", b"no-store"))
                message = {**message, "headers": out}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # then the disconnect, when it comes

    return replay


async def _answer(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"content-security-policy", CONSOLE_CSP.encode()), *_HEADERS,
        (b"cache-control", b"no-store")]})
    await send({"type": "http.response.body", "body": body})
