"""The hotline desk: an appeal placed, matched, stored and answered, in one transaction.

``AppealDesk.file`` takes a validated appeal (``alerts.appeal_intake``) and:

1. places it: the position given (or the address resolved offline, ``geo.gazetteer``) must lie in
   the district; the zones there are recorded;
2. recognises a resubmission (the same category, place, words and sender within
   ``dedupe_window``): it is counted on the earlier appeal, not stored again;
3. matches it (``alerts.appeal_match``) against the open and recent incidents of its category
   and the recent cases of appeals that joined none: an incident gets it as evidence and counts
   it (``AlertStore.merge_appeal``); a case just grows;
4. otherwise, for a hazard, hands it to the rules as a report (``evaluate``, the pipeline's):
   like a grid worker's report it corroborates a zone's alert or raises one in its grid cell,
   routed by the routing table, and the nearest grid worker is asked to check;
   what matched nothing starts a case of its own.

The whole of it runs under one lock (``appeal_store.MATCH_LOCK`` and, with a pipeline, the
pipeline's), so two appeals about one problem arriving together end in one case.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol, TypeVar

import psycopg
import shapely
from psycopg_pool import ConnectionPool

from alerts import appeal_match, appeal_reply, appeal_store, appeal_text
from alerts.appeal_intake import AppealIn, PlaceError, caller_key, categories, fingerprint
from alerts.store import AlertStore, Applied
from geo.crs import lonlat_to_utm, to_utm
from geo.gazetteer import Gazetteer, Resolved
from geo.index import ZoneIndex
from geo.position import metres
from geo.zones import Zone
from rules.base import Detection

log = logging.getLogger(__name__)

T = TypeVar("T")
Evaluate = Callable[[Sequence[Detection]], Applied]
Work = Callable[[psycopg.Cursor[Any], Evaluate | None], T]
RESIDENT = "resident"  # the device id of residents' reports in the rules, and their actor


class Runner(Protocol):
    """Runs ``work`` in one transaction (with the rules' ``evaluate`` when the pipeline runs)."""

    def __call__(self, work: Work[T]) -> T: ...


@dataclass(frozen=True, slots=True)
class Filed:
    id: str
    new: bool  # False: a resubmission of ``id``
    category: str
    alert_id: str | None
    work_order_id: str | None
    case_id: str
    how: str


class AppealDesk:
    def __init__(self, pool: ConnectionPool[psycopg.Connection[Any]], zones: Sequence[Zone],
                 gazetteer: Gazetteer, alert_store: AlertStore | None,
                 clock: Callable[[], datetime], *,
                 params: appeal_match.MatchParams | None = None,
                 dedupe_window: timedelta = timedelta(minutes=10),
                 run: Runner | None = None, pool_wait_s: float = 5.0) -> None:
        self._pool = pool
        self._zones = {z.id: z for z in zones}
        self._index = ZoneIndex(zones)
        self.gazetteer = gazetteer
        self._alerts = alert_store
        self._clock = clock
        self.params = params or appeal_match.MatchParams()
        self._dedupe = dedupe_window
        self._run: Runner = run or self._own_transaction
        self._wait = pool_wait_s
        self._utm: dict[str, Any] = {}
        self.vocab = appeal_text.Vocabulary.of(gazetteer.vocabulary())
        self._secret: bytes | None = None
        self._hazards = frozenset(c for c in categories() if c != "other")

    def _own_transaction(self, work: Work[T]) -> T:
        with self._pool.connection(timeout=self._wait) as conn, conn.transaction(), \
                conn.cursor() as cur:
            return work(cur, None)

    def secret(self) -> bytes:
        if self._secret is None:
            with self._pool.connection(timeout=self._wait) as conn:
                self._secret = appeal_store.secret(conn)
        return self._secret

    # --- placing -----------------------------------------------------------------------
    def place(self, a: AppealIn) -> tuple[tuple[float, float], tuple[str, ...], str]:
        """(position, zones, place in words) or ``PlaceError``."""
        field = "lat"
        if a.position is not None:
            lon, lat = a.position
            label = ""
        else:
            found = self.gazetteer.resolve(a.address)
            field = "address_string" if a.source == "open311" else "address"
            if not isinstance(found, Resolved):
                raise PlaceError(field, found.reason)
            (lon, lat), label = found.position, found.label
        zone_ids = self._index.zones_at(lon, lat)
        if not any(self._zones[z].type in ("district", "municipal") for z in zone_ids):
            raise PlaceError(field, f"[{lon:.5f}, {lat:.5f}] is outside the district")
        # The place in words is the district's own name for it, never the words the resident
        # typed (which may name a home): it is what a reply may show.
        if a.position is not None or not label:
            label = self._label(zone_ids)
        return (round(lon, 6), round(lat, 6)), zone_ids, label

    def _label(self, zone_ids: Sequence[str]) -> str:
        """The most specific zone's name: a hazard zone, else the grid cell, else the street."""
        order = {"grid_cell": 1, "street": 2, "district": 3, "municipal": 4}
        zones = sorted((self._zones[z] for z in zone_ids), key=lambda z: order.get(z.type, 0))
        return zones[0].name if zones else "the district"

    # --- filing ------------------------------------------------------------------------
    def file(self, a: AppealIn, actor: str, sender: str) -> Filed:
        """Store and match one appeal. ``actor``: ``resident`` or the operator's name;
        ``sender``: the client's address (GeoReport) or the operator (hotline)."""
        position, zone_ids, label = self.place(a)
        key = caller_key(a.contact, self.secret())
        fp = fingerprint(a, position, key or sender)
        now = self._clock()

        def work(cur: psycopg.Cursor[Any], evaluate: Evaluate | None) -> Filed:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (appeal_store.MATCH_LOCK,))
            again = appeal_store.resubmission(cur, fp, now - self._dedupe)
            if again is not None:
                row = cur.execute("SELECT category, alert_id, work_order_id, case_id, how "
                                  "FROM appeals WHERE id = %s", (again,)).fetchone()
                assert row is not None
                return Filed(again, False, *row)
            appeal_id, seq = appeal_store.insert(cur, appeal_store.NewAppeal(
                a.source, a.category, position[0], position[1], zone_ids, a.address, label,
                a.description, a.media_url, a.contact.as_dict(), key, fp, now, actor, sender))
            return self._match(cur, evaluate, appeal_id, seq, a, position, zone_ids, key, now,
                               actor)

        return self._run(work)

    def _match(self, cur: psycopg.Cursor[Any], evaluate: Evaluate | None, appeal_id: str,
               seq: int, a: AppealIn, position: tuple[float, float], zone_ids: tuple[str, ...],
               key: str | None, now: datetime, actor: str) -> Filed:
        text = a.description or a.category.replace("_", " ")
        targets = self._targets(cur, a.category, position, key, now, appeal_id)
        verdict = appeal_match.best(text, a.category, targets, self.params, self._similar)
        if verdict is not None and verdict.target.kind == "incident":
            alert_id = verdict.target.id
            order = None
            if self._alerts is not None:
                order = self._alerts.merge_appeal(
                    cur, alert_id, self._evidence(appeal_id, a, position, now), now,
                    RESIDENT if a.source == "open311" else f"hotline {actor}",
                    f"appeal {appeal_id} merged ({verdict.how}): {a.description[:200]}")
            appeal_store.link(cur, appeal_id, case_id=alert_id, how=verdict.how,
                              score=verdict.score, alert_id=alert_id, work_order_id=order)
            return Filed(appeal_id, True, a.category, alert_id, order, alert_id, verdict.how)
        if verdict is not None:
            case = verdict.target.id
            appeal_store.link(cur, appeal_id, case_id=case, how=verdict.how, score=verdict.score)
            return Filed(appeal_id, True, a.category, None, None, case, verdict.how)
        if a.category in self._hazards and evaluate is not None:
            det = Detection(RESIDENT, RESIDENT, now, f"{seq:012d}", "report", None, position,
                            zone_ids, {"category": a.category, "text": a.description[:200],
                                       "source": RESIDENT, "appeal_id": appeal_id})
            evaluate([det])
            found = appeal_store.opened_for(cur, det.event_id, now - timedelta(seconds=1))
            if found is not None:
                alert_id, order = found
                row = cur.execute("SELECT zone_id, raised FROM alerts WHERE id = %s",
                                  (alert_id,)).fetchone()
                zone = self._zones.get(row[0]) if row else None
                opened = (row is not None and row[1] >= now and zone is not None
                          and zone.type == "grid_cell")
                how = ("reported to the rules: opened an incident of its own in "
                       f"{zone.name if zone else 'its grid cell'}" if opened
                       else "reported to the rules: corroborated an incident")
                appeal_store.link(cur, appeal_id, case_id=alert_id, how=how, score=None,
                                  alert_id=alert_id, work_order_id=order)
                return Filed(appeal_id, True, a.category, alert_id, order, alert_id, how)
        how = "matched no open incident or earlier appeal: a case of its own"
        appeal_store.link(cur, appeal_id, case_id=appeal_id, how=how, score=None)
        return Filed(appeal_id, True, a.category, None, None, appeal_id, how)

    def _similar(self, text: str, others: Sequence[str]) -> float:
        return appeal_text.best_similarity(text, others, self.vocab)

    def _targets(self, cur: psycopg.Cursor[Any], category: str, position: tuple[float, float],
                 key: str | None, now: datetime, appeal_id: str) -> list[appeal_match.Target]:
        p = self.params
        out: list[appeal_match.Target] = []
        x, y = lonlat_to_utm(*position)
        point = shapely.Point(float(x), float(y))
        for inc in appeal_store.incidents(cur, category, now - p.incident_window):
            zone = self._zones.get(inc.zone_id)
            if zone is None:
                continue
            g = self._utm.get(zone.id)
            if g is None:
                g = self._utm[zone.id] = to_utm(zone.geometry)
            d = float(g.distance(point))
            if d > p.radius_m:
                continue
            age = timedelta(0) if inc.live else max(now - inc.last_live, timedelta(0))
            texts = (f"{inc.title} {zone.name} {category.replace('_', ' ')}", *inc.texts)
            out.append(appeal_match.Target("incident", inc.alert_id, category, d, age, texts,
                                           key is not None and key in inc.callers, inc.live))
        for case in appeal_store.cases(cur, category, now - p.appeal_window, appeal_id):
            d = min(metres(position, q) for q in case.positions)
            if d > p.radius_m:
                continue
            out.append(appeal_match.Target("appeal", case.case_id, category, d,
                                           max(now - case.last, timedelta(0)), case.texts,
                                           key is not None and key in case.callers))
        return out

    @staticmethod
    def _evidence(appeal_id: str, a: AppealIn, position: tuple[float, float],
                  now: datetime) -> dict[str, Any]:
        """What the incident keeps of the appeal: never the contact."""
        return {"source": RESIDENT, "appeal_id": appeal_id, "channel": a.source,
                "ts": now.isoformat(), "category": a.category, "text": a.description[:200],
                "loc": [position[0], position[1]]}

    # --- answering ---------------------------------------------------------------------
    def facts(self, conn: psycopg.Connection[Any], row: dict[str, Any],
              now: datetime) -> appeal_reply.Facts:
        """What is true now about the appeal ``row`` (``appeal_store.get``)."""
        column, value = appeal_store.group_key(row)
        n, callers = appeal_store.counts(conn, column, value)
        base = appeal_reply.Facts(str(row["id"]), row["received"], str(row["category"]),
                                  str(row["place"]), appeals=n, callers=callers)
        if not row["alert_id"]:
            return base
        inc = appeal_store.incident_facts(conn, str(row["alert_id"]))
        if inc is None:  # pruned by retention: say what the appeal itself knows
            return base
        zone = self._zones.get(inc["zone_id"])
        sensed = zone is not None and zone.type != "grid_cell"
        reading = None
        if (sensed and inc["live"]) or inc["cleared"] is not None:
            got = appeal_store.latest_reading(conn, inc["hazard"], inc["zone_id"], now)
            if got is not None:
                metric, v, at, trend = got
                reading = appeal_reply.Reading(metric, v, at, trend)  # type: ignore[arg-type]
        incident = appeal_reply.Incident(
            str(inc["hazard"]), zone.name if zone else str(inc["zone_id"]),
            int(inc["severity"]) if inc["live"] else None, bool(inc["live"]), inc["raised"],
            inc["cleared"], sensed, bool(inc["check_asked"]))
        return appeal_reply.Facts(
            base.appeal_id, base.received, base.category, base.place, incident, reading,
            inc["order_state"], appeal_reply.steps_from_history(inc["history"]), n, callers)

    def public_point(self, row: dict[str, Any], zone_id: str | None
                     ) -> tuple[float, float] | None:
        """A point a resident may see for an appeal: its incident's zone, else its grid cell
        (never the exact position given, which may be a home)."""
        zone = self._zones.get(zone_id) if zone_id else None
        if zone is None or zone.type in ("district", "street", "municipal"):
            cells = [self._zones[z] for z in row["zone_ids"] if z in self._zones
                     and self._zones[z].type == "grid_cell"]
            zone = cells[0] if cells else zone
        if zone is None or zone.geometry.is_empty:
            return None
        p = zone.geometry.representative_point()
        return (round(float(p.x), 6), round(float(p.y), 6))

    def roads_zh(self) -> dict[str, str]:
        """English road names -> Chinese, for replies in Chinese."""
        return {p.names[0]: p.names[1] for p in self.gazetteer.places.values()
                if p.kind == "road" and len(p.names) > 1}
