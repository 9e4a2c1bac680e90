"""What the machine has: its memory, against which whole reads and memory budgets are checked,
and its cores, against which processes started for a run are."""

from __future__ import annotations

import os


def physical_memory_mb() -> int | None:
    """The machine's memory in MB, None where the system does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    except (ValueError, OSError, AttributeError):
        return None


def cpu_cores() -> int:
    """The CPU cores this process may run on (its affinity: a batch job's share), at least 1."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1
