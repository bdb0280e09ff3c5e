"""The teams' terminals: they answer dispatched warnings as field teams do.

A dispatch on ``city/dispatch/{team_id}`` (CONTRACT section 2) is answered on
``city/dispatch/{team_id}/ack``: ``accepted`` after the crew reads it (30 s to 2.5 min),
``on_site`` after the drive there (from a base near the district centre, 20 km/h through
old-town traffic, plus a few minutes to set off), ``resolved`` after the work, which depends on
the hazard (pumping out an underpass takes longest). A re-dispatch of the same work order (the
platform escalates) changes nothing: the team is already on it.

Pure: :meth:`Responder.on_dispatch` takes what arrived and the simulated time; :meth:`due`
yields the answers whose time has come. Deterministic for a seed and a work order id.
"""

from __future__ import annotations

import heapq
import json
import logging
import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from geo.position import Position, metres

log = logging.getLogger(__name__)

DRIVE_KM_H = 20.0
ACCEPT_S = (30.0, 150.0)
SET_OFF_S = (120.0, 420.0)
WORK_S = {"waterlogging": (2400.0, 5400.0), "traffic": (900.0, 2400.0),
          "falling_object": (1200.0, 2700.0)}
DEFAULT_WORK_S = (1200.0, 3600.0)
NOTES = {"accepted": "received, crew on the way", "on_site": "crew on site",
         "resolved": "done, see the work order for details"}


@dataclass(order=True, frozen=True, slots=True)
class Ack:
    at: datetime
    order: int
    team_id: str = field(compare=False)
    payload: dict[str, Any] = field(compare=False)  # ts is a datetime; the runner stamps it

    @property
    def topic(self) -> str:
        return f"city/dispatch/{self.team_id}/ack"


class Responder:
    def __init__(self, seed: int, base: Position) -> None:
        self.seed = seed
        self.base = base
        self.seen: set[str] = set()
        self.received = 0
        self._queue: list[Ack] = []
        self._order = 0

    def on_dispatch(self, topic: str, body: bytes, now: datetime) -> None:
        parts = topic.split("/")
        if len(parts) != 3 or parts[:2] != ["city", "dispatch"]:
            return
        team_id = parts[2]
        try:
            msg = json.loads(body)
            order_id = msg["work_order_id"]
        except (ValueError, KeyError, TypeError):
            log.warning("team %s: unreadable dispatch ignored: %.200r", team_id, body)
            return
        self.received += 1
        if not isinstance(order_id, str) or order_id in self.seen:
            return
        self.seen.add(order_id)
        rng = random.Random(f"{self.seed}:{team_id}:{order_id}")  # noqa: S311 - not security
        loc = msg.get("loc")
        far_m = (metres(self.base, (float(loc[0]), float(loc[1])))
                 if isinstance(loc, list) and len(loc) == 2 else 3000.0)
        accepted = now + timedelta(seconds=rng.uniform(*ACCEPT_S))
        drive_s = far_m / 1000 / DRIVE_KM_H * 3600
        on_site = accepted + timedelta(seconds=rng.uniform(*SET_OFF_S) + drive_s)
        work = WORK_S.get(str(msg.get("hazard")), DEFAULT_WORK_S)
        resolved = on_site + timedelta(seconds=rng.uniform(*work))
        for status, at in (("accepted", accepted), ("on_site", on_site), ("resolved", resolved)):
            self._order += 1
            heapq.heappush(self._queue, Ack(at, self._order, team_id, {
                "work_order_id": order_id, "status": status, "ts": at, "note": NOTES[status]}))

    def due(self, until: datetime) -> list[Ack]:
        out = []
        while self._queue and self._queue[0].at <= until:
            out.append(heapq.heappop(self._queue))
        return out

    @property
    def pending(self) -> int:
        return len(self._queue)
