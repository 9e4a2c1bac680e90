"""``slidemap evaluate``: a prediction raster, or a model run on an image, scored against a
label raster or landslide polygons in one confusion matrix; ``metrics.json``, the rasters and
the plots appear together."""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

from rich.progress import Progress

from slidemap.data.names import DatasetName, absolute_name, local_files
from slidemap.errors import SlidemapWarning, UsageError
from slidemap.evaluation.raster import score_raster
from slidemap.infer.options import PredictOptions
from slidemap.infer.predict import build_predictor, predict_scene, prediction_settings
from slidemap.io import jsontext
from slidemap.io.atomic import check_outputs, output_folder, staged
from slidemap.io.provenance import provenance, recorded_threshold
from slidemap.io.rasters import RasterFormat
from slidemap.io.sidecar import check_threshold
from slidemap.io.styles import write_raster_styles
from slidemap.report.html import build_report
from slidemap.report.plots import EVALUATION_PLOTS, write_evaluation_plots
from slidemap.schema.values import file_of, is_vector
from slidemap.workflows.inputs import ModelArg, has_elevation, model_files, model_list
from slidemap.workflows.predict import output_paths, replaced_paths
from slidemap.workflows.report import check_report, stale_report


def _warn_if_one_class(metrics: dict[str, float], truth: DatasetName) -> None:
    """Recall, F1 and AUC say nothing without a landslide in the truth; a mask coded 0/255
    (as patch sets often are) has none, since 255 means ignore here. AUC says nothing without
    background either (it came out NaN, null in metrics.json, without a word)."""
    if metrics["tp"] + metrics["fn"] == 0:
        fix = ("its polygons cover none of the scored ground" if is_vector(truth) else
               "labels are 0 background, 1 landslide and 255 ignore; recode a 0/255 mask "
               "(255 → 1)")
        warnings.warn(f"truth {truth} has no landslide pixel where it is scored, so recall, F1 "
                      f"and AUC are undefined: {fix}", SlidemapWarning, stacklevel=3)
    elif metrics["tn"] + metrics["fp"] == 0:
        warnings.warn(f"truth {truth} has no background pixel where it is scored, so AUC is "
                      "undefined: score ground that holds both landslides and background",
                      SlidemapWarning, stacklevel=3)


@dataclass(frozen=True)
class EvaluateResult:
    """The scores of one prediction (``metrics.json`` holds the same, without the files)."""

    truth: str
    prediction: str
    threshold: float
    metrics: dict[str, float]  # landslide class: precision, recall, f1, iou; miou, auc, pixels
    thresholds: list[dict[str, float]]  # the same figures at other thresholds
    aoi: str | None = None
    model: list[str] | None = None  # the model files, when a model was run on an image
    plots: dict[str, Path] | None = None
    report: Path | None = None

    @property
    def best(self) -> dict[str, float]:
        """The row of ``thresholds`` with the highest F1."""
        return max(self.thresholds, key=lambda row: row["f1"])


def evaluate(truth: DatasetName, prediction: DatasetName | None = None,
             image: DatasetName | None = None, dem: DatasetName | None = None,
             model: ModelArg = None, out_dir: Path | None = None,
             threshold: float | None = None, options: PredictOptions | None = None,
             overwrite: bool = False, progress: Progress | None = None,
             aoi: Path | None = None, html_report: bool = False) -> EvaluateResult:
    """Metrics of ``prediction``, or of a model run on ``image``, against ``truth``, within
    the polygons of ``aoi`` if given; with ``out_dir``, metrics.json, plots (and the rasters
    predicted)."""
    if html_report and out_dir is None:
        raise UsageError("--report needs --out DIR to write report.html into")
    if html_report and out_dir is not None:
        check_report(out_dir, overwrite)
    if (prediction is None) == (image is None):
        raise UsageError("evaluate needs either --prediction RASTER or --image IMAGE "
                         "(with --model) to score")
    if image is not None and out_dir is None:
        raise UsageError("evaluating a model needs --out DIR for its predicted rasters")
    options = options or PredictOptions()
    if threshold is not None:  # the written mask and the scores use the same threshold
        # 1.5 or NaN scored every pixel background; a value of the wrong form exits 2
        threshold = check_threshold(threshold, UsageError)
        options = replace(options, threshold=threshold)
    predictor = None if image is None else build_predictor(
        model_list(model, has_elevation(image, dem)), options)
    outputs: dict[str, Path] = {}
    retired: list[Path] = []  # a prediction's inventory, style and Item beside the old rasters
    if image is not None and out_dir is not None:
        paths = output_paths(image, out_dir)
        outputs = {k: paths[k] for k in ("prob", "mask", "mask_aux", "prob_style", "mask_style")}
        retired = replaced_paths(image, out_dir, outputs.values())
    if out_dir is not None:
        outputs["metrics"] = out_dir / "metrics.json"
        plots = [out_dir / name for name in EVALUATION_PLOTS]
        retired += stale_report(out_dir, [*outputs.values(), *plots, *retired])
        check_outputs([*outputs.values(), *plots, *retired],
                      [*local_files(truth, prediction, image, dem),
                       *[file_of(p) for p in (truth, aoi) if p is not None and is_vector(p)],
                       *(model_files(model, has_elevation(image, dem))
                         if image is not None else [])], overwrite)
    # inputs named absolutely, as provenance names them: metrics.json read from another folder
    record: dict = {"truth": absolute_name(truth),
                    **({"aoi": absolute_name(aoi)} if aoi is not None else {})}
    # Rasters and metrics appear together, or none does.
    folder = output_folder(out_dir) if out_dir is not None else contextlib.nullcontext()
    with folder, staged(outputs, overwrite, retire=retired) as tmp:
        scored = prediction
        if predictor is not None and image is not None:
            tags = provenance(predictor.paths, predictor.threshold, {"image": image, "dem": dem},
                              prediction_settings(predictor, options))
            predict_scene(predictor, image, dem, tmp["prob"], tmp["mask"], options, progress,
                          RasterFormat("float32", tags, tmp["mask_aux"]))  # scored unrounded
            write_raster_styles(tmp["prob_style"], tmp["mask_style"])  # as predict's
            scored, prediction = tmp["prob"], outputs["prob"]
            threshold = predictor.threshold if threshold is None else threshold
            record["model"] = [absolute_name(p) for p in predictor.paths if p is not None]
        assert scored is not None and prediction is not None
        record["prediction"] = absolute_name(prediction)
        if threshold is None:  # the threshold the prediction's own mask was drawn at
            threshold = recorded_threshold(prediction) or 0.5
        record["threshold"] = threshold
        confusion = score_raster(scored, truth, threshold, aoi=aoi)
        record["metrics"] = confusion.metrics()
        record["thresholds"] = confusion.sweep()
        _warn_if_one_class(record["metrics"], truth)
        if out_dir is not None:
            tmp["metrics"].write_text(jsontext.dumps(record, indent=2) + "\n")
    plots_written = None if out_dir is None else write_evaluation_plots(
        out_dir, confusion, prediction, truth, image, aoi)
    html = build_report(out_dir, overwrite=overwrite) if html_report and out_dir else None
    return EvaluateResult(str(truth), str(prediction), threshold, record["metrics"],
                          record["thresholds"], record.get("aoi"), record.get("model"),
                          plots_written, html)
