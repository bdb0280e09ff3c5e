"""The simulated fleet's broker credentials: a secret per device and team, and gateways.

A broker that authenticates (CONTRACT section 6) wants each device to connect with username = its
``device_id`` and its own secret, each team with its ``team_id``. On shared connections (load
tests, :class:`simulators.links.SharedLinks`) one connection carries many devices: it connects as a
gateway, an identity allowed to publish for the devices listed for it.

The file (``citywatch run`` keeps one in its data directory; ``citywatch simulate --credentials``
reads one) is JSON, readable by its owner only::

    {"secrets": {"wl-01": "...", "drainage-1": "...", "sim-gw-0": "..."},
     "gateways": {"sim-gw-0": ["wl-01", "rg-01"]}}
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from simulators.errors import SimulatorError


@dataclass(frozen=True)
class FleetCredentials:
    secrets: Mapping[str, str] = field(default_factory=dict)
    gateways: Mapping[str, Sequence[str]] = field(default_factory=dict)

    def secret(self, identity: str) -> str:
        try:
            return self.secrets[identity]
        except KeyError:
            raise SimulatorError(f"no broker credentials for {identity!r}: issue them with "
                                 f"`citywatch device credentials {identity}`") from None

    @classmethod
    def load(cls, path: Path) -> FleetCredentials:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise SimulatorError(f"{path}: cannot read the credentials file: {exc.strerror}"
                                 ) from None
        except ValueError as exc:
            raise SimulatorError(f"{path}: not valid JSON: {exc}") from None
        secrets = data.get("secrets") if isinstance(data, dict) else None
        gateways = data.get("gateways", {}) if isinstance(data, dict) else None
        if (not isinstance(secrets, dict) or not isinstance(gateways, dict)
                or not all(isinstance(k, str) and isinstance(v, str) for k, v in secrets.items())
                or not all(isinstance(v, list) and all(isinstance(d, str) for d in v)
                           for v in gateways.values())):
            raise SimulatorError(f"{path}: expected {{\"secrets\": {{id: secret}}, "
                                 "\"gateways\": {gateway id: [device ids]}}")
        return cls(dict(secrets), {k: tuple(v) for k, v in gateways.items()})

    def save(self, path: Path) -> None:
        """Write the file atomically, readable and writable by its owner only."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump({"secrets": dict(sorted(self.secrets.items())),
                       "gateways": {k: list(v) for k, v in sorted(self.gateways.items())}},
                      out, indent=1)
        os.replace(tmp, path)
