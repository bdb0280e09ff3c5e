"""``citywatch user add | list | disable`` (CONTRACT section 6), and the demo's first login.

The users live in the configured database (``database.url`` or ``CITYWATCH_DATABASE_URL``). With
``database.url: embedded`` the command uses the embedded PostgreSQL in ``--data-dir``: the one a
running ``citywatch run`` started, or, when none runs, its own for the moment it needs; it
connects as the database's owner role, whose password the embedded database keeps (0600).
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import os
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg

from alerts import users
from alerts.identity import ROLES, Identity, IdentityError
from citywatch.config import Config

DEMO_ADMIN = "admin"
PASSWORD_FILE = "admin-password"  # noqa: S105 (a file name, not a password)


class UserCommandError(Exception):
    """What the user asked for cannot be done; the message says why."""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser],
               common: argparse.ArgumentParser) -> None:
    s = sub.add_parser("user", help="add, list or disable the people who may log in",
                       description="Manage logins to the HTTP API and the console.")
    users_sub = s.add_subparsers(dest="user_command", required=True)
    data = argparse.ArgumentParser(add_help=False)
    data.add_argument("--data-dir", default="var", type=Path,
                      help="the embedded database's data (default: var), when database.url is "
                      "'embedded'")
    add = users_sub.add_parser(
        "add", parents=[common, data], help="create a user; the password is read from stdin",
        description="Create a user. The password is read from standard input (asked twice on a "
        f"terminal; at least {users.MIN_PASSWORD} characters). Roles: viewer (reads), operator "
        "(acts on alerts and every work order), dispatcher (its department's orders: needs "
        "--department), team (its own orders: needs --team), admin (everything).")
    add.add_argument("name", help="the login name")
    add.add_argument("--role", required=True, choices=ROLES)
    add.add_argument("--department", default=None, help="a department id of the config "
                     "(dispatchers)")
    add.add_argument("--team", default=None, help="a team id of the config (team users)")
    users_sub.add_parser("list", parents=[common, data], help="list users")
    disable = users_sub.add_parser("disable", parents=[common, data],
                                   help="disable a user; its tokens and sessions end at once")
    disable.add_argument("name")


def command(config: Config, args: argparse.Namespace) -> int:
    try:
        with user_database(config, args.data_dir) as url, \
                psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
            _migrate_if_allowed(conn)
            if args.user_command == "add":
                who = identity_for(config, args.name, args.role, args.department, args.team)
                password = read_password()
                users.add_user(conn, who, password)
                extra = who.department if who.role == "dispatcher" else who.team
                print(f"added {who.user} ({who.role}{f', {extra}' if extra else ''})")
            elif args.user_command == "list":
                print_users(users.list_users(conn))
            else:
                users.disable_user(conn, args.name)
                print(f"disabled {args.name}: its tokens and sessions no longer work")
    except (UserCommandError, users.UserError, IdentityError) as exc:
        print(f"citywatch user: {exc}", file=sys.stderr)
        return 2
    except psycopg.OperationalError as exc:
        print(f"citywatch user: database unavailable: {exc}", file=sys.stderr)
        return 1
    return 0


def identity_for(config: Config, name: str, role: str, department: str | None,
                 team: str | None) -> Identity:
    """The identity to create, checked against the configuration's departments and teams."""
    departments = {d.id for d in config.departments}
    teams = {t.id: t.department for t in config.teams}
    if role == "dispatcher":
        if team is not None:
            raise UserCommandError("a dispatcher has a --department, not a --team")
        if department not in departments:
            raise UserCommandError(
                f"--department {department!r} is not a department of the configuration; "
                f"expected one of: {', '.join(sorted(departments))}")
    elif role == "team":
        if team not in teams:
            raise UserCommandError(f"--team {team!r} is not a team of the configuration; "
                                   f"expected one of: {', '.join(sorted(teams))}")
        if department is not None and department != teams[team]:
            raise UserCommandError(f"team {team} belongs to {teams[team]}, not {department}")
        department = teams[team]
    elif department is not None or team is not None:
        raise UserCommandError(f"a {role} acts without a department or team: leave out "
                               "--department and --team")
    return Identity(name, role, department, team)  # type: ignore[arg-type]


