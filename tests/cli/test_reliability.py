"""Reliability: bad input, interruptions, and model files that cannot run code.

Every failure a user can cause must end with exactly one ``error: ...`` line on stderr that names
the offending file or option, a non-zero exit code, no traceback and no output file that looks
complete. The CLI runs in child processes; to keep some forty of them fast, most are forked from
one helper process that has imported slidemap (and torch) once: each child still gets its own
stdout/stderr files, argv and exit status, exactly like ``python -m slidemap``. A few cases, and
every case when ``SLIDEMAP_TEST_EXEC=1``, run the real ``python -m slidemap``.

All fixtures are tiny rasters, models and configs written here into a temporary folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import resource
import select
import shutil
import signal
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import rasterio
import torch
from factories import REPO, read_prob, reproject_raster, run_config, tiny_bundle, write_raster
from rasterio.errors import NotGeoreferencedWarning
from rasterio.transform import from_origin
from safetensors.torch import load_file

from slidemap.data.channels import InputSpec
from slidemap.errors import SlidemapError
from slidemap.io.modelfile import load_model, save_model

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1", "NO_COLOR": "1",
       "COLUMNS": "400", "PYTHONPATH": str(REPO / "src")}
ALWAYS_EXEC = os.environ.get("SLIDEMAP_TEST_EXEC") == "1"
TIMEOUT_S = 120
SIZE = 96
TRANSFORM = from_origin(471000.0, 3442000.0, 0.5, 0.5)  # UTM 47N, Jinsha valley, 0.5 m pixels
NATIVE_DIAGNOSTIC = re.compile(r"^(_?TIFF\w*|_tiff\w*|ERROR \d+): ")
OUTPUT_GLOBS = ("*_prob.tif", "*_mask.tif", "*.gpkg", "*.partial*", "*.staged*", "metrics.json")


# -- running the CLI in child processes ---------------------------------------------------------

@dataclass
class Result:
    rc: int
    stdout: str
    stderr: str

    def lines(self) -> list[str]:
        """Non-blank stderr lines (progress bars leave none when stderr is not a terminal)."""
        return [line for line in self.stderr.splitlines() if line.strip()]


FORK_SERVER = r"""
import importlib, json, os, sys, traceback
import torch
import slidemap.cli
# What commands import or set up lazily, once (AdamW imports torch._dynamo: seconds). Only
# imports: no thread is started, so forking stays safe.
for name in ("slidemap.train.loop", "slidemap.explain.run", "slidemap.report.plots",
             "matplotlib.pyplot"):
    try:
        importlib.import_module(name)
    except ImportError:
        pass
torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))])

