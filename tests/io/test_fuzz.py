"""Property-based tests: whatever a sidecar, a run config or a raster's header holds, reading it
ends in a value or in one ``SlidemapError`` line, never in another exception.

Deterministic (``derandomize``) and small, so they run in CI in seconds, not minutes.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from factories import tiny_bundle, write_raster
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rasterio.windows import Window

from slidemap.data.scene import Scene
from slidemap.errors import SlidemapError
from slidemap.io.modelfile import load_model, model_paths, save_model
from slidemap.io.sidecar import header_shapes
from slidemap.schema.config import parse_config, read_yaml

FUZZ = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12)


def assert_one_line(exc: SlidemapError) -> None:
    message = str(exc)
    assert message and "\n" not in message, message


def mutated(base: dict, path: tuple[str, ...], value: Any, delete: bool) -> dict:
    """``base`` (deep-copied) with the value at ``path`` replaced by ``value`` or deleted."""
    copy = json.loads(json.dumps(base))
    node = copy
    for key in path[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    if delete:
        node.pop(path[-1], None)
    else:
        node[path[-1]] = value
    return copy


def key_paths(raw: dict, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = []
    for key, value in raw.items():
        paths.append((*prefix, key))
        if isinstance(value, dict):
            paths += key_paths(value, (*prefix, key))
    return paths


# -- sidecars -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fuzz-model")
    bundle = tiny_bundle(mean=[60.0, 60.0, 60.0, 10.0], std=[30.0, 30.0, 30.0, 5.0])
    return save_model(bundle, root / "base")


def _load_with_sidecar(model_file: Path, text: bytes, name: str) -> None:
    weights = model_file.with_name(f"{name}.safetensors")
    if not weights.exists():
        shutil.copy(model_file, weights)
    model_paths(weights)[1].write_bytes(text)
    try:
        load_model(weights)
    except SlidemapError as exc:
        assert_one_line(exc)


@FUZZ
@given(data=st.data(), value=JSON, delete=st.booleans())
def test_sidecar_with_any_one_field_changed(model_file: Path, data: st.DataObject, value: Any,
                                            delete: bool) -> None:
    base = json.loads(model_paths(model_file)[1].read_text())
    base.pop("weights_sha256")  # so a changed field, not the digest, decides
    path = data.draw(st.sampled_from(key_paths(base)))
    text = json.dumps(mutated(base, path, value, delete), allow_nan=True)
    _load_with_sidecar(model_file, text.encode(), "field")


@FUZZ
@given(value=JSON)
def test_sidecar_of_any_json(model_file: Path, value: Any) -> None:
    _load_with_sidecar(model_file, json.dumps(value, allow_nan=True).encode(), "any")


@FUZZ
@given(text=st.binary(max_size=300))
def test_sidecar_of_any_bytes(model_file: Path, text: bytes) -> None:
    _load_with_sidecar(model_file, text, "bytes")


@FUZZ
@given(data=st.data())
def test_weights_header_of_any_bytes(model_file: Path, data: st.DataObject) -> None:
    """The weights' header, damaged anywhere in its first bytes: header_shapes raises
    ValueError only, load_model SlidemapError only."""
    original = model_file.read_bytes()
    length = int.from_bytes(original[:8], "little")
    damaged = bytearray(original)
    for _ in range(data.draw(st.integers(1, 6))):
        position = data.draw(st.integers(0, 8 + length - 1))
        damaged[position] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        damaged = damaged[:data.draw(st.integers(0, len(damaged)))]
    with contextlib.suppress(ValueError):
        header_shapes(bytes(damaged))
    weights = model_file.with_name("header.safetensors")
    weights.write_bytes(bytes(damaged))
    sidecar = json.loads(model_paths(model_file)[1].read_text())
    sidecar.pop("weights_sha256")
    model_paths(weights)[1].write_text(json.dumps(sidecar))
    try:
        load_model(weights)
    except SlidemapError as exc:
        assert_one_line(exc)


# -- run configs --------------------------------------------------------------------------------

BASE_CONFIG = {
    "name": "fuzz",
    "data": {"train": [{"image": "a.tif", "mask": "a_mask.tif", "dem": "a_dem.tif"}],
             "val": [{"image": "b.tif", "mask": "b_mask.tif"}]},
    "inputs": {"image_bands": [1, 2, 3], "dem": False, "slope": True, "resolution_m": None},
    "model": {"name": "unet", "width": 8, "options": {"depth": 2}},
    "loss": {"bce": 1.0, "dice": 1.0},
    "training": {"epochs": 2, "batch_size": 2, "tile": 64, "windows_per_epoch": 4, "lr": 0.01,
                 "threads": 1, "seed": 0, "random_scale": [0.8, 1.2],
                 "colour_jitter": {"brightness": 0.2}, "mixup": 0.0},
    "predict": {"tile": 64, "overlap": 16, "scales": [1.0], "threshold": 0.5},
}


@FUZZ
@given(data=st.data(), value=JSON, delete=st.booleans())
def test_config_with_any_one_setting_changed(data: st.DataObject, value: Any,
                                             delete: bool) -> None:
    path = data.draw(st.sampled_from(key_paths(BASE_CONFIG)))
    try:
        parse_config(mutated(BASE_CONFIG, path, value, delete), Path("fuzz.yaml"))
    except SlidemapError as exc:
        assert_one_line(exc)


@FUZZ
@given(value=JSON)
def test_config_of_any_structure(value: Any) -> None:
    if not isinstance(value, dict):
        value = {"training": value}
    try:
        parse_config(value, Path("fuzz.yaml"))
    except SlidemapError as exc:
        assert_one_line(exc)


YAML_PIECES = st.sampled_from(["a: ", "&x ", "*x", "[", "]", "{", "}", ", ", "- ", "\n", "  ",
                               "!!python/object:os.system ", "!!binary ", "? ", ": ", "'", '"',
                               "1e400", ".nan", "2026-13-45", "0x", "<<: *x", "|", ">", "#",
                               "\t", "\x00", "\ufeff", "~", "null", "training:", "lr: "])


@FUZZ
@given(pieces=st.lists(YAML_PIECES | st.text(max_size=4), max_size=30))
def test_yaml_of_any_text(tmp_path_factory: pytest.TempPathFactory, pieces: list[str]) -> None:
    path = tmp_path_factory.getbasetemp() / "fuzz.yaml"
    path.write_text("".join(pieces), encoding="utf-8", errors="surrogatepass")
    try:
        parse_config(read_yaml(path), path)
    except SlidemapError as exc:
        assert_one_line(exc)


# -- raster headers -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def geotiff(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    rng = np.random.default_rng(0)
    path = write_raster(tmp_path_factory.mktemp("fuzz-raster") / "small.tif",
                        rng.integers(0, 255, size=(3, 24, 24)).astype(np.uint8), nodata=0)
    return path.read_bytes()


@FUZZ
@given(data=st.data())
def test_raster_with_a_damaged_header(tmp_path_factory: pytest.TempPathFactory, geotiff: bytes,
                                      data: st.DataObject) -> None:
    """A GeoTIFF whose header and directory bytes are changed: opening it and reading a window
    ends in arrays or in one SlidemapError line."""
    damaged = bytearray(geotiff)
    header = min(len(damaged), 512)
    for _ in range(data.draw(st.integers(1, 8))):
        damaged[data.draw(st.integers(0, header - 1))] = data.draw(st.integers(0, 255))
    path = tmp_path_factory.getbasetemp() / "damaged.tif"
    path.write_bytes(bytes(damaged))
    try:
        with warnings.catch_warnings(), Scene(path) as scene:
            warnings.simplefilter("ignore")
            window = Window(0, 0, min(scene.width, 16), min(scene.height, 16))
            sample = scene.read(window, (1,))
            assert sample["image"].shape[0] == 1 and math.isfinite(scene.height)
    except SlidemapError as exc:
        assert_one_line(exc)
