"""Builders every test layer shares: georeferenced rasters, tiny model files, minimal run
configs and patch sets, written per test so that no test file imports another."""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import yaml
from PIL import Image
from rasterio.enums import Resampling
from rasterio.transform import Affine, from_origin
from rasterio.warp import calculate_default_transform, reproject
from rasterio.windows import Window

from slidemap.data.channels import InputSpec
from slidemap.data.dataset import RandomWindows
from slidemap.io.modelfile import ModelBundle, model_paths
from slidemap.io.rasters import read_probability
from slidemap.models import build_model
from slidemap.schema.config import RunConfig
from slidemap.train.loop import train

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO / ".." / "shared" / "data"
UTM47 = "EPSG:32647"
ORIGIN = (469200.0, 3446200.0)  # Jinsha valley, UTM 47N
GRID = from_origin(*ORIGIN, 0.5, 0.5)  # 0.5 m pixels, north up

RGB_SLOPE = InputSpec(image_bands=(1, 2, 3), slope=True)
TINY_NET = {"name": "unet", "width": 4, "options": {"depth": 2}}
TINY_TRAINING = {"epochs": 1, "batch_size": 2, "tile": 32, "windows_per_epoch": 4, "threads": 1,
                 "precision": "fp32", "lr": 0.01}
TINY_PREDICT = {"tile": 32, "overlap": 8, "batch_size": 4}
PATCH_SIZE = 24


# -- rasters --------------------------------------------------------------------------------------

def write_raster(path: Path, array: np.ndarray, crs: str | None = UTM47,
                 transform: Affine | None = None, nodata: float | None = None,
                 **creation: object) -> Path:
    """Write a (C, H, W) or (H, W) array as a GeoTIFF, on a 0.5 m UTM grid by default."""
    data = array[None] if array.ndim == 2 else array
    profile = {"driver": "GTiff", "count": data.shape[0], "height": data.shape[1],
               "width": data.shape[2], "dtype": data.dtype.name,
               "transform": transform or GRID, "nodata": nodata, **creation}
    if crs is not None:
        profile["crs"] = crs
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(data)
    return path


def square_scene(path: Path, shape: tuple[int, int], square: tuple[slice, slice],
                 corner: tuple[int, int], seed: int) -> dict[str, Path]:
    """An unlabelled RGB + DSM scene (``path`` and ``path``_dsm): noise with one bright
    rectangle, a nodata corner and a tilted, wavy DSM."""
    rng = np.random.default_rng(seed)
    image = rng.integers(40, 90, size=(3, *shape)).astype(np.uint8)
    image[:, square[0], square[1]] += 100
    image[:, :corner[0], :corner[1]] = 0
    rows, cols = np.mgrid[0:shape[0], 0:shape[1]]
    dsm = (3000.0 + 0.3 * cols + 0.2 * rows + 5 * np.sin(rows / 9)).astype(np.float32)
    return {"image": write_raster(path, image, nodata=0),
            "dem": write_raster(path.with_name(f"{path.stem}_dsm.tif"), dsm,
                                nodata=float("nan"))}


def write_scene(root: Path, name: str, image: np.ndarray, dsm: np.ndarray, labels: np.ndarray,
                transform: Affine | None = None) -> dict[str, Path]:
    """An RGB image (nodata 0), its DSM (nodata NaN) and labels (nodata 255) on one grid
    (``transform``; default the 0.5 m grid at ``ORIGIN``)."""
    root.mkdir(parents=True, exist_ok=True)
    return {"image": write_raster(root / f"{name}.tif", image, transform=transform, nodata=0),
            "dem": write_raster(root / f"{name}_dsm.tif", dsm, transform=transform,
                                nodata=float("nan")),
            "mask": write_raster(root / f"{name}_mask.tif", labels, transform=transform,
                                 nodata=255)}


def reproject_raster(src_path: Path, dst_path: Path, crs: str, scale: float = 1.0) -> Path:
    """Write band 1 of ``src_path`` (a DEM) as float32 in ``crs``, at ``scale`` × its pixels per
    side, NaN where it has no data."""
    with rasterio.open(src_path) as src:
        transform, width, height = calculate_default_transform(
            src.crs, crs, src.width, src.height, *src.bounds)
        width, height = int(width * scale), int(height * scale)
        transform = transform @ transform.scale(1 / scale, 1 / scale)
        data = np.full((height, width), np.nan, dtype=np.float32)
        reproject(src.read(1), data, src_transform=src.transform, src_crs=src.crs,
                  dst_transform=transform, dst_crs=crs, resampling=Resampling.bilinear,
                  src_nodata=np.nan, dst_nodata=np.nan)
    return write_raster(dst_path, data, crs=crs, transform=transform, nodata=float("nan"))