for line in sys.stdin:
    request = json.loads(line)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.chdir(request["cwd"])
            for fd, name in ((1, "stdout"), (2, "stderr")):
                target = os.open(request[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(target, fd)
                os.close(target)
            sys.argv = ["slidemap", *request["args"]]
            exec(request["prelude"], {})
            slidemap.cli.main()
            code = 0
        except SystemExit as exc:
            if exc.code is None or isinstance(exc.code, int):
                code = exc.code or 0
            else:
                print(exc.code, file=sys.stderr)
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    sys.stdout.write(json.dumps({"rc": os.waitstatus_to_exitcode(status)}) + "\n")
    sys.stdout.flush()
"""


class Cli:
    """Runs ``slidemap ARGS`` in a child process: forked from a warm helper, or exec'd."""

    def __init__(self, scratch: Path) -> None:
        self.scratch = scratch
        self.count = 0
        self.server: subprocess.Popen | None = None

    def start(self) -> subprocess.Popen:
        if self.server is None or self.server.poll() is not None:
            self.server = subprocess.Popen(
                [sys.executable, "-c", FORK_SERVER], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, text=True, env=ENV, cwd=self.scratch)
        return self.server

    def __call__(self, *args: object, prelude: str = "", exec_: bool = False,
                 preexec_fn: Callable[[], None] | None = None) -> Result:
        argv = [str(a) for a in args]
        if exec_ or ALWAYS_EXEC or preexec_fn is not None:
            assert not prelude, "a prelude needs the fork server"
            done = subprocess.run([sys.executable, "-m", "slidemap", *argv], env=ENV,
                                  cwd=self.scratch, capture_output=True, text=True,
                                  timeout=TIMEOUT_S, preexec_fn=preexec_fn, check=False)
            return Result(done.returncode, done.stdout, done.stderr)
        self.count += 1
        out, err = (self.scratch / f"run{self.count}.{s}" for s in ("out", "err"))
        server = self.start()
        assert server.stdin is not None and server.stdout is not None
        request = {"args": argv, "cwd": str(self.scratch), "stdout": str(out),
                   "stderr": str(err), "prelude": prelude}
        server.stdin.write(json.dumps(request) + "\n")
        server.stdin.flush()
        ready, _, _ = select.select([server.stdout], [], [], TIMEOUT_S)
        if not ready:
            server.kill()
            pytest.fail(f"slidemap {' '.join(argv)} ran longer than {TIMEOUT_S} s")
        reply = server.stdout.readline()
        assert reply, "the CLI fork server died"
        return Result(json.loads(reply)["rc"], out.read_text(), err.read_text())

    def close(self) -> None:
        if self.server is not None and self.server.poll() is None:
            assert self.server.stdin is not None
            self.server.stdin.close()
            self.server.wait(timeout=30)


def assert_one_line_error(result: Result, *names: object) -> str:
    """Non-zero exit, one ``error:`` line naming every one of ``names``, no traceback."""
    text = result.stdout + result.stderr
    assert "Traceback" not in text, text
    assert result.rc != 0, f"expected a failure, got exit 0:\n{text}"
    lines = result.lines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{result.stderr}"
    line = lines[0]
    assert line.startswith("error: "), line
    for name in names:
        assert str(name) in line, f"{name!s} is not named in: {line}"
    # Usage errors (unknown option, bad value, options that do not go together) exit 2 and
    # point to --help; every other failure exits 1.
    assert result.rc == (2 if line.endswith("--help'") else 1), f"exit {result.rc} for: {line}"
    return line


def assert_ok(result: Result) -> None:
    text = result.stdout + result.stderr
    assert result.rc == 0 and "Traceback" not in text, f"exit {result.rc}:\n{text}"


# -- fixtures written by the tests --------------------------------------------------------------

def write_tif(path: Path, array: np.ndarray, nodata: float | None = None,
              crs: str | None = "EPSG:32647", transform=TRANSFORM, **creation: object) -> Path:
    """A raster on this file's grid (``nodata`` comes third, as the scene builder reads)."""
    return write_raster(path, array, crs, transform, nodata, **creation)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Payload:
    """Unpickling this creates ``marker``: the proof that loading a file ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple:
        return (open, (self.marker, "w"))


def make_scene(root: Path) -> SimpleNamespace:
    rng = np.random.default_rng(0)
    image = rng.integers(30, 100, size=(3, SIZE, SIZE)).astype(np.uint8)
    labels = np.zeros((SIZE, SIZE), dtype=np.uint8)
    labels[30:70, 40:80] = 1
    image[:, 30:70, 40:80] += 120
    border = np.ones((SIZE, SIZE), dtype=bool)
    border[4:-4, 4:-4] = False
    image[:, border] = 0
    labels[border] = 255
    rows, cols = np.mgrid[0:SIZE, 0:SIZE]
    dsm = (3000.0 + 0.3 * cols + 4.0 * np.sin(rows / 6.0)).astype(np.float32)
    dsm[border] = np.nan
    prob = np.where(labels == 1, 0.8, 0.2).astype(np.float32)
    prob[border] = np.nan
    s = SimpleNamespace(root=root)
    s.image = write_tif(root / "image.tif", image, 0)
    s.dem = write_tif(root / "dsm.tif", dsm, float("nan"))
    s.mask = write_tif(root / "mask.tif", labels, 255)
    s.prob = write_tif(root / "prob.tif", prob, float("nan"))
    s.image_1band = write_tif(root / "one_band.tif", image[:1], 0)
    s.image_nocrs = write_tif(root / "no_crs.tif", image, 0, crs=None)
    with warnings.catch_warnings():  # no georeference at all is the point
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        s.image_nogeo = write_tif(root / "no_georeference.tif", image, 0, crs=None,
                                  transform=rasterio.Affine.identity())
    s.image_nodata = write_tif(root / "all_nodata.tif", np.zeros_like(image), 0)
    s.image_small = write_tif(root / "small.tif", image[:, 8:28, 8:28], 0)
    s.image_u16 = write_tif(root / "uint16.tif", image.astype(np.uint16) * 250, 0)
    s.image_f32 = write_tif(root / "float32.tif", image.astype(np.float32) / 255, 0)
    weird = labels.copy()
    weird[10:12, 10:12] = 7
    s.mask_7 = write_tif(root / "labels_7.tif", weird, 255)
    holes = dsm.copy()
    holes[40:50, 40:50] = np.nan
    holes[20, 60] = np.inf
    holes[21, 61] = -np.inf
    s.dem_holes = write_tif(root / "dsm_nan_inf.tif", holes, float("nan"))
    far = TRANSFORM @ rasterio.Affine.translation(200_000, 0)  # 100 km east
    s.dem_far = write_tif(root / "dsm_far.tif", dsm, float("nan"), transform=far)
    s.mask_far = write_tif(root / "mask_far.tif", labels, 255, transform=far)
    s.dem_4326 = reproject_raster(s.dem, root / "dsm_4326.tif", "EPSG:4326")
    s.corrupt = root / "corrupt.tif"
    s.corrupt.write_bytes(rng.bytes(6000))
    s.image_trunc = truncated_copy(s.image, root / "image_truncated.tif")
    s.dem_trunc = truncated_copy(s.dem, root / "dsm_truncated.tif")
    s.folder = root / "folder.tif"
    s.folder.mkdir()
    s.plain_file = root / "notes.txt"
    s.plain_file.write_text("a regular file, not a folder\n")
    return s


def truncated_copy(src: Path, dst: Path) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) // 2])
    return dst


def make_models(root: Path) -> SimpleNamespace:
    spec = InputSpec(image_bands=(1, 2, 3), dem=True, slope=True, resolution_m=None)
    bundle = tiny_bundle(spec, mean=[80.0, 80.0, 80.0, 3015.0, 15.0],
                         std=[50.0] * 3 + [10.0, 10.0])
    m = SimpleNamespace(bundle=bundle)
    m.good = save_model(bundle, root / "model")
    sidecar = json.loads(m.good.with_suffix(".json").read_text())

    def variant(name: str, sidecar_text: str | None) -> Path:
        weights = root / f"{name}.safetensors"
        shutil.copy(m.good, weights)
        if sidecar_text is not None:
            weights.with_suffix(".json").write_text(sidecar_text)
        return weights

    m.bad_json = variant("bad_json", '{"format": "slidemap-model", "architecture": ')
    m.json_list = variant("json_list", "[1, 2, 3]\n")
    m.wrong_shape = variant("wrong_shape", json.dumps({**sidecar, "width": 8}))
    m.unknown_arch = variant("unknown_arch", json.dumps({**sidecar, "architecture": "nope"}))
    bad_norm = {**sidecar, "normalisation": {"mean": [1.0, 2.0], "std": [1.0, 2.0]}}
    m.bad_norm = variant("bad_norm", json.dumps(bad_norm))
    m.no_sidecar = variant("no_sidecar", None)
    m.missing = root / "missing_model.safetensors"
    m.pt = root / "model.pt"
    torch.save(bundle.model.state_dict(), m.pt)
    m.marker = root / "PWNED"
    payload = pickle.dumps({"state_dict": Payload(m.marker)})
    m.payload_pt = root / "payload.pt"
    m.payload_pt.write_bytes(payload)
    m.payload_st = root / "payload.safetensors"
    m.payload_st.write_bytes(payload)
    m.payload_st.with_suffix(".json").write_text(json.dumps(sidecar))
    return m


def config_text(s: SimpleNamespace, epochs: int = 2, **changes: object) -> str:
    scene = {"image": s.image, "dem": s.dem, "mask": s.mask}
    raw = run_config(
        [scene], [scene], name="tiny",
        inputs={"image_bands": [1, 2, 3], "dem": True, "slope": True, "resolution_m": None},
        loss={"bce": 1.0, "dice": 1.0},
        training={"epochs": epochs, "batch_size": 2, "tile": 32, "windows_per_epoch": 4,
                  "lr": 0.01, "min_valid": 0.25, "precision": "fp32", "threads": 1, "seed": 0},
        predict={"tile": 64, "overlap": 16, "batch_size": 4})
    for dotted, value in changes.items():
        *parents, key = dotted.split("__")
        node = raw
        for parent in parents:
            node = node[parent]
        node[key] = value
    return json.dumps(raw, indent=1)  # JSON is YAML


def make_configs(root: Path, s: SimpleNamespace) -> SimpleNamespace:
    def write(name: str, text: str) -> Path:
        path = root / f"{name}.yaml"
        path.write_text(text)
        return path

    scene = {"image": str(s.image), "dem": str(s.dem), "mask": str(s.mask)}
    c = SimpleNamespace()
    c.good = write("tiny", config_text(s))
    c.three_epochs = write("tiny3", config_text(s, epochs=3))
    c.wider = write("wider", config_text(s, model__width=8))
    c.malformed = write("malformed", "name: tiny\ndata:\n  train: [image: a.tif\n  mask: [\n")
    c.a_list = write("a_list", "- image: a.tif\n- mask: b.tif\n")
    c.empty = write("empty", "# nothing here\n")
    c.unknown_model = write("unknown_model", config_text(s, model__name="unet3000"))
    c.unknown_loss = write("unknown_loss", config_text(s, loss={"bce": 1.0, "focl": 1.0}))
    raw = json.loads(config_text(s))
    raw["trainig"] = raw.pop("training")
    c.unknown_key = write("unknown_key", json.dumps(raw))
    c.unknown_setting = write("unknown_setting", config_text(s, training__epoch=3))
    c.wrong_type = write("wrong_type", config_text(s, training__epochs="ten"))
    c.labels_7 = write("labels_7", config_text(
        s, data={"train": [{**scene, "mask": str(s.mask_7)}]}))
    c.missing_image = write("missing_image", config_text(
        s, data={"train": [{**scene, "image": str(root / "nowhere.tif")}]}))
    c.all_nodata = write("all_nodata", config_text(
        s, data={"train": [{**scene, "image": str(s.image_nodata)}]}))
    c.corrupt_dem = write("corrupt_dem", config_text(
        s, data={"train": [{**scene, "dem": str(s.corrupt)}]}))
    return c


@pytest.fixture(scope="module")
def w(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    """The world of the tests: scene rasters, models, configs and a CLI runner."""
    root = tmp_path_factory.mktemp("reliability")
    scratch = root / "cli"
    scratch.mkdir()
    cli = Cli(scratch)
    cli.start()  # imports in the background while the fixtures are written
    scene = make_scene(root)
    world = SimpleNamespace(**vars(scene), models=make_models(root), cli=cli)
    world.configs = make_configs(root, scene)
    world.hashes = {p: sha256(p) for p in root.iterdir() if p.is_file()}
    yield world
    world.cli.close()
    changed = [p.name for p, h in world.hashes.items() if sha256(p) != h]
    assert not changed, f"inputs were modified: {changed}"


def predict_args(w: SimpleNamespace, out: Path, image: Path | None = None,
                 dem: Path | None = None, model: Path | None = None) -> list:
    return ["predict", image or w.image, "--dem", dem or w.dem, "--model", model or w.models.good,
            "--out", out, "--tile", 32, "--overlap", 8]


def leftovers(folder: Path) -> list[str]:
    if not folder.exists():
        return []
    return sorted(p.name for pattern in OUTPUT_GLOBS for p in folder.glob(pattern))


# -- 1. the matrix of bad inputs ----------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    """A CLI call that must fail with one line naming ``names``; built from the world ``w``."""

    args: Callable[[SimpleNamespace, Path], list]
    names: Callable[[SimpleNamespace], list]
    exec_: bool = False  # run through the real ``python -m slidemap`` as well


def _predict(image: str | None = None, dem: str | None = None, model: str | None = None,
             extra: tuple = ()) -> Callable[[SimpleNamespace, Path], list]:
    def args(w: SimpleNamespace, out: Path) -> list:
        pick = lambda name: getattr(w, name) if name else None  # noqa: E731
        mod = getattr(w.models, model) if model else None
        return [*predict_args(w, out, pick(image), pick(dem), mod), *extra]
    return args


def _train(config: str, extra: tuple = ()) -> Callable[[SimpleNamespace, Path], list]:
    return lambda w, out: ["train", getattr(w.configs, config), "--out", out, *extra]


CASES: dict[str, Case] = {
    # predict: rasters
    "predict-missing-image": Case(
        lambda w, out: predict_args(w, out, image=w.root / "nowhere.tif"),
        lambda w: ["nowhere.tif", "does not exist"]),
    "predict-image-is-a-folder": Case(_predict(image="folder"), lambda w: [w.folder, "folder"]),
    "predict-corrupt-image": Case(_predict(image="corrupt"), lambda w: [w.corrupt]),
    "predict-truncated-image": Case(_predict(image="image_trunc"), lambda w: [w.image_trunc]),
    "predict-truncated-dem": Case(_predict(dem="dem_trunc"), lambda w: [w.dem_trunc]),
    "predict-corrupt-dem": Case(_predict(dem="corrupt"), lambda w: [w.corrupt, "DEM"]),
    "predict-missing-dem": Case(
        lambda w, out: predict_args(w, out, dem=w.root / "no_dsm.tif"),
        lambda w: ["no_dsm.tif", "DEM"]),
    "predict-image-without-crs": Case(_predict(image="image_nocrs"),
                                      lambda w: [w.image_nocrs, "CRS"]),
    "predict-image-without-georeference": Case(_predict(image="image_nogeo"),
                                               lambda w: [w.image_nogeo, "CRS"]),
    "predict-dem-does-not-overlap": Case(_predict(dem="dem_far"),
                                         lambda w: [w.dem_far, "overlap"]),
    "predict-model-needs-a-dem": Case(
        lambda w, out: ["predict", w.image, "--model", w.models.good, "--out", out],
        lambda w: ["--dem"]),
    "predict-one-band-image-for-a-three-band-model": Case(
        _predict(image="image_1band"), lambda w: [w.image_1band, "band"]),
    "predict-all-nodata-scene": Case(_predict(image="image_nodata"),
                                     lambda w: [w.image_nodata, "nodata"]),
    "predict-scene-smaller-than-the-model-minimum": Case(
        _predict(image="image_small"), lambda w: [w.image_small, "too small"]),
    # predict: outputs
    "predict-out-below-a-regular-file": Case(
        lambda w, out: predict_args(w, w.plain_file / "sub"), lambda w: [w.plain_file]),
    # predict: model files
    "predict-pickle-model": Case(_predict(model="pt"), lambda w: [w.models.pt, "pickle"],
                                 exec_=True),
    "predict-missing-model": Case(_predict(model="missing"), lambda w: [w.models.missing]),
    "predict-malformed-sidecar": Case(
        _predict(model="bad_json"), lambda w: [w.models.bad_json.with_suffix(".json")]),
    "predict-sidecar-is-a-list": Case(
        _predict(model="json_list"), lambda w: [w.models.json_list.with_suffix(".json")]),
    "predict-weights-do-not-match-sidecar": Case(
        _predict(model="wrong_shape"), lambda w: [w.models.wrong_shape, "do not match"]),
    "predict-sidecar-unknown-architecture": Case(
        _predict(model="unknown_arch"),
        lambda w: [w.models.unknown_arch.with_suffix(".json"), "nope"]),
    "predict-sidecar-wrong-normalisation": Case(
        _predict(model="bad_norm"), lambda w: [w.models.bad_norm.with_suffix(".json")]),
    "predict-missing-sidecar": Case(
        _predict(model="no_sidecar"), lambda w: [w.models.no_sidecar.with_suffix(".json")]),
    # predict: options
    "predict-precision-fp64": Case(_predict(extra=("--precision", "fp64")),
                                   lambda w: ["--precision", "fp64"]),
    "predict-unknown-option": Case(_predict(extra=("--precison", "fp32")),
                                   lambda w: ["--precison"]),
    "predict-negative-tile": Case(_predict(extra=("--tile", "-5")), lambda w: ["--tile"]),
    "predict-image-as-dem": Case(_predict(dem="image"), lambda w: [w.image, "3 bands"]),
    # evaluate
    "evaluate-labels-with-value-7": Case(
        lambda w, out: ["evaluate", w.mask_7, "--prediction", w.prob],
        lambda w: [w.mask_7, "[7]"]),
    "evaluate-model-on-labels-with-value-7": Case(
        lambda w, out: ["evaluate", w.mask_7, "--image", w.image, "--dem", w.dem, "--model",
                        w.models.good, "--out", out],
        lambda w: [w.mask_7, "[7]"]),
    "evaluate-missing-truth": Case(
        lambda w, out: ["evaluate", w.root / "no_truth.tif", "--prediction", w.prob],
        lambda w: ["no_truth.tif"]),
    "evaluate-corrupt-prediction": Case(
        lambda w, out: ["evaluate", w.mask, "--prediction", w.corrupt], lambda w: [w.corrupt]),
    "evaluate-truth-does-not-overlap": Case(
        lambda w, out: ["evaluate", w.mask_far, "--prediction", w.prob],
        lambda w: [w.mask_far, "overlap"]),
    "evaluate-nothing-to-score": Case(lambda w, out: ["evaluate", w.mask],
                                      lambda w: ["--prediction", "--image"]),
    "evaluate-pickle-model": Case(
        lambda w, out: ["evaluate", w.mask, "--image", w.image, "--dem", w.dem, "--model",
                        w.models.payload_pt, "--out", out],
        lambda w: [w.models.payload_pt, "pickle"]),
    "evaluate-precision-fp64": Case(
        lambda w, out: ["evaluate", w.mask, "--prediction", w.prob, "--precision", "fp64"],
        lambda w: ["--precision", "fp64"]),
    # export, bench and the scale-out options of predict
    "export-pickle-model": Case(
        lambda w, out: ["export", w.models.payload_pt, "--out", out / "m.onnx"],
        lambda w: [w.models.payload_pt, "pickle"]),
    "export-missing-model": Case(
        lambda w, out: ["export", w.root / "none.safetensors", "--out", out / "m.onnx"],
        lambda w: ["none.safetensors"]),
    "bench-missing-image": Case(
        lambda w, out: ["bench", w.root / "none.tif", "--model", w.models.good],
        lambda w: ["none.tif"]),
    "bench-one-band-image-for-a-three-band-model": Case(
        lambda w, out: ["bench", w.image_1band, "--dem", w.dem, "--model", w.models.good],
        lambda w: [w.image_1band, "band"]),
    "predict-unknown-backend": Case(_predict(extra=("--backend", "tensorrt")),
                                    lambda w: ["--backend", "tensorrt"]),
    "predict-unknown-inventory-format": Case(_predict(extra=("--format", "shp")),
                                             lambda w: ["shp", "geojson"]),
    # train
    "train-missing-config": Case(lambda w, out: ["train", w.root / "none.yaml", "--out", out],
                                 lambda w: ["none.yaml"]),
    "train-config-is-a-folder": Case(lambda w, out: ["train", w.folder, "--out", out],
                                     lambda w: [w.folder]),
    "train-malformed-yaml": Case(_train("malformed"), lambda w: [w.configs.malformed, "YAML"]),
    "train-yaml-is-a-list": Case(_train("a_list"), lambda w: [w.configs.a_list, "mapping"]),
    "train-yaml-is-empty": Case(_train("empty"), lambda w: [w.configs.empty]),
    "train-unknown-model": Case(_train("unknown_model"),
                                lambda w: [w.configs.unknown_model, "unet3000"]),
    "train-unknown-loss": Case(_train("unknown_loss"),
                               lambda w: [w.configs.unknown_loss, "focl"]),
    "train-unknown-section": Case(_train("unknown_key"),
                                  lambda w: [w.configs.unknown_key, "trainig"]),
    "train-unknown-setting": Case(_train("unknown_setting"),
                                  lambda w: [w.configs.unknown_setting, "epoch"]),
    "train-setting-of-wrong-type": Case(_train("wrong_type"),
                                        lambda w: [w.configs.wrong_type, "epochs"]),
    "train-labels-with-value-7": Case(_train("labels_7"), lambda w: [w.mask_7, "[7]"]),
    "train-missing-image": Case(_train("missing_image"), lambda w: ["nowhere.tif"]),
    "train-all-nodata-scene": Case(_train("all_nodata"), lambda w: [w.image_nodata]),
    "train-corrupt-dem": Case(_train("corrupt_dem"), lambda w: [w.corrupt]),
    "train-out-below-a-regular-file": Case(
        lambda w, out: ["train", w.configs.good, "--out", w.plain_file / "run"],
        lambda w: [w.plain_file]),
    "train-resume-without-checkpoint": Case(
        _train("good", ("--resume",)),
        lambda w: [w.root / "out" / "train-resume-without-checkpoint", "--resume"]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_fails_with_one_line(w: SimpleNamespace, name: str) -> None:
    case = CASES[name]
    out = w.root / "out" / name
    before = {p: sha256(p) for p in w.hashes}
    result = w.cli(*case.args(w, out))
    assert_one_line_error(result, *case.names(w))
    assert leftovers(out) == [], "a failed run left outputs behind"
    assert not out.exists(), "a failed run left its output folder behind"
    assert not w.models.marker.exists()
    if case.exec_ and not ALWAYS_EXEC:  # the real entry point says the same
        again = w.cli(*case.args(w, out), exec_=True)
        assert again.lines() == result.lines() and again.rc == result.rc
    assert {p: sha256(p) for p in w.hashes} == before


def test_explain_refuses_bad_input(w: SimpleNamespace) -> None:
    """explain refuses a pickled model and a truncated image on one line each (it skipped, as
    an optional command not yet there, whenever the CLI registered no 'explain')."""
    out = w.root / "out" / "explain"
    result = w.cli("explain", w.image, "--dem", w.dem, "--model", w.models.payload_pt, "--out",
                   out)
    assert_one_line_error(result, w.models.payload_pt)
    assert leftovers(out) == []
    result = w.cli("explain", w.image_trunc, "--dem", w.dem, "--model", w.models.good, "--out",
                   out)
    assert_one_line_error(result, w.image_trunc)
    assert not w.models.marker.exists()


# -- inputs that must work ----------------------------------------------------------------------

def _read_outputs(out: Path, stem: str) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities (decoded, NaN nodata) and mask."""
    with rasterio.open(out / f"{stem}_mask.tif") as mask:
        return read_prob(out / f"{stem}_prob.tif"), mask.read(1)


@pytest.mark.parametrize("variant", ["dem_4326", "dem_holes", "image_u16", "image_f32"])
def test_unusual_but_valid_inputs_work(w: SimpleNamespace, variant: str) -> None:
    out = w.root / "out" / f"ok-{variant}"
    image = getattr(w, variant) if variant.startswith("image") else w.image
    dem = getattr(w, variant) if variant.startswith("dem") else w.dem
    assert_ok(w.cli(*predict_args(w, out, image, dem)))
    prob, mask = _read_outputs(out, image.stem)
    inside = np.zeros(prob.shape, dtype=bool)
    inside[6:-6, 6:-6] = True  # a reprojected DEM loses a pixel or so at the edges
    assert np.isfinite(prob[inside]).mean() > 0.9
    assert np.isnan(prob[:4]).all() and (mask[:4] == 255).all()  # image nodata border
    assert set(np.unique(mask)) <= {0, 1, 255}
    if variant == "dem_holes":  # NaN and ±inf in the DEM are nodata in the outputs
        assert np.isnan(prob[40:50, 40:50]).all() and (mask[40:50, 40:50] == 255).all()
        assert np.isnan(prob[20, 60]) and np.isnan(prob[21, 61])
        assert np.isfinite(prob[60:80, 10:30]).all()  # NaN did not spread through the model


def test_existing_outputs_need_overwrite(w: SimpleNamespace) -> None:
    out = w.root / "out" / "overwrite"
    assert_ok(w.cli(*predict_args(w, out)))
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    refused = w.cli(*predict_args(w, out))
    assert_one_line_error(refused, out / "image_prob.tif", "--overwrite")
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps
    assert_ok(w.cli(*predict_args(w, out), "--overwrite"))
    assert sorted(p.name for p in out.iterdir()) == sorted(stamps)

    metrics_out = w.root / "out" / "overwrite-metrics"
    score = ["evaluate", w.mask, "--prediction", w.prob, "--out", metrics_out]
    assert_ok(w.cli(*score))
    assert_one_line_error(w.cli(*score), metrics_out / "metrics.json", "--overwrite")
    assert_ok(w.cli(*score, "--overwrite"))


def test_outputs_never_overwrite_inputs(w: SimpleNamespace) -> None:
    out = w.root / "out" / "clash"
    out.mkdir(parents=True)
    dem = out / "image_prob.tif"  # the DEM sits where the probability raster would go
    shutil.copy(w.dem, dem)
    digest = sha256(dem)
    for extra in ((), ("--overwrite",)):
        result = w.cli(*predict_args(w, out, dem=dem), *extra)
        assert_one_line_error(result, dem, "input")
    assert sha256(dem) == digest and sorted(p.name for p in out.iterdir()) == [dem.name]


def test_existing_run_needs_overwrite_or_resume(w: SimpleNamespace) -> None:
    out = w.root / "out" / "run-twice"
    out.mkdir(parents=True)
    (out / "model.safetensors").write_bytes(b"an earlier run's model")
    result = w.cli("train", w.configs.good, "--out", out)
    assert_one_line_error(result, out, "--overwrite")
    assert (out / "model.safetensors").read_bytes() == b"an earlier run's model"

    assert_ok(w.cli("train", w.configs.good, "--out", out, "--overwrite"))
    assert load_file(str(out / "model.safetensors"))  # a real model replaced the fake one
    # Resuming a run with a config that does not fit its checkpoint (wider model) is refused,
    # naming the setting.
    result = w.cli("train", w.configs.wider, "--out", out, "--resume")
    assert_one_line_error(result, out, "model.width", "config")
    # So is one with a longer schedule (another number of optimiser steps): no traceback.
    result = w.cli("train", w.configs.good, "--out", out, "--resume", "--set",
                   "training.epochs=7")
    assert_one_line_error(result, out, "training.epochs")


def test_read_only_output_folder(w: SimpleNamespace) -> None:
    if os.geteuid() == 0:
        pytest.skip("running as root: permissions do not block writes (the case of an output "
                    "folder below a regular file covers unwritable outputs for root too)")
    out = w.root / "out" / "read-only"
    out.mkdir(parents=True)
    out.chmod(0o555)
    try:
        assert_one_line_error(w.cli(*predict_args(w, out)), out)
        assert leftovers(out) == []
    finally:
        out.chmod(0o755)


def test_disk_full_while_writing(w: SimpleNamespace) -> None:
    """A file-size limit makes every write past 1 KB fail like a full disk would."""
    out = w.root / "out" / "disk-full"
    out.mkdir(parents=True)

    def limit_file_size() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write, do not kill
        resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))

    result = w.cli(*predict_args(w, out), preexec_fn=limit_file_size)
    # libtiff's own print of the failed write ("_tiffWriteProc: File too large.") is switched
    # off (io/rasters.py quiet_libtiff): ours must be the only line.
    native = [line for line in result.lines() if NATIVE_DIAGNOSTIC.match(line)]
    line = assert_one_line_error(result, out / "image_prob.tif", "disk space")
    assert ".partial" not in line and ".staged" not in line
    assert native == []
    assert leftovers(out) == []


