"""Which incident, if any, a resident's appeal is about (pure: no I/O, no clock).

The store offers *targets* near the appeal: open or recently ended incidents of its category, and
earlier appeals of its category that joined no incident (a problem no sensor sees: a blocked
drain, a noise). Each target is scored on three things and the best one above the threshold wins:

- **place**: 1 within ``near_m`` (or inside the incident's zone), falling to 0 at ``radius_m``;
- **time**: 1 while the incident is open, falling to 0 ``window`` after it ended (or after the
  earlier appeal);
- **text**: the similarity of the words (``alerts.appeal_text``: bilingual concepts and place
  names), against the incident's title and zone and the appeals it already has.

``score = 0.45 place + 0.15 time + 0.40 text`` (+``caller_bonus`` when the same caller appealed
about it before), matched when at least ``threshold``. Weights and threshold were chosen on the
labelled New York set (README, "Residents' reports"), where the keyword method measured as well
as an embedding model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

TextSimilarity = Callable[[str, Sequence[str]], float]


@dataclass(frozen=True, slots=True)
class MatchParams:
    near_m: float = 50.0
    radius_m: float = 200.0
    incident_window: timedelta = timedelta(hours=6)
    appeal_window: timedelta = timedelta(hours=12)
    threshold: float = 0.7
    w_place: float = 0.45
    w_time: float = 0.15
    w_text: float = 0.40
    caller_bonus: float = 0.15

    def __post_init__(self) -> None:
        if not 0 <= self.near_m < self.radius_m:
            raise ValueError("expected 0 <= near_m < radius_m")
        if not 0 < self.threshold <= 1:
            raise ValueError("expected 0 < threshold <= 1")


@dataclass(frozen=True, slots=True)
class Target:
    """Something an appeal may join."""

    kind: Literal["incident", "appeal"]
    id: str
    category: str
    distance_m: float  # from the appeal to the target (0 inside an incident's zone)
    age: timedelta  # since the target was last live: 0 while an incident is open
    texts: tuple[str, ...]
    same_caller: bool = False
    open: bool = False


@dataclass(frozen=True, slots=True)
class Verdict:
    target: Target
    score: float
    place: float
    time: float
    text: float

    @property
    def how(self) -> str:
        """In words, for the record (``appeals.how``)."""
        what = ("an open incident" if self.target.kind == "incident" and self.target.open
                else "a recent incident" if self.target.kind == "incident"
                else "an earlier appeal")
        caller = ", same caller" if self.target.same_caller else ""
        return (f"{what}: {self.target.distance_m:.0f} m away, words alike {self.text:.2f}"
                f"{caller} (score {self.score:.2f})")


def place_score(distance_m: float, p: MatchParams) -> float:
    if distance_m <= p.near_m:
        return 1.0
    if distance_m >= p.radius_m:
        return 0.0
    return 1.0 - (distance_m - p.near_m) / (p.radius_m - p.near_m)


def time_score(t: Target, p: MatchParams) -> float:
    if t.open:
        return 1.0
    window = p.incident_window if t.kind == "incident" else p.appeal_window
    if t.age >= window:
        return 0.0
    return 1.0 - max(t.age, timedelta(0)) / window


def score(text: str, category: str, t: Target, p: MatchParams,
          similar: TextSimilarity) -> Verdict | None:
    """The target's verdict, or None when it cannot be the same problem (another category,
    too far, too long ago)."""
    if t.category != category or t.distance_m > p.radius_m:
        return None
    tm = time_score(t, p)
    if tm <= 0.0:
        return None
    pl = place_score(t.distance_m, p)
    tx = similar(text, t.texts) if t.texts else 0.0
    s = p.w_place * pl + p.w_time * tm + p.w_text * tx
    if t.same_caller:
        s += p.caller_bonus
    return Verdict(t, min(s, 1.0), pl, tm, tx)


def best(text: str, category: str, targets: Sequence[Target], p: MatchParams,
         similar: TextSimilarity) -> Verdict | None:
    """The best target at or above the threshold; incidents win ties (they carry the work)."""
    verdicts = [v for t in targets if (v := score(text, category, t, p, similar)) is not None
                and v.score >= p.threshold]
    if not verdicts:
        return None
    return max(verdicts, key=lambda v: (v.score, v.target.kind == "incident", v.target.id))
