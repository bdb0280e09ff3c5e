"""Issue 5's measure: on `storm`, the work orders match the true incidents one to one."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from citywatch import score
from citywatch.config import load_config
from citywatch.funnel import run_funnel
from simulators.runner import Simulation

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def test_storm_orders_match_the_ground_truth_one_to_one(fresh_db_url: str) -> None:
    config = load_config(REPO / "config.yaml", env={})
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=2)
    sim = Simulation(config, "storm", seed=1, speed=None, start=start)
    end = score._scenario_end(sim)
    messages = [(t, p) for _at, t, p in score._messages(sim, end)]
    truth = score._sim_truth(sim)
    assert truth is not None
    out = run_funnel(config, fresh_db_url, "storm", messages, end - start, truth)
    assert out.truth_incidents >= 10
    assert (out.matched, out.missing, out.extra) == (out.truth_incidents, [], [])
    assert out.work_orders == out.incidents == out.truth_incidents
    # The mountain shrinks: far fewer orders than messages, reports merged, not opened.
    assert out.messages > 1000 * out.work_orders
    assert out.duplicates_merged > 0
    assert out.rejected == 0
