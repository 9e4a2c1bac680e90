"""Model files: safetensors + JSON round trip, no pickle."""

import json

import numpy as np
import torch

from slidemap.io.modelfile import load_model, model_paths


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
