"""``slidemap newsite``: a scene and landslide polygons drawn over it → a model for the site
and the scene's landslide map (config from ``slidemap.train.newsite``)."""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from rich.progress import Progress

from slidemap.data.channels import InputSpec
from slidemap.data.dataset import fitting_tile
from slidemap.data.names import DatasetName, local_files
from slidemap.data.scene import Scene, earth_problem
from slidemap.errors import SlidemapError, SlidemapWarning
from slidemap.infer.predict import working_factor
from slidemap.io.atomic import check_outputs
from slidemap.schema.config import parse_config
from slidemap.schema.values import MIN_TRAIN_TILE, file_of
from slidemap.train.loop import RESTART, train
from slidemap.train.newsite import site_config, write_site_config
from slidemap.train.runfolder import run_lock
from slidemap.workflows.predict import PredictResult, output_paths, predict

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NewSiteResult:
    config: Path
    model: Path
    map: PredictResult
    train_seconds: float
    map_seconds: float


def check_site_inputs(image: DatasetName, labels: Path, aoi: Path | None,
                      dem: DatasetName | None) -> None:
    """Refuse what would fail or teach nothing before anything is written: unreadable or
    misplaced files (as training would read them), a scene that predict would refuse to map
    (a local CRS: else it trains for the whole run first), and a label file without a polygon
    on the image (inside the AOI): no landslide to learn from. Warnings wait for training,
    which opens the same files: said once, not twice or beside the error."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SlidemapWarning)
        with Scene(image) as bare:  # before the labels, which cannot be taken into such a CRS
            problem = earth_problem(bare.profile["crs"], image)
        if problem:
            raise SlidemapError(problem)
        scene = Scene(image, dem=dem, mask=labels, aoi=aoi)
    with scene:
        if scene.label_polygons == 0:
            raise SlidemapError(f"label file {labels} holds no polygon: newsite learns "
                                "landslides from the polygons drawn over the scene; draw some")
        if scene.labels_landslides is False:
            where = f"inside the area of interest {aoi}" if aoi is not None else "on the image"
            raise SlidemapError(f"no polygon of label file {labels} lies {where}: the model "
                                "would learn that the scene has no landslides; draw the "
                                "landslides there, or check that the files are of this ground")


def check_mappable(spec: InputSpec, image: DatasetName, dem: DatasetName | None) -> None:
    """Refuse, before training, a scene that the model this run trains could not map (smaller
    than one window at its working resolution): the whole run trained, wrote its model, and
    the map at the end was refused as too small."""
    with warnings.catch_warnings():  # said by training, which opens the same files
        warnings.simplefilter("ignore", SlidemapWarning)
        with Scene(image, dem=dem) as scene:
            working_factor(scene, spec, image)


def fit_tile(raw: dict, image: DatasetName, labels: Path, aoi: Path | None) -> None:
    """Shrink ``raw``'s training tile to the labelled ground: one box drawn in QGIS fits no
    window of the default tile with enough of it labelled, and training failed pointing to
    settings (training.tile) that newsite has no option for. The tile kept is written to
    config.yaml, so that ``slidemap train`` repeats the run."""
    config = parse_config(raw)
    largest, min_valid = config.train.tile, config.train.min_valid
    with warnings.catch_warnings():  # said by training, which opens the same files
        warnings.simplefilter("ignore", SlidemapWarning)
        tile = fitting_tile(image, labels, aoi, config.inputs, largest, min_valid)
    if tile is None:
        where = f"the area of interest {aoi}" if aoi is not None else f"the valid part of {image}"
        raise SlidemapError(f"{where} holds no window of {MIN_TRAIN_TILE} working px with "
                            f"{min_valid:.0%} of its pixels labelled: too little ground to "
                            "train on; label a larger area")
    if tile < largest:
        log.info(f"training windows of {tile} px (not {largest}), to fit the labelled ground")
        raw["training"]["tile"] = tile


def new_site(image: DatasetName, labels: Path, out_dir: Path, aoi: Path | None = None,
             dem: DatasetName | None = None, init: Path | None = None, epochs: int = 10,
             overwrite: bool = False, progress: Progress | None = None) -> NewSiteResult:
    """Train on the polygons ``labels`` drawn over ``image`` (inside ``aoi`` if given) and map
    the whole scene: ``out_dir`` gets config.yaml, model.safetensors and map/. ``image`` and
    ``dem`` may be any GDAL raster name; only local files are checked against the outputs."""
    raw = site_config(image, labels, aoi, dem, init, epochs)
    map_dir = out_dir / "map"
    inputs = [file_of(p) for p in local_files(image, labels, aoi, dem, init)]
    check_outputs([out_dir / "config.yaml", out_dir / "model.safetensors",
                   *output_paths(image, map_dir).values()], inputs, overwrite)
    check_site_inputs(image, labels, aoi, dem)
    check_mappable(parse_config(raw).inputs, image, dem)
    fit_tile(raw, image, labels, aoi)
    config = parse_config(raw, out_dir / "config.yaml")
    started = time.perf_counter()
    with run_lock(out_dir):  # one run at a time in the folder, as train and finetune
        model_path = train(config, out_dir, overwrite=overwrite, how_to_go_on=RESTART)
        write_site_config(raw, out_dir)  # beside the model it made, once there is one
    trained = time.perf_counter()
    mapped = predict(image, map_dir, dem, model_path, overwrite=overwrite, progress=progress)
    return NewSiteResult(out_dir / "config.yaml", model_path, mapped, trained - started,
                         time.perf_counter() - trained)
