"""The memory budget: one number that bounds every buffer whose size depends on the scene.

Mapping a scene holds a few rows of windows, strips of rows on their way to the GeoTIFFs, GDAL's
block cache and, for the inventory, strips of the mask and the landslides still open. Each of
those is sized from this budget, never from the scene's width, height or number of landslides:
prediction works in column blocks as wide as the budget allows, the inventory in strips of as
many pixels. What does not depend on the scene (Python, PyTorch, the model and its activations
for one batch) comes on top; ``benchmarks/scale.md`` measures both.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys
from collections.abc import Callable
from dataclasses import dataclass

from slidemap.data.machine import MEMORY_SOURCES, physical_memory_mb
from slidemap.errors import SlidemapError

DEFAULT_MEMORY_MB = 512
MIN_MEMORY_MB = 64
TIFF_INDEX_BYTES_PER_BLOCK = 16  # libtiff holds each block's offset and size (8 bytes each)


@dataclass(frozen=True)
class MemoryBudget:
    """The megabytes the scene's buffers may take (default ``DEFAULT_MEMORY_MB``)."""

    megabytes: int = DEFAULT_MEMORY_MB

    def __post_init__(self) -> None:
        if self.megabytes < MIN_MEMORY_MB:
            raise SlidemapError(f"a memory budget of {self.megabytes} MB is too small: pass "
                                f"--memory-mb {MIN_MEMORY_MB} or more")
        machine = physical_memory_mb()
        if machine and self.megabytes > machine:
            raise SlidemapError(f"a memory budget of {self.megabytes:,} MB is more than the "
                                f"{machine:,} MB this process may use ({MEMORY_SOURCES}): pass "
                                "a --memory-mb it can hold "
                                f"(the default is {DEFAULT_MEMORY_MB})")

    @classmethod
    def of(cls, megabytes: int | None) -> MemoryBudget:
        return cls() if megabytes is None else cls(megabytes)

    @property
    def bytes(self) -> int:
        return self.megabytes * 2**20

    def share(self, fraction: float) -> int:
        """Bytes of ``fraction`` of the budget."""
        return int(self.bytes * fraction)

    def check_outputs(self, name: str, height: int, width: int, block: int, outputs: int) -> None:
        """Refuse, before anything is allocated, a scene whose output GeoTIFFs' block indexes
        alone (which libtiff keeps in memory while writing) would not fit the budget."""
        blocks = -(-height // block) * -(-width // block)
        need = blocks * TIFF_INDEX_BYTES_PER_BLOCK * outputs
        if need > self.share(0.25):
            raise SlidemapError(
                f"image {name} is {width} × {height} px: the index of its output GeoTIFFs alone "
                f"would take {need / 2**20:,.0f} MB of the {self.megabytes} MB memory budget; "
                "map it in parts (a window of it, gdal_translate -srcwin) or raise --memory-mb")


def release_free_memory() -> None:
    """Hand the C heap's free pages back to the system (glibc ``malloc_trim``). Buffers freed in
    one thread stay in its heap otherwise, and over a long run the resident size grows with
    them although nothing holds them; elsewhere this does nothing."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    if sys.platform != "linux":
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        return None
