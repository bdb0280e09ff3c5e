"""``config.yaml``: read once at start, validated into typed objects.

Unknown keys are rejected and every error names the key, the value and what was expected.
Environment variables override the file as CONTRACT section 5 says.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Self

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from rules import registry
from rules.levels import LEVEL_NAMES, LevelName
from rules.params import RulesParams

DEVICE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
HOST_NAME = re.compile(r"\*|[A-Za-z0-9.-]{1,253}|\[?[0-9A-Fa-f:.]{2,45}\]?")
PLUGIN_PATH = re.compile(r"[A-Za-z_][\w.]*(:[A-Za-z_][\w.]*)?")
# libyaml's safe loader when PyYAML was built with it: the same documents, parsed 30x faster.
_SAFE_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
KINDS = ("camera", "water", "rain", "traffic", "grid")


class ConfigError(Exception):
    """The configuration is wrong; the message says where and how."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BrokerTlsConfig(_Strict):
    enabled: bool = Field(default=False, description="the embedded broker also listens with TLS; "
                          "its local CA is made on first start: {data-dir}/broker/tls/ca.crt")
    host: str = Field(default="127.0.0.1", description="address of the TLS listener "
                      "(0.0.0.0: every interface, for devices on other machines)")
    port: int = Field(default=8883, ge=1, le=65535)


class BrokerConfig(_Strict):
    url: str = Field(default="embedded", description="mqtt://user:pass@host:port, or 'embedded'")
    client_id: str = Field(default="citywatch-engine", description="stable id: persistent "
                           "session; also the engine's username on the embedded broker")
    ca_file: Path | None = Field(default=None, description="the CA certificate that signed an "
                                 "mqtts:// broker's certificate (default: the system's CAs); "
                                 "relative to this file")
    tls: BrokerTlsConfig = BrokerTlsConfig()
    session_expiry_s: int = Field(default=86400, ge=0, description="how long the broker keeps "
                                  "our session and queued messages while we are away")
    keepalive_s: int = Field(default=30, ge=5)
    receive_maximum: int = Field(default=1000, ge=1, le=65535,
                                 description="unacknowledged messages in flight to us")
    receiver: Literal["thread", "process"] = Field(
        default="process", description="where the engine's MQTT session runs: 'thread' (in the "
        "engine's process) or 'process' (a process of its own, so that reading the broker and "
        "the rules use both cores; BENCHMARKS.md, 'Both cores')")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if v != "embedded" and not re.match(r"^mqtts?://", v):
            raise ValueError("expected 'embedded' or a URL like mqtt://host:1883")
        return v


class DatabaseConfig(_Strict):
    url: str = Field(default="embedded", description="a libpq URI, or 'embedded'")
    batch_max: int = Field(default=500, ge=1, description="messages per write transaction")
    batch_wait_ms: int = Field(
        default=0, ge=0, description="how long a batch may wait to fill; 0: a batch is what is "
        "queued when the worker is free (batches grow with the load by themselves; a reading is "
        "not held back waiting for others)")
    retention_days: int = Field(default=90, ge=1,
                                description="telemetry older than this is dropped")
    outbox_keep_days: int = Field(
        default=7, ge=1, description="a published outbox row (dispatch, zone state) is deleted "
        "this many days after it was sent; an unsent one is never deleted")
    start_wait_s: float = Field(
        default=300, ge=0, description="at start, how long to wait for a database that cannot "
        "be reached (refused, timed out: after a power cut it may come back later than we do); "
        "a refusal by the server itself (password, unknown database) fails at once")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if v != "embedded" and not re.match(r"^postgres(ql)?://", v):
            raise ValueError("expected 'embedded' or a URL like postgresql://user@host:5432/db")
        return v


class HttpConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535, description="0 picks a free port")
    allowed_hosts: tuple[str, ...] = Field(
        default=(), description="host names the API answers to (the Host header, without the "
        "port); empty: the served host, and localhost too when it is a loopback address")
    max_body_bytes: int = Field(default=65536, ge=1024, le=16 * 1024 * 1024,
                                description="larger request bodies are refused (413)")
    streams_total: int = Field(default=500, ge=1, description="open event streams "
                               "(GET /api/stream) in all; beyond: 503")
    streams_per_user: int = Field(default=10, ge=1, description="open event streams per user; "
                                  "beyond: 429")
    pool_size: int = Field(default=4, ge=1, le=100,
                           description="database connections the HTTP API may hold")
    pool_wait_s: float = Field(default=5, gt=0, le=60, description="how long a request waits "
                               "for a database connection before it gets 503")

    @field_validator("allowed_hosts")
    @classmethod
    def _hosts(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for h in v:
            if not HOST_NAME.fullmatch(h):
                raise ValueError(f"{h!r}: expected a host name or address without scheme, port "
                                 "or path, or '*' for any")
        return v


class AuthConfig(_Strict):
    """Logins to the HTTP API and the console (CONTRACT section 6)."""

    token_ttl_min: float = Field(default=60, gt=0, le=7 * 24 * 60,
                                 description="lifetime of a bearer token from POST /api/token")
    session_ttl_min: float = Field(default=720, gt=0, le=7 * 24 * 60,
                                   description="lifetime of a console session (a shift)")
    login_attempts_per_address: int = Field(
        default=30, ge=1, description="login attempts per client address per minute; beyond: "
        "429 with Retry-After")
    login_failures_per_user: int = Field(
        default=5, ge=1, description="failed logins per user name per minute; beyond: 429")


class HealthConfig(_Strict):
    stuck_after_s: float = Field(
        default=60, gt=0, description="GET /api/health answers 503 when a worker (ingest, outbox) "
        "has had work waiting this long without progress, e.g. the database refusing a batch")
    warn_for_s: float = Field(
        default=600, gt=0, description="how long a drop (broker queue full, QoS 0 beyond the "
        "ingest budget) or a message dead-lettered for an internal error keeps a warning in "
        "GET /api/health")


class AppealsConfig(_Strict):
    """Residents' appeals: GeoReport ``POST requests`` and the hotline form (README: Residents'
    reports)."""

    per_address_per_min: int = Field(
        default=10, ge=1, description="public requests per client address per minute; beyond: "
        "429 with Retry-After")
    overall_per_min: int = Field(
        default=600, ge=1, description="public requests per minute from everyone together "
        "(a flood from many addresses); beyond: 429. The hotline form is not counted here")
    per_operator_per_min: int = Field(default=120, ge=1,
                                      description="hotline appeals per operator per minute")
    max_body_bytes: int = Field(default=16384, ge=1024, le=65536,
                                description="larger public requests are refused (413)")
    dedupe_window_s: float = Field(
        default=600, ge=0, description="the same submission (category, place, words, sender) "
        "again within this long is counted on the first, not stored again")
    near_m: float = Field(default=50, ge=0, description="an appeal this close to an incident "
                          "or an earlier appeal is at the same place")
    radius_m: float = Field(default=200, gt=0, description="beyond this an appeal is never "
                            "about the same problem")
    incident_window_min: float = Field(
        default=360, ge=0, description="an incident that ended this recently (its order not "
        "yet closed) still takes appeals")
    appeal_window_min: float = Field(default=720, gt=0, description="an appeal joins an "
                                     "earlier one's case within this long")
    threshold: float = Field(default=0.7, gt=0, le=1, description="the match score (place, "
                             "time, words) an appeal needs to join an incident or a case")
    places_file: Path | None = Field(
        default=None, description="place names for addresses in words (scripts/make_places.py); "
        "default: {zones file}_places.json beside the zones file, when it exists")
    local_tz: str = Field(default="Asia/Shanghai",
                          description="the time zone of the times in replies to residents")

    @model_validator(mode="after")
    def _near(self) -> Self:
        if self.near_m >= self.radius_m:
            raise ValueError(f"near_m ({self.near_m}) must be less than radius_m "
                             f"({self.radius_m})")
        return self


class ZonesConfig(_Strict):
    file: Path = Field(description="GeoJSON of zones, relative to this config file")


class PresenceConfig(_Strict):
    silence_timeout_s: float = Field(default=180, gt=0,
                                     description="no telemetry this long: offline")


class ClocksConfig(_Strict):
    """The server's clock against the devices': time moves when no reading arrives, and a
    device whose clock is off is evaluated on the server's timeline (stored as sent)."""

    tick_every_s: float = Field(
        default=5, gt=0, description="how often the rules are moved on the server's clock "
        "(silence, timed clears) when no reading moves them")
    allowance_s: float = Field(
        default=30, ge=0, description="the rules are moved to the server's clock less this, so "
        "a reading in transit this long is still on time (the reorder window comes on top); "
        "no tick runs while a backlog older than this drains")
    skew_tolerance_s: float = Field(
        default=60, gt=0, description="a device whose clock is further than this ahead of or "
        "behind the fleet's is corrected (and flagged in health)")
    skew_confirm_s: float = Field(
        default=60, ge=0, description="a device behind the fleet is corrected once its offset "
        "has held this long, so that its own backlog is not taken for a slow clock; ahead is "
        "corrected at once")


class Department(_Strict):
    id: str
    name: str
    level: Literal["municipal", "district", "street", "grid"]
    zone_id: str | None = Field(
        default=None, description="the zone it answers for (a street office: its street); "
        "escalation picks the most specific department one level up")


class Team(_Strict):
    id: str = Field(description="used in the dispatch topic city/dispatch/{team_id}")
    name: str
    department: str

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        if not DEVICE_ID.match(v):
            raise ValueError("expected letters, digits, '_' or '-' (it is part of an MQTT topic)")
        return v


class Route(_Strict):
    """The first route matching hazard, zone type and level wins: put the specific ones first."""

    hazard: str = Field(description="an alert name: a hazard (built in or a plug-in's), one of "
                        "its extra alerts (falling_object_pattern) or device_fault")
    zone_type: str = Field(description="a zone type, or '*' for any")
    department: str
    team: str
    levels: tuple[LevelName, ...] = Field(
        default=LEVEL_NAMES, description="levels this route takes")


class Device(_Strict):
    id: str
    kind: str
    position: tuple[float, float] = Field(description="[lon, lat] in WGS 84")
    name: str = ""

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        if not DEVICE_ID.match(v):
            raise ValueError("expected 1 to 64 of letters, digits, '_' or '-'")
        return v

    @field_validator("position")
    @classmethod
    def _position(cls, v: tuple[float, float]) -> tuple[float, float]:
        lon, lat = v
        if not (-180 <= lon <= 180 and -90 <= lat <= 90):
            raise ValueError("expected [lon, lat] with lon in -180..180 and lat in -90..90")
        return v




class WorkOrdersConfig(_Strict):
    """Deadlines, re-dispatch and reopening: the policy that keeps the order mountain small."""

    respond_within_min: dict[LevelName, float] = Field(
        default={"red": 10, "orange": 30, "yellow": 60, "blue": 240},
        description="minutes for a team to accept an order, by severity")
    resolve_within_min: dict[LevelName, float] = Field(
        default={"red": 60, "orange": 120, "yellow": 360, "blue": 1440},
        description="minutes to resolve an order, by severity")
    reopen_window_min: float = Field(
        default=120, ge=0, description="a hazard back within this long after it cleared reopens "
        "its incident and order instead of opening new ones")
    dispatch_retry_s: float = Field(
        default=120, gt=0, description="resend an unacknowledged dispatch after this long")
    dispatch_attempts: int = Field(
        default=3, ge=1, description="sends before an unacknowledged dispatch escalates")
    check_every_s: float = Field(
        default=5, gt=0, description="how often deadlines and dispatches are checked")
    keep_days: int = Field(
        default=1830, ge=1, description="a resolved or closed order, with its history, "
        "dispatches and alerts, is deleted this many days after it was last touched; 5 years "
        "outlives the 3-year limitation period for damage claims (PRC Civil Code art. 188) and "
        "leaves year-on-year comparisons")
    evidence_keep_first: int = Field(
        default=20, ge=1, description="evidence entries kept from the start of an alert (what "
        "raised it)")
    evidence_keep_last: int = Field(
        default=80, ge=1, description="newest evidence entries kept; those between are dropped "
        "and counted in the alert's evidence_dropped")
    history_repeats_max: int = Field(
        default=50, ge=1, description="repetitive system lines per order (report merged, "
        "dispatch repeated, level eased, hazard back) listed in its history; later ones are "
        "counted in one summary line. State changes and people's answers are always kept")

    @field_validator("respond_within_min", "resolve_within_min")
    @classmethod
    def _all_levels(cls, v: dict[str, float]) -> dict[str, float]:
        missing = set(LEVEL_NAMES) - set(v)
        if missing:
            raise ValueError(f"expected a value for every level; missing {sorted(missing)}")
        if any(m <= 0 for m in v.values()):
            raise ValueError("expected positive minutes")
        return v


class SimulatorConfig(_Strict):
    speed: float = Field(default=1.0, gt=0, le=3600, description="simulated seconds per second")
    telemetry_interval_s: float = Field(default=10, gt=0, description="simulated seconds")
    seed: int = 1


class Config(_Strict):
    district: str = "Gusu District, Suzhou"
    broker: BrokerConfig = BrokerConfig()
    database: DatabaseConfig = DatabaseConfig()
    http: HttpConfig = HttpConfig()
    health: HealthConfig = HealthConfig()
    zones: ZonesConfig
    presence: PresenceConfig = PresenceConfig()
    clocks: ClocksConfig = ClocksConfig()
    rules: RulesParams
    departments: tuple[Department, ...]
    teams: tuple[Team, ...]
    routing: tuple[Route, ...]
    devices: tuple[Device, ...]
    devices_file: Path | None = Field(
        default=None, description="more devices, from a CSV file (id,kind,lon,lat[,name]), "
        "relative to this file: a city's registry (scripts/make_city.py writes one); added to "
        "those listed under devices")
    simulator: SimulatorConfig = SimulatorConfig()
    plugins: tuple[str, ...] = Field(
        default=(), description="device kinds from plug-ins, as 'package.module:Class'; "
        "entry points of the citywatch.devices group load without being listed")
    work_orders: WorkOrdersConfig = WorkOrdersConfig()
    auth: AuthConfig = AuthConfig()
    appeals: AppealsConfig = AppealsConfig()
    base_dir: Path = Field(default=Path("."), exclude=True, description="set by the loader")

    @field_validator("plugins")
    @classmethod
    def _plugins(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for path in v:
            if not PLUGIN_PATH.fullmatch(path):
                raise ValueError(f"{path!r}: expected 'package.module:Class'")
        return v

    @model_validator(mode="after")
    def _references(self) -> Self:
        known = registry.alert_kinds()
        for i, r in enumerate(self.routing):
            if r.hazard not in known:
                raise ValueError(f"routing[{i}].hazard: {r.hazard!r} is no hazard; known: "
                                 f"{', '.join(known)}")
        dept_ids = {d.id for d in self.departments}
        team_ids = {t.id for t in self.teams}
        for i, t in enumerate(self.teams):
            if t.department not in dept_ids:
                raise ValueError(f"teams[{i}].department: {t.department!r} is not a department id")
        for i, r in enumerate(self.routing):
            if r.department not in dept_ids:
                raise ValueError(
                    f"routing[{i}].department: {r.department!r} is not a department id")
            if r.team not in team_ids:
                raise ValueError(f"routing[{i}].team: {r.team!r} is not a team id")
        if self.routing:  # a configuration for simulators only may leave routing out
            missing = [f"{h} in {t} at {lv}" for h, t in required_routes()
                       for lv in LEVEL_NAMES if self.route(h, t, lv) is None]
            if missing:
                shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more"
                                                  if len(missing) > 8 else "")
                raise ValueError(f"routing: no route for {shown}; every hazard of every zone "
                                 "type needs a route at every level (add one, or a '*' zone type)")
        seen: set[str] = set()
        for i, d in enumerate(self.devices):
            if d.id in seen:
                raise ValueError(f"devices[{i}].id: {d.id!r} appears twice")
            seen.add(d.id)
        # Each is a broker username (CONTRACT section 6) and a dispatch topic: they must differ.
        for i, t in enumerate(self.teams):
            if t.id in seen:
                raise ValueError(f"teams[{i}].id: {t.id!r} is also a device id; a team and a "
                                 "device cannot share a broker username")
            if t.id == self.broker.client_id:
                raise ValueError(f"teams[{i}].id: {t.id!r} is the engine's broker.client_id")
        if self.broker.client_id in seen:
            raise ValueError(f"broker.client_id: {self.broker.client_id!r} is also a device id")
        return self

    @property
    def ca_path(self) -> Path | None:
        ca = self.broker.ca_file
        if ca is None:
            return None
        return ca if ca.is_absolute() else self.base_dir / ca

    @property
    def places_path(self) -> Path | None:
        """The place names for addresses in words, if any."""
        f = self.appeals.places_file
        if f is not None:
            return f if f.is_absolute() else self.base_dir / f
        beside = self.zones_path.with_name(f"{self.zones_path.stem}_places.json")
        return beside if beside.exists() else None

    @property
    def zones_path(self) -> Path:
        return self.zones.file if self.zones.file.is_absolute() else self.base_dir / self.zones.file

    def route(self, hazard: str, zone_type: str, level: str = "yellow") -> Route | None:
        for r in self.routing:
            if r.hazard == hazard and r.zone_type in (zone_type, "*") and level in r.levels:
                return r
        return None


def required_routes() -> list[tuple[str, str]]:
    """(hazard, zone type) pairs the rules can raise an alert for, so the routing table must
    cover them (``rules.registry.required_routes``)."""
    return registry.required_routes()


def _where(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _lookup(data: Any, loc: tuple[int | str, ...]) -> Any:
    for part in loc:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def format_errors(exc: ValidationError, data: Any, source: str) -> str:
    lines = [f"{source}: {exc.error_count()} error(s)"]
    for err in exc.errors():
        loc = tuple(err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            lines.append(f"  {_where(loc)}: unknown key (check the spelling)")
        elif err["type"] == "missing":
            lines.append(f"  {_where(loc)}: missing; it is required")
        else:
            value = _lookup(data, loc)
            shown = repr(value) if value is not None and len(repr(value)) < 80 else "..."
            lines.append(f"  {_where(loc)}: got {shown}; {msg}")
    return "\n".join(lines)


def apply_env(data: dict[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    """CONTRACT section 5: environment variables override the file."""
    data = dict(data)
    if url := env.get("CITYWATCH_BROKER_URL"):
        data["broker"] = {**(data.get("broker") or {}), "url": url}
    if url := env.get("CITYWATCH_DATABASE_URL"):
        data["database"] = {**(data.get("database") or {}), "url": url}
    if port := env.get("CITYWATCH_HTTP_PORT"):
        data["http"] = {**(data.get("http") or {}), "port": port}
    if receiver := env.get("CITYWATCH_BROKER_RECEIVER"):  # thread | process (broker.receiver)
        data["broker"] = {**(data.get("broker") or {}), "receiver": receiver}
    return data


def parse_config(data: Any, source: str = "config.yaml", base_dir: Path = Path("."),
                 env: Mapping[str, str] | None = None) -> Config:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of keys at the top level")
    data = apply_env(data, os.environ if env is None else env)
    _register_hazards(data, source)
    if (listed := data.get("devices_file")) is not None:
        data = {**data, "devices": [*(data.get("devices") or []),
                                    *_file_devices(listed, base_dir, source)]}
    try:
        return Config.model_validate({**data, "base_dir": base_dir})
    except ValidationError as exc:
        raise ConfigError(format_errors(exc, data, source)) from None


def _register_hazards(data: Mapping[str, Any], source: str) -> None:
    """Plug-in hazards register before validation: routes and rules parameters name them."""
    from sensing.plugins import PluginError, register_hazards  # the composition's edge

    paths = data.get("plugins") or ()
    if not isinstance(paths, list | tuple) or not all(isinstance(p, str) for p in paths):
        return  # validation reports it
    try:
        register_hazards([p for p in paths if PLUGIN_PATH.fullmatch(p)])
    except PluginError as exc:
        raise ConfigError(f"{source}: plugins: {exc}") from None


def _file_devices(listed: Any, base_dir: Path, source: str) -> list[Device]:
    # Imported here: citywatch.device_file builds on this module's Device.
    from citywatch.device_file import read_devices

    if not isinstance(listed, str) or not listed:
        raise ConfigError(f"{source}: devices_file: got {listed!r}; expected a file name")
    path = Path(listed)
    return read_devices(path if path.is_absolute() else base_dir / path)


def load_config(path: Path | str, env: Mapping[str, str] | None = None) -> Config:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        data = yaml.load(text, Loader=_SAFE_LOADER)  # noqa: S506 (a safe loader, in C)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse_config(data, str(path), path.resolve().parent, env)
