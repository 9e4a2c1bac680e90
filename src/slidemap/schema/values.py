"""Every list of allowed values and every range a config or a model file may hold, defined once.

The CLI, the runtime, the backends and the model-file checks import these instead of keeping
their own copies, so a new value is added in one place and shows up in the JSON Schema.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal, get_args

from slidemap.errors import SlidemapError

Precision = Literal["auto", "bf16", "fp32"]  # auto: bf16 where the CPU computes in it
PRECISIONS: tuple[str, ...] = get_args(Precision)

WeightsDtype = Literal["float32", "float16", "int8", "int4"]
WEIGHTS_DTYPES: tuple[str, ...] = get_args(WeightsDtype)

OpticalMode = Literal["raw", "chromaticity", "scene"]
OPTICAL_MODES: tuple[str, ...] = get_args(OpticalMode)

Backend = Literal["torch", "onnx"]  # where a network runs at prediction
BACKENDS: tuple[str, ...] = get_args(Backend)
Normalise = Literal["model", "scene"]  # whose band statistics normalise the inputs
NORMALISATIONS: tuple[str, ...] = get_args(Normalise)

Select = Literal["best", "last"]
SplitPart = Literal["train", "rest"]

# The architectures of ``slidemap.models`` and the losses of ``slidemap.train.losses``: the
# registries implement exactly these names (a test keeps them equal).
ModelName = Literal["unet", "a_unet", "d_unet", "da_unet", "resunet", "unetpp", "unetpp_spatial",
                    "unetpp_contextual", "unetpp_spatial_contextual", "fcn", "pspnet",
                    "deeplabv3plus", "segformer", "fusion"]
MODEL_NAMES: tuple[str, ...] = get_args(ModelName)
LossName = Literal["bce", "wbce", "wce", "focal", "dice", "lovasz", "ohem", "soft_ce"]
LOSS_NAMES: tuple[str, ...] = get_args(LossName)

MAX_SEED = 2**31 - 1
MIN_TRAIN_TILE, MAX_TRAIN_TILE = 16, 4096  # a window the encoder can halve a few times
MIN_TILE, MAX_TILE = 16, 8192  # prediction windows, working px
MAX_WIDTH = 256  # a network's base width; the shipped models use 16 to 32
SCALE_RANGE = (0.25, 4.0)  # prediction scales
MAX_PATCH_SCALE = 64.0  # inputs.scale: a model file holding more is refused as malformed
MAX_SCALES = 16

# Landslide4Sense: the 14 channels of a patch, in file order; slope and DEM are terrain.
BAND_NAMES = ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B9", "B10", "B11", "B12",
              "slope", "dem")
TERRAIN = ("slope", "dem")
DEFAULT_BANDS = ("B2", "B3", "B4", "B8", "slope", "dem")
# Sentinel-2's red, green and blue bands, which the colour jitter turns and greys as R, G, B
RGB_BANDS = ("B4", "B3", "B2")

# .zip: a zipped Shapefile, the way shapefiles travel; GDAL (and QGIS) read it in place
VECTOR_SUFFIXES = frozenset({".gpkg", ".geojson", ".json", ".shp", ".fgb", ".gml", ".kml",
                             ".sqlite", ".zip"})
LAYER_MARK = "|layername="


def band_indexes(bands: Sequence[str]) -> list[int]:
    """0-based channel indexes of band names (case-insensitive), in the order given."""
    lookup = {name.lower(): i for i, name in enumerate(BAND_NAMES)}
    indexes: list[int] = []
    for band in bands:
        key = str(band).lower()
        if key not in lookup:
            raise SlidemapError(
                f"unknown Landslide4Sense band {band!r}: choose from {', '.join(BAND_NAMES)}")
        if lookup[key] in indexes:
            raise SlidemapError(f"band {band!r} is selected twice: list each band once")
        indexes.append(lookup[key])
    if all(BAND_NAMES[i] in TERRAIN for i in indexes):
        raise SlidemapError(f"bands {list(bands)} have no optical band: add at least one of B1-B12")
    return indexes


def l4s_inputs(bands: Sequence[str]) -> dict[str, object]:
    """The input fields that Landslide4Sense band names stand for."""
    names = [BAND_NAMES[i] for i in band_indexes(bands)]
    return {"image_bands": tuple(BAND_NAMES.index(n) + 1 for n in names if n not in TERRAIN),
            "dem": "dem" in names, "slope": "slope" in names}


def file_of(path: str | Path) -> Path:
    """The file of a vector path (without a ``|layername=`` suffix) or of any other path."""
    return Path(str(path).split(LAYER_MARK)[0])


def is_vector(path: str | Path) -> bool:
    """Whether ``path`` names a vector file (by its suffix), optionally with a QGIS layer."""
    return file_of(path).suffix.lower() in VECTOR_SUFFIXES
