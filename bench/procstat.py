"""CPU time of other processes, from /proc (Linux): what a bench's own rusage cannot see."""

from __future__ import annotations

import os


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a running process so far (0.0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            parts = f.read().rsplit(") ", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return sum(int(parts[i]) for i in (11, 12)) / os.sysconf("SC_CLK_TCK")
