"""Grid workers' reports that match no alert: alerts of their own, in the worker's grid cell.

The engine first offers a report to the zones of its category near it (``ReportParams``): an
active alert there is corroborated, a fall zone's recent detection gains confidence. A report that
matches nothing comes here: it raises ``own_alert_level`` for its category in the grid cell it was
made in (a person on the spot saw it; the level says "unverified"), further reports of the
category keep it alive, and it clears ``clear_after_s`` after the last one.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, ClassVar

from geo.zones import Zone
from rules.base import NO_CONTEXT, RESTORED_DUE, AlertChange, Detection, Observation, RuleContext
from rules.levels import Level
from rules.params import ReportParams

REPORT_TYPE = "report"
CATEGORY_KEY = "category"


@dataclass(frozen=True, slots=True)
class CategoryState:
    level: Level | None = None
    last_ts: datetime | None = None
    count: int = 0


@dataclass(frozen=True, slots=True)
class ReportState:
    """Per category (a hazard name) of one grid cell."""

    categories: tuple[tuple[str, CategoryState], ...] = ()

    def get(self, category: str) -> CategoryState:
        return next((s for c, s in self.categories if c == category), CategoryState())

    def with_(self, category: str, s: CategoryState) -> ReportState:
        rest = tuple((c, x) for c, x in self.categories if c != category)
        return ReportState(tuple(sorted((*rest, (category, s)))))


def report_evidence(det: Detection) -> dict[str, Any]:
    ev: dict[str, Any] = {"device_id": det.device_id, "event_id": det.event_id,
                          "ts": det.ts.isoformat(), "source": "grid",
                          "category": det.attrs.get(CATEGORY_KEY)}
    if det.position is not None:
        ev["loc"] = list(det.position)
    text = det.attrs.get("text")
    if isinstance(text, str):
        ev["text"] = text[:200]
    return ev


class ReportRule:
    """The rule of grid cells (``rules.hazard.Rule``): one alert per reported category."""

    name: ClassVar[str] = "report"
    report_radius_m: ClassVar[float] = 0.0

    def __init__(self, params: ReportParams) -> None:
        self.params = params
        self._clear_after = timedelta(seconds=params.clear_after_s)
        level = params.own_alert_level
        self._level = None if level is None else Level[level.upper()]

    @property
    def enabled(self) -> bool:
        return self._level is not None

    def check_zone(self, zone: Zone) -> None:
        pass  # any grid cell

    def initial(self) -> ReportState:
        return ReportState()

    def restore_alert(self, state: ReportState, alert: str, level: Level) -> ReportState:
        return self.restore(state, alert, level)

    def corroborate(self, zone: Zone, state: ReportState, report: Detection,  # noqa: ARG002
                    ctx: RuleContext) -> tuple[ReportState, list[AlertChange], bool]:  # noqa: ARG002
        return state, [], False

    def reassess(self, zone: Zone, state: ReportState, ts: datetime,  # noqa: ARG002
                 ctx: RuleContext = NO_CONTEXT) -> tuple[ReportState, list[AlertChange]]:  # noqa: ARG002
        return state, []

    def restore(self, state: ReportState, category: str, level: Level) -> ReportState:
        return state.with_(category, CategoryState(level=level))

    def levels(self, state: ReportState) -> dict[str, Level]:
        return {c: s.level for c, s in state.categories if s.level is not None}

    def deadline(self, state: ReportState) -> datetime | None:
        dues = [s.last_ts + self._clear_after for _, s in state.categories
                if s.level is not None and s.last_ts is not None]
        if any(s.level is not None and s.last_ts is None for _, s in state.categories):
            return RESTORED_DUE  # restored: the first tick starts its quiet period
        return min(dues, default=None)

    def evaluate(self, cell: Zone, state: ReportState, det: Observation | Detection,
                 ctx: RuleContext = NO_CONTEXT,  # noqa: ARG002 -- the Rule interface
                 ) -> tuple[ReportState, list[AlertChange]]:
        if not isinstance(det, Detection) or det.type != REPORT_TYPE:
            return state, []
        category = det.attrs.get(CATEGORY_KEY)
        if self._level is None or not isinstance(category, str):
            return state, []
        cur = state.get(category)
        last = det.ts if cur.last_ts is None else max(cur.last_ts, det.ts)
        new = replace(cur, last_ts=last, count=cur.count + 1)
        if cur.level is not None:
            return state.with_(category, new), []
        new = replace(new, level=self._level)
        what = category.replace("_", " ")
        who = "Residents report" if det.attrs.get("source") == "resident" else \
            "Grid worker reports"
        title = f"{who} {what} in {cell.name} (not yet confirmed by a sensor)"
        return state.with_(category, new), [
            AlertChange(cell.id, category, self._level, det.ts, title, (report_evidence(det),))]

    def tick(self, cell: Zone, state: ReportState, now: datetime,
             ctx: RuleContext = NO_CONTEXT,  # noqa: ARG002 -- the Rule interface
             ) -> tuple[ReportState, list[AlertChange]]:
        changes: list[AlertChange] = []
        for category, s in state.categories:
            if s.level is None:
                continue
            if s.last_ts is None:
                state = state.with_(category, replace(s, last_ts=now))  # restored
                continue
            if now - s.last_ts < self._clear_after:
                continue
            due = s.last_ts + self._clear_after
            minutes = self.params.clear_after_s / 60
            title = (f"Reported {category.replace('_', ' ')} in {cell.name} cleared: no new "
                     f"report for {minutes:g} min")
            changes.append(AlertChange(cell.id, category, None, due, title,
                                       ({"reports": s.count, "last_report_ts":
                                         s.last_ts.isoformat()},)))
            state = state.with_(category, CategoryState())
        return state, changes
