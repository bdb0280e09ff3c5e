"""The official CAP 1.2 XSD for tests. It is not part of the repository: it sits beside it in
``../shared/data/cap/`` (or where ``CITYWATCH_CAP_XSD`` says). Missing: the tests that need it
skip on a developer's machine and fail under ``CI=true``."""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path
from typing import Any

from alerts.cap import load_schema
from tests.fix_db import unavailable

REPO = Path(__file__).resolve().parents[1]
DEFAULT_XSD = REPO.parent / "shared" / "data" / "cap" / "CAP-v1.2.xsd"


def xsd_path() -> Path:
    return Path(os.environ.get("CITYWATCH_CAP_XSD", DEFAULT_XSD))


@cache
def _load(path: Path) -> Any:
    return load_schema(path)


def cap_schema() -> Any:
    """The XSD as an ``lxml.etree.XMLSchema``, loaded once."""
    path = xsd_path()
    if not path.is_file():
        unavailable(f"the CAP 1.2 schema is not at {path} (set CITYWATCH_CAP_XSD)")
    return _load(path)
