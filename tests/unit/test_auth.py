"""Logins (alerts.auth) without a database: the per-address limit counts every attempt, even those
the database could not answer, and a token works only where it was issued for."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest

from alerts import users
from alerts.auth import Credentials, LocalAuthenticator, LoginLimits, Throttled, Unavailable
from alerts.identity import Identity


class DownPool:
    """A pool whose database is away."""

    @contextmanager
    def connection(self, timeout: float | None = None) -> Iterator[Any]:
        raise psycopg.OperationalError("connection refused at 10.0.0.9:5432 as user citywatch")
        yield


def test_the_per_address_limit_counts_every_attempt() -> None:
    now = [0.0]
    auth = LocalAuthenticator(DownPool(), limits=LoginLimits(per_address=2,  # type: ignore[arg-type]
                                                             failures_per_user=5),
                              clock=lambda: now[0])
    for _ in range(2):
        with pytest.raises(Unavailable, match=r"^database unavailable$"):
            auth.login("ada", "pw", "bearer", "10.1.1.1")
    with pytest.raises(Throttled) as err:
        auth.login("bob", "pw", "bearer", "10.1.1.1")
    assert err.value.retry_after == 60
    with pytest.raises(Unavailable):  # another address is not held up
        auth.login("ada", "pw", "bearer", "10.1.1.2")
    now[0] += 61
    with pytest.raises(Unavailable):
        auth.login("ada", "pw", "bearer", "10.1.1.1")


class OnePool:
    """A pool whose every token belongs to one owner (``users.owner`` is replaced)."""

    @contextmanager
    def connection(self, timeout: float | None = None) -> Iterator[Any]:
        yield None


@pytest.mark.parametrize(("kind", "creds", "accepted"), [
    ("bearer", Credentials(bearer="t"), True),
    ("bearer", Credentials(session="t"), False),  # a token is not a cookie
    ("session", Credentials(session="t"), True),
    ("session", Credentials(bearer="t"), False),  # a cookie value is not a token
    ("bearer", Credentials(), False),
])
def test_a_token_works_only_as_what_it_was_issued_for(monkeypatch: pytest.MonkeyPatch,
                                                      kind: users.TokenKind,
                                                      creds: Credentials,
                                                      accepted: bool) -> None:
    owner = users.TokenOwner(Identity("ada", "admin"), kind, "csrf" if kind == "session" else None)
    monkeypatch.setattr(users, "owner", lambda _conn, _token: owner)
    found = LocalAuthenticator(OnePool()).verify(creds)  # type: ignore[arg-type]
    assert (found is not None) == accepted
    if found is not None:
        assert found.identity.user == "ada" and found.via == kind
