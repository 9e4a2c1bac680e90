"""The Python API: every command of the CLI, callable from a notebook or a script.

Paths may be given as ``str`` or any ``os.PathLike``; raster and vector inputs also as GDAL names
(``/vsizip/...``, ``https://...``). Each function runs one workflow (``slidemap.workflows``) and
returns a frozen dataclass of what it wrote and measured. Those that run or build models give
torch's global random generator back as the caller left it (training seeds it), so a seeded
notebook draws the same numbers after a call as before it.

Bad input or a failed precondition raises :class:`SlidemapError` (one line that says what to
fix; :class:`UsageError`, a subclass, for arguments that do not go together or are of the wrong
form or type); input that can be mapped but probably not well warns with :class:`SlidemapWarning`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from numbers import Integral, Real
from pathlib import Path
from typing import TypeVar

from rich.progress import Progress

from slidemap.data.names import DatasetName, display_name
from slidemap.errors import SlidemapError, SlidemapWarning, UsageError
from slidemap.infer.options import PredictOptions
from slidemap.infer.runtime import kept_torch_rng
from slidemap.io.jsontext import dumps as json_text
from slidemap.io.rasters import DEFAULT_PROB_DTYPE
from slidemap.io.sidecar import check_scales
from slidemap.train.adapt import AdaptOptions
from slidemap.workflows import bench as bench_workflow
from slidemap.workflows import crossval as crossval_workflow
from slidemap.workflows import evaluate as evaluate_workflow
from slidemap.workflows import explain as explain_workflow
from slidemap.workflows import export as export_workflow
from slidemap.workflows import finetune as finetune_workflow
from slidemap.workflows import models as models_workflow
from slidemap.workflows import newsite as newsite_workflow
from slidemap.workflows import patches as patches_workflow
from slidemap.workflows import predict as predict_workflow
from slidemap.workflows import report as report_workflow
from slidemap.workflows import selftrain as selftrain_workflow
from slidemap.workflows import study as study_workflow
from slidemap.workflows import suggest as suggest_workflow
from slidemap.workflows import train as train_workflow
from slidemap.workflows.bench import BenchResult
from slidemap.workflows.crossval import CrossvalResult
from slidemap.workflows.evaluate import EvaluateResult
from slidemap.workflows.explain import ExplainResult
from slidemap.workflows.export import OnnxExport, StoredWeights
from slidemap.workflows.finetune import FinetuneResult
from slidemap.workflows.inputs import (
    DEFAULT_MODEL,
    PACKAGE_ROOT,
    RGB_MODEL,
    default_model_path,
    has_elevation,
    is_found,
    is_patch_folder,
)
from slidemap.workflows.models import Architecture
from slidemap.workflows.newsite import NewSiteResult
from slidemap.workflows.patches import PatchSetResult
from slidemap.workflows.predict import PredictResult
from slidemap.workflows.report import ReportResult
from slidemap.workflows.selftrain import SelftrainResult
from slidemap.workflows.study import StudyResult
from slidemap.workflows.suggest import Pick, SuggestResult
from slidemap.workflows.train import TrainResult

__all__ = [
    "DEFAULT_MODEL", "PACKAGE_ROOT", "RGB_MODEL", "AdaptOptions", "Architecture", "BenchResult",
    "CrossvalResult", "EvaluateResult", "ExplainResult", "FinetuneResult", "NewSiteResult",
    "OnnxExport", "PatchSetResult", "Pick", "PredictOptions", "PredictResult", "ReportResult",
    "SelftrainResult", "SlidemapError", "SlidemapWarning", "StoredWeights", "StudyResult",
    "SuggestResult", "TrainResult", "UsageError",
    "architectures", "bench", "check_scales", "crossval", "default_model_path", "display_name",
    "evaluate", "explain", "export_onnx", "finetune", "has_elevation", "is_found",
    "is_patch_folder", "json_text", "new_site", "output_paths", "predict", "predict_patches",
    "report", "selftrain", "store_weights", "study", "suggest", "train",
]

PathArg = str | os.PathLike[str]
Models = PathArg | Sequence[PathArg] | None
Options = TypeVar("Options", PredictOptions, AdaptOptions)


def _path(value: PathArg, name: str) -> Path:
    return Path(_given(value, name))


def _opt_path(value: PathArg | None, name: str) -> Path | None:
    return None if value is None else _path(value, name)


def _name(value: PathArg, name: str) -> DatasetName:
    """A GDAL dataset name kept as text (``/vsizip/...``, URLs), any other path as a Path."""
    value = _given(value, name)
    return value if isinstance(value, str) else Path(value)


def _opt_name(value: PathArg | None, name: str) -> DatasetName | None:
    return None if value is None else _name(value, name)


def _given(value: object, name: str) -> PathArg:
    """A path argument as given; anything else (an array, a number, None) is refused in one
    line naming the argument, as pathlib's TypeError (or one from deep inside) does not."""
    if not isinstance(value, str | os.PathLike):
        raise UsageError(f"{name} must be a file or GDAL dataset name (str or os.PathLike), "
                         f"not {type(value).__name__}: slidemap reads its inputs by name")
    return value


