"""What a resident is told about an appeal, from what is true now (pure: facts in, words out).

No fixed template says "handled": each sentence states a fact with its time, taken from the
incident (level, whether the sensors still see it), the newest reading of its zone and which way
it moves, the work order's steps as the team reported them (sent, on the way, on site, fixed), and
how many appeals and callers it has. GeoReport's status is ``closed`` only after the work order's
verified close (a closed order: the close is refused while the sensors show the hazard).

Never in a reply: a team's or worker's name or id, a worker's position, a team's or operator's
note, another caller's words or contact. English and Chinese.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final, Literal
from zoneinfo import ZoneInfo

from rules import registry
from rules.hazard import Metric
from rules.levels import Level

Lang = Literal["en", "zh"]
Trend = Literal["rising", "falling", "steady"]

_OTHER_WORDS: Final = ("the problem", "问题")


class _Words(Mapping[str, tuple[str, str]]):
    """Category -> (English, Chinese) words for it: each hazard's ``resident_words``, and
    ``other``."""

    def _now(self) -> dict[str, tuple[str, str]]:
        out = {h.name: (h.resident_words.en, h.resident_words.zh)
               for h in registry.hazards() if h.resident_words is not None}
        return {**out, "other": _OTHER_WORDS}

    def __getitem__(self, key: str) -> tuple[str, str]:
        return self._now()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._now())

    def __len__(self) -> int:
        return len(self._now())


HAZARD_WORDS: Final[Mapping[str, tuple[str, str]]] = _Words()
LEVELS: Final[Mapping[int, tuple[str, str]]] = {lv.value: (lv.colour, lv.zh) for lv in Level}
# How a trend reads for a hazard that is worse when its reading rises (water) or falls (speed).
_TRENDS: Final[Mapping[tuple[str, Trend], tuple[str, str]]] = {
    ("above", "rising"): ("rising", "仍在上涨"),
    ("above", "falling"): ("falling", "正在回落"),
    ("above", "steady"): ("steady", "基本持平"),
    ("below", "rising"): ("easing", "正在好转"),
    ("below", "falling"): ("getting worse", "仍在变差"),
    ("below", "steady"): ("steady", "基本持平"),
}


def _metric(key: str) -> Metric | None:
    """The hazard metric of this reading key (registry), if a hazard charts it."""
    return next((h.metric for h in registry.hazards()
                 if h.metric is not None and h.metric.key == key and h.metric.unit.en), None)


@dataclass(frozen=True, slots=True)
class Reading:
    metric: str
    value: float
    at: datetime
    trend: Trend | None = None


@dataclass(frozen=True, slots=True)
class Step:
    """A step of the work order that a resident may know: sent, accepted (on the way),
    on_site, resolved (reported fixed), closed (verified), reopened, refused (a resolve or close
    refused because the sensors still show the hazard)."""

    what: str
    at: datetime


@dataclass(frozen=True, slots=True)
class Incident:
    hazard: str
    place: str
    level: int | None
    live: bool  # the alert is open: the sensors (or reports) still show it
    raised: datetime
    cleared: datetime | None
    sensed: bool  # a sensor watches it (else: known from reports only)
    check_asked: bool = False  # a grid worker was asked to look


@dataclass(frozen=True, slots=True)
class Facts:
    appeal_id: str
    received: datetime
    category: str
    place: str
    incident: Incident | None = None
    reading: Reading | None = None
    order_state: str | None = None
    steps: tuple[Step, ...] = ()
    appeals: int = 1
    callers: int = 1


def status(f: Facts) -> str:
    """GeoReport status: ``closed`` only after the order's verified close."""
    return "closed" if f.order_state == "closed" else "open"


def _t(ts: datetime, tz: ZoneInfo) -> str:
    return ts.astimezone(tz).strftime("%H:%M")


def _num(v: float) -> str:
    return f"{v:.0f}" if abs(v - round(v)) < 0.05 or abs(v) >= 10 else f"{v:.1f}"


def _last(steps: Sequence[Step], *what: str) -> Step | None:
    return next((s for s in reversed(steps) if s.what in what), None)


def place_zh(name: str, roads: Mapping[str, str]) -> str:
    """A zone name with the roads and kinds of place it names in Chinese, where known."""
    out = name
    for en, zh in sorted(roads.items(), key=lambda kv: -len(kv[0])):
        out = out.replace(en, zh)
    for en, zh in ((" railway underpass", "铁路地道"), (" underpass", "地道"),
                   (" low section", "低洼路段"), (" x ", "与"), ("Grid cell ", "网格"),
                   (", fall zone", "坠物区"), ("under the railway", "铁路下"),
                   ("north", "北"), ("south", "南"), ("section", "段")):
        out = out.replace(en, zh)
    return re.sub(r"\s*\(\s*", "（", re.sub(r"\s*\)", "）", out))


