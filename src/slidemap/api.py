"""The Python API: what the CLI does, callable from a notebook or a script."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from rich.progress import Progress

from slidemap.data.vectors import file_of
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


def default_model_path() -> Path:
    if not DEFAULT_MODEL.exists():
        raise SlidemapError(f"the shipped model {DEFAULT_MODEL} is missing: pass --model PATH")
    return DEFAULT_MODEL


def output_paths(image: Path, out_dir: Path, formats: Sequence[str] = ("gpkg",)
                 ) -> dict[str, Path]:
    stem = image.stem
    return {"prob": out_dir / f"{stem}_prob.tif", "mask": out_dir / f"{stem}_mask.tif",
            **inventory_paths(out_dir, stem, formats)}


def model_list(models: Path | Sequence[Path] | None) -> list[Path]:
    """The model files asked for, or the shipped model."""
    if models is None or (not isinstance(models, Path) and not models):
        return [default_model_path()]
    return [models] if isinstance(models, Path) else list(models)


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
    predictor = load_predictor(model, options)
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
             overwrite: bool = False, progress: Progress | None = None,
             aoi: Path | None = None) -> dict:
    """Metrics of a prediction raster, or of a model run on ``image``, against ``truth`` (a
    label raster or landslide polygons), within the polygons of ``aoi`` if given."""
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
                      [file_of(p) for p in (truth, prediction, image, dem, aoi) if p is not None],
                      overwrite)
        make_output_dir(out_dir)
    report: dict = {"truth": str(truth), **({"aoi": str(aoi)} if aoi is not None else {})}
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
        confusion = score_raster(scored, truth, report["threshold"], aoi=aoi)
        report["metrics"] = confusion.metrics()
        report["thresholds"] = confusion.sweep()
        if out_dir is not None:
            tmp["metrics"].write_text(json.dumps(report, indent=2) + "\n")
    if out_dir is not None:
        report["plots"] = {k: str(v) for k, v in write_evaluation_plots(
            out_dir, confusion, prediction, truth, image, aoi).items()}
    return report


def suggest(model: Path | Sequence[Path] | None, image: Path, out: Path, dem: Path | None = None,
            n: int = 10, box: int = 512, labels: Sequence[Path] = (), spacing: int = 1,
            options: PredictOptions | None = None, overwrite: bool = False,
            progress: Progress | None = None) -> dict:
    """Write ``out``: the ``n`` boxes of ``image`` most worth labelling next, ranked, as polygons
    (``slidemap.infer.suggest``), skipping boxes that overlap the polygons of ``labels``."""
    from slidemap.infer.suggest import suggest_boxes, write_boxes

    if n < 1 or box < 1 or spacing < 0:
        raise SlidemapError("suggest needs --n >= 1, --box >= 1 px and --spacing >= 0")
    options = options or PredictOptions()
    predictor = load_predictor(model, options)
    models = [f for p in model_list(model) for f in model_paths(p)]
    inputs = [image, *([dem] if dem else []), *models, *(file_of(p) for p in labels)]
    check_outputs([out], inputs, overwrite)
    make_output_dir(out.parent)
    suggestion = suggest_boxes(predictor, image, dem, n, box, labels, spacing,
                               options.batch_size, progress)
    write_boxes(suggestion, out)
    return {"boxes": str(out), "candidates": suggestion.candidates,
            "skipped_labelled": suggestion.skipped_labelled,
            "picks": [{"rank": i + 1, "col_off": p.window.col_off, "row_off": p.window.row_off,
                       "score": p.score, "uncertainty": p.uncertainty}
                      for i, p in enumerate(suggestion.picks)]}


def new_site(image: Path, labels: Path, out_dir: Path, aoi: Path | None = None,
             dem: Path | None = None, init: Path | None = None, epochs: int = 10,
             overwrite: bool = False, progress: Progress | None = None) -> dict:
    """Train on the landslide polygons ``labels`` drawn over ``image`` (inside ``aoi`` if given)
    and map the whole scene: ``out_dir`` gets config.yaml, model.safetensors and map/
    (``slidemap.train.newsite``)."""
    from slidemap.train.loop import train
    from slidemap.train.newsite import site_config, write_site_config

    raw = site_config(image, labels, aoi, dem, init, epochs)
    map_dir = out_dir / "map"
    inputs = [file_of(p) for p in (image, labels, aoi, dem, init) if p is not None]
    check_outputs([out_dir / "config.yaml", out_dir / "model.safetensors",
                   *output_paths(image, map_dir).values()], inputs, overwrite)
    config = write_site_config(raw, out_dir)
    started = time.perf_counter()
    model_path = train(config, out_dir, overwrite=overwrite)
    trained = time.perf_counter()
    result = predict(image, map_dir, dem, model_path, overwrite=overwrite, progress=progress)
    return {"config": str(out_dir / "config.yaml"), "model": str(model_path), **result,
            "train_seconds": trained - started, "map_seconds": time.perf_counter() - trained}


def predict_patches(folder: Path, out_dir: Path, model: Path | Sequence[Path] | None = None,
                    options: PredictOptions | None = None, scale: float | None = None,
                    pixel_size: float | None = None, overwrite: bool = False,
                    progress: Progress | None = None) -> dict:
    """Probability and mask TIFFs per patch of a patch folder or Landslide4Sense split in
    ``out_dir``, and ``metrics.json`` (one confusion matrix) when the patches have labels."""
    options = options or PredictOptions()
    return predict_patch_set(load_predictor(model, options), folder, out_dir, options, scale,
                             pixel_size, overwrite, progress)


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
