"""Score a probability or mask raster against a truth raster, window by window, in one matrix."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from rasterio.windows import Window

from slidemap.data.dataset import check_labels
from slidemap.data.names import DatasetName
from slidemap.data.scene import Scene
from slidemap.errors import SlidemapError, SlidemapWarning
from slidemap.evaluation.metrics import BinaryConfusion

ROUNDING = 1e-6  # float32 rounding past 0 or 1 in probabilities written elsewhere: not an error
WINDOW_COLUMNS = 4096  # with 1024 rows, about 4 Mpx a window: some 120 MB of arrays while scored


def score_windows(height: int, width: int, rows: int = 1024,
                  columns: int = WINDOW_COLUMNS) -> Iterator[Window]:
    """Windows of at most ``rows`` × ``columns`` px covering the raster: whole-width strips
    read a scene of any height in the memory of one, and column blocks keep a scene of any
    width from making a strip larger than memory (a 100 000 px wide one took gigabytes)."""
    for top in range(0, height, rows):
        for left in range(0, width, columns):
            yield Window(left, top, min(columns, width - left), min(rows, height - top))


def score_raster(prediction: DatasetName, truth: DatasetName, threshold: float = 0.5,
                 strip_rows: int = 1024, aoi: Path | None = None) -> BinaryConfusion:
    """The confusion of ``prediction`` vs ``truth``, histograms kept for precision–recall plots.

    The truth (a label raster, or landslide polygons rasterised window by window) is aligned to
    the prediction's grid if it lies on another one. Pixels that are nodata in the prediction,
    255 in the truth or outside the area of interest ``aoi`` are left out; if none is left,
    that is an error, not a score of nothing. A prediction of only 0 and 1 (a mask) is scored
    at its one cut, and a warning says that its AUC and curve are no model's ranking.
    """
    confusion = BinaryConfusion(threshold)
    binary = True  # every scored value 0 or 1 so far
    with Scene(prediction, mask=truth, require_crs=False, apply_scale=True, aoi=aoi,
               role="prediction") as scene:
        if scene.band_count != 1:
            raise SlidemapError(f"prediction {prediction} has {scene.band_count} bands: pass "
                                "a single-band probability (0-1) or mask (0/1) raster")
        area = scene.labelled_window()  # outside it every pixel is unlabelled
        for part in score_windows(int(area.height), int(area.width), strip_rows):
            window = Window(part.col_off + area.col_off, part.row_off + area.row_off,
                            part.width, part.height)
            sample = scene.read(window, (1,))
            check_labels(sample["mask"], truth)
            prob = sample["image"][0]
            valid = sample["valid"] & np.isfinite(prob)
            outside = valid & ((prob < -ROUNDING) | (prob > 1 + ROUNDING))
            if outside.any():
                values = prob[outside]
                raise SlidemapError(
                    f"prediction {prediction} has values from {values.min():g} to "
                    f"{values.max():g} outside 0-1: pass a probability (0-1) or mask (0/1) "
                    "raster, with its nodata value set (e.g. gdal_edit.py -a_nodata 255)")
            scored = np.clip(prob, 0.0, 1.0)
            binary = binary and bool(np.isin(scored[valid], (0.0, 1.0)).all())
            confusion.update(scored, sample["mask"], valid)
    if not confusion.counts.any():
        inside = f" inside the area of interest {aoi}" if aoi is not None else ""
        raise SlidemapError(f"no pixel of prediction {prediction} is both predicted and "
                            f"labelled in {truth}{inside}: nothing to score; pass files that "
                            "cover the same ground")
    if binary:
        warnings.warn(f"prediction {prediction} holds only 0 and 1 (a mask): its precision, "
                      "recall, F1 and IoU are the mask's, but AUC and the precision-recall "
                      "curve need the probabilities (pass the _prob.tif predict wrote)",
                      SlidemapWarning, stacklevel=2)
    return confusion
