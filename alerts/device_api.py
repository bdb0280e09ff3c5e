"""The device registry over HTTP (CONTRACT section 6: admins manage devices).

- ``GET /api/registry/devices?after=&limit=&kind=``: a page of the registry, by id (any logged-in
  role reads it); ``next`` is the ``after`` of the next page, null on the last;
- ``GET /api/registry/devices/{id}``: one device with its zones and its audit history;
- ``POST /api/registry/devices`` (admin): add a device; 201 with its broker secret, shown once;
- ``PATCH /api/registry/devices/{id}`` (admin): change its kind, position or name;
- ``DELETE /api/registry/devices/{id}`` (admin): retire it: its messages are refused from then on.

A change takes effect in the running service at once (``DeviceRegistry``, implemented by the
composition root): the decoder, the zones it is placed in, the rules, and the broker's
credentials and ACL. A bad body is a 422 naming the key and what was expected; an id that is
taken (by a device, a team, a gateway or the engine) or already retired is a 409; every change is
audited with the logged-in identity, never a field of the body.

No ``from __future__ import annotations``: FastAPI reads the annotations at run time.
"""

from collections.abc import Callable
from typing import Annotated, Any, Literal, Protocol

from fastapi import APIRouter, Body, Depends, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, create_model

from alerts.identity import Identity
from alerts.lifecycle import AlertsError, NotFound
from alerts.responses import ACT, NOT_FOUND, READ, Responses

DEVICE_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
KIND_PATTERN = r"^[a-z][a-z0-9_]{0,31}$"
NAME_PATTERN = r"^[^\x00]*$"  # PostgreSQL text cannot hold NUL
Lon = Annotated[float, Field(ge=-180, le=180, strict=True, description="longitude, WGS 84")]
Lat = Annotated[float, Field(ge=-90, le=90, strict=True, description="latitude, WGS 84")]
DeviceId = Annotated[str, PathParam(pattern=DEVICE_ID_PATTERN)]


class NewDevice(BaseModel):
    """A device to add. ``kind`` is a built-in kind or one a plug-in registers."""

    model_config = ConfigDict(extra="forbid")
    id: str = Field(pattern=DEVICE_ID_PATTERN, description="the MQTT username and topic level")
    kind: str = Field(pattern=KIND_PATTERN, description="camera, water, rain, traffic, grid...")
    position: tuple[Lon, Lat] = Field(description="[lon, lat] in WGS 84")
    name: str = Field(default="", max_length=200, pattern=NAME_PATTERN)


class DevicePatch(BaseModel):
    """What to change; keys left out stay as they are."""

    model_config = ConfigDict(extra="forbid")
    kind: str | None = Field(default=None, pattern=KIND_PATTERN)
    position: tuple[Lon, Lat] | None = None
    name: str | None = Field(default=None, max_length=200, pattern=NAME_PATTERN)


class RegistryConflict(AlertsError):
    """The id is taken, or the device is retired (409)."""


class InvalidDevice(AlertsError):
    """A value the body's schema allows but the registry does not (422), by key."""

    def __init__(self, key: str, message: str, value: Any = None) -> None:
        super().__init__(f"{key}: {message}")
        self.key, self.message, self.value = key, message, value


class DeviceRegistry(Protocol):
    """The running service's registry (``citywatch.device_admin``)."""

    @property
    def kinds(self) -> frozenset[str]:
        """The device kinds the decoder knows (built in and from plug-ins)."""
        ...

    def page(self, after: str | None, limit: int, kind: str | None
             ) -> tuple[list[dict[str, Any]], str | None]: ...

    def describe(self, device_id: str) -> dict[str, Any]: ...

    def add(self, device: NewDevice, actor: str) -> dict[str, Any]: ...

    def change(self, device_id: str, patch: DevicePatch, actor: str) -> dict[str, Any]: ...

    def retire(self, device_id: str, actor: str) -> dict[str, Any]: ...


def _admin(who: Identity, what: str) -> None:
    if who.role != "admin":
        raise HTTPException(403, f"{who.user} ({who.role}) may not {what}: admins manage "
                            "devices")


INVALID: Responses = {422: {"description": "a value is not what was expected (the key and why)"}}


def device_router(registry: DeviceRegistry,
                  identity: Callable[..., Identity]) -> APIRouter:
    router = APIRouter()
    Me = Annotated[Identity, Depends(identity)]  # noqa: N806 (a type alias)
    # The kinds known when the app is made, so that /openapi.json lists them and a wrong one is
    # a plain validation error (422 naming the key).
    kind: Any = Literal.__getitem__(tuple(sorted(registry.kinds))) if registry.kinds else str
    new_device: Any = create_model("NewDevice", __base__=NewDevice,
                                   kind=(kind, Field(description="the device's kind")))
    device_patch: Any = create_model("DevicePatch", __base__=DevicePatch,
                                     kind=(kind | None, Field(default=None)))

    @router.get("/api/registry/devices", responses=READ)
    def page(_who: Me, after: Annotated[str | None, Query(pattern=DEVICE_ID_PATTERN)] = None,
             limit: Annotated[int, Query(ge=1, le=5000)] = 500,
             kind: Annotated[str | None, Query(pattern=KIND_PATTERN)] = None,
             ) -> dict[str, Any]:
        """A page of the registry by id: pass ``next`` as ``after`` for the next one."""
        devices, nxt = registry.page(after, limit, kind)
        return {"devices": devices, "next": nxt}

    @router.get("/api/registry/devices/{device_id}", responses={**READ, **NOT_FOUND})
    def one(device_id: DeviceId, _who: Me) -> dict[str, Any]:
        """One device: kind, position, name, zones, where it comes from, and its history."""
        return registry.describe(device_id)

    @router.post("/api/registry/devices", status_code=201, responses={**ACT, **INVALID})
    def add(who: Me, body: Annotated[new_device, Body()]) -> dict[str, Any]:
        """Add a device (admins). The answer holds its broker ``secret``, shown only here."""
        _admin(who, "add devices")
        return registry.add(body, who.user)

    @router.patch("/api/registry/devices/{device_id}", responses={**ACT, **INVALID})
    def change(device_id: DeviceId, who: Me, body: Annotated[device_patch, Body()]
               ) -> dict[str, Any]:
        """Change a device's kind, position or name (admins)."""
        _admin(who, "change devices")
        return registry.change(device_id, body, who.user)

    @router.delete("/api/registry/devices/{device_id}", responses=ACT)
    def retire(device_id: DeviceId, who: Me) -> dict[str, Any]:
        """Retire a device (admins): its credentials stop working and its messages are
        dead-lettered (``unknown_device``)."""
        _admin(who, "retire devices")
        return registry.retire(device_id, who.user)

    return router


def invalid_device_response(_request: Request, exc: InvalidDevice) -> JSONResponse:
    """FastAPI's own 422 shape, so a client reads one kind of validation error."""
    return JSONResponse({"detail": [{"loc": ["body", exc.key], "msg": exc.message,
                                     "type": "value_error", "input": exc.value}]},
                        status_code=422)


__all__ = [
    "DevicePatch",
    "DeviceRegistry",
    "InvalidDevice",
    "NewDevice",
    "NotFound",
    "RegistryConflict",
    "device_router",
    "invalid_device_response",
]
