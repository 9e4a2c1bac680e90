"""What the machine has: its memory, against which whole reads and memory budgets are checked,
and its cores, against which processes started for a run are."""

from __future__ import annotations

import os
import resource


def physical_memory_mb() -> int | None:
    """The memory in MB this process may use: the machine's, or less where an address-space
    limit (``ulimit -v``, a batch job's) says so; None where the system says neither. Checked
    against the machine alone, a training scene of 9 GB passed under a 6 GB limit and ran out
    of memory after 5 GB were allocated."""
    sizes = [size for size in (_machine_mb(), _address_space_mb()) if size is not None]
    return min(sizes) if sizes else None


def _machine_mb() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    except (ValueError, OSError, AttributeError):
        return None


def _address_space_mb() -> int | None:
    """The soft address-space limit in MB, None where there is none."""
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    return None if soft == resource.RLIM_INFINITY else soft // 2**20


def cpu_cores() -> int:
    """The CPU cores this process may run on (its affinity: a batch job's share), at least 1."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1
