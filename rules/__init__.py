"""Rules: pure hazard logic, one module per hazard.

A rule is ``evaluate(state, observation) -> (state, changes)`` plus ``tick(state, now)`` for what
fires when nothing arrives. No sockets, no database, no clock reads: time arrives with the data.
Each hazard module declares a ``rules.hazard.Hazard``; importing ``rules`` registers the
built-in ones (``rules.registry``), so every zone knows its hazards.
"""

from rules import registry as registry
