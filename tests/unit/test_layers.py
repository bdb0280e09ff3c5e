"""Who may import whom: the simulators nothing of the composition root, the pure core (rules,
geo) nothing that does I/O or reads a clock."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
IO = ("psycopg", "paho", "fastapi", "httpx", "socket", "sensing", "alerts", "citywatch")


def imports(package: str) -> Iterator[tuple[str, str]]:
    for path in sorted((REPO / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    yield str(path.relative_to(REPO)), alias.name
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                yield str(path.relative_to(REPO)), node.module


def test_the_simulators_import_nothing_from_the_composition_root() -> None:
    assert [(f, m) for f, m in imports("simulators") if m.split(".")[0] == "citywatch"] == []


@pytest.mark.parametrize("package", ["rules", "geo"])
def test_the_pure_core_does_no_io(package: str) -> None:
    assert [(f, m) for f, m in imports(package) if m.split(".")[0] in IO] == []
