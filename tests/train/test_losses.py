"""Losses against hand-worked values on tiny tiles, plus the ignore-mask and config contracts."""

from __future__ import annotations

import inspect
import math

import pytest
import torch

from slidemap.errors import SlidemapError
from slidemap.schema.run import RunConfig
from slidemap.train.losses import WeightedSum, build_loss, list_losses

ALL = ["bce", "dice", "focal", "lovasz", "ohem", "soft_ce", "wbce", "wce"]


def sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def bce(x: float, t: float) -> float:
    """-[t·log σ(x) + (1-t)·log(1-σ(x))], written out by hand."""
    return -(t * math.log(sigmoid(x)) + (1.0 - t) * math.log(1.0 - sigmoid(x)))


def tile(values: list[float]) -> torch.Tensor:
    """Four values as a (1, 1, 2, 2) tile."""
    return torch.tensor(values, dtype=torch.float32).reshape(1, 1, 2, 2)


def all_valid(like: torch.Tensor) -> torch.Tensor:
    return torch.ones_like(like, dtype=torch.bool)


def loss(name: str, **options: object) -> WeightedSum:
    return build_loss({name: {"weight": 1.0, **options}})


X = [0.0, 2.0, -1.0, 3.0]
T = [1.0, 0.0, 0.0, 1.0]


def test_registry_names() -> None:
    assert list_losses() == ALL


def test_bce_hand_value() -> None:
    expected = (
        math.log(2.0)
        + math.log(1 + math.exp(2.0))
        + math.log(1 + math.exp(-1.0))
        + math.log(1 + math.exp(-3.0))
    ) / 4
    assert expected == pytest.approx(sum(bce(x, t) for x, t in zip(X, T, strict=True)) / 4)
    got = loss("bce")(tile(X), tile(T), all_valid(tile(X)))
    assert float(got) == pytest.approx(expected, rel=1e-6)


def test_bce_soft_target() -> None:
    x, t = [1.0, -0.5, 0.25, 2.0], [0.3, 0.5, 0.9, 0.0]
    expected = sum(bce(a, b) for a, b in zip(x, t, strict=True)) / 4
    assert float(loss("bce")(tile(x), tile(t), all_valid(tile(x)))) == pytest.approx(expected)


def test_wbce_pos_weight_from_batch() -> None:
    t = [1.0, 0.0, 0.0, 0.0]  # n_neg / n_pos = 3
    expected = (3 * -math.log(sigmoid(X[0])) + sum(bce(x, 0.0) for x in X[1:])) / 4
    got = loss("wbce")(tile(X), tile(t), all_valid(tile(X)))
    assert float(got) == pytest.approx(expected, rel=1e-6)


def test_wbce_pos_weight_clipped_and_fixed() -> None:
    t = [1.0, 1.0, 1.0, 0.0]  # n_neg / n_pos = 1/3, clipped up to 1: plain BCE
    plain = sum(bce(x, y) for x, y in zip(X, t, strict=True)) / 4
    assert float(loss("wbce")(tile(X), tile(t), all_valid(tile(X)))) == pytest.approx(plain)
    fixed = (
        2 * -math.log(sigmoid(X[0]))
        + 2 * -math.log(sigmoid(X[3]))
        + bce(X[1], 0.0)
        + bce(X[2], 0.0)
    ) / 4
    got = loss("wbce", pos_weight=2.0)(tile(X), tile(T), all_valid(tile(X)))
    assert float(got) == pytest.approx(fixed, rel=1e-6)


def test_wce_fixed_weights_is_weighted_mean() -> None:
    t = [1.0, 0.0, 0.0, 0.0]
    terms = [bce(x, y) for x, y in zip(X, t, strict=True)]
    expected = (3 * terms[0] + terms[1] + terms[2] + terms[3]) / (3 + 1 + 1 + 1)
    got = loss("wce", weights=[1.0, 3.0])(tile(X), tile(t), all_valid(tile(X)))
    assert float(got) == pytest.approx(expected, rel=1e-6)
    # Only the ratio matters.
    got10 = loss("wce", weights=[10.0, 30.0])(tile(X), tile(t), all_valid(tile(X)))
    assert float(got10) == pytest.approx(expected, rel=1e-6)


def test_wce_default_balances_classes() -> None:
    t = [1.0, 0.0, 0.0, 0.0]
    terms = [bce(x, y) for x, y in zip(X, t, strict=True)]
    expected = 0.5 * terms[0] + 0.5 * (terms[1] + terms[2] + terms[3]) / 3
    assert float(loss("wce")(tile(X), tile(t), all_valid(tile(X)))) == pytest.approx(expected)


