"""Guard: once a row exists, only ``move_alert`` and ``move_work_order`` write ``state``, so the
transition tables in ``alerts.lifecycle`` are the whole lifecycle. A source scan of every SQL
string in the packages that touch alerts and work orders; the behaviour is tested against the
database in tests/integration/test_lifecycle_moves.py."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCANNED = ("alerts", "citywatch")
MOVERS = {"move_alert", "move_work_order"}
HISTORY_WRITER = "_history"

# ``state = `` as an assignment: at the start of a fragment, after a comma or after SET (a
# ``WHERE state = ...`` or ``AND state = ...`` is a read).
ASSIGNS_STATE = re.compile(r"(^|,|\bSET)\s*state\s*=", re.IGNORECASE)
INSERTS_ROW = re.compile(r"\bINSERT\s+INTO\s+(alerts|work_orders)\b", re.IGNORECASE)
STATE_LITERAL = re.compile(r"'(active|acknowledged|resolved|open|assigned|accepted|closed)'")
INSERTS_HISTORY = re.compile(r"\bINSERT\s+INTO\s+work_order_history\b", re.IGNORECASE)


def strings(source: str) -> Iterator[tuple[str, str, int]]:
    """Every string literal (f-strings with their fields as ``{}``) with the name of the function
    it is in ("" at module level) and its line."""
    def walk(node: ast.AST, func: str) -> Iterator[tuple[str, str, int]]:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            func = node.name
        if isinstance(node, ast.JoinedStr):
            text = "".join(v.value if isinstance(v, ast.Constant) and isinstance(v.value, str)
                           else "{}" for v in node.values)
            yield text, func, node.lineno
            return
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.value, func, node.lineno
        for child in ast.iter_child_nodes(node):
            yield from walk(child, func)

    yield from walk(ast.parse(source), "")


def violations(source: str, name: str) -> list[str]:
    out = []
    for text, func, line in strings(source):
        where = f"{name}:{line} (in {func or 'module'})"
        if ASSIGNS_STATE.search(text) and func not in MOVERS:
            out.append(f"{where}: writes state outside the move functions: {text!r}")
        if INSERTS_ROW.search(text) and STATE_LITERAL.search(text):
            out.append(f"{where}: creates a row with a literal state (use ALERT_START / "
                       f"WORK_ORDER_START): {text!r}")
        if INSERTS_HISTORY.search(text) and func != HISTORY_WRITER:
            out.append(f"{where}: writes history outside {HISTORY_WRITER}: {text!r}")
    return out


def scanned_files() -> list[Path]:
    return sorted(p for pkg in SCANNED for p in (REPO / pkg).rglob("*.py"))


def test_no_state_is_written_outside_the_move_functions() -> None:
    found = [v for p in scanned_files()
             for v in violations(p.read_text(encoding="utf-8"), str(p.relative_to(REPO)))]
    assert found == []


def test_the_scan_sees_the_move_functions_write_state() -> None:
    """Not vacuous: the scan finds the one state write of each move function."""
    source = (REPO / "alerts" / "store.py").read_text(encoding="utf-8")
    writers = {func for text, func, _line in strings(source) if ASSIGNS_STATE.search(text)}
    assert writers == MOVERS


def test_the_scan_catches_a_raw_state_write() -> None:
    bad = '''
def reopen(cur, oid):
    cur.execute("UPDATE work_orders SET duplicates = duplicates + 1, "
                "state = 'open' WHERE id = %s", (oid,))

def sneaky(cur, oid, s, extra):
    cur.execute(f"UPDATE alerts SET updated = now(){extra}, state = %s WHERE id = %s", (s, oid))

def create(cur):
    cur.execute("INSERT INTO alerts (id, state) VALUES (%s, 'active')", ("AL-1",))

def note(cur):
    cur.execute("INSERT INTO work_order_history (work_order_id) VALUES ('WO-1')")

def fine(cur):
    cur.execute("SELECT id FROM alerts WHERE state = 'resolved' AND zone_id = %s", ("z",))
    cur.execute("SELECT CASE WHEN state = 'accepted' THEN 1 END FROM work_orders")
'''
    found = violations(bad, "bad.py")
    assert [v.split(" (in ")[1].split(")")[0] for v in found] == ["reopen", "sneaky", "create",
                                                                  "note"]
