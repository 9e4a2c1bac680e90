"""The run config of a new site from a scene and its landslide polygons, without writing YAML.

``slidemap newsite IMAGE LABELS`` trains on what an analyst drew (polygons, optionally an area of
interest) and maps the scene. The config it builds is the plain one below, written beside the
model as ``config.yaml`` so that the run can be read, edited and repeated with ``slidemap train``.
From scratch: a U-Net (width 16) on the image's RGB bands, with the default model's terrain
descriptors when a DEM is given, at 2 m (or the image's own pixels if coarser), Dice + BCE, the
last epoch kept (there is no held-out data to select on). With ``init``: the model file's
architecture, channels and resolution, its weights as the start, and its windows, overlap and
scales (``predict``), so that the site's map is made as the start's were (its threshold is not:
it was set for the start's own probabilities).
"""

from __future__ import annotations

from pathlib import Path

import yaml

from slidemap.data.names import DatasetName, absolute_name, dataset_stem, is_local
from slidemap.data.scene import Scene
from slidemap.errors import SlidemapError
from slidemap.io.atomic import atomic_path
from slidemap.io.modelfile import load_model
from slidemap.schema.values import LAYER_MARK

WORKING_M = 2.0  # working resolution of a model trained from scratch (if the image is finer)
TRAINING = {"batch_size": 8, "tile": 256, "windows_per_epoch": 64, "lr": 0.002,
            "min_valid": 0.25, "select": "last", "seed": 0, "colour_jitter": True}
# What a DEM adds, as in the default model (configs/jinsha-unet-terrain.yaml): relief, slope,
# curvature and roughness, not absolute elevation. The selection protocol scored these above
# elevation + slope on blocks of a scene the model trained beside (benchmarks/protocol/), which is
# what a new site's model does: it trains on the labelled part and maps the rest. Radii in metres
# at the 2 m working grid.
RELIEF_M = (8, 32, 128)
ROUGHNESS_M = 4


def terrain_inputs(working_m: float) -> dict:
    """The default model's terrain descriptors on a working grid of ``working_m`` metres (2 m or
    coarser): their radii keep their size in pixels, so that on a coarse grid the three relief
    radii do not round to one pixel radius and give one channel three times."""
    factor = max(working_m, WORKING_M) / WORKING_M
    return {"relief_m": [max(1, round(r * factor)) for r in RELIEF_M], "slope": True,
            "curvature": True, "roughness_m": max(1, round(ROUGHNESS_M * factor))}


def site_config(image: DatasetName, labels: Path, aoi: Path | None = None,
                dem: DatasetName | None = None, init: Path | None = None, epochs: int = 10
                ) -> dict:
    """The raw run config (as YAML would give it) of training on ``labels`` over ``image``
    (``image`` and ``dem``: any GDAL raster name)."""
    scene: dict = {"image": _absolute(image), "mask": _absolute(labels)}
    scene.update({k: _absolute(v) for k, v in (("aoi", aoi), ("dem", dem)) if v is not None})
    raw: dict = {"name": f"{dataset_stem(image)}-site", "data": {"train": [scene]},
                 "loss": {"bce": 1.0, "dice": 1.0},
                 "training": {"epochs": epochs, **TRAINING}}
    if init is not None:
        bundle = load_model(init)
        if bundle.members > 1:
            raise SlidemapError(f"--init {init} is an ensemble of {bundle.members} networks: "
                                "start from one of them")
        if bundle.inputs.needs_dem and dem is None:
            raise SlidemapError(f"--init {init} reads {bundle.inputs.channels}: pass --dem, or "
                                "start from an image-only model")
        if dem is not None and not bundle.inputs.needs_dem:
            raise SlidemapError(f"--init {init} reads the image alone ({bundle.inputs.channels})"
                                ", so the DEM would go unused: drop --dem, or leave out --init "
                                "to train a model that reads the terrain")
        spec = bundle.inputs.to_dict()
        # the weights file it loaded, absolute: a name without suffix is no file to resolve
        raw.update(init=_absolute(bundle.path or init),
                   inputs={k: v for k, v in spec.items() if v is not None},
                   model={"name": bundle.architecture, "width": bundle.width,
                          "options": dict(bundle.options)},
                   predict=bundle.predict.to_dict())
        raw["inputs"]["image_bands"] = list(bundle.inputs.image_bands)
        return raw
    with Scene(image) as opened:
        bands = [1, 2, 3] if opened.band_count >= 3 else [1]
        native = min(opened.pixel_size_m())
    inputs: dict = {"image_bands": bands,
                    **(terrain_inputs(native) if dem is not None else {})}
    if native < WORKING_M:
        inputs["resolution_m"] = WORKING_M
    raw.update(inputs=inputs, model={"name": "unet", "width": 16})
    return raw


def write_site_config(raw: dict, out_dir: Path) -> None:
    """Keep ``raw`` as ``out_dir/config.yaml``, so the run can be read and repeated."""
    with atomic_path(out_dir / "config.yaml") as tmp:
        tmp.write_text("# written by slidemap newsite; rerun with: slidemap train THIS_FILE\n"
                       + yaml.safe_dump(raw, sort_keys=False))


def _absolute(path: DatasetName) -> str:
    """A local file as an absolute path, so that ``slidemap train config.yaml`` finds it from any
    folder, a vector file's ``|layername=`` kept; a GDAL name as :func:`absolute_name` gives it
    (``/vsizip/d.zip/o.tif`` with its archive under the current folder, a URL as given); a
    missing file as given, for the error that names it."""
    if not is_local(path):
        return absolute_name(path)
    file, layer = str(path).partition(LAYER_MARK)[::2]
    if not Path(file).exists():
        return str(path)
    return str(Path(file).absolute()) + (LAYER_MARK + layer if layer else "")
