"""The OpenAPI document tells the truth: schemathesis, with every check it has, against the live
service, logged in as an admin, finds nothing.

Deterministic (a fixed seed, no example database) and bounded (15 examples per operation), so that
it fits CI. ``GET /api/stream`` is left out: an event stream never ends, so every call would be a
timeout; test_access.py and test_console.py test it.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from citywatch.config import Config, load_config
from citywatch.service import Endpoints, Service
from tests.fix_users import ensure_user, token_for
from tests.integration.test_pipeline_e2e import REPO, publish_all, telemetry, wait_for

pytestmark = pytest.mark.integration

SEED = 1
EXAMPLES = 15


@pytest.fixture(scope="module")
def config() -> Config:
    return load_config(REPO / "config.yaml", env={})


def test_schemathesis_with_all_checks_finds_no_failure(config: Config, broker_url: str,
                                                       fresh_db_url: str, tmp_path: Path) -> None:
    service = Service(config, Endpoints(broker_url, fresh_db_url), http_port=0,
                      client_id=f"citywatch-openapi-{uuid.uuid4().hex[:8]}")
    service.start()
    try:
        ensure_user(fresh_db_url, "openapi-admin", "admin")
        token = token_for(service.url, "openapi-admin")
        # Something to find: an alert and its work order.
        publish_all(broker_url, [("city/water/wl-01/telemetry", telemetry(1, 30.0))])
        wait_for("an alert", lambda: service.health()["counts"].get("alerts", 0) >= 1)
        cli = Path(sys.executable).with_name("schemathesis")
        started = time.monotonic()
        done = subprocess.run(
            [str(cli), "run", f"{service.url}/openapi.json", "--checks", "all",
             "--seed", str(SEED), "--max-examples", str(EXAMPLES), "--generation-database",
             "none", "--exclude-path", "/api/stream", "--request-timeout", "10", "--no-color",
             "--header", f"Authorization: Bearer {token}"],
            capture_output=True, text=True, timeout=600, cwd=tmp_path, check=False)
        print(f"schemathesis: {time.monotonic() - started:.1f} s")
    finally:
        service.stop()
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-8000:]
    assert "passed" in out and "failure" not in out.split("SUMMARY")[-1].lower(), out[-4000:]
