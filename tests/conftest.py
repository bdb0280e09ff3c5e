"""Shared fixtures: one plugin module per concern (``fix_broker``, ``fix_db``, ``fix_clock``,
``fix_users``)."""

pytest_plugins = ["tests.fix_broker", "tests.fix_db", "tests.fix_clock", "tests.fix_users"]
