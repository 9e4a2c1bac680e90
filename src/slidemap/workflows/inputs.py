"""What a command reads besides its data: the model files asked for, or the shipped ones.

Every workflow that maps or scores with a model chooses it here, so ``predict``, ``evaluate``,
``suggest`` and ``bench`` pick the same default on the same inputs, and every file that a model
consists of is an input that no output may replace.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from slidemap.data.names import DatasetName, local_path
from slidemap.errors import SlidemapError
from slidemap.io.modelfile import INSTALLED_MODELS, MODELS_DIR, model_paths, weights_file

PACKAGE_ROOT = Path(__file__).resolve().parents[3]
# The shipped models' folder is defined where models are read (slidemap.io.modelfile), which
# resolves a shipped model's bare name for every command.
DEFAULT_MODEL = MODELS_DIR / "slidemap-jinsha-unet-terrain.safetensors"
# Read without a DEM: the shipped RGB-only model, trained on four sites (models/README.md).
RGB_MODEL = MODELS_DIR / "slidemap-rgb-sites.safetensors"
# Patch sets with elevation: the default's relief, curvature and roughness need georeferenced
# scenes, so patches get the U-Net on RGB + DEM + slope, which patches can give.
PATCH_MODEL = MODELS_DIR / "slidemap-jinsha-unet.safetensors"

ModelArg = str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None


def default_model_path(dem: bool = True, patches: bool = False) -> Path:
    """The shipped model for the inputs at hand: RGB + DEM (a scene, or a patch set), or RGB
    only without a DEM."""
    path = (PATCH_MODEL if patches else DEFAULT_MODEL) if dem else RGB_MODEL
    if not path.exists():
        raise SlidemapError(f"the shipped model {path} is missing: pass --model PATH")
    return path


def is_installed_model(path: Path) -> bool:
    """Whether ``path`` is a model shipped inside an installed slidemap: its folder belongs to
    the installation (site-packages), which an upgrade replaces and a user may not write, so
    outputs that would go beside it go elsewhere."""
    return weights_file(path).resolve().parent == INSTALLED_MODELS


def model_list(models: ModelArg, dem: bool = True, patches: bool = False) -> list[Path]:
    """The weights files of the models asked for (each named as ``NAME.safetensors``,
    ``NAME.json``, ``NAME`` or a shipped model's bare name: outputs record and hash the
    weights), or the shipped model (the RGB-only one when ``dem`` is false: no DEM to read; for
    ``patches``, one that reads patch sets)."""
    if models is None or (not isinstance(models, str | os.PathLike) and not models):
        return [default_model_path(dem, patches)]
    if isinstance(models, str | os.PathLike):
        return [weights_file(models)]
    return [weights_file(m) for m in models]


def model_files(models: ModelArg, dem: bool = True, patches: bool = False) -> list[Path]:
    """Every file the model files asked for consist of (weights and sidecars): inputs that no
    output may replace."""
    return [file for path in model_list(models, dem, patches) for file in model_paths(path)]


def has_elevation(image: DatasetName, dem: DatasetName | None) -> bool:
    """Whether ``image`` comes with elevation: a DEM given, or a folder that is not a plain
    RGB patch set (``dem/`` beside ``images/``, Bijie's layout, Landslide4Sense bands)."""
    if dem is not None:
        return True
    folder = local_path(image)
    return folder is not None and folder.is_dir() and not (
        (folder / "images").is_dir() and not (folder / "dem").is_dir())


def is_patch_folder(image: DatasetName) -> bool:
    """Whether ``image`` names a local folder, read as a patch set rather than a scene."""
    folder = local_path(image)
    return folder is not None and folder.is_dir()


def is_found(image: DatasetName) -> bool:
    """False only for a local path that does not exist (a remote name is looked up on reading)."""
    path = local_path(image)
    return path is None or path.exists()
