"""Users and logged-in HTTP clients for tests that call the API.

``ensure_user`` creates a user in a service's database (once); ``token_for`` logs in through
``POST /api/token``; ``Client`` is an ``httpx.Client`` that sends the token with every request.
The ``users_of`` fixture gives a factory: ``users_of(service)`` -> a ``Logins`` that returns a
logged-in client per role (viewer, operator, dispatcher of gusu-drainage, team drainage-1, admin).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import psycopg
import pytest

from alerts import users
from alerts.identity import Identity

PASSWORD = "correct horse battery staple"
# One user per role, as the shipped configuration allows them.
ROLE_USERS: dict[str, tuple[str, str | None, str | None]] = {
    "viewer": ("test-viewer", None, None),
    "operator": ("test-operator", None, None),
    "dispatcher": ("test-dispatcher", "gusu-drainage", None),
    "team": ("test-team", "gusu-drainage", "drainage-1"),
    "admin": ("test-admin", None, None),
}


def ensure_user(db_url: str, name: str, role: str, department: str | None = None,
                team: str | None = None, password: str = PASSWORD) -> None:
    """Create the user unless it exists (a restarted service keeps its users)."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        users.migrate(conn)
        if any(u.name == name for u in users.list_users(conn)):
            return
        users.add_user(conn, Identity(name, role, department, team),  # type: ignore[arg-type]
                       password)


def token_for(base_url: str, name: str, password: str = PASSWORD) -> str:
    r = httpx.post(f"{base_url}/api/token", timeout=10, data={
        "grant_type": "password", "username": name, "password": password})
    assert r.status_code == 200, r.text
    return str(r.json()["access_token"])


class Client(httpx.Client):
    """An httpx client logged in as one user (a bearer token); ``user`` is its name."""

    def __init__(self, base_url: str, user: str, token: str, **kwargs: Any) -> None:
        super().__init__(base_url=base_url, timeout=10,
                         headers={"Authorization": f"Bearer {token}"}, **kwargs)
        self.user = user

    def json_of(self, path: str, **params: Any) -> Any:
        r = self.get(path, params=params)
        r.raise_for_status()
        return r.json()


def login(base_url: str, db_url: str, role: str) -> Client:
    name, department, team = ROLE_USERS[role]
    ensure_user(db_url, name, role, department, team)
    return Client(base_url, name, token_for(base_url, name))


class Logins:
    """Logged-in clients of one running service, one per role, made on first use."""

    def __init__(self, base_url: str, db_url: str) -> None:
        self.base_url, self.db_url = base_url, db_url
        self._clients: dict[str, Client] = {}

    def __getitem__(self, role: str) -> Client:
        if role not in self._clients:
            self._clients[role] = login(self.base_url, self.db_url, role)
        return self._clients[role]

    def close(self) -> None:
        for c in self._clients.values():
            c.close()
        self._clients.clear()


@pytest.fixture
def users_of() -> Iterator[Callable[[str, str], Logins]]:
    """``users_of(base_url, db_url)``: logged-in clients per role for a running service."""
    made: list[Logins] = []

    def make(base_url: str, db_url: str) -> Logins:
        made.append(Logins(base_url, db_url))
        return made[-1]

    yield make
    for m in made:
        m.close()
