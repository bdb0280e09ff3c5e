"""The error bodies the HTTP API answers with, as models, so that ``/openapi.json`` declares every
status code an operation can give and what its body looks like."""

from __future__ import annotations

from typing import Any, Final

from pydantic import BaseModel


class Problem(BaseModel):
    """Why a request was refused, in plain words."""

    detail: str


class Refused(BaseModel):
    """409: the action is not allowed now; ``state`` is where the alert or order is, ``evidence``
    the latest readings when the sensors still show the hazard."""

    detail: str
    state: str | None = None
    evidence: list[dict[str, Any]] | None = None


class GeoReportError(BaseModel):
    code: int
    description: str


Responses = dict[int | str, dict[str, Any]]


def _doc(description: str, model: type[BaseModel] = Problem) -> dict[str, Any]:
    return {"model": model, "description": description}


UNAUTHORIZED: Final[Responses] = {
    401: _doc("not logged in: no token or session, or an expired one")}
FORBIDDEN: Final[Responses] = {
    403: _doc("outside the role, or a session request without its CSRF token")}
UNAVAILABLE: Final[Responses] = {503: _doc("database unavailable")}
NOT_FOUND: Final[Responses] = {404: _doc("no such alert, work order or zone")}
REFUSED: Final[Responses] = {
    409: _doc("not allowed in the current state, or the sensors still show the hazard (with the "
              "evidence)", Refused)}
RATE_LIMITED: Final[Responses] = {
    429: _doc("too many attempts; try again after Retry-After seconds")}
BAD_BODY: Final[Responses] = {400: _doc("the body is not valid JSON (or form data)")}
# Every authenticated read.
READ: Final[Responses] = {**UNAUTHORIZED, **FORBIDDEN, **UNAVAILABLE}
# Every authenticated action.
ACT: Final[Responses] = {**READ, **NOT_FOUND, **REFUSED, **BAD_BODY}
GEOREPORT: Final[Responses] = {
    400: {"model": list[GeoReportError], "description": "a bad query (GeoReport error list)"},
    503: {"model": list[GeoReportError], "description": "database unavailable"},
}
