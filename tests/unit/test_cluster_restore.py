"""A partition's new owner rebuilds the catchments' rain from the gauges' recent readings
(citywatch.cluster_worker.with_rain) and keeps the open alerts' levels."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from citywatch.cluster_worker import with_rain
from citywatch.config import load_config
from citywatch.service import build_engine, build_placement
from geo.load import load_zones
from rules.levels import Level
from sensing.models import Telemetry
from tests.fix_faults import CONFIG


def test_rain_survives_a_move_and_levels_stay_the_open_alerts() -> None:
    cfg = load_config(CONFIG, env={})
    zones = load_zones(cfg.zones_path)
    placement = build_placement(cfg, zones)
    engine = build_engine(cfg, zones, placement)
    end = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
    readings = [Telemetry("rg-02", "rain", end - timedelta(minutes=60 - i), i,
                          {"rain_rate_mm_h": 29.0 + i % 3}) for i in range(61)]
    restored = engine.restore({("up-06", "waterlogging"): Level.BLUE})
    state = with_rain(engine, restored, placement.place_many(readings))
    gauge = state.rain["rg-02"]
    assert 25.0 <= gauge.fallen_mm(3) <= 31.0  # an hour at 30 mm/h
    assert engine.current_levels(state) == engine.current_levels(restored)
    assert with_rain(engine, restored, []) is restored


def test_a_partition_draining_a_past_storm_does_not_tick() -> None:
    from types import SimpleNamespace
    from typing import Any

    from citywatch.cluster_worker import may_tick

    now = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
    allowance = timedelta(seconds=30)

    def pipe(progress: float | None, clock: datetime | None) -> Any:
        return SimpleNamespace(last_progress=progress, state=SimpleNamespace(clock=clock))

    # Stored a moment ago, its rules 20 minutes behind: a backlog drains.
    assert not may_tick(pipe(99.0, now - timedelta(minutes=20)), allowance, now, 100.0)
    # Live: the rules are current.
    assert may_tick(pipe(99.0, now - timedelta(seconds=5)), allowance, now, 100.0)
    # Nothing stored for the allowance: the devices may really be silent.
    assert may_tick(pipe(60.0, now - timedelta(minutes=20)), allowance, now, 100.0)
    assert may_tick(pipe(None, None), allowance, now, 100.0)