def test_focal_hand_value() -> None:
    x, t = [0.5, -1.0, 2.0, 0.0], [1.0, 0.0, 0.0, 1.0]
    alpha, gamma = 0.25, 2.0
    expected = 0.0
    for xi, ti in zip(x, t, strict=True):
        p = sigmoid(xi)
        p_t = p if ti == 1.0 else 1.0 - p
        a_t = alpha if ti == 1.0 else 1.0 - alpha
        expected += a_t * (1.0 - p_t) ** gamma * -math.log(p_t)
    expected /= 4
    got = loss("focal", alpha=alpha, gamma=gamma)(tile(x), tile(t), all_valid(tile(x)))
    assert float(got) == pytest.approx(expected, rel=1e-6)


def test_focal_gamma0_alpha_half_is_half_bce() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1, 5, 5, generator=g)
    t = torch.rand(2, 1, 5, 5, generator=g)
    v = torch.rand(2, 1, 5, 5, generator=g) > 0.2
    focal = loss("focal", alpha=0.5, gamma=0.0)(x, t, v)
    assert float(focal) == pytest.approx(0.5 * float(loss("bce")(x, t, v)), rel=1e-6)


def test_dice_hand_value() -> None:
    p = [sigmoid(x) for x in X]
    inter = sum(pi * ti for pi, ti in zip(p, T, strict=True))
    expected = 1.0 - (2 * inter + 1.0) / (sum(p) + sum(T) + 1.0)
    got = loss("dice")(tile(X), tile(T), all_valid(tile(X)))
    assert float(got) == pytest.approx(expected, rel=1e-6)


# Lovász hinge by hand: errors e = 1 - x·(2t-1), sorted descending; loss = Σ relu(e_k)·ΔJ_k with
# ΔJ_k = J(k mistakes) - J(k-1), J(k) the Jaccard loss when the k largest-error pixels are wrong.
LOV_A = ([2.0, -1.0, 0.5, -3.0], [1.0, 0.0, 0.0, 0.0])
# e = [-1, 0, 1.5, -2] -> order: px2 (bg), px1 (bg), px0 (fg), px3 (bg).
# J(1): pred {0, 2} vs gt {0}: 1 - 1/2.  J(2): pred {0, 1, 2}: 1 - 1/3.  J(3): pred {1, 2}: 1 - 0.
# ΔJ = [1/2, 1/6, 1/3, 0]; relu(e sorted) = [1.5, 0, 0, 0] -> 0.75.
LOV_A_VALUE = 1.5 * (1 - 1 / 2) + 0.0 * ((1 - 1 / 3) - (1 - 1 / 2))
LOV_B = ([1.5, 0.2, -0.4, -2.0], [1.0, 0.0, 1.0, 0.0])
# e = [-0.5, 1.2, 1.4, -1] -> order: px2 (fg), px1 (bg), px0 (fg), px3 (bg).
# J(1): pred {0} vs gt {0, 2}: 1 - 1/2.  J(2): pred {0, 1}: 1 - 1/3.  J(3): pred {1}: 1.
# relu(e sorted) = [1.4, 1.2, 0, 0] -> 1.4·1/2 + 1.2·1/6 = 0.9.
LOV_B_VALUE = 1.4 * (1 - 1 / 2) + 1.2 * ((1 - 1 / 3) - (1 - 1 / 2))


def test_lovasz_hand_values() -> None:
    assert abs(LOV_A_VALUE - 0.75) < 1e-12
    assert abs(LOV_B_VALUE - 0.9) < 1e-12
    for (x, t), value in ((LOV_A, LOV_A_VALUE), (LOV_B, LOV_B_VALUE)):
        for per_image in (True, False):
            got = loss("lovasz", per_image=per_image)(tile(x), tile(t), all_valid(tile(x)))
            assert float(got) == pytest.approx(value, rel=1e-6)


def test_lovasz_per_image_mean_skips_empty_images() -> None:
    x = torch.cat([tile(LOV_A[0]), tile(LOV_B[0]), tile([5.0, 5.0, 5.0, 5.0])])
    t = torch.cat([tile(LOV_A[1]), tile(LOV_B[1]), tile([0.0, 0.0, 0.0, 0.0])])
    v = all_valid(x)
    v[2] = False  # third image fully ignored: not counted in the mean
    got = loss("lovasz", per_image=True)(x, t, v)
    assert float(got) == pytest.approx((LOV_A_VALUE + LOV_B_VALUE) / 2, rel=1e-6)


