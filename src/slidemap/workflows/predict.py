"""``slidemap predict`` on a scene: probability and mask COGs, the inventory with its QGIS
style, and a STAC Item of them, published together or not at all."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import rasterio
from rich.progress import Progress

from slidemap.data.names import DatasetName, dataset_stem, local_files
from slidemap.errors import UsageError
from slidemap.infer.budget import MemoryBudget
from slidemap.infer.options import PredictOptions
from slidemap.infer.predict import (
    build_predictor,
    predict_scene,
    prediction_settings,
    predictor_of,
)
from slidemap.infer.vectorize import (
    INVENTORY_FORMATS,
    inventory_defaults,
    inventory_paths,
    slide_batches,
    write_inventories,
)
from slidemap.io.atomic import check_outputs, output_folder, staged
from slidemap.io.modelfile import output_model_paths, save_model
from slidemap.io.provenance import provenance
from slidemap.io.rasters import DEFAULT_PROB_DTYPE, PROB_STEPS, RasterFormat
from slidemap.io.stac import (
    is_stac_item,
    listed_outputs,
    output_item,
    read_item,
    write_item,
)
from slidemap.io.styles import write_qml, write_raster_styles
from slidemap.report.html import build_report
from slidemap.train.adapt import AdaptOptions, adapt_to_scene, adaptation_tags
from slidemap.workflows.inputs import ModelArg, has_elevation, is_found, model_files, model_list
from slidemap.workflows.report import check_report, stale_report

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class PredictResult:
    """The files of one scene's prediction and what they hold."""

    files: Mapping[str, Path]  # prob, mask, mask_aux, prob_style, mask_style,
    #                            inventory[_FORMAT], style, stac
    valid_pixels: int
    landslide_pixels: int
    windows: int  # model windows predicted
    working_pixel_m: float  # the model's pixel on this scene: the inventory's defaults
    landslides: int
    landslide_area_m2: float
    min_area_m2: float
    simplify_m: float
    report: Path | None = None
    adapted: Mapping[str, Any] | None = None  # how the model was adapted to the scene
    adapted_model: Path | None = None  # the adapted model, when asked to save it

    @property
    def prob(self) -> Path:
        return self.files["prob"]

    @property
    def mask(self) -> Path:
        return self.files["mask"]

    @property
    def inventory(self) -> Path:
        """The inventory in the first format asked for."""
        return self.files["inventory"]

    @property
    def style(self) -> Path:
        return self.files["style"]

    @property
    def stac(self) -> Path:
        return self.files["stac"]


def output_paths(image: DatasetName, out_dir: Path, formats: Sequence[str] = ("gpkg",)
                 ) -> dict[str, Path]:
    """The files of a prediction, named after ``image`` (the member's stem for a ``/vsizip/``
    name, ``file_subdataset`` for a subdataset)."""
    stem = dataset_stem(image)
    return {"prob": out_dir / f"{stem}_prob.tif", "mask": out_dir / f"{stem}_mask.tif",
            "mask_aux": out_dir / f"{stem}_mask.tif.aux.xml",
            # QGIS's default styles of the rasters: the name without .tif, .qml
            "prob_style": out_dir / f"{stem}_prob.qml",
            "mask_style": out_dir / f"{stem}_mask.qml",
            **inventory_paths(out_dir, stem, formats),
            "style": out_dir / f"{stem}_landslides.qml", "stac": out_dir / f"{stem}_item.json"}


def replaced_paths(image: DatasetName, out_dir: Path, written: Iterable[Path]) -> list[Path]:
    """The files of an earlier prediction of ``image`` in ``out_dir`` that a run writing
    ``written`` leaves out (another inventory format; beside the rasters that ``evaluate``
    writes, the inventory, style and Item): they no longer describe the new rasters, so they are
    outputs to replace (``--overwrite``) by removing them when the new set appears. Only the
    earlier run's Item of the scene's rasters, and the files it lists, are such outputs: a file
    that merely bears one of their names (a truth ``<stem>_landslides.geojson`` beside the
    scene, a catalogue's ``<stem>_item.json``) is the user's, left alone."""
    paths = output_paths(image, out_dir, tuple(INVENTORY_FORMATS))
    earlier = listed_outputs(paths["stac"])
    if paths["prob"] not in earlier:
        return []
    kept = set(written)
    return [path for path in paths.values()
            if path not in kept and (path in earlier or path == paths["stac"])]