SHANGHAI: Final = ZoneInfo("Asia/Shanghai")


def reply(f: Facts, lang: Lang = "en", tz: ZoneInfo = SHANGHAI,
          roads: Mapping[str, str] | None = None) -> str:
    """The reply in full sentences, newest facts first."""
    return (_zh(f, tz, roads or {}) if lang == "zh" else _en(f, tz)).strip()


def _en(f: Facts, tz: ZoneInfo) -> str:
    out: list[str] = []
    inc = f.incident
    what = HAZARD_WORDS.get(f.category, HAZARD_WORDS["other"])[0]
    if inc is None:
        out.append(f"{f.place}: {what} reported at {_t(f.received, tz)}.")
        if f.category == "other":
            out.append("citywatch watches standing water, falling objects and traffic; this "
                       "appeal is recorded here and handled by the hotline's own process.")
        else:
            out.append("No sensor or grid worker has confirmed it yet, and no incident is "
                       "open for it.")
    else:
        # A sensor's incident is where its zone is; one known from reports is in a whole grid
        # cell, so the appeal's own place says more.
        head = f"{inc.place if inc.sensed else f.place}:"
        r = f.reading
        m = None if r is None else _metric(r.metric)
        if r is not None and m is not None:
            name, unit = m.words.en, m.unit.en
            trend = f", {_TRENDS[(m.crossing, r.trend)][0]}" if r.trend else ""
            head += f" {name} {_num(r.value)} {unit} at {_t(r.at, tz)}{trend}."
        elif inc.sensed:
            head += f" {what} seen at {_t(inc.raised, tz)}."
        else:
            head += (f" {what} reported at {_t(inc.raised, tz)}; no sensor measures it "
                     "here.")
        out.append(head)
        if inc.live and inc.level is not None and inc.level in LEVELS:
            out.append(f"Warning level {LEVELS[inc.level][0]}.")
        elif not inc.live and inc.cleared is not None:
            out.append(f"{'The sensors have' if inc.sensed else 'Nobody has'} shown it "
                       f"since {_t(inc.cleared, tz)}.")
        out.append(_team_en(f, tz))
        if inc.check_asked and not inc.sensed:
            out.append("A grid worker has been asked to check on the spot.")
    n = "appeal" if f.appeals == 1 else "appeals"
    c = "caller" if f.callers == 1 else "callers"
    if f.appeals > 1:
        one = ", one incident" if inc is not None else ", one problem"
        out.append(f"{f.appeals} {n} from {f.callers} {c}{one}.")
    out.append(f"Your appeal {f.appeal_id} was received at {_t(f.received, tz)}.")
    return " ".join(s for s in out if s)


def _team_en(f: Facts, tz: ZoneInfo) -> str:
    s = f.steps
    state = f.order_state
    if state == "closed":
        closed = _last(s, "closed")
        return (f"Closed at {_t(closed.at, tz)} after the fix was confirmed." if closed
                else "Closed after the fix was confirmed.")
    if state == "resolved":
        fixed = _last(s, "resolved")
        at = f" at {_t(fixed.at, tz)}" if fixed else ""
        return (f"The team reported it fixed{at}; it stays open until the sensors or an "
                "inspector confirm it.")
    refused = _last(s, "refused")
    tail = (f" A report that it was fixed was not accepted at {_t(refused.at, tz)}: the "
            "sensors still showed it." if refused else "")
    if state == "accepted":
        on_site = _last(s, "on_site")
        if on_site:
            return f"A team has been on site since {_t(on_site.at, tz)}.{tail}"
        acc = _last(s, "accepted")
        return (f"A team is on the way (since {_t(acc.at, tz)}).{tail}" if acc
                else f"A team is on it.{tail}")
    if state in ("open", "assigned"):
        sent = _last(s, "sent", "reopened")
        at = f" at {_t(sent.at, tz)}" if sent else ""
        return f"A team has been sent{at} and has not yet answered.{tail}"
    return ""


