"""``slidemap predict`` on a patch folder or a Landslide4Sense split: a probability and a mask
TIFF per patch, and one confusion matrix over all patches when the set has labels."""

from __future__ import annotations

import json
import logging
import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.errors import NotGeoreferencedWarning
from rich.progress import Progress

from slidemap.data.l4s import L4SDataset
from slidemap.data.patches import Georeference, PatchDataset
from slidemap.data.sources import (
    check_patches_held,
    is_l4s_folder,
    open_patch_set,
    patch_arrays,
)
from slidemap.errors import SlidemapError, SlidemapWarning, UsageError
from slidemap.evaluation.metrics import BinaryConfusion
from slidemap.infer.domain import patch_set_mismatch
from slidemap.infer.ensemble import Predictor
from slidemap.infer.options import PredictOptions
from slidemap.infer.patches import native_prob
from slidemap.infer.predict import build_predictor, prediction_settings
from slidemap.infer.separated import patch_stats
from slidemap.io import jsontext
from slidemap.io.atomic import check_outputs, output_folder, resolved, staged
from slidemap.io.provenance import provenance
from slidemap.io.rasters import CLASS_NAMES, MASK_COLOURS, MASK_NODATA, writing
from slidemap.schema.values import MAX_PATCH_SCALE
from slidemap.workflows.inputs import ModelArg, has_elevation, model_files, model_list
from slidemap.workflows.report import stale_report

log = logging.getLogger(__name__)

# the record of the maps a run wrote, so that the next run into the folder retires those it
# does not write again, and only those
RECORD = "patches.json"
WRITTEN_BY = "slidemap predict (patch set)"
PATCH_SUFFIXES = ("_prob.tif", "_mask.tif")  # metrics.json is always written or retired


@dataclass(frozen=True)
class PatchSetResult:
    """What ``predict`` wrote for a patch set; ``metrics`` when its patches have labels."""

    folder: Path
    patches: int
    model: tuple[Path, ...]
    tta: bool
    scale: float
    normalise: str
    threshold: float
    valid_pixels: int
    landslide_pixels: int
    metrics: dict[str, float] | None = None
    metrics_file: Path | None = None


def predict_patches(folder: Path, out_dir: Path, model: ModelArg = None,
                    options: PredictOptions | None = None, scale: float | None = None,
                    pixel_size: float | None = None, overwrite: bool = False,
                    progress: Progress | None = None) -> PatchSetResult:
    """Probability and mask TIFFs per patch of a patch folder or Landslide4Sense split in
    ``out_dir``, and ``metrics.json`` (one confusion matrix) when the patches have labels."""
    options = options or PredictOptions()
    if not model and is_l4s_folder(Path(folder)):
        raise SlidemapError(f"{folder} is a Landslide4Sense split (14 bands) and no shipped "
                            "model reads its bands: pass --model, one trained on such patches "
                            "(configs/README.md)")
    elevation = has_elevation(folder, None)
    models = model_list(model, elevation, patches=True)
    if not model and not elevation:
        # a folder takes no --dem (refused): its DEMs go in dem/, so that is what to name
        log.info(f"no dem/ in {folder}: mapping with the RGB-only model {models[0].stem} "
                 "(models/README.md)")
    inputs = model_files(model, elevation, patches=True)
    summary = predict_patch_set(build_predictor(models, options), folder,
                                out_dir, options, scale, pixel_size, overwrite, progress, inputs)
    metrics = summary.get("metrics")
    return PatchSetResult(folder, summary["patches"], tuple(Path(m) for m in summary["model"]),
                          options.tta, summary["scale"], options.normalise,
                          summary["threshold"], summary["valid_pixels"],
                          summary["landslide_pixels"], metrics,
                          out_dir / "metrics.json" if metrics is not None else None)


def patch_output_paths(name: str, out_dir: Path) -> dict[str, Path]:
    return {"prob": out_dir / f"{name}_prob.tif", "mask": out_dir / f"{name}_mask.tif"}


