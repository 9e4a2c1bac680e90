"""What the machine has: its memory, against which whole reads and memory budgets are checked."""

from __future__ import annotations

import os


def physical_memory_mb() -> int | None:
    """The machine's memory in MB, None where the system does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    except (ValueError, OSError, AttributeError):
        return None
