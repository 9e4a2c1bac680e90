"""Fine-tuning: training that starts from a model file's weights, optionally with a frozen encoder.

A model trained on one site adapts to another from a handful of labelled tiles. Freezing the
encoder keeps its general features and fits only the decoder and head, which is all that a few
tiles can support. :func:`finetune` scores the starting model and the result on the config's
validation data, so the gain (or loss) is on record in ``finetune.json``.
"""

from __future__ import annotations

import contextlib
import json
import types
from dataclasses import replace
from pathlib import Path

from torch import nn

from slidemap.data.sources import load_arrays
from slidemap.errors import SlidemapError
from slidemap.evaluation.scorer import score_bundle
from slidemap.io.atomic import atomic_path, folder_lock
from slidemap.io.modelfile import ModelBundle, load_model
from slidemap.schema.config import RunConfig
from slidemap.train import ddp
from slidemap.train.runfolder import check_run_inputs

FIGURES = ("f1", "iou", "precision", "recall", "auc", "pixels")


def start_from(model: nn.Module, config: RunConfig) -> None:
    """Load ``config.init``'s weights into ``model`` and freeze its encoder if asked."""
    if config.init is not None:
        bundle = load_model(config.init)
        check_compatible(bundle, config)
        model.load_state_dict(bundle.model.state_dict())
    if config.train.freeze_encoder:
        if config.init is None:
            raise SlidemapError("training.freeze_encoder freezes weights loaded with init: MODEL: "
                                "add init, or drop freeze_encoder")
        freeze_encoder(model, config.model.name)


def parameter_groups(model: nn.Module, name: str, lr: float, encoder_lr: float) -> list[dict]:
    """AdamW's parameter groups: one at ``lr``, or, with ``encoder_lr`` below 1, the encoder at
    ``lr * encoder_lr`` after the rest at ``lr`` (so the logged rate stays the decoder's)."""
    if encoder_lr == 1.0:
        return [{"params": list(model.parameters()), "lr": lr}]
    encoder = getattr(model, "encoder", None)
    if not isinstance(encoder, nn.Module):
        raise SlidemapError(f"architecture {name} has no encoder for training.encoder_lr: "
                            "drop it (1 = one learning rate for all)")
    inside = {id(p) for p in encoder.parameters()}
    rest = [p for p in model.parameters() if id(p) not in inside]
    return [{"params": rest, "lr": lr},
            {"params": list(encoder.parameters()), "lr": lr * encoder_lr}]


def check_compatible(bundle: ModelBundle, config: RunConfig) -> None:
    """The model file must be the config's architecture reading the config's channels."""
    if bundle.members > 1:
        raise SlidemapError(f"init model {bundle.path} is an ensemble of {bundle.members} "
                            "networks: start from one of them (the run folder's "
                            "member-K/model.safetensors)")
    mine = (config.model.name, config.model.width, dict(config.model.options))
    theirs = (bundle.architecture, bundle.width, dict(bundle.options))
    if mine != theirs:
        raise SlidemapError(f"init model {bundle.path} is {theirs[0]} width {theirs[1]} options "
                            f"{theirs[2]} but the config builds {mine[0]} width {mine[1]} options "
                            f"{mine[2]}: set model: to match the model file")
    if bundle.inputs.channels != config.inputs.channels:
        raise SlidemapError(f"init model {bundle.path} reads channels {bundle.inputs.channels} "
                            f"but the config's inputs give {config.inputs.channels}: set inputs "
                            "to the model's channels")


def freeze_encoder(model: nn.Module, name: str) -> None:
    """Stop training ``model.encoder``: no gradients, and batch-norm statistics kept as they are.

    The encoder's ``train`` is replaced by one that always sets eval mode, so ``model.train()``
    leaves its batch norms on their stored statistics, which a few new tiles would only disturb.
    """
    encoder = getattr(model, "encoder", None)
    if not isinstance(encoder, nn.Module):
        raise SlidemapError(f"architecture {name} has no encoder to freeze: fine-tune it without "
                            "--freeze-encoder (training.freeze_encoder: false)")
    for parameter in encoder.parameters():
        parameter.requires_grad_(False)
    encoder.train = types.MethodType(lambda self, mode=True: nn.Module.train(self, False),
                                     encoder)
    encoder.eval()


def score_on_val(bundle: ModelBundle, config: RunConfig) -> dict[str, float]:
    """Figures of ``bundle`` by the one scorer on the config's validation scenes and patches,
    read with the config's inputs (so a model and its fine-tuned version are read alike)."""
    arrays = load_arrays(config.val_scenes, config.val_patches, config.inputs)
    return score_bundle(replace(bundle, inputs=config.inputs), arrays, config.train.precision,
                        config.predict.batch_size).metrics()


def train_run(config: RunConfig, out_dir: Path, resume: bool = False,
              overwrite: bool = False) -> None:
    """``slidemap train``: an ensemble when the config asks for several members, a fine-tuning
    with its before/after figures when it starts from a model and has validation data, plain
    training otherwise."""
    from slidemap.train.loop import train
    from slidemap.train.members import train_members

    if config.train.members > 1:
        with run_lock(out_dir):
            train_members(config, out_dir, resume=resume, overwrite=overwrite)
    elif config.init is not None and (config.val_scenes or config.val_patches):
        finetune(config, out_dir, resume=resume, overwrite=overwrite)
    else:
        with run_lock(out_dir):
            train(config, out_dir, resume=resume, overwrite=overwrite)


def run_lock(out_dir: Path) -> contextlib.AbstractContextManager:
    """One run at a time in ``out_dir`` (:func:`slidemap.io.atomic.folder_lock`); the other
    ranks of a torchrun launch work under rank 0's lock."""
    if ddp.launched_rank() != 0:
        return contextlib.nullcontext()
    return folder_lock(out_dir, "run folder")


def finetune(config: RunConfig, out_dir: Path, resume: bool = False,
             overwrite: bool = False) -> dict:
    """Train from ``config.init`` and write ``finetune.json`` with before/after figures."""
    from slidemap.train.loop import train

    if config.init is None:
        raise SlidemapError("fine-tuning needs a model to start from: pass MODEL or set init:")
    if not (config.val_scenes or config.val_patches):
        raise SlidemapError(f"config {config.source}: fine-tuning scores before and after on "
                            "data.val: add the held-out scenes or patches there")
    check_run_inputs(out_dir, config)  # before the starting model is scored
    before = load_model(config.init)
    check_compatible(before, config)
    report: dict = {"init": str(config.init), "freeze_encoder": config.train.freeze_encoder,
                    "before": _figures(score_on_val(before, config))}
    with run_lock(out_dir):
        model_path = train(config, out_dir, resume=resume, overwrite=overwrite)
        report["after"] = _figures(score_on_val(load_model(model_path), config))
        report["model"] = str(model_path)
        with atomic_path(out_dir / "finetune.json") as tmp:
            tmp.write_text(json.dumps(report, indent=2) + "\n")
    return report


def _figures(metrics: dict[str, float]) -> dict[str, float]:
    return {k: metrics[k] for k in FIGURES}
