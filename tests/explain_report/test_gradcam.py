"""Grad-CAM and attention collection on toy models whose evidence we know by construction."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from slidemap.errors import SlidemapError
from slidemap.explain import (
    collect_attention,
    collect_attention_maps,
    default_target_layer,
    grad_cam,
)
from slidemap.models import AnySizeModel, ProbabilityAverage, build_model, build_network

SIZE = 16


class Masks(nn.Module):
    """Channel k keeps only the pixels of fixed mask k: the evidence of each channel has a place."""

    def __init__(self, masks: torch.Tensor):
        super().__init__()
        self.register_buffer("masks", masks.float().unsqueeze(0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.masks


class RegionModel(nn.Module):
    """Copy the one input band into K channels (``stem``), keep channel k on region k only
    (``split``: where each channel is active), mask again (``gate``: a pixel's logit reads only the
    channel of its region) and sum with 1×1 ``head`` weights: logit = sum_k weight_k · x · mask_k.
    """

    def __init__(self, masks: torch.Tensor, weights: list[float]):
        super().__init__()
        k = masks.shape[0]
        self.stem = nn.Conv2d(1, k, 1, bias=False)
        self.split = Masks(masks)
        self.gate = Masks(masks)
        self.head = nn.Conv2d(k, 1, 1)
        with torch.no_grad():
            self.stem.weight.fill_(1.0)
            self.head.weight.copy_(torch.tensor(weights).view(1, k, 1, 1))
            self.head.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.gate(self.split(self.stem(x))))


def boxed(x: torch.Tensor | np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """The (H, W) region of a (row0, col0, row1, col1) box over image ``x``, as explain makes
    of --box."""
    region = np.zeros(tuple(x.shape[-2:]), bool)
    region[box[0]:box[2], box[1]:box[3]] = True
    return region


def halves() -> torch.Tensor:
    left = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    left[:, : SIZE // 2] = True
    return torch.stack([left, ~left])


def quadrants() -> torch.Tensor:
    masks = torch.zeros(4, SIZE, SIZE, dtype=torch.bool)
    h = SIZE // 2
    for k, (r, c) in enumerate([(0, 0), (0, h), (h, 0), (h, h)]):
        masks[k, r : r + h, c : c + h] = True
    return masks


def image() -> torch.Tensor:
    """Positive everywhere, so every channel is active over its whole region."""
    return 0.5 + 0.5 * torch.rand(1, SIZE, SIZE, generator=torch.Generator().manual_seed(0))


def share(heat: np.ndarray, mask: torch.Tensor) -> float:
    return float(heat[mask.numpy()].sum() / heat.sum())


def test_cam_mass_lies_where_the_logits_get_their_evidence():
    model = RegionModel(halves(), [1.0, 0.0])  # only the left half feeds the logits
    result = grad_cam(model, image(), layer="split")
    assert result.region[:, : SIZE // 2].all() and not result.region[:, SIZE // 2 :].any()
    assert share(result.heat, halves()[0]) > 0.9
    assert result.heat.dtype == np.float32 and result.heat.shape == (SIZE, SIZE)
    assert result.heat.max() == pytest.approx(1.0)


def test_the_layer_matters_before_the_mask_evidence_is_everywhere():
    model = RegionModel(halves(), [1.0, 0.0])
    after = grad_cam(model, image(), layer="split")
    before = grad_cam(model, image(), layer="stem")  # channels are not yet tied to a half
    assert share(after.heat, halves()[0]) > 0.9
    assert share(before.heat, halves()[0]) < 0.6


def test_relu_keeps_positive_evidence_and_drops_negative():
    # the left half speaks for a landslide, the right half against it
    model = RegionModel(halves(), [1.0, -1.0])
    result = grad_cam(model, image(), layer="split", region=np.ones((SIZE, SIZE), bool))
    assert result.heat[:, SIZE // 2 :].max() == 0  # a flipped sign would light this half instead
    assert result.heat[:, : SIZE // 2].min() > 0


def test_a_region_explains_itself_not_the_prediction():
    model = RegionModel(quadrants(), [1.0, 1.0, 1.0, 1.0])
    top_left = quadrants()[0]
    predicted = grad_cam(model, image(), layer="split")  # everything is predicted
    region = grad_cam(model, image(), layer="split", region=top_left.numpy())
    assert predicted.region.all()
    assert share(predicted.heat, top_left) < 0.4
    assert share(region.heat, top_left) > 0.9
    np.testing.assert_array_equal(region.region, top_left.numpy())


def test_empty_prediction_asks_for_a_box():
    model = RegionModel(halves(), [-1.0, -1.0])  # nothing is a landslide
    with pytest.raises(SlidemapError, match=r"no pixel predicted as landslide.*--box"):
        grad_cam(model, image(), layer="split")
    with pytest.raises(SlidemapError, match="empty"):
        grad_cam(model, image(), layer="split", region=np.zeros((SIZE, SIZE), bool))


def test_no_positive_evidence_gives_an_all_zero_map():
    model = RegionModel(halves(), [0.0, 0.0])
    result = grad_cam(model, image(), layer="split", region=np.ones((SIZE, SIZE), bool))
    assert not np.isnan(result.heat).any() and result.heat.max() == 0


def no_hooks(model: nn.Module) -> bool:
    return all(
        not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks
        for m in model.modules()
    )


@pytest.mark.parametrize("training", [True, False])
def test_hooks_removed_mode_restored_and_no_parameter_gradients(training: bool):
    model = RegionModel(halves(), [1.0, 0.0]).train(training)
    grad_cam(model, image(), layer="gate")
    assert no_hooks(model)
    assert all(m.training == training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())
    failing = RegionModel(halves(), [-1.0, 0.0]).train(training)
    with pytest.raises(SlidemapError):
        grad_cam(failing, image(), layer="split")
    assert no_hooks(failing) and all(m.training == training for m in failing.modules())


def test_bad_layers_are_reported():
    model = RegionModel(halves(), [1.0, 0.0])
    with pytest.raises(SlidemapError, match="no layer"):
        grad_cam(model, image(), layer="nope")
    assert no_hooks(model)


@pytest.mark.parametrize("architecture", ["unet", "fcn"])
def test_every_layer_offered_for_an_unknown_name_can_be_explained(architecture: str):
    """The list named ``encoder`` (which returns a list of maps) and ``encoder.stages`` (never
    called), and ``--layer encoder`` then failed: only layers that output a map are offered."""
    torch.manual_seed(0)
    model = build_model(architecture, 3, width=4)
    x = torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(1))
    with pytest.raises(SlidemapError, match="no layer 'nope'") as error:
        grad_cam(model, x, layer="nope", region=boxed(x, (0, 0, 16, 16)))
    names = re.search(r"(\w[\w.]*(?:, \w[\w.]*)+) \(or", str(error.value))
    assert names is not None, error.value
    offered = names[1].split(", ")
    assert "encoder" not in offered and "encoder.stages" not in offered
    assert "decoder" in offered or architecture == "fcn"
    for layer in offered:
        assert grad_cam(model, x, layer=layer, region=boxed(x, (0, 0, 16, 16))).layer == layer
    assert no_hooks(model)


def test_default_layer_is_the_one_the_model_contract_names():
    assert default_target_layer(build_model("unet", 3, width=4, depth=2)) == "decoder"
    assert default_target_layer(build_model("fcn", 3, width=4)) == "encoder.stages.3"
    assert default_target_layer(build_network("unet", 3, 4, members=2)) == "decoder"
    mixed = ProbabilityAverage([build_model("unet", 3, 4), build_model("fcn", 3, 4)])
    with pytest.raises(SlidemapError, match=r"name different Grad-CAM layers.*--layer"):
        default_target_layer(mixed)
    with pytest.raises(SlidemapError, match="pass one by name"):
        default_target_layer(RegionModel(halves(), [1.0, 0.0]))


def test_unet_window_of_any_size():
    torch.manual_seed(0)  # some random inits have no positive evidence at all: an all-zero map
    model = build_model("unet", 3, width=4, depth=2)
    x = torch.randn(3, 37, 45, generator=torch.Generator().manual_seed(1))
    result = grad_cam(model, x, region=boxed(x, (5, 5, 20, 30)))
    assert result.layer == "decoder"
    assert result.heat.shape == result.probability.shape == (37, 45)
    assert result.heat.min() >= 0 and result.heat.max() == pytest.approx(1.0)


class RegionNet(AnySizeModel):
    """:class:`RegionModel` as a network an ensemble can hold, explained at ``split``."""

    stride = 1

    def __init__(self, weights: list[float]):
        super().__init__()
        self.net = RegionModel(halves(), weights)

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    @property
    def target_layer(self) -> str:
        return "net.split"


def test_an_ensemble_map_is_the_mean_of_its_members_maps():
    # member 0's evidence lies in the left half, member 1's (twice as strong) in the right half:
    # over the whole window their unnormalised maps are 0.5·x on the left and 1·x on the right
    # (the gradient of w_k·x summed over the window, averaged over it, weighs x), whose mean is
    # 0.25·x left and 0.5·x right; the last member's map alone has nothing on the left
    ensemble = ProbabilityAverage([RegionNet([1.0, 0.0]), RegionNet([0.0, 2.0])])
    x = image()
    result = grad_cam(ensemble, x, region=boxed(x, (0, 0, SIZE, SIZE)))
    left = halves()[0]
    expected = torch.where(left, 0.25 * x[0], 0.5 * x[0])
    np.testing.assert_allclose(result.heat, (expected / expected.max()).numpy(), rtol=1e-5)
    assert result.layer == "mean over 2 members' net.split"
    assert no_hooks(ensemble) and all(p.grad is None for p in ensemble.parameters())
    with torch.no_grad():
        np.testing.assert_allclose(result.probability, torch.sigmoid(ensemble(x[None]))[0, 0])


def test_an_ensemble_layer_is_named_as_its_members_name_it():
    ensemble = ProbabilityAverage([RegionNet([1.0, 0.0]), RegionNet([0.0, 2.0])])
    everything = np.ones((SIZE, SIZE), bool)
    gated = grad_cam(ensemble, image(), layer="net.gate", region=everything)
    assert gated.layer == "mean over 2 members' net.gate"
    for name in ("members.0.net.split", "nope"):  # the ensemble's own name, or none
        with pytest.raises(SlidemapError, match=rf"not every member .* {name!r}: name a layer as "
                                                r"each member names it \(e\.g\. 'net\.split'\)"):
            grad_cam(ensemble, image(), layer=name, region=everything)
    assert no_hooks(ensemble)


def test_an_ensemble_of_networks_explains_every_member():
    torch.manual_seed(0)
    ensemble = build_network("unet", 3, 4, members=2, depth=2)
    x = torch.randn(3, 37, 45, generator=torch.Generator().manual_seed(1))
    result = grad_cam(ensemble, x, region=boxed(x, (5, 5, 20, 30)))
    named = grad_cam(ensemble, x, layer="decoder", region=boxed(x, (5, 5, 20, 30)))
    assert result.layer == named.layer == "mean over 2 members' decoder"
    np.testing.assert_array_equal(result.heat, named.heat)
    assert result.heat.shape == (37, 45) and result.heat.max() == pytest.approx(1.0)
    alone = [grad_cam(member, x, region=boxed(x, (5, 5, 20, 30))).heat
             for member in ensemble.member_models()]
    assert not np.allclose(result.heat, alone[1])  # not the last member's map


class FirstColumns(nn.Module):
    def __init__(self, keep: int):
        super().__init__()
        self.keep = keep

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x[..., : self.keep], torch.zeros_like(x[..., self.keep :])], dim=-1)


class Coarse(AnySizeModel):
    """Stride-16 model whose ``features`` (at 1/4 scale) are active in feature columns 0–1 only,
    i.e. in image columns 0–7 of the padded grid."""

    stride = 16

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.AvgPool2d(4), FirstColumns(2))
        self.head = nn.Conv2d(1, 1, 1)
        with torch.no_grad():
            self.head.weight.fill_(1.0)
            self.head.bias.zero_()

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.interpolate(self.features(x), size=x.shape[-2:], mode="nearest"))


def test_cam_is_aligned_with_the_padded_grid_the_model_saw():
    x = torch.ones(1, 10, 18)  # padded to 16×32: features are 4×8
    heat = grad_cam(Coarse(), x, layer="features", region=boxed(x, (0, 0, 10, 18))).heat
    assert heat.shape == (10, 18)
    assert heat[:, :9].min() > 0  # stretching 8 feature columns over 18 would end near column 5
    assert heat[:, 10:].max() == 0


class GatedModel(AnySizeModel):
    """Keeps a spatial gate (left half open) and a channel gate, as attention models do."""

    stride = 4

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Conv2d(2, 1, 1)

    def forward_padded(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        gate = torch.zeros(b, 1, h // 2, w // 2)
        gate[..., : w // 4] = 0.8
        self.attention_maps = {"spatial": gate, "channel": torch.full((b, 2, 1, 1), 0.3)}
        return self.head(x)


def test_attention_maps_are_upsampled_to_the_window():
    model = GatedModel().train()
    x = torch.rand(2, 14, 18)  # padded to 16×20 by stride 4, maps are at half that
    maps = collect_attention(model, x)
    assert set(maps.spatial) == {"spatial"} and set(maps.channel) == {"channel"}
    spatial = maps.spatial["spatial"]
    assert spatial.shape == (14, 18) and spatial.dtype == np.float32
    assert spatial[:, :8].min() == pytest.approx(0.8)  # a sigmoid gate keeps its level
    assert spatial[:, 12:].max() == 0
    np.testing.assert_allclose(maps.channel["channel"], [0.3, 0.3])
    assert set(collect_attention_maps(model, x)) == {"spatial"}
    assert model.training


def test_attention_of_a_registered_model():
    model = build_model("unet", 3, width=4, depth=2)
    assert collect_attention_maps(model, torch.rand(3, 20, 20)) == {}


def test_segformer_attention_reaches_the_top_of_the_colour_scale():
    # received attention sums to 1 over the key positions (each about 1/64 here): drawn as it
    # was on the pictures' 0-1 scale it was one dark colour, whatever its pattern
    torch.manual_seed(0)
    model = build_model("segformer", 3, width=8)
    maps = collect_attention(model, torch.randn(3, 128, 128)).spatial
    assert len(maps) == 4
    for name, spatial in maps.items():
        assert 0.9 < spatial.max() <= 1.0, name
        assert spatial.min() > 0, name
