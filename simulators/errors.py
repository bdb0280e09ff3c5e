"""The simulator's errors: one root, so a caller can catch everything the simulator raises."""

from __future__ import annotations


class SimulatorError(Exception):
    """Root of the simulator's errors: a bad broker URL, start time, speed or scenario."""


class ScenarioError(SimulatorError, ValueError):
    """A scenario that cannot be used: an unknown name or an inconsistent timeline."""
