"""What the machine has: its memory, against which whole reads and memory budgets are checked,
and its cores, against which processes started for a run are."""

from __future__ import annotations

import os
import resource
from pathlib import Path

# a container's or a job's memory limit (``docker run --memory``, a Kubernetes pod's, a Slurm
# job's, ``systemd-run -p MemoryMax``): the files of the process's own cgroup and those above it
CGROUP_ROOT = Path("/sys/fs/cgroup")
PROCESS_CGROUPS = Path("/proc/self/cgroup")  # where this process sits in each hierarchy
V2_LIMIT = "memory.max"  # "max" where there is none
V1_LIMIT = "memory.limit_in_bytes"
# cgroup v1 writes "no limit" as the largest page-aligned 64-bit number (about 2**63)
NO_CGROUP_LIMIT = 2**60
# what the memory a process may use is the smallest of, as messages name it
MEMORY_SOURCES = "the machine's, ulimit -v or a container's or job's cgroup limit"


def physical_memory_mb() -> int | None:
    """The memory in MB this process may use: the machine's, or less where an address-space
    limit (``ulimit -v``, a batch job's) or a container's cgroup limit says so; None where the
    system says none of them. Checked against the machine alone, a training scene of 9 GB
    passed under a 6 GB limit and ran out of memory after 5 GB were allocated, and a
    --memory-mb of 8000 passed in a 2 GB container, whose kernel kills what goes beyond."""
    limits = (_machine_mb(), _address_space_mb(), *map(_cgroup_mb, cgroup_limit_files()))
    sizes = [size for size in limits if size is not None]
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


def cgroup_limit_files() -> list[Path]:
    """The memory limit files of this process's cgroup and of every cgroup above it, cgroup v2
    (the unified hierarchy) and v1 (the memory controller's): a job's limit may sit on its own
    cgroup deep in the tree, under a root that says there is none. In a container the process
    sees its own cgroup as the root; files that do not exist are read as no limit."""
    files = [CGROUP_ROOT / V2_LIMIT, CGROUP_ROOT / "memory" / V1_LIMIT]
    try:
        lines = PROCESS_CGROUPS.read_text().splitlines()
    except OSError:
        return files
    for line in lines:
        number, controllers, where = [*line.split(":", 2), "", ""][:3]
        if number == "0" and not controllers:
            base, name = CGROUP_ROOT, V2_LIMIT
        elif "memory" in controllers.split(","):
            base, name = CGROUP_ROOT / "memory", V1_LIMIT
        else:
            continue
        folder = Path(where.strip().lstrip("/"))
        while folder != Path("."):
            files.append(base / folder / name)
            folder = folder.parent
    return files


def _cgroup_mb(path: Path) -> int | None:
    """The cgroup memory limit in MB that ``path`` holds, None where it is absent (no
    container, another cgroup version), unreadable or says there is none."""
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if not text.isdigit():  # "max"
        return None
    limit = int(text)
    return None if limit >= NO_CGROUP_LIMIT else limit // 2**20


def cpu_cores() -> int:
    """The CPU cores this process may run on (its affinity: a batch job's share), at least 1."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1