def test_lovasz_confident_and_correct_is_zero() -> None:
    t = tile([1.0, 0.0, 0.0, 1.0])
    x = (t * 2 - 1) * 8.0
    assert float(loss("lovasz")(x, t, all_valid(x))) == pytest.approx(0.0, abs=1e-7)


def test_ohem_keeps_hardest_pixels() -> None:
    x = tile([4.0, -3.0, 0.1, 1.0])
    t = tile([1.0, 1.0, 1.0, 0.0])  # per-pixel BCE order: px1 > px3 > px2 > px0
    x.requires_grad_(True)
    got = loss("ohem", keep=0.5, min_kept=1)(x, t, all_valid(x))
    assert got.item() == pytest.approx((bce(-3.0, 1.0) + bce(1.0, 0.0)) / 2, rel=1e-6)
    got.backward()
    assert (x.grad.flatten() != 0).tolist() == [False, True, False, True]


def test_ohem_min_kept() -> None:
    x, t = tile([4.0, -3.0, 0.1, 1.0]), tile([1.0, 1.0, 1.0, 0.0])
    got = loss("ohem", keep=0.25, min_kept=3)(x, t, all_valid(x))
    expected = (bce(-3.0, 1.0) + bce(1.0, 0.0) + bce(0.1, 1.0)) / 3
    assert float(got) == pytest.approx(expected, rel=1e-6)


def test_soft_ce_smoothing() -> None:
    x, t = [2.0, -1.0, 0.0, 0.5], [1.0, 0.0, 0.6, 0.2]
    eps = 0.1
    expected = sum(bce(a, b * (1 - eps) + eps / 2) for a, b in zip(x, t, strict=True)) / 4
    got = loss("soft_ce", smoothing=eps)(tile(x), tile(t), all_valid(tile(x)))
    assert float(got) == pytest.approx(expected, rel=1e-6)
    plain = loss("soft_ce")(tile(x), tile(t), all_valid(tile(x)))
    assert float(plain) == pytest.approx(float(loss("bce")(tile(x), tile(t), all_valid(tile(x)))))


@pytest.mark.parametrize("name", ALL)
def test_ignored_pixels_change_nothing(name: str) -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 1, 4, 4, generator=g)
    t = (torch.rand(2, 1, 4, 4, generator=g) > 0.6).float()
    v = torch.rand(2, 1, 4, 4, generator=g) > 0.3
    fn = build_loss({name: 1.0} if name != "ohem" else {"ohem": {"min_kept": 1}})
    base = fn(x, t, v)
    x2, t2 = x.clone(), t.clone()
    x2[~v] = float("nan")  # garbage under the ignore mask: nodata logits, raw label 255
    t2[~v] = 255.0
    x2.requires_grad_(True)
    again = fn(x2, t2, v)
    assert again.item() == pytest.approx(base.item(), rel=1e-6)
    again.backward()
    assert torch.all(x2.grad[~v] == 0)
    assert torch.isfinite(x2.grad).all()


@pytest.mark.parametrize("name", ALL)
def test_no_valid_pixel_gives_zero_with_grad(name: str) -> None:
    x = torch.randn(2, 1, 3, 3, requires_grad=True)
    t = torch.zeros(2, 1, 3, 3)
    got = build_loss(name)(x, t, torch.zeros(2, 1, 3, 3, dtype=torch.bool))
    assert got.item() == 0.0
    assert got.grad_fn is not None
    got.backward()
    assert torch.all(x.grad == 0)


@pytest.mark.parametrize("name", ALL)
def test_bf16_autocast_computes_in_float32(name: str) -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1, 1, 6, 6, generator=g)
    t = (torch.rand(1, 1, 6, 6, generator=g) > 0.5).float()
    v = all_valid(x)
    fn = build_loss(name)
    reference = fn(x.bfloat16().float(), t, v)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = fn(x.bfloat16(), t, v)
    assert got.dtype == torch.float32
    assert float(got) == pytest.approx(float(reference), rel=1e-5)


