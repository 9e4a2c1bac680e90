"""Mapping at scale: bounded memory, slides across strips, ONNX, Dask and DDP give the same maps."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import threading
import warnings
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyogrio
import pyproj
import pytest
import rasterio
import shapely
from affine import Affine
from factories import (
    ORIGIN,
    REPO,
    declared_vrt,
    square_scene,
    tiny_bundle,
    web_mercator,
    web_mercator_scale,
    write_raster,
)
from rasterio.crs import CRS
from rasterio.transform import from_origin
from rasterio.windows import Window
from scipy import ndimage
from shapely.geometry import shape

from slidemap import api
from slidemap.data.channels import InputSpec
from slidemap.data.scene import Scene
from slidemap.data.terrain import ground_scales, slope_degrees
from slidemap.errors import SlidemapError
from slidemap.infer import vectorize
from slidemap.infer.budget import MemoryBudget
from slidemap.infer.predict import PredictOptions
from slidemap.infer.stream import HELPER_NICENESS, helper_pool
from slidemap.infer.vectorize import build_inventory, write_inventory
from slidemap.io.modelfile import save_model
from slidemap.report.prediction import _pixel_area as report_pixel_area

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
FP32 = PredictOptions(tile=48, overlap=16, batch_size=3, precision="fp32")


def read(path: str | Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read(1)


@pytest.fixture
def wide_scene(tmp_path: Path) -> dict[str, Path]:
    """160×200 px: several bands of 48 px windows, a nodata corner, a tilted DSM."""
    return square_scene(tmp_path / "wide.tif", (160, 200), (slice(60, 120), slice(50, 150)),
                        (40, 30), seed=1)


def test_dask_workers_give_the_single_process_maps(wide_scene, tiny_model, tmp_path) -> None:
    from distributed import LocalCluster

    alone = api.predict(wide_scene["image"], tmp_path / "alone", wide_scene["dem"], tiny_model,
                        FP32)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                      dashboard_address=None) as cluster:
        options = PredictOptions(**{**vars(FP32), "scheduler": cluster.scheduler_address})
        spread = api.predict(wide_scene["image"], tmp_path / "dask", wide_scene["dem"],
                             tiny_model, options)
    np.testing.assert_array_equal(read(spread.prob), read(alone.prob))
    np.testing.assert_array_equal(read(spread.mask), read(alone.mask))
    assert spread.landslides == alone.landslides


def test_bands_in_flight_on_a_large_cluster_fit_the_memory_budget(monkeypatch) -> None:
    """Two bands per worker thread were submitted ahead of the band the rows wait for, however
    many threads the cluster had: on 500 threads 1000 bands of 2 MB waited on the workers
    against a budget of 64 MB. A small cluster still gets its two per thread."""
    import contextlib
    from concurrent.futures import Future

    from slidemap.infer import distributed
    from slidemap.infer.budget import MemoryBudget
    from slidemap.infer.stream import Grid, band_bytes

    grid = Grid.of(4096, 8192, 512, 64, 1)  # bands of 18 windows of 513² float32: 18 MB
    job = distributed.BandJob("i.tif", None, ("m.safetensors",), False, "fp32", "torch", False,
                              (1.0,), 1, None, grid)
    held = {"now": 0, "most": 0}

    class Band(Future):
        def result(self, timeout: float | None = None) -> object:
            held["now"] -= 1  # gathered: no longer held on a worker
            return super().result(timeout)

    class Cluster:
        def __init__(self, threads: int) -> None:
            self.threads = threads

        def nthreads(self) -> dict[str, int]:
            return {f"worker-{i}": 1 for i in range(self.threads)}

        def submit(self, function, job, piece, pure) -> Future:
            held["now"] += 1
            held["most"] = max(held["most"], held["now"])
            band = Band()
            band.set_result(piece)
            return band

    budget = MemoryBudget(64)
    for threads, most in ((500, budget.bytes // band_bytes(grid)), (1, 2)):
        held.update(now=0, most=0)
        monkeypatch.setattr(distributed, "dask_client",
                            lambda *args, t=threads: contextlib.nullcontext(Cluster(t)))
        assert len(list(distributed.dask_bands(job, "tcp://x", 0, budget))) == len(grid.pieces)
        assert held["most"] == most, (threads, held)
    assert 1 < budget.bytes // band_bytes(grid) < 1000


def test_unreachable_scheduler_is_one_line(wide_scene, tiny_model, tmp_path, run_cli,
                                           monkeypatch) -> None:
    monkeypatch.setattr("slidemap.infer.distributed.CONNECT_TIMEOUT_S", 1)
    code, err = run_cli("predict", wide_scene["image"], "--dem", wide_scene["dem"], "--model",
                        tiny_model, "--out", tmp_path / "out", "--dask", "tcp://127.0.0.1:9")
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1 and "Dask scheduler" in lines[0], err
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_scheduler_without_workers_is_one_line_not_a_hang(wide_scene, tiny_model, tmp_path,
                                                          monkeypatch) -> None:
    """Its tasks waited for a worker forever, the progress bar at 0."""
    from distributed import LocalCluster

    monkeypatch.setattr("slidemap.infer.distributed.CONNECT_TIMEOUT_S", 1)
    failures: list[BaseException] = []

    def run(address: str) -> None:
        options = PredictOptions(**{**vars(FP32), "scheduler": address})
        try:
            api.predict(wide_scene["image"], tmp_path / "out", wide_scene["dem"], tiny_model,
                        options)
        except SlidemapError as exc:
            failures.append(exc)

    with LocalCluster(n_workers=0, processes=False, dashboard_address=None) as cluster:
        thread = threading.Thread(target=run, args=(cluster.scheduler_address,), daemon=True)
        thread.start()
        thread.join(60)
    assert not thread.is_alive(), "predict waited for a Dask worker forever"
    assert len(failures) == 1 and "has no worker" in str(failures[0]), failures
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def _dask_failure(wide_scene: dict[str, Path], tiny_model: Path, out: Path,
                  run_cli: Callable[..., tuple[int, str]]) -> list[str]:
    from distributed import LocalCluster

    with warnings.catch_warnings():  # the test's own cluster: port 8787 may be taken
        warnings.simplefilter("ignore")
        cluster = LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                               dashboard_address=None)
    with cluster:
        code, err = run_cli("predict", wide_scene["image"], "--dem", wide_scene["dem"],
                            "--model", tiny_model, "--out", out, "--tile", 48, "--overlap", 16,
                            "--dask", cluster.scheduler_address)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1, err
    assert not out.exists() or not list(out.iterdir())
    return lines


def test_workers_that_died_on_a_band_are_one_line(wide_scene, tiny_model, tmp_path, run_cli,
                                                  monkeypatch) -> None:
    """Workers killed on a band (out of memory): distributed's KilledWorker was a traceback."""
    from distributed.scheduler import KilledWorker

    def killed(job: object, piece: tuple[int, int]) -> None:
        raise KilledWorker(f"predict_band-{piece}", SimpleNamespace(address="tcp://h:1"), 3)

    monkeypatch.setattr("slidemap.infer.distributed.predict_band", killed)
    lines = _dask_failure(wide_scene, tiny_model, tmp_path / "out", run_cli)
    assert "Dask workers died" in lines[0], lines


def test_a_scheduler_that_went_away_is_one_line(wide_scene, tiny_model, tmp_path, run_cli,
                                                monkeypatch) -> None:
    """A --dask scheduler stopped or restarted mid-run cancels the bands: distributed's
    FutureCancelledError ('scheduler-connection-lost') was a traceback."""
    from distributed.client import FutureCancelledError

    def cancelled(job: object, piece: tuple[int, int]) -> None:
        raise FutureCancelledError(f"predict_band-{piece}", "scheduler-connection-lost")

    monkeypatch.setattr("slidemap.infer.distributed.predict_band", cancelled)
    lines = _dask_failure(wide_scene, tiny_model, tmp_path / "out", run_cli)
    assert "went away while the scene was mapped" in lines[0], lines
    assert "scheduler-connection-lost" in lines[0] and "map the scene again" in lines[0], lines


