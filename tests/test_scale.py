"""Mapping at scale: bounded memory, slides across strips, ONNX, Dask and DDP give the same maps."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import rasterio
from conftest import write_raster
from rasterio.transform import from_origin

from slidemap import api
from slidemap.data.terrain import EARTH_RADIUS_M
from slidemap.infer.predict import PredictOptions
from slidemap.infer.stream import HELPER_NICENESS, helper_pool
from slidemap.infer.vectorize import build_inventory, write_inventory

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
FP32 = PredictOptions(tile=48, overlap=16, batch_size=3, precision="fp32")


def read(path: str | Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read(1)


@pytest.fixture
def wide_scene(tmp_path: Path) -> dict[str, Path]:
    """160×200 px: several bands of 48 px windows, a nodata corner, a tilted DSM."""
    rng = np.random.default_rng(1)
    image = rng.integers(40, 90, size=(3, 160, 200)).astype(np.uint8)
    image[:, 60:120, 50:150] += 100
    image[:, :40, :30] = 0
    rows, cols = np.mgrid[0:160, 0:200]
    dsm = (3000.0 + 0.3 * cols + 0.2 * rows + 5 * np.sin(rows / 9)).astype(np.float32)
    return {"image": write_raster(tmp_path / "wide.tif", image, nodata=0),
            "dem": write_raster(tmp_path / "wide_dsm.tif", dsm, nodata=float("nan"))}


def test_dask_workers_give_the_single_process_maps(wide_scene, tiny_model, tmp_path) -> None:
    from distributed import LocalCluster

    alone = api.predict(wide_scene["image"], tmp_path / "alone", wide_scene["dem"], tiny_model,
                        FP32)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                      dashboard_address=None) as cluster:
        options = PredictOptions(**{**vars(FP32), "scheduler": cluster.scheduler_address})
        spread = api.predict(wide_scene["image"], tmp_path / "dask", wide_scene["dem"],
                             tiny_model, options)
    np.testing.assert_array_equal(read(spread["prob"]), read(alone["prob"]))
    np.testing.assert_array_equal(read(spread["mask"]), read(alone["mask"]))
    assert spread["landslides"] == alone["landslides"]


def test_unreachable_scheduler_is_one_line(wide_scene, tiny_model, tmp_path, run_cli,
                                           monkeypatch) -> None:
    monkeypatch.setattr("slidemap.infer.distributed.CONNECT_TIMEOUT_S", 1)
    code, err = run_cli("predict", wide_scene["image"], "--dem", wide_scene["dem"], "--model",
                        tiny_model, "--out", tmp_path / "out", "--dask", "tcp://127.0.0.1:9")
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1 and "Dask scheduler" in lines[0], err
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_onnx_backend_matches_torch_fp32(wide_scene, tiny_model, tmp_path, run_cli) -> None:
    from slidemap.infer.backends import OnnxBackend, TorchBackend
    from slidemap.io.modelfile import load_model
    from slidemap.io.onnxfile import export_onnx, is_current, onnx_path_for

    torch_map = api.predict(wide_scene["image"], tmp_path / "torch", wide_scene["dem"],
                            tiny_model, FP32)
    onnx_options = PredictOptions(**{**vars(FP32), "backend": "onnx"})
    on_the_fly = api.predict(wide_scene["image"], tmp_path / "fly", wide_scene["dem"],
                             tiny_model, onnx_options)  # no export yet: a temporary one
    code, err = run_cli("export", tiny_model)
    assert code == 0, err
    exported = onnx_path_for(tiny_model)
    assert exported.exists() and is_current(exported, load_model(tiny_model))
    beside = api.predict(wide_scene["image"], tmp_path / "beside", wide_scene["dem"],
                         tiny_model, onnx_options)
    for result in (on_the_fly, beside):
        np.testing.assert_allclose(read(result["prob"]), read(torch_map["prob"]), atol=1e-5,
                                   equal_nan=True)
    # Odd sizes are padded to the stride exactly as the torch model pads them.
    x = np.random.default_rng(0).standard_normal((2, 4, 37, 45)).astype(np.float32)
    np.testing.assert_allclose(OnnxBackend(exported)(x),
                               TorchBackend(load_model(tiny_model).model, "fp32")(x), atol=1e-5)
    # A retrained model no longer matches the export beside it.
    other = load_model(tiny_model)
    other.path = export_onnx(other, tmp_path / "x.onnx")  # any file with other bytes
    assert not is_current(exported, other)


def test_export_of_a_missing_model_is_one_line(tmp_path, run_cli) -> None:
    code, err = run_cli("export", tmp_path / "nope.safetensors", "--out", tmp_path / "m.onnx")
    assert code == 1 and err.startswith("error: model file") and err.count("\n") == 1, err
    assert not (tmp_path / "m.onnx").exists()


def _u_shaped_slide() -> np.ndarray:
    """Mask with a U (two arms joined only at the bottom), a square and a 2×2 speck."""
    mask = np.zeros((60, 50), dtype=np.uint8)
    mask[5:40, 10:15] = 1
    mask[5:40, 26:31] = 1
    mask[35:40, 10:31] = 1
    mask[45:52, 40:47] = 1
    mask[3:5, 40:42] = 1
    mask[:, :2] = 255
    return mask


def _exposed_edges(pixels: np.ndarray) -> int:
    padded = np.pad(pixels, 1)
    core = padded[1:-1, 1:-1]
    return int(sum((core & ~np.roll(padded, s, axis=a)[1:-1, 1:-1]).sum()
                   for a in (0, 1) for s in (1, -1)))


def test_slide_across_strip_borders_comes_out_whole(tmp_path) -> None:
    mask = _u_shaped_slide()
    rows, cols = np.mgrid[0:60, 0:50]
    prob = np.where(mask == 1, 0.6 + 0.01 * (rows % 7), 0.1).astype(np.float32)
    dem = (3000.0 + 0.5 * cols).astype(np.float32)  # rises 0.5 m per 0.5 m pixel: 45° slope
    paths = {"mask": write_raster(tmp_path / "m.tif", mask, nodata=255),
             "prob": write_raster(tmp_path / "p.tif", prob, nodata=float("nan")),
             "dem": write_raster(tmp_path / "d.tif", dem)}
    # Strips of 8 rows: the U's arms are separate in every strip but the last ones.
    inventory = build_inventory(paths["mask"], paths["prob"], min_area_m2=2.0, strip_rows=8,
                                dem=paths["dem"])
    assert len(inventory) == 2  # the U, the square; the 1 m² speck is dropped
    u_pixels = np.zeros_like(mask, dtype=bool)
    u_pixels[:45, :35] = mask[:45, :35] == 1
    attrs = {k: v[0] for k, v in inventory.attributes.items()}
    assert attrs["pixels"] == u_pixels.sum()
    assert attrs["area_m2"] == pytest.approx(u_pixels.sum() * 0.25)
    assert attrs["perimeter_m"] == pytest.approx(_exposed_edges(u_pixels) * 0.5)
    assert attrs["mean_prob"] == pytest.approx(prob[u_pixels].mean(), rel=1e-6)
    assert attrs["max_prob"] == pytest.approx(prob[u_pixels].max())
    assert attrs["mean_slope_deg"] == pytest.approx(45.0, abs=1e-3)
    assert attrs["elev_range_m"] == pytest.approx((30 - 10) * 0.5)
    assert inventory.geometries[0].geom_type == "Polygon"  # one piece, not two arms
    for suffix in (".gpkg", ".geojson"):
        write_inventory(inventory, tmp_path / f"inv{suffix}")
        info = pyogrio.read_info(tmp_path / f"inv{suffix}")
        assert info["features"] == 2 and "elev_range_m" in info["fields"]


def test_perimeter_and_area_in_metres_in_degrees(tmp_path) -> None:
    step, north = 1e-5, 31.1  # degrees: about 0.95 × 1.1 m pixels in the Jinsha valley
    mask = np.zeros((30, 40), dtype=np.uint8)
    mask[10:20, 5:25] = 1  # 10 rows × 20 columns
    transform = from_origin(98.7, north, step, step)
    paths = [write_raster(tmp_path / name, array, crs="EPSG:4326", transform=transform)
             for name, array in (("m.tif", mask), ("p.tif", mask.astype(np.float32)))]
    inventory = build_inventory(*paths)
    metres = math.pi * EARTH_RADIUS_M / 180 * step
    top, bottom = math.radians(north - 10 * step), math.radians(north - 20 * step)
    expected = 20 * metres * (math.cos(top) + math.cos(bottom)) + 2 * 10 * metres
    assert inventory.attributes["perimeter_m"][0] == pytest.approx(expected, rel=1e-6)
    centre = math.radians(north - 15 * step)
    assert inventory.attributes["area_m2"][0] == pytest.approx(
        200 * metres**2 * math.cos(centre), rel=1e-4)


def test_predict_writes_geojson_and_gpkg_with_terrain(tiny_scene, tiny_model, tmp_path,
                                                      run_cli) -> None:
    out = tmp_path / "out"
    code, err = run_cli("predict", tiny_scene["image"], "--dem", tiny_scene["dem"], "--model",
                        tiny_model, "--out", out, "--tile", 48, "--overlap", 16, "--format",
                        "gpkg", "--format", "geojson")
    assert code == 0, err
    for suffix in ("gpkg", "geojson"):
        fields = pyogrio.read_info(out / f"scene_landslides.{suffix}")["fields"]
        assert {"mean_slope_deg", "elev_range_m", "perimeter_m"} <= set(fields)
    code, err = run_cli("predict", tiny_scene["image"], "--model", tiny_model, "--out", out,
                        "--format", "shp")
    assert code == 2 and "'shp' is not one of 'gpkg', 'geojson'" in err


def test_two_process_ddp_training_writes_one_model(tiny_scene, tmp_path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(json.dumps({
        "data": {"train": [{k: str(tiny_scene[k]) for k in ("image", "mask", "dem")}],
                 "val": [{k: str(tiny_scene[k]) for k in ("image", "mask", "dem")}]},
        "inputs": {"image_bands": [1, 2, 3], "slope": True},
        "model": {"name": "unet", "width": 4, "options": {"depth": 2}},
        "training": {"epochs": 2, "batch_size": 4, "tile": 32, "windows_per_epoch": 8,
                     "precision": "fp32", "seed": 3},
        "predict": {"tile": 48, "overlap": 16, "batch_size": 4}}))
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "slidemap", "train", str(config), "--out", str(tmp_path / "run")],
        capture_output=True, text=True, env=ENV, timeout=180, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "run" / "model.safetensors").exists()
    history = (tmp_path / "run" / "history.csv").read_text().splitlines()
    assert len(history) == 3  # header + 2 epochs, written once (rank 0 only)


def test_ddp_ranks_split_each_batch_without_overlap() -> None:
    from slidemap.train.ddp import Ranks, shard_batch

    batch = {"x": np.arange(7)[:, None] * np.ones((1, 3)), "valid": np.arange(7) % 2 == 0}
    parts = [shard_batch(batch, Ranks(rank, 3)) for rank in range(3)]
    assert sorted(np.concatenate([p["x"][:, 0] for p in parts]).tolist()) == list(range(7))
    small = {"x": np.zeros((1, 3))}
    assert all(len(shard_batch(small, Ranks(rank, 2))["x"]) == 1 for rank in range(2))


RSS_CHILD = r"""
import sys
from pathlib import Path
import numpy as np, rasterio, torch
from rasterio.transform import from_origin
from rasterio.windows import Window
from slidemap.data.channels import InputSpec
from slidemap.infer.predict import build_predictor
from slidemap.infer.predict import PredictOptions, predict_scene
from slidemap.io.modelfile import ModelBundle, save_model
from slidemap.models import build_model

