"""A database connection for one HTTP request: a bounded wait, and a plain 503 when there is none.

The 503 says "database unavailable" and nothing more: the reason (host, port, user, the server's
message) goes to the log, not to whoever asked.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from fastapi import HTTPException
from psycopg_pool import ConnectionPool

log = logging.getLogger(__name__)

UNAVAILABLE = "database unavailable"


@contextmanager
def pooled(pool: ConnectionPool[psycopg.Connection[Any]],
           wait_s: float = 5.0) -> Iterator[psycopg.Connection[Any]]:
    try:
        with pool.connection(timeout=wait_s) as conn:
            yield conn
    except psycopg.OperationalError as exc:  # also the pool's timeout and a lost connection
        log.warning("%s: %s", UNAVAILABLE, exc)
        raise HTTPException(503, UNAVAILABLE) from None
