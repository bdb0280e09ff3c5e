"""The API's pool is back within seconds of the database, however long the database was away.

psycopg_pool's own retry delay doubles without bound: after the fault matrix's 60 s PostgreSQL
stop, ``/api/health`` still said "database down" when everything had been stored."""

from __future__ import annotations

import time

import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import PoolTimeout

from citywatch.db_pool import open_pool
from tests.fix_faults import TcpProxy

pytestmark = pytest.mark.integration

OUTAGE_S = 8.0  # long enough for psycopg_pool's own delay to reach 8 s (tries at 0, 1, 3, 7 s)


def test_the_pool_connects_soon_after_the_database_returns(db_url: str) -> None:
    proxy = TcpProxy(int(conninfo_to_dict(db_url).get("port") or 5432))
    proxy.refuse()  # the database is down: every connection is closed at once
    pool = open_pool(make_conninfo(db_url, host="127.0.0.1", port=str(proxy.port)), 2)
    try:
        end = time.monotonic() + OUTAGE_S
        while time.monotonic() < end:  # the console keeps asking, as /api/health does
            with pytest.raises(PoolTimeout):
                pool.getconn(timeout=0.5)
        proxy.restore()
        back = time.monotonic()
        conn = None
        while conn is None and time.monotonic() - back < 30:
            try:
                conn = pool.getconn(timeout=0.5)
            except PoolTimeout:
                continue
        waited = time.monotonic() - back
        assert conn is not None, "the pool never connected again"
        assert conn.execute("SELECT 1").fetchone() == (1,)
        pool.putconn(conn)
        # A try at most every RETRY_MAX_S (2 s), plus the try itself and the poll's step, with
        # room for a loaded machine. Uncapped, the next try comes 5.5-8.5 s after the return.
        assert waited < 5.0, f"the pool took {waited:.1f} s after the database"
    finally:
        pool.close()
        proxy.close()