def _models(value: Models) -> Models:
    """``model`` as given: None, one model file, or a sequence of them (an ensemble). An empty
    sequence (a glob that matched nothing) is refused: it mapped with the shipped model."""
    if value is None or isinstance(value, str | os.PathLike):
        return value
    if isinstance(value, Sequence) and not value:
        raise UsageError("model is an empty list: give one model file or more, or leave model "
                         "out (None) for the shipped model")
    if isinstance(value, Sequence) and all(isinstance(v, str | os.PathLike) for v in value):
        return list(value)
    raise UsageError(f"model must be a model file (str or os.PathLike) or a list of them, not "
                     f"{type(value).__name__}")


def _progress(value: Progress | None) -> Progress | None:
    """``progress`` as a rich ``Progress`` that the caller shows, or None (silent);
    ``progress=True`` was an AttributeError once the scene was open."""
    if value is not None and not isinstance(value, Progress):
        raise UsageError(f"progress must be a rich.progress.Progress (or None for no bar), not "
                         f"{value!r:.40}")
    return value


def _overrides(value: Sequence[str]) -> tuple[str, ...]:
    """``overrides`` as a tuple of ``KEY=VALUE``. A bare string is refused: a type checker
    takes it for a ``Sequence[str]``, and it was read letter by letter ('t' is not
    key.path=value), the message naming neither the argument nor the fix."""
    if isinstance(value, str) or not isinstance(value, Sequence) \
            or not all(isinstance(v, str) for v in value):
        raise UsageError(f"overrides must be a list of KEY=VALUE texts, e.g. "
                         f"['training.lr=4e-3'], not {value!r:.60}")
    return tuple(value)


def _flag(value: bool, name: str) -> bool:
    """A switch as a bool: ``overwrite="false"`` (a setting read from text) is true to Python
    and replaced the outputs it was meant to keep."""
    if not isinstance(value, bool):
        raise UsageError(f"{name} must be True or False, not {value!r:.40}")
    return value


def _whole(value: int, name: str) -> int:
    """A count, seed or index as an int: text, a fraction or a bool is refused naming the
    argument, where it reached a range check as a TypeError or was blamed on the config."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise UsageError(f"{name} must be a whole number, not {value!r:.40}")
    return int(value)


def _opt_whole(value: int | None, name: str) -> int | None:
    return None if value is None else _whole(value, name)


def _opt_real(value: float | None, name: str) -> float | None:
    """A size or factor as a float, or None; text or a bool is refused naming the argument."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, Real)):
        raise UsageError(f"{name} must be a number, not {value!r:.40}")
    return None if value is None else float(value)


def _seeds(value: Iterable[int] | None) -> tuple[int, ...] | None:
    """``seeds`` as a tuple of ints; a string (read digit by digit, each blamed on the config's
    training.seed) or a lone number is refused."""
    if value is None:
        return None
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise UsageError(f"seeds must be a list of whole numbers, e.g. [0, 1], not "
                         f"{value!r:.40}")
    return tuple(_whole(seed, "seeds") for seed in value)


def _four(value: Sequence[int] | None, name: str, example: str) -> tuple[int, ...] | None:
    """A window or box as a tuple; text (the CLI's ``0,0,512,512``, read character by
    character) or one number (a TypeError from ``tuple()``) is refused as given."""
    if value is None:
        return None
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise UsageError(f"{name} must be 4 whole numbers, e.g. {example}, not {value!r:.40}")
    return tuple(value)


def _checked(value: Options | None, kind: type[Options], name: str) -> Options | None:
    """An options object of ``kind`` or None; a dict or other object is refused in one line
    rather than failing on a missing attribute deep inside."""
    if value is not None and not isinstance(value, kind):
        raise UsageError(f"{name} must be an api.{kind.__name__} (or None), not "
                         f"{type(value).__name__}")
    return value


