"""The scene sink of the window engine (``slidemap.infer.engine``): bands of windows in,
finished strips out.

A scene is covered by overlapping windows; one row of windows is a *band*. A band is predicted on
its own (read, model) into the working-resolution probabilities of its windows, so bands can be
computed anywhere: here, its windows read in a thread up to a band ahead of the model, or
on Dask workers (``slidemap.infer.distributed``). A blending thread brings each band back to native
pixels, blends it across its columns into the band's rows × the scene width and sums consecutive
bands in order; rows no later band can touch go to a writer thread as strips of whole output block
rows (after the first), so a block is written once, not patched. The model's thread does nothing
but the model at its first scale: reading, the model at its other scales (``Predictor``, when a
core is left idle), blending and writing run beside it on the other cores
(``benchmarks/scale.md``). The helper threads run at a lower priority, so that when they pile up
they take the cores the model leaves, not the model's.

Memory is bounded by the budget (``slidemap.infer.budget``), whatever the scene's width or
height: a scene too wide for it is cut into column blocks, predicted one after the other, each
from top to bottom, so the buffers are a few bands of one block. A block owns the output columns
where its windows start; the windows of the block before that reach into it are blended into its
buffer again from their working-resolution probabilities, which wait in a temporary file (not in
memory) until the block's band is blended, so no window is predicted twice and every pixel sums
the same windows in the same order as in one pass: the outputs are the same, bit for bit. The
GDAL block cache is capped to about one band of a block (by default it may take 5 % of the
RAM). Column blocks also bound the model's batches, to the windows of one band of a block. The
arithmetic is the same whichever way bands are computed, so the outputs are too.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import sys
import tempfile
import threading
from collections import deque
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO, Protocol, TypeVar

import numpy as np
import rasterio
import torch
import torch.nn.functional as F
from rasterio.windows import Window
from rich.progress import Progress, TaskID

from slidemap.data.channels import InputSpec, read_inputs, stack_channels
from slidemap.data.names import DatasetName
from slidemap.data.scene import Scene
from slidemap.data.terrain import radii_px, reach_px, relief_radii_m
from slidemap.data.windows import grid_offsets
from slidemap.errors import SlidemapError
from slidemap.infer.budget import MemoryBudget, release_free_memory
from slidemap.infer.engine import blend_weights, run_batches
from slidemap.infer.ensemble import Predictor
from slidemap.io.rasters import RasterOutputs, gdal_cache

BLOCK_ROWS = 256  # rows of an output block (slidemap.io.rasters.geotiff_profile)
READ_AHEAD = 1  # bands' worth of windows read ahead of the model
BLEND_BEHIND = 2  # predicted bands queued for the blending thread
WRITE_BEHIND = 4  # strips (of up to one output block row each) queued for the writer thread
BANDS_HELD = 3  # native bands of a column block: two being summed, one being blended
STRIPS_HELD = WRITE_BEHIND + 2  # queued, being written, being summed
WRITER_BYTES_PER_PIXEL = 32  # the writer's temporaries per strip pixel (weights, validity, …)
CACHE_BYTES_PER_PIXEL = 10  # GDAL cache per band pixel: image (3 bytes) + DEM (4) blocks, and more
CACHE_MB = (16, 1024)
# peak bytes per pixel of a window's DEM halo while its terrain descriptors are computed (the
# elevation, its float64 box-sum tables and their temporaries): 335 measured for three relief
# radii, roughness, slope and curvature
HALO_BYTES_PER_PIXEL = 336
HELPER_NICENESS = 10  # of the read, blending and writer threads (Linux: per thread)

T = TypeVar("T")
R = TypeVar("R", covariant=True)


class Pending(Protocol[R]):
    """A result on its way: a ``concurrent.futures`` or a Dask future."""

    def result(self) -> R: ...

    def cancel(self) -> bool: ...


@dataclass(frozen=True)
class ColumnBlock:
    """Windows whose left edge lies in output columns [start, stop), which only they and the
    windows carried in from the block before can reach; blended into a buffer over columns
    [low, high) (the carried windows and this block's, whole)."""

    start: int
    stop: int
    cols: tuple[int, ...]  # left edges of this block's windows
    carried: tuple[int, ...]  # left edges of the previous block's windows that reach in
    low: int
    high: int

    @property
    def buffer_width(self) -> int:
        return self.high - self.low


@dataclass(frozen=True)
class Grid:
    """Overlapping windows over a scene in native pixels; one row of windows is a band, cut
    into column blocks of ``block_width`` px (the whole width if None) that are predicted one
    after the other, each from the top of the scene to its bottom. The windows are laid from
    the north-west corner (``flips``: ``Scene.flips``), so a grid stored south up or east to
    west gets the same windows on the ground as one stored north up."""

    height: int
    width: int
    size: int  # window side
    overlap: int
    factor: int  # native pixels per working pixel
    block_width: int | None = None
    flips: tuple[bool, bool] = (False, False)

    @classmethod
    def of(cls, height: int, width: int, tile: int, overlap: int, factor: int,
           block_width: int | None = None, flips: tuple[bool, bool] = (False, False)) -> Grid:
        """Windows of ``tile`` working px overlapping by ``overlap`` (at most half a window)."""
        size = tile * factor
        return cls(height, width, size, min(overlap * factor, size // 2), factor, block_width,
                   flips)

    @property
    def rows(self) -> list[int]:
        return grid_offsets(self.height, self.size, self.size - self.overlap, self.flips[0])

    @property
    def cols(self) -> list[int]:
        return grid_offsets(self.width, self.size, self.size - self.overlap, self.flips[1])

    @property
    def band_rows(self) -> int:
        return min(self.size, self.height)

    @property
    def window_width(self) -> int:
        return min(self.size, self.width)

    @property
    def window_count(self) -> int:
        return len(self.rows) * len(self.cols)

    @functools.cached_property
    def blocks(self) -> list[ColumnBlock]:
        """The column blocks, left to right; a window belongs to the block its left edge is in
        (a block is at least a window wide, so only the block before reaches into it)."""
        step = max(self.block_width or self.width, self.size)
        groups: dict[int, list[int]] = {}
        for col in self.cols:
            groups.setdefault(col // step, []).append(col)
        keys = sorted(groups)
        blocks: list[ColumnBlock] = []
        for index, key in enumerate(keys):
            start = key * step
            stop = keys[index + 1] * step if index + 1 < len(keys) else self.width
            cols = tuple(groups[key])
            carried = tuple(c for c in blocks[-1].cols if c + self.window_width > start) \
                if blocks else ()
            low = min((*carried, start))
            high = max(stop, *(c + self.window_width for c in cols))
            blocks.append(ColumnBlock(start, stop, cols, carried, low, high))
        return blocks

    @property
    def pieces(self) -> list[tuple[int, int]]:
        """(block, band row) in the order they are predicted: block by block, top to bottom."""
        return [(block, row) for block in range(len(self.blocks)) for row in self.rows]

    def window(self, col: int, row: int) -> Window:
        return Window(col, row, self.window_width, self.band_rows)

    def band_windows(self, row: int, block: int | None = None) -> list[Window]:
        """The windows of band ``row``: in one column block, or across the scene."""
        cols = self.cols if block is None else self.blocks[block].cols
        return [self.window(col, row) for col in cols]

    def weights(self, window: Window) -> torch.Tensor:
        """The window's blending weights (shared: do not modify)."""
        return _weights(int(window.height), int(window.width), self.overlap // 2)


@functools.lru_cache(maxsize=8)
def _weights(height: int, width: int, margin: int) -> torch.Tensor:
    return torch.from_numpy(np.array(blend_weights(height, width, margin)))


def helper_pool(name: str) -> ThreadPoolExecutor:
    """One thread for work beside the model (reading, blending, writing), at a lower priority:
    with every core busy, the kernel then gives the model's thread its core first. Only Linux
    can renice one thread; elsewhere the thread keeps the process's priority."""
    return ThreadPoolExecutor(1, thread_name_prefix=name, initializer=_lower_priority)


def _lower_priority() -> None:
    if sys.platform == "linux":
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(),
                           os.getpriority(os.PRIO_PROCESS, 0) + HELPER_NICENESS)


@dataclass
class BandInputs:
    """The model channels of a band's windows (in one column block) that hold data (empty
    windows are skipped)."""

    piece: tuple[int, int]  # (column block, band row)
    windows: list[Window]
    raw: list[np.ndarray]
    valid: list[np.ndarray]
    total: int  # windows in the band, skipped ones included


@dataclass
class PredictedBand:
    """The working-resolution probabilities of a band's windows that hold data."""

    piece: tuple[int, int]
    windows: list[Window]
    probs: list[np.ndarray]
    total: int


@dataclass
class Band:
    """One band of a column block blended: the sum of probability × blending weight over its
    rows and the block's buffer columns."""

    row: int
    prob: np.ndarray  # (band rows, block buffer width) float32
    windows: list[Window]  # the windows blended, from which the weights are recomputed


@dataclass
class Strip:
    """Finished rows [top, top + len(prob)) of a column block's buffer, with every window that
    contributed to them."""

    top: int
    prob: np.ndarray
    windows: list[Window]


@dataclass
class WindowInputs:
    """The model channels of one window that holds data, and its validity."""

    window: Window
    raw: np.ndarray
    valid: np.ndarray


def read_window(scene: Scene, spec: InputSpec, grid: Grid, window: Window
                ) -> WindowInputs | None:
    """The model channels of ``window`` at working resolution; None if it holds no data (a
    cheap test skips empty windows before their DEM and terrain are read)."""
    if not scene.any_valid(window, grid.factor):
        return None
    sample = read_inputs(scene, window, spec, grid.factor)
    if not sample["valid"].any():
        return None
    return WindowInputs(window, stack_channels(sample, spec), sample["valid"])


def read_band(scene: Scene, spec: InputSpec, grid: Grid, piece: tuple[int, int]) -> BandInputs:
    """The model channels of the band's windows that hold data, at working resolution."""
    windows = grid.band_windows(piece[1], piece[0])
    read = [r for r in (read_window(scene, spec, grid, w) for w in windows) if r is not None]
    return BandInputs(piece, [r.window for r in read], [r.raw for r in read],
                      [r.valid for r in read], len(windows))


def infer_band(predictor: Predictor, inputs: BandInputs, batch_size: int) -> PredictedBand:
    """The model on the band's windows, in batches, at working resolution."""
    return PredictedBand(inputs.piece, inputs.windows,
                         run_batches(predictor, inputs.raw, inputs.valid, batch_size),
                         inputs.total)


def infer_windows(predictor: Predictor, piece: tuple[int, int],
                  read: Iterator[WindowInputs | None], batch_size: int) -> PredictedBand:
    """The model on a band's windows as they are read (``read``: one per window of the band,
    None for those without data), in batches of the band's windows in order, as
    :func:`infer_band` forms them: the model starts on a band's first window while the rest
    are still being read, and holds no window's inputs once it is predicted."""
    windows: list[Window] = []
    probs: list[np.ndarray] = []
    raw: list[np.ndarray] = []
    valid: list[np.ndarray] = []
    total = 0
    for item in read:
        total += 1
        if item is None:
            continue
        windows.append(item.window)
        raw.append(item.raw)
        valid.append(item.valid)
        if len(raw) == batch_size:
            probs += predictor(raw, valid)
            raw, valid = [], []
    if raw:
        probs += predictor(raw, valid)
    return PredictedBand(piece, windows, probs, total)


def blend_band(grid: Grid, block: ColumnBlock, row: int, windows: list[Window],
               probs: list[np.ndarray]) -> Band:
    """Back to native pixels (bilinear), weighted and summed across the block's buffer, the
    windows in column order (as across the whole scene: the sums are the same)."""
    prob = torch.zeros((grid.band_rows, block.buffer_width), dtype=torch.float32)
    for window, working in zip(windows, probs, strict=True):
        cols = slice(window.col_off - block.low, window.col_off - block.low + window.width)
        prob[:window.height, cols].addcmul_(_to_native(working, window), grid.weights(window))
    return Band(row, prob.numpy(), windows)


def _to_native(prob: np.ndarray, window: Window) -> torch.Tensor:
    tensor = torch.from_numpy(np.ascontiguousarray(prob, dtype=np.float32))
    if prob.shape == (window.height, window.width):
        return tensor
    return F.interpolate(tensor[None, None], size=(window.height, window.width), mode="bilinear",
                         align_corners=False)[0, 0]


class Carry:
    """The working-resolution probabilities of the windows that reach into the next column
    block, kept in an anonymous temporary file beside the outputs, not in memory: the next
    block blends them again, band by band, in the order they were put."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._reading: BinaryIO | None = None
        self._writing: BinaryIO | None = None

    def next_block(self) -> None:
        """What was put so far is read back from now on; a new file takes what is put next."""
        if self._reading is not None:
            self._reading.close()
        self._reading = self._writing
        if self._reading is not None:
            self._reading.seek(0)
        self._writing = tempfile.TemporaryFile(  # noqa: SIM115 (closed by close())
            dir=self.folder, prefix=".slidemap-carry-")

    def put(self, windows: list[Window], probs: list[np.ndarray]) -> None:
        assert self._writing is not None
        np.save(self._writing, np.array([w.col_off for w in windows], dtype=np.int64))
        for prob in probs:
            np.save(self._writing, prob)

    def take(self, grid: Grid, row: int) -> tuple[list[Window], list[np.ndarray]]:
        if self._reading is None:
            return [], []
        cols = np.load(self._reading)
        return ([grid.window(int(c), row) for c in cols],
                [np.load(self._reading) for _ in cols])

    def close(self) -> None:
        for file in (self._reading, self._writing):
            if file is not None:
                file.close()


class Assembler:
    """Sums consecutive bands of a column block in order; rows before a new band's first row
    are final."""

    def __init__(self, grid: Grid, block: ColumnBlock) -> None:
        self.grid, self.block = grid, block
        self.bands: list[Band] = []
        self.done = 0

    def add(self, band: Band) -> Iterator[Strip]:
        """Take ``band``; yield the strips it finishes (whole output block rows if any)."""
        aligned = band.row - band.row % BLOCK_ROWS
        yield from self._flush(aligned if aligned > self.done else band.row)
        self.bands.append(band)

    def finish(self) -> Iterator[Strip]:
        return self._flush(self.grid.height)

    def _flush(self, stop: int) -> Iterator[Strip]:
        """Rows [done, stop) as strips no taller than an output block row, made one at a time
        as the writer takes them."""
        start = self.done
        while start < stop:
            end = min(start - start % BLOCK_ROWS + BLOCK_ROWS, stop)
            yield self._strip(start, end)
            start = end
        self.bands = [b for b in self.bands if b.row + b.prob.shape[0] > stop]
        self.done = max(self.done, stop)

    def _strip(self, start: int, end: int) -> Strip:
        """Rows [start, end) summed over the bands that hold them."""
        prob = np.zeros((end - start, self.block.buffer_width), dtype=np.float32)
        windows: list[Window] = []
        for band in self.bands:
            low, high = max(start, band.row), min(end, band.row + band.prob.shape[0])
            if low < high:
                prob[low - start:high - start] += band.prob[low - band.row:high - band.row]
                windows += band.windows
        return Strip(start, prob, windows)


def strip_weights(grid: Grid, block: ColumnBlock, windows: list[Window], top: int, bottom: int
                  ) -> np.ndarray:
    """Summed blending weights of ``windows`` over rows [top, bottom) of the block's buffer."""
    weight = np.zeros((bottom - top, block.buffer_width), dtype=np.float32)
    for window in windows:
        low, high = max(top, window.row_off), min(bottom, window.row_off + window.height)
        if low < high:
            cols = slice(window.col_off - block.low, window.col_off - block.low + window.width)
            rows = slice(low - window.row_off, high - window.row_off)
            weight[low - top:high - top, cols] += grid.weights(window)[rows].numpy()
    return weight


class StripWriter:
    """Writes strips in a background thread (validity, probability, mask), in order."""

    def __init__(self, outputs: RasterOutputs, scene: Scene, grid: Grid, needs_dem: bool,
                 threshold: float) -> None:
        self.outputs, self.scene, self.grid = outputs, scene, grid
        self.needs_dem, self.threshold = needs_dem, threshold
        self.counts = {"valid_pixels": 0, "landslide_pixels": 0}
        self._pool = helper_pool("slidemap-write")
        self._pending: deque[Future[tuple[int, int]]] = deque()

    def submit(self, block: ColumnBlock, strip: Strip) -> None:
        while len(self._pending) >= WRITE_BEHIND:
            self._collect()
        self._pending.append(self._pool.submit(self._write, block, strip))

    def finish(self) -> dict[str, int]:
        while self._pending:
            self._collect()
        return self.counts

    def close(self) -> None:
        for future in self._pending:
            future.cancel()
        self._pool.shutdown(wait=True)

    def _collect(self) -> None:
        valid, landslide = self._pending.popleft().result()
        self.counts["valid_pixels"] += valid
        self.counts["landslide_pixels"] += landslide

    def _write(self, block: ColumnBlock, strip: Strip) -> tuple[int, int]:
        """Validity, probability and mask of the block's columns of one strip; returns (valid,
        landslide) pixels."""
        rows = strip.prob.shape[0]
        window = Window(block.start, strip.top, block.stop - block.start, rows)
        cols = slice(block.start - block.low, block.stop - block.low)
        weight = strip_weights(self.grid, block, strip.windows, strip.top,
                               strip.top + rows)[:, cols]
        valid = weight > 0
        if valid.any():
            valid &= self.scene.read_validity(window, dem=self.needs_dem)
        prob = np.full(weight.shape, np.nan, dtype=np.float32)
        np.divide(strip.prob[:, cols], weight, out=prob, where=valid)
        np.clip(prob, 0.0, 1.0, out=prob)  # a weighted mean of ones can round to 1 + 1e-7
        self.outputs.write(window, prob, valid, self.threshold)
        return int(valid.sum()), int((valid & (prob >= self.threshold)).sum())


class BlockBlender:
    """Blends predicted bands piece by piece, in the grid's order, into finished strips: the
    windows carried in from the block before first, then the block's own, whose part that
    reaches into the next block is carried on."""

    def __init__(self, grid: Grid, folder: Path) -> None:
        self.grid = grid
        self.carry = Carry(folder)
        self.block = -1
        self.assembler: Assembler | None = None

    def add(self, predicted: PredictedBand) -> Iterator[tuple[ColumnBlock, Strip]]:
        index, row = predicted.piece
        if index != self.block:
            yield from self.finish()
            self.block = index
            self.assembler = Assembler(self.grid, self.grid.blocks[index])
            self.carry.next_block()
        assert self.assembler is not None
        block = self.grid.blocks[index]
        windows, probs = self.carry.take(self.grid, row) if index else ([], [])
        if index + 1 < len(self.grid.blocks):
            start = self.grid.blocks[index + 1].start
            onward = [i for i, w in enumerate(predicted.windows)
                      if w.col_off + w.width > start]
            self.carry.put([predicted.windows[i] for i in onward],
                           [predicted.probs[i] for i in onward])
        band = blend_band(self.grid, block, row, windows + predicted.windows,
                          probs + predicted.probs)
        for strip in self.assembler.add(band):
            yield block, strip
        release_free_memory()

    def finish(self) -> Iterator[tuple[ColumnBlock, Strip]]:
        if self.assembler is not None:
            for strip in self.assembler.finish():
                yield self.assembler.block, strip
            self.assembler = None

    def close(self) -> None:
        self.carry.close()


def in_order(submit: Callable[[T], Pending[R]], items: list[T], ahead: int
             ) -> Generator[R, None, None]:
    """Results of ``submit(item)`` for every item, in order, with at most ``ahead`` in flight.

    The same bounded look-ahead serves a read thread here and Dask workers in
    ``slidemap.infer.distributed``; whatever is still pending when the consumer stops is
    cancelled. (Dask futures are not ``concurrent.futures`` ones but have the same methods.)
    """
    remaining = iter(items)
    pending = deque(submit(item) for item in itertools.islice(remaining, ahead))
    try:
        while pending:
            result = pending.popleft().result()
            following = next(remaining, None)
            if following is not None:
                pending.append(submit(following))
            yield result
    finally:
        for future in pending:
            future.cancel()


def local_bands(predictor: Predictor, image: DatasetName, dem: DatasetName | None, grid: Grid,
                batch_size: int) -> Generator[PredictedBand, None, None]:
    """Bands predicted in this process, window by window as a thread reads them: up to a
    band's worth of windows (``READ_AHEAD`` bands) is read ahead of the model, so the model
    waits for the first window of the scene, not for its first band."""
    items = [(piece, window) for piece in grid.pieces
             for window in grid.band_windows(piece[1], piece[0])]
    ahead = READ_AHEAD * max(len(block.cols) for block in grid.blocks)
    # predict_scene opened the same image and DEM first and warned about them once
    with Scene(image, dem=dem, warn_dem=False) as scene, \
            helper_pool("slidemap-read") as pool:
        def submit(item: tuple[tuple[int, int], Window]) -> Future[WindowInputs | None]:
            return pool.submit(read_window, scene, predictor.spec, grid, item[1])

        with contextlib.closing(in_order(submit, items, ahead)) as reads:  # cancelled first
            read = zip(items, reads, strict=True)
            for piece, group in itertools.groupby(read, key=lambda pair: pair[0][0]):
                yield infer_windows(predictor, piece, (inputs for _, inputs in group),
                                    batch_size)


def write_bands(bands: Generator[PredictedBand, None, None], grid: Grid, outputs: RasterOutputs,
                image: DatasetName, dem: DatasetName | None, needs_dem: bool, threshold: float,
                progress: Progress | None = None, task: TaskID | None = None) -> dict[str, int]:
    """Blend and assemble ``bands`` (in the grid's order) in a thread and write their strips in
    another; returns the valid and landslide pixels written and the windows predicted."""
    with Scene(image, dem=dem, warn_dem=False) as scene, \
            contextlib.closing(bands) as stream, \
            helper_pool("slidemap-blend") as blend_pool:
        writer = StripWriter(outputs, scene, grid, needs_dem, threshold)
        blender = BlockBlender(grid, outputs.folder)

        def assemble(predicted: PredictedBand) -> None:
            for block, strip in blender.add(predicted):
                writer.submit(block, strip)

        pending: deque[Future[None]] = deque()
        try:
            windows = 0
            for predicted in stream:
                while len(pending) >= BLEND_BEHIND:
                    pending.popleft().result()
                pending.append(blend_pool.submit(assemble, predicted))
                windows += len(predicted.windows)
                if progress is not None and task is not None:
                    progress.advance(task, predicted.total)
            while pending:
                pending.popleft().result()
            for block, strip in blender.finish():
                writer.submit(block, strip)
            return {**writer.finish(), "windows": windows}
        finally:
            for future in pending:
                future.cancel()
            writer.close()
            blender.close()


def buffer_bytes(grid: Grid, channels: int, buffer_width: int) -> int:
    """What one column block of ``buffer_width`` columns holds at most: its bands of native
    probabilities, strips on their way to the writer and the writer's temporaries, GDAL's block
    cache, and the windows read, predicted and queued for blending."""
    per_column = (BANDS_HELD * 4 * grid.band_rows
                  + STRIPS_HELD * 4 * BLOCK_ROWS
                  + WRITER_BYTES_PER_PIXEL * BLOCK_ROWS)
    working = (grid.band_rows // grid.factor + 1) * (grid.window_width // grid.factor + 1)
    per_window = working * ((4 * channels + 1) * (READ_AHEAD + 1)
                            + 4 * (BLEND_BEHIND + 2))
    windows = buffer_width // max(1, grid.size - grid.overlap) + 2
    return per_column * buffer_width + per_window * windows + cache_bytes(grid, buffer_width)


def band_bytes(grid: Grid) -> int:
    """The most one predicted band holds: the working-resolution float32 probabilities of the
    windows of one band of the widest column block."""
    working = (grid.band_rows // grid.factor + 1) * (grid.window_width // grid.factor + 1)
    return 4 * working * max(len(block.cols) for block in grid.blocks)


def cache_bytes(grid: Grid, buffer_width: int) -> int:
    """GDAL's block cache for a block: one band of image and DEM blocks, so that the next band
    finds the rows it shares with this one."""
    return CACHE_BYTES_PER_PIXEL * (grid.band_rows + 2 * grid.factor) * buffer_width


def plan_blocks(grid: Grid, channels: int, budget: MemoryBudget) -> Grid:
    """``grid`` cut into the widest column blocks (whole output block columns) whose buffers
    fit ``budget``: the whole scene if it fits, else a one-line error if one window does not."""
    def need(block_width: int | None) -> int:
        blocks = replace(grid, block_width=block_width).blocks
        return buffer_bytes(grid, channels, max(b.buffer_width for b in blocks))

    if need(None) <= budget.bytes:
        return replace(grid, block_width=None)
    low = -(-grid.size // BLOCK_ROWS)  # in output block columns: a block is a window wide
    high = grid.width // BLOCK_ROWS
    if need(low * BLOCK_ROWS) > budget.bytes:
        raise SlidemapError(
            f"windows of {grid.size} px need about {need(low * BLOCK_ROWS) / 2**20:.0f} MB, more "
            f"than the memory budget of {budget.megabytes} MB: raise --memory-mb, or pass a "
            "smaller --tile")
    while low < high:  # the widest that fits (wider blocks hold more, give or take a window)
        middle = (low + high + 1) // 2
        low, high = (middle, high) if need(middle * BLOCK_ROWS) <= budget.bytes \
            else (low, middle - 1)
    return replace(grid, block_width=low * BLOCK_ROWS)


def check_terrain_halo(scene: Scene, spec: InputSpec, factor: int, read: tuple[int, int],
                       budget: MemoryBudget, option: str | None = "--tile",
                       memory_option: bool = True) -> None:
    """Refuse, before anything is read, a model whose terrain descriptors reach so far around
    each read (relief within kilometres) that the DEM halo of one read of ``read`` (rows,
    columns) native px, which grows with the radius up to the whole scene, would not fit
    ``budget``; the read itself comes on top, as the model's activations do. Every command that
    reads a scene's windows (predict, evaluate, suggest, bench, explain, and predict --adapt's
    chunks) calls this first: ``option`` names its setting of the window size, which sets the
    halo too (None where the size is fixed), and ``memory_option`` whether it takes
    --memory-mb."""
    dx, dy = scene.pixel_size_m()
    radii, rough = radii_px(spec.relief_m, spec.roughness_m, (dx * factor, dy * factor))
    margin = reach_px([*radii, rough])
    rows, cols = read[0] // factor, read[1] // factor
    halo = (min(rows + 2 * margin[0], scene.height // factor)
            * min(cols + 2 * margin[1], scene.width // factor))
    need = (halo - rows * cols) * HALO_BYTES_PER_PIXEL
    if need > budget.bytes:
        reach = max([*relief_radii_m(spec.relief_m), spec.roughness_m or 0.0])
        sized = f" (the window size, {option}, sets the halo)" if option else ""
        fixes = [f"pass a smaller {option}"] * bool(option) + ["raise --memory-mb"] * memory_option
        raise SlidemapError(
            f"the model reads terrain within {reach:g} m of each window: its DEM halo needs "
            f"about {need / 2**20:,.0f} MB, more than the memory budget of {budget.megabytes} "
            f"MB{sized}: {', '.join(fixes)} or use "
            "a model with smaller relief radii")


def bounded_gdal_cache(grid: Grid) -> rasterio.Env:
    """A GDAL environment whose block cache holds about a band of a column block, not 5 % of
    the RAM."""
    width = max(block.buffer_width for block in grid.blocks)
    return gdal_cache(int(np.clip(cache_bytes(grid, width) / 2**20, *CACHE_MB)))
