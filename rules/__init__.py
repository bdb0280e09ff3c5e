"""Rules: pure hazard logic, one module per hazard.

A rule is ``evaluate(state, observation) -> (state, changes)`` plus ``tick(state, now)`` for what
fires when nothing arrives. No sockets, no database, no clock reads: time arrives with the data.
"""
