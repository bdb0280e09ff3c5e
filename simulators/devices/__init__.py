"""Simulated devices, one module per kind. Pure: they return contract payloads, never publish.

``FACTORIES`` maps a kind to the function that builds its simulator; the plug-in issue will let
packages register more kinds here.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TYPE_CHECKING

from simulators.devices import camera, grid, rain, traffic, water
from simulators.devices.base import DeviceSim, Output, Payload, Site

if TYPE_CHECKING:
    from citywatch.config import Device

DeviceFactory = Callable[["Device", Site, random.Random], DeviceSim]

FACTORIES: dict[str, DeviceFactory] = {
    "camera": camera.create,
    "water": water.create,
    "rain": rain.create,
    "traffic": traffic.create,
    "grid": grid.create,
}

__all__ = ["FACTORIES", "DeviceFactory", "DeviceSim", "Output", "Payload", "Site"]
