"""The wheel works on its own: built from the sources, installed into a fresh virtualenv, run
from a directory outside the repository with nothing but a deployment's files (its config.yaml
and its zones file), ``citywatch serve`` answers and stores what ``citywatch simulate demo``
publishes, against the test broker and a scratch database.

A deployment brings its own district (config and zones): they describe one city and change with
it, so they are not package data. What the code itself reads (scenarios, console files, the
Mosquitto template, the CAP schema) is, and this test fails if any of it, or any subpackage, is
left out of the wheel."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from citywatch.config import load_config
from tests.fix_broker import connect
from tests.integration.test_pipeline_e2e import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.install]

REPO = Path(__file__).resolve().parents[2]
# Not part of a source distribution: local environments, caches and build output.
NOT_SOURCES = shutil.ignore_patterns(
    ".git", ".venv", "var", "build", "dist", "*.egg-info", "__pycache__", ".*_cache",
    ".hypothesis", "node_modules", "artifacts")


def run(args: list[str | Path], timeout: float, **kw: Any) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True,
                          timeout=timeout, check=False, **kw)
    assert done.returncode == 0, f"{args}: exit {done.returncode}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ``bin`` directory of a fresh virtualenv holding only the wheel and its dependencies."""
    tmp = tmp_path_factory.mktemp("install")
    src = tmp / "src"
    shutil.copytree(REPO, src, ignore=NOT_SOURCES)  # the build writes build/: not in the repo
    began = time.monotonic()
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir",
         tmp / "dist", src], timeout=300)
    (wheel,) = (tmp / "dist").glob("citywatch-*.whl")
    built = time.monotonic()
    venv = tmp / "venv"
    run([sys.executable, "-m", "venv", venv], timeout=120)
    run([venv / "bin" / "python", "-m", "pip", "install", "--quiet", wheel], timeout=600)
    print(f"\nwheel built in {built - began:.1f} s; virtualenv with the wheel and its "
          f"dependencies in {time.monotonic() - built:.1f} s")
    return venv / "bin"


@pytest.fixture
def deployment(tmp_path: Path, broker_url: str, fresh_db_url: str) -> Path:
    """A deployment's directory: its config.yaml (the default district's, pointed at the test
    broker and database) beside its zones file."""
    data = yaml.safe_load((REPO / "config.yaml").read_text(encoding="utf-8"))
    # Its own session: the configured client id's persistent session would collect every later
    # test's messages on the shared test broker.
    data["broker"] = {"url": broker_url, "client_id": f"citywatch-wheel-{uuid.uuid4().hex[:8]}",
                      "session_expiry_s": 0}
    data["database"] = {**data.get("database", {}), "url": fresh_db_url}
    data["http"] = {"host": "127.0.0.1", "port": 0}
    zones = tmp_path / data["zones"]["file"]
    zones.parent.mkdir(parents=True)
    shutil.copyfile(REPO / data["zones"]["file"], zones)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(data, sort_keys=False),
                                          encoding="utf-8")
    return tmp_path


def outside_env() -> dict[str, str]:
    """No way back into the repository: no PYTHONPATH, no CITYWATCH_* overrides."""
    return {k: v for k, v in os.environ.items()
            if k != "PYTHONPATH" and not k.startswith("CITYWATCH_")}


class Output:
    """A child's stdout, read on a thread so the pipe never fills and lines can be awaited."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        assert proc.stdout is not None
        self._stdout = proc.stdout
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        with self._stdout:  # closed at the child's end of output
            for line in self._stdout:
                self.lines.append(line)

    def close(self) -> None:
        self._thread.join(timeout=10)

    def find(self, pattern: str) -> re.Match[str] | None:
        return next((m for line in list(self.lines) if (m := re.search(pattern, line))), None)


def test_the_installed_wheel_serves_and_simulates_outside_the_repository(
        installed: Path, deployment: Path, broker_url: str) -> None:
    env = outside_env()
    # Imported from the virtualenv, with everything the code reads beside it.
    where = run([installed / "python", "-c",
                 "import alerts.cap, simulators.devices, simulators.physics, simulators.scenario;"
                 "from importlib import resources as r; import citywatch.service as s;"
                 "print(alerts.cap.load_schema() is not None, simulators.scenario.scenario_names(),"
                 " (s.STATIC_DIR / 'index.html').is_file(),"
                 " r.files('citywatch').joinpath('mosquitto.conf').is_file(), s.__file__)"],
                timeout=60, cwd=deployment, env=env).stdout
    assert where.startswith("True ["), where
    assert "'demo'" in where and "True True" in where, where
    assert str(installed.parent) in where and str(REPO) not in where, where

    serve = subprocess.Popen(
        [str(installed / "citywatch"), "serve", "--config", "config.yaml", "--data-dir", "var",
         "--duration", "300"],
        cwd=deployment, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = Output(serve)
    try:
        wait_for("citywatch serve to start", lambda: serve.poll() is not None or out.find(
            r"citywatch is running: dashboard "), timeout=60)
        running = out.find(r"citywatch is running: dashboard (http://\S+?)/ ")
        assert running is not None and serve.poll() is None, "".join(out.lines)
        url = running.group(1)
        health = httpx.get(f"{url}/api/health", timeout=10)
        assert health.status_code == 200, health.text
        assert health.json()["broker"]["connected"] and health.json()["database"]["connected"]

        sim = run([installed / "citywatch", "simulate", "demo", "--config", "config.yaml",
                   "--duration", "6", "--truth", "truth.json"], timeout=120, cwd=deployment,
                  env=env)
        assert "scenario demo" in sim.stdout and "simulation stopped" in sim.stdout, sim.stdout
        assert (deployment / "truth.json").is_file()

        counts = wait_for("serve to store what simulate published", lambda: (
            c if (c := httpx.get(f"{url}/api/health", timeout=10).json()["counts"])
            .get("stored", 0) > 0 else None), timeout=30)
        assert counts["messages"] >= counts["stored"] > 0
    finally:
        if serve.poll() is None:
            serve.send_signal(signal.SIGTERM)
        try:
            serve.wait(timeout=60)
        finally:
            if serve.poll() is None:
                serve.kill()
                serve.wait()
            out.close()
            _clear_retained_presence(broker_url)
    assert serve.returncode == 0, "".join(out.lines[-40:])
    assert out.find("stopped cleanly"), "".join(out.lines[-40:])


def _clear_retained_presence(broker_url: str) -> None:
    """The simulated devices' retained status stays on the shared test broker: clear it."""
    client = connect(broker_url)
    try:
        for d in load_config(REPO / "config.yaml", env={}).devices:
            client.publish(f"city/{d.kind}/{d.id}/status", b"", qos=1, retain=True)
    finally:
        client.disconnect()
        client.loop_stop()
