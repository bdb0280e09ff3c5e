"""What a hazard is: one module in ``rules/`` (or a plug-in) declares all of it here.

A :class:`Hazard` names the hazard, its parameter model (the ``rules.<name>:`` section of the
configuration), the factory of its :class:`Rule`, the zone types that carry it, which devices
sense it, and how the rest of the platform speaks of it: CAP event and categories, Open311
service, console labels (English and Chinese), the instruction for the team, whether its sensors
can vouch that it is gone, the reading that shows it on a chart and the words residents use for
it. ``rules.registry`` holds the hazards; everything else reads them from there.

Every rule, the hazards' and the grid reports', has one interface (:class:`Rule`): the engine
holds one immutable state per (zone, rule) and never asks which rule it is talking to.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, Literal, Protocol, TypeVar

from pydantic import BaseModel

from geo.zones import Zone
from rules.base import AlertChange, Detection, Observation, RuleContext
from rules.levels import Level
from rules.reports import report_evidence

S = TypeVar("S")
Item = Observation | Detection


class Rule(Protocol[S]):
    """What the engine needs of a rule; ``S`` is its immutable per-zone state.

    A rule may raise alerts under several names (falling objects also raise a pattern alert,
    grid cells one per report category): ``levels`` and ``restore`` speak of alert names.
    """

    name: ClassVar[str]

    @property
    def report_radius_m(self) -> float:
        """Reports this close to a zone are offered to it (besides ``reports.corroborate_m``)."""
        ...

    def check_zone(self, zone: Zone) -> None:
        """Raise ``ValueError`` if the rule's parameters cannot serve this zone."""

    def initial(self) -> S: ...

    def restore_alert(self, state: S, alert: str, level: Level) -> S:
        """``state`` with the active alert ``alert`` at ``level`` (after a restart)."""
        ...

    def levels(self, state: S) -> dict[str, Level]:
        """The active level of each alert name the state holds."""
        ...

    def deadline(self, state: S) -> datetime | None: ...

    def evaluate(self, zone: Zone, state: S, item: Item, ctx: RuleContext
                 ) -> tuple[S, list[AlertChange]]:
        """Return ``state`` itself (the same object) when ``item`` is not the rule's business."""
        ...

    def corroborate(self, zone: Zone, state: S, report: Detection, ctx: RuleContext
                    ) -> tuple[S, list[AlertChange], bool]:
        """A grid worker's report of this hazard near the zone: the new state, the changes, and
        whether the report matched something here (it then raises nothing of its own)."""
        ...

    def reassess(self, zone: Zone, state: S, ts: datetime, ctx: RuleContext
                 ) -> tuple[S, list[AlertChange]]: ...

    def tick(self, zone: Zone, state: S, now: datetime, ctx: RuleContext
             ) -> tuple[S, list[AlertChange]]: ...


@dataclass(frozen=True, slots=True)
class Label:
    """A name as the console shows it."""

    en: str
    zh: str


@dataclass(frozen=True, slots=True)
class AlertKind:
    """An alert a hazard raises besides its own (a falling-object pattern), for CAP, policy,
    routing and the console."""

    name: str
    label: Label
    cap_event: str
    cap_categories: tuple[str, ...]
    instruction: str
    zone_types: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Service:
    """The hazard as an Open311 GeoReport service (the code is the hazard's name)."""

    name: str
    description: str
    keywords: tuple[str, ...]
    group: str


@dataclass(frozen=True, slots=True)
class Metric:
    """The reading that shows the hazard: charts, evidence in the console, answers to
    residents. ``thresholds`` gives the chart's lines from the rule's parameters (as plain
    data) and the zone type, by level colour."""

    key: str
    unit: Label  # "cm", "厘米"
    crossing: Literal["above", "below"]  # the hazard is worse above (water) or below (speed)
    words: Label  # "water", "水深": in a reply to a resident
    thresholds: Callable[[Mapping[str, Any], str], dict[str, float]] | None = None


@dataclass(frozen=True, slots=True)
class Sensing:
    """Which devices sense the hazard for a zone: devices of ``kinds`` in the zone, or, with
    ``radius_m``, within that distance of the zone (a camera watching a facade). With ``route``
    their readings are also offered to the zones within the radius (a gauge on a roof, its
    fall zones below)."""

    kinds: tuple[str, ...] = ()
    radius_m: float | None = None
    route: bool = False


@dataclass(frozen=True, slots=True)
class Hazard:
    """One hazard, everything the platform needs to know about it."""

    name: str
    params_model: type[BaseModel]
    rule: Callable[[Any], Rule[Any]]  # from the validated parameters
    zone_types: tuple[str, ...]
    label: Label
    cap_event: str
    cap_categories: tuple[str, ...]
    service: Service
    instruction: str
    sensing: Sensing = Sensing()
    sensor_backed: bool = False  # its sensors can tell whether it is really gone
    metric: Metric | None = None
    resident_words: Label | None = None  # "standing water", in a reply to a resident
    # Whether the concepts of a resident's words (``alerts.appeal_text.concepts``) name it.
    appeal_match: Callable[[frozenset[str]], bool] | None = None
    report_category: bool = True  # grid workers and residents can report it
    extra_alerts: tuple[AlertKind, ...] = field(default=())

    def alert_names(self) -> tuple[str, ...]:
        return (self.name, *(a.name for a in self.extra_alerts))


def level_lines(params: Mapping[str, Any] | None, suffix: str) -> dict[str, float]:
    """``{colour}_{suffix}`` entries of a parameter section as a chart's lines, by colour."""
    if not isinstance(params, Mapping):
        return {}
    return {lv.colour: float(params[f"{lv.colour}_{suffix}"]) for lv in Level
            if isinstance(params.get(f"{lv.colour}_{suffix}"), int | float)}


class HazardRuleBase:
    """Defaults for a hazard rule with one alert named after the hazard and a ``level`` on its
    state: restoring, levels, and a report corroborating an active alert."""

    name: ClassVar[str]
    report_radius_m: ClassVar[float] = 0.0

    def restore(self, level: Level) -> Any:
        raise NotImplementedError

    def level(self, state: Any) -> Level | None:
        return getattr(state, "level", None)

    def restore_alert(self, state: Any, alert: str, level: Level) -> Any:
        return self.restore(level) if alert == self.name else state

    def levels(self, state: Any) -> dict[str, Level]:
        level = self.level(state)
        return {} if level is None else {self.name: level}

    def corroborate(self, zone: Zone, state: Any, report: Detection,
                    ctx: RuleContext) -> tuple[Any, list[AlertChange], bool]:  # noqa: ARG002
        level = self.level(state)
        if level is None:
            return state, [], False
        what = self.name.replace("_", " ")
        title = f"{zone.name}: {what} confirmed by a grid worker"
        return state, [AlertChange(zone.id, self.name, level, report.ts, title,
                                   (report_evidence(report),))], True
