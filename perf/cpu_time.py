"""CPU time used, read from /proc (Linux; no psutil): core-milliseconds per image do not
depend on what else runs on a shared machine, wall-clock images/s do."""

from __future__ import annotations

import os
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()  # fields after the command name


def process_tree_cpu_s(root: int) -> float:
    """User + system seconds of `root` and all its live descendants (Triton and its stubs)."""
    children: dict[int, list[int]] = {}
    stats = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) is not None:
            stats[int(entry.name)] = fields
            children.setdefault(int(fields[1]), []).append(int(entry.name))  # fields[1]: parent pid
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        if pid in stats:
            total += (int(stats[pid][11]) + int(stats[pid][12])) / _TICKS  # utime, stime
        todo += children.get(pid, [])
    return total
