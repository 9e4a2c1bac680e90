"""The streaming engine under scene prediction: bands of windows in, finished strips out.

A scene is covered by overlapping windows; one row of windows is a *band*. A band is predicted on
its own (read, model) into the working-resolution probabilities of its windows, so bands can be
computed anywhere: here, with the next band read in a thread while this one is on the model, or
on Dask workers (``slidemap.infer.distributed``). A blending thread brings each band back to native
pixels, blends it across its columns into the band's rows × the scene width and sums consecutive
bands in order; rows no later band can touch go to a writer thread as strips of whole output block
rows (after the first), so a block is written once, not patched. The model's thread does nothing
but the model: for a 2 m model on 0.5 m imagery, blending at native pixels costs about a tenth of
the model's time, which a second core does beside it (``benchmarks/speed.md``). The helper
threads run at a lower priority, so that when they pile up they take the cores the model leaves,
not the model's.

Memory is a few bands, whatever the scene's height; the GDAL block cache is capped to about two
bands so it does not grow with the scene either (by default it may take 5 % of the RAM). The
arithmetic is the same whichever way bands are computed, so the outputs are too.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import sys
import threading
from collections import deque
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import rasterio
import torch
import torch.nn.functional as F
from rasterio.windows import Window
from rich.progress import Progress, TaskID

from slidemap.data.channels import InputSpec, read_inputs, stack_channels
from slidemap.data.scene import Scene
from slidemap.data.windows import grid_offsets
from slidemap.infer.blend import window_weights
from slidemap.infer.ensemble import Predictor
from slidemap.io.names import DatasetName
from slidemap.io.rasters import RasterOutputs, gdal_cache

BLOCK_ROWS = 256  # rows of an output block (slidemap.io.rasters.geotiff_profile)
READ_AHEAD = 1  # bands read while one is on the model
BLEND_BEHIND = 2  # predicted bands queued for the blending thread
WRITE_BEHIND = 4  # strips (of up to one output block row each) queued for the writer thread
CACHE_BYTES_PER_PIXEL = 16  # GDAL cache per band pixel: two bands of image + DEM blocks
CACHE_MB = (64, 1024)
HELPER_NICENESS = 10  # of the read, blending and writer threads (Linux: per thread)


@dataclass(frozen=True)
class Grid:
    """Overlapping windows over a scene in native pixels; one row of windows is a band."""

    height: int
    width: int
    size: int  # window side
    overlap: int
    factor: int  # native pixels per working pixel

    @classmethod
    def of(cls, height: int, width: int, tile: int, overlap: int, factor: int) -> Grid:
        """Windows of ``tile`` working px overlapping by ``overlap`` (at most half a window)."""
        size = tile * factor
        return cls(height, width, size, min(overlap * factor, size // 2), factor)

    @property
    def rows(self) -> list[int]:
        return grid_offsets(self.height, self.size, self.size - self.overlap)

    @property
    def cols(self) -> list[int]:
        return grid_offsets(self.width, self.size, self.size - self.overlap)

    @property
    def band_rows(self) -> int:
        return min(self.size, self.height)

    @property
    def window_count(self) -> int:
        return len(self.rows) * len(self.cols)

    def band_windows(self, row: int) -> list[Window]:
        return [Window(col, row, min(self.size, self.width), self.band_rows) for col in self.cols]

    def weights(self, window: Window) -> torch.Tensor:
        """The window's blending weights (shared: do not modify)."""
        return _weights(int(window.height), int(window.width), self.overlap // 2)


@functools.lru_cache(maxsize=8)
def _weights(height: int, width: int, margin: int) -> torch.Tensor:
    return torch.from_numpy(window_weights(height, width, margin))


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
    """The model channels of a band's windows that hold data (empty windows are skipped)."""

    row: int
    windows: list[Window]
    raw: list[np.ndarray]
    valid: list[np.ndarray]
    total: int  # windows in the band, skipped ones included


@dataclass
class PredictedBand:
    """The working-resolution probabilities of a band's windows that hold data."""

    row: int
    windows: list[Window]
    probs: list[np.ndarray]
    total: int


@dataclass
class Band:
    """One band blended: the sum of probability × blending weight over its rows."""

    row: int
    prob: np.ndarray  # (band rows, scene width) float32
    windows: list[Window]  # the windows predicted, from which the weights are recomputed
    total: int


@dataclass
class Strip:
    """Finished rows [top, top + len(prob)) with every window that contributed to them."""

    top: int
    prob: np.ndarray
    windows: list[Window]


def read_band(scene: Scene, spec: InputSpec, grid: Grid, row: int) -> BandInputs:
    """The model channels of the band's windows that hold data, at working resolution."""
    windows = grid.band_windows(row)
    kept, raw, valid = [], [], []
    for window in windows:
        if not scene.any_valid(window, grid.factor):
            continue
        sample = read_inputs(scene, window, spec, grid.factor)
        if sample["valid"].any():
            kept.append(window)
            raw.append(stack_channels(sample, spec))
            valid.append(sample["valid"])
    return BandInputs(row, kept, raw, valid, len(windows))


def infer_band(predictor: Predictor, inputs: BandInputs, batch_size: int) -> PredictedBand:
    """The model on the band's windows, in batches, at working resolution."""
    probs: list[np.ndarray] = []
    for start in range(0, len(inputs.windows), batch_size):
        part = slice(start, start + batch_size)
        probs += predictor(inputs.raw[part], inputs.valid[part])
    return PredictedBand(inputs.row, inputs.windows, probs, inputs.total)


def blend_band(grid: Grid, predicted: PredictedBand) -> Band:
    """Back to native pixels (bilinear), weighted and summed across the band."""
    prob = torch.zeros((grid.band_rows, grid.width), dtype=torch.float32)
    for window, working in zip(predicted.windows, predicted.probs, strict=True):
        cols = slice(window.col_off, window.col_off + window.width)
        prob[:window.height, cols].addcmul_(_to_native(working, window), grid.weights(window))
    return Band(predicted.row, prob.numpy(), predicted.windows, predicted.total)


def _to_native(prob: np.ndarray, window: Window) -> torch.Tensor:
    tensor = torch.from_numpy(np.ascontiguousarray(prob, dtype=np.float32))
    if prob.shape == (window.height, window.width):
        return tensor
    return F.interpolate(tensor[None, None], size=(window.height, window.width), mode="bilinear",
                         align_corners=False)[0, 0]


class Assembler:
    """Sums consecutive bands in order; rows before a new band's first row are final."""

    def __init__(self, grid: Grid) -> None:
        self.grid = grid
        self.bands: list[Band] = []
        self.done = 0

    def add(self, band: Band) -> list[Strip]:
        """Take ``band``; return the strips it finishes (whole output block rows if any)."""
        aligned = band.row - band.row % BLOCK_ROWS
        strips = self._flush(aligned if aligned > self.done else band.row)
        self.bands.append(band)
        return strips

    def finish(self) -> list[Strip]:
        return self._flush(self.grid.height)

    def _flush(self, stop: int) -> list[Strip]:
        """Rows [done, stop) as strips no taller than an output block row (small queue)."""
        strips, start = [], self.done
        while start < stop:
            end = min(start - start % BLOCK_ROWS + BLOCK_ROWS, stop)
            prob = np.zeros((end - start, self.grid.width), dtype=np.float32)
            windows: list[Window] = []
            for band in self.bands:
                low, high = max(start, band.row), min(end, band.row + band.prob.shape[0])
                if low < high:
                    prob[low - start:high - start] += band.prob[low - band.row:high - band.row]
                    windows += band.windows
            strips.append(Strip(start, prob, windows))
            start = end
        self.bands = [b for b in self.bands if b.row + b.prob.shape[0] > stop]
        self.done = max(self.done, stop)
        return strips


def strip_weights(grid: Grid, windows: list[Window], top: int, bottom: int) -> np.ndarray:
    """Summed blending weights of ``windows`` over rows [top, bottom)."""
    weight = np.zeros((bottom - top, grid.width), dtype=np.float32)
    for window in windows:
        low, high = max(top, window.row_off), min(bottom, window.row_off + window.height)
        if low < high:
            cols = slice(window.col_off, window.col_off + window.width)
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

    def submit(self, strip: Strip) -> None:
        while len(self._pending) >= WRITE_BEHIND:
            self._collect()
        self._pending.append(self._pool.submit(self._write, strip))

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

    def _write(self, strip: Strip) -> tuple[int, int]:
        """Validity, probability and mask of one strip; returns (valid, landslide) pixels."""
        rows = strip.prob.shape[0]
        window = Window(0, strip.top, self.grid.width, rows)
        weight = strip_weights(self.grid, strip.windows, strip.top, strip.top + rows)
        valid = weight > 0
        if valid.any():
            valid &= self.scene.read_validity(window, dem=self.needs_dem)
        prob = np.full(weight.shape, np.nan, dtype=np.float32)
        np.divide(strip.prob, weight, out=prob, where=valid)
        self.outputs.write(window, prob, valid, self.threshold)
        return int(valid.sum()), int((valid & (prob >= self.threshold)).sum())


def in_order(submit: Callable[[int], Future], rows: list[int], ahead: int
             ) -> Iterator[object]:
    """Results of ``submit(row)`` for every row, in order, with at most ``ahead`` in flight.

    The same bounded look-ahead serves a read thread here and Dask workers in
    ``slidemap.infer.distributed``; whatever is still pending when the consumer stops is
    cancelled. (Dask futures are not ``concurrent.futures`` ones but have the same methods.)
    """
    remaining = iter(rows)
    pending = deque(submit(row) for row in itertools.islice(remaining, ahead))
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
    """Bands predicted in this process; the next band is read in a thread meanwhile."""
    with Scene(image, dem=dem) as scene, helper_pool("slidemap-read") as pool:
        def submit(row: int) -> Future[BandInputs]:
            return pool.submit(read_band, scene, predictor.spec, grid, row)

        for inputs in in_order(submit, grid.rows, READ_AHEAD):
            yield infer_band(predictor, inputs, batch_size)


def write_bands(bands: Generator[PredictedBand, None, None], grid: Grid, outputs: RasterOutputs,
                image: DatasetName, dem: DatasetName | None, needs_dem: bool, threshold: float,
                progress: Progress | None = None, task: TaskID | None = None) -> dict[str, int]:
    """Blend and assemble ``bands`` (in row order) in a thread and write their strips in
    another; returns the valid and landslide pixels written and the windows predicted."""
    with Scene(image, dem=dem) as scene, contextlib.closing(bands) as stream, \
            helper_pool("slidemap-blend") as blender:
        writer = StripWriter(outputs, scene, grid, needs_dem, threshold)
        assembler = Assembler(grid)

        def assemble(predicted: PredictedBand) -> None:
            for strip in assembler.add(blend_band(grid, predicted)):
                writer.submit(strip)

        pending: deque[Future[None]] = deque()
        try:
            windows = 0
            for predicted in stream:
                while len(pending) >= BLEND_BEHIND:
                    pending.popleft().result()
                pending.append(blender.submit(assemble, predicted))
                windows += len(predicted.windows)
                if progress is not None and task is not None:
                    progress.advance(task, predicted.total)
            while pending:
                pending.popleft().result()
            for strip in assembler.finish():
                writer.submit(strip)
            return {**writer.finish(), "windows": windows}
        finally:
            for future in pending:
                future.cancel()
            writer.close()


def bounded_gdal_cache(grid: Grid) -> rasterio.Env:
    """A GDAL environment whose block cache holds about two bands, not 5 % of the RAM."""
    band_bytes = (grid.band_rows + 2 * grid.factor) * grid.width * CACHE_BYTES_PER_PIXEL
    return gdal_cache(int(np.clip(band_bytes / 2**20, *CACHE_MB)))
