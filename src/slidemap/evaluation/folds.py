"""Spatial blocks and folds for cross-validation on labelled scenes.

Each scene is cut into ``rows`` × ``cols`` rectangular blocks whose edges sit at quantiles of its
valid pixels, so every block holds about the same labelled ground (the valid area of a valley
scene is a band, not the rectangle). Blocks are dealt to ``folds`` folds in turn; a fold's model
trains on every valid pixel that is more than ``buffer`` pixels (in rows or in columns) from all
of the fold's blocks, and scores those blocks only. With a buffer of at least one training window,
no training window can hold a scored pixel, and the ground next to a scored block (the same slope,
the same slide) is out of training too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath

import numpy as np
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.warp import reproject
from scipy import ndimage

from slidemap.data.names import DatasetName, dataset_stem, local_path
from slidemap.errors import SlidemapError

# The block layout ``slidemap crossval`` writes first into its --out: it marks a crossval folder.
LAYOUT_FILE = "blocks_layout.json"


@dataclass(frozen=True)
class Block:
    """Rows ``top:bottom`` and columns ``left:right`` of scene ``scene`` (working grid)."""

    name: str
    scene: int
    fold: int
    top: int
    bottom: int
    left: int
    right: int

    def mask(self, shape: tuple[int, int]) -> np.ndarray:
        out = np.zeros(shape, dtype=bool)
        out[self.top:self.bottom, self.left:self.right] = True
        return out

    def buffered(self, shape: tuple[int, int], buffer: int) -> np.ndarray:
        """The block grown by ``buffer`` pixels on every side (a Chebyshev distance)."""
        out = np.zeros(shape, dtype=bool)
        out[max(0, self.top - buffer):self.bottom + buffer,
            max(0, self.left - buffer):self.right + buffer] = True
        return out


def quantile_cuts(coords: np.ndarray, parts: int, end: int) -> list[int]:
    """``parts + 1`` cut positions from 0 to ``end`` splitting ``coords`` into equal counts;
    without coordinates (a band that cuts of the rows left empty) all but the last are 0."""
    inner = np.quantile(coords, np.arange(1, parts) / parts) if coords.size else [0] * (parts - 1)
    return [0, *(round(float(v)) for v in inner), end]


def scene_blocks(valid: np.ndarray, rows: int, cols: int, scene: int, name: str
                 ) -> list[Block]:
    """``rows`` bands of equal valid area, each cut into ``cols`` blocks of equal valid area;
    blocks without a valid pixel are dropped."""
    height, width = valid.shape
    ys, xs = np.nonzero(valid)
    blocks = []
    row_cuts = quantile_cuts(ys, rows, height)
    for r in range(rows):
        top, bottom = row_cuts[r], row_cuts[r + 1]
        in_band = (ys >= top) & (ys < bottom)
        col_cuts = quantile_cuts(xs[in_band], cols, width)
        for c in range(cols):
            left, right = col_cuts[c], col_cuts[c + 1]
            if bottom > top and right > left and valid[top:bottom, left:right].any():
                blocks.append(Block(f"{name}-r{r}c{c}", scene, -1, top, bottom, left, right))
    return blocks


def scene_names(images: list[DatasetName]) -> list[str]:
    """A name per scene for its blocks: the image's stem, as runs have always named them (a GDAL
    name's as :func:`dataset_stem` gives it); where stems repeat (``sa/image.tif``,
    ``sb/image.tif``) the parent folder's (or archive's) name goes first, and if that still
    repeats the scene's number, so that no two scenes' blocks share a name."""
    stems = [dataset_stem(p) for p in images]
    repeated = {s for s in stems if stems.count(s) > 1}
    if not repeated:
        return stems
    by_folder = [f"{_folder_name(p)}-{s}" if s in repeated else s
                 for p, s in zip(images, stems, strict=True)]
    if len(set(by_folder)) == len(by_folder):
        return by_folder
    return [f"scene{i}-{s}" if s in repeated else s for i, s in enumerate(stems)]


def _folder_name(image: DatasetName) -> str:
    """The name of the folder a local image is in, or of the archive (or file) a GDAL name
    points into (``/vsizip//a/d.zip/o.tif``: ``d``)."""
    path = local_path(image)
    if path is not None:
        return path.absolute().parent.name
    return dataset_stem(str(PurePosixPath(str(image)).parent))


def make_blocks(valids: list[np.ndarray], names: list[str], rows: int, cols: int,
                folds: int) -> list[Block]:
    """Blocks of every scene, dealt to folds in turn (scene by scene, row by row). Results are
    kept by block name, so scene names must differ (:func:`scene_names`)."""
    if len(set(names)) != len(names):
        raise SlidemapError(f"crossval: scene names {names} repeat, so their blocks' results "
                            "would overwrite each other: give the scenes' images other names")
    blocks = [b for i, (valid, name) in enumerate(zip(valids, names, strict=True))
              for b in scene_blocks(valid, rows, cols, i, name)]
    if len(blocks) < folds:
        raise SlidemapError(f"crossval: {len(blocks)} blocks with labelled pixels cannot fill "
                            f"{folds} folds: use more blocks or fewer folds")
    return [Block(b.name, b.scene, i % folds, b.top, b.bottom, b.left, b.right)
            for i, b in enumerate(blocks)]


@dataclass(frozen=True)
class Grid:
    """A scene's working grid on the ground: its CRS (None: not georeferenced) and the affine
    transform of its working pixels."""

    crs: CRS | None
    transform: Affine


def held_out(blocks: list[Block], fold: int, scene: int, shape: tuple[int, int],
             buffer: int) -> np.ndarray:
    """Pixels of ``scene`` that fold ``fold`` may not train on: its blocks and their buffer."""
    out = np.zeros(shape, dtype=bool)
    for block in blocks:
        if block.fold == fold and block.scene == scene:
            out |= block.buffered(shape, buffer)
    return out


def held_out_across(blocks: list[Block], fold: int, scene: int, valids: list[np.ndarray],
                    grids: list[Grid], buffer: int) -> np.ndarray:
    """Pixels of ``scene`` on the ground that fold ``fold`` scores in *other* scenes (their
    blocks' labelled pixels) or within its buffer (``buffer`` pixels of the scored scene, one
    more for the change of grid): two scenes that show the same slope, or ground side by side,
    must not train a fold on what it scores in the other. The buffer reaches past the scored
    scene's edge (regions that meet there). Scenes without a CRS hold nothing out of each
    other."""
    target = grids[scene]
    out = np.zeros(valids[scene].shape, dtype=bool)
    if target.crs is None:
        return out
    for other, grid in enumerate(grids):
        if other == scene or grid.crs is None:
            continue
        height, width = valids[other].shape
        scored = np.zeros((height, width), dtype=bool)
        for block in blocks:
            if block.fold == fold and block.scene == other:
                scored |= block.mask((height, width))
        scored &= valids[other]
        if not scored.any():
            continue
        reach = buffer + 1
        near = ndimage.maximum_filter(np.pad(scored, reach), size=2 * reach + 1).astype(np.uint8)
        landed = np.zeros(out.shape, dtype=np.uint8)
        reproject(near, landed, src_transform=grid.transform @ Affine.translation(-reach, -reach),
                  src_crs=grid.crs, dst_transform=target.transform, dst_crs=target.crs,
                  resampling=Resampling.max)
        out |= landed > 0
    return out
