"""Scale promotion: up-sampling inputs and labels, and bringing probabilities back."""

from __future__ import annotations

import numpy as np
import pytest

from slidemap.data.scaling import demote, promote, resize
from slidemap.errors import SlidemapError


def smooth_field(h: int = 24, w: int = 30) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([np.sin(y / 6) + np.cos(x / 8), 0.01 * x * y]).astype(np.float32)


@pytest.mark.parametrize("factor", [2, 3, 2.5])
def test_promote_then_demote_recovers_a_smooth_field(factor: float) -> None:
    field = smooth_field()
    up = promote(field, factor)
    assert up.shape == (2, round(24 * factor), round(30 * factor))
    assert up.dtype == np.float32
    back = demote(up, (24, 30))
    assert back.shape == field.shape
    np.testing.assert_allclose(back[:, 1:-1, 1:-1], field[:, 1:-1, 1:-1], atol=0.02)


def test_linear_ramp_survives_exactly_inside() -> None:
    ramp = np.tile(np.arange(10, dtype=np.float32), (6, 1))[None]
    back = demote(promote(ramp, 2), (6, 10))
    np.testing.assert_allclose(back[..., 1:-1], ramp[..., 1:-1], atol=1e-5)


def test_mask_promotion_is_nearest_and_keeps_values() -> None:
    mask = np.random.default_rng(0).choice(np.array([0, 1, 255], np.uint8), (7, 9))
    up = promote(mask, 3, kind="mask")
    assert up.shape == (21, 27) and up.dtype == np.uint8
    assert set(np.unique(up)) <= {0, 1, 255}
    np.testing.assert_array_equal(up[1::3, 1::3], mask)
    odd = promote(mask, 1.5, kind="mask")
    assert odd.shape == (round(7 * 1.5), round(9 * 1.5))
    assert set(np.unique(odd)) <= set(np.unique(mask))


def test_demote_averages_probability_blocks() -> None:
    prob = np.zeros((4, 4), np.float32)
    prob[:2, :2] = 1.0
    prob[2:, 2:] = 0.5
    np.testing.assert_allclose(demote(prob, (2, 2)), [[1.0, 0.0], [0.0, 0.5]])
    assert demote(np.ones((10, 10)), (3, 4)).shape == (3, 4)
    np.testing.assert_allclose(demote(np.ones((10, 10)), (3, 4)), 1.0)


def test_nan_stays_local() -> None:
    field = np.ones((1, 8, 8), np.float32)
    field[0, 4, 4] = np.nan
    up = promote(field, 2)
    assert np.isnan(up[0, 8:10, 8:10]).all()
    assert np.isfinite(up[0, :6]).all()


def test_bad_factor_and_kind() -> None:
    with pytest.raises(SlidemapError, match="not positive"):
        promote(np.zeros((1, 4, 4)), 0)
    with pytest.raises(ValueError, match="kind"):
        resize(np.zeros((1, 4, 4)), (8, 8), kind="cubic")  # type: ignore[arg-type]
