"""Simulators: the case-study device fleet publishing over MQTT per the contract.

Used by ``citywatch simulate`` and ``citywatch run``; talks to citywatch only through the broker.

- ``physics/``: the models, pure: Suzhou design storms (Chicago hyetograph, moving cell), runoff
  into low points, urban traffic (daily profile, BPR, incident queues), free fall.
- ``devices/``: one module per kind, what a sensor adds to the physics (noise, resolution, its
  payloads); plug-in kinds come in through ``sensing.plugins``.
- ``faults.py``: stuck, spiking, drifting, silent, dead and dropped-off sensors.
- ``scenario.py`` and ``scenarios/*.yaml``: what happens, when and where; the bound world.
- ``teams.py``: the teams' terminals answering dispatched warnings.
- ``groundtruth.py``: what really happened (``truth.py`` is the file format).
- ``runner.py``: :class:`~simulators.runner.Simulation`, offline generation and real-time runs;
  ``links.py`` and ``wire.py``: the connections to the broker.
"""
