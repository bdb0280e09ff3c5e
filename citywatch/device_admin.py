"""The running service's device registry: the configuration's devices with the overlay of
``sensing.device_registry`` on top, changed at run time through ``alerts.device_api``.

A change is written (overlay row, audit line, the ``devices`` row, the device's broker
credentials) in one transaction on the pipeline's connection and under its lock, and applied to
what the running engine holds before the lock is let go: the decoder's known devices, placement in
the zones, the rules' registry (and, when retired, the rules' memory of the device) and the grid
worker locator. So no batch sees half a change. Then the broker's password and ACL files are
written again and the broker told to reread them (``on_access_change``): a new device can connect
with the secret the answer gave, a retired one cannot, and a message of it that still arrives is
dead-lettered as ``unknown_device``.
"""

from __future__ import annotations

import bisect
import logging
import threading
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from alerts.device_api import DevicePatch, InvalidDevice, NewDevice, NotFound, RegistryConflict
from citywatch.config import Config, Device
from citywatch.pipeline import Pipeline, WorkerLocator
from citywatch.placement import Placement
from rules.engine import Engine
from sensing import credentials
from sensing import device_registry as overlay_store
from sensing import store as sensing_store
from sensing.device_registry import Entry

log = logging.getLogger(__name__)

Conn = psycopg.Connection[Any]


def merge(config_devices: tuple[Device, ...], entries: list[Entry]) -> tuple[Device, ...]:
    """The registry a start begins with: the configured devices, each replaced by its overlay
    row if it has one, retired ones left out, added ones after them (by id)."""
    by_id = {e.id: e for e in entries}
    out = []
    for d in config_devices:
        e = by_id.pop(d.id, None)
        if e is None:
            out.append(d)
        elif e.retired is None:
            out.append(_device(e))
    out += [_device(e) for e in sorted(by_id.values(), key=lambda e: e.id) if e.retired is None]
    return tuple(out)


def _device(e: Entry) -> Device:
    return Device(id=e.id, kind=e.kind, position=(e.lon, e.lat), name=e.name)


@dataclass
class Runtime:
    """What a change must reach in the running service."""

    pipeline: Pipeline
    engine: Engine
    placement: Placement
    known: MutableMapping[str, str]  # the decoder's registry: device id -> kind (by reference)
    workers: WorkerLocator


