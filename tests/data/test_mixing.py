"""Mixup on batches, colour jitter and random zoom on samples."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from slidemap.data.mixing import mixup
from slidemap.data.photometric import colour_jitter, random_scale, rotate_hue, zoom_about_centre
from slidemap.errors import SlidemapError


def make_batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 5, 5, generator=g)
    target = (torch.rand(3, 1, 5, 5, generator=g) > 0.5).float()
    valid = torch.rand(3, 1, 5, 5, generator=g) > 0.2
    return {"x": x, "target": target, "valid": valid}


def test_mixup_fixed_lambda_matches_formula() -> None:
    batch = make_batch()
    index = [2, 0, 1]
    out = mixup(batch, lam=0.3, index=index)
    for i, j in enumerate(index):
        assert torch.allclose(out["x"][i], 0.3 * batch["x"][i] + 0.7 * batch["x"][j])
        assert torch.allclose(out["target"][i], 0.3 * batch["target"][i] + 0.7 * batch["target"][j])
        assert torch.equal(out["valid"][i], batch["valid"][i] & batch["valid"][j])
    # Hard masks become soft: a 1 mixed with a 0 at λ=0.3 is 0.3 or 0.7.
    values = set(np.round(out["target"].unique().double().numpy(), 5).tolist())
    assert values <= {0.0, 0.3, 0.7, 1.0} and values & {0.3, 0.7}
    assert out["valid"].dtype == torch.bool


def test_mixup_per_sample_lambda_and_input_untouched() -> None:
    batch = make_batch()
    before = {k: v.clone() for k, v in batch.items()}
    lam = [1.0, 0.0, 0.5]
    out = mixup(batch, lam=lam, index=[1, 2, 0])
    assert torch.equal(out["x"][0], batch["x"][0])  # λ=1 keeps the sample
    assert torch.equal(out["x"][1], batch["x"][2])  # λ=0 takes the partner
    assert torch.allclose(out["x"][2], 0.5 * (batch["x"][2] + batch["x"][0]))
    for k, v in before.items():
        assert torch.equal(batch[k], v)


def test_mixup_random_draws_are_seeded() -> None:
    batch = make_batch()
    a = mixup(batch, alpha=0.4, generator=np.random.default_rng(7))
    b = mixup(batch, alpha=0.4, generator=np.random.default_rng(7))
    for k in ("x", "target", "valid"):
        assert torch.equal(a[k], b[k])
        assert a[k].shape == batch[k].shape
    assert float(a["target"].min()) >= 0.0 and float(a["target"].max()) <= 1.0


def test_mixup_needs_generator_or_fixed_draws() -> None:
    with pytest.raises(SlidemapError, match="generator"):
        mixup(make_batch(), lam=0.5)
    with pytest.raises(SlidemapError, match="alpha"):
        mixup(make_batch(), alpha=0.0, generator=np.random.default_rng(0))


def make_sample(bands: int = 4, size: int = 16) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    return {
        "image": rng.uniform(0, 1, (bands, size, size)).astype(np.float32),
        "dem": rng.uniform(100, 900, (1, size, size)).astype(np.float32),
        "slope": rng.uniform(0, 60, (1, size, size)).astype(np.float32),
        "mask": rng.choice(np.array([0, 1, 255], dtype=np.uint8), (size, size)),
    }


@pytest.mark.parametrize("bands", [1, 2, 3, 4])
def test_jitter_touches_optical_bands_only(bands: int) -> None:
    sample = make_sample(bands)
    dem, slope, mask = (sample[k].tobytes() for k in ("dem", "slope", "mask"))
    image = sample["image"].copy()
    out = colour_jitter(sample, np.random.default_rng(0), 0.3, 0.3, 0.3)
    assert out["dem"].tobytes() == dem and out["slope"].tobytes() == slope
    assert out["mask"].tobytes() == mask
    assert out["image"].shape == image.shape and out["image"].dtype == np.float32
    assert not np.array_equal(out["image"], image)
    assert np.array_equal(sample["image"], image)  # input untouched


def test_jitter_saturation_only_on_first_three_bands() -> None:
    sample = make_sample(5)
    out = colour_jitter(sample, np.random.default_rng(1), brightness=0, contrast=0, saturation=0.5)
    assert np.array_equal(out["image"][3:], sample["image"][3:])
    assert not np.array_equal(out["image"][:3], sample["image"][:3])


def test_jitter_zero_strength_is_identity_and_keeps_nan() -> None:
    sample = make_sample(3)
    sample["image"][0, 0, 0] = np.nan
    out = colour_jitter(sample, np.random.default_rng(0), 0, 0, 0)
    assert np.array_equal(out["image"], sample["image"], equal_nan=True)
    out = colour_jitter(sample, np.random.default_rng(0))
    assert np.isnan(out["image"][0, 0, 0]) and np.isfinite(out["image"][:, 1:]).all()


def test_scale_factor_one_is_identity() -> None:
    sample = make_sample()
    out = random_scale(sample, np.random.default_rng(0), scale_range=(1.0, 1.0))
    for key, value in sample.items():
        assert np.array_equal(out[key], value), key
        assert out[key].dtype == value.dtype


@pytest.mark.parametrize("factor", [0.75, 1.25])
def test_scale_keeps_shapes_and_labels(factor: float) -> None:
    sample = make_sample(3, size=17)
    out = random_scale(sample, np.random.default_rng(0), scale_range=(factor, factor))
    for key, value in sample.items():
        assert out[key].shape == value.shape and out[key].dtype == value.dtype
    assert set(np.unique(out["mask"]).tolist()) <= {0, 1, 255}
    # The centre pixel is the zoom's fixed point.
    assert out["mask"][8, 8] == sample["mask"][8, 8]
    assert out["dem"][0, 8, 8] == pytest.approx(sample["dem"][0, 8, 8])
    if factor < 1:  # zooming out uncovers a border: ignored in the mask, 0 in the image
        assert (out["mask"][0] == 255).all() and (out["image"][:, 0] == 0).all()


def zoom_factor(out: dict[str, np.ndarray]) -> float:
    """The factor a 16 px ramp rising by 1 a column was zoomed by: its centre pixels, inside
    the input at any factor of the tests, rise by 1 / factor (bilinear keeps a ramp exact)."""
    rise = out["image"][0, 6:10, 9] - out["image"][0, 6:10, 6]
    return float(3.0 / rise.mean())


def test_scale_random_factor_in_range_and_seeded() -> None:
    """Seeded draws repeat, and every factor lies in the range asked for and spreads over it
    (only the seeding was checked: a draw outside the range, or none, passed)."""
    sample = make_sample()
    a = random_scale(sample, np.random.default_rng(5))
    b = random_scale(sample, np.random.default_rng(5))
    assert all(np.array_equal(a[k], b[k]) for k in sample)
    sample["image"] = np.broadcast_to(np.arange(16, dtype=np.float32), (4, 16, 16)).copy()
    for low, high in ((0.75, 1.25), (1.5, 2.0)):
        factors = [zoom_factor(random_scale(sample, np.random.default_rng(seed), (low, high)))
                   for seed in range(40)]
        assert low - 1e-4 <= min(factors) < low + 0.1 * (high - low), (low, factors)
        assert high - 0.1 * (high - low) < max(factors) <= high + 1e-4, (high, factors)


def test_scale_nan_does_not_spread() -> None:
    sample = make_sample(1, size=20)
    sample["image"][0, 8:12, 8:12] = np.nan
    out = random_scale(sample, np.random.default_rng(0), scale_range=(1.0, 1.0))
    assert np.isnan(out["image"]).sum() == 16
    out = random_scale(sample, np.random.default_rng(0), scale_range=(0.8, 0.8))
    assert 0 < np.isnan(out["image"]).sum() <= 16


def test_zoom_out_of_a_wider_input_fills_the_tile_with_it() -> None:
    sample = make_sample(2, size=32)
    out = zoom_about_centre(sample, 0.5, (16, 16))
    assert out["image"].shape == (2, 16, 16) and out["mask"].shape == (16, 16)
    # Halving a 32 px input onto 16 px samples between each 2 × 2 block: its mean, no border.
    blocks = sample["image"].reshape(2, 16, 2, 16, 2).mean(axis=(2, 4))
    np.testing.assert_allclose(out["image"], blocks, atol=1e-5)
    np.testing.assert_array_equal(out["mask"], sample["mask"][1::2, 1::2])
    # A zoom-in onto a tile wider than the input zoomed leaves an ignored border.
    out = zoom_about_centre(sample, 1.0, (40, 40))
    assert (out["mask"][:4] == 255).all() and (out["image"][:, :4] == 0).all()
    np.testing.assert_array_equal(out["mask"][4:36, 4:36], sample["mask"])


def test_scale_refuses_unknown_integer_arrays() -> None:
    sample = make_sample()
    sample["labels"] = np.zeros((16, 16), dtype=np.int32)
    with pytest.raises(SlidemapError, match="labels"):
        random_scale(sample, np.random.default_rng(0))


def test_jitter_invert_mirrors_brightness_and_keeps_band_differences() -> None:
    sample = make_sample(4)
    image = sample["image"]
    out = colour_jitter(sample, np.random.default_rng(0), 0, 0, 0, invert=1.0)["image"]
    weights = np.array([0.299, 0.587, 0.114]).reshape(3, 1, 1)
    luma, new_luma = (image[:3] * weights).sum(axis=0), (out[:3] * weights).sum(axis=0)
    np.testing.assert_allclose(new_luma, 2 * luma.mean() - luma, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(out[0] - out[1], image[0] - image[1], atol=1e-3)
    assert np.array_equal(out[3:], image[3:])
    never = colour_jitter(sample, np.random.default_rng(0), 0, 0, 0, invert=0.0)["image"]
    assert np.array_equal(never, image)


def test_hue_rotation_turns_colour_about_grey() -> None:
    rgb = make_sample(3)["image"]
    # A third of a turn moves each band's values to the next band: R -> G -> B -> R.
    np.testing.assert_allclose(rotate_hue(rgb, 1 / 3), rgb[[2, 0, 1]], atol=1e-5)
    np.testing.assert_allclose(rotate_hue(rgb, 1.0), rgb, atol=1e-5)
    # Any turn keeps each pixel's band mean and its distance from grey.
    turned = rotate_hue(rgb, 0.137)
    np.testing.assert_allclose(turned.mean(axis=0), rgb.mean(axis=0), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(turned - turned.mean(axis=0), axis=0),
                               np.linalg.norm(rgb - rgb.mean(axis=0), axis=0), atol=1e-5)
    grey = np.full((3, 2, 2), 7.0, dtype=np.float32)
    np.testing.assert_allclose(rotate_hue(grey, 0.3), grey, atol=1e-5)


def test_jitter_hue_and_grayscale_touch_the_first_three_bands_only() -> None:
    sample = make_sample(5)
    sample["image"][1, 0, 0] = np.nan
    hued = colour_jitter(sample, np.random.default_rng(2), 0, 0, 0, hue=0.5)["image"]
    assert np.array_equal(hued[3:], sample["image"][3:])
    assert not np.allclose(hued[:3, 1:], sample["image"][:3, 1:])
    assert np.isnan(hued[:3, 0, 0]).all() and np.isfinite(hued[:, 1:]).all()
    grey = colour_jitter(sample, np.random.default_rng(2), 0, 0, 0, grayscale=1.0)["image"]
    weights = np.array([0.299, 0.587, 0.114], dtype=np.float32).reshape(3, 1, 1)
    luma = (sample["image"][:3] * weights).sum(axis=0)
    for band in range(3):
        np.testing.assert_allclose(grey[band, 1:], luma[1:], rtol=1e-6)
    assert np.array_equal(grey[3:], sample["image"][3:])
    # Off, neither draws from the generator: runs without them keep their random streams.
    a, b = np.random.default_rng(4), np.random.default_rng(4)
    colour_jitter(sample, a, 0.2, 0.2, 0.2, hue=0.0, grayscale=0.0)
    colour_jitter(sample, b, 0.2, 0.2, 0.2)
    assert a.random() == b.random()
