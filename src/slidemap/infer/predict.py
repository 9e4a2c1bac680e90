"""Streaming prediction of a whole scene into georeferenced probability and mask GeoTIFFs.

Windows are read, predicted in batches and blended row of windows by row of windows; as soon as
no later window can touch a band of rows, that band is written out and dropped. Memory is bounded
by a few rows of windows, whatever the scene size (the engine: ``slidemap.infer.stream``; rows of
windows on Dask workers: ``slidemap.infer.distributed``).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

from rich.progress import Progress

from slidemap.data.channels import InputSpec
from slidemap.data.names import DatasetName, display_name
from slidemap.data.scene import Scene, earth_problem
from slidemap.errors import SlidemapError, SlidemapWarning
from slidemap.infer.budget import MemoryBudget
from slidemap.infer.distributed import band_source
from slidemap.infer.domain import scene_warnings
from slidemap.infer.ensemble import Predictor
from slidemap.infer.options import PredictOptions
from slidemap.infer.separated import scene_stats
from slidemap.infer.stream import (
    Grid,
    bounded_gdal_cache,
    check_terrain_halo,
    plan_blocks,
    write_bands,
)
from slidemap.io.modelfile import ModelBundle, load_model
from slidemap.io.rasters import BLOCK_SIDE, RasterFormat, RasterOutputs

MIN_WORKING_SIZE = 32


def build_predictor(models: Sequence[Path], options: PredictOptions) -> Predictor:
    """The model files as one predictor (an ensemble if several), run as ``options`` say."""
    return predictor_of([load_model(p) for p in models], options)


def predictor_of(bundles: list[ModelBundle], options: PredictOptions) -> Predictor:
    """Loaded (or adapted, in-memory) models as one predictor, run as ``options`` say."""
    return Predictor(bundles, options.tta, options.precision, options.backend, options.compile,
                     options.scales, options.threshold)


def prediction_settings(predictor: Predictor, options: PredictOptions) -> dict[str, str]:
    """What a scene's map depends on besides its model file, inputs and threshold, as resolved
    (the model's own windows and scales included), for the outputs' provenance: a map made
    through the API has no command line that shows them, and a rerun with the defaults would
    make another map."""
    resolved = options.resolve(predictor.defaults)
    return {"tile": str(resolved.tile), "overlap": str(resolved.overlap),
            "scales": ",".join(f"{s:g}" for s in predictor.scales),
            "tta": "yes" if predictor.tta else "no", "normalise": options.normalise,
            "precision": predictor.precision, "backend": options.backend}


def working_factor(scene: Scene, spec: InputSpec, image: DatasetName) -> int:
    """Image pixels per working pixel of the model on ``scene``, once the scene is found to
    have what the model reads (its bands, a DEM if it needs one) and room for one window of
    ``MIN_WORKING_SIZE`` working pixels: every command that reads the scene asks it first."""
    scene.check_bands(spec.image_bands, "the model")
    if spec.needs_dem and not scene.has_dem:
        raise SlidemapError(f"the model needs a DEM (channels {spec.channels}) for {image}: "
                            "pass one with --dem")
    factor = scene.decimation(spec.resolution_m)
    if min(scene.height, scene.width) < MIN_WORKING_SIZE * factor:
        raise SlidemapError(
            f"image {image} is {scene.width} × {scene.height} px, too small for this model: it "
            f"needs at least {MIN_WORKING_SIZE * factor} px a side")
    return factor


def predict_scene(predictor: Predictor, image: DatasetName, dem: DatasetName | None,
                  prob_path: Path, mask_path: Path, options: PredictOptions,
                  progress: Progress | None = None, fmt: RasterFormat | None = None
                  ) -> dict[str, float]:
    """Write ``prob_path`` (uint8 255 nodata, or float32 NaN nodata, as ``fmt`` says) and
    ``mask_path`` (uint8, 255 nodata), Cloud-Optimised GeoTIFFs.

    Returns a few counts (valid pixels, landslide pixels) for the caller's summary, and the
    model's working pixel size in metres (``working_pixel_m``: the inventory's defaults).
    """
    spec = predictor.spec
    options = options.resolve(predictor.defaults)
    assert options.tile is not None and options.overlap is not None  # resolved
    budget = MemoryBudget.of(options.memory_mb)
    with Scene(image, dem=dem) as scene:
        problem = earth_problem(scene.profile["crs"], image)
        if problem:  # before the model runs: the inventory and the STAC Item need longitudes
            raise SlidemapError(problem)
        factor = working_factor(scene, spec, image)
        budget.check_outputs(str(image), scene.height, scene.width, BLOCK_SIDE, outputs=2)
        grid = plan_blocks(Grid.of(scene.height, scene.width, options.tile, options.overlap,
                                   factor, flips=scene.flips), len(spec.channels), budget)
        check_terrain_halo(scene, spec, factor, (grid.band_rows, grid.window_width), budget)
        scene_normalised = options.normalise == "scene"
        if scene_normalised:
            predictor = predictor.with_stats(scene_stats(scene, spec, factor))
        predictor = predictor.facing(scene.flips)  # the networks see north up
        for message in scene_warnings(scene, spec, predictor.stats, scene_normalised):
            warnings.warn(message, SlidemapWarning, stacklevel=2)
        task = progress.add_task(f"predict {display_name(image)}", total=grid.window_count) \
            if progress else None
        with bounded_gdal_cache(grid), RasterOutputs(scene.profile, prob_path,
                                                     mask_path, fmt) as outputs:
            bands = band_source(predictor, options, image, dem, grid)
            counts: dict[str, float] = {**write_bands(
                bands, grid, outputs, image, dem, spec.needs_dem, predictor.threshold, progress,
                task)}
            counts["working_pixel_m"] = factor * min(scene.pixel_size_m())
            if counts["valid_pixels"] == 0:
                raise SlidemapError(scene.dem_void() or f"image {image} has no valid pixel "
                                    "(all nodata): check its nodata value and the DEM "
                                    "coverage")
    return counts

