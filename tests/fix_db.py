"""Database fixtures: a scratch PostgreSQL database per test session.

``CITYWATCH_TEST_PG`` names the server (a libpq URI to a database we may connect to and create
databases from; default the local ``postgres`` database). Unreachable: the tests skip, except under
``CI=true``, where a missing database is a failure (STYLE: never a silent skip in CI).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any, NoReturn
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql

from sensing import store
from sensing.scratch import scratch_database

DEFAULT_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def redact(url: str) -> str:
    """The URL without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def unavailable(message: str) -> NoReturn:
    """Skip on a developer's machine, fail under CI."""
    if in_ci():
        pytest.fail(f"{message} (CI=true: a missing service is a failure)", pytrace=False)
    pytest.skip(message)


def with_dbname(url: str, dbname: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("postgres", "postgresql"):
        raise ValueError(f"CITYWATCH_TEST_PG must be a postgresql:// URI, got {redact(url)!r}")
    return urlunsplit(parts._replace(path=f"/{dbname}"))


@pytest.fixture(scope="session")
def db_url() -> Iterator[str]:
    """A libpq URI to a fresh, empty database, dropped at the end of the session."""
    server = os.environ.get("CITYWATCH_TEST_PG", DEFAULT_SERVER)
    try:
        admin = psycopg.connect(server, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        unavailable(f"PostgreSQL unreachable at {redact(server)} (set CITYWATCH_TEST_PG): {exc}")
    admin.close()
    with_dbname(server, "check")  # a non-postgresql URI fails here, with its reason
    with scratch_database(server, "citywatch_test") as url:
        yield url


@pytest.fixture(scope="session")
def db_migrated(db_url: str) -> store.StorageMode:
    """Migrate the session database once (plain PostgreSQL unless the server has Timescale)."""
    with psycopg.connect(db_url) as conn:
        return store.migrate(conn)


@pytest.fixture
def db_conn(db_url: str, db_migrated: store.StorageMode) -> Iterator[psycopg.Connection[Any]]:
    """A connection (not autocommit) to the migrated schema with every table emptied."""
    with psycopg.connect(db_url) as conn:
        truncate_all(conn)
        yield conn
        if not conn.closed:
            conn.rollback()  # leaving the with block would otherwise commit what the test left


def truncate_all(conn: psycopg.Connection[Any]) -> None:
    """Empty every table in the current schema but ``schema_version``; commits."""
    schema = conn.execute("SELECT current_schema()").fetchone()
    if schema is None or schema[0] is None or str(schema[0]).startswith(("pg_", "_timescaledb")):
        # With search_path gone astray this would empty the system catalogs.
        raise RuntimeError(f"refusing to truncate every table in schema {schema}")
    tables = [
        r[0]
        for r in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
            " AND tablename <> 'schema_version'"
        )
    ]
    if tables:
        conn.execute(
            sql.SQL("TRUNCATE {} RESTART IDENTITY CASCADE").format(
                sql.SQL(", ").join(map(sql.Identifier, tables))
            )
        )
    conn.commit()


@pytest.fixture
def fresh_db_url(db_url: str) -> Iterator[str]:
    """Another empty database on the same server, for a test that needs its own (a service)."""
    with scratch_database(os.environ.get("CITYWATCH_TEST_PG", DEFAULT_SERVER),
                          "citywatch_test") as url:
        yield url
