"""Simulators: the case-study device fleet publishing over MQTT per the contract.

Used by ``citywatch simulate`` and ``citywatch run``; talks to citywatch only through the broker.
"""
