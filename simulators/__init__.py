"""Simulators: the case-study device fleet publishing over MQTT per the contract.

Used by ``citywatch simulate`` and ``citywatch run``; talks to citywatch only through the broker.

- ``devices/``: one module per kind; pure value evolution, returning contract payloads.
- ``scenario.py``: scenarios as data (storms, congestion, throwers), bound to a fleet and a seed.
- ``runner.py``: :class:`~simulators.runner.Simulation`, step-wise generation and the MQTT side.
"""
