"""Simulated devices, one module per kind. Pure: they return contract payloads, never publish.

``FACTORIES`` maps each built-in kind to the function that builds its simulator;
:func:`factories` adds the plug-in kinds (``sensing.plugins``) that can be simulated.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from simulators.devices import camera, grid, rain, traffic, water
from simulators.devices.base import BaseDevice, DeviceSim, Output, Payload, Site

if TYPE_CHECKING:
    from sensing.plugins import Plugin
    from simulators.configured import DeviceConfig

log = logging.getLogger(__name__)

DeviceFactory = Callable[["DeviceConfig", Site, random.Random], DeviceSim]

FACTORIES: dict[str, DeviceFactory] = {
    "camera": camera.create,
    "water": water.create,
    "rain": rain.create,
    "traffic": traffic.create,
    "grid": grid.create,
}


def factories(plugins: Mapping[str, Plugin]) -> dict[str, DeviceFactory]:
    """The built-in factories plus each plug-in's ``create``; a plug-in without one only tells
    the platform how to validate its kind, and its devices are not simulated."""
    out = dict(FACTORIES)
    for kind, plugin in plugins.items():
        create = getattr(plugin.obj, "create", None)
        if callable(create):
            out[kind] = create
        else:
            log.info("plug-in kind %r (%s) has no create(): not simulated", kind, plugin.source)
    return out


__all__ = ["FACTORIES", "BaseDevice", "DeviceFactory", "DeviceSim", "Output", "Payload", "Site",
           "factories"]
