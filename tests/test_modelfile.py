"""Model files: safetensors + JSON round trip, no pickle."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from slidemap.errors import SlidemapError
from slidemap.io.modelfile import load_model, model_paths, save_model


def test_round_trip_gives_identical_predictions(tiny_model) -> None:
    weights, sidecar = model_paths(tiny_model)
    assert weights.exists() and sidecar.exists()
    config = json.loads(sidecar.read_text())
    assert config["channels"] == ["band1", "band2", "band3", "slope"]
    assert config["normalisation"]["mean"] == [60.0, 60.0, 60.0, 10.0]
    bundle = load_model(tiny_model)
    again = load_model(sidecar)  # either file of the pair names the model
    x = torch.randn(1, 4, 40, 40)
    with torch.no_grad():
        np.testing.assert_array_equal(bundle.model(x).numpy(), again.model(x).numpy())
    for key, value in bundle.model.state_dict().items():
        assert torch.equal(value, again.model.state_dict()[key])
    assert bundle.inputs.slope and not bundle.inputs.dem


def test_float16_weights_halve_the_file_and_load_as_float32(tiny_model, tmp_path) -> None:
    bundle = load_model(tiny_model)
    half = save_model(replace(bundle, weights_dtype="float16"), tmp_path / "half")
    stored = load_file(str(half))
    assert all(t.dtype == torch.float16 for t in stored.values() if t.is_floating_point())
    weights, _ = model_paths(tiny_model)
    assert half.stat().st_size < 0.6 * weights.stat().st_size
    again = load_model(half)
    assert again.weights_dtype == "float16"
    assert json.loads(model_paths(half)[1].read_text())["weights_dtype"] == "float16"
    assert all(p.dtype == torch.float32 for p in again.model.parameters())
    x = torch.randn(1, 4, 40, 40)
    with torch.no_grad():
        full, rounded = torch.sigmoid(bundle.model(x)), torch.sigmoid(again.model(x))
    assert 0 < (full - rounded).abs().max() < 1e-2
    # Saved again, a float16 model stays float16 (fine-tuning or self-training keep the size).
    assert load_file(str(save_model(again, tmp_path / "again")))["encoder.stages.0.0.0.weight"
                                                                   ].dtype == torch.float16


def test_float16_refuses_weights_it_cannot_hold(tiny_model, tmp_path) -> None:
    bundle = load_model(tiny_model)
    with torch.no_grad():
        next(bundle.model.parameters())[0] = 1e6
    with pytest.raises(SlidemapError, match="overflows float16"):
        save_model(replace(bundle, weights_dtype="float16"), tmp_path / "big")
    assert not list(tmp_path.glob("big*"))


def test_unknown_weights_dtype_in_sidecar_is_refused(tiny_model) -> None:
    _, sidecar = model_paths(tiny_model)
    config = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({**config, "weights_dtype": "int8"}))
    with pytest.raises(SlidemapError, match="weights_dtype 'int8'"):
        load_model(tiny_model)