# -- 2. atomic outputs --------------------------------------------------------------------------

def _fail_on_second_call(exc: BaseException) -> Callable:
    """A ``RasterOutputs.write`` that writes the first band of rows, then raises ``exc``."""
    from slidemap.io.rasters import RasterOutputs

    original, calls = RasterOutputs.write, [0]

    def write(*args: object, **kwargs: object) -> None:
        calls[0] += 1
        if calls[0] == 2:
            raise exc
        return original(*args, **kwargs)

    return write


@pytest.mark.parametrize("where", ["raster-write", "disk-full", "inventory", "ctrl-c"])
def test_failed_predict_leaves_no_output(w: SimpleNamespace, tmp_path: Path, where: str,
                                         monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture) -> None:
    import errno

    import slidemap.cli
    import slidemap.infer.vectorize as vectorize
    from slidemap.io import rasters

    out = tmp_path / "out"
    inputs = [w.image, w.dem, w.models.good, w.models.good.with_suffix(".json")]
    before = [sha256(p) for p in inputs]
    if where == "raster-write":
        monkeypatch.setattr(rasters.RasterOutputs, "write",
                            _fail_on_second_call(SlidemapError("boom mid-scene")))
    elif where == "disk-full":
        monkeypatch.setattr(rasters.RasterOutputs, "write", _fail_on_second_call(
            OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(out / "image_prob.tif"))))
    elif where == "ctrl-c":
        monkeypatch.setattr(rasters.RasterOutputs, "write",
                            _fail_on_second_call(KeyboardInterrupt()))
    else:
        def broken(*args: object, **kwargs: object) -> None:
            Path(args[0]).write_bytes(b"half a geopackage")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(args[0]))
        monkeypatch.setattr(vectorize.pyogrio.raw, "write", broken)
    monkeypatch.setattr(sys, "argv", ["slidemap", *map(str, predict_args(w, out))])
    with pytest.raises(SystemExit) as exit_info:
        slidemap.cli.main()
    assert exit_info.value.code == (130 if where == "ctrl-c" else 1)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    if where in ("disk-full", "inventory"):
        assert "disk space" in lines[0]
    assert not out.exists() or not list(out.iterdir()), list(out.iterdir())
    assert [sha256(p) for p in inputs] == before