def earlier_patch_files(out_dir: Path, written: Iterable[Path]) -> list[Path]:
    """The files of an earlier patch-set prediction in ``out_dir`` that this run, writing
    ``written``, does not write again (patches the new set lacks): left in place they lay
    beside the new set's, which metrics.json does not count. Only the maps that run's
    ``patches.json`` lists are such files; a folder without that record (the user's own
    files, an older slidemap's outputs) keeps everything."""
    try:
        record = json.loads((out_dir / RECORD).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return []
    files = record.get("files") if isinstance(record, dict) and \
        record.get("written_by") == WRITTEN_BY else None
    if not isinstance(files, list):
        return []
    kept = set(written)
    listed = {out_dir / name for name in files if isinstance(name, str)
              and Path(name).name == name and name.endswith(PATCH_SUFFIXES)}
    return sorted(path for path in listed - kept if path.is_file())


def check_not_read_from(dataset: PatchDataset | L4SDataset, root: Path, out_dir: Path) -> None:
    """Refuse an ``out_dir`` the set reads its patches from (``images/``, ``masks/``, ``dem/``):
    the TIFFs written there were read as patches by the next run, which refused the set. A
    Landslide4Sense split reads only its ``.h5`` files."""
    if isinstance(dataset, PatchDataset) and dataset.reads_from(resolved(out_dir)):
        raise SlidemapError(f"--out {out_dir} is a folder the patches of {root} are read from: "
                            "the next run would read the outputs there as patches; choose "
                            "another --out")


def predict_patch_set(predictor: Predictor, root: Path, out_dir: Path,
                      options: PredictOptions, scale: float | None = None,
                      pixel_size: float | None = None, overwrite: bool = False,
                      progress: Progress | None = None, inputs: Sequence[Path] = ()) -> dict:
    """Write ``NAME_prob.tif`` (float32, NaN nodata) and ``NAME_mask.tif`` (uint8: 1 landslide,
    0 background, 255 nodata) per patch, on its grid and CRS when the patch is a georeferenced
    GeoTIFF, and ``metrics.json`` when the set has labels.

    ``scale`` overrides the model's up-sampling factor; ``options.normalise == "scene"`` uses the
    statistics of all patches of the set instead of the model's. No output may replace one of
    ``inputs`` (the model files) or of the files the set reads; an earlier run's outputs in the
    set's folder are outputs, replaced with ``overwrite``. The
    set's files appear together once every patch is mapped: a patch that fails to read leaves
    the folder as it was. The folder's report.html, when these files replace an earlier run's,
    goes with them (it showed that run's figures), as a scene's does, and so do the maps of an
    earlier run's patches that this set lacks (``patches.json`` records each run's files).
    """
    if scale is not None and not 0 < scale <= MAX_PATCH_SCALE:
        raise UsageError(f"--scale {scale} is not above 0 and at most {MAX_PATCH_SCALE:g}: "
                         "use e.g. 2 to double the size")
    if pixel_size is not None and not (math.isfinite(pixel_size) and pixel_size > 0):
        # 0 gave a slope of 90° everywhere, a negative size the slope of its absolute value
        raise UsageError(f"--pixel-size {pixel_size} is not a pixel size: give metres above 0, "
                         "e.g. 0.5")
    spec = predictor.patch_spec(scale)
    dataset = open_patch_set(root, spec, pixel_size=pixel_size)
    check_patches_held(dataset, spec)
    check_not_read_from(dataset, root, out_dir)
    paths = {name: patch_output_paths(name, out_dir) for name in dataset.names}
    metrics_path, record_path = out_dir / "metrics.json", out_dir / RECORD
    targets = {f"{name} {kind}": path for name, pair in paths.items()
               for kind, path in pair.items()}
    retired = earlier_patch_files(out_dir, targets.values())
    retired += stale_report(out_dir, [*targets.values(), metrics_path, *retired])
    if not dataset.labelled:  # no figures, and none left from an earlier run
        retired.append(metrics_path)
    check_outputs([*targets.values(), metrics_path, record_path, *retired],
                  [*inputs, *dataset.paths], overwrite)
    if dataset.labelled:
        targets["metrics"] = metrics_path
    files = sorted(path.name for path in targets.values())  # what the next run may retire
    targets["record"] = record_path
    observed = patch_stats(dataset, spec)
    if options.normalise == "scene":
        predictor = predictor.with_stats(observed)
    else:
        mismatch = patch_set_mismatch(str(root), observed, spec, predictor.stats)
        if mismatch:
            warnings.warn(mismatch, SlidemapWarning, stacklevel=2)
    confusion = BinaryConfusion(predictor.threshold) if dataset.labelled else None
    task = progress.add_task(f"predict {root.name}", total=len(dataset)) if progress else None
    tags = provenance(predictor.paths, predictor.threshold, {"patches": root},
                      patch_settings(predictor, options, spec.scale, pixel_size))
    landslide = valid_pixels = 0
    with output_folder(out_dir), staged(targets, overwrite, retire=retired) as tmp:
        for index, name in enumerate(dataset.names):
            arrays = patch_arrays(dataset[index], spec)
            prob, valid = native_prob(predictor, arrays, options)
            mask = np.where(valid, prob >= predictor.threshold, MASK_NODATA).astype(np.uint8)
            grid = dataset.georeference(index)
            _write_tif(tmp[f"{name} prob"], prob, float("nan"), tags, grid)
            _write_tif(tmp[f"{name} mask"], mask, MASK_NODATA, tags, grid)
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
            summary["metrics"] = scored_metrics(confusion, root)
            tmp["metrics"].write_text(jsontext.dumps(summary, indent=2) + "\n")
        tmp["record"].write_text(jsontext.dumps(
            {"written_by": WRITTEN_BY, "folder": str(root), "files": files}, indent=2) + "\n")
    return summary


def patch_settings(predictor: Predictor, options: PredictOptions, scale: float,
                   pixel_size: float | None) -> dict[str, str]:
    """What a patch's map depends on besides its model, patch and threshold, for its tags as a
    scene's outputs record them: the scene's settings and the factor the patches were resized
    by (and the pixel size given for their slope), which ``--scale`` or the model sets."""
    settings = {**prediction_settings(predictor, options), "scale": f"{scale:g}"}
    if pixel_size is not None:
        settings["pixel_size"] = f"{pixel_size:g}"
    return settings


def scored_metrics(confusion: BinaryConfusion, root: Path) -> dict[str, float]:
    """The set's figures; without a landslide in the labels recall, F1 and AUC are undefined,
    which a warning says, as ``evaluate`` does."""
    metrics = confusion.metrics()
    if metrics["tp"] + metrics["fn"] == 0:
        warnings.warn(f"the masks of {root} have no landslide pixel where they are scored, so "
                      "recall, F1 and AUC are undefined", SlidemapWarning, stacklevel=3)
    return metrics


def _write_tif(path: Path, array: np.ndarray, nodata: float, tags: dict[str, str],
               grid: Georeference | None) -> None:
    """A single-band TIFF at ``path`` (a staged name) on the patch's ``grid`` (None: without
    georeference, as most patches are), with the provenance ``tags``; a mask (uint8) with its
    colour table and class names."""
    place = {"crs": grid.crs, "transform": grid.transform} if grid is not None else {}
    with writing(path), warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", driver="GTiff", width=array.shape[1],
                           height=array.shape[0], count=1, dtype=array.dtype.name,
                           nodata=nodata, compress="deflate", **place) as ds:
            ds.write(array, 1)
            ds.update_tags(**tags)
            if array.dtype == np.uint8:
                ds.write_colormap(1, MASK_COLOURS)
                ds.update_tags(1, **{f"CLASS_{v}": n for v, n in CLASS_NAMES.items()})
