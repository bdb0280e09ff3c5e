"""Sensing: everything that comes from devices.

Owns the MQTT side of the contract (topics, payload decoding and validation, the paho adapter),
the device registry and presence, and durable storage of telemetry and events in PostgreSQL or
TimescaleDB. The pure parts (``models``, ``topics``, ``decode``) do no I/O.
"""