def test_sigterm_mid_predict_leaves_no_output(w: SimpleNamespace, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture) -> None:
    """``timeout``, ``docker stop`` and batch schedulers stop a run with SIGTERM: it ends as
    Ctrl-C does, its staged outputs removed, not as a process killed with hidden temporaries
    left in the folder. The signal comes while the rasters and inventory are staged."""
    import slidemap.cli
    import slidemap.workflows.predict as predict_workflow

    def unhandled(signum: int, frame: object) -> None:
        raise RuntimeError("SIGTERM reached the handler in place before slidemap ran")

    def terminate(path: Path) -> None:
        os.kill(os.getpid(), signal.SIGTERM)

    out = tmp_path / "out"
    monkeypatch.setattr(predict_workflow, "write_qml", terminate)
    monkeypatch.setattr(sys, "argv", ["slidemap", *map(str, predict_args(w, out))])
    previous = signal.signal(signal.SIGTERM, unhandled)
    try:
        with pytest.raises(SystemExit) as exit_info:
            slidemap.cli.main()
        assert signal.getsignal(signal.SIGTERM) is unhandled  # restored after the run
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert exit_info.value.code == 143
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert lines == ["error: terminated: no half-written file was kept"]
    assert not out.exists() or not list(out.iterdir()), list(out.iterdir())


