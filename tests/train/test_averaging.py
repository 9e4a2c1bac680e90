"""Weight averaging (training.average_from): the running mean, BatchNorm refresh, runs, resume."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from factories import tiny_run, train_interrupted_then_resumed
from safetensors.torch import load_file
from torch import nn

from slidemap.errors import SlidemapError, SlidemapWarning
from slidemap.io.modelfile import load_model
from slidemap.models import build_model
from slidemap.report.plots import read_history
from slidemap.schema.config import parse_config
from slidemap.train.averaging import PREFIX, WeightAverage
from slidemap.train.loop import train


def conv_then_norm() -> nn.Module:
    return nn.Sequential(nn.Conv2d(2, 2, 1, bias=False), nn.BatchNorm2d(2))


def test_the_average_is_the_mean_of_every_update() -> None:
    model = conv_then_norm()
    average = WeightAverage(model)
    for value in (1.0, 2.0, 6.0):
        with torch.no_grad():
            model[0].weight.fill_(value)
        average.update(model)
    assert average.count == 3
    assert torch.allclose(average.mean["0.weight"], torch.full((2, 2, 1, 1), 3.0))


def test_the_averaged_copy_has_batchnorm_statistics_of_the_batches() -> None:
    model = conv_then_norm()
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(2).reshape(2, 2, 1, 1))
    average = WeightAverage(model)
    average.update(model)
    rng = np.random.default_rng(0)
    batches = [(5.0 + 2.0 * rng.standard_normal((4, 2, 8, 8))).astype(np.float32)
               for _ in range(8)]
    averaged = average.averaged(model, batches, "fp32")
    assert not averaged.training
    assert torch.allclose(averaged[1].running_mean, torch.full((2,), 5.0), atol=0.1)
    assert torch.allclose(averaged[1].running_var, torch.full((2,), 4.0), atol=0.3)
    assert torch.equal(model[1].running_mean, torch.zeros(2))  # the trained model is untouched


def test_a_frozen_encoder_keeps_its_batchnorm_statistics_in_the_average() -> None:
    """Fine-tuning with freeze_encoder and average_from: the decoder's statistics are estimated
    again, the frozen encoder's stay those it was trained with (once reset to 0 and 1)."""
    torch.manual_seed(0)
    model = build_model("unet", 3, width=4, depth=2)
    for norm in model.modules():
        if isinstance(norm, nn.BatchNorm2d):
            norm.running_mean.fill_(0.5)
            norm.running_var.fill_(2.0)
    model.freeze_encoder()
    average = WeightAverage(model)
    average.update(model)
    rng = np.random.default_rng(0)
    batches = [rng.standard_normal((2, 3, 16, 16)).astype(np.float32) for _ in range(2)]
    averaged = average.averaged(model, batches, "fp32")
    before = model.state_dict()
    for key, value in averaged.state_dict().items():
        if key.endswith(("running_mean", "running_var")):
            assert torch.equal(value, before[key]) == key.startswith("encoder."), key


def test_the_average_survives_a_checkpoint_round_trip() -> None:
    model = conv_then_norm()
    average = WeightAverage(model)
    average.update(model)
    average.update(model)
    again = WeightAverage(model)
    again.restore(average.tensors(), average.count)
    assert again.count == 2
    for name, value in average.mean.items():
        assert torch.equal(again.mean[name], value)


@pytest.mark.parametrize("training", [{"average_from": 0}, {"average_from": 3},
                                      {"average_from": "10"}, {"average_from": True},
                                      {"average_from": 1, "select": "best"}])
def test_bad_average_from_is_refused(tiny_scene: dict[str, Path], training: dict) -> None:
    with pytest.raises(SlidemapError, match="average_from"):
        parse_config(tiny_run(tiny_scene, **training))


def test_an_averaged_run_keeps_the_mean_weights_and_resumes_exactly(
        tiny_scene: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = parse_config(tiny_run(tiny_scene, average_from=1, select="last"))
    train(config, tmp_path / "a")
    train_interrupted_then_resumed(config, tmp_path / "b", monkeypatch)

    kept = [load_file(str(tmp_path / run / "model.safetensors")) for run in "ab"]
    assert kept[0].keys() == kept[1].keys()
    assert all(torch.equal(kept[0][k], kept[1][k]) for k in kept[0])

    checkpoint = load_file(str(tmp_path / "a" / "checkpoint.safetensors"))
    last_step = {k[len("model."):]: v for k, v in checkpoint.items() if k.startswith("model.")}
    averaged = {k[len(PREFIX):]: v for k, v in checkpoint.items() if k.startswith(PREFIX)}
    assert averaged and averaged.keys() < kept[0].keys()
    assert all(torch.equal(kept[0][k], v) for k, v in averaged.items())
    assert any(not torch.equal(kept[0][k], last_step[k]) for k in averaged)
    means = [k for k in kept[0] if k.endswith("running_mean")]
    assert any(not torch.equal(kept[0][k], last_step[k]) for k in means)  # BatchNorm refreshed


def test_an_averaged_runs_history_ends_with_the_figures_of_its_model_file(
        tiny_scene: dict[str, Path], tmp_path: Path) -> None:
    """history.csv's last row was the last epoch's own weights, not the averaged ones the
    model file keeps: its F1 was not summary.json's nor the model's."""
    config = parse_config(tiny_run(tiny_scene, average_from=1, select="last"))
    with pytest.warns(SlidemapWarning, match="validation data is also training data"):
        train(config, tmp_path / "run")
    with (tmp_path / "run" / "history.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["epoch"], row["weights"]) for row in rows] == [
        ("1", "epoch"), ("2", "epoch"), ("2", "averaged")]
    assert rows[-1]["train_loss"] == rows[-1]["lr"] == ""
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    validation = load_model(tmp_path / "run" / "model").provenance["validation"]
    assert float(rows[-1]["val_f1"]) == round(summary["best_val_f1"], 5)
    assert float(rows[-1]["val_auc"]) == round(validation["auc"], 5)
    assert read_history(tmp_path / "run" / "history.csv")["weights"][-1] == "averaged"