def web_mercator(lon: float, lat: float) -> tuple[float, float]:
    """EPSG:3857 x, y of a WGS 84 longitude/latitude (degrees), by the projection's formula."""
    radius = 6_378_137.0
    return (radius * math.radians(lon),
            radius * math.log(math.tan(math.pi / 4 + math.radians(lat) / 2)))


def web_mercator_scale(lat: float) -> tuple[float, float]:
    """Ground metres per EPSG:3857 unit along x and y at ``lat`` on the WGS 84 ellipsoid, from
    the formula (x = aλ, y = a ln tan(π/4 + φ/2)): N cos φ / a and M cos φ / a, about cos φ."""
    e2, phi = 6.694379990141317e-3, math.radians(lat)
    w = 1 - e2 * math.sin(phi) ** 2
    return math.cos(phi) / math.sqrt(w), (1 - e2) * math.cos(phi) / w ** 1.5


# -- model files ----------------------------------------------------------------------------------

def tiny_bundle(spec: InputSpec = RGB_SLOPE, architecture: str = "unet", seed: int = 0,
                mean: list[float] | None = None, std: list[float] | None = None,
                threshold: float = 0.5, options: Mapping[str, object] | None = None
                ) -> ModelBundle:
    """An untrained width-4 network of any registry architecture (depth 2 by default), with
    statistics of 60 ± 30 per channel unless given."""
    torch.manual_seed(seed)
    channels = len(spec.channels)
    options = dict({"depth": 2} if options is None else options)
    return ModelBundle(model=build_model(architecture, channels, width=4, **options),
                       architecture=architecture, width=4, options=options, inputs=spec,
                       mean=mean or [60.0] * channels, std=std or [30.0] * channels,
                       threshold=threshold)


def rewrite_sidecar(model: Path, **values: object) -> None:
    """Set keys of a model file's sidecar JSON; a value of None removes the key."""
    sidecar = model_paths(model)[1]
    config = json.loads(sidecar.read_text())
    for key, value in values.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    sidecar.write_text(json.dumps(config))


# -- run configs ----------------------------------------------------------------------------------

def _entry(item: Mapping[str, object]) -> dict[str, object]:
    return {k: str(v) if isinstance(v, Path) else v for k, v in item.items()}


def run_config(train: list[Mapping[str, object]], val: list[Mapping[str, object]] | None = None,
               **sections: object) -> dict:
    """A minimal valid run config: the tiny U-Net on ``train`` (scene dicts, patch-set entries)
    and ``val``; ``sections`` add or replace whole top-level sections."""
    data: dict[str, object] = {"train": [_entry(item) for item in train]}
    if val is not None:
        data["val"] = [_entry(item) for item in val]
    return {"data": data, "model": copy.deepcopy(TINY_NET), **copy.deepcopy(sections)}


def tiny_run(scene: Mapping[str, Path], **training: object) -> dict:
    """A run config on one scene (train = val): RGB + DEM + slope, 32 px windows, two epochs."""
    return run_config([scene], [scene], name="tiny",
                      inputs={"image_bands": [1, 2, 3], "dem": True, "slope": True},
                      loss={"bce": 1.0, "dice": 1.0},
                      training={"epochs": 2, "batch_size": 4, "tile": 32, "windows_per_epoch": 8,
                                "precision": "fp32", "seed": 0, **training},
                      predict=TINY_PREDICT)


