"""Token and session checking: the one place that turns a request's credentials into an identity.

The API depends on ``Authenticator`` alone: ``verify(Credentials) -> Verified | None``. The one
here, ``LocalAuthenticator``, checks opaque tokens and console sessions against the users table
(``alerts.users``). A city's single sign-on replaces it with an implementation that verifies an
OpenID Connect access token (signature from the provider's JWKS, issuer, audience, expiry) and maps
its claims to an ``Identity`` (role, department, team), passed as ``ApiDeps.authenticator``; the
login routes of this module (``POST /api/token``, ``/api/session``) are then left out, and every
other route, the role checks and the audit stay as they are.

- A bearer token (``Authorization: Bearer``) from ``POST /api/token`` (the OAuth2 password grant)
  is for programs: no cookie, so no cross-site request can carry it, and no CSRF token is needed.
- The console logs in with ``POST /api/session`` and gets an HttpOnly, SameSite=Strict cookie and
  a CSRF token that it sends back in ``X-CSRF-Token`` on every POST and DELETE (synchronizer
  token, kept with the session). ``alerts.http_guard`` also refuses unsafe requests whose Origin is
  another site.
- Logins are rate-limited per client address and per user name (429 with ``Retry-After``).

FastAPI reads the handlers' annotations at run time, including local names: no
``from __future__ import annotations``.
"""

import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any, Literal, Protocol

import psycopg
from fastapi import APIRouter, Depends, Form, HTTPException, Request, Response, Security
from fastapi.security import APIKeyCookie, OAuth2PasswordBearer
from psycopg_pool import ConnectionPool, PoolTimeout
from pydantic import BaseModel, Field

from alerts import users
from alerts.identity import USER_NAME, Identity, permissions
from alerts.lifecycle import AlertsError
from alerts.ratelimit import RateLimit
from alerts.responses import BAD_BODY, RATE_LIMITED, UNAUTHORIZED, UNAVAILABLE, Problem

SESSION_COOKIE = "citywatch_session"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
Pool = ConnectionPool[psycopg.Connection[Any]]

_bearer = OAuth2PasswordBearer(
    tokenUrl="/api/token", auto_error=False,
    description="A token from POST /api/token (OAuth2 password grant).")
_cookie = APIKeyCookie(
    name=SESSION_COOKIE, auto_error=False,
    description="The console's session (POST /api/session); POST and DELETE also need the "
                f"session's CSRF token in {CSRF_HEADER}.")


@dataclass(frozen=True, slots=True)
class Credentials:
    bearer: str | None = None
    session: str | None = None


@dataclass(frozen=True, slots=True)
class Verified:
    identity: Identity
    via: Literal["bearer", "session"]
    csrf: str | None = None  # a session's CSRF token


class Authenticator(Protocol):
    """Turns credentials into an identity; None when they prove nothing."""

    def verify(self, credentials: Credentials) -> Verified | None: ...


class Unavailable(AlertsError):
    """The store that knows the users cannot be reached: 503, not 401."""


class Throttled(AlertsError):
    def __init__(self, retry_after: int) -> None:
        super().__init__(f"too many login attempts; try again in {retry_after} s")
        self.retry_after = retry_after


@dataclass(frozen=True)
class LoginLimits:
    per_address: int = 30  # attempts per minute
    failures_per_user: int = 5  # per minute