WIDTH = 2048
folder = Path(sys.argv[1])


def peak_mb():
    return next(int(line.split()[1]) for line in open("/proc/self/status")
                if line.startswith("VmHWM")) / 1024


def scene(path, height):
    path.mkdir()
    grid = dict(driver="GTiff", width=WIDTH, height=height, crs="EPSG:32647", tiled=True,
                transform=from_origin(469200.0, 3446200.0, 0.5, 0.5), blockxsize=256,
                blockysize=256, compress="deflate", zlevel=1)
    rng = np.random.default_rng(0)
    with rasterio.open(path / "image.tif", "w", count=3, dtype="uint8", nodata=0, **grid) as img, \
            rasterio.open(path / "dsm.tif", "w", count=1, dtype="float32", **grid) as dsm:
        for top in range(0, height, 512):
            rows, cols = np.mgrid[top:top + 512, 0:WIDTH].astype(np.float32)
            window = Window(0, top, WIDTH, 512)
            img.write(rng.integers(40, 200, (3, 512, WIDTH), dtype=np.uint8), window=window)
            dsm.write((3000 + 0.3 * cols + 0.1 * rows)[None], window=window)
    return path


torch.manual_seed(0)
bundle = ModelBundle(build_model("unet", 4, width=4, depth=2), "unet", 4, {"depth": 2},
                     InputSpec(slope=True, resolution_m=2.0), [120.0] * 3 + [20.0],
                     [50.0] * 3 + [10.0])
