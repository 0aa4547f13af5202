"""CPU time used, read from /proc (Linux; no psutil): core-milliseconds per image do not
depend on what else runs on a shared machine, wall-clock images/s do."""

from __future__ import annotations

from sampleiqa.procfs import TICKS, all_stats


def process_tree_cpu_s(root: int) -> float:
    """User + system seconds of `root` and all its live descendants (Triton and its stubs)."""
    stats = all_stats()
    children: dict[int, list[int]] = {}
    for pid, fields in stats.items():
        children.setdefault(int(fields[1]), []).append(pid)  # fields[1]: parent pid
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        if pid in stats:
            total += (int(stats[pid][11]) + int(stats[pid][12])) / TICKS  # utime, stime
        todo += children.get(pid, [])
    return total
