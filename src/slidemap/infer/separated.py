"""Separated normalisation at prediction time: statistics of the target data itself.

A model normally normalises with its training statistics. On a new site (another sensor, season or
exposure) the target's own statistics often fit better: they centre and scale the new domain the
way the training data was centred and scaled (see ``slidemap.data.normalization``). These
functions compute them from what is about to be predicted: a scene, read strip by strip at the
model's working resolution in one streaming pass, or every patch of a patch set.
"""

from __future__ import annotations

import numpy as np
from rasterio.windows import Window

from slidemap.data.channels import InputSpec, read_inputs, stack_channels
from slidemap.data.l4s import L4SDataset
from slidemap.data.normalization import BandStats, StatsAccumulator
from slidemap.data.patches import PatchDataset
from slidemap.data.scene import Scene
from slidemap.data.sources import patch_arrays
from slidemap.errors import SlidemapError

STRIP_ROWS = 256  # working rows per read
STRIP_COLS = 2048  # working columns per read, at most: memory does not grow with the width


def scene_stats(scene: Scene, spec: InputSpec, factor: int) -> BandStats:
    """Per-channel statistics of the scene's valid pixels as the model sees them (decimated by
    ``factor``), streamed so memory stays one block of a strip whatever the scene size."""
    acc = StatsAccumulator()
    rows, cols = STRIP_ROWS * factor, STRIP_COLS * factor
    for top in range(0, scene.height, rows):
        for left in range(0, scene.width, cols):
            window = Window(left, top, min(cols, scene.width - left),
                            min(rows, scene.height - top))
            sample = read_inputs(scene, window, spec, factor)
            acc.update(stack_channels(sample, spec), sample["valid"])
    return acc.result()


def patch_stats(dataset: PatchDataset | L4SDataset, spec: InputSpec) -> BandStats:
    """Per-channel statistics over the valid pixels of every patch as the model sees them,
    up-sampled by ``spec.scale`` as training computed the model's own (interpolation smooths:
    statistics of the native grid were 30 % off for a band at scale 2). A set without a pixel
    valid in every channel is refused: there is nothing to map or score (its figures were an
    F1 of 0 over no pixel)."""
    acc = StatsAccumulator()
    valid = 0
    for index in range(len(dataset)):
        x = patch_arrays(dataset[index], spec).x
        finite = np.isfinite(x).all(axis=0)
        acc.update(x, finite)
        valid += int(finite.sum())
    if not valid:
        raise SlidemapError(f"no pixel of the {len(dataset)} patches ({dataset.names[0]}, ...) "
                            f"is valid in all the model's channels {spec.channels}: nothing to "
                            "map; check the bands it reads for NaN or nodata")
    return acc.result()
