"""Processes read from /proc (Linux; psutil is not a dependency): the one reader that the
launcher, the soak and the CPU-time figures share; and the python-backend stub processes
of a Triton server with their shared-memory regions in /dev/shm, which hold the images
being scored and which boost.interprocess creates 0644."""

from __future__ import annotations

import os
from pathlib import Path

STUB = b"triton_python_backend_stub"
TICKS = os.sysconf("SC_CLK_TCK")


def stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat after the command name (which may hold spaces): [state, ppid, ...]."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def parent_pid(pid: int) -> int | None:
    fields = stat_fields(pid)
    return int(fields[1]) if fields else None


def all_stats() -> dict[int, list[str]]:
    """stat_fields of every process, read once."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := stat_fields(int(entry.name))) is not None:
            found[int(entry.name)] = fields
    return found


def child_pids(pid: int) -> list[int]:
    """The processes whose parent is pid."""
    return [p for p, fields in all_stats().items() if int(fields[1]) == pid]


def rss_kib(pid: int) -> int | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    return next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)


def memory_mib(pid: int) -> dict[str, float] | None:
    """/proc/PID/smaps_rollup in MiB ({"Rss", "Pss", "Pss_Anon", "Pss_Shmem", ...}); None once
    gone. Pss counts a page shared by n processes as 1/n in each (the python stubs' shared
    memory is mapped by Triton too), so the Pss of a server's processes adds up to its memory."""
    try:
        lines = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]
    except OSError:
        return None
    return {line.split(":")[0]: int(line.split()[1]) / 1024 for line in lines if line.endswith("kB")}


def orphaned_stub(pid: int) -> bool:
    """Whether pid is a python-backend stub whose Triton is gone (re-parented to init)."""
    return parent_pid(pid) == 1 and STUB in b"\0".join(argv(pid))


def alive(pid: int) -> bool:
    """Running: not gone and not a zombie waiting for its parent to reap it."""
    fields = stat_fields(pid)
    return fields is not None and fields[0] != "Z"


SHM = Path("/dev/shm")


def argv(pid: int) -> list[bytes]:
    """A process's command line, split at its NULs; [] once it is gone."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return []


def stub_regions(server_pid: int) -> dict[int, str]:
    """{stub pid: its shared-memory region name} for the python-backend stubs of a server
    (the stub's command line: binary, model.py, region, ...)."""
    found = {}
    for pid in child_pids(server_pid):
        args = argv(pid)
        if args and args[0].endswith(STUB) and len(args) > 2:
            found[pid] = os.fsdecode(args[2])
    return found


def orphans_of(server_pid: int) -> dict[int, str]:
    """{stub pid: region} of the stubs a dead server left behind: re-parented to init, they
    still name it on their command line (binary, model.py, region, shm size, shm growth,
    parent pid, ...), even those it started after the last look at its children."""
    found = {}
    for pid, fields in all_stats().items():
        args = argv(pid) if int(fields[1]) == 1 else []
        if args and args[0].endswith(STUB) and len(args) > 5 and args[5] == str(server_pid).encode():
            found[pid] = os.fsdecode(args[2])
    return found


def make_private(region: str) -> None:
    try:
        os.chmod(SHM / region, 0o600)
    except OSError:
        pass  # gone already
