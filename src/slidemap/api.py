"""The Python API: what the CLI does, callable from a notebook or a script."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from rich.progress import Progress

from slidemap.errors import SlidemapError
from slidemap.infer.ensemble import Predictor
from slidemap.infer.evaluate import score_raster
from slidemap.infer.patches import predict_patch_set
from slidemap.infer.predict import PredictOptions, build_predictor, predict_scene
from slidemap.infer.vectorize import build_inventory, inventory_paths, write_inventory
from slidemap.io.atomic import check_outputs, make_output_dir, staged
from slidemap.io.modelfile import check_weights_dtype, load_model, model_paths, save_model
from slidemap.report.plots import write_evaluation_plots

PACKAGE_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODEL = PACKAGE_ROOT / "models" / "slidemap-jinsha-fusion.safetensors"
# Read without a DEM: the shipped RGB-only model, trained on four sites (models/README.md).
RGB_MODEL = PACKAGE_ROOT / "models" / "slidemap-rgb-sites.safetensors"


def default_model_path(dem: bool = True) -> Path:
    """The shipped model for the inputs at hand: RGB + DEM, or RGB only without a DEM."""
    path = DEFAULT_MODEL if dem else RGB_MODEL
    if not path.exists():
        raise SlidemapError(f"the shipped model {path} is missing: pass --model PATH")
    return path


def output_paths(image: Path, out_dir: Path, formats: Sequence[str] = ("gpkg",)
                 ) -> dict[str, Path]:
    stem = image.stem
    return {"prob": out_dir / f"{stem}_prob.tif", "mask": out_dir / f"{stem}_mask.tif",
            **inventory_paths(out_dir, stem, formats)}


def model_list(models: Path | Sequence[Path] | None, dem: bool = True) -> list[Path]:
    """The model files asked for, or the shipped model (the RGB-only one when ``dem`` is
    false: no DEM to read)."""
    if models is None or (not isinstance(models, Path) and not models):
        return [default_model_path(dem)]
    return [models] if isinstance(models, Path) else list(models)


def has_elevation(image: Path, dem: Path | None) -> bool:
    """Whether ``image`` comes with elevation: a DEM given, or a folder that is not a plain
    RGB patch set (``dem/`` beside ``images/``, Bijie's layout, Landslide4Sense bands)."""
    if dem is not None:
        return True
    return image.is_dir() and not ((image / "images").is_dir() and not (image / "dem").is_dir())


def load_predictor(models: Path | Sequence[Path] | None, options: PredictOptions) -> Predictor:
    """The shipped model, one model file, or an ensemble of several (probabilities averaged)."""
    return build_predictor(model_list(models), options)


def predict(image: Path, out_dir: Path, dem: Path | None = None,
            model: Path | Sequence[Path] | None = None,
            options: PredictOptions | None = None, min_area_m2: float = 0.0,
            simplify_m: float = 0.0, overwrite: bool = False,
            progress: Progress | None = None, formats: Sequence[str] = ("gpkg",)) -> dict:
    """Map landslides in ``image``: probability, mask and inventory files in ``out_dir``
    (the inventory in each of ``formats``: gpkg, geojson)."""
    options = options or PredictOptions()
    paths = output_paths(image, out_dir, formats)
    predictor = build_predictor(model_list(model, has_elevation(image, dem)), options)
    check_outputs(list(paths.values()), [image] + ([dem] if dem else []), overwrite)
    make_output_dir(out_dir)
    with staged(paths) as tmp:  # all three files appear together, or none does
        counts = predict_scene(predictor, image, dem, tmp["prob"], tmp["mask"], options,
                               progress)
        inventory = build_inventory(tmp["mask"], tmp["prob"], min_area_m2, simplify_m, dem=dem)
        for key in paths:
            if key.startswith("inventory"):
                write_inventory(inventory, tmp[key])
    return {**{k: str(v) for k, v in paths.items()}, **counts, "landslides": len(inventory),
            "landslide_area_m2": float(inventory.attributes["area_m2"].sum())}


def evaluate(truth: Path, prediction: Path | None = None, image: Path | None = None,
             dem: Path | None = None, model: Path | Sequence[Path] | None = None,
             out_dir: Path | None = None,
             threshold: float | None = None, options: PredictOptions | None = None,
             overwrite: bool = False, progress: Progress | None = None) -> dict:
    """Metrics of a prediction raster, or of a model run on ``image``, against ``truth``."""
    if (prediction is None) == (image is None):
        raise SlidemapError("evaluate needs either --prediction RASTER or --image IMAGE "
                            "(with --model) to score")
    if image is not None and out_dir is None:
        raise SlidemapError("evaluating a model needs --out DIR for its predicted rasters")
    options = options or PredictOptions()
    if threshold is not None:  # the written mask and the scores use the same threshold
        options = replace(options, threshold=threshold)
    predictor = load_predictor(model, options) if image is not None else None
    outputs: dict[str, Path] = {}
    if image is not None and out_dir is not None:
        paths = output_paths(image, out_dir)
        outputs = {"prob": paths["prob"], "mask": paths["mask"]}
    if out_dir is not None:
        outputs["metrics"] = out_dir / "metrics.json"
        check_outputs(list(outputs.values()),
                      [p for p in (truth, prediction, image, dem) if p is not None], overwrite)
        make_output_dir(out_dir)
    report: dict = {"truth": str(truth)}
    with staged(outputs) as tmp:  # rasters and metrics appear together, or none does
        scored = prediction
        if predictor is not None and image is not None:
            predict_scene(predictor, image, dem, tmp["prob"], tmp["mask"], options, progress)
            scored, prediction = tmp["prob"], outputs["prob"]
            threshold = predictor.threshold if threshold is None else threshold
            report["model"] = [str(p) for p in predictor.paths]
        assert scored is not None and prediction is not None
        report["prediction"] = str(prediction)
        report["threshold"] = 0.5 if threshold is None else threshold
        confusion = score_raster(scored, truth, report["threshold"])
        report["metrics"] = confusion.metrics()
        report["thresholds"] = confusion.sweep()
        if out_dir is not None:
            tmp["metrics"].write_text(json.dumps(report, indent=2) + "\n")
    if out_dir is not None:
        report["plots"] = {k: str(v) for k, v in write_evaluation_plots(
            out_dir, confusion, prediction, truth, image).items()}
    return report


def predict_patches(folder: Path, out_dir: Path, model: Path | Sequence[Path] | None = None,
                    options: PredictOptions | None = None, scale: float | None = None,
                    pixel_size: float | None = None, overwrite: bool = False,
                    progress: Progress | None = None) -> dict:
    """Probability and mask TIFFs per patch of a patch folder or Landslide4Sense split in
    ``out_dir``, and ``metrics.json`` (one confusion matrix) when the patches have labels."""
    options = options or PredictOptions()
    predictor = build_predictor(model_list(model, has_elevation(folder, None)), options)
    return predict_patch_set(predictor, folder, out_dir, options, scale, pixel_size, overwrite,
                             progress)


def export_onnx(model: Path, out: Path | None = None, overwrite: bool = False) -> dict:
    """Export ``model`` to ONNX at ``out`` (default: NAME.onnx beside it); what was written."""
    from slidemap.io import onnxfile

    bundle = load_model(model)
    target = out or onnxfile.onnx_path_for(model)
    check_outputs([target], list(model_paths(model)), overwrite)
    make_output_dir(target.parent)
    onnxfile.export_onnx(bundle, target)
    return {"onnx": str(target), "opset": onnxfile.OPSET,
            "stride": onnxfile.model_stride(bundle.model),
            "channels": len(bundle.inputs.channels)}


def store_weights(model: Path, out: Path, weights_dtype: str, overwrite: bool = False) -> dict:
    """Save ``model`` again at ``out`` with its weights stored as ``weights_dtype`` (float32,
    float16, int8 or int4): the same network and sidecar in a smaller file; what was written."""
    check_weights_dtype(weights_dtype)  # an unknown name fails before anything is read
    bundle = load_model(model)
    inputs, targets = list(model_paths(model)), list(model_paths(out))
    check_outputs(targets, inputs, overwrite)
    make_output_dir(targets[0].parent)
    written = save_model(replace(bundle, weights_dtype=weights_dtype), out)
    return {"model": str(written), "weights_dtype": weights_dtype,
            "bytes": written.stat().st_size, "bytes_before": inputs[0].stat().st_size}


def bench(image: Path, dem: Path | None = None, model: Path | Sequence[Path] | None = None,
          options: PredictOptions | None = None, sample: int = 32,
          agreement: bool = False) -> dict:
    """Model-only against end-to-end throughput of mapping ``image``, and peak RSS
    (``slidemap.infer.bench``); with ``agreement``, how close the map is to torch fp32."""
    from slidemap.infer.bench import bench_scene

    return bench_scene(image, dem, model_list(model), options or PredictOptions(), sample,
                       agreement)