class LocalAuthenticator:
    """Users and tokens in our own PostgreSQL (``alerts.users``)."""

    def __init__(self, pool: Pool, *, wait_s: float = 5.0,
                 token_ttl: timedelta = timedelta(hours=1),
                 session_ttl: timedelta = timedelta(hours=12),
                 limits: LoginLimits = LoginLimits(),
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._pool = pool
        self._wait_s = wait_s
        self.ttl = {"bearer": token_ttl, "session": session_ttl}
        self._per_address = RateLimit(limits.per_address, 60, clock)
        self._per_user = RateLimit(limits.failures_per_user, 60, clock)

    def _call(self, fn: Callable[[psycopg.Connection[Any]], Any]) -> Any:
        try:
            with self._pool.connection(timeout=self._wait_s) as conn:
                return fn(conn)
        except (psycopg.OperationalError, PoolTimeout) as exc:
            raise Unavailable("database unavailable") from exc

    def verify(self, credentials: Credentials) -> Verified | None:
        token = credentials.bearer or credentials.session
        if not token:
            return None
        found: users.TokenOwner | None = self._call(lambda c: users.owner(c, token))
        if found is None:
            return None
        # A session token is good only as the cookie, and a bearer token only in the header:
        # a stolen cookie value pasted into a script gets nowhere without the CSRF token anyway,
        # and a bearer token never becomes a cookie a browser sends by itself.
        if credentials.bearer and found.kind != "bearer":
            return None
        if not credentials.bearer and found.kind != "session":
            return None
        return Verified(found.identity, found.kind, found.csrf)

    def login(self, name: str, password: str, kind: users.TokenKind,
              address: str) -> tuple[Identity, users.Grant] | None:
        """A new token for a right password; None for a wrong one. Raises ``Throttled``."""
        user_key = name.lower()
        wait = self._per_address.retry_after(address) or self._per_user.retry_after(user_key)
        if wait is not None:
            raise Throttled(wait)
        self._per_address.hit(address)
        who: Identity | None = self._call(lambda c: users.verify_password(c, name, password))
        if who is None:
            self._per_user.hit(user_key)
            return None
        grant: users.Grant = self._call(
            lambda c: users.issue(c, who.user, kind, self.ttl[kind]))
        return who, grant

    def logout(self, token: str) -> None:
        self._call(lambda c: users.revoke(c, token))

    def revoke_own(self, user: str, token: str) -> None:
        """Revoke ``token`` if it is ``user``'s; nothing for anybody else's or an unknown one."""
        def revoke(conn: psycopg.Connection[Any]) -> None:
            found = users.owner(conn, token)
            if found is not None and found.identity.user == user:
                users.revoke(conn, token)
        self._call(revoke)


class Access:
    """The dependencies protected routes use: ``verified`` (the identity and how it came) and
    ``identity``. 401 without credentials, 503 when they cannot be checked, 403 for a session's
    unsafe request without its CSRF token."""

    def __init__(self, authn: Authenticator) -> None:
        def verified(request: Request,
                     bearer: Annotated[str | None, Security(_bearer)] = None,
                     session: Annotated[str | None, Security(_cookie)] = None) -> Verified:
            try:
                found = authn.verify(Credentials(bearer, None if bearer else session))
            except Unavailable:
                raise HTTPException(503, "database unavailable") from None
            if found is None:
                raise HTTPException(401, "not logged in: send Authorization: Bearer TOKEN (from "
                                    "POST /api/token), or log in to the console",
                                    headers={"WWW-Authenticate": "Bearer"})
            if found.via == "session" and request.method not in SAFE_METHODS:
                sent = request.headers.get(CSRF_HEADER, "")
                if not found.csrf or not hmac.compare_digest(sent.encode(), found.csrf.encode()):
                    raise HTTPException(403, "a session request that changes something needs "
                                        f"the session's CSRF token in {CSRF_HEADER}")
            return found

        def identity(found: Annotated[Verified, Depends(verified)]) -> Identity:
            return found.identity

        self.verified = verified
        self.identity = identity


class TokenOut(BaseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"  # noqa: S105 (the OAuth2 token type, no secret)
    expires_in: int = Field(description="seconds")


class SessionOut(BaseModel):
    user: str
    role: str
    department: str | None
    team: str | None
    csrf_token: str | None = Field(
        description=f"send it in {CSRF_HEADER} with every POST and DELETE of this session; "
                    "null for a bearer token")
    may: dict[str, Any] = Field(description="what the role may do, for the console to offer")


def _session_out(who: Identity, csrf: str | None) -> SessionOut:
    return SessionOut(user=who.user, role=who.role, department=who.department, team=who.team,
                      csrf_token=csrf, may=permissions(who))


def _address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _throttled(exc: Throttled) -> HTTPException:
    return HTTPException(429, str(exc), headers={"Retry-After": str(exc.retry_after)})


_WRONG = "wrong user name or password, or the user is disabled"


def login_router(local: LocalAuthenticator, access: Access) -> APIRouter:
    """``POST /api/token`` (programs) and ``/api/session`` (the console's login and logout)."""
    router = APIRouter(tags=["access"])

    @router.post("/api/token", response_model=TokenOut,
                 responses={**UNAUTHORIZED, **RATE_LIMITED, **UNAVAILABLE, **BAD_BODY})
    def token(grant_type: Annotated[Literal["password"], Form()],  # noqa: ARG001 (the form's)
              username: Annotated[str, Form(pattern=USER_NAME.pattern)],
              password: Annotated[str, Form(min_length=1, max_length=users.MAX_PASSWORD)],
              request: Request,
              scope: Annotated[str, Form(max_length=200,  # noqa: ARG001 (OAuth2's; unused)
                                         description="ignored")] = "",
              ) -> TokenOut:
        """OAuth2 password grant: form fields ``grant_type=password``, ``username``,
        ``password``. The token goes in ``Authorization: Bearer`` until it expires."""
        try:
            got = local.login(username, password, "bearer", _address(request))
        except Throttled as exc:
            raise _throttled(exc) from None
        except Unavailable:
            raise HTTPException(503, "database unavailable") from None
        if got is None:
            raise HTTPException(401, _WRONG, headers={"WWW-Authenticate": "Bearer"})
        return TokenOut(access_token=got[1].token, expires_in=got[1].expires_in)

    @router.post("/api/session", response_model=SessionOut,
                 responses={**UNAUTHORIZED, **RATE_LIMITED, **UNAVAILABLE, **BAD_BODY})
    def login(username: Annotated[str, Form(pattern=USER_NAME.pattern)],
              password: Annotated[str, Form(min_length=1, max_length=users.MAX_PASSWORD)],
              request: Request, response: Response) -> SessionOut:
        """The console's login: sets the session cookie (HttpOnly, SameSite=Strict) and returns
        the CSRF token the page sends back with every change."""
        try:
            got = local.login(username, password, "session", _address(request))
        except Throttled as exc:
            raise _throttled(exc) from None
        except Unavailable:
            raise HTTPException(503, "database unavailable") from None
        if got is None:
            raise HTTPException(401, _WRONG)
        who, grant = got
        response.set_cookie(SESSION_COOKIE, grant.token, max_age=grant.expires_in, path="/",
                            httponly=True, samesite="strict",
                            secure=request.url.scheme == "https")
        response.headers["Cache-Control"] = "no-store"
        return _session_out(who, grant.csrf)

    @router.get("/api/session", response_model=SessionOut,
                responses={**UNAUTHORIZED, **UNAVAILABLE})
    def whoami(found: Annotated[Verified, Depends(access.verified)]) -> SessionOut:
        """Who is logged in, what the role may do, and (for a session) its CSRF token."""
        return _session_out(found.identity, found.csrf)

    @router.delete("/api/session", status_code=204, response_class=Response,
                   responses={**UNAUTHORIZED, 403: {"model": Problem,
                                                    "description": "no CSRF token"},
                              **UNAVAILABLE})
    def logout(_found: Annotated[Verified, Depends(access.verified)],
               session: Annotated[str | None, Security(_cookie)] = None) -> Response:
        """Log out of the console: the session cookie stops working at once. A bearer token
        is ended with POST /api/token/revoke instead."""
        if session:
            try:
                local.logout(session)
            except Unavailable:
                raise HTTPException(503, "database unavailable") from None
        out = Response(status_code=204)
        out.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
        return out

    @router.post("/api/token/revoke", status_code=200, response_class=Response,
                 responses={**UNAUTHORIZED, **UNAVAILABLE, **BAD_BODY})
    def revoke(found: Annotated[Verified, Depends(access.verified)],
               token: Annotated[str, Form(min_length=1, max_length=512)]) -> Response:
        """End one of your own bearer tokens (RFC 7009: 200 whether or not it was valid)."""
        try:
            local.revoke_own(found.identity.user, token)
        except Unavailable:
            raise HTTPException(503, "database unavailable") from None
        return Response(status_code=200)

    return router
