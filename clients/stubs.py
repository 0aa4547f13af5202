"""The python-backend stub processes of a Triton server, read from /proc (psutil is not a
dependency): who they are, whether they live, and their shared-memory regions in /dev/shm,
which hold the images being scored and which boost.interprocess creates 0644."""

from __future__ import annotations

import os
from pathlib import Path

STUB = b"triton_python_backend_stub"


def _ppid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])  # field 4 (the command name may hold spaces)


def child_pids(pid: int) -> list[int]:
    """The processes whose parent is pid (/proc only: psutil is not a dependency)."""
    return [int(e.name) for e in Path("/proc").iterdir() if e.name.isdigit() and _ppid(int(e.name)) == pid]


def orphaned_stub(pid: int) -> bool:
    """Whether pid is a python-backend stub whose Triton is gone (re-parented to init)."""
    try:
        return _ppid(pid) == 1 and STUB in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def alive(pid: int) -> bool:
    """Running: not gone and not a zombie waiting for its parent to reap it."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


SHM = Path("/dev/shm")


def stub_regions(server_pid: int) -> dict[int, str]:
    """{stub pid: its shared-memory region name} for the python-backend stubs of a server
    (the stub's command line: binary, model.py, region, ...)."""
    found = {}
    for pid in child_pids(server_pid):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(STUB) and len(argv) > 2:
            found[pid] = os.fsdecode(argv[2])
    return found


def make_private(region: str) -> None:
    try:
        os.chmod(SHM / region, 0o600)
    except OSError:
        pass  # gone already
