"""Shared fixtures: one plugin module per concern (``fix_broker``, ``fix_db``, ``fix_clock``,
``fix_users``, ``fix_faults``)."""

pytest_plugins = ["tests.fix_broker", "tests.fix_db", "tests.fix_clock", "tests.fix_users",
                  "tests.fix_faults", "tests.fix_cluster"]
