"""The CAP 1.2 XSD for tests: the official one shipped in the package (``alerts/schemas``), so
the tests validate with exactly what an installed citywatch has, and need nothing beside the
repository. The specification's example alerts are test data in ``tests/data/cap``."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

from alerts.cap import load_schema

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "tests" / "data" / "cap"


@cache
def cap_schema() -> Any:
    """The packaged XSD as an ``lxml.etree.XMLSchema``, loaded once."""
    return load_schema()