def test_a_file_a_worker_cannot_see_is_named_as_the_workers(wide_scene, tiny_model, tmp_path,
                                                            run_cli, monkeypatch) -> None:
    """The workers of --dask open the scene by its path: where one cannot see it, the message
    said the image does not exist, which the user could see it did."""
    from slidemap.infer import distributed

    def elsewhere(image: str, **kwargs: object) -> Scene:
        return Scene(str(tmp_path / "not-on-this-worker" / Path(image).name), **kwargs)

    monkeypatch.setattr(distributed, "Scene", elsewhere)
    lines = _dask_failure(wide_scene, tiny_model, tmp_path / "out", run_cli)
    assert lines[0].startswith("error: on a Dask worker: ") and "paths" in lines[0], lines


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
        np.testing.assert_allclose(read(result.prob), read(torch_map.prob), atol=1e-5,
                                   equal_nan=True)
    # Odd sizes are padded to the stride exactly as the torch model pads them.
    x = np.random.default_rng(0).standard_normal((2, 4, 37, 45)).astype(np.float32)
    np.testing.assert_allclose(OnnxBackend(exported)(x),
                               TorchBackend(load_model(tiny_model).model, "fp32")(x), atol=1e-5)
    # A retrained model no longer matches the export beside it.
    other = load_model(tiny_model)
    other.path = export_onnx(other, tmp_path / "x.onnx")  # any file with other bytes
    assert not is_current(exported, other)


def test_pspnet_exports_and_pools_any_size_as_torch_does(tmp_path, run_cli) -> None:
    """PSPNet's pyramid (2, 3 and 6 bins) in ONNX pools a size the bins do not divide as torch
    does: 72 × 120 px is 9 × 15 at stride 8."""
    from slidemap.data.channels import InputSpec
    from slidemap.infer.backends import OnnxBackend, TorchBackend
    from slidemap.io.modelfile import load_model, save_model

    psp = save_model(tiny_bundle(InputSpec(image_bands=(1, 2, 3)), architecture="pspnet",
                                 options={}), tmp_path / "psp")
    code, err = run_cli("export", psp, "--out", tmp_path / "psp.onnx")
    assert code == 0, err
    x = np.random.default_rng(0).standard_normal((2, 3, 72, 120)).astype(np.float32)
    np.testing.assert_allclose(OnnxBackend(tmp_path / "psp.onnx")(x),
                               TorchBackend(load_model(psp).model, "fp32")(x), atol=1e-5)


def test_an_onnx_file_onnx_runtime_refuses_is_one_line(tiny_scene, tiny_model, tmp_path,
                                                       run_cli) -> None:
    """An export beside the model (its weights' digest matches) whose tensor lies outside its
    folder (/etc/passwd) is refused by ONNX Runtime: one line naming the fix, not a traceback."""
    import hashlib

    import onnx
    from onnx import TensorProto, helper

    tensor = TensorProto(name="W", data_type=TensorProto.UINT8, dims=[16],
                         data_location=TensorProto.EXTERNAL)
    for key, value in (("location", "/etc/passwd"), ("offset", "0"), ("length", "16")):
        tensor.external_data.add(key=key, value=value)
    graph = helper.make_graph(  # x plus the sum of W's bytes: W must be read
        [helper.make_node("Cast", ["W"], ["w"], to=TensorProto.FLOAT),
         helper.make_node("ReduceSum", ["w"], ["total"], keepdims=0),
         helper.make_node("Add", ["x", "total"], ["prob"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 4, "h", "w"])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["b", 4, "h", "w"])],
        [tensor])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    digest = hashlib.sha256(tiny_model.read_bytes()).hexdigest()
    helper.set_model_props(proto, {"weights_sha256": digest, "stride": "1"})
    tiny_model.with_suffix(".onnx").write_bytes(proto.SerializeToString())
    assert onnx.load(str(tiny_model.with_suffix(".onnx")), load_external_data=False)
    code, err = run_cli("predict", tiny_scene["image"], "--dem", tiny_scene["dem"], "--model",
                        tiny_model, "--backend", "onnx", "--out", tmp_path / "out")
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in err, err
    assert "cannot be run" in err and "slidemap export" in err
    assert not (tmp_path / "out").exists()


def _onnx_beside(model: Path, nodes: list, initializers: list) -> None:
    """An export beside ``model`` (its weights' digest matches) of ``nodes`` from x to prob."""
    import hashlib

    onnx = pytest.importorskip("onnx")
    helper, tensor_proto = onnx.helper, onnx.TensorProto
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", tensor_proto.FLOAT, ["b", 4, "h", "w"])],
        [helper.make_tensor_value_info("prob", tensor_proto.FLOAT, None)], initializers)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    helper.set_model_props(proto, {"weights_sha256": hashlib.sha256(model.read_bytes())
                                   .hexdigest(), "stride": "1"})
    model.with_suffix(".onnx").write_bytes(proto.SerializeToString())


def test_an_onnx_graph_that_fails_only_when_run_is_one_line(tiny_scene, tiny_model, tmp_path,
                                                           run_cli) -> None:
    """An export that loads but cannot run (a reshape to 7 values of a window's thousands)
    fails at the first batch: one line naming the fix, not ONNX Runtime's traceback."""
    pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    shape = onnx.helper.make_tensor("shape", onnx.TensorProto.INT64, [1], [7])
    _onnx_beside(tiny_model, [onnx.helper.make_node("Reshape", ["x", "shape"], ["prob"])],
                 [shape])
    code, err = run_cli("predict", tiny_scene["image"], "--dem", tiny_scene["dem"], "--model",
                        tiny_model, "--backend", "onnx", "--out", tmp_path / "out")
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1 and "Traceback" not in err, err
    assert "cannot be run" in lines[0] and "slidemap export" in lines[0]


def test_onnx_backend_lets_errors_not_of_onnx_runtime_through(tiny_model, tmp_path,
                                                             monkeypatch) -> None:
    """Only ONNX Runtime's own errors (and an unreadable file) mean 'export again': a
    MemoryError, a bug or a SlidemapError of ours keeps its own type and message."""
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    from slidemap.infer.backends import OnnxBackend

    _onnx_beside(tiny_model, [onnx.helper.make_node("Identity", ["x"], ["prob"])], [])
    path = tiny_model.with_suffix(".onnx")
    for error in (MemoryError("out of memory"), KeyError("bug"), SlidemapError("ours")):
        def fail(*args, error=error, **kwargs):
            raise error
        with monkeypatch.context() as patch:
            patch.setattr(ort, "InferenceSession", fail)
            with pytest.raises(type(error)) as raised:
                OnnxBackend(path)
        assert type(raised.value) is type(error)
    backend = OnnxBackend(path)
    monkeypatch.setattr(backend, "session", type("S", (), {"run": lambda *a: 1 / 0})())
    with pytest.raises(ZeroDivisionError):
        backend(np.zeros((1, 4, 8, 8), dtype=np.float32))
    path.write_bytes(b"\xff\xfe not onnx")
    with pytest.raises(SlidemapError, match="cannot be run"):
        OnnxBackend(path)