class LiveRegistry:
    """``alerts.device_api.DeviceRegistry`` for the running service."""

    def __init__(self, config: Config, devices: tuple[Device, ...], kinds: Mapping[str, Any],
                 runtime: Runtime, clock: Callable[[], datetime], database_url: str,
                 on_access_change: Callable[[Conn, Mapping[str, str]], None] | None = None
                 ) -> None:
        self._config = config
        self._from_config = {d.id for d in config.devices}
        self._devices: dict[str, Device] = {d.id: d for d in devices}
        self._ids = sorted(self._devices)
        self._kinds = frozenset(kinds)
        self._rt = runtime
        self._clock = clock
        self._db = database_url
        self._on_access_change = on_access_change
        self._reserved = {t.id: "team" for t in config.teams}
        self._reserved[config.broker.client_id] = "the engine"
        self._lock = threading.Lock()  # one change at a time; readers take a snapshot

    # --- reads ----------------------------------------------------------------------------

    @property
    def kinds(self) -> frozenset[str]:
        return self._kinds

    def kinds_by_device(self) -> dict[str, str]:
        return {d: dev.kind for d, dev in self._devices.items()}

    def page(self, after: str | None, limit: int, kind: str | None
             ) -> tuple[list[dict[str, Any]], str | None]:
        ids, devices = self._ids, self._devices
        start = 0 if after is None else bisect.bisect_right(ids, after)
        out: list[dict[str, Any]] = []
        i = start
        while i < len(ids) and len(out) < limit:
            d = devices.get(ids[i])
            if d is not None and (kind is None or d.kind == kind):
                out.append(self._view(d))
            i += 1
        # Keyset paging: a full page names where the next starts (which may be empty).
        return out, (out[-1]["id"] if len(out) == limit and i < len(ids) else None)

    def describe(self, device_id: str) -> dict[str, Any]:
        with psycopg.connect(self._db, autocommit=True) as conn:
            lines = overlay_store.history(conn, device_id)
            entry = overlay_store.find(conn, device_id)
        d = self._devices.get(device_id)
        if d is not None:
            view = self._view(d)
        elif entry is not None and entry.retired is not None:
            view = {**entry.as_json(), "zone_ids": [], "source": "api",
                    "retired": _iso(entry.retired)}
        else:
            raise NotFound(f"no device {device_id!r}")
        view["history"] = [{"at": _iso(h.at), "actor": h.actor, "action": h.action,
                            "before": h.before, "after": h.after} for h in lines]
        return view

    def _view(self, d: Device) -> dict[str, Any]:
        return {"id": d.id, "kind": d.kind, "position": list(d.position), "name": d.name,
                "zone_ids": list(self._rt.placement.device_zones(d.id)),
                "source": "config" if self._config_device(d) else "api", "retired": None}

    def _config_device(self, d: Device) -> bool:
        return d.id in self._from_config

    # --- changes --------------------------------------------------------------------------

    def add(self, device: NewDevice, actor: str) -> dict[str, Any]:
        self._check_kind(device.kind)
        taken = self._reserved.get(device.id)
        if taken is not None:
            raise RegistryConflict(f"{device.id!r} is the id of {taken}; a device needs its own "
                                   "(it is the broker username)")
        new = Device(id=device.id, kind=device.kind, position=device.position, name=device.name)
        with self._lock:
            if device.id in self._devices:
                raise RegistryConflict(f"device {device.id!r} exists; change it with PATCH")
            secret = self._commit(new, "add", actor, None, issue=True)
        view = self._view(new)
        view["secret"] = secret
        return view

    def change(self, device_id: str, patch: DevicePatch, actor: str) -> dict[str, Any]:
        if patch.kind is not None:
            self._check_kind(patch.kind)
        with self._lock:
            old = self._devices.get(device_id)
            if old is None:
                raise NotFound(f"no device {device_id!r} (a retired one is added again "
                               "with POST)")
            new = Device(id=device_id, kind=patch.kind or old.kind,
                         position=patch.position or old.position,
                         name=old.name if patch.name is None else patch.name)
            if new != old:
                self._commit(new, "change", actor, old, issue=False)
        return self._view(new)

    def retire(self, device_id: str, actor: str) -> dict[str, Any]:
        with self._lock:
            old = self._devices.get(device_id)
            if old is None:
                raise NotFound(f"no device {device_id!r} (or it is retired already)")
            self._commit(old, "retire", actor, old, issue=False)
        view = self._view(old)
        view["retired"] = _iso(self._clock())
        return view

    def _check_kind(self, kind: str) -> None:
        if kind not in self._kinds:
            raise InvalidDevice("kind", f"expected one of {', '.join(sorted(self._kinds))} (a "
                                "plug-in registers others)", kind)

    def _commit(self, device: Device, action: overlay_store.Action, actor: str,
                old: Device | None, *, issue: bool) -> str | None:
        """Write the change and apply it to the running engine, under the pipeline's lock."""
        now = self._clock()
        retired = action == "retire"
        entry = Entry(device.id, device.kind, device.position[0], device.position[1],
                      device.name, now if retired else None, now, actor)
        rt = self._rt
        secret: list[str | None] = [None]

        def work(cur: psycopg.Cursor[Any], _evaluate: Any) -> None:
            conn = cur.connection
            overlay_store.save(conn, entry, action,
                               None if old is None else _as_json(old))
            if retired:
                conn.execute("DELETE FROM devices WHERE id = %s", (device.id,))
                credentials.disable(conn, device.id)
            else:
                zones = rt.placement.index.zones_at(*device.position)
                sensing_store.upsert_devices(conn, [sensing_store.DeviceSpec(
                    device.id, device.kind, device.position, zones)])
                if issue:
                    try:
                        secret[0] = credentials.issue(conn, device.id, "device", now)
                    except credentials.CredentialsError as exc:
                        raise RegistryConflict(str(exc)) from None
            # Still under the pipeline's lock and before the commit: the next batch sees it.
            self._apply(device, retired)

        try:
            rt.pipeline.run_local(work)
        except Exception:
            # The transaction rolled back: undo what was applied in memory, if it got that far.
            if old is not None:
                self._apply(old, False)
            else:
                self._apply(device, True)
            raise
        if retired:
            rt.pipeline.adopt(lambda s: rt.engine.retire_device(s, device.id))
        log.info("device %s %s by %s (%s at %s)", device.id,
                 {"add": "added", "change": "changed", "retire": "retired"}[action], actor,
                 device.kind, list(device.position))
        self._refresh_access()
        return secret[0]

    def _apply(self, device: Device, retired: bool) -> None:
        rt = self._rt
        if retired:
            rt.known.pop(device.id, None)
            rt.placement.remove(device.id)
            rt.engine.registry.pop(device.id, None)
            rt.workers.track(device.id, None)
            if self._devices.pop(device.id, None) is not None:
                self._ids = [i for i in self._ids if i != device.id]
            return
        site = rt.placement.put(device.id, device.kind, device.position)
        rt.engine.register_device(site)
        rt.known[device.id] = device.kind
        rt.workers.track(device.id, device.position if device.kind == "grid" else None)
        if device.id not in self._devices:
            ids = list(self._ids)  # a new list: a page being read keeps the old one
            bisect.insort(ids, device.id)
            self._ids = ids
        self._devices[device.id] = device

    def _refresh_access(self) -> None:
        if self._on_access_change is None:
            return
        try:
            with psycopg.connect(self._db, autocommit=True) as conn:
                self._on_access_change(conn, self.kinds_by_device())
        except Exception:  # the change is made; the broker catches up at the next one
            log.exception("could not rewrite the broker's access files")


def _as_json(d: Device) -> dict[str, Any]:
    return {"id": d.id, "kind": d.kind, "position": list(d.position), "name": d.name}


def _iso(ts: datetime | None) -> str | None:
    return None if ts is None else ts.isoformat(timespec="milliseconds").replace("+00:00", "Z")