def test_weighted_sum_adds_up_and_logs_terms() -> None:
    x, t, v = tile(X), tile(T), all_valid(tile(X))
    fn = build_loss({"bce": 1.0, "dice": 0.5, "focal": {"weight": 2.0, "gamma": 0.0}})
    total = fn(x, t, v)
    bce_v = float(loss("bce")(x, t, v))
    dice_v = float(loss("dice")(x, t, v))
    focal_v = float(loss("focal", gamma=0.0)(x, t, v))
    assert float(total) == pytest.approx(bce_v + 0.5 * dice_v + 2.0 * focal_v, rel=1e-6)
    assert set(fn.last_terms) == {"bce", "dice", "focal"}
    assert float(fn.last_terms["dice"]) == pytest.approx(dice_v)
    assert fn.last_terms["bce"].grad_fn is None


def test_build_loss_from_spec() -> None:
    fn = build_loss({"focal": {"weight": 1.0, "alpha": 0.25, "gamma": 2.0}, "lovasz": 0.5})
    assert isinstance(fn, WeightedSum)
    assert fn.weights == {"focal": 1.0, "lovasz": 0.5}
    assert fn.terms["focal"].alpha == 0.25 and fn.terms["focal"].gamma == 2.0
    assert fn.terms["lovasz"].per_image is True
    assert list(build_loss("dice").terms) == ["dice"]


def test_unknown_loss_name_lists_valid_names() -> None:
    with pytest.raises(SlidemapError) as err:
        build_loss({"bce": 1.0, "tversky": 1.0})
    message = str(err.value)
    assert "\n" not in message and "tversky" in message
    assert all(name in message for name in ALL)


def test_bad_options_are_one_line_errors() -> None:
    with pytest.raises(SlidemapError, match=r"beta.*alpha, gamma"):
        build_loss({"focal": {"beta": 1.0}})
    with pytest.raises(SlidemapError, match="weight"):
        build_loss({"dice": "heavy"})
    # A loss without options names only weight, not the *args/**kwargs of nn.Module.__init__.
    with pytest.raises(SlidemapError, match=r"no option 'args': valid options are weight$"):
        build_loss({"bce": {"args": 3}})
    with pytest.raises(SlidemapError, match="empty"):
        build_loss({})
    with pytest.raises(SlidemapError, match="shape"):
        build_loss("bce")(tile(X), tile(T), torch.ones(1, 1, 4, 1, dtype=torch.bool))


@pytest.mark.parametrize(("spec", "message"), [
    ({"ohem": {"min_kept": "abc"}}, "min_kept must be a whole number"),
    ({"ohem": {"min_kept": 2.5}}, "min_kept must be a whole number"),
    ({"ohem": {"min_kept": -5}}, "min_kept must be ≥ 1"),
    ({"lovasz": {"per_image": "maybe"}}, "per_image must be true/false"),
    ({"wce": {"weights": [1, "x"]}}, "weights must be a list of finite numbers"),
    ({"wce": {"weights": [-1, 2]}}, "weights must be ≥ 0"),
    ({"wce": {"weights": [float("nan"), 1.0]}}, "weights must be a list of finite numbers"),
    ({"bce": 0, "dice": 0.0}, "every term 0"),
    ({"soft_ce": -1}, "weight must be a number ≥ 0"),
    ({"focal": {"alpha": 1.5}}, "alpha must be in"),
    ({"focal": {"gamma": "two"}}, "gamma must be a number"),
    ({"dice": {"smooth": 0}}, "smooth must be > 0"),
    ({"wbce": {"pos_weight": -2.0}}, "must be > 0"),
])
def test_option_values_of_the_wrong_kind_or_range_are_one_line_errors(spec, message) -> None:
    """Before, a string count failed inside the first training step with a traceback, and a
    negative weight trained a model to maximise its loss."""
    with pytest.raises(SlidemapError, match=message) as err:
        build_loss(spec)
    assert "\n" not in str(err.value)


def _yaml_value(value: object) -> str:
    return "null" if value is None else str(value).lower() if isinstance(value, bool) \
        else repr(value)


@pytest.mark.parametrize("name", ALL)
def test_the_config_docs_give_each_loss_its_options_and_defaults(name: str) -> None:
    """configs/README.md (generated from this description) is where a config's author learns
    that focal's alpha weighs landslides and wce's weights are [background, landslide]; its
    defaults must be the code's."""
    text = RunConfig.model_fields["loss"].description or ""
    parameters = inspect.signature(type(build_loss(name).terms[name]).__init__).parameters
    defaults = {key: p.default for key, p in parameters.items()
                if key != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    options = ", ".join(f"{key}: {_yaml_value(value)}" for key, value in defaults.items())
    assert f"`{name}`" + (f" {{{options}}}" if options else "") in text
