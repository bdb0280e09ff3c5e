"""Alerts: from rule changes to alerts, work orders and dispatched warnings.

Owns the alert and work-order lifecycles (transition tables), routing, their storage, the outbox
that publishes dispatches and zone states over MQTT, and the HTTP API.
"""
