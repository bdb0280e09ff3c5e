"""``citywatch user add``: what it accepts is checked against the configuration's departments and
teams before anything is written."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from citywatch.config import load_config
from citywatch.users_cli import UserCommandError, identity_for, running_embedded_url

REPO = Path(__file__).resolve().parents[2]
CONFIG = load_config(REPO / "config.yaml", env={})


def test_a_dispatcher_needs_a_configured_department() -> None:
    who = identity_for(CONFIG, "dina", "dispatcher", "office-st-02", None)
    assert (who.role, who.department, who.team) == ("dispatcher", "office-st-02", None)
    with pytest.raises(UserCommandError, match="'nowhere' is not a department"):
        identity_for(CONFIG, "dina", "dispatcher", "nowhere", None)
    with pytest.raises(UserCommandError, match="is not a department"):
        identity_for(CONFIG, "dina", "dispatcher", None, None)
    with pytest.raises(UserCommandError, match="not a --team"):
        identity_for(CONFIG, "dina", "dispatcher", "gusu-drainage", "drainage-1")


def test_a_team_user_takes_its_teams_department() -> None:
    who = identity_for(CONFIG, "tom", "team", None, "grid-st-03-1")
    assert (who.department, who.team) == ("grid-st-03", "grid-st-03-1")
    with pytest.raises(UserCommandError, match="'ghost' is not a team"):
        identity_for(CONFIG, "tom", "team", None, "ghost")
    with pytest.raises(UserCommandError, match="belongs to gusu-drainage"):
        identity_for(CONFIG, "tom", "team", "gusu-traffic", "drainage-1")


@pytest.mark.parametrize("role", ["viewer", "operator", "admin"])
def test_other_roles_have_no_department_or_team(role: str) -> None:
    assert identity_for(CONFIG, "x", role, None, None).role == role
    with pytest.raises(UserCommandError, match="without a department or team"):
        identity_for(CONFIG, "x", role, "gusu-drainage", None)


def test_no_running_embedded_database_without_its_pid_file(tmp_path: Path) -> None:
    assert running_embedded_url(tmp_path) is None
    (tmp_path / "pgdata").mkdir()
    # A pid file left by a server that is gone (pid 2**22 + 1 does not exist).
    (tmp_path / "pgdata" / "postmaster.pid").write_text(f"{2**22 + 1}\n/x\n1\n5433\n")
    (tmp_path / "passwords.json").write_text('{"citywatch_owner": "s3cret/+"}')
    assert running_embedded_url(tmp_path) is None
    # A live one (this process stands in for the server): the owner's URL, password quoted.
    (tmp_path / "pgdata" / "postmaster.pid").write_text(f"{os.getpid()}\n/x\n1\n5433\n")
    assert running_embedded_url(tmp_path) == \
        "postgresql://citywatch_owner:s3cret%2F%2B@127.0.0.1:5433/citywatch"
