"""Every registered architecture: shapes, a training step, and the attention contracts."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from slidemap.errors import SlidemapError
from slidemap.models import (
    build_model,
    count_parameters,
    list_models,
    model_table,
    resolved_options,
)
from slidemap.models.attention import ContextualAttention, SpatialAttention
from slidemap.models.blocks import ASPP, BinAverage, InstanceBatchNorm
from slidemap.models.da_unet import AttentionGuidedFusion
from slidemap.schema.run import ModelSettings

WIDTH = 8  # tiny models keep the whole file fast on one CPU thread
EXPECTED = {
    "unet", "resunet", "unetpp", "unetpp_spatial", "unetpp_contextual",
    "unetpp_spatial_contextual", "d_unet", "a_unet", "da_unet", "fusion", "fcn", "pspnet",
    "deeplabv3plus", "segformer",
}


def test_every_architecture_is_registered() -> None:
    assert set(list_models()) >= EXPECTED


@pytest.mark.parametrize("in_channels", [3, 4, 5, 14])
@pytest.mark.parametrize("name", list_models())
def test_forward_and_training_step(name: str, in_channels: int) -> None:
    torch.manual_seed(0)
    model = build_model(name, in_channels, width=WIDTH)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(2, in_channels, 100, 100)
    target = (torch.rand(2, 1, 100, 100) > 0.5).float()

    logits = model(x)
    assert logits.shape == (2, 1, 100, 100)
    F.binary_cross_entropy_with_logits(logits, target).backward()

    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert [n for n, p in params if p.grad is None] == []
    assert [n for n, p in params if not torch.isfinite(p.grad).all()] == []
    optimizer.step()
    assert all(torch.isfinite(p).all() for _, p in params)


@pytest.mark.parametrize("name", list_models())
def test_odd_sizes_and_batch_of_one(name: str) -> None:
    model = build_model(name, 4, width=WIDTH)
    assert model(torch.randn(1, 4, 37, 61)).shape == (1, 1, 37, 61)  # training mode, batch 1
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(2, 4, 70, 45)).shape == (2, 1, 70, 45)


def test_every_option_of_every_architecture_is_documented() -> None:
    """model.options named only `depth` (as an example) and fusion's two options: segformer's
    `depths` was in no document, and nothing said which architectures take `depth`."""
    description = ModelSettings.model_fields["options"].description or ""
    none = re.search(r"\(none: ([^)]*)\)", description)
    for name in list_models():
        options = resolved_options(name, {})
        if not options:
            assert none and name in none.group(1).split(", "), name
        for option in options:
            clause = re.search(rf"`{option}` \(([^)]*)\)", description)
            assert clause and name in clause.group(1).split(", "), (name, option)


@pytest.mark.parametrize(("name", "options"), [
    ("unet", {"depth": True}), ("da_unet", {"depth": 3.0}), ("unetpp", {"depth": "3"}),
    ("fusion", {"elevation_channels": True}), ("fusion", {"instance_norm_levels": 1.5}),
])
def test_whole_number_options_refuse_other_values(name: str, options: dict) -> None:
    """`depth: true` (YAML's yes) built a U-Net of one down-sampling, and `depth: 3.0` was
    refused as an option the model 'does not take'."""
    with pytest.raises(SlidemapError, match=rf"{name} option \w+ must be a whole number"), \
            torch.device("meta"):
        build_model(name, 5, width=WIDTH, **options)


def test_whole_number_options_take_whole_numbers_and_null_where_the_default_is() -> None:
    with torch.device("meta"):
        assert build_model("fusion", 5, width=WIDTH, depth=2, elevation_channels=None,
                           instance_norm_levels=1).stride == 4
        assert build_model("segformer", 5, width=WIDTH, depths=[1, 1, 1, 1]).stride == 32


def test_model_table_lists_every_model_with_its_size() -> None:
    rows = model_table(in_channels=5)
    assert [name for name, _ in rows] == list_models()
    assert all(isinstance(count, int) and count > 0 for _, count in rows)


# --- DA-U-Net ablation ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a_unet", "da_unet"])
def test_alpha_per_decoder_level(name: str) -> None:
    model = build_model(name, 5, width=WIDTH)
    model(torch.randn(2, 5, 96, 96))  # a multiple of 16: no padding, levels are 96 / 2**i
    assert set(model.attention_maps) == {f"alpha_level{i}" for i in range(4)}
    for i in range(4):
        alpha = model.attention_maps[f"alpha_level{i}"]
        assert alpha.shape == (2, 1, 96 // 2**i, 96 // 2**i)
        assert (alpha > 0).all() and (alpha < 1).all()


def test_attention_gate_computes_a_plus_alpha_a() -> None:
    torch.manual_seed(0)
    gate = AttentionGuidedFusion(skip_channels=4, coarse_channels=6, inter_channels=3)
    a, b = torch.randn(2, 4, 8, 8), torch.randn(2, 6, 4, 4)
    fused, alpha = gate(a, b)

    wa, wb = gate.skip_proj, gate.coarse_proj
    ra = F.conv2d(a, wa.weight, wa.bias)
    rb = F.interpolate(F.conv2d(b, wb.weight, wb.bias), size=(8, 8), mode="bilinear",
                       align_corners=False)
    expected_alpha = torch.sigmoid(F.conv2d(torch.relu(ra + rb), gate.psi.weight, gate.psi.bias))
    assert alpha.shape == (2, 1, 8, 8)
    torch.testing.assert_close(alpha, expected_alpha)
    torch.testing.assert_close(fused, a + expected_alpha * a)


def test_decoder_concatenates_the_gated_skip() -> None:
    model = build_model("da_unet", 3, width=WIDTH)
    gate, stage = model.decoder.gates[0], model.decoder.stages[0]
    seen: dict[str, torch.Tensor] = {}
    gate.register_forward_hook(lambda m, args, out: seen.update(fused=out[0]))
    stage.register_forward_hook(lambda m, args, out: seen.update(concat=args[0]))
    model(torch.randn(1, 3, 64, 64))
    coarse = seen["concat"].shape[1] - seen["fused"].shape[1]
    torch.testing.assert_close(seen["concat"][:, coarse:], seen["fused"])


def test_ablation_parts() -> None:
    def asp(model: nn.Module) -> list[ASPP]:
        return [m for m in model.modules() if isinstance(m, ASPP)]

    d_unet, a_unet = build_model("d_unet", 5, width=WIDTH), build_model("a_unet", 5, width=WIDTH)
    d_unet(torch.randn(1, 5, 64, 64))
    assert d_unet.attention_maps == {}
    assert len(asp(d_unet)) == 1
    assert asp(a_unet) == []
    assert len(asp(build_model("da_unet", 5, width=WIDTH))) == 1


def test_the_aspp_bottleneck_costs_what_its_docstring_says() -> None:
    """A fifth more parameters than the double conv it replaces, a tenth more in the network
    (the docstring said 'about the same number')."""
    unet, d_unet = build_model("unet", 9, width=16), build_model("d_unet", 9, width=16)
    stage = count_parameters(d_unet.encoder.stages[-1]) / count_parameters(unet.encoder.stages[-1])
    assert 1.15 < stage < 1.25
    assert 1.05 < count_parameters(d_unet) / count_parameters(unet) < 1.15


@pytest.mark.parametrize("name", ["d_unet", "da_unet"])
def test_aspp_dilations_are_1_3_6(name: str) -> None:
    (aspp,) = [m for m in build_model(name, 5, width=WIDTH).modules() if isinstance(m, ASPP)]
    convs = [m for branch in aspp.branches for m in branch.modules() if isinstance(m, nn.Conv2d)]
    assert [c.dilation for c in convs] == [(1, 1), (3, 3), (6, 6)]
    assert all(c.kernel_size == (3, 3) for c in convs)


def test_deeplab_aspp_rates() -> None:
    (aspp,) = [m for m in build_model("deeplabv3plus", 5, width=WIDTH).modules()
               if isinstance(m, ASPP)]
    assert aspp.dilations == (1, 6, 12, 18)
    assert len(aspp.branches) == 5  # four rates and image pooling


def _off_centre_gradient(rates: list[int], rate: int, size: int) -> float:
    """The gradient on the off-centre taps of the ASPP branch of ``rate`` after one backward
    pass on a ``size`` px window."""
    torch.manual_seed(0)
    model = build_model("deeplabv3plus", 5, width=WIDTH, rates=rates)
    model(torch.randn(2, 5, size, size)).square().mean().backward()
    (aspp,) = [m for m in model.modules() if isinstance(m, ASPP)]
    grad = aspp.branches[rates.index(rate)][0].weight.grad.abs()
    return float(grad.sum() - grad[..., 1, 1].sum())


def test_deeplab_rates_that_reach_past_its_features_learn_nothing_off_centre() -> None:
    """What the rates option is for: at 256 px the features are 16 px, so the paper's rate 18
    reads only padding off its centre (its taps never train); rates 1, 3, 6, 9 all learn."""
    assert _off_centre_gradient([1, 6, 12, 18], 18, 256) == 0
    assert _off_centre_gradient([1, 6, 12, 18], 18, 512) > 0
    assert _off_centre_gradient([1, 3, 6, 9], 9, 256) > 0


@pytest.mark.parametrize("rates", [[], [0, 6], [6, 6], [1, 2.5], [True, 6], 6])
def test_deeplab_rates_that_build_no_useful_branch_are_one_line(rates: object) -> None:
    with pytest.raises(SlidemapError, match=r"deeplabv3plus rates must be distinct whole numbers"):
        build_model("deeplabv3plus", 5, width=WIDTH, rates=rates)


# --- attention maps of U-Net++ variants and the fusion network ----------------------------------


def test_spatial_and_contextual_attention_modules() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 8, 5, 5)
    spatial = SpatialAttention()
    out, maps = spatial(x)
    pooled = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], dim=1)
    expected = torch.sigmoid(spatial.conv(pooled))
    torch.testing.assert_close(maps["spatial"], expected)
    torch.testing.assert_close(out, x * expected)

    contextual = ContextualAttention(8)
    out, maps = contextual(x)
    channel_out, channel = contextual.channel(x)
    torch.testing.assert_close(out, contextual.spatial(channel_out)[0])  # channel, then spatial
    torch.testing.assert_close(maps["contextual_channel"], channel["channel"])
    assert maps["contextual_channel"].shape == (2, 8, 1, 1)
    assert maps["contextual_spatial"].shape == (2, 1, 5, 5)


@pytest.mark.parametrize(("name", "kinds"), [
    ("unetpp", []),
    ("unetpp_spatial", ["spatial"]),
    ("unetpp_contextual", ["contextual_channel", "contextual_spatial"]),
    ("unetpp_spatial_contextual", ["spatial", "contextual_channel", "contextual_spatial"]),
])
def test_unetpp_attention_maps(name: str, kinds: list[str]) -> None:
    model = build_model(name, 5, width=WIDTH)
    model(torch.randn(2, 5, 64, 64))
    assert set(model.attention_maps) == {f"level{i}_{k}" for i in range(5) for k in kinds}
    for key, value in model.attention_maps.items():
        level = int(key[5])
        expected = (2, WIDTH * 2**level, 1, 1) if "channel" in key else (2, 1, 64 >> level,
                                                                         64 >> level)
        assert value.shape == expected
        assert (value > 0).all() and (value < 1).all()


def test_fusion_maps_and_elevation_channels() -> None:
    model = build_model("fusion", 5, width=WIDTH, elevation_channels=1)
    model(torch.randn(2, 5, 64, 64))
    assert {f"level{i}_contextual_spatial" for i in range(4)} <= set(model.attention_maps)
    assert model.encoder.optical.stages[0].body[0].in_channels == 4
    default = build_model("fusion", 5, width=WIDTH)
    assert default.encoder.elevation.stages[0].body[0].in_channels == 2
    with pytest.raises(SlidemapError):
        build_model("fusion", 5, width=WIDTH, elevation_channels=5)


def test_instance_batch_norm_takes_each_windows_contrast_out_of_its_first_half() -> None:
    torch.manual_seed(0)
    norm = InstanceBatchNorm(6)
    norm(torch.randn(4, 6, 16, 16))  # gives batch norm running statistics to use in eval mode
    norm.eval()
    x = torch.randn(2, 6, 16, 16)
    brighter = 3.0 * x + 5.0
    with torch.no_grad():
        out, out_brighter = norm(x), norm(brighter)
    torch.testing.assert_close(out_brighter[:, :3], out[:, :3], atol=1e-4, rtol=1e-4)
    assert not torch.allclose(out_brighter[:, 3:], out[:, 3:], atol=1e-2)


def test_fusion_instance_norm_levels_touch_the_optical_encoder_only() -> None:
    model = build_model("fusion", 5, width=WIDTH, instance_norm_levels=2)
    def ibn(encoder: nn.Module) -> list[bool]:
        return [isinstance(stage.body[1], InstanceBatchNorm) for stage in encoder.stages]
    assert ibn(model.encoder.optical) == [True, True, False, False, False]
    assert ibn(model.encoder.elevation) == [False] * 5
    model(torch.randn(2, 5, 64, 64)).sum().backward()
    with pytest.raises(SlidemapError, match="instance_norm_levels"):
        build_model("fusion", 5, width=WIDTH, instance_norm_levels=6)


@pytest.mark.parametrize("size", [(6, 6), (7, 13), (37, 5), (2, 9), (1, 1)])
def test_bin_average_is_adaptive_average_pooling(size: tuple[int, int]) -> None:
    """PSPNet's exportable pooling has torch's bins, also where they overlap (7 px in 6 bins)."""
    x = torch.randn(2, 3, *size).to(memory_format=torch.channels_last)
    for bins in (2, 3, 6):
        torch.testing.assert_close(BinAverage(bins)(x), F.adaptive_avg_pool2d(x, bins))


@pytest.mark.parametrize(("name", "depth", "message"), [
    *((name, -1, r"depth \(down-samplings\) must be 0 or more, e\.g\. 4, got -1")
      for name in ("unet", "a_unet", "resunet", "unetpp", "unetpp_spatial_contextual", "fusion")),
    ("da_unet", 0, "d_unet and da_unet need depth 1 or more"),
    ("d_unet", -2, "d_unet and da_unet need depth 1 or more"),
])
def test_a_depth_with_no_level_is_one_line(name: str, depth: int, message: str) -> None:
    """A negative depth (or 0 for the ASPP bottleneck, which has no stage to replace) was an
    IndexError traceback from inside the encoder's constructor."""
    with pytest.raises(SlidemapError, match=message):
        build_model(name, 5, width=WIDTH, depth=depth)
    assert build_model("unet", 5, width=WIDTH, depth=0)(torch.zeros(1, 5, 7, 9)).shape == \
        (1, 1, 7, 9)


@pytest.mark.parametrize("depths", [[], [0, 2, 2, 2], [2, 2], [2, 2, 2, 2, 2], [2.5, 2, 2, 2], 3])
def test_segformer_depths_that_build_no_network_are_one_line(depths: object) -> None:
    """A stage of 0 blocks was an IndexError traceback in the first forward; a count of stages
    other than four a zip error that named no option."""
    with pytest.raises(SlidemapError, match=r"segformer depths must be 4 whole numbers of 1 or "
                                            r"more \(blocks per stage\), e\.g\. \[2, 2, 2, 2\]"):
        build_model("segformer", 5, width=WIDTH, depths=depths)
