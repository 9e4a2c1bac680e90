"""A model file is checked field by field, and against its weights' header, before anything is
built from it: one wrong value gives one line naming the sidecar, never a traceback, a network of
gigabytes or a silently wrong map."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from factories import rewrite_sidecar
from safetensors.torch import load_file, save_file
from torch.nn.modules.module import register_module_parameter_registration_hook

from slidemap.errors import SlidemapError
from slidemap.io import modelfile
from slidemap.io.modelfile import load_model, model_paths, save_model
from slidemap.io.sidecar import MAX_MEMBERS, MAX_WIDTH, header_shapes

CASES = {
    "negative width": {"width": -4},
    "width a string": {"width": "4"},
    "width beyond the cap": {"width": MAX_WIDTH + 1},
    "members beyond the cap": {"members": MAX_MEMBERS + 1},
    "members huge": {"members": 100_000},
    "members zero": {"members": 0},
    "band 0": {"inputs": {"image_bands": [0, 1, 2], "slope": True}},
    "band -1": {"inputs": {"image_bands": [-1, 2, 3], "slope": True}},
    "no bands": {"inputs": {"image_bands": [], "slope": True}},
    "repeated band": {"inputs": {"image_bands": [1, 1, 2], "slope": True}},
    "dem as text": {"inputs": {"image_bands": [1, 2, 3], "slope": "yes"}},
    "resolution NaN": {"inputs": {"image_bands": [1, 2, 3], "slope": True,
                                  "resolution_m": math.nan}},
    "resolution as text": {"inputs": {"image_bands": [1, 2, 3], "slope": True,
                                      "resolution_m": "2m"}},
    "threshold 2": {"threshold": 2.0},
    "threshold NaN": {"threshold": math.nan},
    "every std 0": {"normalisation": {"mean": [60.0] * 4, "std": [0.0] * 4}},
    "std infinite": {"normalisation": {"mean": [60.0] * 4, "std": [math.inf] * 4}},
    "mean text": {"normalisation": {"mean": ["a"] * 4, "std": [1.0] * 4}},
    "in_channels wrong": {"in_channels": 7},
    "predict tile 1": {"predict": {"tile": 1, "overlap": 0, "scales": [1.0]}},
    "predict overlap past tile": {"predict": {"tile": 64, "overlap": 64, "scales": [1.0]}},
    "predict scales NaN": {"predict": {"tile": 64, "overlap": 16, "scales": [math.nan]}},
    "options not a mapping": {"options": [2]},
    "option beyond the cap": {"options": {"depth": 10**9}},
    "provenance a list": {"provenance": []},
    "digest not hex": {"weights_sha256": "xyz"},
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_wrong_sidecar_field_is_one_line_naming_the_sidecar(tiny_model: Path,
                                                              case: str) -> None:
    rewrite_sidecar(tiny_model, **CASES[case])
    with pytest.raises(SlidemapError) as caught:
        load_model(tiny_model)
    message = str(caught.value)
    assert "\n" not in message
    assert str(model_paths(tiny_model)[1]) in message


def test_the_network_is_never_built_before_the_weights_header_matches(
        tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A sidecar asking for a wide network beside small weights fails on torch's meta device:
    nothing of the wide network's size is allocated."""
    devices = []
    build = modelfile.build_network

    def spy(*args: object, **kwargs: object) -> torch.nn.Module:
        devices.append(torch.empty(0).device.type)
        return build(*args, **kwargs)

    monkeypatch.setattr(modelfile, "build_network", spy)
    rewrite_sidecar(tiny_model, width=MAX_WIDTH, weights_sha256=None)
    with pytest.raises(SlidemapError, match="do not match their sidecar"):
        load_model(tiny_model)
    assert devices == ["meta"]
    devices.clear()
    rewrite_sidecar(tiny_model, width=4)
    load_model(tiny_model)
    assert devices == ["meta", "cpu"]


def test_a_network_that_outgrows_its_weights_is_refused_while_it_is_built(
        tiny_model: Path) -> None:
    """The meta device spares tensors' memory, not modules': a sidecar asking for SegFormer
    stages of thousands of blocks beside a small file built them for minutes, into gigabytes,
    before the shapes were compared. Building stops at twice the file's tensors."""
    tensors = len(load_file(str(tiny_model)))
    registered = []
    handle = register_module_parameter_registration_hook(
        lambda module, name, parameter: registered.append(name))
    rewrite_sidecar(tiny_model, architecture="segformer", options={"depths": [64] * 4},
                    weights_sha256=None)
    try:
        with pytest.raises(SlidemapError, match="do not match their sidecar") as caught:
            load_model(tiny_model)
    finally:
        handle.remove()
    assert "\n" not in str(caught.value)
    assert len(registered) <= 2 * tensors + 1


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2, torch.bool,
                                   torch.int32, torch.uint16])
