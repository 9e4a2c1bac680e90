"""Per-band statistics, streaming, and normalisation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from slidemap.data.normalization import BandStats, StatsAccumulator, compute_stats, normalise
from slidemap.errors import SlidemapError

RNG = np.random.default_rng(0)


def data() -> tuple[np.ndarray, np.ndarray]:
    x = (RNG.normal(size=(3, 20, 20)) * [[[2.0]], [[5.0]], [[0.1]]] + [[[1]], [[3000]], [[-4]]])
    valid = RNG.random((20, 20)) > 0.3
    return x.astype(np.float32), valid


def test_stats_match_numpy_on_valid_pixels() -> None:
    x, valid = data()
    x[1, 0, 0] = np.nan  # skipped in band 2 only
    stats = compute_stats([x], [valid])
    for b in range(3):
        use = valid & np.isfinite(x[b])
        values = x[b][use].astype(np.float64)
        assert stats.mean[b] == pytest.approx(values.mean(), rel=1e-9, abs=1e-9)
        assert stats.std[b] == pytest.approx(values.std(), rel=1e-6)


def test_streaming_over_chunks_equals_one_shot() -> None:
    chunks = [data() for _ in range(5)]
    whole = np.concatenate([c[0] for c in chunks], axis=2)
    whole_valid = np.concatenate([c[1] for c in chunks], axis=1)
    one_shot = compute_stats([whole], [whole_valid])
    acc = StatsAccumulator()
    for x, valid in chunks:
        acc.update(x, valid)
    streamed = acc.result()
    np.testing.assert_allclose(streamed.mean, one_shot.mean, rtol=1e-12)
    np.testing.assert_allclose(streamed.std, one_shot.std, rtol=1e-9)


def test_samples_use_keys_mask_and_valid() -> None:
    x, valid = data()
    mask = np.where(valid, 0, 255).astype(np.uint8)
    sample = {"name": "s", "image": x[:2], "dem": x[2:], "mask": mask}
    stats = compute_stats([sample], keys=("image", "dem"))
    assert stats.bands == 3
    assert stats.mean[2] == pytest.approx(x[2][valid].astype(np.float64).mean(), rel=1e-9)
    with pytest.raises(SlidemapError, match="has no slope"):
        compute_stats([sample], keys=("image", "slope"))


def test_constant_band_does_not_divide_by_zero() -> None:
    x = np.stack([np.full((4, 4), 7.0), np.arange(16.0).reshape(4, 4)]).astype(np.float32)
    stats = compute_stats([x])
    assert stats.std[0] == 0.0
    out = normalise(x, stats)
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(out[0], 0.0)
    assert out[1].mean() == pytest.approx(0.0, abs=1e-6)
    assert out[1].std() == pytest.approx(1.0, rel=1e-5)


def test_normalise_zeroes_invalid_and_checks_bands() -> None:
    x, valid = data()
    x[0, 1, 1] = np.nan
    stats = compute_stats([x], [valid])
    out = normalise(x, stats, valid)
    assert out.dtype == np.float32
    assert out[0, 1, 1] == 0.0 and (out[:, ~valid] == 0).all()
    with pytest.raises(SlidemapError, match="input has 2 bands but the statistics have 3"):
        normalise(x[:2], stats)


def test_band_stats_json_round_trip_and_errors() -> None:
    stats = compute_stats([data()[0]])
    again = BandStats.from_dict(json.loads(json.dumps(stats.to_dict())))
    assert again == stats
    with pytest.raises(SlidemapError, match="malformed"):
        BandStats.from_dict({"mean": [1.0]})
    with pytest.raises(SlidemapError, match="1 means but 2 stds"):
        BandStats(mean=[1.0], std=[1.0, 2.0])
    with pytest.raises(SlidemapError, match="band 1 has no valid pixels"):
        compute_stats([np.full((1, 3, 3), np.nan)])
