"""The broker's access, wired: the credentials registry and the configuration to broker files.

Which identity an id is comes from ``config.yaml`` (its devices and teams, the engine's
``broker.client_id``) and the registry (gateways); the rules for each are ``sensing.access``'s.
``citywatch run`` issues the engine's secret at every start (it is never stored) and the simulated
fleet's secrets once, kept in a 0600 file in the data directory for the next start.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg

from citywatch import embedded
from citywatch.config import Config
from sensing import credentials
from sensing.access import Member, broker_files
from sensing.credentials import IdentityKind
from simulators.credentials import FleetCredentials
from simulators.errors import SimulatorError

log = logging.getLogger(__name__)

Conn = psycopg.Connection[Any]
SIM_GATEWAY_PREFIX = "sim-gateway-"


class AccessError(Exception):
    """An id cannot be given credentials; the message says why."""


def identity_kind(config: Config, identity: str, conn: Conn | None = None) -> IdentityKind:
    """What ``identity`` is: a configured device or team, the engine, or a registered gateway."""
    if identity == config.broker.client_id:
        return "service"
    if identity in device_kinds(config, conn):
        return "device"
    if any(t.id == identity for t in config.teams):
        return "team"
    if conn is not None:
        found = credentials.find(conn, identity)
        if found is not None and found.kind == "gateway":
            return "gateway"
    raise AccessError(
        f"unknown id {identity!r}: not a device or team of the configuration, not the engine "
        f"(broker.client_id {config.broker.client_id!r}) and not a registered gateway "
        "(citywatch device gateway ID DEVICE...)")


def device_kinds(config: Config, conn: Conn | None = None) -> dict[str, str]:
    """Device id -> kind: the configuration's devices and, given the database, with the
    registry's run-time changes (devices added, changed or retired through the API)."""
    kinds = {d.id: d.kind for d in config.devices}
    if conn is None:
        return kinds
    from citywatch.device_admin import merge
    from sensing import device_registry

    row = conn.execute("SELECT to_regclass('device_registry') IS NOT NULL").fetchone()
    if row is None or not row[0]:
        return kinds
    return {d.id: d.kind for d in merge(config.devices, device_registry.overlay(conn))}


def members(conn: Conn) -> list[Member]:
    """The enabled identities of the registry, as the broker files need them."""
    return [Member(i.id, i.kind, i.secret_hash, tuple(i.devices))
            for i in credentials.identities(conn) if not i.disabled]


def write_broker_files(conn: Conn, config: Config, out_dir: Path,
                       kinds: Mapping[str, str] | None = None) -> int:
    """Write ``passwd`` and ``acl`` (Mosquitto's password_file and acl_file) into ``out_dir``;
    returns how many identities may connect. ``kinds``: the devices (id -> kind) when the
    caller holds the registry already (the running service), else read from config and DB."""
    found = members(conn)
    passwords, acl = broker_files(found, device_kinds(config, conn) if kinds is None else kinds)
    embedded.write_access_files(out_dir, passwords, acl)
    return len(found)


def refresh_embedded(conn: Conn, config: Config, broker_dir: Path,
                     kinds: Mapping[str, str] | None = None) -> str | None:
    """Rewrite the embedded broker's files and make it reread them if it runs (its kind, or
    None when no embedded broker runs from ``broker_dir``)."""
    write_broker_files(conn, config, broker_dir, kinds)
    return embedded.reload_broker(broker_dir)


def issue(conn: Conn, config: Config, identity: str, now: datetime) -> str:
    kind = identity_kind(config, identity, conn)
    devices: Sequence[str] = ()
    if kind == "gateway":
        found = credentials.find(conn, identity)
        devices = () if found is None else found.devices
    return credentials.issue(conn, identity, kind, now, devices=devices)


def issue_gateway(conn: Conn, config: Config, gateway: str, devices: Sequence[str],
                  now: datetime) -> str:
    """Register ``gateway`` for ``devices`` (replacing its list) and issue its secret."""
    kinds = device_kinds(config, conn)
    unknown = [d for d in devices if d not in kinds]
    if unknown:
        raise AccessError(f"gateway {gateway}: {', '.join(unknown[:5])} are not devices of the "
                          "configuration")
    if not devices:
        raise AccessError(f"gateway {gateway}: name at least one device")
    try:
        taken = identity_kind(config, gateway, conn)
    except AccessError:
        taken = "gateway"
    if taken != "gateway":
        raise AccessError(f"{gateway!r} is a {taken}; a gateway needs an id of its own")
    return credentials.issue(conn, gateway, "gateway", now, devices=devices)


def simulator_gateways(device_ids: Sequence[str], per_link: int) -> dict[str, list[str]]:
    """The gateways of a simulated fleet on shared connections, one per connection."""
    from simulators.links import shared_groups

    return {f"{SIM_GATEWAY_PREFIX}{i}": [device_ids[d] for d in group]
            for i, group in enumerate(shared_groups(len(device_ids), per_link))}


def fleet_credentials(conn: Conn, config: Config, path: Path, now: datetime, *,
                      gateways: Mapping[str, Sequence[str]] | None = None) -> FleetCredentials:
    """Secrets for every configured device and team (and ``gateways``) of the simulated fleet:
    those in ``path`` that the registry still accepts, new ones for the rest; saved to ``path``.
    """
    try:
        stored = FleetCredentials.load(path) if path.exists() else FleetCredentials()
    except SimulatorError as exc:
        log.warning("ignoring the simulator's credentials file: %s", exc)
        stored = FleetCredentials()
    registry = {i.id: i for i in credentials.identities(conn)}
    gateways = dict(gateways or {})
    wanted: list[tuple[str, IdentityKind]] = [(d.id, "device") for d in config.devices]
    wanted += [(t.id, "team") for t in config.teams]
    wanted += [(g, "gateway") for g in gateways]
    secrets: dict[str, str] = {}
    issued = 0
    for identity, kind in wanted:
        old = stored.secrets.get(identity)
        known = registry.get(identity)
        members_now = list(gateways.get(identity, ()))
        if (old is not None and known is not None and not known.disabled
                and known.kind == kind and list(known.devices) == members_now
                and credentials.verify_secret(old, known.secret_hash)):
            secrets[identity] = old
            continue
        secrets[identity] = credentials.issue(conn, identity, kind, now, devices=members_now)
        issued += 1
    if issued:
        log.info("issued broker credentials for %d simulated devices and teams", issued)
    fleet = FleetCredentials(secrets, {g: tuple(m) for g, m in gateways.items()})
    fleet.save(path)
    return fleet
