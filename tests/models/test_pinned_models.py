"""The shipped models' probabilities on a small crop of the sample scene, pinned.

The reference values were computed on main before the models became encoder → decoder → head
classes (``tests/fixtures/pinned_models.json``); a refactor that changes a key name, a layer order,
a padding or an up-sampling changes these numbers and fails here. The default
(``slidemap-jinsha-unet-terrain``) was added to the file when it was shipped.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from rasterio.windows import Window

from slidemap.data.channels import read_inputs, stack_channels
from slidemap.data.scene import Scene
from slidemap.io.modelfile import load_model

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "examples" / "jinsha-b"
PINNED = ROOT / "tests" / "fixtures" / "pinned_models.json"
CROP = Window(0, 296, 376, 344)  # col, row, width, height (0.5 m pixels): landslides and not
# Each model at the factor its resolution asks for on this scene (``slidemap predict``'s), so
# the crop is 94 × 86 working pixels at 2 m and 188 × 172 at 1 m: not multiples of the stride.
MODELS = {"slidemap-jinsha-unet-terrain": 4, "slidemap-jinsha-fusion": 4, "slidemap-jinsha-unet": 4,
          "slidemap-rgb-sites": 2}


def probabilities(name: str) -> np.ndarray:
    """The model's landslide probability on the crop, CPU fp32, inputs as the model reads them."""
    bundle = load_model(ROOT / "models" / f"{name}.safetensors")
    with Scene(SAMPLE / "jinsha_b_image.tif", dem=SAMPLE / "jinsha_b_dsm.tif") as scene:
        sample = read_inputs(scene, CROP, bundle.inputs, MODELS[name])
    x = stack_channels(sample, bundle.inputs)
    mean = np.asarray(bundle.mean, np.float32)[:, None, None]
    std = np.asarray(bundle.std, np.float32)[:, None, None]
    batch = torch.from_numpy((x - mean) / std).unsqueeze(0)
    with torch.no_grad():
        return torch.sigmoid(bundle.model(batch)).numpy()[0, 0]


def summary(prob: np.ndarray) -> dict:
    """Statistics of the whole map and every 8th pixel of it, enough to see any change."""
    return {"shape": list(prob.shape), "mean": float(prob.mean()), "std": float(prob.std()),
            "min": float(prob.min()), "max": float(prob.max()),
            "above_half": int((prob > 0.5).sum()),
            "grid": prob[::8, ::8].round(6).tolist()}


@pytest.mark.parametrize("name", MODELS)
def test_shipped_model_probabilities_are_pinned(name: str) -> None:
    torch.manual_seed(0)
    want = json.loads(PINNED.read_text())[name]
    got = summary(probabilities(name))
    assert got["shape"] == want["shape"]
    assert 0 < want["above_half"] < want["shape"][0] * want["shape"][1]  # the crop has both
    assert abs(got["above_half"] - want["above_half"]) <= 2
    for key in ("mean", "std", "min", "max"):
        assert got[key] == pytest.approx(want[key], abs=1e-5), key
    np.testing.assert_allclose(np.array(got["grid"]), np.array(want["grid"]), atol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_every_shipped_sidecar_records_its_weights_hash(name: str) -> None:
    """Without the hash, weights and sidecar of different saves load when their shapes match."""
    sidecar = json.loads((ROOT / "models" / f"{name}.json").read_text())
    weights = (ROOT / "models" / f"{name}.safetensors").read_bytes()
    assert sidecar["weights_sha256"] == hashlib.sha256(weights).hexdigest()


if __name__ == "__main__":  # writes the reference file: run on main only
    PINNED.write_text(json.dumps({name: summary(probabilities(name)) for name in MODELS}) + "\n")
