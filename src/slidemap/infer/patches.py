"""Prediction and scoring of in-memory arrays and of whole patch sets with a Predictor.

Patches are up-sampled by the model's scale (scale promotion), predicted in blended windows, and
their probabilities averaged back onto the patch's own grid, where they are written and scored.
One confusion matrix over all pixels of all patches gives the figures, as for scenes.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import rasterio
from rasterio.errors import NotGeoreferencedWarning
from rich.progress import Progress

from slidemap.data.dataset import SceneArrays
from slidemap.data.scaling import demote
from slidemap.data.sources import PatchArrays, open_patch_set, patch_arrays
from slidemap.data.windows import grid_windows
from slidemap.errors import SlidemapError
from slidemap.evaluation.metrics import BinaryConfusion
from slidemap.infer.blend import window_weights
from slidemap.infer.ensemble import Predictor
from slidemap.infer.predict import PredictOptions
from slidemap.infer.separated import patch_stats
from slidemap.io.atomic import atomic_path, check_outputs, make_output_dir
from slidemap.io.provenance import provenance
from slidemap.io.rasters import CLASS_NAMES, MASK_COLOURS, MASK_NODATA, writing


def predict_arrays(predictor: Predictor, x: np.ndarray, valid: np.ndarray,
                   options: PredictOptions) -> np.ndarray:
    """Probabilities (H, W) of raw channels (C, H, W), in windows blended across overlaps."""
    options = options.resolve(predictor.defaults)
    _, h, w = x.shape
    prob_sum = np.zeros((h, w), dtype=np.float32)
    weight_sum = np.zeros((h, w), dtype=np.float32)
    windows = grid_windows(h, w, options.tile, options.overlap)
    weights = window_weights(min(options.tile, h), min(options.tile, w), options.overlap // 2)
    for start in range(0, len(windows), options.batch_size):
        batch = windows[start:start + options.batch_size]
        cuts = [(slice(win.row_off, win.row_off + win.height),
                 slice(win.col_off, win.col_off + win.width)) for win in batch]
        probs = predictor([x[:, rows, cols] for rows, cols in cuts],
                          [valid[rows, cols] for rows, cols in cuts])
        for (rows, cols), prob in zip(cuts, probs, strict=True):
            prob_sum[rows, cols] += prob * weights
            weight_sum[rows, cols] += weights
    return prob_sum / weight_sum


def native_prob(predictor: Predictor, arrays: SceneArrays, options: PredictOptions
                ) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities and validity on the arrays' own grid: a patch's native grid, a scene's
    working grid. Invalid pixels are NaN."""
    return to_native(predict_arrays(predictor, arrays.x, arrays.valid, options), arrays)


def to_native(prob: np.ndarray, arrays: SceneArrays) -> tuple[np.ndarray, np.ndarray]:
    """Bring probabilities on the arrays' model grid to their own grid (see :func:`native_prob`)."""
    valid = arrays.valid
    if isinstance(arrays, PatchArrays):
        valid = arrays.native_valid
        if prob.shape != valid.shape:
            prob = demote(prob, valid.shape)
    return np.where(valid, prob, np.nan).astype(np.float32), valid


def patch_output_paths(name: str, out_dir: Path) -> dict[str, Path]:
    return {"prob": out_dir / f"{name}_prob.tif", "mask": out_dir / f"{name}_mask.tif"}


def predict_patch_set(predictor: Predictor, root: Path, out_dir: Path,
                      options: PredictOptions, scale: float | None = None,
                      pixel_size: float | None = None, overwrite: bool = False,
                      progress: Progress | None = None, inputs: Sequence[Path] = ()) -> dict:
    """Write ``NAME_prob.tif`` (float32, NaN nodata) and ``NAME_mask.tif`` (uint8: 1 landslide,
    0 background, 255 nodata) per patch, and ``metrics.json`` when the set has labels.

    ``scale`` overrides the model's up-sampling factor; ``options.normalise == "scene"`` uses the
    statistics of all patches of the set instead of the model's. No output may replace one of
    ``inputs`` (the model files, and the set's files when ``out_dir`` lies inside it).
    """
    if scale is not None and not scale > 0:
        raise SlidemapError(f"--scale {scale} is not positive: use e.g. 2 to double the size")
    spec = predictor.spec if scale is None else predictor.spec.model_copy(
        update={"scale": float(scale)})
    dataset = open_patch_set(root, spec, pixel_size=pixel_size)
    paths = {name: patch_output_paths(name, out_dir) for name in dataset.names}
    metrics_path = out_dir / "metrics.json"
    targets = [p for pair in paths.values() for p in pair.values()] + [metrics_path]
    check_outputs(targets, inputs, overwrite)
    make_output_dir(out_dir)
    if options.normalise == "scene":
        predictor = predictor.with_stats(patch_stats(dataset, spec))
    confusion = BinaryConfusion(predictor.threshold) if dataset.labelled else None
    task = progress.add_task(f"predict {root.name}", total=len(dataset)) if progress else None
    tags = provenance(predictor.paths, predictor.threshold, {"patches": root})
    landslide = valid_pixels = 0
    for index, name in enumerate(dataset.names):
        arrays = patch_arrays(dataset[index], spec)
        prob, valid = native_prob(predictor, arrays, options)
        mask = np.where(valid, prob >= predictor.threshold, MASK_NODATA).astype(np.uint8)
        _write_tif(paths[name]["prob"], prob, float("nan"), tags, overwrite)
        _write_tif(paths[name]["mask"], mask, MASK_NODATA, tags, overwrite)
        if confusion is not None and arrays.labels is not None:
            confusion.update(prob, arrays.labels)
        landslide += int((mask == 1).sum())
        valid_pixels += int(valid.sum())
        if progress is not None and task is not None:
            progress.advance(task)
    summary: dict = {"folder": str(root), "patches": len(dataset),
                     "model": [str(p) for p in predictor.paths], "tta": options.tta,
                     "scale": spec.scale, "normalise": options.normalise,
                     "threshold": predictor.threshold, "valid_pixels": valid_pixels,
                     "landslide_pixels": landslide}
    if confusion is not None:
        summary["metrics"] = confusion.metrics()
        with atomic_path(metrics_path, overwrite) as tmp:
            tmp.write_text(json.dumps(summary, indent=2) + "\n")
    else:  # an unlabelled set: no figures, and none left from an earlier run
        metrics_path.unlink(missing_ok=True)
    return summary


def _write_tif(path: Path, array: np.ndarray, nodata: float, tags: dict[str, str],
               overwrite: bool = True) -> None:
    """A single-band TIFF without georeference (patches have none), written atomically, with
    the provenance ``tags``; a mask (uint8) with its colour table and class names. Without
    ``overwrite`` an existing file (another run's) is never replaced."""
    with atomic_path(path, overwrite) as tmp, writing(tmp), warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(tmp, "w", driver="GTiff", width=array.shape[1],
                           height=array.shape[0], count=1, dtype=array.dtype.name,
                           nodata=nodata, compress="deflate") as ds:
            ds.write(array, 1)
            ds.update_tags(**tags)
            if array.dtype == np.uint8:
                ds.write_colormap(1, MASK_COLOURS)
                ds.update_tags(1, **{f"CLASS_{v}": n for v, n in CLASS_NAMES.items()})