def output_paths(image: PathArg, out_dir: PathArg, formats: Sequence[str] = ("gpkg",)
                 ) -> dict[str, Path]:
    """The files ``predict`` writes for ``image`` into ``out_dir``, by key (``prob``, ``mask``,
    ``prob_style``, ``mask_style``, ``inventory``, ``style``, ``stac``, ...)."""
    return predict_workflow.output_paths(_name(image, "image"), _path(out_dir, "out_dir"),
                                         formats)


@kept_torch_rng()
def predict(image: PathArg, out_dir: PathArg, dem: PathArg | None = None,
            model: Models = None, options: PredictOptions | None = None,
            min_area_m2: float | None = None, simplify_m: float | None = None,
            overwrite: bool = False, progress: Progress | None = None,
            formats: Sequence[str] = ("gpkg",), prob_dtype: str = DEFAULT_PROB_DTYPE,
            html_report: bool = False, adapt: AdaptOptions | None = None) -> PredictResult:
    """Map landslides in a scene (any GDAL raster, or a STAC Item JSON of image and DEM):
    probability and mask COGs, the inventory (each of ``formats``: gpkg, geojson) with its QGIS
    style, a STAC Item, and with ``html_report`` report.html, in ``out_dir``. Without ``model``,
    the shipped model (the RGB-only one when there is no DEM). ``adapt``: first fine-tune a
    copy of the model on the scene's own confident pixels (``slidemap.train.adapt``).
    Returns a :class:`PredictResult`: the files (``.prob``, ``.mask``, ``.inventory``, ...),
    pixel and landslide counts, landslide area and the inventory's cut sizes."""
    return predict_workflow.predict(
        _name(image, "image"), _path(out_dir, "out_dir"), _opt_name(dem, "dem"), _models(model),
        _checked(options, PredictOptions, "options"), _opt_real(min_area_m2, "min_area_m2"),
        _opt_real(simplify_m, "simplify_m"), _flag(overwrite, "overwrite"),
        _progress(progress), formats, prob_dtype, _flag(html_report, "html_report"),
        _checked(adapt, AdaptOptions, "adapt"))


@kept_torch_rng()
def predict_patches(folder: PathArg, out_dir: PathArg, model: Models = None,
                    options: PredictOptions | None = None, scale: float | None = None,
                    pixel_size: float | None = None, overwrite: bool = False,
                    progress: Progress | None = None) -> PatchSetResult:
    """Probability and mask TIFFs per patch of a patch folder or Landslide4Sense split in
    ``out_dir``, and ``metrics.json`` (one confusion matrix) when the patches have labels.
    Returns a :class:`PatchSetResult` (patch and pixel counts, ``metrics`` or None)."""
    return patches_workflow.predict_patches(
        _path(folder, "folder"), _path(out_dir, "out_dir"), _models(model),
        _checked(options, PredictOptions, "options"), _opt_real(scale, "scale"),
        _opt_real(pixel_size, "pixel_size"), _flag(overwrite, "overwrite"), _progress(progress))


@kept_torch_rng()
def evaluate(truth: PathArg, prediction: PathArg | None = None, image: PathArg | None = None,
             dem: PathArg | None = None, model: Models = None, out_dir: PathArg | None = None,
             threshold: float | None = None, options: PredictOptions | None = None,
             overwrite: bool = False, progress: Progress | None = None,
             aoi: PathArg | None = None, html_report: bool = False) -> EvaluateResult:
    """Metrics of a prediction raster, or of a model run on ``image``, against ``truth`` (a
    label raster or landslide polygons), within the polygons of ``aoi`` if given; a model run
    on ``image`` needs ``out_dir``, where the map it scores is written. Returns an
    :class:`EvaluateResult`: ``metrics`` (precision, recall, f1, iou, miou, auc, ...) at
    ``threshold``, the same at other ``thresholds``, and the files written."""
    return evaluate_workflow.evaluate(
        _name(truth, "truth"), _opt_name(prediction, "prediction"), _opt_name(image, "image"),
        _opt_name(dem, "dem"), _models(model), _opt_path(out_dir, "out_dir"), threshold,
        _checked(options, PredictOptions, "options"), _flag(overwrite, "overwrite"),
        _progress(progress), _opt_path(aoi, "aoi"), _flag(html_report, "html_report"))


