"""Starting before the database: after a power cut the application machine may come back
before the database's. ``citywatch serve`` waits for it (``database.start_wait_s``), saying so,
and starts when it answers; a database that answers "no" fails the start at once."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from citywatch.config import load_config
from citywatch.service import Endpoints, Service, connect_at_start
from tests.fix_db import with_dbname
from tests.fix_faults import TcpProxy

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def test_the_service_waits_for_a_database_that_comes_later(
        broker_url: str, fresh_db_url: str, caplog: pytest.LogCaptureFixture) -> None:
    proxy = TcpProxy(int(conninfo_to_dict(fresh_db_url).get("port") or 5432))
    proxy.refuse()  # the database's machine is still starting
    via_proxy = make_conninfo(fresh_db_url, host="127.0.0.1", port=str(proxy.port))
    config = load_config(REPO / "config.yaml", env={})
    service = Service(config, Endpoints(broker_url, via_proxy), http_port=0,
                      client_id=f"citywatch-wait-{uuid.uuid4().hex[:8]}")
    failed: list[BaseException] = []

    def start() -> None:
        try:
            service.start()
        except BaseException as exc:  # reported below
            failed.append(exc)

    caplog.set_level(logging.WARNING, logger="citywatch.service")
    starting = threading.Thread(target=start)
    try:
        starting.start()
        time.sleep(3.5)
        assert starting.is_alive() and not failed, f"did not wait: {failed}"
        proxy.restore()
        starting.join(60)
        assert not starting.is_alive() and not failed, failed
        assert service.health()["database"]["connected"]
        waits = [r.getMessage() for r in caplog.records if "unreachable" in r.getMessage()]
        assert waits and "of 300, trying again in" in waits[0], waits
    finally:
        service.stop()
        proxy.close()


def test_a_database_that_answers_no_fails_the_start_at_once(fresh_db_url: str) -> None:
    missing = with_dbname(fresh_db_url, f"no_such_db_{uuid.uuid4().hex[:6]}")
    t0 = time.monotonic()
    with pytest.raises(psycopg.OperationalError, match="does not exist"):
        connect_at_start(missing, 300)
    assert time.monotonic() - t0 < 5
