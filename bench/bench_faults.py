"""The fault matrix (tests/faults) as a soak: its cases, repeated, with their ledgers in a table.

Run from the repository root: ``python -m bench.bench_faults [--restarts N] [--repeat N]
[-k EXPR] [--cut S]``.

Runs ``pytest tests/faults -m faults`` (``--repeat`` times; ``-k`` selects cases as in pytest)
with ``CITYWATCH_FAULTS_REPORT`` set, so each case appends its ledger; then prints one row per
ledger (lost, duplicated, recovery time) and the totals. ``--restarts`` sets how many broker
SIGTERM restarts the restart case does (CITYWATCH_FAULTS_RESTARTS; CI does 20); ``--cut`` the
length of both network cuts (CI: 30 s blackhole, 5 s reset). This is how RELIABILITY.md's
figures were produced.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--restarts", type=int, default=100, help="broker SIGTERM restarts")
    ap.add_argument("--repeat", type=int, default=1, help="runs of the whole selection")
    ap.add_argument("-k", dest="select", default="", help="pytest -k expression")
    ap.add_argument("--cut", type=float, default=None, help="seconds of each network cut")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-faults-") as tmp:
        report = Path(tmp) / "ledgers.jsonl"
        env = {**os.environ, "CITYWATCH_FAULTS_REPORT": str(report),
               "CITYWATCH_FAULTS_RESTARTS": str(args.restarts)}
        if args.cut is not None:
            env["CITYWATCH_FAULTS_CUT_S"] = env["CITYWATCH_FAULTS_RESET_S"] = str(args.cut)
        cmd = [sys.executable, "-m", "pytest", "tests/faults", "-m", "faults", "-q",
               "-p", "no:cacheprovider", "-rxX"]
        if args.select:
            cmd += ["-k", args.select]
        failed = 0
        started = time.monotonic()
        for run in range(1, args.repeat + 1):
            print(f"== run {run}/{args.repeat}: {' '.join(cmd[2:])}", flush=True)
            failed += subprocess.run(cmd, env=env, check=False).returncode != 0
        wall = time.monotonic() - started
        rows = [json.loads(line) for line in report.read_text().splitlines()] \
            if report.exists() else []
    print(f"\n{len(rows)} ledgers, {args.repeat} run(s), {wall:.0f} s wall, {failed} run(s) "
          "with a failure")
    print("| case | published | acknowledged | lost | duplicated | outbox unsent | fault | "
          "recovery |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['case']} | {r['published']} | {r['acknowledged']} | {r['lost']} | "
              f"{r['duplicated']} | {r['outbox_unsent']} | {_s(r['fault_s'])} | "
              f"{_s(r['recovery_s'])} |")
    for r in rows:
        if r["note"]:
            print(f"- {r['case']}: {r['note']}")
    lost = sum(r["lost"] for r in rows)
    dup = sum(r["duplicated"] for r in rows)
    acked = sum(r["acknowledged"] for r in rows)
    print(f"\ntotal: {acked} acknowledged, {lost} lost, {dup} duplicated")
    return 1 if failed else 0


def _s(value: Any) -> str:
    return "-" if value is None else f"{value:.1f} s"


if __name__ == "__main__":
    sys.exit(main())
