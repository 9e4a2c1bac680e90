"""Site-independent inputs: terrain descriptors that ignore the DEM's datum and have no seams,
and per-scene photometric normalisation of the optical bands."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from factories import write_raster
from rasterio.windows import Window

from slidemap.data.channels import InputSpec, read_inputs, stack_channels
from slidemap.data.scene import Scene
from slidemap.data.terrain import laplacian_curvature, roughness
from slidemap.errors import SlidemapError
from slidemap.schema.config import parse_config

DESCRIPTORS = InputSpec(slope=True, relief_m=(2.0, 6.0), curvature=True, roughness_m=2.0)
SIDE = 96


def rough_dem(seed: int = 0) -> np.ndarray:
    """Hills on a tilted plane, with a NaN hole: every descriptor has something to see."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:SIDE, 0:SIDE]
    dem = 3000.0 + 0.4 * cols + 0.2 * rows + 3 * np.sin(rows / 5.0) * np.cos(cols / 7.0)
    dem += rng.normal(0, 0.3, dem.shape)
    dem[40:44, 60:66] = np.nan
    return dem.astype(np.float32)


def scene_files(root: Path, dem: np.ndarray, image: np.ndarray | None = None
                ) -> tuple[Path, Path]:
    if image is None:
        image = np.random.default_rng(1).integers(30, 110, (3, SIDE, SIDE)).astype(np.uint8)
    root.mkdir(parents=True, exist_ok=True)
    return (write_raster(root / "image.tif", image, nodata=0),
            write_raster(root / "dsm.tif", dem, nodata=float("nan")))


def descriptors(image: Path, dem: Path, window: Window, factor: int = 1) -> np.ndarray:
    with Scene(image, dem=dem) as scene:
        return stack_channels(read_inputs(scene, window, DESCRIPTORS, factor), DESCRIPTORS)[3:]


def test_descriptor_channels_are_named_and_round_trip() -> None:
    assert DESCRIPTORS.channels == ["band1", "band2", "band3", "relief2m", "relief6m", "slope",
                                    "curvature", "roughness"]
    assert DESCRIPTORS.needs_dem and not DESCRIPTORS.dem
    assert InputSpec.from_dict(DESCRIPTORS.to_dict()) == DESCRIPTORS
    assert InputSpec(relief_m=50.0).channels[-1] == "relief"  # one radius: the old name
    for bad in ({"relief_m": [5, 5]}, {"relief_m": [5, -1]}, {"roughness_m": 0}):
        with pytest.raises(SlidemapError):
            InputSpec.from_dict(bad)


def test_a_dem_raised_by_30_m_gives_identical_descriptors(tmp_path: Path) -> None:
    dem = rough_dem()
    image, low = scene_files(tmp_path / "low", dem)
    _, high = scene_files(tmp_path / "high", dem + 30.0)
    whole = Window(0, 0, SIDE, SIDE)
    for factor in (1, 2):
        a, b = descriptors(image, low, whole, factor), descriptors(image, high, whole, factor)
        assert np.isfinite(a).sum() > 0.9 * a.size
        np.testing.assert_allclose(a, b, atol=1e-4, equal_nan=True)
    # Absolute elevation, by contrast, moves with the datum.
    with Scene(image, dem=low) as one, Scene(image, dem=high) as two:
        spec = InputSpec(dem=True)
        assert np.nanmean(read_inputs(two, whole, spec, 1)["dem"]
                          - read_inputs(one, whole, spec, 1)["dem"]) == pytest.approx(30.0)


@pytest.mark.parametrize("factor", [1, 2])
def test_descriptors_of_windows_have_no_seams(tmp_path: Path, factor: int) -> None:
    image, dem = scene_files(tmp_path, rough_dem(1))
    whole = descriptors(image, dem, Window(0, 0, SIDE, SIDE), factor)
    n = 32 // factor
    for top, left in ((0, 0), (32, 32), (64, 16), (64, 64), (16, 48)):
        part = descriptors(image, dem, Window(left, top, 32, 32), factor)
        r, c = top // factor, left // factor
        np.testing.assert_allclose(part, whole[:, r:r + n, c:c + n], atol=1e-3, equal_nan=True,
                                   err_msg=f"window at row {top}, col {left}")


def test_curvature_and_roughness_of_known_surfaces() -> None:
    rows, cols = np.mgrid[0:21, 0:21].astype(np.float64)
    bowl = 0.05 * ((rows - 10) ** 2 + (cols - 10) ** 2)  # Laplacian 0.2 per m² at 1 m pixels
    np.testing.assert_allclose(laplacian_curvature(bowl, (1.0, 1.0))[1:-1, 1:-1], -20.0,
                               rtol=1e-5)
    np.testing.assert_allclose(laplacian_curvature(-bowl, (2.0, 2.0))[1:-1, 1:-1], 5.0,
                               rtol=1e-5)
    checker = np.where((rows + cols) % 2 == 0, 1.0, -1.0)
    np.testing.assert_allclose(roughness(checker, 3)[5:-5, 5:-5], 1.0, atol=0.02)
    assert np.allclose(roughness(np.full((9, 9), 250.0), 2), 0.0)


def test_scene_photometric_normalisation_ignores_gain_and_offset(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    image = rng.integers(20, 100, (3, SIDE, SIDE)).astype(np.uint8)
    image[:, :, :5] = 0  # nodata strip: left out of the scene's statistics
    brighter = np.where(image > 0, 2 * image.astype(np.int32) + 15, 0).astype(np.uint8)
    spec = InputSpec(optical="scene")
    assert spec.channels == ["scene1", "scene2", "scene3"]
    out = []
    for name, pixels in (("dim", image), ("bright", brighter)):
        path, _ = scene_files(tmp_path / name, rough_dem(), pixels)
        with Scene(path) as scene:
            whole = stack_channels(read_inputs(scene, Window(0, 0, SIDE, SIDE), spec, 1), spec)
            part = stack_channels(read_inputs(scene, Window(40, 8, 32, 32), spec, 1), spec)
        np.testing.assert_allclose(part, whole[:, 8:40, 40:72], rtol=1e-6)  # no seams
        valid = whole[:, :, 5:]
        np.testing.assert_allclose(valid.mean(axis=(1, 2)), 0.0, atol=1e-4)
        np.testing.assert_allclose(valid.std(axis=(1, 2)), 1.0, atol=1e-3)
        out.append(whole[:, :, 5:])
    np.testing.assert_allclose(out[0], out[1], atol=1e-4)


def test_a_config_takes_descriptors_and_scene_normalisation(tiny_scene: dict[str, Path]
                                                            ) -> None:
    raw = {"data": {"train": [{k: str(v) for k, v in tiny_scene.items()}]},
           "inputs": {"image_bands": [1, 2, 3], "optical": "scene", "relief_m": [5, 20],
                      "slope": True, "curvature": True, "roughness_m": 3}}
    config = parse_config(raw)
    assert config.inputs.channels == ["scene1", "scene2", "scene3", "relief5m", "relief20m",
                                      "slope", "curvature", "roughness"]
