"""Input channels: chromaticity optical inputs, from config through training to prediction."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from factories import read_prob, tiny_run

from slidemap.api import predict
from slidemap.data.channels import InputSpec, chromaticity, stack_channels
from slidemap.errors import SlidemapError
from slidemap.io.modelfile import load_model
from slidemap.schema.config import parse_config
from slidemap.train.loop import train


def test_chromaticity_keeps_colour_and_drops_brightness() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(20, 120, size=(3, 8, 8)).astype(np.float32)
    chroma = chromaticity(image)
    np.testing.assert_allclose(chroma.sum(axis=0), 1.0, rtol=1e-6)
    # Twice as bright: the same colour, up to the small offset that keeps black defined.
    np.testing.assert_allclose(chromaticity(2 * image), chroma, atol=0.01)
    # A grey pixel is (1/3, 1/3, 1/3) at any brightness, black included.
    np.testing.assert_allclose(chromaticity(np.zeros((3, 1, 1))).ravel(), 1 / 3)
    reddish = chromaticity(np.array([200.0, 100.0, 100.0]).reshape(3, 1, 1)).ravel()
    assert reddish[0] > 0.49 and reddish[1] == pytest.approx(reddish[2])


def test_stack_channels_applies_the_spec() -> None:
    sample = {"image": np.full((3, 4, 4), 50.0, np.float32), "dem": np.full((1, 4, 4), 3000.0),
              "slope": np.full((1, 4, 4), 30.0)}
    spec = InputSpec(dem=True, slope=True, optical="chromaticity")
    x = stack_channels(sample, spec)
    assert spec.channels == ["chroma1", "chroma2", "chroma3", "dem", "slope"]
    np.testing.assert_allclose(x[:3], 1 / 3, rtol=1e-6)
    np.testing.assert_array_equal(x[3:], [np.full((4, 4), 3000.0), np.full((4, 4), 30.0)])
    raw = stack_channels(sample, InputSpec(dem=True, slope=True))
    np.testing.assert_array_equal(raw[:3], 50.0)


@pytest.mark.parametrize(("inputs", "message"), [
    ({"optical": "hsv"}, "inputs.optical must be 'raw', 'chromaticity' or 'scene'"),
    ({"optical": "chromaticity", "image_bands": [1]}, "at least two image bands"),
    ({"relief_m": 0}, "relief_m"),
    ({"relief_m": -5}, "relief_m"),
    ({"relief_m": "far"}, "relief_m"),
])
def test_bad_inputs_are_refused(tiny_scene: dict[str, Path], inputs: dict,
                                message: str) -> None:
    raw = tiny_run(tiny_scene)
    raw["inputs"].update(inputs)
    with pytest.raises(SlidemapError, match=message):
        parse_config(raw)


def test_chromaticity_model_trains_saves_and_predicts(tiny_scene: dict[str, Path],
                                                      tmp_path: Path) -> None:
    raw = tiny_run(tiny_scene)
    raw["inputs"]["optical"] = "chromaticity"
    model = train(parse_config(raw), tmp_path / "run")
    sidecar = json.loads(model.with_suffix(".json").read_text())
    assert sidecar["inputs"]["optical"] == "chromaticity"
    assert sidecar["channels"][:3] == ["chroma1", "chroma2", "chroma3"]
    # The stored statistics are those of the chromaticity channels, not of 8-bit radiance.
    assert all(0.2 < m < 0.5 for m in sidecar["normalisation"]["mean"][:3])
    assert load_model(model).inputs.optical == "chromaticity"
    # It maps colour, not brightness: the scene at half its brightness gives the same map (a
    # prediction that fed the network raw radiance mapped 8-bit counts through its statistics).
    with rasterio.open(tiny_scene["image"]) as src:
        profile, image = src.profile, src.read()
    dim = tmp_path / "dim.tif"
    with rasterio.open(dim, "w", **profile) as dst:
        dst.write(image // 2)
    probs = [read_prob(predict(scene, tmp_path / name, dem=tiny_scene["dem"], model=model).prob)
             for name, scene in (("pred", tiny_scene["image"]), ("dim", dim))]
    assert probs[0].shape == (96, 96) and np.isfinite(probs[0]).sum() == 96 * 88
    assert np.nanmax(np.abs(probs[0] - probs[1])) < 0.02


def test_relief_channel_is_named_and_stacked_between_dem_and_slope() -> None:
    spec = InputSpec.from_dict({"dem": True, "slope": True, "relief_m": 100})
    assert spec.relief_m == 100.0 and spec.needs_dem
    assert spec.channels == ["band1", "band2", "band3", "dem", "relief", "slope"]
    assert InputSpec.from_dict(spec.to_dict()) == spec
    assert InputSpec(relief_m=50.0).needs_dem
    sample = {"image": np.zeros((3, 2, 2), np.float32), "dem": np.full((1, 2, 2), 3000.0),
              "relief": np.full((1, 2, 2), -4.0), "slope": np.full((1, 2, 2), 30.0)}
    np.testing.assert_array_equal(stack_channels(sample, spec)[3:, 0, 0], [3000.0, -4.0, 30.0])


def test_relief_model_does_not_see_a_shifted_dem(tiny_scene: dict[str, Path],
                                                  tmp_path: Path) -> None:
    """A DEM on another vertical datum (here 400 m higher) changes an elevation model's map but
    not that of a model trained on relief and slope."""
    with rasterio.open(tiny_scene["dem"]) as ds:
        dsm, profile = ds.read(1), ds.profile
    shifted = tmp_path / "shifted_dsm.tif"
    with rasterio.open(shifted, "w", **profile) as dst:
        dst.write(dsm + 400.0, 1)

    def maps(inputs: dict, name: str) -> list[np.ndarray]:
        raw = tiny_run(tiny_scene)
        raw["inputs"] = {"image_bands": [1, 2, 3], **inputs}
        model = train(parse_config(raw), tmp_path / name)
        out = []
        for dem in (tiny_scene["dem"], shifted):
            result = predict(tiny_scene["image"], tmp_path / f"{name}_{dem.stem}", dem=dem,
                             model=model)
            with rasterio.open(result.prob) as prob:
                out.append(prob.read(1))
        return out

    relief_maps = maps({"relief_m": 5.0, "slope": True}, "relief")
    np.testing.assert_allclose(relief_maps[0], relief_maps[1], atol=1e-6, equal_nan=True)
    elevation_maps = maps({"dem": True, "slope": True}, "elevation")
    assert np.nanmax(np.abs(elevation_maps[0] - elevation_maps[1])) > 0.01
