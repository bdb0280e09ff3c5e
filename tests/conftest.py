"""Shared fixtures: one plugin module per concern (``fix_broker``, ``fix_db``, ``fix_faults``)."""

pytest_plugins = ["tests.fix_broker", "tests.fix_db", "tests.fix_faults"]
