"""The console's static files: present, linked by relative path, nothing from the internet.

A light check without a browser; tests/integration/test_console.py drives the page in Chromium.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

STATIC = Path(__file__).resolve().parents[2] / "citywatch" / "static"
FILES = ("index.html", "app.js", "style.css")
ALL_FILES = sorted(p.name for p in STATIC.iterdir() if p.is_file())
# An XML namespace is a name that happens to look like a URL; nothing fetches it.
NAMESPACE = re.compile(r"""xmlns(?::\w+)?=["']http://www\.w3\.org/[^"']*["']""")


@pytest.mark.parametrize("name", FILES)
def test_file_exists_and_is_not_empty(name: str) -> None:
    path = STATIC / name
    assert path.is_file(), f"{path} is missing"
    assert path.read_text(encoding="utf-8").strip(), f"{path} is empty"


def test_static_files_are_flat() -> None:
    # The package ships static/* and the API serves each file beside index.html: no subfolders.
    assert [p.name for p in STATIC.iterdir() if p.is_dir()] == []


def _attribute_values(html: str, tag: str, attribute: str) -> list[str]:
    pattern = rf"<{tag}\b[^>]*\b{attribute}\s*=\s*[\"']([^\"']+)[\"']"
    return re.findall(pattern, html, flags=re.IGNORECASE)


def test_index_links_script_and_stylesheet_by_relative_path() -> None:
    html = (STATIC / "index.html").read_text(encoding="utf-8")
    scripts = _attribute_values(html, "script", "src")
    sheets = _attribute_values(html, "link", "href")
    assert any(s in ("app.js", "./app.js") for s in scripts), scripts
    assert any(s in ("style.css", "./style.css") for s in sheets), sheets
    for ref in scripts + sheets:
        assert not ref.startswith(("/", "//")), f"{ref} is not a relative path"
        assert ":" not in ref, f"{ref} names a scheme"
        assert (STATIC / ref.removeprefix("./")).is_file(), f"{ref} is not shipped"


def test_modules_import_shipped_files_by_relative_path() -> None:
    for name in (n for n in ALL_FILES if n.endswith(".js")):
        text = (STATIC / name).read_text(encoding="utf-8")
        for ref in re.findall(r"""^\s*(?:import|export)\b[^'"]*?from\s+['"]([^'"]+)['"]""", text,
                              flags=re.MULTILINE):
            assert ref.startswith("./"), f"{name} imports {ref!r}, not a shipped file"
            assert (STATIC / ref[2:]).is_file(), f"{name} imports {ref}, which is missing"


@pytest.mark.parametrize("name", ALL_FILES)
def test_nothing_is_fetched_from_the_internet(name: str) -> None:
    text = NAMESPACE.sub("", (STATIC / name).read_text(encoding="utf-8"))
    url = re.search(r"https?://\S*", text, flags=re.IGNORECASE)
    assert url is None, f"{name} names a URL: {url.group(0) if url else ''}"
    # Protocol-relative references (//host/...) in src, href, url() or @import load from
    # outside too.
    relative = r"""(?:src|href)\s*=\s*["']//|url\(\s*["']?//"""
    assert not re.search(relative, text, re.IGNORECASE), name
    assert not re.search(r"@import", text, re.IGNORECASE), f"{name} imports a stylesheet"
