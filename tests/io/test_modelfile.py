"""Model files: safetensors + JSON round trip, no pickle."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from factories import rewrite_sidecar
from safetensors.torch import load_file, save_file

from slidemap.data.channels import InputSpec
from slidemap.errors import SlidemapError
from slidemap.io import modelfile
from slidemap.io.modelfile import ModelBundle, load_model, model_paths, save_model
from slidemap.models import build_model


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


def test_a_figure_without_value_is_null_in_the_sidecar(tiny_model, tmp_path) -> None:
    """Validation with one class has no AUC: the sidecar stays strict JSON and loads again."""
    bundle = load_model(tiny_model)
    bundle.provenance = {**bundle.provenance, "validation": {"f1": 0.5, "auc": float("nan")}}
    path = save_model(bundle, tmp_path / "nan")
    _, sidecar = model_paths(path)
    strict = json.loads(sidecar.read_text(),
                        parse_constant=lambda name: pytest.fail(f"bare {name} in the sidecar"))
    assert strict["provenance"]["validation"]["auc"] is None
    assert load_model(path).provenance["validation"] == {"f1": 0.5, "auc": None}


def test_instance_batch_norm_fusion_round_trips_through_int4(tmp_path) -> None:
    """The instance-norm half of IBN-a has affine weights and no running statistics: they must be
    stored and restored like any other, in the smallest weight format too."""
    torch.manual_seed(0)
    options = {"instance_norm_levels": 3}
    model = build_model("fusion", 5, width=4, **options)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.InstanceNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
    model.eval()
    bundle = ModelBundle(model=model, architecture="fusion", width=4, options=options,
                         inputs=InputSpec(image_bands=(1, 2, 3), dem=True, slope=True),
                         mean=[0.0] * 5, std=[1.0] * 5, weights_dtype="int4")
    path = save_model(bundle, tmp_path / "ibn")
    again = load_model(path).model
    for name, module in again.named_modules():
        if isinstance(module, torch.nn.InstanceNorm2d):
            original = model.get_submodule(name)
            assert torch.equal(module.weight, original.weight)
            assert torch.equal(module.bias, original.bias)
    x = torch.randn(1, 5, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x), atol=0.05, rtol=0.05)


def test_float16_weights_halve_the_file_and_load_as_float32(tiny_model, tmp_path) -> None:
    bundle = load_model(tiny_model)
    half = save_model(replace(bundle, weights_dtype="float16"), tmp_path / "half")
    stored = load_file(str(half))
    assert all(t.dtype == torch.float16 for t in stored.values() if t.is_floating_point())
    weights, _ = model_paths(tiny_model)
    assert half.stat().st_size < 0.6 * weights.stat().st_size
    again = load_model(half)
    assert again.weights_dtype == "float16"
    assert json.loads(model_paths(half)[1].read_text())["weights_dtype"] == "float16"
    assert all(p.dtype == torch.float32 for p in again.model.parameters())
    x = torch.randn(1, 4, 40, 40)
    with torch.no_grad():
        full, rounded = torch.sigmoid(bundle.model(x)), torch.sigmoid(again.model(x))
    assert 0 < (full - rounded).abs().max() < 1e-2
    # Saved again, a float16 model stays float16 (fine-tuning or self-training keep the size).
    assert load_file(str(save_model(again, tmp_path / "again")))["encoder.stages.0.0.0.weight"
                                                                   ].dtype == torch.float16


def test_int8_weights_quarter_the_file_and_load_as_float32(tiny_model, tmp_path) -> None:
    bundle = load_model(tiny_model)
    small = save_model(replace(bundle, weights_dtype="int8"), tmp_path / "small")
    stored = load_file(str(small))
    kernel = "encoder.stages.0.0.0.weight"
    assert stored[kernel].dtype == torch.int8 and stored[kernel].abs().max() == 127
    assert stored[kernel + ".int8_scale"].shape == (stored[kernel].shape[0],)
    assert not any(t.dtype == torch.float16 for t in stored.values())
    weights, _ = model_paths(tiny_model)
    assert small.stat().st_size < 0.5 * weights.stat().st_size  # headers weigh on a tiny model
    again = load_model(small)
    assert again.weights_dtype == "int8"
    assert all(p.dtype == torch.float32 for p in again.model.parameters())
    original = bundle.model.state_dict()[kernel]
    step = original.abs().amax(dim=(1, 2, 3), keepdim=True) / 127
    assert ((again.model.state_dict()[kernel] - original).abs() <= step / 2 + 1e-7).all()
    x = torch.randn(1, 4, 40, 40)
    with torch.no_grad():
        full, rounded = torch.sigmoid(bundle.model(x)), torch.sigmoid(again.model(x))
    assert 0 < (full - rounded).abs().max() < 5e-2
    # Saved again, an int8 model keeps the same whole numbers and scales.
    resaved = load_file(str(save_model(again, tmp_path / "again")))
    assert torch.equal(resaved[kernel], stored[kernel])
    torch.testing.assert_close(resaved[kernel + ".int8_scale"], stored[kernel + ".int8_scale"])


def test_int4_stores_the_largest_kernels_in_four_bits_and_the_rest_as_int8(
        tiny_model, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(modelfile, "INT4_MIN_WEIGHTS", 1000)  # the tiny net's three largest
    bundle = load_model(tiny_model)
    eight = save_model(replace(bundle, weights_dtype="int8"), tmp_path / "eight")
    four = save_model(replace(bundle, weights_dtype="int4"), tmp_path / "four")
    stored = load_file(str(four))
    big, small = "encoder.stages.2.1.1.0.weight", "encoder.stages.0.0.0.weight"  # 2304, 144
    assert stored[big].dtype == torch.uint8 and stored[big].shape == (16, 72)
    assert stored[big + ".int4_scale"].shape == (16,) and big + ".int8_scale" not in stored
    assert stored[small].dtype == torch.int8 and small + ".int8_scale" in stored
    assert sum(t.dtype == torch.uint8 for t in stored.values()) == 3
    assert four.stat().st_size < eight.stat().st_size
    again = load_model(four)
    assert again.weights_dtype == "int4"
    assert all(p.dtype == torch.float32 for p in again.model.parameters())
    original, restored = bundle.model.state_dict()[big], again.model.state_dict()[big]
    step = original.abs().amax(dim=(1, 2, 3), keepdim=True) / 7
    error = (restored - original).abs()
    assert (error <= step / 2 + 1e-7).all() and (error > step / 8).any()
    torch.testing.assert_close(again.model.state_dict()[small],
                               load_model(eight).model.state_dict()[small])
    # Saved again, a 4-bit model keeps the same bytes and scales.
    resaved = load_file(str(save_model(again, tmp_path / "again")))
    assert torch.equal(resaved[big], stored[big])
    torch.testing.assert_close(resaved[big + ".int4_scale"], stored[big + ".int4_scale"])


def test_four_bit_packing_round_trips_an_odd_count() -> None:
    whole = torch.tensor([[-7, 0, 7, 3, -1], [1, 2, -3, 4, -5]], dtype=torch.int8)
    packed = modelfile._packed(whole)
    assert packed.dtype == torch.uint8 and packed.shape == (2, 3)
    assert torch.equal(modelfile._unpacked(packed, (2, 5)), whole)


@pytest.mark.parametrize("damage", ["no scales", "short scales", "wrong packing"])
def test_int4_weights_that_do_not_match_their_scales_are_refused(tiny_model, tmp_path,
                                                                 monkeypatch, damage) -> None:
    monkeypatch.setattr(modelfile, "INT4_MIN_WEIGHTS", 1000)
    four = save_model(replace(load_model(tiny_model), weights_dtype="int4"), tmp_path / "four")
    stored = load_file(str(four))
    big = "encoder.stages.2.1.1.0.weight"
    if damage == "no scales":  # packed bytes would not even have the kernel's shape
        del stored[big + ".int4_scale"]
    elif damage == "short scales":
        stored[big + ".int4_scale"] = stored[big + ".int4_scale"][:-1].clone()
    else:
        stored[big] = stored[big][:, :-1].clone()
    save_file(stored, str(four))
    rewrite_sidecar(four, weights_sha256=None)  # as a file saved before sidecars held a hash
    with pytest.raises(SlidemapError, match=r"its scales|do not match their sidecar"):
        load_model(four)


@pytest.mark.parametrize("damage", ["short scales", "no scales", "stray scales"])
def test_int8_weights_that_do_not_match_their_scales_are_refused(tiny_model, tmp_path,
                                                                 damage: str) -> None:
    small = save_model(replace(load_model(tiny_model), weights_dtype="int8"), tmp_path / "small")
    stored = load_file(str(small))
    kernel = "encoder.stages.0.0.0.weight"
    if damage == "short scales":
        stored[kernel + ".int8_scale"] = stored[kernel + ".int8_scale"][:-1].clone()
    elif damage == "no scales":  # whole numbers would load as if they were the weights
        del stored[kernel + ".int8_scale"]
    else:
        stored["head.extra.int8_scale"] = torch.ones(1)
    save_file(stored, str(small))
    rewrite_sidecar(small, weights_sha256=None)
    with pytest.raises(SlidemapError, match=r"its scales|belong to no weight"):
        load_model(small)


def test_float16_refuses_weights_it_cannot_hold(tiny_model, tmp_path) -> None:
    bundle = load_model(tiny_model)
    with torch.no_grad():
        next(bundle.model.parameters())[0] = 1e6
    with pytest.raises(SlidemapError, match="overflows float16"):
        save_model(replace(bundle, weights_dtype="float16"), tmp_path / "big")
    assert not list(tmp_path.glob("big*"))


def test_unknown_weights_dtype_in_sidecar_is_refused(tiny_model) -> None:
    rewrite_sidecar(tiny_model, weights_dtype="int2")
    with pytest.raises(SlidemapError, match="weights_dtype 'int2'"):
        load_model(tiny_model)


def test_export_weights_stores_a_smaller_copy_and_never_the_input(tiny_model, tmp_path,
                                                                   run_cli) -> None:
    card = {"new_ground": "F1 0.5 on held-out blocks"}
    rewrite_sidecar(tiny_model, card=card)
    before = {p: p.read_bytes() for p in model_paths(tiny_model)}
    code, err = run_cli("export", tiny_model, "--weights", "int8", "--out", tmp_path / "small")
    assert code == 0, err
    small = load_model(tmp_path / "small.safetensors")
    assert small.weights_dtype == "int8"
    # The same network in a smaller file keeps its card; a model derived from it does not.
    assert json.loads(model_paths(tmp_path / "small")[1].read_text())["card"] == card
    assert small.card == {} and "card" not in small.sidecar()
    size = (tmp_path / "small.safetensors").stat().st_size
    assert size < model_paths(tiny_model)[0].stat().st_size
    refused = {
        "int2": ("export", tiny_model, "--weights", "int2", "--out", tmp_path / "bad"),
        "overwrite an input": ("export", tiny_model, "--weights", "int8", "--out", tiny_model,
                               "--overwrite"),
        "name it with --out": ("export", tiny_model, "--weights", "int8"),
        "exists": ("export", tiny_model, "--weights", "float16", "--out", tmp_path / "small"),
        # a folder: the file was written beside it, as bad_dir.safetensors, not in it
        "bad_dir is a folder": ("export", tiny_model, "--weights", "int8", "--out",
                                tmp_path / "bad_dir"),
    }
    (tmp_path / "bad_dir").mkdir()
    for message, args in refused.items():
        code, err = run_cli(*args)
        assert code != 0 and message in err and "Traceback" not in err, (message, err)
        assert len(err.strip().splitlines()) == 1, err
    assert [p.name for p in tmp_path.glob("bad*")] == ["bad_dir"]
    assert not list((tmp_path / "bad_dir").iterdir())
    assert {p: p.read_bytes() for p in model_paths(tiny_model)} == before