def _zh(f: Facts, tz: ZoneInfo, roads: Mapping[str, str]) -> str:
    out: list[str] = []
    inc = f.incident
    what = HAZARD_WORDS.get(f.category, HAZARD_WORDS["other"])[1]
    if inc is None:
        out.append(f"{place_zh(f.place, roads)}：{_t(f.received, tz)}收到关于{what}的反映。")
        if f.category == "other":
            out.append("本平台监测积水、高空坠物和交通；此诉求已登记，由热线按其流程办理。")
        else:
            out.append("目前尚无传感器或网格员确认，也没有相应的事件。")
    else:
        head = f"{place_zh(inc.place if inc.sensed else f.place, roads)}："
        r = f.reading
        m = None if r is None else _metric(r.metric)
        if r is not None and m is not None:
            zn, zu = m.words.zh, m.unit.zh
            trend = f"，{_TRENDS[(m.crossing, r.trend)][1]}" if r.trend else ""
            head += f"{_t(r.at, tz)}{zn}{_num(r.value)}{zu}{trend}。"
        elif inc.sensed:
            head += f"{_t(inc.raised, tz)}监测到{what}。"
        else:
            head += f"{_t(inc.raised, tz)}有人反映{what}，此处没有传感器监测。"
        out.append(head)
        if inc.live and inc.level is not None and inc.level in LEVELS:
            out.append(f"预警等级：{LEVELS[inc.level][1]}。")
        elif not inc.live and inc.cleared is not None:
            out.append(f"{_t(inc.cleared, tz)}起{'传感器' if inc.sensed else ''}已不再显示。")
        out.append(_team_zh(f, tz))
        if inc.check_asked and not inc.sensed:
            out.append("已请网格员到现场查看。")
    if f.appeals > 1:
        one = "同属一个事件" if inc is not None else "同属一个问题"
        out.append(f"共{f.appeals}次诉求、{f.callers}位来电人，{one}。")
    out.append(f"您的诉求{f.appeal_id}于{_t(f.received, tz)}受理。")
    return "".join(s for s in out if s)


def _team_zh(f: Facts, tz: ZoneInfo) -> str:
    s = f.steps
    state = f.order_state
    if state == "closed":
        closed = _last(s, "closed")
        return f"经核实已于{_t(closed.at, tz)}办结。" if closed else "经核实已办结。"
    if state == "resolved":
        fixed = _last(s, "resolved")
        at = f"于{_t(fixed.at, tz)}" if fixed else ""
        return f"处置队伍{at}报告已处理，待传感器或核查人员确认后办结。"
    refused = _last(s, "refused")
    tail = f"{_t(refused.at, tz)}的处理完毕报告未被接受：传感器仍显示异常。" if refused else ""
    if state == "accepted":
        on_site = _last(s, "on_site")
        if on_site:
            return f"处置队伍自{_t(on_site.at, tz)}起在现场。{tail}"
        acc = _last(s, "accepted")
        return (f"处置队伍已出发（{_t(acc.at, tz)}）。{tail}" if acc
                else f"处置队伍正在处理。{tail}")
    if state in ("open", "assigned"):
        sent = _last(s, "sent", "reopened")
        at = f"于{_t(sent.at, tz)}" if sent else ""
        return f"已{at}派出处置队伍，尚未回复。{tail}"
    return ""


def steps_from_history(history: Sequence[Mapping[str, object]]) -> tuple[Step, ...]:
    """A work order's history (``work_order_history`` rows: ts, action, to_state, actor,
    reason) as the steps a resident may know. Only the state and its time are kept: never the
    actor, nor the words of a note."""
    out: list[Step] = []
    for h in history:
        ts = h["ts"]
        assert isinstance(ts, datetime)
        action, to, actor = h.get("action"), h.get("to_state"), str(h.get("actor") or "")
        reason = str(h.get("reason") or "")
        if action is None:
            if actor.startswith("team ") and reason.startswith("on_site"):
                out.append(Step("on_site", ts))
            elif actor.startswith("team ") and reason.startswith("reported resolved"):
                out.append(Step("refused", ts))
            continue
        if action == "accept":
            out.append(Step("on_site" if reason.startswith("on_site") else "accepted", ts))
        elif action in ("resolve", "close", "reopen"):
            out.append(Step({"resolve": "resolved", "close": "closed",
                             "reopen": "reopened"}[str(action)], ts))
        elif action in ("assign", "escalate") or to == "open":
            out.append(Step("sent", ts))
    if history and not any(s.what == "sent" for s in out):
        first = history[0]["ts"]
        assert isinstance(first, datetime)
        out.insert(0, Step("sent", first))
    return tuple(out)