def test_a_model_onnx_cannot_export_says_why_in_one_line(tiny_model, tmp_path, run_cli,
                                                          monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise RuntimeError("Unsupported: ONNX export of operator foo.\nSee the tracer's notes")

    monkeypatch.setattr("torch.onnx.export", refuse)
    code, err = run_cli("export", tiny_model, "--out", tmp_path / "m.onnx")
    assert code == 1 and err.count("\n") == 1, err
    assert "(unet) cannot be exported" in err and "operator foo" in err
    assert "tracer's notes" not in err and "default backend" in err
    assert not (tmp_path / "m.onnx").exists()


def test_a_shipped_model_of_an_installed_slidemap_exports_into_the_current_folder(
        tmp_path, run_cli, monkeypatch) -> None:
    """Beside a wheel's shipped model is site-packages: the installation's folder, not the
    user's. A model of the user's still exports beside itself."""
    from slidemap.io.modelfile import save_model
    from slidemap.workflows import inputs

    shipped = tmp_path / "site" / "slidemap" / "shipped_models"
    model = save_model(tiny_bundle(), shipped / "slidemap-tiny")
    monkeypatch.setattr(inputs, "INSTALLED_MODELS", shipped.resolve())
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    code, err = run_cli("export", model.with_suffix(""))
    assert code == 0, err
    assert (work / "slidemap-tiny.onnx").is_file() and not list(shipped.glob("*.onnx"))
    assert str(work / "slidemap-tiny.onnx") in err
    own = save_model(tiny_bundle(), tmp_path / "mine" / "own")
    assert run_cli("export", own)[0] == 0 and (tmp_path / "mine" / "own.onnx").is_file()


def test_export_of_a_missing_model_is_one_line(tmp_path, run_cli) -> None:
    code, err = run_cli("export", tmp_path / "nope.safetensors", "--out", tmp_path / "m.onnx")
    assert code == 1 and err.startswith("error: model file") and err.count("\n") == 1, err
    assert not (tmp_path / "m.onnx").exists()


def test_an_exported_onnx_file_passed_as_the_model_names_the_file_to_pass(
        tiny_model, tiny_scene, tmp_path, run_cli) -> None:
    exported = tmp_path / "tiny.onnx"
    assert run_cli("export", tiny_model, "--out", exported)[0] == 0
    code, err = run_cli("predict", tiny_scene["image"], "--dem", tiny_scene["dem"], "--model",
                        exported, "--backend", "onnx", "--out", tmp_path / "out")
    assert code == 1 and err.count("\n") == 1, err
    assert "is an ONNX export" in err and "NAME.safetensors" in err
    assert ".onnx.safetensors" not in err


@pytest.mark.parametrize(("given", "named"), [
    ("run.yaml", "is a run config, not a model: pass the model file a run wrote"),
    ("models", "is a folder: pass a model file in it"),
])
def test_a_config_or_folder_passed_as_the_model_says_what_it_is(
        tiny_scene, tmp_path, run_cli, given, named) -> None:
    """--model configs/jinsha-unet.yaml and --model models said 'run.yaml.safetensors does not
    exist', naming a file nobody gave."""
    (tmp_path / "run.yaml").write_text("name: x\n")
    (tmp_path / "models").mkdir()
    code, err = run_cli("predict", tiny_scene["image"], "--model", tmp_path / given, "--out",
                        tmp_path / "out")
    assert code == 1 and err.count("\n") == 1 and named in err, err
    assert ".safetensors does not exist" not in err


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


@pytest.mark.parametrize("north", [0.5, 31.1, 69.0])
def test_area_and_perimeter_in_degrees_are_the_ellipsoids(tmp_path, north) -> None:
    """Degrees are measured on the WGS 84 ellipsoid, as pyproj.Geod and QGIS measure them and as
    Web Mercator already was: on a sphere of mean radius area_m2 came out 0.45 % large at the
    equator and 0.72 % small at 69° N, perimeters up to 0.56 % off."""
    step = 1e-5
    mask = np.zeros((30, 40), dtype=np.uint8)
    mask[10:20, 5:25] = 1  # 10 rows × 20 columns
    transform = from_origin(15.0, north, step, step)
    paths = [write_raster(tmp_path / name, array, crs="EPSG:4326", transform=transform)
             for name, array in (("m.tif", mask), ("p.tif", mask.astype(np.float32)))]
    inventory = build_inventory(*paths)
    west, east = 15.0 + 5 * step, 15.0 + 25 * step
    south, top = north - 20 * step, north - 10 * step
    area, perimeter = pyproj.Geod(ellps="WGS84").geometry_area_perimeter(
        shapely.box(west, south, east, top))
    assert inventory.attributes["area_m2"][0] == pytest.approx(abs(area), rel=1e-6)
    assert inventory.attributes["perimeter_m"][0] == pytest.approx(perimeter, rel=1e-6)


def test_centroid_longitude_past_the_antimeridian_is_within_180(tmp_path) -> None:
    """A grid in degrees running past 180° E (as gdalwarp leaves a Fiji scene) gave
    centroid_lon 180.0001 where the GeoJSON outline lies at -179.9999."""
    mask = np.zeros((20, 40), dtype=np.uint8)
    mask[5:15, 25:35] = 1  # columns 25-35: 180.00005° to 180.00015°
    transform = from_origin(179.9998, -16.0, 1e-5, 1e-5)
    paths = [write_raster(tmp_path / name, array, crs="EPSG:4326", transform=transform)
             for name, array in (("m.tif", mask), ("p.tif", mask.astype(np.float32)))]
    inventory = build_inventory(*paths)
    assert inventory.attributes["centroid_lon"][0] == pytest.approx(-179.9999, abs=1e-9)
    assert inventory.attributes["centroid_lat"][0] == pytest.approx(-16.0001, abs=1e-9)


def test_perimeters_follow_ground_scales_and_keep_their_figures() -> None:
    """Perimeters are measured by ground_scales at each segment's midpoint, the rule of areas
    and pixel sizes: in degrees pyproj.Geod's length on the WGS 84 ellipsoid, in UTM shapely's
    length to the last bit."""
    square = shapely.segmentize(shapely.box(98.7, 31.0, 98.71, 31.01), 1e-3)
    geodesic = pyproj.Geod(ellps="WGS84").geometry_length(square)
    xy = shapely.get_coordinates(square.exterior)
    per_x, per_y = ground_scales(CRS.from_epsg(4326), (xy[1:, 0] + xy[:-1, 0]) / 2,
                                 (xy[1:, 1] + xy[:-1, 1]) / 2)
    measured = float(np.hypot(np.diff(xy[:, 0]) * per_x, np.diff(xy[:, 1]) * per_y).sum())
    perimeter = vectorize._perimeters_m([square], CRS.from_epsg(4326))[0]
    assert perimeter == pytest.approx(geodesic, rel=1e-6)
    assert perimeter == pytest.approx(measured, rel=1e-12)
    x, y = ORIGIN
    holed = shapely.box(x, y, x + 10.5, y + 7.5).difference(shapely.box(x + 1, y + 1, x + 2.5,
                                                                          y + 3))
    parts = [shapely.box(x + 20, y, x + 20.5, y + 0.5),
             shapely.Polygon([(x + 30, y), (x + 33.5, y + 1), (x + 31, y + 4.5)])]
    utm = [holed, shapely.MultiPolygon(parts)]
    np.testing.assert_array_equal(vectorize._perimeters_m(utm, CRS.from_epsg(32647)),
                                  shapely.length(utm))


def test_perimeter_in_web_mercator_scales_each_edge_at_its_own_latitude() -> None:
    """A 2 km-unit square at 40° N and a 100-unit one at 60° N in Web Mercator, one landslide:
    each edge is measured at its own latitude; the centroid's one scale (near 40° N) measured
    the small square 50 % long, the perimeter 1.6 % long."""
    squares, expected = [], 0.0
    for lat, side in ((40.0, 2000.0), (60.0, 100.0)):
        x, y = web_mercator(98.0, lat)
        squares.append(shapely.segmentize(shapely.box(x, y, x + side, y + side), 50.0))
        south, middle, north = (
            math.degrees(2 * math.atan(math.exp(v / 6_378_137.0)) - math.pi / 2)
            for v in (y, y + side / 2, y + side))
        expected += side * (web_mercator_scale(south)[0] + web_mercator_scale(north)[0]
                            + 2 * web_mercator_scale(middle)[1])
    perimeter = vectorize._perimeters_m([shapely.MultiPolygon(squares)], CRS.from_epsg(3857))
    assert perimeter[0] == pytest.approx(expected, rel=1e-6)


def test_perimeter_and_area_in_metres_in_web_mercator(tmp_path) -> None:
    """Web Mercator units are about 1/cos(latitude) ground metres (0.585 units a 0.5 m pixel
    at 31° N): the inventory gives the ground area and perimeter, not the grid's (36 % and
    17 % larger)."""
    north = 31.1
    res = 0.5 / web_mercator_scale(north)[0]  # 0.5 m ground pixels along x
    mask = np.zeros((30, 40), dtype=np.uint8)
    mask[10:20, 5:25] = 1  # 10 rows × 20 columns
    transform = from_origin(*web_mercator(98.7, north), res, res)
    paths = [write_raster(tmp_path / name, array, crs="EPSG:3857", transform=transform)
             for name, array in (("m.tif", mask), ("p.tif", mask.astype(np.float32)))]
    inventory = build_inventory(*paths)
    per_x, per_y = web_mercator_scale(north)  # the same to 1e-6 at the square, 8 m south
    dx, dy = res * per_x, res * per_y
    assert inventory.attributes["area_m2"][0] == pytest.approx(200 * dx * dy, rel=1e-4)
    assert inventory.attributes["perimeter_m"][0] == pytest.approx(2 * (20 * dx + 10 * dy),
                                                                   rel=1e-4)


@pytest.mark.parametrize("transform", [
    Affine(0.5, 0.25, ORIGIN[0], 0.0, -0.5, ORIGIN[1]),  # sheared: rows lean a quarter metre
    from_origin(*ORIGIN, 0.5, 0.5) * Affine.rotation(30),
    from_origin(*ORIGIN, 0.5, 0.5) * Affine.rotation(90)])
def test_area_on_a_rotated_or_sheared_grid_is_the_polygons(tmp_path, transform) -> None:
    """A pixel of a sheared grid is a parallelogram of 0.25 m², not the 0.28 m² of its step
    lengths (ds.res) multiplied: the area is the polygon's, as shapely measures it in UTM. The
    report's pixel (its mapped ground) is the same, not the diagonal terms' product (0.19 m²
    at 30°, 0 at a quarter turn)."""
    mask = np.zeros((30, 40), dtype=np.uint8)
    mask[10:20, 5:25] = 1
    paths = [write_raster(tmp_path / name, array, transform=transform)
             for name, array in (("m.tif", mask), ("p.tif", mask.astype(np.float32)))]
    inventory = build_inventory(*paths)
    assert inventory.attributes["area_m2"][0] == pytest.approx(
        inventory.geometries[0].area, rel=1e-9)
    assert inventory.attributes["area_m2"][0] == pytest.approx(200 * 0.25, rel=1e-9)
    assert report_pixel_area(paths[0]) == pytest.approx(0.25, rel=1e-9)


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
    # GeoJSON as RFC 7946 has it: WGS 84, exteriors counter-clockwise, ids the GeoPackage's.
    meta, fids, _, fields = pyogrio.raw.read(out / "scene_landslides.gpkg", return_fids=True)
    areas = dict(zip(fids.tolist(), fields[list(meta["fields"]).index("area_m2")], strict=True))
    collection = json.loads((out / "scene_landslides.geojson").read_text())
    assert "crs" not in collection and len(collection["features"]) == len(areas) > 0
    for feature in collection["features"]:
        geometry = shape(feature["geometry"])
        assert all(shapely.is_ccw(part.exterior) for part in getattr(geometry, "geoms",
                                                                      [geometry]))
        minx, miny, maxx, maxy = geometry.bounds
        assert -180 <= minx <= maxx <= 180 and -90 <= miny <= maxy <= 90  # degrees, not UTM
        assert feature["properties"]["area_m2"] == pytest.approx(areas[feature["id"]])
    code, err = run_cli("predict", tiny_scene["image"], "--model", tiny_model, "--out", out,
                        "--format", "shp")
    assert code == 2 and "'shp' is not one of 'gpkg', 'geojson'" in err


def test_geojson_alone_leaves_no_geopackage_behind(tiny_scene, tiny_model, tmp_path,
                                                   run_cli) -> None:
    """The GeoJSON is copied from a GeoPackage written first; asked alone, that one goes."""
    out = tmp_path / "out"
    code, err = run_cli("predict", tiny_scene["image"], "--dem", tiny_scene["dem"], "--model",
                        tiny_model, "--out", out, "--tile", 48, "--overlap", 16, "--format",
                        "geojson", "--memory-mb", 64)
    assert code == 0, err
    names = {p.name for p in out.iterdir()}
    assert {"scene_landslides.geojson", "scene_mask.tif", "scene_prob.tif"} <= names
    assert not [name for name in names if name.endswith(".gpkg")], names
    assert "area_m2" in pyogrio.read_info(out / "scene_landslides.geojson")["fields"]


@pytest.mark.slow  # two training processes: 12 s of CPU
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


FAILING_RANK = """
import os, sys
from slidemap.errors import SlidemapError
from slidemap.train import loop
if os.environ["RANK"] == "1":
    def fail(config):
        raise SlidemapError("rank 1 cannot build its model")
    loop.initial_model = fail
from slidemap.cli import main
main()
"""


@pytest.mark.slow  # two training processes: 8 s of CPU
def test_a_rank_that_fails_stops_the_others_with_one_line(tiny_scene, tmp_path) -> None:
    """Rank 0, left waiting on rank 1 in a collective, ended in gloo's "Connection closed by
    peer" traceback under rank 1's one-line error."""
    config = tmp_path / "run.yaml"
    config.write_text(json.dumps({
        "data": {"train": [{k: str(tiny_scene[k]) for k in ("image", "mask", "dem")}]},
        "inputs": {"image_bands": [1, 2, 3], "slope": True},
        "model": {"name": "unet", "width": 4, "options": {"depth": 2}},
        "training": {"epochs": 1, "batch_size": 4, "tile": 32, "windows_per_epoch": 8,
                     "precision": "fp32"}}))
    script = tmp_path / "ranks.py"
    script.write_text(FAILING_RANK)
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    ranks = [subprocess.Popen(
        [sys.executable, str(script), "train", str(config), "--out", str(tmp_path / "run")],
        stderr=subprocess.PIPE, text=True,
        env={**ENV, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
             "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}) for rank in (0, 1)]
    errors = [process.communicate(timeout=120)[1] for process in ranks]
    assert [process.returncode for process in ranks] == [1, 1], errors
    assert errors[1].strip() == "error: rank 1 cannot build its model", errors[1]
    lines = [line for line in errors[0].splitlines() if line.strip()]
    assert "Traceback" not in errors[0] and [line for line in lines if "error" in line] == \
        lines[-1:] and lines[-1].startswith("error: rank 0 stopped: another of the 2 "), errors[0]
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_ddp_ranks_split_each_batch_without_overlap() -> None:
    from slidemap.train.ddp import Ranks, shard_batch

    batch = {"x": np.arange(7)[:, None] * np.ones((1, 3)), "valid": np.arange(7) % 2 == 0}
    parts = [shard_batch(batch, Ranks(rank, 3)) for rank in range(3)]
    assert sorted(np.concatenate([p["x"][:, 0] for p in parts]).tolist()) == list(range(7))
    small = {"x": np.zeros((1, 3))}
    assert all(len(shard_batch(small, Ranks(rank, 2))["x"]) == 1 for rank in range(2))


def _inventory(path: Path) -> tuple[list, dict[str, np.ndarray]]:
    meta, _, geometries, fields = pyogrio.raw.read(path)
    return list(geometries), dict(zip(meta["fields"], fields, strict=True))


def test_column_blocks_give_the_one_pass_maps_bit_for_bit(wide_scene, tiny_model, tmp_path,
                                                         monkeypatch) -> None:
    """A scene cut into column blocks (windows carried across their borders) is mapped exactly
    as in one pass, and no buffer is wider than a block's."""
    from slidemap.infer import predict, stream

    whole = api.predict(wide_scene["image"], tmp_path / "whole", wide_scene["dem"], tiny_model,
                        FP32)
    planned: list[stream.Grid] = []
    widths: list[int] = []
    blend = stream.blend_band

    def narrow(grid, channels, budget):
        planned.append(replace(grid, block_width=64))
        return planned[-1]

    def recorded(*args):
        band = blend(*args)
        widths.append(band.prob.shape[1])
        return band

    monkeypatch.setattr(predict, "plan_blocks", narrow)
    monkeypatch.setattr(stream, "blend_band", recorded)
    cut = api.predict(wide_scene["image"], tmp_path / "cut", wide_scene["dem"], tiny_model, FP32)
    blocks = planned[0].blocks
    assert len(blocks) == 3 and all(b.carried for b in blocks[1:])
    assert max(widths) == max(b.buffer_width for b in blocks) < 200
    for key in ("prob", "mask"):
        np.testing.assert_array_equal(read(cut.files[key]), read(whole.files[key]))
    (cut_shapes, cut_fields), (shapes, fields) = map(_inventory, (cut.inventory,
                                                                  whole.inventory))
    assert cut.landslides == whole.landslides > 0
    assert cut_shapes == shapes
    for name, values in fields.items():
        np.testing.assert_array_equal(cut_fields[name], values)
    assert not [p for p in (tmp_path / "cut").iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("height", [5000, 2_000_000])
def test_block_buffers_fit_the_budget_whatever_the_width(height) -> None:
    """At the shipped model's windows (512 working px at 2 m on 0.5 m imagery, overlap 128),
    a 50 000 px wide scene needs no more than a 5 000 px wide one, nor a 2 000 000 px wide one
    more than either; a smaller budget gives narrower blocks."""
    from slidemap.infer.budget import MemoryBudget
    from slidemap.infer.stream import Grid, buffer_bytes, plan_blocks

    def peak(width: int, budget: MemoryBudget) -> int:
        grid = plan_blocks(Grid.of(height, width, 512, 128, 4), 5, budget)
        return max(buffer_bytes(grid, 5, b.buffer_width) for b in grid.blocks)

    default, small = MemoryBudget(), MemoryBudget(384)
    narrow, wide, widest = (peak(w, default) for w in (5000, 50_000, 2_000_000))
    assert narrow <= default.bytes and wide <= default.bytes and widest <= default.bytes
    assert wide == widest
    assert peak(50_000, small) <= small.bytes < wide


def test_a_budget_too_small_for_one_window_is_one_line(tmp_path) -> None:
    from slidemap.errors import SlidemapError
    from slidemap.infer.budget import MemoryBudget
    from slidemap.infer.stream import Grid, plan_blocks

    with pytest.raises(SlidemapError, match="raise --memory-mb, or pass a smaller --tile"):
        plan_blocks(Grid.of(50_000, 50_000, 1024, 128, 4), 5, MemoryBudget(64))
    with pytest.raises(SlidemapError, match="--memory-mb 64 or more"):
        MemoryBudget(8)
    with pytest.raises(SlidemapError, match=r"MB is more than the .* MB this process may use"):
        MemoryBudget(2**40)


def test_running_out_of_memory_is_one_line(tiny_scene, tiny_model, tmp_path, run_cli,
                                           monkeypatch) -> None:
    def exhausted(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(api, "predict", exhausted)
    code, err = run_cli("predict", tiny_scene["image"], "--model", tiny_model, "--out",
                        tmp_path / "out")
    assert code == 1 and err.count("\n") == 1 and "out of memory: lower --memory-mb" in err


def test_pytorch_running_out_of_memory_is_one_line(tiny_scene, tiny_model, tmp_path, run_cli,
                                                   monkeypatch) -> None:
    """PyTorch's CPU allocator raises a RuntimeError (a --tile whose activations exceed the
    memory, beyond the budget): it was a traceback."""
    def exhausted(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: "
                           "can't allocate memory: you tried to allocate 29491200 bytes.")

    monkeypatch.setattr(api, "predict", exhausted)
    code, err = run_cli("predict", tiny_scene["image"], "--model", tiny_model, "--out",
                        tmp_path / "out")
    assert code == 1 and err.count("\n") == 1 and "out of memory: lower" in err, err
    assert "--tile" in err


def test_running_out_of_memory_names_no_option_the_command_has_not(tiny_scene, tmp_path,
                                                                   run_cli, monkeypatch) -> None:
    """evaluate has no --memory-mb: the line said to lower it (predict, evaluate, suggest)."""
    def exhausted(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(api, "evaluate", exhausted)
    code, err = run_cli("evaluate", tiny_scene["mask"], "--prediction", tiny_scene["mask"])
    assert code == 1 and err.count("\n") == 1 and "out of memory" in err, err
    assert "--memory-mb" not in err and "gdal_translate -srcwin" in err


@pytest.mark.parametrize(("command", "args", "hint"), [
    ("suggest", ["{model}", "{image}", "--out", "{out}/boxes.gpkg"],
     "lower --box, --batch-size or --memory-mb"),
    ("explain", ["{image}", "--model", "{model}", "--out", "{out}"], "pass a smaller --window"),
])
def test_running_out_of_memory_names_what_lowers_that_commands_memory(
        tiny_scene, tiny_model, tmp_path, run_cli, monkeypatch, command, args, hint) -> None:
    """suggest's boxes and explain's window go through the network whole (--box 4096: 5 GB;
    a 2048² px window: 7 GB): the line said to pass a smaller scene, which does not help."""
    def exhausted(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(api, command, exhausted)
    named = {"model": tiny_model, "image": tiny_scene["image"], "out": tmp_path / "out"}
    code, err = run_cli(command, *(a.format(**named) for a in args))
    assert code == 1 and err.count("\n") == 1 and f"out of memory: {hint}" in err, err


def test_a_huge_declared_raster_is_refused_before_anything_is_allocated(tiny_scene, tiny_model,
                                                                         tmp_path,
                                                                         run_cli) -> None:
    """A VRT of a kilobyte may declare 2 000 000² px: the budget is checked first."""
    with rasterio.open(tiny_scene["image"]) as ds:
        crs, count = ds.crs.to_wkt(), ds.count
    side = 2_000_000
    bands = "".join(
        f'<VRTRasterBand dataType="Byte" band="{b}"><SimpleSource><SourceFilename '
        f'relativeToVRT="0">{tiny_scene["image"]}</SourceFilename><SourceBand>{b}</SourceBand>'
        f"</SimpleSource></VRTRasterBand>" for b in range(1, count + 1))
    vrt = tmp_path / "huge.vrt"
    vrt.write_text(f'<VRTDataset rasterXSize="{side}" rasterYSize="{side}"><SRS>{crs}</SRS>'
                   f"<GeoTransform>469200, 0.5, 0, 3446200, 0, -0.5</GeoTransform>{bands}"
                   "</VRTDataset>")
    code, err = run_cli("predict", vrt, "--dem", tiny_scene["dem"], "--model", tiny_model,
                        "--out", tmp_path / "out")
    # (the tiny DEM covering almost none of it is worth its own warning line)
    lines = [line for line in err.splitlines() if line.strip() and "covers only" not in line]
    assert code == 1 and len(lines) == 1 and "memory budget" in lines[0], err
    assert not list((tmp_path / "out").glob("*"))


def test_relief_reaching_kilometres_is_refused_before_a_halo_is_read(tiny_scene, tmp_path,
                                                                      run_cli) -> None:
    """A model file may ask for relief within 100 km: each window's DEM halo is then the whole
    scene (2 GB for a 2500² px one, 21 GB measured on 8000² px): refused on one line against
    the budget, not read window after window."""
    model = save_model(tiny_bundle(InputSpec(image_bands=(1, 2, 3), relief_m=(100_000.0,)),
                                   mean=[60.0] * 4, std=[30.0] * 4), tmp_path / "far")
    image = declared_vrt(tiny_scene["image"], tmp_path / "image.vrt", 2500)
    dem = declared_vrt(tiny_scene["dem"], tmp_path / "dem.vrt", 2500)
    code, err = run_cli("predict", image, "--dem", dem, "--model", model, "--out",
                        tmp_path / "out")
    lines = [line for line in err.splitlines() if line.strip() and "covers only" not in line]
    assert code == 1 and len(lines) == 1, err
    assert "within 100000 m of each window" in lines[0] and "memory budget" in lines[0]
    assert not list((tmp_path / "out").glob("*"))


def _far_relief_model_and_large_scene(tiny_scene: dict[str, Path], folder: Path
                                      ) -> tuple[Path, Path, Path]:
    """A model reading relief within 100 km, and VRTs declaring the tiny scene 2500² px."""
    model = save_model(tiny_bundle(InputSpec(image_bands=(1, 2, 3), relief_m=(100_000.0,)),
                                   mean=[60.0] * 4, std=[30.0] * 4), folder / "far")
    image = declared_vrt(tiny_scene["image"], folder / "image.vrt", 2500)
    dem = declared_vrt(tiny_scene["dem"], folder / "dem.vrt", 2500)
    return model, image, dem


@pytest.mark.parametrize("command", [
    ("suggest", "{model}", "{image}", "--out", "{out}/boxes.gpkg", "--box", "512"),
    ("bench", "{image}", "--model", "{model}", "--tile", "512"),
    ("explain", "{image}", "--model", "{model}", "--out", "{out}"),
])
def test_every_window_reader_refuses_relief_reaching_kilometres_before_reading(
        command, tiny_scene, tmp_path, run_cli, monkeypatch) -> None:
    """suggest, bench and explain read windows with the same DEM halo as predict: a model with
    relief within 100 km is refused there too, on one line naming the window size's option,
    before any window is read (not gigabytes later)."""
    model, image, dem = _far_relief_model_and_large_scene(tiny_scene, tmp_path)
    reads: list[object] = []
    monkeypatch.setattr(Scene, "read", lambda *args, **kwargs: reads.append(args))
    names = {"model": model, "image": image, "out": tmp_path / "out"}
    code, err = run_cli(*(part.format(**names) for part in command), "--dem", dem)
    lines = [line for line in err.splitlines() if line.strip() and "covers only" not in line]
    assert code == 1 and len(lines) == 1, err
    assert "within 100000 m of each window" in lines[0] and "memory budget" in lines[0]
    option = {"suggest": "--box", "bench": "--tile", "explain": "--window"}[command[0]]
    assert f"the window size, {option}, sets the halo" in lines[0]
    assert not reads and not list((tmp_path / "out").glob("*"))


def _blobs(height: int, width: int) -> np.ndarray:
    """A mask with a 3 × 3 landslide every 8 × 8 px (strips of 12 rows cut some of them)."""
    mask = np.zeros((height, width), dtype=np.uint8)
    for top in range(2, height - 3, 8):
        for left in range(2, width - 3, 8):
            mask[top:top + 3, left:left + 3] = 1
    return mask


def test_inventory_holds_a_bounded_number_of_landslides(tmp_path, monkeypatch) -> None:
    """Finished landslides go to the GeoPackage as strips stop touching them: with 8 times as
    many landslides (a taller scene), no more pieces of landslides are alive at once, and no
    write takes more than a batch."""
    import weakref

    from slidemap.infer import vectorize

    monkeypatch.setattr(vectorize, "WRITE_BATCH", 32)
    alive: weakref.WeakSet = weakref.WeakSet()
    most = {"pieces": 0, "written": 0}

    class Counted(vectorize.Piece):
        def __post_init__(self) -> None:
            alive.add(self)
            most["pieces"] = max(most["pieces"], len(alive))

    write = pyogrio.raw.write

    def counted_write(path, geometry, *args, **kwargs):
        most["written"] = max(most["written"], len(geometry))
        return write(path, geometry, *args, **kwargs)

    monkeypatch.setattr(vectorize, "Piece", Counted)
    monkeypatch.setattr(pyogrio.raw, "write", counted_write)
    held, counts = [], []
    for height in (256, 2048):
        mask = _blobs(height, 128)
        paths = [write_raster(tmp_path / f"{name}{height}.tif", array) for name, array in
                 (("m", mask), ("p", mask.astype(np.float32)))]
        most.update(pieces=0, written=0)
        summary = vectorize.write_inventories(
            vectorize.slide_batches(*paths, strip_rows=12), [tmp_path / f"inv{height}.gpkg"])
        counts.append(summary["landslides"])
        held.append(dict(most))
        assert pyogrio.read_info(tmp_path / f"inv{height}.gpkg")["features"] == counts[-1]
    assert counts[1] > 7 * counts[0] > 0
    assert held[1] == held[0], held
    assert held[0]["written"] < 2 * 32


def test_a_slide_on_the_last_row_does_not_hold_the_others_back(tmp_path, monkeypatch) -> None:
    """A slide touching the scene's bottom row was kept open after the last strip, as if another
    followed, so the finished slides waiting behind it beyond ``WAITING_MAX`` were written
    first: read in one strip, a slide down the left edge came out 5955th of 10 051, not first.
    No slide is open after the last strip, so the ids follow the first pixels."""
    monkeypatch.setattr(vectorize, "WAITING_MAX", 4)
    mask = np.zeros((12, 12), dtype=np.uint8)
    mask[:, 0] = 1  # from the first row to the last
    mask[0::2, 2::2] = 1  # 30 slides of one pixel
    paths = [write_raster(tmp_path / "m.tif", mask),
             write_raster(tmp_path / "p.tif", mask.astype(np.float32))]
    inventory = build_inventory(*paths, strip_rows=12)
    first_pixels = [(-g.bounds[3], g.bounds[0]) for g in inventory.geometries]
    assert len(inventory) == 31 and first_pixels == sorted(first_pixels)
    assert inventory.attributes["pixels"][0] == 12


def test_streamed_inventory_is_the_one_of_a_single_strip(tmp_path) -> None:
    """Joining pieces across many thin strips gives the slides, attributes and order of one
    strip over the whole mask."""
    rng = np.random.default_rng(4)
    mask = (rng.random((90, 70)) < 0.45).astype(np.uint8)
    prob = rng.random((90, 70)).astype(np.float32)
    paths = [write_raster(tmp_path / "m.tif", mask), write_raster(tmp_path / "p.tif", prob)]
    one = build_inventory(*paths, strip_rows=90)
    thin = build_inventory(*paths, strip_rows=3)
    assert len(thin) == len(one) > 20
    for name, values in one.attributes.items():
        np.testing.assert_allclose(thin.attributes[name], values, rtol=1e-12)
    assert all(a.equals(b) for a, b in zip(thin.geometries, one.geometries, strict=True))
    # Areas to the bit, on grids whose pixel areas are not exact in binary: uniform (UTM,
    # Jinsha's steps) and varying by row (degrees).
    for crs, grid in (("EPSG:32647", Affine(0.500016294997776, 0, 470566.26, 0,
                                            -0.5002603569095455, 3444551.4)),
                      ("EPSG:4326", Affine(3.1e-6, 0, 100.1, 0, -2.9e-6, 30.3))):
        paths = [write_raster(tmp_path / "m.tif", mask, crs=crs, transform=grid),
                 write_raster(tmp_path / "p.tif", prob, crs=crs, transform=grid)]
        areas = [build_inventory(*paths, strip_rows=rows).attributes["area_m2"]
                 for rows in (90, 7, 3)]
        assert np.array_equal(areas[0], areas[1]) and np.array_equal(areas[0], areas[2])
    # Simplified too: from one vertex set and ring start, wherever the strips were cut.
    one = build_inventory(*paths, simplify_m=0.5, strip_rows=90)
    thin = build_inventory(*paths, simplify_m=0.5, strip_rows=3)
    assert all(a.equals_exact(b, 0) for a, b in zip(thin.geometries, one.geometries, strict=True))
    np.testing.assert_allclose(thin.attributes["perimeter_m"], one.attributes["perimeter_m"])


def test_simplified_neighbours_a_pixel_apart_do_not_overlap(tmp_path) -> None:
    """Each slide was simplified on its own, so two slides a pixel apart with ragged facing
    edges overlapped (0.2 m² here at --simplify 1): their summed area exceeded their union's.
    Outlines stay valid and apart, wherever the strips are cut; a lone slide keeps its
    simplified outline."""
    mask = np.zeros((16, 16), dtype=np.uint8)
    ends = np.array([8, 9, 6, 9, 7, 8, 8, 7, 9, 6, 7, 7])  # the left slide's, row by row
    starts = np.maximum.reduce([ends, np.r_[ends[1:], 0], np.r_[0, ends[:-1]]]) + 1
    for row, (end, start) in enumerate(zip(ends, starts, strict=True), start=2):
        mask[row, 2:end] = mask[row, start:14] = 1  # one or two pixels apart, never 4-connected
    paths = [write_raster(tmp_path / "m.tif", mask),
             write_raster(tmp_path / "p.tif", mask.astype(np.float32))]
    for strip_rows in (16, 3):
        inventory = build_inventory(*paths, simplify_m=1.0, strip_rows=strip_rows)
        outlines = np.array(inventory.geometries, dtype=object)
        assert len(outlines) == 2 and shapely.is_valid(outlines).all()
        assert shapely.area(shapely.intersection(*outlines)) == 0
    lone = mask.copy()
    lone[:, 8:] = 0
    paths = [write_raster(tmp_path / "m.tif", lone),
             write_raster(tmp_path / "p.tif", lone.astype(np.float32))]
    alone = build_inventory(*paths, simplify_m=1.0).geometries[0]
    pixels = build_inventory(*paths).geometries[0]
    assert alone.equals_exact(shapely.simplify(pixels, 1.0, preserve_topology=True), 0)


def test_a_slide_cut_back_from_its_neighbours_stays_one_polygon(tmp_path) -> None:
    """An L of three pixels simplified to a triangle and cut back from the slides diagonal to it
    came out as two triangles meeting at a point (a MultiPolygon): a slide the cut parts keeps
    its pixels, so every slide is one polygon and no two overlap."""
    mask = np.array([[0, 0, 1, 0, 1, 1], [0, 1, 0, 1, 0, 0], [1, 0, 1, 1, 1, 1],
                     [1, 1, 0, 1, 1, 0], [0, 0, 0, 1, 1, 0], [0, 1, 0, 0, 0, 0]], dtype=np.uint8)
    paths = [write_raster(tmp_path / "m.tif", mask),
             write_raster(tmp_path / "p.tif", mask.astype(np.float32))]
    outlines = np.array(build_inventory(*paths, simplify_m=1.0).geometries, dtype=object)
    assert (shapely.get_type_id(outlines) == 3).all() and shapely.is_valid(outlines).all()
    first, second = np.triu_indices(len(outlines), 1)
    assert shapely.area(shapely.intersection(outlines[first], outlines[second])).max() == 0


def test_a_neighbour_diagonal_to_a_slide_at_a_block_corner_counts(tmp_path) -> None:
    """The slide's own pixels were cleared from each block of the mask read around it by its
    outline clipped to the block: one that met the block only at a corner clipped to a point,
    and burnt the neighbour's pixel diagonal to it, so that pixel did not hold the cut back."""
    mask = np.zeros((20, 20), dtype=np.uint8)
    mask[2:10, 2:10] = 1
    mask[10, 10] = 1  # the neighbour, diagonal to the slide's corner
    own = shapely.box(2, 2, 10, 10)
    own_geojson = shapely.geometry.mapping(own)
    with rasterio.open(write_raster(tmp_path / "m.tif", mask)) as ds:
        for window in (Window(10, 10, 5, 5), Window(10, 0, 5, 15), Window(0, 10, 15, 5),
                       Window(0, 0, 20, 20)):
            found = vectorize._other_pixels(ds, window, (own, own_geojson))
            assert [round(shapely.area(g) / 0.25) for g in found] == [1], window


def test_a_cut_geos_cannot_compute_keeps_the_pixel_outline(tmp_path) -> None:
    """Noisy slides on a grid rotated 25° at --simplify 3: GEOS's overlay of the cut raised a
    TopologyException ("found non-noded intersection"), a traceback out of predict. The slide
    whose cut fails keeps its pixel outline: every slide one valid polygon, none overlapping."""
    rng = np.random.default_rng(1)
    for _ in range(8):  # the eighth draw of this generator is one GEOS fails on
        mask = (rng.random((60, 70)) < 0.45).astype(np.uint8)
    rotated = Affine.translation(500000, 4000000) @ Affine.rotation(25) @ Affine.scale(2, -2)
    paths = [write_raster(tmp_path / "m.tif", mask, transform=rotated),
             write_raster(tmp_path / "p.tif", mask.astype(np.float32), transform=rotated)]
    outlines = np.array(build_inventory(*paths, simplify_m=3.0).geometries, dtype=object)
    assert (shapely.get_type_id(outlines) == 3).all() and shapely.is_valid(outlines).all()
    first, second = shapely.STRtree(outlines).query(outlines, predicate="intersects")
    pairs = first < second
    overlap = shapely.area(shapely.intersection(outlines[first[pairs]], outlines[second[pairs]]))
    assert overlap.max(initial=0.0) < 1e-9


def test_two_memory_budgets_give_the_same_inventory(tmp_path) -> None:
    """--memory-mb sets the strips the inventory is cut into, and a slide's probabilities and
    slopes were summed strip by strip: probabilities far below 1 (a low --threshold) and the
    small slopes of flat ground gave means that differed in the last bits."""
    rng = np.random.default_rng(0)
    height, width = 400, 2000
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[:, 5::40] = mask[:, 6::40] = 1  # 50 slides 2 px wide, from top to bottom
    prob = (rng.random((height, width)) ** 8).astype(np.float32)  # of many binary exponents
    runs = 10.0 ** -(np.arange(height) // 20 % 10)  # ground ever flatter, 20 rows at a time
    dem = (rng.random((height, width)) * runs[:, None]).astype(np.float32)
    paths = [write_raster(tmp_path / name, array) for name, array in
             (("m.tif", mask), ("p.tif", prob), ("dem.tif", dem))]
    small, large = MemoryBudget(64), MemoryBudget(512)
    assert vectorize.strip_rows_for(width, small) < height <= vectorize.strip_rows_for(width,
                                                                                     large)
    inventories = [list(vectorize.slide_batches(*paths[:2], dem=paths[2], budget=budget))
                   for budget in (small, large)]
    cut, whole = ({name: np.concatenate([b.attributes[name] for b in batches])
                   for name in batches[0].attributes} for batches in inventories)
    assert len(whole["pixels"]) == 50
    for name, values in whole.items():
        np.testing.assert_array_equal(cut[name], values, err_msg=name)


def test_slide_across_strips_is_one_polygon_on_an_inexact_grid(tmp_path) -> None:
    """On a grid whose origin and steps are not exact in binary (the Jinsha scenes': 0.50026 m
    rows), a strip border computed from the strip above and the one computed from the strip
    below differed in the last bit: a slide crossing three strip borders came out as parts a
    hair apart, its seams drawn in QGIS and counted twice in ``perimeter_m``."""
    mask = np.zeros((40, 12), dtype=np.uint8)
    mask[2:38, 3:9] = 1  # one 36 × 6 px slide across a dozen strip borders
    grid = Affine(0.500016294997776, 0.0, 470566.26378899766, 0.0, -0.5002603569095455,
                  3444551.4020464704)
    paths = [write_raster(tmp_path / name, array, transform=grid)
             for name, array in (("m.tif", mask), ("p.tif", mask.astype(np.float32)))]
    whole = build_inventory(*paths, strip_rows=40)
    strips = build_inventory(*paths, strip_rows=3)
    assert len(strips) == 1 and strips.geometries[0].geom_type == "Polygon"
    assert strips.geometries[0].equals(whole.geometries[0])
    assert strips.attributes["perimeter_m"][0] == pytest.approx(
        2 * (36 * abs(grid.e) + 6 * grid.a), rel=1e-9)


def test_unsimplified_outlines_are_the_same_whatever_the_strips(tmp_path) -> None:
    """With --simplify 0 a slide cut by strip borders kept a vertex on each side of every
    border, its rings started elsewhere and its centroid moved in the last digits, so the
    GeoPackage changed with --memory-mb; slides touching only at a corner stay two, a hole
    stays a hole."""
    mask = np.zeros((40, 16), dtype=np.uint8)
    mask[2:38, 3:9] = 1  # a 36 × 6 px slide across a dozen strip borders …
    mask[10:14, 5:7] = 0  # … with a hole
    mask[6:9, 9:12] = 1  # a slide touching it along an edge: one slide
    mask[38:40, 9:12] = 1  # and one touching it only at a corner, across a border: two
    grid = Affine(0.500016294997776, 0.0, 470566.26378899766, 0.0, -0.5002603569095455,
                  3444551.4020464704)
    paths = [write_raster(tmp_path / name, array, transform=grid)
             for name, array in (("m.tif", mask), ("p.tif", mask.astype(np.float32)))]
    whole = build_inventory(*paths, strip_rows=40)
    assert len(whole) == 2 and shapely.get_num_interior_rings(whole.geometries[0]) == 1
    for strip_rows in (1, 2, 3, 19):
        strips = build_inventory(*paths, strip_rows=strip_rows)
        assert len(strips) == 2
        for cut, one in zip(strips.geometries, whole.geometries, strict=True):
            assert cut.equals_exact(one, 0), (strip_rows, cut, one)
        for name, values in whole.attributes.items():
            if name != "area_m2":  # summed strip by strip: equal to 1e-12
                np.testing.assert_array_equal(strips.attributes[name], values, err_msg=name)
    assert shapely.get_num_coordinates(whole.geometries[0]) == 9 + 5  # no seam vertex


def test_inventory_terrain_is_the_whole_dems_whatever_the_blocks_read(tmp_path, monkeypatch
                                                                      ) -> None:
    """Slope and elevation are read only in blocks that hold landslide pixels, each with its own
    halo: every slide's mean slope and elevation range are those of the whole DEM's slope over
    its pixels, DEM holes skipped, for blocks that cut slides and strips alike."""
    rng = np.random.default_rng(7)
    mask = (ndimage.uniform_filter(rng.random((70, 90)), 5) > 0.52).astype(np.uint8)
    rows, cols = np.mgrid[0:70, 0:90]
    dem = (2000 + 0.3 * cols + 0.02 * rows**2 + rng.normal(0, 0.2, (70, 90))).astype(np.float32)
    dem[30:34, 40:47] = np.nan  # a hole inside the slides: skipped, not spread
    paths = [write_raster(tmp_path / "m.tif", mask, nodata=255),
             write_raster(tmp_path / "p.tif", mask.astype(np.float32), nodata=float("nan")),
             write_raster(tmp_path / "d.tif", dem, nodata=float("nan"))]
    labels, count = ndimage.label(mask == 1, structure=vectorize.FOUR_CONNECTED)
    assert count > 5 and np.isin(labels[30:34, 40:47], np.arange(1, count + 1)).any()
    slope = slope_degrees(dem, (0.5, 0.5))
    ids = np.arange(1, count + 1)
    finite = np.isfinite(slope)
    expected_slope = ndimage.mean(slope, np.where(finite, labels, 0), ids)
    known = np.isfinite(dem)
    expected_range = (ndimage.maximum(dem, np.where(known, labels, 0), ids)
                      - ndimage.minimum(dem, np.where(known, labels, 0), ids))
    for block, strip_rows in ((256, 70), (7, 11), (16, 5)):
        monkeypatch.setattr(vectorize, "TERRAIN_BLOCK", block)
        inventory = build_inventory(paths[0], paths[1], strip_rows=strip_rows, dem=paths[2])
        assert len(inventory) == count
        np.testing.assert_allclose(inventory.attributes["mean_slope_deg"], expected_slope,
                                   rtol=1e-6)
        np.testing.assert_allclose(inventory.attributes["elev_range_m"], expected_range,
                                   rtol=1e-6)


@pytest.mark.skipif(sys.platform != "linux", reason="only Linux renices a single thread")
def test_helper_threads_run_below_the_model_threads_priority() -> None:
    """Reading, blending and writing beside the model must yield the core to it, not share it."""
    before = os.getpriority(os.PRIO_PROCESS, 0)
    with helper_pool("slidemap-test") as pool:
        helper = pool.submit(os.getpriority, os.PRIO_PROCESS, 0).result()
    assert helper == min(before + HELPER_NICENESS, 19)
    assert os.getpriority(os.PRIO_PROCESS, 0) == before


def test_bench_agreement_and_inventory_are_those_of_what_predict_writes(tiny_scene, tiny_model,
                                                                         tmp_path) -> None:
    """ONNX against torch differs by float rounding, not by the uint8 steps the stored maps
    round to (0 here, before); the inventory counted is the one predict writes, specks below
    its minimum area dropped (at the median probability the untrained model's mask is all
    specks)."""
    options = PredictOptions(tile=48, overlap=16, batch_size=3, precision="fp32")
    first = api.predict(tiny_scene["image"], tmp_path / "first", tiny_scene["dem"], tiny_model,
                        options, prob_dtype="float32")
    options = replace(options, threshold=float(np.nanmedian(read(first.prob))))
    mapped = api.predict(tiny_scene["image"], tmp_path / "map", tiny_scene["dem"], tiny_model,
                         options)
    figures = api.bench(tiny_scene["image"], tiny_scene["dem"], tiny_model,
                        replace(options, backend="onnx"), sample=1, agreement=True).figures
    assert 0 < figures["agreement_vs_fp32"]["max_abs_diff"] < 1e-5
    assert figures["landslides"] == mapped.landslides


def test_bench_refuses_a_sample_beyond_the_memory_budget_before_reading(
        tiny_scene, tiny_model, tmp_path, run_cli, monkeypatch) -> None:
    """bench --sample holds its windows until they are timed: 100 000 windows of 512 px of a
    large scene were read one after the other until memory ran out (4.5 GB and an out of
    memory error under a 5 GB limit). Now refused on one line before any window is read."""
    image = declared_vrt(tiny_scene["image"], tmp_path / "image.vrt", 8000)
    dem = declared_vrt(tiny_scene["dem"], tmp_path / "dem.vrt", 8000)
    reads: list[object] = []
    monkeypatch.setattr(Scene, "read", lambda *args, **kwargs: reads.append(args))
    code, err = run_cli("bench", image, "--dem", dem, "--model", tiny_model, "--tile", "512",
                        "--sample", "100000")
    lines = [line for line in err.splitlines() if line.strip() and "covers only" not in line]
    assert code == 1 and len(lines) == 1, err
    assert "--sample 100000" in lines[0] and "memory budget of 512 MB" in lines[0]
    assert not reads


def test_adapting_refuses_relief_reaching_kilometres_before_a_chunk_is_read(
        tiny_scene, tmp_path, run_cli, monkeypatch) -> None:
    """predict --adapt reads chunks of the scene to adapt on before predict's own check runs:
    each chunk's DEM halo of a model with relief within 100 km was the whole scene, read
    chunk after chunk past the memory budget. Now refused on one line before any is read."""
    model, image, dem = _far_relief_model_and_large_scene(tiny_scene, tmp_path)
    reads: list[object] = []
    monkeypatch.setattr(Scene, "read", lambda *args, **kwargs: reads.append(args))
    code, err = run_cli("predict", image, "--dem", dem, "--model", model, "--adapt", "--out",
                        tmp_path / "out")
    lines = [line for line in err.splitlines() if line.strip() and "covers only" not in line]
    assert code == 1 and len(lines) == 1, err
    assert "within 100000 m of each window" in lines[0] and "memory budget" in lines[0]
    assert "the window size" not in lines[0] and "raise --memory-mb" in lines[0]
    assert not reads and not list((tmp_path / "out").glob("*"))
