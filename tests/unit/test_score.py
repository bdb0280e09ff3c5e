"""Scoring against ground truth, the replay comparison, and the two commands end to end."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from citywatch import replay, score
from citywatch.cli import main
from citywatch.config import Config, load_config
from rules.base import AlertChange
from rules.levels import Level
from sensing import store
from sensing.models import Telemetry
from simulators.truth import FaultTruth, GroundTruth, HazardTruth

REPO = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 7, 15, 8, 0, tzinfo=UTC)
RED, ORANGE, YELLOW, BLUE = Level.RED, Level.ORANGE, Level.YELLOW, Level.BLUE


@cache
def config() -> Config:
    return load_config(REPO / "config.yaml", env={})


def at(minute: float) -> datetime:
    return T0 + timedelta(minutes=minute)


def ch(minute: float, zone: str, hazard: str, level: Level | None,
       *evidence: dict[str, Any]) -> AlertChange:
    return AlertChange(zone, hazard, level, at(minute), "t", evidence)


def result(changes: list[AlertChange], truth: list[HazardTruth],
           faults: tuple[FaultTruth, ...] = ()) -> score.RunResult:
    from geo.load import load_zones

    zones = {z.id: z for z in load_zones(config().zones_path)}
    gt = GroundTruth("t", 1, T0, at(24 * 60), tuple(truth), faults)
    return score.RunResult("t", 1, T0, at(24 * 60), changes, score.Counts(), 0, 0, gt,
                           "test", zones)


def test_episodes_fold_changes_per_zone_and_hazard() -> None:
    eps = score.episodes([ch(0, "up-01", "waterlogging", BLUE), ch(5, "up-01", "waterlogging",
                                                                    YELLOW),
                          ch(9, "up-01", "waterlogging", None), ch(20, "up-01", "waterlogging",
                                                                   RED)])
    assert [(e.raised, e.cleared, e.peak, e.first_blue, e.first_yellow) for e in eps] == [
        (at(0), at(9), YELLOW, at(0), at(5)), (at(20), None, RED, None, at(20))]


def test_precision_recall_delay_false_alarms_and_watches() -> None:
    truth = [HazardTruth("waterlogging", "up-01", at(10), at(40), 2),
             HazardTruth("waterlogging", "up-02", at(10), at(40), 3),
             HazardTruth("traffic", "x-01", at(0), at(20), 3)]
    changes = [
        ch(2, "up-01", "waterlogging", BLUE), ch(12, "up-01", "waterlogging", ORANGE),
        ch(50, "up-01", "waterlogging", None),  # a warning 8 min ahead: a hit
        ch(300, "up-03", "waterlogging", YELLOW),  # nothing there: a false alarm
        ch(301, "up-04", "waterlogging", BLUE),  # a watch that came to nothing
        ch(5, "cell-01", "waterlogging", BLUE),  # a report alert: not scored
        ch(3, "x-01", "traffic", YELLOW),
    ]
    by = {s.hazard: s for s in score.score(result(changes, truth))}
    w = by["waterlogging"]
    assert (w.truths, w.episodes, w.matched_truths, w.matched_episodes) == (2, 2, 1, 1)
    assert (w.precision, w.recall, w.delays_s, w.false_alarms) == (0.5, 0.5, (-480.0,), 1)
    assert (w.watches, w.watches_matched) == (1, 0)
    assert by["traffic"].recall == 1.0 and by["traffic"].delays_s == (180.0,)
    assert by["falling_object"].precision is None  # nothing to find, nothing raised


def test_alerts_resting_on_a_faulty_gauge_are_found() -> None:
    faults = (FaultTruth("wl-03", "stuck", at(0), at(60)),)
    changes = [
        ch(5, "up-02", "waterlogging", YELLOW, {"device_id": "wl-03", "role": "deepest"},
           {"device_id": "wl-04"}),
        ch(6, "up-01", "waterlogging", YELLOW, {"device_id": "wl-01", "role": "deepest"},
           {"device_id": "wl-03"}),  # names it, but does not rest on it
        ch(7, "up-05", "waterlogging", BLUE, {"device_id": "wl-03"},
           {"rain_signal": "orange", "rain_gauges": ["rg-01"]}),  # rests on the rain gauges
    ]
    bad = score.faulty_hazard_alerts(result(changes, [], faults))
    assert [c.zone_id for c in bad] == ["up-02"]


def test_replay_compare_says_what_changed() -> None:
    base = [ch(10, "up-01", "waterlogging", YELLOW), ch(30, "up-01", "waterlogging", None),
            ch(10, "up-02", "waterlogging", YELLOW), ch(30, "up-02", "waterlogging", None),
            ch(10, "x-01", "traffic", BLUE), ch(20, "x-01", "traffic", None)]
    cand = [ch(4, "up-01", "waterlogging", YELLOW), ch(30, "up-01", "waterlogging", None),
            ch(10, "up-02", "waterlogging", RED), ch(30, "up-02", "waterlogging", None),
            ch(50, "up-03", "waterlogging", BLUE)]
    diffs = replay.compare(base, cand, at(60))
    assert [(d.kind, d.zone_id, d.what) for d in diffs] == [
        ("earlier", "up-01", "raised"), ("earlier", "up-01", "yellow"),
        ("higher", "up-02", "raised"), ("removed", "x-01", "raised"),
        ("added", "up-03", "raised")]
    assert "raised by 6.0 min" in diffs[0].describe()


@pytest.mark.parametrize(("text", "expected"), [
    ("6h", at(0) - timedelta(hours=6)), ("30min", at(0) - timedelta(minutes=30)),
    ("2026-07-15T02:00:00Z", datetime(2026, 7, 15, 2, 0, tzinfo=UTC)),
])
def test_since(text: str, expected: datetime) -> None:
    assert replay.parse_since(text, at(0)) == expected


def test_score_command_on_a_short_run(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["score", "mixed", "--hours", "0.35", "--config", str(REPO / "config.yaml")])
    out = capsys.readouterr().out
    assert code == 0
    assert "scenario mixed, seed 1: 0.35 simulated hours" in out
    row = next(line for line in out.splitlines() if line.startswith("falling_object"))
    assert row.split()[1:4] == ["1", "1", "1"]  # one throw, one alert, found


def test_short_runs_are_deterministic() -> None:
    a = score.run(config(), "mixed", hours=0.2)
    b = score.run(config(), "mixed", hours=0.2)
    assert a.alert_log() == b.alert_log() and a.alert_log()


@pytest.mark.integration
def test_replay_command_against_the_database(db_url: str, db_migrated: object,
                                             tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    with psycopg.connect(db_url) as conn:
        conn.execute("TRUNCATE telemetry, events")
        conn.commit()
        readings = [Telemetry("wl-01", "water", at(i / 6), 10_000 + i,
                              {"water_depth_cm": min(12.0, i * 0.2)}) for i in range(120)]
        store.write_batch_and_commit(conn, readings, [])
    data = yaml.safe_load((REPO / "config.yaml").read_text(encoding="utf-8"))
    data["rules"]["waterlogging"]["thresholds"]["underpass"]["yellow_cm"] = 8
    data["zones"]["file"] = str(REPO / "data" / "zones" / "gusu.geojson")
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(data), encoding="utf-8")
    env_url = {"CITYWATCH_DATABASE_URL": db_url}
    run_replay: Callable[[], int] = lambda: replay.command(  # noqa: E731
        load_config(other, env=env_url),
        argparse.Namespace(against=str(REPO / "config.yaml"), since="2026-07-15T07:00:00Z",
                           until=None, alerts=False, config=str(other)))
    assert run_replay() == 0
    out = capsys.readouterr().out
    assert "replayed 120 stored messages" in out
    assert "earlier  up-01    waterlogging           yellow by" in out  # 8 cm comes sooner