def predict(image: DatasetName, out_dir: Path, dem: DatasetName | None = None,
            model: ModelArg = None, options: PredictOptions | None = None,
            min_area_m2: float | None = None, simplify_m: float | None = None,
            overwrite: bool = False, progress: Progress | None = None,
            formats: Sequence[str] = ("gpkg",), prob_dtype: str = DEFAULT_PROB_DTYPE,
            html_report: bool = False, adapt: AdaptOptions | None = None) -> PredictResult:
    """Map landslides in ``image`` (any GDAL dataset name, or a STAC Item JSON whose image and
    DEM assets are read) into ``out_dir``.

    ``min_area_m2`` and ``simplify_m`` left None are set from the model's working pixel
    (``slidemap.infer.vectorize.inventory_defaults``); ``prob_dtype`` uint8 (the default)
    stores the probability in steps of 1/254, float32 as computed.
    ``adapt``: map with a copy of the model first fine-tuned on the scene's own confident
    pixels (``slidemap.train.adapt``), saved to ``adapt.save`` if given.
    """
    for flag, value in (("--min-area", min_area_m2), ("--simplify", simplify_m)):
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise UsageError(f"{flag} {value} is not a size: give metres (m² for --min-area), "
                             "0 or more")
    if html_report:
        check_report(out_dir, overwrite)
    options = options or PredictOptions()
    source = read_item(Path(image)) if is_stac_item(image) else None
    stac_item = None
    if source is not None:
        image, dem, stac_item = source.image, dem if dem is not None else source.dem, source.source
    paths = output_paths(image, out_dir, formats)
    elevation = has_elevation(image, dem)
    models = model_list(model, elevation)
    if not model and not elevation and is_found(image):
        log.info(f"no --dem: mapping with the RGB-only model {models[0].stem} (models/README.md)")
    inputs = [*local_files(image, dem, stac_item), *model_files(model, elevation)]
    retired = replaced_paths(image, out_dir, paths.values())
    retired += stale_report(out_dir, [*paths.values(), *retired])
    check_outputs([*paths.values(), *retired], inputs, overwrite)
    if adapt is not None and adapt.save is not None:
        check_outputs(output_model_paths(adapt.save, "--adapt-save"),
                      [*inputs, *paths.values()], overwrite, "--adapt-save")
    adapted = None
    if adapt is not None:
        _check_adaptable(models, options)
        adapted = adapt_to_scene(models[0], image, dem, adapt, options, progress)
    predictor = build_predictor(models, options) if adapted is None else \
        predictor_of([adapted.bundle], options)
    tags = provenance(models, predictor.threshold,
                      {"image": image, "dem": dem, "stac_item": stac_item},
                      prediction_settings(predictor, options))
    if adapted is not None:
        tags |= adaptation_tags(adapted.record)
    fmt = RasterFormat(prob_dtype, tags)
    # All files appear together, or none does; without --overwrite, a run into the same
    # folder that published first wins and this one fails.
    with output_folder(out_dir), staged(paths, overwrite, retire=retired) as tmp:
        counts = predict_scene(predictor, image, dem, tmp["prob"], tmp["mask"], options,
                               progress, replace(fmt, mask_aux=tmp["mask_aux"]))
        default_area, default_simplify = inventory_defaults(counts["working_pixel_m"])
        min_area_m2 = default_area if min_area_m2 is None else min_area_m2
        simplify_m = default_simplify if simplify_m is None else simplify_m
        batches = slide_batches(tmp["mask"], tmp["prob"], min_area_m2, simplify_m, dem=dem,
                                budget=MemoryBudget.of(options.memory_mb))
        # what the inventory depends on besides the mask: its defaults follow the working pixel
        tags = {**tags, "SLIDEMAP_INVENTORY": f"min_area_m2={min_area_m2:g} "
                                              f"simplify_m={simplify_m:g}"}
        layer_tags = {k: v for k, v in tags.items() if k.startswith("SLIDEMAP_")}
        inventory = write_inventories(
            batches, [tmp[k] for k in paths if k.startswith("inventory")], layer_tags)
        write_qml(tmp["style"])
        write_raster_styles(tmp["prob_style"], tmp["mask_style"])
        described = {k: (paths[k], tmp[k]) for k in paths if k not in ("stac", "mask_aux")}
        with rasterio.open(tmp["prob"]) as ds:
            grid = ds.profile
        item = output_item(dataset_stem(image), described, grid,
                           None if prob_dtype == "float32" else 1.0 / PROB_STEPS, tags, source)
        write_item(item, tmp["stac"])
    adapted_model = None
    if adapted is not None and adapt is not None and adapt.save is not None:
        # float32: the weights that made the map, not the source file's rounded storage
        adapted_model = save_model(replace(adapted.bundle, weights_dtype="float32"), adapt.save,
                                   overwrite)
    report = build_report(out_dir, overwrite=overwrite) if html_report else None
    return PredictResult(
        paths, int(counts["valid_pixels"]), int(counts["landslide_pixels"]),
        int(counts["windows"]), float(counts["working_pixel_m"]), int(inventory["landslides"]),
        float(inventory["landslide_area_m2"]), min_area_m2, simplify_m, report,
        adapted.record if adapted is not None else None, adapted_model)


def _check_adaptable(models: Sequence[Path], options: PredictOptions) -> None:
    """``--adapt`` fine-tunes one network held in memory, read with the model's statistics."""
    if len(models) > 1:
        raise UsageError("--adapt fine-tunes one network: pass one --model, not an ensemble")
    if options.workers or options.scheduler:
        raise UsageError("--adapt maps with a model held in memory, which Dask workers "
                         "cannot load: drop --workers/--dask")
    if options.normalise == "scene":
        raise UsageError("--adapt trains with the model's statistics: drop --normalise scene")