def write_config(path: Path, raw: Mapping[str, object]) -> Path:
    """Write a config (or study) dict: JSON into a ``.json`` path (JSON is YAML), else YAML."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(raw) if path.suffix == ".json" else yaml.safe_dump(dict(raw))
    path.write_text(text)
    return path


# -- patch sets -----------------------------------------------------------------------------------

def patch_folder(root: Path, count: int = 4, seed: int = 0, masks: bool = True) -> Path:
    """``images/`` of bright-square RGB PNGs, and ``masks/`` (0/255) of the squares."""
    rng = np.random.default_rng(seed)
    for sub in ("images", "masks") if masks else ("images",):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        image = rng.integers(30, 90, (PATCH_SIZE, PATCH_SIZE, 3), dtype=np.uint8)
        mask = np.zeros((PATCH_SIZE, PATCH_SIZE), np.uint8)
        r, c = rng.integers(2, PATCH_SIZE - 10, 2)
        mask[r:r + 8, c:c + 8] = 255
        image[mask > 0] += 120
        Image.fromarray(image).save(root / "images" / f"p{i}.png")
        if masks:
            Image.fromarray(mask).save(root / "masks" / f"p{i}.png")
    return root


# -- runs -----------------------------------------------------------------------------------------

class Interrupted(Exception):
    """What stops a run in the tests that resume it (any exception the loop does not catch)."""


def train_interrupted(config: RunConfig, run: Path, monkeypatch: pytest.MonkeyPatch,
                      error: type[BaseException] = Interrupted) -> None:
    """Train ``config`` into ``run``, stopped by ``error`` as epoch 2 starts (KeyboardInterrupt:
    what Ctrl-C, or SIGTERM through the CLI, raises)."""
    interrupt_at_epoch_2(monkeypatch, error)
    with pytest.raises(error):
        train(config, run)
    monkeypatch.undo()


def interrupt_at_epoch_2(monkeypatch: pytest.MonkeyPatch,
                         error: type[BaseException] = KeyboardInterrupt) -> None:
    """Make every training raise ``error`` as its epoch 2 starts, until ``monkeypatch`` is
    undone: a run stopped after one epoch, with its checkpoint written."""
    real_epoch = RandomWindows.epoch

    def stop(self: RandomWindows, number: int, batch_size: int):
        if number == 2:
            raise error
        return real_epoch(self, number, batch_size)

    monkeypatch.setattr(RandomWindows, "epoch", stop)


def train_interrupted_then_resumed(config: RunConfig, run: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Train ``config`` into ``run``, stopped by an exception as epoch 2 starts, then resume."""
    train_interrupted(config, run, monkeypatch)
    train(config, run, resume=True)


def read_prob(path: str | Path) -> np.ndarray:
    """A probability GeoTIFF decoded to float32 with NaN nodata, whichever type it stores."""
    with rasterio.open(path) as ds:
        return read_probability(ds, Window(0, 0, ds.width, ds.height))


def declared_vrt(source: Path, path: Path, side: int) -> Path:
    """A VRT of ``side``² px over ``source`` (a kilobyte, whatever ``side``)."""
    with rasterio.open(source) as ds:
        crs, count, dtype = ds.crs.to_wkt(), ds.count, ds.dtypes[0]
    kind = {"uint8": "Byte", "float32": "Float32"}[dtype]
    bands = "".join(
        f'<VRTRasterBand dataType="{kind}" band="{b}"><SimpleSource><SourceFilename '
        f'relativeToVRT="0">{source}</SourceFilename><SourceBand>{b}</SourceBand>'
        f"</SimpleSource></VRTRasterBand>" for b in range(1, count + 1))
    path.write_text(f'<VRTDataset rasterXSize="{side}" rasterYSize="{side}"><SRS>{crs}</SRS>'
                    f"<GeoTransform>469200, 0.5, 0, 3446200, 0, -0.5</GeoTransform>{bands}"
                    "</VRTDataset>")
    return path


def mirrored_scene(scene: Mapping[str, Path], folder: Path, flips: tuple[bool, bool]
                   ) -> dict[str, Path]:
    """The same ground as ``scene`` (image, DEM, labels) stored with its rows (south up) and/or
    columns (east to west) reversed, georeferenced so: a GIS shows it as the original."""
    mirrored = {}
    folder.mkdir(parents=True, exist_ok=True)
    for key, path in scene.items():
        with rasterio.open(path) as src:
            data, t, (height, width) = src.read(), src.transform, src.shape
            nodata = src.nodata
        if flips[0]:
            data, t = data[:, ::-1], Affine(t.a, t.b, t.c, t.d, -t.e, t.f + t.e * height)
        if flips[1]:
            data, t = data[:, :, ::-1], Affine(-t.a, t.b, t.c + t.a * width, t.d, t.e, t.f)
        mirrored[key] = write_raster(folder / Path(path).name, np.ascontiguousarray(data),
                                     transform=t, nodata=nodata)
    return mirrored
