"""citywatch: the composition root.

The command line, configuration loading, embedded services and the wiring of ``sensing``,
``rules``, ``geo``, ``alerts`` and ``simulators``. The only package that knows them all.
"""

__version__ = "0.1.0"
