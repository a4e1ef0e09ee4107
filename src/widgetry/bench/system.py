"""What the bench reads from the operating system: process memory from procfs, the open-files limit, the machine."""

from __future__ import annotations

import os
import platform
import resource
import socket
from pathlib import Path

PROC = Path("/proc")


def raise_open_files_limit() -> int:
    """Raises this process's soft open-files limit to the hard one (children inherit it); the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants, living ones only."""
    children: dict[int, list[int]] = {}
    for stat in PROC.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # the process ended while we looked
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, pending = [], [pid]
    while pending:
        current = pending.pop()
        tree.append(current)
        pending.extend(children.get(current, ()))
    return tree


def status_kb(pid: int, field: str) -> int | None:
    """A `/proc/<pid>/status` memory figure (`VmRSS`, `VmHWM`, ...) in kB; `None` once the process is gone."""
    try:
        for line in (PROC / str(pid) / "status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def tree_memory_mb(pid: int, field: str) -> float | None:
    """A memory figure summed over a process and its descendants, in MB; `None` once the process is gone. For
    `VmHWM` (each process's own peak) the sum is an upper bound of the tree's peak."""
    figures = [kb for member in process_tree(pid) if (kb := status_kb(member, field)) is not None]
    return round(sum(figures) / 1024, 1) if figures else None


def machine() -> dict[str, object]:
    return {
        "hostname": socket.gethostname(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "memory_mb": _total_memory_mb(),
        "python": platform.python_version(),
        "os": platform.platform(),
    }


def _cpu_model() -> str | None:
    try:
        for line in (PROC / "cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None


def _total_memory_mb() -> int | None:
    try:
        for line in (PROC / "meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024)
    except OSError:
        return None
    return None
