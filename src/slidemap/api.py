"""The Python API: what the CLI does, callable from a notebook or a script."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import rasterio
from rich.progress import Progress

from slidemap.errors import SlidemapError, UsageError
from slidemap.extras import require
from slidemap.infer.budget import MemoryBudget
from slidemap.infer.ensemble import Predictor
from slidemap.infer.evaluate import score_raster
from slidemap.infer.patches import predict_patch_set
from slidemap.infer.predict import PredictOptions, build_predictor, predict_scene
from slidemap.infer.suggest import suggest_boxes, write_boxes
from slidemap.infer.vectorize import (
    inventory_defaults,
    inventory_paths,
    slide_batches,
    write_inventories,
)
from slidemap.io.atomic import atomic_path, check_outputs, make_output_dir, resolved, staged
from slidemap.io.modelfile import check_weights_dtype, load_model, model_paths, save_model
from slidemap.io.names import DatasetName, dataset_stem, local_files, local_path
from slidemap.io.provenance import provenance, recorded_threshold
from slidemap.io.rasters import PROB_STEPS, RasterFormat
from slidemap.io.stac import is_stac_item, output_item, read_item, write_item
from slidemap.io.styles import write_qml
from slidemap.report.plots import EVALUATION_PLOTS, write_evaluation_plots
from slidemap.schema.values import file_of, is_vector
from slidemap.train.finetune import run_lock
from slidemap.train.loop import train
from slidemap.train.newsite import site_config, write_site_config

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


def output_paths(image: DatasetName, out_dir: str | Path, formats: Sequence[str] = ("gpkg",)
                 ) -> dict[str, Path]:
    """The files of a prediction, named after ``image`` (the member's stem for a ``/vsizip/``
    name, ``file_subdataset`` for a subdataset)."""
    out_dir = Path(out_dir)
    stem = dataset_stem(image)
    return {"prob": out_dir / f"{stem}_prob.tif", "mask": out_dir / f"{stem}_mask.tif",
            "mask_aux": out_dir / f"{stem}_mask.tif.aux.xml",
            **inventory_paths(out_dir, stem, formats),
            "style": out_dir / f"{stem}_landslides.qml", "stac": out_dir / f"{stem}_item.json"}


def model_list(models: str | Path | Sequence[str | Path] | None, dem: bool = True
               ) -> list[Path]:
    """The model files asked for, or the shipped model (the RGB-only one when ``dem`` is
    false: no DEM to read)."""
    if models is None or (not isinstance(models, str | Path) and not models):
        return [default_model_path(dem)]
    return [Path(models)] if isinstance(models, str | Path) else [Path(m) for m in models]


def model_files(models: str | Path | Sequence[str | Path] | None, dem: bool = True
                ) -> list[Path]:
    """Every file the model files asked for consist of (weights and sidecars): inputs that no
    output may replace."""
    return [file for path in model_list(models, dem) for file in model_paths(path)]


def files_under(folder: Path, out_dir: Path) -> list[Path]:
    """The files of an input ``folder`` when ``out_dir`` lies inside it (where an output could
    replace one of them); none otherwise."""
    folder, out = resolved(folder), resolved(out_dir)
    if out != folder and folder not in out.parents:
        return []
    return [p for p in folder.rglob("*") if p.is_file()]


def has_elevation(image: DatasetName, dem: DatasetName | None) -> bool:
    """Whether ``image`` comes with elevation: a DEM given, or a folder that is not a plain
    RGB patch set (``dem/`` beside ``images/``, Bijie's layout, Landslide4Sense bands)."""
    if dem is not None:
        return True
    folder = local_path(image)
    return folder is not None and folder.is_dir() and not (
        (folder / "images").is_dir() and not (folder / "dem").is_dir())


def load_predictor(models: str | Path | Sequence[str | Path] | None,
                   options: PredictOptions) -> Predictor:
    """The shipped model, one model file, or an ensemble of several (probabilities averaged)."""
    return build_predictor(model_list(models), options)


def predict(image: DatasetName, out_dir: str | Path, dem: DatasetName | None = None,
            model: str | Path | Sequence[str | Path] | None = None,
            options: PredictOptions | None = None, min_area_m2: float | None = None,
            simplify_m: float | None = None, overwrite: bool = False,
            progress: Progress | None = None, formats: Sequence[str] = ("gpkg",),
            prob_dtype: str = "float32") -> dict:
    """Map landslides in ``image`` (any GDAL dataset name, or a STAC Item JSON whose image and
    DEM assets are read): probability and mask COGs, inventory (in each of ``formats``: gpkg,
    geojson) with its QGIS style, and a STAC Item of them in ``out_dir``.

    ``min_area_m2`` and ``simplify_m`` left None are set from the model's working pixel
    (``slidemap.infer.vectorize.inventory_defaults``); ``prob_dtype`` uint8 stores the
    probability in steps of 1/254 (a quarter of float32's bytes before compression).
    """
    options = options or PredictOptions()
    out_dir = Path(out_dir)
    source = read_item(Path(image)) if is_stac_item(image) else None
    if source is not None:
        image, dem = source.image, dem if dem is not None else source.dem
    paths = output_paths(image, out_dir, formats)
    elevation = has_elevation(image, dem)
    check_outputs(list(paths.values()),
                  [*local_files(image, dem, source and source.source),
                   *model_files(model, elevation)], overwrite)
    predictor = build_predictor(model_list(model, elevation), options)
    tags = provenance(predictor.paths, predictor.threshold,
                      {"image": image, "dem": dem, "stac_item": source and source.source})
    fmt = RasterFormat(prob_dtype, tags)
    make_output_dir(out_dir)
    # All files appear together, or none does; without --overwrite, a run into the same
    # folder that published first wins and this one fails.
    with staged(paths, overwrite) as tmp:
        counts = predict_scene(predictor, image, dem, tmp["prob"], tmp["mask"], options,
                               progress, replace(fmt, mask_aux=tmp["mask_aux"]))
        default_area, default_simplify = inventory_defaults(counts["working_pixel_m"])
        min_area_m2 = default_area if min_area_m2 is None else min_area_m2
        simplify_m = default_simplify if simplify_m is None else simplify_m
        batches = slide_batches(tmp["mask"], tmp["prob"], min_area_m2, simplify_m, dem=dem,
                                budget=MemoryBudget.of(options.memory_mb))
        layer_tags = {k: v for k, v in tags.items() if k.startswith("SLIDEMAP_")}
        inventory = write_inventories(
            batches, [tmp[k] for k in paths if k.startswith("inventory")], layer_tags)
        write_qml(tmp["style"])
        described = {k: (paths[k], tmp[k]) for k in paths if k not in ("stac", "mask_aux")}
        with rasterio.open(tmp["prob"]) as ds:
            grid = ds.profile
        item = output_item(dataset_stem(image), described, grid,
                           None if prob_dtype == "float32" else 1.0 / PROB_STEPS, tags, source)
        write_item(item, tmp["stac"])
    return {**{k: str(v) for k, v in paths.items()}, **counts, **inventory,
            "min_area_m2": min_area_m2, "simplify_m": simplify_m}


def evaluate(truth: DatasetName, prediction: DatasetName | None = None,
             image: DatasetName | None = None, dem: DatasetName | None = None,
             model: str | Path | Sequence[str | Path] | None = None,
             out_dir: str | Path | None = None,
             threshold: float | None = None, options: PredictOptions | None = None,
             overwrite: bool = False, progress: Progress | None = None,
             aoi: Path | None = None) -> dict:
    """Metrics of a prediction raster, or of a model run on ``image``, against ``truth`` (a
    label raster or landslide polygons), within the polygons of ``aoi`` if given."""
    if (prediction is None) == (image is None):
        raise UsageError("evaluate needs either --prediction RASTER or --image IMAGE "
                         "(with --model) to score")
    if image is not None and out_dir is None:
        raise UsageError("evaluating a model needs --out DIR for its predicted rasters")
    options = options or PredictOptions()
    out_dir = Path(out_dir) if out_dir is not None else None
    if threshold is not None:  # the written mask and the scores use the same threshold
        options = replace(options, threshold=threshold)
    predictor = None if image is None else build_predictor(
        model_list(model, has_elevation(image, dem)), options)
    outputs: dict[str, Path] = {}
    if image is not None and out_dir is not None:
        paths = output_paths(image, out_dir)
        outputs = {k: paths[k] for k in ("prob", "mask", "mask_aux")}
    if out_dir is not None:
        outputs["metrics"] = out_dir / "metrics.json"
        plots = [out_dir / name for name in EVALUATION_PLOTS]
        check_outputs([*outputs.values(), *plots],
                      [*local_files(truth, prediction, image, dem),
                       *[file_of(p) for p in (truth, aoi) if p is not None and is_vector(p)],
                       *(model_files(model, has_elevation(image, dem))
                         if image is not None else [])], overwrite)
        make_output_dir(out_dir)
    report: dict = {"truth": str(truth), **({"aoi": str(aoi)} if aoi is not None else {})}
    # Rasters and metrics appear together, or none does.
    with staged(outputs, overwrite) as tmp:
        scored = prediction
        if predictor is not None and image is not None:
            tags = provenance(predictor.paths, predictor.threshold, {"image": image, "dem": dem})
            predict_scene(predictor, image, dem, tmp["prob"], tmp["mask"], options, progress,
                          RasterFormat(tags=tags, mask_aux=tmp["mask_aux"]))
            scored, prediction = tmp["prob"], outputs["prob"]
            threshold = predictor.threshold if threshold is None else threshold
            report["model"] = [str(p) for p in predictor.paths]
        assert scored is not None and prediction is not None
        report["prediction"] = str(prediction)
        if threshold is None:  # the threshold the prediction's own mask was drawn at
            threshold = recorded_threshold(prediction) or 0.5
        report["threshold"] = threshold
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
    if n < 1 or box < 1 or spacing < 0:
        raise SlidemapError("suggest needs --n >= 1, --box >= 1 px and --spacing >= 0")
    options = options or PredictOptions()
    predictor = load_predictor(model, options)
    inputs = [image, *([dem] if dem else []), *model_files(model),
              *(file_of(p) for p in labels)]
    check_outputs([out], inputs, overwrite)
    make_output_dir(out.parent)
    suggestion = suggest_boxes(predictor, image, dem, n, box, labels, spacing,
                               options.batch_size, progress)
    write_boxes(suggestion, out, overwrite)
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
    raw = site_config(image, labels, aoi, dem, init, epochs)
    map_dir = out_dir / "map"
    inputs = [file_of(p) for p in (image, labels, aoi, dem, init) if p is not None]
    check_outputs([out_dir / "config.yaml", out_dir / "model.safetensors",
                   *output_paths(image, map_dir).values()], inputs, overwrite)
    config = write_site_config(raw, out_dir)
    started = time.perf_counter()
    with run_lock(out_dir):  # one run at a time in the folder, as train and finetune
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
    elevation = has_elevation(folder, None)
    inputs = [*model_files(model, elevation), *files_under(folder, out_dir)]
    return predict_patch_set(build_predictor(model_list(model, elevation), options), folder,
                             out_dir, options, scale, pixel_size, overwrite, progress, inputs)


def export_onnx(model: Path, out: Path | None = None, overwrite: bool = False) -> dict:
    """Export ``model`` to ONNX at ``out`` (default: NAME.onnx beside it); what was written."""
    for module in ("onnx", "onnxruntime"):
        require(module, "onnx", "exporting to ONNX")
    from slidemap.io import onnxfile

    bundle = load_model(model)
    target = out or onnxfile.onnx_path_for(model)
    check_outputs([target], list(model_paths(model)), overwrite)
    make_output_dir(target.parent)
    onnxfile.export_onnx(bundle, target, overwrite)
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
    written = save_model(replace(bundle, weights_dtype=weights_dtype), out, overwrite)
    return {"model": str(written), "weights_dtype": weights_dtype,
            "bytes": written.stat().st_size, "bytes_before": inputs[0].stat().st_size}


def bench(image: Path, dem: Path | None = None, model: Path | Sequence[Path] | None = None,
          options: PredictOptions | None = None, sample: int = 32,
          agreement: bool = False, json_out: Path | None = None,
          overwrite: bool = False) -> dict:
    """Model-only against end-to-end throughput of mapping ``image``, and peak RSS
    (``slidemap.infer.bench``); with ``agreement``, how close the map is to torch fp32. The
    figures also go to ``json_out`` if given (checked before the run, like every output)."""
    from slidemap.infer.bench import bench_scene

    if json_out is not None:
        check_outputs([json_out], [image, dem, *model_files(model)], overwrite, "--json")
    result = bench_scene(image, dem, model_list(model), options or PredictOptions(), sample,
                         agreement)
    if json_out is not None:
        make_output_dir(json_out.parent)
        with atomic_path(json_out, overwrite) as tmp:
            tmp.write_text(json.dumps(result, indent=2) + "\n")
    return result
