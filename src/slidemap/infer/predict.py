"""Streaming prediction of a whole scene into georeferenced probability and mask GeoTIFFs.

Windows are read, predicted in batches and blended row of windows by row of windows; as soon as
no later window can touch a band of rows, that band is written out and dropped. Memory is bounded
by one row of windows, whatever the scene size.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from rasterio.windows import Window
from rich.progress import Progress

from slidemap.data.channels import stack_channels
from slidemap.data.scene import Scene
from slidemap.data.windows import grid_offsets
from slidemap.errors import SlidemapError
from slidemap.infer.blend import window_weights
from slidemap.infer.ensemble import Predictor
from slidemap.io.rasters import RasterOutputs

MIN_WORKING_SIZE = 32


@dataclass(frozen=True)
class PredictOptions:
    tile: int = 256
    overlap: int = 64
    batch_size: int = 8
    precision: str = "bf16"
    tta: bool = False


def predict_scene(predictor: Predictor, image: Path, dem: Path | None, prob_path: Path,
                  mask_path: Path, options: PredictOptions, progress: Progress | None = None
                  ) -> dict[str, float]:
    """Write ``prob_path`` (float32, NaN nodata) and ``mask_path`` (uint8, 255 nodata).

    Returns a few counts (valid pixels, landslide pixels) for the caller's summary.
    """
    spec = predictor.spec
    with Scene(image, dem=dem) as scene:
        scene.check_bands(spec.image_bands, "the model")
        if spec.needs_dem and not scene.has_dem:
            raise SlidemapError(f"the model needs a DEM (channels {spec.channels}) for {image}: "
                                "pass one with --dem")
        factor = scene.decimation(spec.resolution_m)
        if min(scene.height, scene.width) < MIN_WORKING_SIZE * factor:
            raise SlidemapError(
                f"image {image} is {scene.height}×{scene.width} px, too small for this model: it "
                f"needs at least {MIN_WORKING_SIZE * factor} px a side"
            )
        size = options.tile * factor
        overlap = min(options.overlap * factor, size // 2)
        stride = size - overlap
        rows = grid_offsets(scene.height, size, stride)
        cols = grid_offsets(scene.width, size, stride)
        task = progress.add_task(f"predict {image.name}", total=len(rows) * len(cols)) \
            if progress else None
        counts = {"valid_pixels": 0, "landslide_pixels": 0}
        with RasterOutputs(scene.profile, prob_path, mask_path) as outputs:
            blender = RowBlender(scene.width)
            for row in rows:
                for done_from, done_to, prob, weight in blender.flush_before(row):
                    _write_rows(outputs, scene, spec, done_from, done_to, prob, weight,
                                predictor.threshold, counts)
                windows = [Window(c, row, min(size, scene.width), min(size, scene.height))
                           for c in cols]
                for window, prob in _predict_windows(predictor, scene, windows, factor,
                                                     options.batch_size):
                    weights = window_weights(window.height, window.width, overlap // 2)
                    blender.add(window, prob, weights)
                    if progress is not None and task is not None:
                        progress.advance(task)
            for done_from, done_to, prob, weight in blender.flush_before(scene.height):
                _write_rows(outputs, scene, spec, done_from, done_to, prob, weight,
                            predictor.threshold, counts)
            if counts["valid_pixels"] == 0:
                raise SlidemapError(f"image {image} has no valid pixel (all nodata): "
                                    "check its nodata value and the DEM coverage")
    return counts


def _predict_windows(predictor: Predictor, scene: Scene, windows: list[Window], factor: int,
                     batch_size: int) -> Iterator[tuple[Window, np.ndarray | None]]:
    """Yield each window with its native-resolution probabilities (None if all nodata)."""
    spec = predictor.spec
    for start in range(0, len(windows), batch_size):
        batch = windows[start:start + batch_size]
        raw, valid, keep = [], [], []
        for window in batch:
            sample = scene.read(window, spec.image_bands, factor, dem=spec.dem, slope=spec.slope)
            if sample["valid"].any():
                raw.append(stack_channels(sample, spec))
                valid.append(sample["valid"])
                keep.append(window)
        probs = {id(w): _to_native(p, w) for w, p in
                 zip(keep, predictor(raw, valid) if raw else [], strict=True)}
        for window in batch:
            yield window, probs.get(id(window))


def _to_native(prob: np.ndarray, window: Window) -> np.ndarray:
    """Bring a working-resolution probability window back to native pixels (bilinear)."""
    if prob.shape == (window.height, window.width):
        return prob
    tensor = torch.from_numpy(prob)[None, None]
    return F.interpolate(tensor, size=(window.height, window.width), mode="bilinear",
                         align_corners=False)[0, 0].numpy()


class RowBlender:
    """Accumulates weighted probabilities for the rows still open to later windows."""

    def __init__(self, width: int) -> None:
        self.width = width
        self.top = 0
        self.prob = np.zeros((0, width), dtype=np.float32)
        self.weight = np.zeros((0, width), dtype=np.float32)

    def add(self, window: Window, prob: np.ndarray | None, weights: np.ndarray) -> None:
        bottom = window.row_off + window.height
        if bottom > self.top + self.prob.shape[0]:
            grow = bottom - self.top - self.prob.shape[0]
            self.prob = np.vstack([self.prob, np.zeros((grow, self.width), np.float32)])
            self.weight = np.vstack([self.weight, np.zeros((grow, self.width), np.float32)])
        if prob is None:
            return
        rows = slice(window.row_off - self.top, bottom - self.top)
        cols = slice(window.col_off, window.col_off + window.width)
        self.prob[rows, cols] += prob * weights
        self.weight[rows, cols] += weights

    def flush_before(self, row: int) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
        """Yield the finished rows [top, row) and drop them from the buffer."""
        count = min(row - self.top, self.prob.shape[0])
        if count <= 0:
            return
        yield self.top, self.top + count, self.prob[:count], self.weight[:count]
        self.prob = self.prob[count:].copy()
        self.weight = self.weight[count:].copy()
        self.top += count


def _write_rows(outputs: RasterOutputs, scene: Scene, spec, start: int, stop: int,
                prob_sum: np.ndarray, weight: np.ndarray, threshold: float,
                counts: dict[str, int]) -> None:
    window = Window(0, start, scene.width, stop - start)
    valid = scene.read_validity(window, dem=spec.needs_dem) & (weight > 0)
    prob = np.full(prob_sum.shape, np.nan, dtype=np.float32)
    np.divide(prob_sum, weight, out=prob, where=valid)
    outputs.write(window, prob, valid, threshold)
    counts["valid_pixels"] += int(valid.sum())
    counts["landslide_pixels"] += int((valid & (prob >= threshold)).sum())
