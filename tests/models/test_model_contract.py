"""Every architecture is an encoder → decoder → head, and what needs the parts uses the contract.

Freezing, the encoder's learning rate, Grad-CAM's layer and fine-tuning work on every registered
architecture (tiny widths) and on every shipped model file, whose keys (saved before the
contract) still load.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from slidemap.data.channels import InputSpec
from slidemap.explain import default_target_layer, grad_cam
from slidemap.io.modelfile import ModelBundle, load_model, save_model
from slidemap.io.sidecar import header_shapes, read_header
from slidemap.models import (
    Decoder,
    Encoder,
    ProbabilityAverage,
    SegmentationModel,
    build_model,
    list_models,
)
from slidemap.models.blocks import ASPP, DoubleConv
from slidemap.models.da_unet import AttentionUNetDecoder
from slidemap.models.legacy import current_key, current_keys
from slidemap.schema.config import load_config
from slidemap.train.finetune import finetune
from slidemap.train.warmstart import parameter_groups

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted((ROOT / "models").glob("*.safetensors"))
SAMPLE = ROOT / "examples" / "jinsha-b"


def tiny(name: str) -> SegmentationModel:
    torch.manual_seed(0)
    return build_model(name, 5, width=4)


def state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("name", list_models())
def test_architecture_is_encoder_decoder_head(name: str) -> None:
    model = tiny(name).eval()
    assert isinstance(model.encoder, Encoder) and isinstance(model.decoder, Decoder)
    x = torch.randn(1, 5, 37, 45, generator=torch.Generator().manual_seed(1))
    features = model.encoder(x)
    assert [f.shape[1] for f in features][-len(model.encoder.channels):] == \
        model.encoder.channels[-len(features):]
    assert model.decoder(features).ndim == 4
    with torch.no_grad():
        assert model(x).shape == (1, 1, 37, 45)
    layer = default_target_layer(model)
    assert layer in dict(model.named_modules())
    whole = np.ones((37, 45), bool)
    assert grad_cam(model, x[0], region=whole).layer == layer


@pytest.mark.parametrize("name", list_models())
def test_freeze_encoder_trains_only_decoder_and_head(name: str) -> None:
    model = tiny(name)
    groups = parameter_groups(model, 1e-2, 0.1)
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in model.encoder.parameters()}
    assert len(groups[0]["params"]) + len(groups[1]["params"]) == len(list(model.parameters()))
    model.freeze_encoder()
    model.train()
    assert model.training and not any(m.training for m in model.encoder.modules())
    before_encoder, before_rest = state(model.encoder), state(model)
    optimizer = torch.optim.AdamW(parameter_groups(model, 1e-2, 1.0))
    x = torch.randn(2, 5, 32, 32, generator=torch.Generator().manual_seed(2))
    target = (x[:, :1] > 0).float()
    F.binary_cross_entropy_with_logits(model(x), target).backward()
    optimizer.step()
    for key, value in model.encoder.state_dict().items():  # weights and batch-norm statistics
        torch.testing.assert_close(value, before_encoder[key], rtol=0, atol=0)
    after = model.state_dict()
    assert any(not torch.equal(after[k], before_rest[k]) for k in after
               if not k.startswith("encoder."))
    model.unfreeze_encoder()
    assert all(p.requires_grad for p in model.parameters())
    assert all(m.training for m in model.encoder.modules())


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_model_loads_unchanged_and_freezes(path: Path) -> None:
    bundle = load_model(path)  # the sidecar's meta-device shape check included
    model = bundle.model
    header = header_shapes(*read_header(path))
    names = {key.removesuffix(".int8_scale").removesuffix(".int4_scale") for key in header}
    assert {current_key(bundle.architecture, key) for key in names} == set(model.state_dict())
    members = model.member_models() if isinstance(model, ProbabilityAverage) else [model]
    assert len(members) == bundle.members
    for member in members:
        assert isinstance(member, SegmentationModel)
        member.freeze_encoder()
        assert not any(p.requires_grad for p in member.encoder.parameters())
        assert any(p.requires_grad for p in member.decoder.parameters())
    assert all(default_target_layer(model) in dict(member.named_modules()) for member in members)


def test_key_map_renames_old_keys_only() -> None:
    old = {"members.1.optical.stages.0.body.0.weight.int8_scale": 1, "fuse.0.0.weight": 2,
           "decoder.stages.0.body.0.weight": 3, "head.bias": 4}
    assert current_keys("fusion", old) == {
        "members.1.encoder.optical.stages.0.body.0.weight.int8_scale": 1,
        "encoder.fuse.0.0.weight": 2, "decoder.stages.0.body.0.weight": 3, "head.bias": 4}
    new = tiny("fusion").state_dict()
    assert current_keys("fusion", new).keys() == new.keys()  # files saved since pass through
    assert current_key("unet", "optical.x") == "optical.x"  # other architectures untouched


def run_config(tmp_path: Path, scene: dict[str, Path], model: dict, inputs: dict) -> Path:
    """One epoch of two 32 px windows on ``scene``, validated on it too."""
    paths = {k: str(v) for k, v in scene.items()}
    raw = {"data": {"train": [paths], "val": [paths]}, "inputs": inputs, "model": model,
           "training": {"epochs": 1, "batch_size": 2, "tile": 32, "windows_per_epoch": 2,
                        "precision": "fp32", "threads": 1, "lr": 0.01},
           "predict": {"tile": 64, "overlap": 8, "batch_size": 4}}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def unchanged_encoder(start: Path, tuned: Path) -> None:
    """Every encoder tensor of ``tuned`` (weights and batch-norm statistics) is ``start``'s, and
    something outside the encoders moved."""
    before = load_model(start).model.state_dict()
    after = load_model(tuned).model.state_dict()
    encoder = [k for k in before if ".encoder." in f".{k}"]
    assert encoder
    for key in encoder:
        torch.testing.assert_close(after[key], before[key], rtol=0, atol=0)
    assert any(not torch.equal(after[k], before[k]) for k in before if k not in encoder)


@pytest.mark.parametrize("name", list_models())
def test_finetune_with_a_frozen_encoder_works_on_every_architecture(
        name: str, tiny_scene: dict[str, Path], tmp_path: Path) -> None:
    spec = InputSpec(image_bands=(1, 2, 3), dem=True, slope=True)
    start = save_model(ModelBundle(model=tiny(name), architecture=name, width=4, options={},
                                   inputs=spec, mean=[60.0] * 5, std=[30.0] * 5),
                       tmp_path / "start")
    config = load_config(run_config(tmp_path, tiny_scene, {"name": name, "width": 4},
                                    spec.to_dict()))
    settings = config.train.changed(freeze_encoder=True)
    report = finetune(config.changed(init=start, train=settings), tmp_path / "run")
    assert report["freeze_encoder"] is True and set(report["after"]) >= {"f1", "iou"}
    unchanged_encoder(start, Path(report["model"]))


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_finetune_cli_freezes_every_shipped_model(path: Path, tmp_path: Path, run_cli) -> None:
    sidecar = json.loads(path.with_suffix(".json").read_text())
    scene = {"image": SAMPLE / "jinsha_b_image.tif", "mask": SAMPLE / "jinsha_b_mask.tif"}
    if sidecar["inputs"]["dem"] or sidecar["inputs"]["slope"]:
        scene["dem"] = SAMPLE / "jinsha_b_dsm.tif"
    model = {k: sidecar[k] for k in ("width", "options")} | {"name": sidecar["architecture"]}
    config = run_config(tmp_path, scene, model, sidecar["inputs"])
    code, err = run_cli("finetune", path, config, "--out", tmp_path / "run", "--freeze-encoder")
    assert code == 0, err
    tuned = tmp_path / "run" / "model.safetensors"
    assert json.loads(tuned.with_suffix(".json").read_text())["members"] == sidecar["members"]
    unchanged_encoder(path, tuned)


def test_da_unet_parts_stay_as_published() -> None:
    """D: the bottleneck is ASPP at dilations 1, 3, 6; A: every skip goes through the
    attention-guided fusion F = A + α·A. The ablation changes only these parts."""
    model = build_model("da_unet", 3, width=4)
    aspp = model.encoder.stages[-1][1]
    assert isinstance(aspp, ASPP) and aspp.dilations == (1, 3, 6)
    assert [branch[0].dilation for branch in aspp.branches] == [(1, 1), (3, 3), (6, 6)]
    assert isinstance(model.decoder, AttentionUNetDecoder) and len(model.decoder.gates) == 4
    assert not isinstance(build_model("d_unet", 3, width=4).decoder, AttentionUNetDecoder)
    assert isinstance(build_model("a_unet", 3, width=4).encoder.stages[-1][1], DoubleConv)
