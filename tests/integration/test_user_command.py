"""``citywatch user add | list | disable`` on a real database, and the demo's first login."""

from __future__ import annotations

import asyncio
import io
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from prometheus_client import CollectorRegistry
from psycopg_pool import ConnectionPool

from alerts import users
from alerts.api import ApiDeps, WebSettings, create_app
from citywatch.cli import main
from citywatch.users_cli import PASSWORD_FILE, ensure_first_login

pytestmark = pytest.mark.integration


def run(argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        db: str, stdin: str = "") -> tuple[int, str]:
    monkeypatch.setenv("CITYWATCH_DATABASE_URL", db)
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out + out.err


def test_add_list_and_disable(fresh_db_url: str, monkeypatch: pytest.MonkeyPatch,
                              capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(["user", "add", "dina", "--role", "dispatcher", "--department",
                     "squadron-st-02"], monkeypatch, capsys, fresh_db_url,
                    "a long enough password\n")
    assert code == 0 and "added dina (dispatcher, squadron-st-02)" in out
    code, out = run(["user", "add", "eve", "--role", "dispatcher", "--department", "nowhere"],
                    monkeypatch, capsys, fresh_db_url, "a long enough password\n")
    assert code == 2 and "'nowhere' is not a department" in out
    code, out = run(["user", "add", "dina", "--role", "viewer"], monkeypatch, capsys,
                    fresh_db_url, "a long enough password\n")
    assert code == 2 and "exists already" in out
    code, out = run(["user", "add", "sam", "--role", "viewer"], monkeypatch, capsys,
                    fresh_db_url, "short\n")
    assert code == 2 and "too short" in out
    code, out = run(["user", "list"], monkeypatch, capsys, fresh_db_url)
    assert code == 0
    assert [line.split()[:5] for line in out.splitlines()[1:]] == [
        ["dina", "dispatcher", "squadron-st-02", "-", "active"]]
    with psycopg.connect(fresh_db_url, autocommit=True) as conn:
        assert users.verify_password(conn, "dina", "a long enough password") is not None
        stored = conn.execute("SELECT password_hash FROM users").fetchone()
    assert stored is not None and stored[0].startswith("$argon2id$")
    code, out = run(["user", "disable", "dina"], monkeypatch, capsys, fresh_db_url)
    assert code == 0 and "disabled dina" in out
    code, out = run(["user", "list"], monkeypatch, capsys, fresh_db_url)
    assert "disabled" in out.splitlines()[1]
    code, out = run(["user", "disable", "nobody"], monkeypatch, capsys, fresh_db_url)
    assert code == 2 and "no user 'nobody'" in out


def test_the_demo_makes_a_first_login_once_with_a_private_password_file(
        fresh_db_url: str, tmp_path: Path) -> None:
    with psycopg.connect(fresh_db_url, autocommit=True) as conn:
        users.migrate(conn)  # as the service does at its start
    said = ensure_first_login(fresh_db_url, tmp_path)
    path = tmp_path / PASSWORD_FILE
    assert "user admin" in said and str(path) in said
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    password = path.read_text().strip()
    assert len(password) >= 16 and password not in said
    with psycopg.connect(fresh_db_url, autocommit=True) as conn:
        who = users.verify_password(conn, "admin", password)
        assert who is not None and who.role == "admin"
        again = ensure_first_login(fresh_db_url, tmp_path)
        assert "first password" in again
        assert [u.name for u in users.list_users(conn)] == ["admin"], "made once"
        assert path.read_text().strip() == password


def test_the_503_names_no_host_port_or_user() -> None:
    pool: Any = ConnectionPool("postgresql://secretuser@127.0.0.1:1/citywatch", min_size=0,
                               max_size=1, open=True, kwargs={"connect_timeout": 1})
    try:
        app = create_app(ApiDeps(pool=pool, zones=[], list_devices=lambda _c: [],
                                 health=dict, registry=CollectorRegistry(),
                                 clock=lambda: datetime.now(UTC),
                                 web=WebSettings(pool_wait_s=1.0)))
        transport = httpx.ASGITransport(app=app)

        async def get(path: str, **kw: Any) -> httpx.Response:
            async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
                return await c.get(path, **kw)

        # Exactly these words: whatever the driver or the pool said stays in the log.
        r = asyncio.run(get("/api/alerts", headers={"Authorization": "Bearer x"}))
        assert (r.status_code, r.json()) == (503, {"detail": "database unavailable"})
        r = asyncio.run(get("/open311/v2/requests.json"))
        assert (r.status_code, r.json()) == (503, [{"code": 503,
                                                    "description": "database unavailable"}])
    finally:
        pool.close()
