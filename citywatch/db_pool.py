"""The API's database pool, which is back soon after the database is.

psycopg_pool retries a connection that failed with a doubling delay (1, 2, 4, ... s) until its
``reconnect_timeout``: after a 60 s outage its next try may come a minute after PostgreSQL is
back, and until then every request and ``/api/health`` say the database is down (the fault
matrix's PostgreSQL-stopped case saw it). Here the delay stops growing at ``RETRY_MAX_S``; a
try is one connection attempt to one server, cheap beside what a minute of a blind console costs.
"""

from __future__ import annotations

from typing import Any

from psycopg import Connection
from psycopg_pool import ConnectionPool
from psycopg_pool.base import AttemptWithBackoff

RETRY_MAX_S = 2.0


class PromptPool(ConnectionPool[Connection[Any]]):
    """A ``ConnectionPool`` whose reconnection delay never passes ``RETRY_MAX_S``."""

    def _add_connection(self, attempt: AttemptWithBackoff | None,
                        growing: bool = False) -> None:
        if attempt is not None:
            # The pool doubles the delay after this try fails; cap what it doubles.
            attempt.delay = min(attempt.delay, RETRY_MAX_S / attempt.DELAY_BACKOFF)
        super()._add_connection(attempt, growing)


def open_pool(conninfo: str, size: int) -> PromptPool:
    """The API's pool: autocommit, each connection checked when taken (one the server dropped
    is replaced then, not found by a request's 503)."""
    return PromptPool(conninfo, min_size=1, max_size=size, open=True,
                      kwargs={"autocommit": True}, check=ConnectionPool.check_connection)