def read_password() -> str:
    if sys.stdin.isatty():
        first = getpass.getpass("password: ")
        if getpass.getpass("again: ") != first:
            raise UserCommandError("the two passwords differ")
        return first
    line = sys.stdin.readline()
    return line[:-1] if line.endswith("\n") else line


def print_users(found: list[users.User]) -> None:
    if not found:
        print("no users yet: citywatch user add NAME --role ROLE")
        return
    rows = [("name", "role", "department", "team", "state", "created")] + [
        (u.name, u.role, u.department or "-", u.team or "-",
         "disabled" if u.disabled else "active", u.created.strftime("%Y-%m-%d %H:%M"))
        for u in found]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())


def _migrate_if_allowed(conn: psycopg.Connection[Any]) -> None:
    """Create the users tables if this role may; a service role that may not relies on the
    service having made them at its start (as the owner)."""
    with contextlib.suppress(psycopg.errors.InsufficientPrivilege):
        users.migrate(conn)


@contextlib.contextmanager
def user_database(config: Config, data_dir: Path) -> Iterator[str]:
    """The configured database's URL; for an embedded one, the running server's or our own."""
    if config.database.url != "embedded":
        yield config.database.url
        return
    running = running_embedded_url(data_dir / "postgres")
    if running is not None:
        yield running
        return
    from citywatch import embedded

    try:
        with embedded.start_database(data_dir / "postgres") as database:
            yield database.owner_url
    except embedded.EmbeddedError as exc:
        raise UserCommandError(f"cannot start the embedded PostgreSQL in {data_dir}: {exc}"
                               ) from exc


def running_embedded_url(data_dir: Path, database: str = "citywatch") -> str | None:
    """The owner's URL of the embedded PostgreSQL a ``citywatch run`` keeps in ``data_dir``, if
    it runs: its postmaster.pid names the port, its passwords file the owner's password."""
    from citywatch.embedded import LOOPBACK, OWNER_ROLE, PASSWORDS_FILE

    try:
        lines = (data_dir / "pgdata" / "postmaster.pid").read_text().splitlines()
        pid, port = int(lines[0]), int(lines[3])
        os.kill(pid, 0)
        password = json.loads((data_dir / PASSWORDS_FILE).read_text(encoding="utf-8"))[OWNER_ROLE]
    except (OSError, ValueError, IndexError, KeyError, TypeError):
        return None
    return (f"postgresql://{OWNER_ROLE}:{quote(str(password), safe='')}@{LOOPBACK}:{port}/"
            f"{database}")


def login_hint(database_url: str) -> str:
    """For ``serve``: how to log in, or that nobody can yet."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        if users.count_active(conn) > 0:
            return "log in with your user"
    return "nobody can log in yet: citywatch user add NAME --role admin"


def ensure_first_login(database_url: str, data_dir: Path) -> str:
    """For the demo: when nobody may log in yet, create an admin with a generated password,
    written to ``data_dir/admin-password`` (mode 0600), never printed. Says how to log in.
    The users tables exist: the service made them at its start."""
    path = data_dir / PASSWORD_FILE
    with psycopg.connect(database_url, autocommit=True) as conn:
        if users.count_active(conn) > 0:
            if path.exists():
                return (f"log in as {DEMO_ADMIN} (or your own user): its first password is in "
                        f"{path}")
            return "log in with your user (citywatch user add NAME --role ROLE adds one)"
        taken = {u.name for u in users.list_users(conn)}
        name = DEMO_ADMIN if DEMO_ADMIN not in taken else next(
            f"{DEMO_ADMIN}-{i}" for i in range(2, 10_000) if f"{DEMO_ADMIN}-{i}" not in taken)
        password = secrets.token_urlsafe(15)
        data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), 0o600)  # an older file keeps its mode through O_TRUNC
            f.write(password + "\n")
        users.add_user(conn, Identity(name, "admin"), password)
    return (f"first login created: user {name}, password in {path} (readable by you only); "
            "citywatch user add for more")
