"""Shared fixtures: tiny georeferenced scenes and model files written per test."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import from_origin

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

SHARED_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
UTM47 = "EPSG:32647"


def write_raster(path: Path, array: np.ndarray, crs: str | None = UTM47,
                 transform=None, nodata=None) -> Path:
    """Write a (C, H, W) or (H, W) array as a GeoTIFF on a 0.5 m UTM grid by default."""
    data = array[None] if array.ndim == 2 else array
    transform = transform or from_origin(469200.0, 3446200.0, 0.5, 0.5)
    profile = {"driver": "GTiff", "count": data.shape[0], "height": data.shape[1],
               "width": data.shape[2], "dtype": data.dtype.name, "transform": transform,
               "nodata": nodata}
    if crs is not None:
        profile["crs"] = crs
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(data)
    return path


@pytest.fixture
def tiny_scene(tmp_path: Path) -> dict[str, Path]:
    """A 96×96 RGB scene with a bright 'landslide' square, a tilted DSM and labels.

    The left 8 columns are nodata (0 in the image, NaN in the DSM, 255 in the labels).
    """
    rng = np.random.default_rng(0)
    image = rng.integers(40, 90, size=(3, 96, 96)).astype(np.uint8)
    labels = np.zeros((96, 96), dtype=np.uint8)
    labels[30:70, 40:80] = 1
    image[:, 30:70, 40:80] += 100
    image[:, :, :8] = 0
    labels[:, :8] = 255
    rows, cols = np.mgrid[0:96, 0:96]
    dsm = (3000.0 + 0.25 * cols + 0.1 * rows).astype(np.float32)
    dsm[:, :8] = np.nan
    return {
        "image": write_raster(tmp_path / "scene.tif", image, nodata=0),
        "dem": write_raster(tmp_path / "scene_dsm.tif", dsm, nodata=float("nan")),
        "mask": write_raster(tmp_path / "scene_mask.tif", labels, nodata=255),
    }


def rewrite_sidecar(model: Path, **values: object) -> None:
    """Set keys of a model file's sidecar JSON; a value of None removes the key."""
    import json

    from slidemap.io.modelfile import model_paths

    sidecar = model_paths(model)[1]
    config = json.loads(sidecar.read_text())
    for key, value in values.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    sidecar.write_text(json.dumps(config))


@pytest.fixture
def tiny_model(tmp_path: Path) -> Path:
    """An untrained width-4 U-Net on RGB + slope at native resolution, saved as a model file."""
    from slidemap.data.channels import InputSpec
    from slidemap.io.modelfile import ModelBundle, save_model
    from slidemap.models import build_model

    torch.manual_seed(0)
    spec = InputSpec(image_bands=(1, 2, 3), slope=True)
    bundle = ModelBundle(model=build_model("unet", 4, width=4, depth=2), architecture="unet",
                         width=4, options={"depth": 2}, inputs=spec,
                         mean=[60.0, 60.0, 60.0, 10.0], std=[30.0, 30.0, 30.0, 5.0])
    return save_model(bundle, tmp_path / "models" / "tiny")


@pytest.fixture
def run_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
            ) -> Callable[..., tuple[int, str]]:
    """Run the real ``slidemap`` entry point in-process; returns (exit code, stderr).

    In-process because a subprocess would re-import torch for every call.
    """
    from slidemap import cli

    def run(*args: object) -> tuple[int, str]:
        monkeypatch.setattr(sys, "argv", ["slidemap", *map(str, args)])
        code = 0
        try:
            cli.main()
        except SystemExit as exc:
            code = int(exc.code or 0)
        return code, capsys.readouterr().err

    return run
