"""What a resident is told (alerts.appeal_reply): facts with times, closed only when verified."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from alerts.appeal_reply import Facts, Incident, Reading, Step, reply, status, steps_from_history

T0 = datetime(2026, 7, 1, 6, 5, tzinfo=UTC)  # 14:05 in Suzhou
ROADS = {"Renmin Road": "人民路"}


def flood(order_state: str, steps: tuple[Step, ...] = (), live: bool = True) -> Facts:
    inc = Incident("waterlogging", "Renmin Road underpass (north, under the railway)", 1, live,
                   T0 - timedelta(minutes=10), None if live else T0, True)
    return Facts("AP-000017", T0 - timedelta(minutes=2), "waterlogging", "Grid cell 19", inc,
                 Reading("water_depth_cm", 31.0, T0, "falling"), order_state, steps, 17, 9)


def test_the_reply_says_the_reading_the_team_and_the_count() -> None:
    f = flood("accepted", (Step("sent", T0), Step("on_site", T0 + timedelta(minutes=7))))
    en = reply(f, "en")
    assert en.startswith("Renmin Road underpass (north, under the railway): water 31 cm at "
                         "14:05, falling.")
    assert "A team has been on site since 14:12." in en
    assert "17 appeals from 9 callers, one incident." in en
    assert status(f) == "open"
    zh = reply(f, "zh", roads=ROADS)
    assert zh.startswith("人民路地道（北, 铁路下）：14:05水深31厘米，正在回落。")
    assert "处置队伍自14:12起在现场" in zh and "共17次诉求、9位来电人" in zh


def test_closed_only_after_the_verified_close() -> None:
    fixed = flood("resolved", (Step("resolved", T0),), live=False)
    assert status(fixed) == "open"
    assert "reported it fixed at 14:05; it stays open" in reply(fixed)
    closed = flood("closed", (Step("resolved", T0), Step("closed", T0 + timedelta(minutes=15))),
                   live=False)
    assert status(closed) == "closed"
    assert "Closed at 14:20 after the fix was confirmed." in reply(closed)
    assert "经核实已于14:20办结" in reply(closed, "zh")


def test_history_gives_states_and_times_never_names_or_notes() -> None:
    h = [{"ts": T0, "action": None, "to_state": "open", "actor": "system",
          "reason": "opened for alert AL-1; routed to gusu-drainage, team drainage-1"},
         {"ts": T0, "action": "accept", "to_state": "accepted", "actor": "team drainage-1",
          "reason": "on_site: Wang Wei, pumps"},
         {"ts": T0, "action": None, "to_state": "accepted", "actor": "team drainage-1",
          "reason": "reported resolved: done, but the sensors still show waterlogging"}]
    steps = steps_from_history(h)
    assert [s.what for s in steps] == ["sent", "on_site", "refused"]
    text = reply(flood("accepted", steps))
    assert "Wang" not in text and "drainage" not in text and "pumps" not in text
    assert "was not accepted at 14:05: the sensors still showed it" in text


def test_an_appeal_without_an_incident_says_so() -> None:
    f = Facts("AP-000001", T0, "other", "Grid cell 19")
    assert "handled by the hotline's own process" in reply(f)
    assert status(f) == "open"