@kept_torch_rng()
def train(config: PathArg, out_dir: PathArg, resume: bool = False, overwrite: bool = False,
          seed: int | None = None, overrides: Sequence[str] = ()) -> TrainResult:
    """Train as the YAML run config says (an ensemble, a fine-tuning with ``init:`` and
    validation data, or one network); ``seed`` replaces ``training.seed``, ``overrides``
    (``KEY=VALUE``, as ``--set``) keys of the file. Returns a :class:`TrainResult`: the run
    folder and its model file."""
    return train_workflow.train_config(_path(config, "config"), _path(out_dir, "out_dir"),
                                       _flag(resume, "resume"), _flag(overwrite, "overwrite"),
                                       _opt_whole(seed, "seed"),
                                       _overrides(overrides))


@kept_torch_rng()
def finetune(model: PathArg, config: PathArg, out_dir: PathArg, freeze_encoder: bool = False,
             resume: bool = False, overwrite: bool = False,
             seed: int | None = None, overrides: Sequence[str] = ()) -> FinetuneResult:
    """Fine-tune ``model`` on a run config's data. Returns a :class:`FinetuneResult`: the new
    model file and the validation figures ``before`` and ``after``."""
    return finetune_workflow.finetune(_path(model, "model"), _path(config, "config"),
                                      _path(out_dir, "out_dir"),
                                      _flag(freeze_encoder, "freeze_encoder"),
                                      _flag(resume, "resume"), _flag(overwrite, "overwrite"),
                                      _opt_whole(seed, "seed"),
                                      _overrides(overrides))


@kept_torch_rng()
def selftrain(config: PathArg, out_dir: PathArg, overwrite: bool = False,
              overrides: Sequence[str] = ()) -> SelftrainResult:
    """Train on the labelled source, then retrain with pseudo-labels of the target. Returns a
    :class:`SelftrainResult`: a row per round, ``rounds.md`` and the last round's model."""
    return selftrain_workflow.selftrain(_path(config, "config"), _path(out_dir, "out_dir"),
                                        _flag(overwrite, "overwrite"), _overrides(overrides))


@kept_torch_rng()
def study(config: PathArg, out_dir: PathArg, overrides: Sequence[str] = ()) -> StudyResult:
    """Train and score a grid of runs on one budget; a rerun continues an interrupted one.
    ``overrides`` change the study's base. Returns a :class:`StudyResult`: a row per scored
    run (as ``results.csv``) and ``results.md``."""
    return study_workflow.study(_path(config, "config"), _path(out_dir, "out_dir"),
                                _overrides(overrides))


@kept_torch_rng()
def crossval(config: PathArg, out_dir: PathArg, baseline: PathArg | None = None,
             seeds: Sequence[int] | None = None,
             adapt: AdaptOptions | None = None,
             overrides: Sequence[str] = ()) -> CrossvalResult:
    """Spatial cross-validation of a recipe; with ``baseline``, the paired comparison; with
    ``adapt``, scene adaptation measured on the held-out blocks. ``overrides`` change the
    candidate's config (not the baseline's). Returns a :class:`CrossvalResult`: pooled
    figures per recipe, the ``comparison`` (or None) and the tables written."""
    return crossval_workflow.crossval(_path(config, "config"), _path(out_dir, "out_dir"),
                                      _opt_path(baseline, "baseline"),
                                      _seeds(seeds),
                                      _checked(adapt, AdaptOptions, "adapt"),
                                      _overrides(overrides))


@kept_torch_rng()
def explain(image: PathArg, out_dir: PathArg, dem: PathArg | None = None,
            model: PathArg | None = None, window: Sequence[int] | None = None,
            box: Sequence[int] | None = None, layer: str | None = None,
            overwrite: bool = False) -> ExplainResult:
    """Grad-CAM, attention and probability maps of one window (col, row, width, height).
    Returns an :class:`ExplainResult`: the layer explained and the files by name."""
    return explain_workflow.explain(_name(image, "image"), _path(out_dir, "out_dir"),
                                    _opt_name(dem, "dem"), _opt_path(model, "model"),
                                    _four(window, "window", "(0, 0, 512, 512)"),
                                    _four(box, "box", "(100, 100, 200, 200)"), layer,
                                    _flag(overwrite, "overwrite"))


def report(folder: PathArg, out: PathArg | None = None, image: PathArg | None = None,
           interactive: bool = False, overwrite: bool = False) -> ReportResult:
    """One self-contained HTML report of a train, evaluate or predict output folder;
    ``image``: the imagery under a prediction's map (any GDAL name). Returns a
    :class:`ReportResult` with the page's path (``.html``)."""
    return report_workflow.report(_path(folder, "folder"), _opt_path(out, "out"),
                                  None if image is None else os.fspath(_given(image, "image")),
                                  _flag(interactive, "interactive"),
                                  _flag(overwrite, "overwrite"))