def test_failed_overwrite_keeps_the_previous_outputs(w: SimpleNamespace, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from slidemap import api
    from slidemap.infer.predict import PredictOptions
    from slidemap.io import rasters

    out = tmp_path / "out"
    options = PredictOptions(tile=32, overlap=8, precision="fp32")
    api.predict(w.image, out, w.dem, w.models.good, options)
    before = {p.name: sha256(p) for p in out.iterdir()}
    monkeypatch.setattr(rasters.RasterOutputs, "write",
                        _fail_on_second_call(SlidemapError("boom mid-scene")))
    with pytest.raises(SlidemapError, match="boom"):
        api.predict(w.image, out, w.dem, w.models.good, options, overwrite=True)
    assert {p.name: sha256(p) for p in out.iterdir()} == before


def test_killed_predict_leaves_nothing_that_looks_complete(w: SimpleNamespace) -> None:
    out = w.root / "out" / "killed-predict"
    prelude = (
        "import os, signal\n"
        "from slidemap.io.rasters import RasterOutputs\n"
        "_write, _n = RasterOutputs.write, [0]\n"
        "def write(self, *a, **k):\n"
        "    _n[0] += 1\n"
        "    if _n[0] == 2:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return _write(self, *a, **k)\n"
        "RasterOutputs.write = write\n"
    )
    result = w.cli(*predict_args(w, out), prelude=prelude)
    assert result.rc == -signal.SIGKILL
    names = sorted(p.name for p in out.iterdir())
    assert not [n for n in names if n.endswith(("_prob.tif", "_mask.tif", ".gpkg"))], names
    assert all(n.startswith(".") and ".partial" in n for n in names), names


# -- 3. resume after kill -9 --------------------------------------------------------------------

KILL_IN_EPOCH_2 = """
import os, signal
from slidemap.data.dataset import RandomWindows
_epoch = RandomWindows.epoch
def epoch(self, number, batch_size):
    for index, batch in enumerate(_epoch(self, number, batch_size)):
        if number == 2 and index == 1:  # epoch 1 is checkpointed, epoch 2 took one step
            os.kill(os.getpid(), signal.SIGKILL)
        yield batch
RandomWindows.epoch = epoch
"""


def assert_same_tensors(a: Path, b: Path) -> None:
    first, second = load_file(str(a)), load_file(str(b))
    assert sorted(first) == sorted(second)
    different = [k for k in first if not torch.equal(first[k], second[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def _history(run: Path) -> list[list[str]]:
    rows = [line.split(",") for line in (run / "history.csv").read_text().splitlines()]
    seconds = rows[0].index("seconds")
    return [row[:seconds] + row[seconds + 1:] for row in rows]


def test_resume_after_kill_gives_the_same_weights(w: SimpleNamespace) -> None:
    straight = w.root / "out" / "straight"
    assert_ok(w.cli("train", w.configs.three_epochs, "--out", straight))

    run = w.root / "out" / "killed"
    killed = w.cli("train", w.configs.three_epochs, "--out", run, prelude=KILL_IN_EPOCH_2)
    assert killed.rc == -signal.SIGKILL, killed.stderr
    assert json.loads((run / "checkpoint.json").read_text())["state"]["epoch"] == 1
    assert len((run / "history.csv").read_text().splitlines()) == 2
    assert not list(run.glob("*.partial*"))

    assert_ok(w.cli("train", w.configs.three_epochs, "--out", run, "--resume"))
    assert_same_tensors(straight / "checkpoint.safetensors", run / "checkpoint.safetensors")
    assert_same_tensors(straight / "model.safetensors", run / "model.safetensors")
    meta = [json.loads((r / "checkpoint.json").read_text()) for r in (straight, run)]
    for m in meta:  # times differ; everything else is the same run
        m["state"].pop("seconds")
        m["state"].pop("wall_seconds")
    assert meta[0] == meta[1]
    assert _history(straight) == _history(run)


# -- 4. model files that could run code ---------------------------------------------------------

def test_payload_is_live(tmp_path: Path) -> None:
    """The payload used below really runs code when unpickled: the refusals are meaningful."""
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(Payload(marker)))  # running the payload is the point here
    assert marker.exists()


def test_pickle_payloads_are_never_loaded(w: SimpleNamespace) -> None:
    m = w.models
    with pytest.raises(SlidemapError, match="pickle"):
        load_model(m.payload_pt)
    with pytest.raises(SlidemapError, match="not a valid safetensors"):
        load_model(m.payload_st)
    with pytest.raises(SlidemapError, match="pickle"):
        load_model(m.pt)
    assert_one_line_error(w.cli(*predict_args(w, w.root / "out" / "payload-pt",
                                              model=m.payload_pt)), m.payload_pt, "pickle")
    assert_one_line_error(w.cli(*predict_args(w, w.root / "out" / "payload-st",
                                              model=m.payload_st)), m.payload_st, "safetensors")
    assert not m.marker.exists()


# -- 5. determinism -----------------------------------------------------------------------------

def test_same_seed_same_weights_and_same_map(w: SimpleNamespace) -> None:
    runs = [w.root / "out" / f"same-seed-{i}" for i in (1, 2)]
    for run in runs:
        assert_ok(w.cli("train", w.configs.good, "--out", run))
    assert_same_tensors(runs[0] / "model.safetensors", runs[1] / "model.safetensors")
    assert_same_tensors(runs[0] / "checkpoint.safetensors", runs[1] / "checkpoint.safetensors")

    maps = []
    for i in (1, 2):
        out = w.root / "out" / f"same-map-{i}"
        assert_ok(w.cli(*predict_args(w, out, model=runs[0] / "model.safetensors")))
        maps.append(_read_outputs(out, "image"))
    np.testing.assert_array_equal(maps[0][0], maps[1][0])  # NaN == NaN here
    np.testing.assert_array_equal(maps[0][1], maps[1][1])


def test_seed_option_replaces_the_configs_seed(w: SimpleNamespace) -> None:
    seeded = w.root / "out" / "seed-1"
    assert_ok(w.cli("train", w.configs.good, "--out", seeded, "--seed", "1"))
    provenance = json.loads((seeded / "model.json").read_text())["provenance"]
    assert provenance["config"]["training"]["seed"] == 1
    default = w.root / "out" / "same-seed-1"
    if not default.exists():
        assert_ok(w.cli("train", w.configs.good, "--out", default))
    with pytest.raises(AssertionError):
        assert_same_tensors(seeded / "model.safetensors", default / "model.safetensors")


def test_model_files_are_readable_like_any_other_file(w: SimpleNamespace) -> None:
    """safetensors writes private (0600) files; a saved model follows the umask instead."""
    umask = os.umask(0o022)
    os.umask(umask)
    for path in (w.models.good, w.models.good.with_suffix(".json")):
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, oct(path.stat().st_mode)
