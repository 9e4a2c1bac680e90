"""Score a probability or mask raster against a truth raster, strip by strip, in one matrix."""

from __future__ import annotations

from pathlib import Path

from rasterio.windows import Window

from slidemap.data.dataset import check_labels
from slidemap.data.scene import Scene
from slidemap.evaluation.metrics import BinaryConfusion


def score_raster(prediction: Path, truth: Path, threshold: float = 0.5,
                 strip_rows: int = 1024) -> BinaryConfusion:
    """The confusion of ``prediction`` vs ``truth``, histograms kept for precision–recall plots.

    The truth is aligned to the prediction's grid if it lies on another one. Pixels that are
    nodata in the prediction or 255 in the truth are left out.
    """
    confusion = BinaryConfusion(threshold)
    with Scene(prediction, mask=truth, require_crs=False) as scene:
        for top in range(0, scene.height, strip_rows):
            window = Window(0, top, scene.width, min(strip_rows, scene.height - top))
            sample = scene.read(window, (1,))
            check_labels(sample["mask"], truth)
            prob = sample["image"][0]
            confusion.update(prob, sample["mask"], sample["valid"])
    return confusion
