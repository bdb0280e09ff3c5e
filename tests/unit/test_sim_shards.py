"""``citywatch simulate --procs P``: the fleet split between processes, whole connections each."""

from __future__ import annotations

import pytest

from citywatch.broker_access import simulator_gateways
from citywatch.config import Device
from simulators.errors import SimulatorError
from simulators.links import DEVICES_PER_SHARED_LINK
from simulators.runner import shard_of


def fleet(n: int) -> list[Device]:
    return [Device(id=f"d{i:06d}", kind="water", position=(120.0, 31.0)) for i in range(n)]


@pytest.mark.parametrize(("n", "procs"), [(1, 1), (10, 3), (2500, 2), (10_000, 4), (999, 4)])
def test_the_shards_split_the_fleet_once_and_keep_each_gateway_whole(n: int, procs: int) -> None:
    devices = fleet(n)
    shards = [shard_of(devices, i, procs) for i in range(procs)]
    ids = [d.id for s in shards for d in s]
    assert sorted(ids) == [d.id for d in devices]  # each device in exactly one process
    where = {d.id: i for i, s in enumerate(shards) for d in s}
    for members in simulator_gateways([d.id for d in devices],
                                      DEVICES_PER_SHARED_LINK).values():
        assert len({where[m] for m in members}) == 1  # a gateway connects from one process
    if n >= procs * DEVICES_PER_SHARED_LINK:
        sizes = [len(s) for s in shards]
        assert max(sizes) - min(sizes) <= DEVICES_PER_SHARED_LINK


def test_a_shard_outside_the_count_is_refused() -> None:
    with pytest.raises(SimulatorError, match="expected 0 <= index < count"):
        shard_of(fleet(3), 2, 2)