predictor = build_predictor([save_model(bundle, folder / "tiny")], PredictOptions())
peaks = []
for height in (2048, 12288):
    path = scene(folder / str(height), height)
    predict_scene(predictor, path / "image.tif", path / "dsm.tif", path / "prob.tif",
                  path / "mask.tif", PredictOptions())
    peaks.append(peak_mb())
print(peaks[0], peaks[1])
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmHWM from /proc")
def test_peak_memory_does_not_grow_with_the_scene(tmp_path) -> None:
    """A scene six times taller (25 Mpx) may not raise the peak RSS by more than 150 MB:
    GDAL's default block cache alone (5 % of the RAM) would add some 330 MB here."""
    done = subprocess.run([sys.executable, "-c", RSS_CHILD, str(tmp_path)], capture_output=True,
                          text=True, env=ENV, timeout=180, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    small, large = map(float, done.stdout.split())
    assert large - small < 150, (small, large)
    assert large < 1500, (small, large)


@pytest.mark.skipif(sys.platform != "linux", reason="only Linux renices a single thread")
def test_helper_threads_run_below_the_model_threads_priority() -> None:
    """Reading, blending and writing beside the model must yield the core to it, not share it."""
    before = os.getpriority(os.PRIO_PROCESS, 0)
    with helper_pool("slidemap-test") as pool:
        helper = pool.submit(os.getpriority, os.PRIO_PROCESS, 0).result()
    assert helper == min(before + HELPER_NICENESS, 19)
    assert os.getpriority(os.PRIO_PROCESS, 0) == before