@kept_torch_rng()
def suggest(model: Models, image: PathArg, out: PathArg, dem: PathArg | None = None,
            n: int = 10, box: int = 512, labels: PathArg | Sequence[PathArg] = (),
            spacing: int = 1, options: PredictOptions | None = None, overwrite: bool = False,
            progress: Progress | None = None) -> SuggestResult:
    """The ``n`` boxes of ``image`` most worth labelling next, as polygons in ``out``;
    ``labels``: one vector file, or several, of the ground already labelled. Returns a
    :class:`SuggestResult`: the boxes file and the ranked ``picks``."""
    done = [labels] if isinstance(labels, (str, os.PathLike)) else labels
    return suggest_workflow.suggest(_models(model), _name(image, "image"), _path(out, "out"),
                                    _opt_name(dem, "dem"), n, box,
                                    [_path(p, "labels") for p in done], spacing,
                                    _checked(options, PredictOptions, "options"),
                                    _flag(overwrite, "overwrite"), _progress(progress))


@kept_torch_rng()
def new_site(image: PathArg, labels: PathArg, out_dir: PathArg, aoi: PathArg | None = None,
             dem: PathArg | None = None, init: PathArg | None = None, epochs: int = 10,
             overwrite: bool = False, progress: Progress | None = None) -> NewSiteResult:
    """Train on the landslide polygons ``labels`` drawn over ``image`` and map the scene.
    Returns a :class:`NewSiteResult`: the run config, the model and the ``map``
    (a :class:`PredictResult`)."""
    return newsite_workflow.new_site(_name(image, "image"), _path(labels, "labels"),
                                     _path(out_dir, "out_dir"), _opt_path(aoi, "aoi"),
                                     _opt_name(dem, "dem"), _opt_path(init, "init"),
                                     _whole(epochs, "epochs"),
                                     _flag(overwrite, "overwrite"), _progress(progress))


@kept_torch_rng()
def export_onnx(model: PathArg, out: PathArg | None = None, overwrite: bool = False,
                member: int | None = None) -> OnnxExport:
    """Export ``model`` (or network ``member`` of an ensemble, 0 = the first) to ONNX at ``out``
    (default: NAME.onnx beside it, NAME-member-K.onnx for a member; in the current folder for a
    model shipped in an installed slidemap, whose folder is the installation's). Returns an
    :class:`OnnxExport`: the file, its opset, stride and input channels."""
    return export_workflow.export_onnx(_path(model, "model"), _opt_path(out, "out"),
                                       _flag(overwrite, "overwrite"),
                                       _opt_whole(member, "member"))


@kept_torch_rng()
def store_weights(model: PathArg, out: PathArg, weights_dtype: str, overwrite: bool = False,
                  member: int | None = None) -> StoredWeights:
    """``model`` saved again at ``out`` with float16, int8 or int4 (or float32) weights; with
    ``member``, that network of an ensemble alone (0 = the first). Returns
    :class:`StoredWeights`: the new file and its size against the source's."""
    return export_workflow.store_weights(_path(model, "model"), _path(out, "out"),
                                         weights_dtype, _flag(overwrite, "overwrite"),
                                         _opt_whole(member, "member"))


@kept_torch_rng()
def bench(image: PathArg, dem: PathArg | None = None, model: Models = None,
          options: PredictOptions | None = None, sample: int = 32, agreement: bool = False,
          json_out: PathArg | None = None, overwrite: bool = False) -> BenchResult:
    """Model-only against end-to-end throughput of mapping ``image``, and peak RSS. Returns a
    :class:`BenchResult` whose ``figures`` are what ``json_out`` holds."""
    return bench_workflow.bench(_name(image, "image"), _opt_name(dem, "dem"), _models(model),
                                _checked(options, PredictOptions, "options"),
                                _whole(sample, "sample"), _flag(agreement, "agreement"),
                                _opt_path(json_out, "json_out"), _flag(overwrite, "overwrite"))


@kept_torch_rng()
def architectures(in_channels: int = 5) -> list[Architecture]:
    """Every registered architecture with its parameter count for ``in_channels`` inputs at a
    config's default width, as :class:`Architecture` rows (``name``, ``parameters``, ``width``)."""
    return models_workflow.architectures(_whole(in_channels, "in_channels"))