def test_weights_of_a_type_slidemap_never_writes_are_one_line(tiny_model: Path,
                                                             dtype: torch.dtype) -> None:
    """float8 weights failed with a traceback (it has no isfinite); bool or integer weights
    were cast into a network no training made."""
    state = load_file(str(tiny_model))
    save_file({k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()},
              str(tiny_model))
    rewrite_sidecar(tiny_model, weights_sha256=None)
    with pytest.raises(SlidemapError, match="which slidemap never writes") as caught:
        load_model(tiny_model)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_weights_of_any_float_type_load(tiny_model: Path, dtype: torch.dtype) -> None:
    state = load_file(str(tiny_model))
    save_file({k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()},
              str(tiny_model))
    rewrite_sidecar(tiny_model, weights_sha256=None)
    assert load_model(tiny_model).model.state_dict().keys() == state.keys()


def test_weights_with_nan_are_refused(tiny_model: Path, tmp_path: Path) -> None:
    bundle = load_model(tiny_model)
    with torch.no_grad():
        next(bundle.model.parameters()).view(-1)[0] = math.nan
    path = save_model(bundle, tmp_path / "nan")
    with pytest.raises(SlidemapError, match="not finite"):
        load_model(path)


def test_weights_beside_another_saves_sidecar_are_refused(tiny_model: Path,
                                                          tmp_path: Path) -> None:
    """The sidecar records its weights' SHA-256: weights of another save (a failed
    ``--overwrite``, a copied file) are refused, even with the same shapes."""
    bundle = load_model(tiny_model)
    first = save_model(bundle, tmp_path / "a")
    with torch.no_grad():
        for parameter in bundle.model.parameters():
            parameter.add_(0.5)
    second = save_model(bundle, tmp_path / "b")
    first.write_bytes(second.read_bytes())
    with pytest.raises(SlidemapError, match="same save"):
        load_model(first)
    assert load_model(second).width == 4
    state = load_file(str(second))  # the same tensors rewritten by another writer
    save_file(state, str(second), metadata={"written": "by hand"})
    with pytest.raises(SlidemapError, match="same save"):
        load_model(second)


def test_a_sidecar_without_a_digest_still_loads(tiny_model: Path) -> None:
    """Model files saved before sidecars held a digest (the shipped ones) keep loading."""
    rewrite_sidecar(tiny_model, weights_sha256=None)
    assert load_model(tiny_model).width == 4


@pytest.mark.parametrize("damage", ["empty", "short", "huge header", "not json", "bad shape",
                                    "trailing bytes"])
def test_a_damaged_weights_header_is_one_line(tiny_model: Path, damage: str) -> None:
    weights = model_paths(tiny_model)[0]
    data = weights.read_bytes()
    if damage == "empty":
        data = b""
    elif damage == "short":
        data = data[:5]
    elif damage == "huge header":
        data = (2**62).to_bytes(8, "little") + data[8:]
    elif damage == "not json":
        data = data[:8] + b"\xff" * (len(data) - 8)
    elif damage == "trailing bytes":  # a small model padded out to gigabytes
        data = data + b"\0" * 4096
    else:
        length = int.from_bytes(data[:8], "little")
        header = json.loads(data[8:8 + length])
        key = next(k for k in header if k != "__metadata__")
        header[key]["shape"] = [-1]
        text = json.dumps(header).encode()
        data = len(text).to_bytes(8, "little") + text + data[8 + length:]
    weights.write_bytes(data)
    rewrite_sidecar(tiny_model, weights_sha256=None)
    with pytest.raises(SlidemapError, match="not a valid safetensors file"):
        load_model(tiny_model)
    with pytest.raises(ValueError):
        header_shapes(data)


def test_loading_reads_the_sidecar_size_first(tiny_model: Path) -> None:
    sidecar = model_paths(tiny_model)[1]
    sidecar.write_text(" " * (16 * 2**20 + 1))
    with pytest.raises(SlidemapError, match="bytes"):
        load_model(tiny_model)


def test_a_deeply_nested_sidecar_is_one_line(tiny_model: Path) -> None:
    sidecar = model_paths(tiny_model)[1]
    sidecar.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(SlidemapError, match="malformed"):
        load_model(tiny_model)


def test_a_non_utf8_sidecar_is_one_line(tiny_model: Path) -> None:
    model_paths(tiny_model)[1].write_bytes(b'{"width": "\xff\xfe"}')
    with pytest.raises(SlidemapError, match="malformed"):
        load_model(tiny_model)


@pytest.mark.parametrize("version", [2, 10**30])
def test_a_newer_format_version_says_to_upgrade_not_to_re_export(tiny_model: Path,
                                                                  version: int) -> None:
    rewrite_sidecar(tiny_model, format_version=version)
    with pytest.raises(SlidemapError) as caught:
        load_model(tiny_model)
    message = str(caught.value)
    assert "upgrade slidemap" in message and "re-export" not in message
    assert "\n" not in message and len(message) < 300


@pytest.mark.parametrize("version", [0, -1, "2", True, 1.5])
def test_a_format_version_that_is_no_version_is_malformed(tiny_model: Path,
                                                          version: object) -> None:
    rewrite_sidecar(tiny_model, format_version=version)
    with pytest.raises(SlidemapError, match="malformed"):
        load_model(tiny_model)
